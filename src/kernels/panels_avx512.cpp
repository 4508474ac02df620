// The panel GEMM's kernels (AVX-512): the weight converted into panels of kPanelColumns columns,
// the form a GEMM packs its weight into anyway (so the conversion is the packing), and the kernel
// that multiplies kKernelRows rows of packed lhs by a panel with the sums held in registers.

#include "variants.h"

#include "avx512.h"

namespace qlgrad::math {
namespace {

using avx512::lanes_mask;
using avx512::load_values16;

template <int64_t Rows>
void panel_kernel(const float* lhs, const float* panel, int64_t depth, float* out, int64_t ldo, int64_t width,
                  bool accumulate) {
  __m512 low[Rows], high[Rows];
#pragma GCC unroll 12
  for (int64_t r = 0; r < Rows; ++r) {
    low[r] = _mm512_setzero_ps();
    high[r] = _mm512_setzero_ps();
  }
  for (int64_t n = 0; n < depth; ++n) {
    const __m512 panel_low = _mm512_loadu_ps(panel + n * kPanelColumns);
    const __m512 panel_high = _mm512_loadu_ps(panel + n * kPanelColumns + 16);
#pragma GCC unroll 12
    for (int64_t r = 0; r < Rows; ++r) {
      const __m512 factor = _mm512_set1_ps(lhs[n * kKernelRows + r]);
      low[r] = _mm512_fmadd_ps(factor, panel_low, low[r]);
      high[r] = _mm512_fmadd_ps(factor, panel_high, high[r]);
    }
  }
  const __mmask16 low_mask = lanes_mask(width), high_mask = lanes_mask(width - 16);
#pragma GCC unroll 12
  for (int64_t r = 0; r < Rows; ++r) {
    float* row = out + r * ldo;
    if (accumulate) {
      low[r] = _mm512_add_ps(low[r], _mm512_maskz_loadu_ps(low_mask, row));
      high[r] = _mm512_add_ps(high[r], _mm512_maskz_loadu_ps(high_mask, row + 16));
    }
    _mm512_mask_storeu_ps(row, low_mask, low[r]);
    _mm512_mask_storeu_ps(row + 16, high_mask, high[r]);
  }
}

// The offsets and factors of the 16 columns from `column` of weight row n: one group's
// broadcast where they lie in one (group sizes that are multiples of 16), else lane by lane.
void lane_parameters(const CodeParameters& parameters, int64_t n, int64_t column, __m512& offsets, __m512& factors) {
  const int64_t group = column / parameters.group_size;
  if (column + 16 <= (group + 1) * parameters.group_size) {
    offsets = _mm512_set1_ps(parameters.offset(n, group));
    factors = _mm512_set1_ps(parameters.factor(n, group));
    return;
  }
  alignas(64) float lane_offsets[16], lane_factors[16];
  for (int64_t lane = 0; lane < 16; ++lane) {
    // Columns past the weight's last take its last group: their lanes are masked off.
    const int64_t lane_group = std::min((column + lane) / parameters.group_size, parameters.groups - 1);
    lane_offsets[lane] = parameters.offset(n, lane_group);
    lane_factors[lane] = parameters.factor(n, lane_group);
  }
  offsets = _mm512_load_ps(lane_offsets);
  factors = _mm512_load_ps(lane_factors);
}

// A few rows at a time, whose codes stay in L1 while each panel's share is written as one
// contiguous run: a row at a time would store to every panel, kilobytes apart, in the same few L1
// sets; a panel at a time would read each row from a page of its own.
template <typename Code>
void convert_panels(const Code* codes, int64_t ldw, const CodeParameters& parameters, int64_t top, int64_t first,
                    int64_t depth, int64_t count, float* panels, int64_t panel_depth) {
  constexpr int64_t kRowsAtOnce = 16;
  for (int64_t block_top = 0; block_top < depth; block_top += kRowsAtOnce) {
    for (int64_t column = 0; column < count; column += kPanelColumns) {
      const __mmask16 low_mask = lanes_mask(count - column), high_mask = lanes_mask(count - column - 16);
      float* panel = panels + column * panel_depth;
      for (int64_t n = block_top; n < std::min(depth, block_top + kRowsAtOnce); ++n) {
        const Code* row = codes + n * ldw + column;
        __m512 low_offsets, low_factors, high_offsets, high_factors;
        lane_parameters(parameters, top + n, first + column, low_offsets, low_factors);
        lane_parameters(parameters, top + n, first + column + 16, high_offsets, high_factors);
        const __m512 low = load_values16(low_mask, row), high = load_values16(high_mask, row + 16);
        _mm512_storeu_ps(panel + n * kPanelColumns,
                         _mm512_maskz_mul_ps(low_mask, _mm512_sub_ps(low, low_offsets), low_factors));
        _mm512_storeu_ps(panel + n * kPanelColumns + 16,
                         _mm512_maskz_mul_ps(high_mask, _mm512_sub_ps(high, high_offsets), high_factors));
      }
    }
  }
}

} // namespace

void panel_rows_avx512(int64_t rows, const float* lhs, const float* panel, int64_t depth, float* out, int64_t ldo,
                       int64_t width, bool accumulate) {
  with_rows<kKernelRows>(rows,
                         [&]<int64_t Rows>() { panel_kernel<Rows>(lhs, panel, depth, out, ldo, width, accumulate); });
}

void convert_panels_int8_avx512(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                                int64_t first, int64_t depth, int64_t count, float* panels, int64_t panel_depth) {
  convert_panels(codes, ldw, parameters, top, first, depth, count, panels, panel_depth);
}

void convert_panels_float16_avx512(const at::Half* values, int64_t ldw, const CodeParameters& parameters, int64_t top,
                                   int64_t first, int64_t depth, int64_t count, float* panels, int64_t panel_depth) {
  convert_panels(values, ldw, parameters, top, first, depth, count, panels, panel_depth);
}

} // namespace qlgrad::math
