#pragma once
// torch's CPU int4 packing (aten::_convert_weight_to_int4pack_for_cpu), as the kernels read it.

#include <algorithm>
#include <cstdint>

namespace qlgrad::math {

// The packing of an instruction set, as ATen's kernels chose it when the process first used them
// (ATEN_CPU_CAPABILITY may lower it): weight rows per block, and whether whole blocks hold rows j
// and j + block / 2 in byte j.
struct Int4Packing {
  int64_t block;
  bool halves;
};

// Codes [N, K] in [0, 16), with W[n, k] = (code - 8) * scale[k / group_size, n] + zero[k / group_size, n]
// from scale_and_zeros [K / group_size, N, 2]. Blocks of `block` weight rows (64 with AVX-512, 32
// otherwise), each holding, for one column after the other, block / 2 bytes. In a whole block of
// an AVX2 or AVX-512 packing, byte j holds rows j (low nibble) and j + block / 2 (high nibble); in
// a last, partial block and in the portable packing, rows 2j and 2j + 1. N is a multiple of 16,
// as the packing requires.
struct Int4Pack {
  const uint8_t* data;
  int64_t rows;     // N
  int64_t columns;  // K
  int64_t block;
  bool halves;  // whole blocks hold rows j and j + block / 2 in byte j
  const float* scale_and_zeros;
  int64_t group_size;

  // Where 16 rows [row, row + 16) lie, row a multiple of 16: column c's bytes start at
  // first + c * stride; `shift` 0 or 4 picks the nibble of each of 16 bytes, or, with `pairs`, 8
  // bytes hold the 16 rows two by two, low nibble first.
  struct Rows16 {
    const uint8_t* first;
    int64_t stride;
    int shift;
    bool pairs;

    const uint8_t* column(int64_t c) const { return first + c * stride; }
  };

  Rows16 rows16(int64_t row) const {
    const int64_t first_row = row / block * block;
    const int64_t block_rows = std::min(block, rows - first_row);
    const uint8_t* run = data + first_row * columns / 2;
    const int64_t r = row - first_row;
    if (!(halves && block_rows == block)) {
      return {run + r / 2, block_rows / 2, 0, true};
    }
    return {run + r % (block / 2), block_rows / 2, r < block / 2 ? 0 : 4, false};
  }

  // W[row + i, column] for i in [0, 16), the rows `where` (rows16(row)) describes.
  void values16(const Rows16& where, int64_t row, int64_t column, float* out) const {
    const uint8_t* bytes = where.column(column);
    const float* parameters = scale_and_zeros + (column / group_size * rows + row) * 2;
    for (int64_t i = 0; i < 16; ++i) {
      const int code = where.pairs ? (bytes[i / 2] >> (4 * (i % 2))) & 15 : (bytes[i] >> where.shift) & 15;
      // Not std::fma, a library call where the build does not assume FMA instructions: the values
      // differ from the op's fused ones by a rounding at most, well within float32 exactness.
      out[i] = static_cast<float>(code - 8) * parameters[2 * i] + parameters[2 * i + 1];
    }
  }
};

} // namespace qlgrad::math
