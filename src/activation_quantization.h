#pragma once
// The activation quantization of torchao's int8 and group-wise int8 layers' training forwards, in
// one pass per row.

#include <ATen/core/Tensor.h>

#include <utility>

namespace qlgrad::math {

// input float32 or bfloat16 [M, K], contiguous: torchao's symmetric int8 quantization per row
// (QuantizeRowsSymmetricFn), the codes int8 [M, K] and the scales float32 [M, 1], those of rows
// with a NaN or an infinity too.
std::pair<at::Tensor, at::Tensor> int8_quantize_rows_symmetric(const at::Tensor& input);

// input float32 or bfloat16 [M, K], contiguous: torchao's asymmetric int8 quantization per row,
// dequantized (QuantDequantRowsFn), in input's dtype.
at::Tensor int8_quant_dequant_rows_asymmetric(const at::Tensor& input);

// input float32 or bfloat16 [M, K], contiguous: torchao's asymmetric int8 quantization per row
// (QuantizeRowsAsymmetricFn, where kernels().quantize_rows_asymmetric is) as codes plus 128 (uint8
// [M, K]), each row's scale and offset (its zero point plus 128; float32 [M]). A row with a NaN or
// an infinity has a NaN scale.
struct AsymmetricRows {
  at::Tensor codes, scale, offset;
};
AsymmetricRows int8_quantize_rows_asymmetric(const at::Tensor& input);

} // namespace qlgrad::math
