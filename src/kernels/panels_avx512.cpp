// The panel GEMM's kernels (AVX-512): the weight converted into panels of kPanelColumns columns,
// the form a GEMM packs its weight into anyway (so the conversion is the packing), and the kernel
// that multiplies kKernelRows rows of packed lhs by a panel with the sums held in registers.

#include "variants.h"

#include "avx512.h"
#include "packed_rows_avx512.h"
#include "transposed_codes_avx512.h"

namespace qlgrad::math {
namespace {

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
  avx512::store_sums<Rows>(low, high, out, ldo, width, accumulate);
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
      float* panel = panels + column * panel_depth;
      for (int64_t n = block_top; n < std::min(depth, block_top + kRowsAtOnce); ++n) {
        __m512 low, high;
        avx512::values32(codes + n * ldw + column, parameters, top + n, first + column, count - column, low, high);
        _mm512_storeu_ps(panel + n * kPanelColumns, low);
        _mm512_storeu_ps(panel + n * kPanelColumns + 16, high);
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

void pack_rows_avx512(const float* lhs, int64_t ldl, int64_t count, int64_t depth, const float* factors,
                      int64_t factor_stride, float* block) {
  pack_rows16(count, depth, block, [&](int64_t r, int64_t d, int64_t lanes) {
    const __mmask16 mask = avx512::lanes_mask(lanes);
    __m512 values = _mm512_maskz_loadu_ps(mask, lhs + r * ldl + d);
    if (factors != nullptr) {
      values = _mm512_mul_ps(values,
                             factor_stride == 0 ? _mm512_set1_ps(*factors) : _mm512_maskz_loadu_ps(mask, factors + d));
    }
    return _mm512_castps_si512(values);
  });
}

void convert_panels_int8_avx512(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                                int64_t first, int64_t depth, int64_t count, float* panels, int64_t panel_depth) {
  convert_panels(codes, ldw, parameters, top, first, depth, count, panels, panel_depth);
}

void convert_panels_float16_avx512(const at::Half* values, int64_t ldw, const CodeParameters& parameters, int64_t top,
                                   int64_t first, int64_t depth, int64_t count, float* panels, int64_t panel_depth) {
  convert_panels(values, ldw, parameters, top, first, depth, count, panels, panel_depth);
}

void convert_transposed_panels_int8_avx512(const int8_t* codes, int64_t ldw, const CodeParameters& parameters,
                                           int64_t top, int64_t first, int64_t depth, int64_t count, float* panels,
                                           int64_t panel_depth) {
  for_each_transposed16<1>(
      codes, ldw, parameters, top, first, depth, count, [&](int64_t row, int64_t k, const __m512* values) {
        _mm512_storeu_ps(
            panels + row / kPanelColumns * kPanelColumns * panel_depth + k * kPanelColumns + row % kPanelColumns,
            values[0]);
      });
}

} // namespace qlgrad::math
