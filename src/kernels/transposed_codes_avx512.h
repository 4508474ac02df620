#pragma once
// The transpose of int8 codes in rows as values, for the panel kernel files of AVX-512 CPUs:
// included after avx512.h or avx512_bf16.h, and of internal linkage, so that each file compiles
// it for its own instruction set.

#include "transpose16_avx512.h"

namespace qlgrad::math {
namespace {

// store(row, k, values) for W.T[top:top + depth, first:first + count] of int8 codes W [N, K] in
// rows (`codes` points at W[first, top]), each value as `parameters` make it: for each 16 rows of
// W from first (up to count rounded up to whole panels) and each Step columns from top, values[s]
// holding W[first + row:first + row + 16, top + k + s]; zero past `count` and `depth`. 16 x 16
// codes are transposed at a time, so groups are whole 16 columns (or one per row) and top a
// multiple of 16.
template <int64_t Step, typename Store>
void for_each_transposed16(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                           int64_t first, int64_t depth, int64_t count, const Store& store) {
  const Transpose16 transpose16;
  // Rows n to n + 15 of a group's parameters, [N, groups] in rows.
  const __m512i parameter_rows =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(static_cast<int32_t>(parameters.groups)));
  for (int64_t row = 0; row < round_up(count, kPanelColumns); row += 16) {
    const __mmask16 rows_mask = avx512::lanes_mask(count - row);
    for (int64_t k16 = 0; k16 < depth; k16 += 16) {
      const __mmask16 depth_mask = avx512::lanes_mask(depth - k16);
      __m512 values[16];
      for (int64_t i = 0; i < 16; ++i) {
        values[i] = row + i < count ? _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                          _mm_maskz_loadu_epi8(depth_mask, codes + (row + i) * ldw + k16)))
                                    : _mm512_setzero_ps();
      }
      transpose16(values);
      const int64_t offset = (first + row) * parameters.groups + (top + k16) / parameters.group_size;
      const __m512 scales =
          parameters.scale == nullptr
              ? _mm512_set1_ps(1.0f)
              : _mm512_mask_i32gather_ps(_mm512_set1_ps(1.0f), rows_mask, parameter_rows, parameters.scale + offset, 4);
      const __m512 zeros = parameters.zero_point == nullptr
                               ? _mm512_setzero_ps()
                               : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), rows_mask, parameter_rows,
                                                          parameters.zero_point + offset, 4);
      for (int64_t j = 0; j < 16; ++j) {
        values[j] = k16 + j < depth ? _mm512_mul_ps(_mm512_sub_ps(values[j], zeros), scales) : _mm512_setzero_ps();
      }
      for (int64_t j = 0; j < std::min<int64_t>(16, depth - k16); j += Step) {
        store(row, k16 + j, values + j);
      }
    }
  }
}

} // namespace
} // namespace qlgrad::math
