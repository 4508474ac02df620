#include "row_quantization.h"
#include "variants.h"

#include "avx512.h"

namespace qlgrad::math {
namespace {

// PlainRowLoops' loops in AVX-512 registers, 16 values at a time, with the same results bit for
// bit. The compiler's vectorization of the plain loops spent most of its instructions on blends
// and on std::clamp's NaN cases, which the finite rows these loops see never meet. 256 x 4864
// bfloat16 activations on one core of a Xeon with AMX: quantized and dequantized (torchao's
// group-wise layers) 0.59 ms by the plain loops, 0.46 ms by these; quantized symmetrically
// (torchao's int8 layers) 0.64-0.68 ms, 0.22 ms (0.28-0.34 ms before the rounding and the clamp
// went into the conversion, and a NaN test and an infinity test into one classification).
struct Avx512RowLoops {
  template <typename Element>
  static __m512 in_dtype(__m512 values) {
    if constexpr (std::is_same_v<Element, at::BFloat16>) {
      return _mm512_castsi512_ps(
          _mm512_and_si512(avx512::bfloat16_rounding(values), _mm512_set1_epi32(int32_t(0xFFFF0000u))));
    } else {
      return values;
    }
  }

  static void store16(__mmask16 mask, __m512 values, float* out) { _mm512_mask_storeu_ps(out, mask, values); }

  static void store16(__mmask16 mask, __m512 values, at::BFloat16* out) {
    _mm256_mask_storeu_epi16(out, mask,
                             _mm512_cvtepi32_epi16(_mm512_srli_epi32(avx512::bfloat16_rounding(values), 16)));
  }

  template <typename Element>
  static RowExtremes extremes(const Element* row, int64_t n) {
    // Masked-off lanes load zeros, which change neither extreme (low <= 0 <= high) nor a count.
    // low = min(value, low) keeps low for a NaN value, as the plain loop's comparison does. One
    // classification a step finds NaNs and infinities alike; which of them a row holds is asked
    // only of the rare row that has one.
    __m512 low = _mm512_setzero_ps(), high = _mm512_setzero_ps();
    __mmask16 non_finite = 0;
    constexpr int kNaNOrInfinity = 0x01 | 0x08 | 0x10 | 0x80;  // quiet NaN, +inf, -inf, signalling NaN
    for (int64_t j = 0; j < n; j += 16) {
      const __m512 value = avx512::load_values16(avx512::lanes_mask(n - j), row + j);
      low = _mm512_min_ps(value, low);
      high = _mm512_max_ps(value, high);
      non_finite |= _mm512_fpclass_ps_mask(value, kNaNOrInfinity);
    }
    __mmask16 nans = 0;
    for (int64_t j = 0; non_finite != 0 && j < n; j += 16) {
      const __m512 value = avx512::load_values16(avx512::lanes_mask(n - j), row + j);
      nans |= _mm512_cmp_ps_mask(value, value, _CMP_UNORD_Q);
    }
    // Counts of lanes, not of values: only whether they are zero matters.
    return {_mm512_reduce_min_ps(low), _mm512_reduce_max_ps(high), non_finite != 0, nans != 0};
  }

  // The value times the inverse scale, rounded half to even and saturated to int8 as it is
  // converted: the rounding, clamp and conversion of the plain loop, in two instructions (rows
  // with a NaN or an infinity never come here, and the scale keeps every product within 129).
  template <typename Element>
  static void round_symmetric(const Element* row, int64_t n, float inverse, int8_t* out) {
    const __m512 factor = _mm512_set1_ps(inverse);
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 mask = avx512::lanes_mask(n - j);
      const __m512i code = _mm512_cvt_roundps_epi32(_mm512_mul_ps(avx512::load_values16(mask, row + j), factor),
                                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm512_mask_cvtsepi32_storeu_epi8(out + j, mask, code);
    }
  }

  // The int8 code of 16 values of a finite row (as a float): the rounding and clamp of
  // PlainRowLoops::quant_dequant_finite.
  template <typename Element>
  static __m512 code16(__mmask16 mask, const Element* values, __m512 factor, __m512 zero) {
    const __m512 rounded =
        _mm512_roundscale_ps(in_dtype<Element>(_mm512_mul_ps(avx512::load_values16(mask, values), factor)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(rounded, zero), _mm512_set1_ps(-128.0f)), _mm512_set1_ps(127.0f));
  }

  template <typename Element>
  static void quant_dequant_finite(const Element* row, int64_t n, float inverse, float zero_code, float scale,
                                   Element* out) {
    const __m512 factor = _mm512_set1_ps(inverse), zero = _mm512_set1_ps(zero_code), step = _mm512_set1_ps(scale);
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 mask = avx512::lanes_mask(n - j);
      store16(mask, _mm512_mul_ps(_mm512_sub_ps(code16(mask, row + j, factor, zero), zero), step), out + j);
    }
  }

  // Each code plus 128, as uint8.
  template <typename Element>
  static void quantize_finite(const Element* row, int64_t n, float inverse, float zero_code, uint8_t* out) {
    const __m512 factor = _mm512_set1_ps(inverse), zero = _mm512_set1_ps(zero_code), offset = _mm512_set1_ps(128.0f);
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 mask = avx512::lanes_mask(n - j);
      const __m512i code = _mm512_cvtps_epi32(_mm512_add_ps(code16(mask, row + j, factor, zero), offset));
      _mm512_mask_cvtepi32_storeu_epi8(out + j, mask, code);
    }
  }
};

} // namespace

void quantize_rows_avx512(const float* grad, const float* channel_scale, int64_t begin, int64_t end, int64_t n,
                          int8_t* quantized, int64_t ldq, float* row_scale) {
  quantize_rows(grad, channel_scale, begin, end, n, quantized, ldq, row_scale);
}

void quantize_rows_symmetric_avx512(const float* input, int64_t begin, int64_t end, int64_t n, int8_t* quantized,
                                    float* row_scale) {
  quantize_rows_symmetric<Avx512RowLoops>(input, begin, end, n, quantized, row_scale);
}

void quantize_rows_symmetric_bfloat16_avx512(const at::BFloat16* input, int64_t begin, int64_t end, int64_t n,
                                             int8_t* quantized, float* row_scale) {
  quantize_rows_symmetric<Avx512RowLoops>(input, begin, end, n, quantized, row_scale);
}

void quant_dequant_rows_asymmetric_avx512(const float* input, int64_t begin, int64_t end, int64_t n, float* out) {
  quant_dequant_rows_asymmetric<Avx512RowLoops>(input, begin, end, n, out);
}

void quant_dequant_rows_asymmetric_bfloat16_avx512(const at::BFloat16* input, int64_t begin, int64_t end, int64_t n,
                                                   at::BFloat16* out) {
  quant_dequant_rows_asymmetric<Avx512RowLoops>(input, begin, end, n, out);
}

void quantize_rows_asymmetric_avx512(const float* input, int64_t begin, int64_t end, int64_t n, uint8_t* codes,
                                     float* row_scale, float* row_offset) {
  quantize_rows_asymmetric<Avx512RowLoops>(input, begin, end, n, codes, row_scale, row_offset);
}

void quantize_rows_asymmetric_bfloat16_avx512(const at::BFloat16* input, int64_t begin, int64_t end, int64_t n,
                                              uint8_t* codes, float* row_scale, float* row_offset) {
  quantize_rows_asymmetric<Avx512RowLoops>(input, begin, end, n, codes, row_scale, row_offset);
}

} // namespace qlgrad::math
