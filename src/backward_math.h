#pragma once
// The backward math of an int8 linear layer on plain ATen tensors: no dispatcher,
// no autograd, no quantized dtypes.

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

// The straight-through input gradient grad_output [..., N] @ weight [N, K] -> [..., K].
// The activation's quantization scale cancels (quantize divides by it, dequantize
// multiplies by it), so it never appears here.
at::Tensor input_gradient(const at::Tensor& grad_output, const at::Tensor& weight);

// Its adjoint, grad [..., K] @ weight.T -> [..., N]: the derivative of input_gradient
// with respect to grad_output, used for double backward.
at::Tensor input_gradient_adjoint(const at::Tensor& grad, const at::Tensor& weight);

} // namespace qlgrad::math
