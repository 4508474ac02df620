#include "row_quantization.h"
#include "variants.h"

namespace qlgrad::math {

void quantize_rows_portable(const float* grad, const float* channel_scale, int64_t begin, int64_t end, int64_t n,
                            int8_t* quantized, float* row_scale) {
  quantize_rows(grad, channel_scale, begin, end, n, quantized, row_scale);
}

void quantize_rows_symmetric_portable(const float* input, int64_t begin, int64_t end, int64_t n, int8_t* quantized,
                                      float* row_scale) {
  quantize_rows_symmetric(input, begin, end, n, quantized, row_scale);
}

void quantize_rows_symmetric_bfloat16_portable(const at::BFloat16* input, int64_t begin, int64_t end, int64_t n,
                                               int8_t* quantized, float* row_scale) {
  quantize_rows_symmetric(input, begin, end, n, quantized, row_scale);
}

} // namespace qlgrad::math
