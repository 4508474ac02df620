// torch's int4 packing as bfloat16 panels (AVX512-BF16): the values as the float32 panels hold
// them, rounded to nearest even, rows paired.

#include "variants.h"

#include "avx512_bf16.h"
#include "int4_vectors_avx512.h"

namespace qlgrad::math {

void int4_panels_bfloat16_avx512(const Int4Pack& pack, int64_t top, int64_t first, int64_t depth, int64_t count,
                                 at::BFloat16* out, int64_t panel_depth) {
  for_each_square(pack, top, first, depth, count, [&](int64_t row, int64_t column, const __m512(&values)[16]) {
    at::BFloat16* panel = out + (column / kPanelColumns * kPanelColumns) * panel_depth + column % kPanelColumns * 2;
    for (int64_t pair = 0; pair < 8; ++pair) {
      _mm512_storeu_si512(panel + (row / 2 + pair) * 2 * kPanelColumns,
                          avx512::bfloat16_pairs(values[2 * pair], values[2 * pair + 1]));
    }
  });
}

void int4_transposed_panels_bfloat16_avx512(const Int4Pack& pack, int64_t top, int64_t first, int64_t depth,
                                            int64_t count, at::BFloat16* out, int64_t panel_depth) {
  for_each_column16<2>(pack, top, first, depth, count, [&](int64_t row, int64_t k, const __m512(&values)[2]) {
    _mm512_storeu_si512(
        out + row / kPanelColumns * kPanelColumns * panel_depth + k * kPanelColumns + row % kPanelColumns * 2,
        avx512::bfloat16_pairs(values[0], values[1]));
  });
}

} // namespace qlgrad::math
