#pragma once
// The packed params of torch's dynamic linear ops, and the two kinds of weight they hold.

#include <ATen/native/quantized/PackedParams.h>
#include <c10/util/intrusive_ptr.h>

namespace qlgrad::detail {

using PackedParams = c10::intrusive_ptr<LinearPackedParamsBase>;

// What the quantized:: ops of the dynamic linear family pack: qint8 weights
// (linear_dynamic, linear_relu_dynamic) or float16 ones (the *_fp16 ops).
enum class WeightKind { kQInt8, kFloat16 };

// "qint8" or "fp16": how error messages and the torch.compile fakes name a kind.
inline const char* kind_name(WeightKind kind) {
  return kind == WeightKind::kQInt8 ? "qint8" : "fp16";
}

// The op that takes packed params of `kind`, for error messages.
inline const char* op_family(WeightKind kind) {
  return kind == WeightKind::kQInt8 ? "quantized::linear_dynamic" : "quantized::linear_dynamic_fp16";
}

} // namespace qlgrad::detail
