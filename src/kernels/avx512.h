#pragma once
// The last header of an AVX-512 kernel file: every function the file defines after it is compiled
// for ATen's AVX512 capability (AVX-512 F, BW, VL and DQ, with FMA), the one place that set is
// spelled, and has the vector helpers below. Headers included after it would have their inline
// functions compiled for AVX-512 too, and the linker could pick those copies for callers on any
// CPU: so it comes last.

#include <immintrin.h>

#include <c10/util/Half.h>

#include <cstdint>

// GCC 12 warns that its own AVX-512 intrinsics read an uninitialized register (GCC bug 105593,
// fixed in 13): the "undefined" source operand of unmasked conversions and unpacks.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")

namespace qlgrad::math::avx512 {

// The first `columns` of 16 lanes.
inline __mmask16 lanes_mask(int64_t columns) {
  return columns >= 16 ? __mmask16(0xFFFF) : columns <= 0 ? __mmask16(0) : __mmask16((1u << columns) - 1);
}

// Up to 16 codes (or float16 values) as float32 lanes, zero past the mask.
inline __m512 load_values16(__mmask16 mask, const int8_t* codes) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, codes)));
}

inline __m512 load_values16(__mmask16 mask, const at::Half* values) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, values));
}

} // namespace qlgrad::math::avx512
