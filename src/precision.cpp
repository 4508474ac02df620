// Which precision the input-gradient GEMM uses: a process default and a per-thread override.

#include <qlgrad/qlgrad.h>

#include <c10/util/Exception.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <string>

namespace qlgrad {
namespace {

// The one place that names the precisions: parse_precision, the error messages and the
// Python module's PRECISIONS all read it.
constexpr std::array<std::pair<std::string_view, Precision>, kPrecisions.size()> kNames{{
    {"fp32", Precision::kFloat32},
    {"bf16", Precision::kBFloat16},
    {"int8", Precision::kInt8},
}};

// "fp32, bf16, int8"
std::string valid_names() {
  std::string names;
  for (const auto& [name, precision] : kNames) {
    names += (names.empty() ? "" : ", ") + std::string(name);
  }
  return names;
}

Precision from_environment() {
  const char* name = std::getenv("QLGRAD_BACKWARD_PRECISION");
  if (name == nullptr || *name == '\0') {
    return Precision::kFloat32;
  }
  try {
    return parse_precision(name);
  } catch (const c10::ValueError& e) {
    TORCH_CHECK_VALUE(false, "qlgrad: environment variable QLGRAD_BACKWARD_PRECISION: ", e.what_without_backtrace());
  }
}

// Read from the environment on first use, not at load time, so that a bad value is a
// catchable error rather than a failure to load the library.
std::atomic<Precision>& process_default() {
  static std::atomic<Precision> precision{from_environment()};
  return precision;
}

thread_local std::optional<Precision> thread_override;

} // namespace

Precision parse_precision(std::string_view name) {
  for (const auto& [known, precision] : kNames) {
    if (name == known) {
      return precision;
    }
  }
  TORCH_CHECK_VALUE(false, "qlgrad: unknown backward precision '", std::string(name), "'; valid: ", valid_names());
}

const char* precision_name(Precision precision) {
  for (const auto& [name, known] : kNames) {
    if (precision == known) {
      return name.data();
    }
  }
  TORCH_CHECK(false, "qlgrad: invalid Precision value ", static_cast<int>(precision));
}

void set_backward_precision(Precision precision) {
  precision_name(precision);  // refuses values outside the enum
  process_default().store(precision);
}

Precision get_backward_precision() {
  return thread_override.value_or(process_default().load());
}

BackwardPrecisionGuard::BackwardPrecisionGuard(std::optional<Precision> precision) : previous_(thread_override) {
  if (precision) {
    precision_name(*precision);
  }
  thread_override = precision;
}

BackwardPrecisionGuard::~BackwardPrecisionGuard() {
  thread_override = previous_;
}

} // namespace qlgrad
