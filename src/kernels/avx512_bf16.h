#pragma once
// The last header of an AVX512-BF16 kernel file: as avx512.h, with bfloat16 dot products
// (vdpbf16ps) and conversions (vcvtne2ps2bf16) too, the one place that set is spelled.

#include "avx512.h"

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

} // namespace qlgrad::math::avx512
