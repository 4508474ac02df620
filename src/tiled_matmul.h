#pragma once
// lhs @ (weight - zero_point) with the weight kept in its stored dtype (int8 codes, or
// float16 for fp16-packed layers): the product runs on tiles converted on the fly, so no
// float copy of the whole weight ever exists.

#include <ATen/core/Tensor.h>

#include <optional>

namespace qlgrad::math {

// result [M, K] = lhs [M, N] @ (weight[n, k] - zero_point[n]), accumulated in float32 and
// returned in lhs's dtype.
//   lhs         float32 or bfloat16 [M, N], contiguous: the GEMM runs in its dtype
//   weight      int8 or float16 [N, K] with unit stride along K (or K = 1)
//   zero_point  float32 [N], contiguous (integers of the int8 range); absent for zero
// int8 codes minus a zero point are integers of magnitude at most 255, which float32 and
// bfloat16 both hold exactly: converting a tile rounds nothing, and in float32 the result
// differs from a product with a float32 weight only in the order of the sums.
at::Tensor tiled_matmul(const at::Tensor& lhs, const at::Tensor& weight, const std::optional<at::Tensor>& zero_point);

} // namespace qlgrad::math
