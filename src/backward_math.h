#pragma once
// The backward math of an int8 linear layer on plain ATen tensors: no dispatcher,
// no autograd, no quantized dtypes.

#include <qlgrad/qlgrad.h>

#include <ATen/core/Tensor.h>

#include <optional>

namespace qlgrad::math {

// W_deq[n, :] = scale[n] * (values[n, :] - zero_point[n]); scale and zero_point hold
// one element (per tensor) or N (per output channel).
struct Int8Weight {
  at::Tensor values;  // int8 [N, K]
  at::Tensor scale;   // floating, [1] or [N]
  std::optional<at::Tensor> zero_point;  // integer, shaped like scale; absent = 0
};

// W_deq [N, K] in `dtype`, computed in that dtype in the order the stock
// dequantize uses: (values - zero_point) * scale.
at::Tensor dequantize(const Int8Weight& weight, at::ScalarType dtype);

// The weight in the form that one precision's GEMM takes.
struct PreparedWeight {
  Precision precision;
  // fp32: float32 W_deq; bf16: bfloat16 W_deq; int8: the int8 values. All [N, K].
  at::Tensor weight;
  // int8 only: float32 [N] scale per output channel (a per-tensor scale repeated),
  // and the zero points as float64 [N], absent when all are zero.
  at::Tensor channel_scale;
  std::optional<at::Tensor> zero_point;

  int64_t nbytes() const;
};

PreparedWeight prepare(const Int8Weight& weight, Precision precision);

// The same for a float weight [N, K] (fp16-packed layers). int8 mode does not apply to a
// weight that has no int8 form: it runs as fp32.
PreparedWeight prepare_float(const at::Tensor& weight, Precision precision);

// The straight-through input gradient grad_output [..., N] @ W_deq [N, K] -> [..., K]
// in the weight's precision, returned in grad_output's dtype. The activation's
// quantization scale cancels (quantize divides by it, dequantize multiplies by it), so
// it never appears here.
at::Tensor input_gradient(const at::Tensor& grad_output, const PreparedWeight& weight);

// The adjoint, grad [..., K] @ W_deq.T -> [..., N], computed in grad's dtype: the
// derivative of the input gradient with respect to grad_output, used for double backward.
at::Tensor input_gradient_adjoint(const at::Tensor& grad, const at::Tensor& dequantized_weight);

} // namespace qlgrad::math
