#pragma once
// The backward math of an int8 linear layer on plain ATen tensors: no dispatcher,
// no autograd, no quantized dtypes.

#include "blocked_layout.h"

#include <qlgrad/qlgrad.h>

#include <ATen/core/Tensor.h>

#include <optional>

namespace qlgrad::math {

// A linear layer's weight as it is stored, W[n, k] = scale[n, g] * (values[n, k] - zero_point[n, g])
// with g = k / (K / G) (G = 1 but for group-wise scales): int8 codes with their quantization parameters, or the float16
// weight of an fp16-packed layer (scale 1, no zero point). The backward reads it as it is;
// nothing wider is derived.
struct StoredWeight {
  // int8 or float16 [N, K], unit stride along K; or, with `blocked`, int8 codes in that layout
  // (a packed layer's own buffer, read in place).
  at::Tensor values;
  // float32, contiguous: [1] (per tensor), [N] (per output channel) or [N, G] (group-wise:
  // G groups of K / G consecutive input features per output channel, G > 1).
  at::Tensor scale;
  std::optional<at::Tensor> zero_point;  // float32 shaped like scale (integers); absent for zero
  std::optional<BlockedLayout> blocked = std::nullopt;  // per tensor or per channel only

  int64_t out_features() const { return blocked ? blocked->rows : values.size(0); }
  int64_t in_features() const { return blocked ? blocked->columns : values.size(1); }
  bool is_int8() const;
  bool is_groupwise() const { return scale.dim() == 2; }
  int64_t nbytes() const;
};

// The stored form of int8 codes and the parameters a caller gives them in (any floating
// scale, any integer zero point, [1], [N] or [N, G]; [N, 1] is per channel). Only the
// parameters are converted; the codes are copied only when their rows are not contiguous.
StoredWeight stored_int8_weight(const at::Tensor& values, const at::Tensor& scale,
                                const std::optional<at::Tensor>& zero_point);

// The stored form of int8 codes in a blocked packing (`packed`, int8, blocked.size() bytes), with
// their scale [1] or [N] and zero point (absent for zero), as a caller gives them.
StoredWeight blocked_int8_weight(const at::Tensor& packed, const BlockedLayout& blocked, const at::Tensor& scale,
                                 const std::optional<at::Tensor>& zero_point);

// The stored form of a float weight [N, K] (fp16-packed layers): float16, which holds it exactly.
StoredWeight stored_float16_weight(const at::Tensor& weight);

// The weight with its codes in rows: `weight` itself, or a copy of the codes out of its blocked
// packing (for a product that takes them as a tensor, such as the adjoint's).
StoredWeight unblocked(const StoredWeight& weight);

// W [N, K] in `dtype`, computed in that dtype in the order the stock dequantize uses:
// (values - zero_point) * scale.
at::Tensor dequantize(const StoredWeight& weight, at::ScalarType dtype);

// The straight-through input gradient grad_output [..., N] @ W [N, K] -> [..., K] in
// `precision`, returned in grad_output's dtype. The activation's quantization scale
// cancels (quantize divides by it, dequantize multiplies by it), so it never appears here.
// int8 precision applies to int8 weights with per-tensor or per-channel scales only: a
// float16 weight, or group-wise scales (which vary along the GEMM's output and so cannot
// be taken out of an integer product), run it as fp32.
at::Tensor input_gradient(const at::Tensor& grad_output, const StoredWeight& weight, Precision precision);

// The adjoint, grad [..., K] @ W.T -> [..., N], computed in grad's dtype: the derivative
// of the input gradient with respect to grad_output, used for double backward.
at::Tensor input_gradient_adjoint(const at::Tensor& grad, const StoredWeight& weight);

// An int4 weight as torch packs it for the CPU (aten::_convert_weight_to_int4pack_for_cpu),
// W[n, k] = (code[n, k] - 8) * scale[k / group_size, n] + zero[k / group_size, n], read in place.
struct Int4PackedWeight {
  at::Tensor packed;           // uint8 [N, K / 2], contiguous, in the running CPU capability's packing
  int64_t group_size;          // 32, 64, 128 or 256
  at::Tensor scale_and_zeros;  // float32 [K / group_size, N, 2], contiguous

  int64_t out_features() const { return scale_and_zeros.size(1); }
  int64_t in_features() const { return scale_and_zeros.size(0) * group_size; }
};

// The packed weight and its parameters as a caller gives them (any floating scale_and_zeros);
// only scale_and_zeros is converted, and only when it is not float32 and contiguous.
Int4PackedWeight int4_packed_weight(const at::Tensor& packed, int64_t group_size, const at::Tensor& scale_and_zeros);

// grad_output [..., N] @ W [N, K] -> [..., K] in grad_output's dtype: in bfloat16 products with
// float32 sums for `bf16` (the weight's values rounded to bfloat16; float32 products where the CPU
// lacks AVX512-BF16 or where the int4 stream serves the rows: int4pack_matmul), else in float32
// products (float64 for a float64 grad_output): the weight has no int8 form.
at::Tensor input_gradient(const at::Tensor& grad_output, const Int4PackedWeight& weight, Precision precision);

// The adjoint, grad [..., K] @ W.T -> [..., N], in grad's dtype: the op's own product for the
// dtypes it takes, for double backward.
at::Tensor input_gradient_adjoint(const at::Tensor& grad, const Int4PackedWeight& weight);

} // namespace qlgrad::math
