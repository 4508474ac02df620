#pragma once
// The last header of an AVX-512 kernel file: every function the file defines after it is compiled
// for ATen's AVX512 capability (AVX-512 F, BW, VL and DQ, with FMA), the one place that set is
// spelled, and has the vector helpers below. Headers included after it would have their inline
// functions compiled for AVX-512 too, and the linker could pick those copies for callers on any
// CPU: so it comes last.

#include <immintrin.h>

#include "code_parameters.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>

// GCC 12 warns that its own AVX-512 intrinsics read an uninitialized register (GCC bug 105593,
// fixed in 13): the "undefined" source operand of unmasked conversions and unpacks.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")

namespace qlgrad::math::avx512 {

// The panel converters' prefetches go to L2, not L1. A converter reads the same columns of 16 rows
// at a time, and rows whose stride is a multiple of 4 KiB (int8 codes of 4096 or 11008 x 4096
// weights, the large language models' widths) put those lines in one set of L1, which holds 8
// (Zen 4) or 12 (Sapphire Rapids) of them: lines prefetched into L1 evicted each other before
// they were read. L2 spreads them over its sets. On an AMD EPYC, 2 threads, prefetched into L2 rather
// than L1, alternated in one process: bfloat16 gradients by int8 codes in rows, 4096 x 4096 with
// the weight evicted between calls, 8-16 rows 0.76-0.84x the time (per channel, groups of 128 and
// of 32), 64 rows 0.90-0.92x, 256 rows 0.98x; 11008 x 4096 with the weight hot (larger than L3),
// 8 rows 0.74-0.83x, 64 rows 0.89-0.94x; the `int8` and `fp32` panels from codes in rows 0.78-0.97x
// and 0.90-1.00x; weights whose rows are not 4 KiB apart (the decoders' 896 and 4864) the same.
inline constexpr _mm_hint kConverterPrefetchHint = _MM_HINT_T1;

// Prefetches `count` values of each of `rows` rows from `values`, `ldw` values apart: the next rows
// a panel converter reads. It reads a few cache lines of each row in turn, too short a run for the
// hardware prefetchers to follow, and the codes come from L3 or memory: rotating through the 56
// projections of a decoder, the conversion took 1.5x as long as with one hot weight.
template <typename Value>
inline void prefetch_rows(const Value* values, int64_t ldw, int64_t rows, int64_t count) {
  const auto* bytes = reinterpret_cast<const char*>(values);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t offset = 0; offset < count * int64_t{sizeof(Value)}; offset += 64) {
      _mm_prefetch(bytes + r * ldw * int64_t{sizeof(Value)} + offset, kConverterPrefetchHint);
    }
  }
}

// Prefetches the values at `column` of rows [from, to) (`values` pointing at row 0, rows `ldw`
// apart) once per cache line: the bfloat16 converter, as it reaches each line of its current
// rows, asks for that line of the rows it converts next. Its conversions take long enough per
// line that prefetch_rows' burst stalled on the line fill buffers for a fifth of the conversion's
// time (perf); spread among the conversions, the bfloat16 input gradients of int8 codes at 256
// rows took 2-5% less time. (The float32 converter measured the same either way, the int8 one
// 10% slower.)
template <typename Value>
inline void prefetch_column(const Value* values, int64_t ldw, int64_t from, int64_t to, int64_t column) {
  if (column * int64_t{sizeof(Value)} % 64 == 0) {
    for (int64_t row = from; row < to; ++row) {
      _mm_prefetch(reinterpret_cast<const char*>(values + row * ldw + column), kConverterPrefetchHint);
    }
  }
}

// Finite float32 values rounded to nearest even at bfloat16's precision, as c10::BFloat16 rounds
// them: the bits of the rounded value in the upper 16 of each lane (the lower 16 are left over
// from the rounding: shift or mask them off).
inline __m512i bfloat16_rounding(__m512 values) {
  const __m512i bits = _mm512_castps_si512(values);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  return _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
}

// The first `columns` of 16 lanes.
inline __mmask16 lanes_mask(int64_t columns) {
  return columns >= 16 ? __mmask16(0xFFFF) : columns <= 0 ? __mmask16(0) : __mmask16((1u << columns) - 1);
}

// The first `columns` of 32 lanes (16-bit values: bfloat16 or float16).
inline __mmask32 lanes_mask32(int64_t columns) {
  return columns >= 32 ? ~__mmask32(0) : columns <= 0 ? __mmask32(0) : (__mmask32(1) << columns) - 1;
}

// 16 bfloat16 values as float32 (exact).
inline __m512 widen(__m256i halves) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16));
}

// Up to 16 codes (or float16, bfloat16 or float32 values) as float32 lanes, zero past the mask.
inline __m512 load_values16(__mmask16 mask, const int8_t* codes) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, codes)));
}

inline __m512 load_values16(__mmask16 mask, const at::Half* values) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, values));
}

inline __m512 load_values16(__mmask16 mask, const at::BFloat16* values) {
  return widen(_mm256_maskz_loadu_epi16(mask, values));
}

inline __m512 load_values16(__mmask16 mask, const float* values) {
  return _mm512_maskz_loadu_ps(mask, values);
}

// 16 codes (or float16 values) as float32 lanes, where all 16 exist.
inline __m512 load_values16(const int8_t* codes) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes))));
}

inline __m512 load_values16(const at::Half* values) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(values)));
}

// Up to 16 codes of weight row n, all in one group, as values: (code - offset) * factor, zero
// past the mask (with Whole, 16 codes and no mask); without zero points (Offsets false) nothing
// is subtracted.
template <bool Offsets, bool Whole = false>
[[gnu::always_inline]] inline __m512 group_values16(__mmask16 mask, const int8_t* codes,
                                                    const CodeParameters& parameters, int64_t n, int64_t group) {
  __m512 values = Whole ? load_values16(codes) : load_values16(mask, codes);
  if constexpr (Offsets) {
    values = _mm512_sub_ps(values, _mm512_set1_ps(parameters.offset(n, group)));
  }
  const __m512 factor = _mm512_set1_ps(parameters.factor(n, group));
  return Whole ? _mm512_mul_ps(values, factor) : _mm512_maskz_mul_ps(mask, values, factor);
}

// Which groups 16 columns of the weight from `column` lie in: the same for every row, so found
// once per block of columns (a division by the group size costs as much as converting a row's 32
// codes). One group's index where they lie in one (group sizes that are multiples of 16, and per
// tensor or per channel), else each lane's. Columns past the weight's last take its last group,
// so that no parameter past a row's is read: their lanes are masked off.
struct LaneGroups {
  int64_t group = 0;
  bool one_group = true;
  __m512i lanes = _mm512_setzero_si512();

  LaneGroups(const CodeParameters& parameters, int64_t column) {
    if (parameters.groups == 1) {
      return;
    }
    const int64_t first_group = column / parameters.group_size;
    group = std::min(first_group, parameters.groups - 1);
    one_group = column + 16 <= (first_group + 1) * parameters.group_size;
    if (!one_group) {
      alignas(64) int32_t lane_groups[16];
      for (int64_t lane = 0; lane < 16; ++lane) {
        lane_groups[lane] =
            static_cast<int32_t>(std::min((column + lane) / parameters.group_size, parameters.groups - 1));
      }
      lanes = _mm512_load_si512(lane_groups);
    }
  }
};

// The offsets and factors of 16 columns of weight row n that lie in `where`.
inline void lane_parameters(const CodeParameters& parameters, int64_t n, const LaneGroups& where, __m512& offsets,
                            __m512& factors) {
  if (where.one_group) {
    offsets = _mm512_set1_ps(parameters.offset(n, where.group));
    factors = _mm512_set1_ps(parameters.factor(n, where.group));
    return;
  }
  const int64_t row = n * parameters.groups;
  offsets = parameters.zero_point == nullptr ? _mm512_setzero_ps()
                                             : _mm512_i32gather_ps(where.lanes, parameters.zero_point + row, 4);
  factors =
      parameters.scale == nullptr ? _mm512_set1_ps(1.0f) : _mm512_i32gather_ps(where.lanes, parameters.scale + row, 4);
}

// The values of 32 columns of weight row n (`row` points at its codes there) that lie in `low`
// and `high`, zero past `count` columns, as two vectors of 16.
template <typename Code>
inline void values32(const Code* row, const CodeParameters& parameters, int64_t n, const LaneGroups& low_groups,
                     const LaneGroups& high_groups, int64_t count, __m512& low, __m512& high) {
  const __mmask16 low_mask = lanes_mask(count), high_mask = lanes_mask(count - 16);
  if (parameters.scale == nullptr && parameters.zero_point == nullptr) {
    // The values are the codes (lhs carries the scale, no zero point). With few rows of lhs the
    // conversion is most of a product's time: bfloat16 products of 16 rows by int8 codes of
    // 4096x4096, on a Sapphire Rapids Xeon, 1.86-2.03 ms with the parameters, 1.60-1.69 without.
    low = load_values16(low_mask, row);
    high = load_values16(high_mask, row + 16);
    return;
  }
  __m512 low_offsets, low_factors, high_offsets, high_factors;
  lane_parameters(parameters, n, low_groups, low_offsets, low_factors);
  lane_parameters(parameters, n, high_groups, high_offsets, high_factors);
  if (count >= 32) {  // no masks
    low = _mm512_mul_ps(_mm512_sub_ps(load_values16(row), low_offsets), low_factors);
    high = _mm512_mul_ps(_mm512_sub_ps(load_values16(row + 16), high_offsets), high_factors);
    return;
  }
  low = _mm512_maskz_mul_ps(low_mask, _mm512_sub_ps(load_values16(low_mask, row), low_offsets), low_factors);
  high = _mm512_maskz_mul_ps(high_mask, _mm512_sub_ps(load_values16(high_mask, row + 16), high_offsets), high_factors);
}

// A panel kernel's sums (Rows rows of 32 columns, as two vectors each) before its first product:
// with `accumulate`, what out holds (`width` of its columns exist), so that every sum is one chain
// of fused multiply-adds along the whole depth, however it is cut into blocks (the order of
// torch's own int4 product, which qlgrad's reproduces bit for bit); else zero.
template <int64_t Rows>
inline void load_sums(__m512 (&low)[Rows], __m512 (&high)[Rows], const float* out, int64_t ldo, int64_t width,
                      bool accumulate) {
  const __mmask16 low_mask = lanes_mask(width), high_mask = lanes_mask(width - 16);
#pragma GCC unroll 12
  for (int64_t r = 0; r < Rows; ++r) {
    low[r] = accumulate ? _mm512_maskz_loadu_ps(low_mask, out + r * ldo) : _mm512_setzero_ps();
    high[r] = accumulate ? _mm512_maskz_loadu_ps(high_mask, out + r * ldo + 16) : _mm512_setzero_ps();
  }
}

// The sums into out, `width` of whose columns exist.
template <int64_t Rows>
inline void store_sums(__m512 (&low)[Rows], __m512 (&high)[Rows], float* out, int64_t ldo, int64_t width) {
  const __mmask16 low_mask = lanes_mask(width), high_mask = lanes_mask(width - 16);
#pragma GCC unroll 12
  for (int64_t r = 0; r < Rows; ++r) {
    _mm512_mask_storeu_ps(out + r * ldo, low_mask, low[r]);
    _mm512_mask_storeu_ps(out + r * ldo + 16, high_mask, high[r]);
  }
}

} // namespace qlgrad::math::avx512
