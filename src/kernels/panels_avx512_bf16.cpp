// The panel GEMM's kernels in bfloat16 products (AVX512-BF16): panels of pairs of weight rows,
// rounded to nearest even as they are converted, and the kernel that multiplies kKernelRows rows
// of packed lhs pairs by a panel with vdpbf16ps, the sums in float32 registers.

#include "variants.h"

#include "avx512_bf16.h"
#include "packed_rows_avx512.h"
#include "transposed_codes_avx512.h"

namespace qlgrad::math {
namespace {

template <int64_t Rows>
void panel_kernel(const at::BFloat16* lhs, const at::BFloat16* panel, int64_t depth, float* out, int64_t ldo,
                  int64_t width, bool accumulate) {
  __m512 low[Rows], high[Rows];
#pragma GCC unroll 12
  for (int64_t r = 0; r < Rows; ++r) {
    low[r] = _mm512_setzero_ps();
    high[r] = _mm512_setzero_ps();
  }
  const auto* lhs_pairs = reinterpret_cast<const int32_t*>(lhs);
  for (int64_t pair = 0; pair < depth / 2; ++pair) {
    const __m512bh panel_low = (__m512bh)_mm512_loadu_si512(panel + pair * 2 * kPanelColumns);
    const __m512bh panel_high = (__m512bh)_mm512_loadu_si512(panel + pair * 2 * kPanelColumns + kPanelColumns);
#pragma GCC unroll 12
    for (int64_t r = 0; r < Rows; ++r) {
      const __m512bh factors = (__m512bh)_mm512_set1_epi32(lhs_pairs[pair * kKernelRows + r]);
      low[r] = _mm512_dpbf16_ps(low[r], factors, panel_low);
      high[r] = _mm512_dpbf16_ps(high[r], factors, panel_high);
    }
  }
  avx512::store_sums<Rows>(low, high, out, ldo, width, accumulate);
}

// As the float32 panels are converted (panels_avx512.cpp), two rows at a time.
template <typename Code>
void convert_panels(const Code* codes, int64_t ldw, const CodeParameters& parameters, int64_t top, int64_t first,
                    int64_t depth, int64_t count, at::BFloat16* panels, int64_t panel_depth) {
  constexpr int64_t kRowsAtOnce = 16;
  for (int64_t block_top = 0; block_top < depth; block_top += kRowsAtOnce) {
    for (int64_t column = 0; column < count; column += kPanelColumns) {
      at::BFloat16* panel = panels + column * panel_depth;
      avx512::prefetch_column(codes, ldw, block_top + kRowsAtOnce, std::min(depth, block_top + 2 * kRowsAtOnce),
                              column);
      const avx512::LaneGroups low_groups(parameters, first + column), high_groups(parameters, first + column + 16);
      for (int64_t n = block_top; n < std::min(depth, block_top + kRowsAtOnce); n += 2) {
        __m512 low, high, next_low = _mm512_setzero_ps(), next_high = _mm512_setzero_ps();
        avx512::values32(codes + n * ldw + column, parameters, top + n, low_groups, high_groups, count - column, low,
                         high);
        if (n + 1 < depth) {
          avx512::values32(codes + (n + 1) * ldw + column, parameters, top + n + 1, low_groups, high_groups,
                           count - column, next_low, next_high);
        }
        _mm512_storeu_si512(panel + n * kPanelColumns, avx512::bfloat16_pairs(low, next_low));
        _mm512_storeu_si512(panel + n * kPanelColumns + kPanelColumns, avx512::bfloat16_pairs(high, next_high));
      }
    }
  }
}

// Rows packed as bfloat16 pairs (PackRowsFn): row r's values n to n + 31 (from avx512::load32),
// multiplied by their factors, split into the even and the odd values and rounded to bfloat16
// pairs once.
template <typename Source>
void pack_pairs(const Source* lhs, int64_t ldl, int64_t count, int64_t depth, const float* factors,
                int64_t factor_stride, at::BFloat16* block) {
  const __m512i even_values = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd_values = _mm512_add_epi32(even_values, _mm512_set1_epi32(1));
  pack_rows16(count, (depth + 1) / 2, block, [&](int64_t r, int64_t d, int64_t /*lanes*/) {
    const int64_t n = 2 * d, values = std::min<int64_t>(32, depth - n);
    auto row = avx512::load32(lhs + r * ldl + n, values);
    avx512::multiply32(row, factors, factor_stride, n, values);
    return avx512::bfloat16_pairs(_mm512_permutex2var_ps(row.first, even_values, row.second),
                                  _mm512_permutex2var_ps(row.first, odd_values, row.second));
  });
}

} // namespace

void panel_rows_bfloat16_avx512(int64_t rows, const at::BFloat16* lhs, const at::BFloat16* panel, int64_t depth,
                                float* out, int64_t ldo, int64_t width, bool accumulate) {
  with_rows<kKernelRows>(rows,
                         [&]<int64_t Rows>() { panel_kernel<Rows>(lhs, panel, depth, out, ldo, width, accumulate); });
}

void pack_rows_bfloat16_avx512(const at::BFloat16* lhs, int64_t ldl, int64_t count, int64_t depth, const float* factors,
                               int64_t factor_stride, at::BFloat16* block) {
  pack_pairs(lhs, ldl, count, depth, factors, factor_stride, block);
}

void pack_float_rows_bfloat16_avx512(const float* lhs, int64_t ldl, int64_t count, int64_t depth, const float* factors,
                                     int64_t factor_stride, at::BFloat16* block) {
  pack_pairs(lhs, ldl, count, depth, factors, factor_stride, block);
}

void convert_panels_int8_bfloat16_avx512(const int8_t* codes, int64_t ldw, const CodeParameters& parameters,
                                         int64_t top, int64_t first, int64_t depth, int64_t count, at::BFloat16* panels,
                                         int64_t panel_depth) {
  convert_panels(codes, ldw, parameters, top, first, depth, count, panels, panel_depth);
}

void convert_panels_float16_bfloat16_avx512(const at::Half* values, int64_t ldw, const CodeParameters& parameters,
                                            int64_t top, int64_t first, int64_t depth, int64_t count,
                                            at::BFloat16* panels, int64_t panel_depth) {
  convert_panels(values, ldw, parameters, top, first, depth, count, panels, panel_depth);
}

void convert_transposed_panels_int8_bfloat16_avx512(const int8_t* codes, int64_t ldw, const CodeParameters& parameters,
                                                    int64_t top, int64_t first, int64_t depth, int64_t count,
                                                    at::BFloat16* panels, int64_t panel_depth) {
  for_each_transposed16<2>(
      codes, ldw, parameters, top, first, depth, count, [&](int64_t row, int64_t k, const __m512* values) {
        _mm512_storeu_si512(
            panels + row / kPanelColumns * kPanelColumns * panel_depth + k * kPanelColumns + row % kPanelColumns * 2,
            avx512::bfloat16_pairs(values[0], values[1]));
      });
}

} // namespace qlgrad::math
