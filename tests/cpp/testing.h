#pragma once
// What the C++ test programs share: a tally of named checks that ends in the closing
// line "N passed, M failed", figures for the reliability report, and weights packed
// through the dispatcher as quantize_dynamic packs them.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/native/quantized/PackedParams.h>

#include <iostream>
#include <mutex>
#include <optional>
#include <string>

namespace qlgrad_test {

using PackedParams = c10::intrusive_ptr<LinearPackedParamsBase>;

// Thread-safe: concurrent workers report into one tally.
class Tally {
 public:
  void check(const std::string& name, bool ok, const std::string& detail = "") {
    std::lock_guard<std::mutex> lock(mutex_);
    (ok ? passed_ : failed_) += 1;
    std::cout << (ok ? "PASS " : "FAIL ") << name << (detail.empty() ? "" : ": " + detail) << "\n";
  }

  // The closing line, and the program's exit status.
  int finish() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::cout << passed_ << " passed, " << failed_ << " failed" << std::endl;
    return failed_ == 0 ? 0 : 1;
  }

 private:
  std::mutex mutex_;
  int passed_ = 0;
  int failed_ = 0;
};

// A line that scripts/update_reliability_table.py copies into the reliability report.
template <typename Value>
void report_figure(const std::string& key, const Value& value) {
  std::cout << "reliability: " << key << " = " << value << "\n";
}

inline PackedParams prepack_int8(const at::Tensor& qweight) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("quantized::linear_prepack", "")
                             .typed<PackedParams(at::Tensor, std::optional<at::Tensor>)>();
  return op.call(qweight, std::nullopt);
}

inline PackedParams prepack_fp16(const at::Tensor& weight) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("quantized::linear_prepack_fp16", "")
                             .typed<PackedParams(at::Tensor, std::optional<at::Tensor>)>();
  return op.call(weight, std::nullopt);
}

// An int8 weight quantized per output channel with non-zero zero points, as plain tensors,
// as a qint8 tensor (to pack again) and packed.
struct Int8Weight {
  at::Tensor values;      // int8 [N, K]
  at::Tensor scale;       // float64 [N]
  at::Tensor zero_point;  // int64 [N]
  at::Tensor quantized;   // qint8 [N, K]
  PackedParams packed;
};

inline Int8Weight int8_weight(int64_t out_features, int64_t in_features) {
  const at::Tensor values = at::randint(-128, 128, {out_features, in_features}, at::kChar);
  const at::Tensor scale = at::rand({out_features}, at::kDouble) * 0.01 + 0.001;
  const at::Tensor zero_point = at::randint(-3, 4, {out_features}, at::kLong);
  const at::Tensor quantized = at::_make_per_channel_quantized_tensor(values, scale, zero_point, 0);
  return {values, scale, zero_point, quantized, prepack_int8(quantized)};
}

} // namespace qlgrad_test
