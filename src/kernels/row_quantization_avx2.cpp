#include "row_quantization.h"
#include "variants.h"

#include "avx2.h"

namespace qlgrad::math {

void quantize_rows_avx2(const float* grad, const float* channel_scale, int64_t begin, int64_t end, int64_t n,
                        int8_t* quantized, int64_t ldq, float* row_scale) {
  quantize_rows(grad, channel_scale, begin, end, n, quantized, ldq, row_scale);
}

void quantize_rows_symmetric_avx2(const float* input, int64_t begin, int64_t end, int64_t n, int8_t* quantized,
                                  float* row_scale) {
  quantize_rows_symmetric(input, begin, end, n, quantized, row_scale);
}

void quantize_rows_symmetric_bfloat16_avx2(const at::BFloat16* input, int64_t begin, int64_t end, int64_t n,
                                           int8_t* quantized, float* row_scale) {
  quantize_rows_symmetric(input, begin, end, n, quantized, row_scale);
}

void quant_dequant_rows_asymmetric_avx2(const float* input, int64_t begin, int64_t end, int64_t n, float* out) {
  quant_dequant_rows_asymmetric(input, begin, end, n, out);
}

void quant_dequant_rows_asymmetric_bfloat16_avx2(const at::BFloat16* input, int64_t begin, int64_t end, int64_t n,
                                                 at::BFloat16* out) {
  quant_dequant_rows_asymmetric(input, begin, end, n, out);
}

} // namespace qlgrad::math
