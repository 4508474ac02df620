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
  avx512::load_sums<Rows>(low, high, out, ldo, width, accumulate);
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
  avx512::store_sums<Rows>(low, high, out, ldo, width);
}

// A few rows at a time, whose codes stay in L1 while each panel's share is written as one
// contiguous run: a row at a time would store to every panel, kilobytes apart, in the same few L1
// sets; a panel at a time would read each row from a page of its own.
template <typename Code>
void convert_panels(const Code* codes, int64_t ldw, const CodeParameters& shared_parameters, int64_t top, int64_t first,
                    int64_t depth, int64_t count, float* panels, int64_t panel_depth) {
  // A copy that the stores into the panels cannot alias: its fields stay in registers.
  const CodeParameters parameters = shared_parameters;
  constexpr int64_t kRowsAtOnce = 16;
  for (int64_t block_top = 0; block_top < depth; block_top += kRowsAtOnce) {
    if (const int64_t next_top = block_top + kRowsAtOnce; next_top < depth) {
      avx512::prefetch_rows(codes + next_top * ldw, ldw, std::min(kRowsAtOnce, depth - next_top), count);
    }
    for (int64_t column = 0; column < count; column += kPanelColumns) {
      float* panel = panels + column * panel_depth;
      const avx512::LaneGroups low_groups(parameters, first + column), high_groups(parameters, first + column + 16);
      for (int64_t n = block_top; n < std::min(depth, block_top + kRowsAtOnce); ++n) {
        __m512 low, high;
        avx512::values32(codes + n * ldw + column, parameters, top + n, low_groups, high_groups, count - column, low,
                         high);
        _mm512_storeu_ps(panel + n * kPanelColumns, low);
        _mm512_storeu_ps(panel + n * kPanelColumns + 16, high);
      }
    }
  }
}

// float32 values rounded to bfloat16, to nearest even, as c10::BFloat16 rounds; each value stays
// a float32 whose low 16 bits are zero. Infinity stays infinity, and a NaN whose low 16 bits are
// zero stays a NaN (the carry cannot reach its exponent): RescaleSumsFn's parameters hold no
// other, nor does arithmetic make one.
__m512 bfloat16_rounded(__m512 values) {
  return _mm512_castsi512_ps(
      _mm512_and_si512(avx512::bfloat16_rounding(values), _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u))));
}

// One step's result: rounded to bfloat16 where `step` is among `bfloat16_steps`, and in any case
// kept out of the next operation, which GCC would otherwise fuse with a product into one fused
// multiply-add that rounds once.
__m512 step_result(__m512 values, unsigned bfloat16_steps, RescaleStep step) {
  if ((bfloat16_steps & step) != 0) {
    values = bfloat16_rounded(values);
  }
  __asm__("" : "+v"(values));
  return values;
}

// `rounded`: the values are bfloat16's already (the last step rounded them).
void store_values(__mmask16 mask, float* to, __m512 values, bool /*rounded*/) {
  _mm512_mask_storeu_ps(to, mask, values);
}

void store_values(__mmask16 mask, at::BFloat16* to, __m512 values, bool rounded) {
  if (!rounded) {
    values = bfloat16_rounded(values);
  }
  _mm512_mask_cvtepi32_storeu_epi16(to, mask, _mm512_srli_epi32(_mm512_castps_si512(values), 16));
}

template <typename Element>
void rescale_sums(const int32_t* sums, int64_t sums_stride, int64_t rows, int64_t columns, const int32_t* row_offset,
                  const float* row_scale, const float* column_scale, const float* bias, unsigned bfloat16_steps,
                  Element* out, int64_t out_stride) {
  const RescaleStep last_step = bias != nullptr ? kBiasSum : column_scale != nullptr ? kColumnProduct : kRowProduct;
  const bool rounded = (bfloat16_steps & last_step) != 0;
  for (int64_t m = 0; m < rows; ++m) {
    const __m512i offset = _mm512_set1_epi32(row_offset != nullptr ? row_offset[m] : 0);
    const __m512 row_factor = _mm512_set1_ps(row_scale[m]);
    for (int64_t n = 0; n < columns; n += 16) {
      const __mmask16 mask = avx512::lanes_mask(columns - n);
      const __m512i sum = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(mask, sums + m * sums_stride + n), offset);
      __m512 values = step_result(_mm512_cvtepi32_ps(sum), bfloat16_steps, kConversion);
      values = step_result(_mm512_mul_ps(values, row_factor), bfloat16_steps, kRowProduct);
      if (column_scale != nullptr) {
        values = step_result(_mm512_mul_ps(values, _mm512_maskz_loadu_ps(mask, column_scale + n)), bfloat16_steps,
                             kColumnProduct);
      }
      if (bias != nullptr) {
        values = step_result(_mm512_add_ps(values, _mm512_maskz_loadu_ps(mask, bias + n)), bfloat16_steps, kBiasSum);
      }
      store_values(mask, out + m * out_stride + n, values, rounded);
    }
  }
}

} // namespace

void rescale_sums_avx512(const int32_t* sums, int64_t sums_stride, int64_t rows, int64_t columns,
                         const int32_t* row_offset, const float* row_scale, const float* column_scale,
                         const float* bias, unsigned bfloat16_steps, float* out, int64_t out_stride) {
  rescale_sums(sums, sums_stride, rows, columns, row_offset, row_scale, column_scale, bias, bfloat16_steps, out,
               out_stride);
}

void rescale_sums_bfloat16_avx512(const int32_t* sums, int64_t sums_stride, int64_t rows, int64_t columns,
                                  const int32_t* row_offset, const float* row_scale, const float* column_scale,
                                  const float* bias, unsigned bfloat16_steps, at::BFloat16* out, int64_t out_stride) {
  rescale_sums(sums, sums_stride, rows, columns, row_offset, row_scale, column_scale, bias, bfloat16_steps, out,
               out_stride);
}

void panel_rows_avx512(int64_t rows, const float* lhs, const float* panel, int64_t depth, float* out, int64_t ldo,
                       int64_t width, bool accumulate) {
  with_rows<kKernelRows>(rows,
                         [&]<int64_t Rows>() { panel_kernel<Rows>(lhs, panel, depth, out, ldo, width, accumulate); });
}

void pack_rows_avx512(const float* lhs, int64_t ldl, int64_t count, int64_t depth, const float* factors,
                      int64_t factor_stride, float* block, bool streamed) {
  pack_rows16(count, depth, block, streamed, [&](int64_t r, int64_t d, int64_t lanes) {
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
