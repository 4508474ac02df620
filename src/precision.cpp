// Which precision the input-gradient GEMM uses: the precision chosen (process-wide, overridden per
// thread), else the one that follows the gradient's dtype.

#include <qlgrad/qlgrad.h>

#include <c10/util/Exception.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <optional>
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

// The environment's choice; none where the variable is unset or empty.
std::optional<Precision> from_environment() {
  const char* name = std::getenv("QLGRAD_BACKWARD_PRECISION");
  if (name == nullptr || *name == '\0') {
    return std::nullopt;
  }
  try {
    return parse_precision(name);
  } catch (const c10::ValueError& e) {
    TORCH_CHECK_VALUE(false, "qlgrad: environment variable QLGRAD_BACKWARD_PRECISION: ", e.what_without_backtrace());
  }
}

// Read from the environment on first use, not at load time, so that a bad value is a
// catchable error rather than a failure to load the library.
std::atomic<std::optional<Precision>>& process_choice() {
  static std::atomic<std::optional<Precision>> precision{from_environment()};
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

void set_backward_precision(std::optional<Precision> precision) {
  if (precision) {
    precision_name(*precision);  // refuses values outside the enum
  }
  process_choice().store(precision);
}

void set_backward_precision(Precision precision) {
  set_backward_precision(std::optional(precision));
}

std::optional<Precision> chosen_backward_precision() {
  return thread_override ? thread_override : process_choice().load();
}

// The one place where a precision follows the gradient's dtype.
Precision effective_backward_precision(std::optional<Precision> chosen, at::ScalarType grad_dtype) {
  if (chosen) {
    return *chosen;
  }
  return grad_dtype == at::kBFloat16 ? Precision::kBFloat16 : Precision::kFloat32;
}

Precision get_backward_precision() {
  return effective_backward_precision(chosen_backward_precision(), at::kFloat);
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
