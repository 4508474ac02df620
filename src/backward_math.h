#pragma once
// The backward math of an int8 linear layer on plain ATen tensors: no dispatcher,
// no autograd, no quantized dtypes.

#include <qlgrad/qlgrad.h>

#include <ATen/core/Tensor.h>

#include <optional>

namespace qlgrad::math {

// A linear layer's weight as it is stored, W[n, :] = scale[n] * (values[n, :] - zero_point[n]):
// int8 codes with their quantization parameters, or the float16 weight of an fp16-packed
// layer (scale 1, no zero point). The backward reads it as it is; nothing wider is derived.
struct StoredWeight {
  at::Tensor values;  // int8 or float16 [N, K], unit stride along K
  at::Tensor scale;   // float32 [1] (per tensor) or [N] (per output channel), contiguous
  std::optional<at::Tensor> zero_point;  // float32 shaped like scale (integers); absent for zero

  int64_t out_features() const { return values.size(0); }
  bool is_int8() const;
  int64_t nbytes() const;
};

// The stored form of int8 codes and the parameters a caller gives them in (any floating
// scale, any integer zero point, [1] or [N]). Only the N-element parameters are converted;
// the codes are copied only when their rows are not contiguous.
StoredWeight stored_int8_weight(const at::Tensor& values, const at::Tensor& scale,
                                const std::optional<at::Tensor>& zero_point);

// The stored form of a float weight [N, K] (fp16-packed layers): float16, which holds it exactly.
StoredWeight stored_float16_weight(const at::Tensor& weight);

// W [N, K] in `dtype`, computed in that dtype in the order the stock dequantize uses:
// (values - zero_point) * scale.
at::Tensor dequantize(const StoredWeight& weight, at::ScalarType dtype);

// The straight-through input gradient grad_output [..., N] @ W [N, K] -> [..., K] in
// `precision`, returned in grad_output's dtype. The activation's quantization scale
// cancels (quantize divides by it, dequantize multiplies by it), so it never appears here.
// int8 precision applies to int8 weights only; a float16 weight runs it as fp32.
at::Tensor input_gradient(const at::Tensor& grad_output, const StoredWeight& weight, Precision precision);

// The adjoint, grad [..., K] @ W.T -> [..., N], computed in grad's dtype: the derivative
// of the input gradient with respect to grad_output, used for double backward.
at::Tensor input_gradient_adjoint(const at::Tensor& grad, const StoredWeight& weight);

} // namespace qlgrad::math
