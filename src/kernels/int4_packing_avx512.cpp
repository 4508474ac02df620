// Readers of torch's int4 packing (AVX-512): its panels, converted 16 x 16 values at a time (16
// rows of a column lie together in the packing, and a transpose in registers turns them into the
// panels' rows), and the stream for a few rows, as dot products along those 16 rows.

#include "variants.h"

#include <algorithm>

#include "avx512.h"

namespace qlgrad::math {
namespace {

// 16 x 16 floats transposed in registers: four rounds that each swap the off-diagonal blocks
// of half the size of the last round's, with the lane selections made once.
struct Transpose16 {
  __m512i low[4], high[4];

  Transpose16() {
    for (int round = 0, half = 8; half >= 1; ++round, half /= 2) {
      alignas(64) int32_t low_index[16], high_index[16];
      for (int32_t j = 0; j < 16; ++j) {
        const bool upper = (j & half) != 0;
        low_index[j] = upper ? 16 + j - half : j;
        high_index[j] = upper ? 16 + j : j + half;
      }
      low[round] = _mm512_load_si512(low_index);
      high[round] = _mm512_load_si512(high_index);
    }
  }

  void operator()(__m512 (&rows)[16]) const {
#pragma GCC unroll 4
    for (int round = 0, half = 8; half >= 1; ++round, half /= 2) {
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) {
        if ((i & half) == 0) {
          const __m512 first = rows[i], second = rows[i + half];
          rows[i] = _mm512_permutex2var_ps(first, low[round], second);
          rows[i + half] = _mm512_permutex2var_ps(first, high[round], second);
        }
      }
    }
  }
};

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

// The int4 stream of kernels.h for Rows rows: no value is stored, where the panels would convert
// and transpose every one for a single row. `partial` holds a 16-lane sum per column and row,
// reduced at the end.
template <int64_t Rows>
void stream_columns(const Int4Pack& pack, const float* lhs, int64_t ldl, int64_t first, int64_t count, float* partial,
                    float* out, int64_t ldo) {
  constexpr int64_t kLanes = 16;
  std::fill(partial, partial + count * Rows * kLanes, 0.0f);
  for (int64_t row = 0; row < pack.rows; row += kLanes) {
    const auto where = pack.rows16(row);
    __m512 factors[Rows];
    for (int64_t r = 0; r < Rows; ++r) {
      factors[r] = _mm512_loadu_ps(lhs + r * ldl + row);
    }
    for (int64_t column = 0; column < count; column += kLanes) {
      __m512 scales, zeros;
      scales_and_zeros16(pack, row, first + column, scales, zeros);
      for (int64_t i = 0; i < kLanes; ++i) {
        const __m512 values = values16(where, first + column + i, scales, zeros);
        float* sums = partial + (column + i) * Rows * kLanes;
        for (int64_t r = 0; r < Rows; ++r) {
          _mm512_storeu_ps(sums + r * kLanes, _mm512_fmadd_ps(factors[r], values, _mm512_loadu_ps(sums + r * kLanes)));
        }
      }
    }
  }
  for (int64_t c = 0; c < count; ++c) {
    for (int64_t r = 0; r < Rows; ++r) {
      out[r * ldo + first + c] = _mm512_reduce_add_ps(_mm512_loadu_ps(partial + (c * Rows + r) * kLanes));
    }
  }
}

} // namespace

void int4_panels_avx512(const Int4Pack& pack, int64_t top, int64_t first, int64_t depth, int64_t count, float* out) {
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
      float* panel = out + (column / kPanelColumns * kPanelColumns) * depth + column % kPanelColumns;
      for (int64_t i = 0; i < 16; ++i) {
        _mm512_storeu_ps(panel + (row + i) * kPanelColumns, values[i]);
      }
    }
  }
}

void int4_stream_avx512(const Int4Pack& pack, int64_t rows, const float* lhs, int64_t ldl, int64_t first, int64_t count,
                        float* partial, float* out, int64_t ldo) {
  with_rows<kInt4StreamedRowsMax>(
      rows, [&]<int64_t Rows>() { stream_columns<Rows>(pack, lhs, ldl, first, count, partial, out, ldo); });
}

} // namespace qlgrad::math
