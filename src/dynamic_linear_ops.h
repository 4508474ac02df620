#pragma once
// The stock operators of the dynamic linear family, by their C++ signatures, for calls through
// the dispatcher: the Autograd and AutocastCPU kernels call them below themselves, and so does
// the traced forward of compiled training steps.

#include "operator_handle.h"
#include "packed_params.h"

#include <ATen/core/Tensor.h>

namespace qlgrad::detail {

// The C++ signatures of the stock CPU kernels, argument for argument.
using Int8Fn = at::Tensor(at::Tensor, const PackedParams&, bool);
using Fp16Fn = at::Tensor(at::Tensor, const PackedParams&);

// quantized::linear_dynamic, or linear_relu_dynamic with `relu` (qint8 weights).
inline const c10::TypedOperatorHandle<Int8Fn>& int8_op(bool relu) {
  static const auto plain = operator_handle<Int8Fn>("quantized::linear_dynamic");
  static const auto with_relu = operator_handle<Int8Fn>("quantized::linear_relu_dynamic");
  return relu ? with_relu : plain;
}

// quantized::linear_dynamic_fp16, or linear_relu_dynamic_fp16 with `relu` (float16 weights).
inline const c10::TypedOperatorHandle<Fp16Fn>& fp16_op(bool relu) {
  static const auto plain = operator_handle<Fp16Fn>("quantized::linear_dynamic_fp16");
  static const auto with_relu = operator_handle<Fp16Fn>("quantized::linear_relu_dynamic_fp16");
  return relu ? with_relu : plain;
}

} // namespace qlgrad::detail
