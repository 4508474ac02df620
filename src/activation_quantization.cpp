#include "activation_quantization.h"

#include "kernels/kernels.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

namespace qlgrad::math {
namespace {

// Rows of at least 32 KiB of values per task.
int64_t rows_per_task(int64_t n) {
  return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(n, 1));
}

} // namespace

std::pair<at::Tensor, at::Tensor> int8_quantize_rows_symmetric(const at::Tensor& input) {
  TORCH_INTERNAL_ASSERT(input.dim() == 2 && input.is_contiguous());
  TORCH_INTERNAL_ASSERT(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16);
  const int64_t rows = input.size(0), n = input.size(1);
  auto quantized = at::empty({rows, n}, input.options().dtype(at::kChar));
  auto row_scale = at::empty({rows, 1}, input.options().dtype(at::kFloat));
  const auto& kernel = kernels();
  at::parallel_for(0, rows, rows_per_task(n), [&](int64_t begin, int64_t end) {
    int8_t* codes = quantized.mutable_data_ptr<int8_t>();
    float* scales = row_scale.mutable_data_ptr<float>();
    if (input.scalar_type() == at::kFloat) {
      kernel.quantize_rows_symmetric(input.const_data_ptr<float>(), begin, end, n, codes, scales);
    } else {
      kernel.quantize_rows_symmetric_bfloat16(input.const_data_ptr<at::BFloat16>(), begin, end, n, codes, scales);
    }
  });
  return {quantized, row_scale};
}

at::Tensor int8_quant_dequant_rows_asymmetric(const at::Tensor& input) {
  TORCH_INTERNAL_ASSERT(input.dim() == 2 && input.is_contiguous());
  TORCH_INTERNAL_ASSERT(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16);
  const int64_t n = input.size(1);
  auto output = at::empty_like(input);
  const auto& kernel = kernels();
  at::parallel_for(0, input.size(0), rows_per_task(n), [&](int64_t begin, int64_t end) {
    if (input.scalar_type() == at::kFloat) {
      kernel.quant_dequant_rows_asymmetric(input.const_data_ptr<float>(), begin, end, n,
                                           output.mutable_data_ptr<float>());
    } else {
      kernel.quant_dequant_rows_asymmetric_bfloat16(input.const_data_ptr<at::BFloat16>(), begin, end, n,
                                                    output.mutable_data_ptr<at::BFloat16>());
    }
  });
  return output;
}

AsymmetricRows int8_quantize_rows_asymmetric(const at::Tensor& input) {
  TORCH_INTERNAL_ASSERT(input.dim() == 2 && input.is_contiguous());
  TORCH_INTERNAL_ASSERT(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16);
  const auto& kernel = kernels();
  TORCH_INTERNAL_ASSERT(kernel.quantize_rows_asymmetric != nullptr);
  const int64_t rows = input.size(0), n = input.size(1);
  AsymmetricRows quantized{at::empty({rows, n}, input.options().dtype(at::kByte)),
                           at::empty({rows}, input.options().dtype(at::kFloat)),
                           at::empty({rows}, input.options().dtype(at::kFloat))};
  uint8_t* codes = quantized.codes.mutable_data_ptr<uint8_t>();
  float* scales = quantized.scale.mutable_data_ptr<float>();
  float* offsets = quantized.offset.mutable_data_ptr<float>();
  at::parallel_for(0, rows, rows_per_task(n), [&](int64_t begin, int64_t end) {
    if (input.scalar_type() == at::kFloat) {
      kernel.quantize_rows_asymmetric(input.const_data_ptr<float>(), begin, end, n, codes, scales, offsets);
    } else {
      kernel.quantize_rows_asymmetric_bfloat16(input.const_data_ptr<at::BFloat16>(), begin, end, n, codes, scales,
                                               offsets);
    }
  });
  return quantized;
}

} // namespace qlgrad::math
