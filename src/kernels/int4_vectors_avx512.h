#pragma once
// The int4 packing's vectors, for the int4 kernel files of AVX-512 CPUs: included after avx512.h,
// avx512_bf16.h or amx.h, and of internal linkage, so that each file compiles them for its own
// instruction set.

#include "int4_packing.h"
#include "transpose16_avx512.h"

namespace qlgrad::math {
namespace {

// The 16 values W[row:row + 16, column] of the rows `where` describes, with their group's
// scales and zeros (as scales_and_zeros16 gives them): fma(code - 8, scale, zero), as the op
// computes them.
__m512 values16(const Int4Pack::Rows16& where, int64_t column, __m512 scales, __m512 zeros) {
  const uint8_t* bytes = where.column(column);
  const __m128i nibbles = _mm_set1_epi8(15);
  __m128i codes;
  if (where.pairs) {
    const __m128i packed = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes));
    codes = _mm_unpacklo_epi8(_mm_and_si128(packed, nibbles), _mm_and_si128(_mm_srli_epi16(packed, 4), nibbles));
  } else {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes));
    codes = _mm_and_si128(where.shift == 0 ? packed : _mm_srli_epi16(packed, 4), nibbles);
  }
  const __m512 centered = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(codes)), _mm512_set1_ps(8.0f));
  return _mm512_fmadd_ps(centered, scales, zeros);
}

// The scales and the zeros of rows [row, row + 16) in the group of `column`: lanes 0, 2, ..., 30
// and 1, 3, ..., 31 of their 16 pairs.
void scales_and_zeros16(const Int4Pack& pack, int64_t row, int64_t column, __m512& scales, __m512& zeros) {
  const float* pairs = pack.scale_and_zeros + (column / pack.group_size * pack.rows + row) * 2;
  const __m512 low = _mm512_loadu_ps(pairs), high = _mm512_loadu_ps(pairs + 16);
  const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  scales = _mm512_permutex2var_ps(low, evens, high);
  zeros = _mm512_permutex2var_ps(low, _mm512_add_epi32(evens, _mm512_set1_epi32(1)), high);
}

// store(row, column, values) for each 16 x 16 square of W[top:top + depth, first:first + count]
// (row and column from top and first), values[i] holding its row i's 16 columns.
template <typename Store>
void for_each_square(const Int4Pack& pack, int64_t top, int64_t first, int64_t depth, int64_t count,
                     const Store& store) {
  const Transpose16 transpose16;
  for (int64_t row = 0; row < depth; row += 16) {
    const auto where = pack.rows16(top + row);
    for (int64_t column = 0; column < count; column += 16) {
      // 16 columns lie in one group: group sizes are multiples of 32.
      __m512 scales, zeros;
      scales_and_zeros16(pack, top + row, first + column, scales, zeros);
      __m512 values[16];
      for (int64_t i = 0; i < 16; ++i) {
        values[i] = values16(where, first + column + i, scales, zeros);
      }
      transpose16(values);
      store(row, column, values);
    }
  }
}

// How far ahead of the codes it converts a loop over the packing asks for more (the codes of a
// real model's weights come from memory): the runs of codes it reads are a few KiB, over which
// the hardware's prefetchers, picking up each run anew, left the loads waiting (half of the
// bfloat16 training forward's conversion's samples). torch's int4 packing's training forward on a
// Zen 5 EPYC, 2 threads, alternated in one process over rotating weights, 4 KiB ahead over none:
// bfloat16 at 16 and 64 rows of 4096 -> 4096 0.88x and 0.95x the time, at 192 rows of 4096 ->
// 4096, 896 -> 4864, 4864 -> 896, 1024 -> 2816 and 2816 -> 1024 0.97-0.99x; float32 at 16-64 rows
// 0.95-0.97x, at 192 rows 1.00x. The backward: looked_up_panels.
constexpr int64_t kCodesAheadBytes = 4096;

// store(row, k, values) for the transposed weight's panels, W.T[top:top + depth, first:first + count]
// (the forward's x @ W.T): for each 16 rows of W from first (row from first, up to count rounded
// up to whole panels) and each Step columns of W from top (k from top), values[s] holding
// W[first + row:first + row + 16, top + k + s], which the packing keeps together. Zero past
// `count` and `depth`. Step columns share a group: top is a multiple of Step, group sizes of 32.
template <int64_t Step, typename Store>
void for_each_column16(const Int4Pack& pack, int64_t top, int64_t first, int64_t depth, int64_t count,
                       const Store& store) {
  for (int64_t row = 0; row < (count + kPanelColumns - 1) / kPanelColumns * kPanelColumns; row += 16) {
    __m512 values[Step];
    if (row >= count) {
      for (int64_t s = 0; s < Step; ++s) {
        values[s] = _mm512_setzero_ps();
      }
      for (int64_t k = 0; k < depth; k += Step) {
        store(row, k, values);
      }
      continue;
    }
    const auto where = pack.rows16(first + row);
    __m512 scales, zeros;
    // Where the next group starts, advanced by additions: a division per Step columns took a
    // tenth of the conversion.
    int64_t next_group = 0;
    for (int64_t k = 0; k < depth; k += Step) {
      _mm_prefetch(reinterpret_cast<const char*>(where.column(top + k) + kCodesAheadBytes), _MM_HINT_T0);
      if (k == next_group) {
        scales_and_zeros16(pack, first + row, top + k, scales, zeros);
        next_group = (top + k) / pack.group_size * pack.group_size + pack.group_size - top;
      }
#pragma GCC unroll 2
      for (int64_t s = 0; s < Step; ++s) {
        values[s] = k + s < depth ? values16(where, top + k + s, scales, zeros) : _mm512_setzero_ps();
      }
      store(row, k, values);
    }
  }
}

// The AVX-512 packing's whole blocks: 64 rows, each column's 32 bytes holding row j in byte j's
// low nibble and row j + 32 in its high one.
constexpr int64_t kWholeBlockRows = 64, kWholeBlockColumnBytes = kWholeBlockRows / 2;

// The values of codes 0 to 15 of a weight row whose group has `scale_and_zero` (a scale, then a
// zero): fma(code - 8, scale, zero), as values16 computes them; lane c holds code c's.
inline __m512 code_values16(const float* scale_and_zero) {
  const __m512 centered = _mm512_sub_ps(
      _mm512_cvtepi32_ps(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)), _mm512_set1_ps(8));
  return _mm512_fmadd_ps(centered, _mm512_set1_ps(scale_and_zero[0]), _mm512_set1_ps(scale_and_zero[1]));
}

// The bytes of columns [column, column + 32) of a whole block (`block` at its first column's), 32
// to a column, transposed as 32-bit lanes: lane j of lanes[l] holds bytes 4(l % 8) to 4(l % 8) + 3
// of column + 16 (l / 8) + j, four rows' codes (and those of the four rows 32 on).
inline void transposed_column_bytes(const uint8_t* block, int64_t column, const Transpose16& transpose16,
                                    __m512 (&lanes)[16]) {
  for (int64_t j = 0; j < 16; ++j) {
    const auto* low = reinterpret_cast<const __m256i*>(block + (column + j) * kWholeBlockColumnBytes);
    const auto* high = reinterpret_cast<const __m256i*>(block + (column + 16 + j) * kWholeBlockColumnBytes);
    lanes[j] = _mm512_castsi512_ps(
        _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(low)), _mm256_loadu_si256(high), 1));
  }
  transpose16(lanes);
}

} // namespace
} // namespace qlgrad::math
