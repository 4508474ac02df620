#pragma once
// Packing rows transposed as 4-byte lanes: a block of lhs rows for the panel kernels (PackRowsFn)
// and rows of x as the panels of the weight-row tiles (weight_tiles_amx.cpp), for the kernel files
// of AVX-512 CPUs: included after avx512.h, avx512_bf16.h, avx512_vnni.h or amx.h, and of internal
// linkage, so that each file compiles it for its own instruction set.

#include "transpose16_avx512.h"

namespace qlgrad::math {
namespace {

// 4-byte lanes (a float32, a pair of bfloat16 or a quad of int8 values of one row) of `count` rows
// (up to 16; zero past them) transposed into out[d][r], `stride` lanes apart, the rows of
// `row_lanes` stored: load(r, d, n) gives row r's lanes d to d + 15, of which the first n exist
// (zero past them). 16 lanes of each row are transposed at a time, and each lane step's rows
// stored together: a scalar loop would read the rows element by element, many times slower than
// the kernel that then multiplies them.
template <typename Load>
[[gnu::always_inline]] inline void transpose_rows16(int64_t count, int64_t dwords, int32_t* out, int64_t stride,
                                                    __mmask16 row_lanes, const Load& load) {
  const Transpose16 transpose16;
  for (int64_t d = 0; d < dwords; d += 16) {
    const int64_t lanes = std::min<int64_t>(16, dwords - d);
    __m512 rows[16];
#pragma GCC unroll 16
    for (int64_t r = 0; r < 16; ++r) {
      rows[r] = r < count ? _mm512_castsi512_ps(load(r, d, lanes)) : _mm512_setzero_ps();
    }
    transpose16(rows);
    for (int64_t k = 0; k < lanes; ++k) {
      _mm512_mask_storeu_epi32(out + (d + k) * stride, row_lanes, _mm512_castps_si512(rows[k]));
    }
  }
}

// The packed block [dwords][kKernelRows] of the panel kernels (PackRowsFn) from `count` rows.
template <typename Load>
[[gnu::always_inline]] inline void pack_rows16(int64_t count, int64_t dwords, void* block, const Load& load) {
  static_assert(kKernelRows <= 16);
  transpose_rows16(count, dwords, static_cast<int32_t*>(block), kKernelRows, (1u << kKernelRows) - 1, load);
}

} // namespace
} // namespace qlgrad::math
