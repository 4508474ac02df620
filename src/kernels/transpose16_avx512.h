#pragma once
// A 16 x 16 transpose of 32-bit lanes in AVX-512 registers, for kernel files of AVX-512 CPUs:
// included after avx512.h (or a header that includes it), and of internal linkage, so that each
// file compiles it for its own instruction set.

#include <algorithm>
#include <cstdint>

namespace qlgrad::math {
namespace {

// 16 x 16 lanes (floats, or any 4 bytes cast to them) transposed in registers: four rounds that each swap the
// off-diagonal blocks of half the size of the last round's, with the lane selections made once.
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

// `count` rows (up to 16; zero past them) of 32-bit lanes, 16 lanes of each row at a time:
// load(r, d, n) gives row r's lanes d to d + 15 (an __m512i), of which the first n exist (zero past
// them); each(d, n, lanes) takes them transposed, lanes[k] holding lane d + k of the 16 rows.
template <typename Load, typename Each>
[[gnu::always_inline]] inline void for_each_transposed16(int64_t count, int64_t dwords, const Load& load,
                                                         const Each& each) {
  const Transpose16 transpose16;
  for (int64_t d = 0; d < dwords; d += 16) {
    const int64_t lanes = std::min<int64_t>(16, dwords - d);
    __m512 rows[16];
#pragma GCC unroll 16
    for (int64_t r = 0; r < 16; ++r) {
      rows[r] = r < count ? _mm512_castsi512_ps(load(r, d, lanes)) : _mm512_setzero_ps();
    }
    transpose16(rows);
    each(d, lanes, rows);
  }
}

// The transpose of [rows, columns] 32-bit values, 16 x 16 at a time: load(row, column, mask) gives
// a row's 16 lanes from `column` (those past `columns` masked off by `mask`), store(column, row,
// mask, lanes) takes a column's 16 lanes from `row` (those past `rows` masked off by `mask`).
template <typename Load, typename Store>
void transpose_blocks16(int64_t rows, int64_t columns, const Load& load, const Store& store) {
  for (int64_t row = 0; row < rows; row += 16) {
    const __mmask16 row_mask = avx512::lanes_mask(rows - row);
    for_each_transposed16(
        std::min<int64_t>(16, rows - row), columns,
        [&](int64_t r, int64_t column, int64_t lanes) {
          return _mm512_castps_si512(load(row + r, column, avx512::lanes_mask(lanes)));
        },
        [&](int64_t column, int64_t lanes, const __m512(&values)[16]) {
          for (int64_t j = 0; j < lanes; ++j) {
            store(column + j, row, row_mask, values[j]);
          }
        });
  }
}

} // namespace
} // namespace qlgrad::math
