#pragma once
// The last header of an AVX512-BF16 kernel file: as avx512.h, with bfloat16 dot products
// (vdpbf16ps) and conversions (vcvtne2ps2bf16) too, the one place that set is spelled.

#include "avx512.h"

#include <utility>

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")

namespace qlgrad::math::avx512 {

// 32 float32 values as bfloat16 pairs, rounded to nearest even: lane j of the result holds
// (even[j], odd[j]), the order in which vdpbf16ps multiplies a pair.
inline __m512i bfloat16_pairs(__m512 even, __m512 odd) {
  // vcvtne2ps2bf16 puts its second operand's 16 values first; the pairs are then interleaved.
  const __m512i halves = (__m512i)_mm512_cvtne2ps_pbh(odd, even);
  const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                                              6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(interleave, halves);
}

// 32 codes of weight row n as bfloat16 values in order, rounded to nearest even (group_values16),
// the first 16 in group low_group, the others in high_group; `values` of them exist (zero past).
template <bool Offsets>
inline __m512i bfloat16_values32(const int8_t* codes, int64_t values, const CodeParameters& parameters, int64_t n,
                                 int64_t low_group, int64_t high_group) {
  __m512 low, high;
  if (values >= 32) {
    low = group_values16<Offsets, true>(0, codes, parameters, n, low_group);
    high = group_values16<Offsets, true>(0, codes + 16, parameters, n, high_group);
  } else {
    low = group_values16<Offsets>(lanes_mask(values), codes, parameters, n, low_group);
    high = group_values16<Offsets>(lanes_mask(values - 16), codes + 16, parameters, n, high_group);
  }
  // vcvtne2ps2bf16 puts its second operand's values first.
  return (__m512i)_mm512_cvtne2ps_pbh(high, low);
}

// 32 values of a row of lhs from `row` as two float32 vectors, zero past the first `values`.
inline std::pair<__m512, __m512> load32(const float* row, int64_t values) {
  return {load_values16(lanes_mask(values), row), load_values16(lanes_mask(values - 16), row + 16)};
}

inline std::pair<__m512, __m512> load32(const at::BFloat16* row, int64_t values) {
  return {load_values16(lanes_mask(values), row), load_values16(lanes_mask(values - 16), row + 16)};
}

// The values n to n + 31 of a row of lhs times their factors (factors[n * factor_stride]; none
// where factors is null), each product rounded to float32; `values` of them exist.
inline void multiply32(std::pair<__m512, __m512>& row, const float* factors, int64_t factor_stride, int64_t n,
                       int64_t values) {
  if (factors != nullptr && factor_stride == 0) {
    row.first = _mm512_mul_ps(row.first, _mm512_set1_ps(*factors));
    row.second = _mm512_mul_ps(row.second, _mm512_set1_ps(*factors));
  } else if (factors != nullptr) {
    const auto [low, high] = load32(factors + n, values);
    row.first = _mm512_mul_ps(row.first, low);
    row.second = _mm512_mul_ps(row.second, high);
  }
}

// Rows of 32 float32 sums (as avx512::store_sums takes them) rounded to bfloat16 (to nearest even),
// `width` of each row stored.
template <int64_t Rows>
inline void store_rounded_sums(__m512 (&low)[Rows], __m512 (&high)[Rows], at::BFloat16* out, int64_t ldo,
                               int64_t width) {
  const __mmask32 mask = lanes_mask32(width);
#pragma GCC unroll 12
  for (int64_t r = 0; r < Rows; ++r) {
    // vcvtne2ps2bf16 puts its second operand's values first.
    _mm512_mask_storeu_epi16(out + r * ldo, mask, (__m512i)_mm512_cvtne2ps_pbh(high[r], low[r]));
  }
}

// The values n to n + 31 of a row of lhs (from `row`, which points at value n) times their
// factors (multiply32), rounded to bfloat16 once, in order; `values` of them exist, zero past.
template <typename Source>
inline __m512i scaled_bfloat16_32(const Source* row, int64_t values, const float* factors, int64_t factor_stride,
                                  int64_t n) {
  auto scaled = load32(row, values);
  multiply32(scaled, factors, factor_stride, n, values);
  // vcvtne2ps2bf16 puts its second operand's values first.
  return (__m512i)_mm512_cvtne2ps_pbh(scaled.second, scaled.first);
}

} // namespace qlgrad::math::avx512
