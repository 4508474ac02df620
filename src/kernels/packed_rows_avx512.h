#pragma once
// Packing rows transposed as 4-byte lanes: a block of lhs rows for the panel kernels (PackRowsFn)
// and rows of x as the panels of the weight-row tiles (weight_tiles_amx.cpp), for the kernel files
// of AVX-512 CPUs: included after avx512.h, avx512_bf16.h, avx512_vnni.h or amx.h, and of internal
// linkage, so that each file compiles it for its own instruction set.

#include "transpose16_avx512.h"

namespace qlgrad::math {
namespace {

// 4-byte lanes (a float32, a pair of bfloat16 or a quad of int8 values of one row) of `count` rows
// (up to 16; for_each_transposed16's load) into out[d][r], `stride` lanes apart, the rows of
// `row_lanes` stored, each lane step's rows together: a scalar loop would read the rows element by
// element, many times slower than the kernel that then multiplies them.
template <typename Load>
[[gnu::always_inline]] inline void transpose_rows16(int64_t count, int64_t dwords, int32_t* out, int64_t stride,
                                                    __mmask16 row_lanes, const Load& load) {
  for_each_transposed16(count, dwords, load, [&](int64_t d, int64_t lanes, const __m512(&rows)[16]) {
    for (int64_t k = 0; k < lanes; ++k) {
      _mm512_mask_storeu_epi32(out + (d + k) * stride, row_lanes, _mm512_castps_si512(rows[k]));
    }
  });
}

// The packed block [dwords][kKernelRows] of the panel kernels (PackRowsFn) from `count` rows.
// Every thread of a product reads its packed rows, and the next product writes them again: stores
// through the cache then wait, line by line, for the other cores' copies to be dropped (on a Zen 4
// EPYC, 2 threads, 768 KiB of packed rows took 230-250 µs so, 18 µs where no other core had read
// them; streamed, 25-30 µs, and as long again to read back; a Zen 5's stores did not wait so, and
// packed_rows_streamed leaves its rows in the caches). So, `streamed`, a block that starts on
// a cache line goes past the caches a line at a time: 16 lane steps of 12 rows fill 12 lines, each
// line two steps' lanes side by side (vpermt2d); the last, partial, steps are stored as the others.
template <typename Load>
[[gnu::always_inline]] inline void pack_rows16(int64_t count, int64_t dwords, void* block, bool streamed,
                                               const Load& load) {
  static_assert(kKernelRows == 12, "12 lines of 16 lanes hold 16 lane steps of 12 rows");
  auto* out = static_cast<int32_t*>(block);
  constexpr __mmask16 kRowLanes = (1u << kKernelRows) - 1;
  if (!streamed || reinterpret_cast<uintptr_t>(out) % 64 != 0) {
    transpose_rows16(count, dwords, out, kKernelRows, kRowLanes, load);
    return;
  }
  // Line j of a step's 12 holds, from its first lane step k = 4 (j / 3) + j % 3, the lanes of rows
  // 4 (j % 3) to 11, then the first rows of step k + 1.
  __m512i line_lanes[3];
  for (int phase = 0; phase < 3; ++phase) {
    alignas(64) int32_t index[16];
    const int first_row = 4 * phase, from_first = kKernelRows - first_row;
    for (int i = 0; i < 16; ++i) {
      index[i] = i < from_first ? first_row + i : 16 + (i - from_first);
    }
    line_lanes[phase] = _mm512_load_si512(index);
  }
  for_each_transposed16(count, dwords, load, [&](int64_t d, int64_t lanes, const __m512(&rows)[16]) {
    int32_t* step_out = out + d * kKernelRows;
    if (lanes < 16) {
      for (int64_t k = 0; k < lanes; ++k) {
        _mm512_mask_storeu_epi32(step_out + k * kKernelRows, kRowLanes, _mm512_castps_si512(rows[k]));
      }
      return;
    }
#pragma GCC unroll 12
    for (int j = 0; j < kKernelRows; ++j) {
      const int k = 4 * (j / 3) + j % 3;
      const __m512i line =
          _mm512_permutex2var_epi32(_mm512_castps_si512(rows[k]), line_lanes[j % 3], _mm512_castps_si512(rows[k + 1]));
      _mm512_stream_si512(reinterpret_cast<__m512i*>(step_out + 16 * j), line);
    }
  });
  // Streamed stores are ordered by a fence, before the threads that read them learn they are done.
  _mm_sfence();
}

} // namespace
} // namespace qlgrad::math
