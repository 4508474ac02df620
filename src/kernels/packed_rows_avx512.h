#pragma once
// Packing a block of lhs rows for the panel kernels (PackRowsFn), for the panel kernel files of
// AVX-512 CPUs: included after avx512.h, avx512_bf16.h or avx512_vnni.h, and of internal linkage,
// so that each file compiles it for its own instruction set.

#include "transpose16_avx512.h"

namespace qlgrad::math {
namespace {

// The packed block [dwords][kKernelRows] of 4-byte lanes (a float32, a pair of bfloat16 or a quad
// of int8 values of one row) from `count` rows: load(r, d, n) gives row r's lanes d to d + 15, of
// which the first n exist (zero past them). 16 lanes of each row are transposed at a time, and
// each lane step's kKernelRows lanes stored together: a scalar loop would read 12 rows element by
// element, many times slower than the kernel that then multiplies them.
template <typename Load>
[[gnu::always_inline]] inline void pack_rows16(int64_t count, int64_t dwords, void* block, const Load& load) {
  static_assert(kKernelRows <= 16);
  const Transpose16 transpose16;
  constexpr __mmask16 kRowLanes = (1u << kKernelRows) - 1;
  auto* out = static_cast<int32_t*>(block);
  for (int64_t d = 0; d < dwords; d += 16) {
    const int64_t lanes = std::min<int64_t>(16, dwords - d);
    __m512 rows[16];
#pragma GCC unroll 16
    for (int64_t r = 0; r < 16; ++r) {
      rows[r] = r < count ? _mm512_castsi512_ps(load(r, d, lanes)) : _mm512_setzero_ps();
    }
    transpose16(rows);
    for (int64_t k = 0; k < lanes; ++k) {
      _mm512_mask_storeu_epi32(out + (d + k) * kKernelRows, kRowLanes, _mm512_castps_si512(rows[k]));
    }
  }
}

} // namespace
} // namespace qlgrad::math
