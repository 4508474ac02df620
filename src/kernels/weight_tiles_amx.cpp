// The forward x @ W.T of int8 codes in rows on AMX tiles with the weight's rows as the tiles' first
// operand (ConvertRowTilesFn in kernels.h): the weight converted in the order its codes lie into
// the tiles that the tile kernel (panels_amx.cpp) multiplies by the panels of x's rows
// (panels_avx512_bf16.cpp packs them, and transposes the sums, out.T, as they are stored).

#include "variants.h"

#include "amx.h"
#include "int4_vectors_avx512.h"

namespace qlgrad::math {
namespace {

constexpr int64_t kTileValues = 32;  // bfloat16 values in a tile row

// 16 rows at a time, 32 codes of each in turn into its row of a tile (the 16 rows' 1 KiB of a
// tile stored one after another). 16 rows read side by side keep 16 misses in flight, where a
// row at a time stalled on each (reading a row's part, 512 codes, took half as long again).
// Each row asks for the line kAhead codes on, which past the run is the row's next part (which
// the caller converts once this part's products are done) or the next row's first codes: the
// hardware prefetchers do not follow runs this short.
template <bool Offsets>
void convert_row_tiles(const int8_t* codes, int64_t ldw, const CodeParameters& shared_parameters, int64_t first,
                       int64_t top, int64_t depth, int64_t count, at::BFloat16* tiles, int64_t block_stride) {
  // A copy that the stores into tiles cannot alias: its pointers stay in registers.
  const CodeParameters parameters = shared_parameters;
  constexpr int64_t kAhead = 256;
  const int64_t stored_depth = round_up(depth, kTileValues);
  for (int64_t row = 0; row < count; row += kAmxBlockRows) {
    at::BFloat16* block = tiles + row / kAmxBlockRows * block_stride;
    GroupCursor low_groups(parameters, top), high_groups(parameters, top + 16);
    for (int64_t k = 0; k < stored_depth; k += kTileValues) {
      const int64_t low_group = low_groups.at(top + k), high_group = high_groups.at(top + k + 16);
      at::BFloat16* tile_rows = block + k * kAmxBlockRows;
      for (int64_t i = 0; i < kAmxBlockRows; ++i) {
        if (row + i >= count) {
          _mm512_storeu_si512(tile_rows + i * kTileValues, _mm512_setzero_si512());
          continue;
        }
        const int8_t* row_codes = codes + (row + i) * ldw;
        if (k % 64 == 0) {
          // An address, not a pointer: past the last row it points at nothing.
          _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(row_codes) + k + kAhead), _MM_HINT_T0);
        }
        _mm512_storeu_si512(tile_rows + i * kTileValues,
                            avx512::bfloat16_values32<Offsets>(row_codes + k, depth - k, parameters, first + row + i,
                                                               low_group, high_group));
      }
    }
  }
}

} // namespace

void convert_row_tiles_int8_bfloat16_amx(const int8_t* codes, int64_t ldw, const CodeParameters& parameters,
                                         int64_t first, int64_t top, int64_t depth, int64_t count, at::BFloat16* tiles,
                                         int64_t block_stride) {
  if (parameters.zero_point != nullptr) {
    convert_row_tiles<true>(codes, ldw, parameters, first, top, depth, count, tiles, block_stride);
  } else {
    convert_row_tiles<false>(codes, ldw, parameters, first, top, depth, count, tiles, block_stride);
  }
}

// torch's AVX-512 int4 packing: blocks of 64 rows, each column's 32 bytes holding row j in byte j's
// low nibble and row j + 32 in its high one, so that the rows of a task (first a multiple of 32)
// are one nibble of the bytes. Per weight row and group, the 16 codes' values (fma(code - 8, scale,
// zero) rounded to bfloat16 once, as Int4Pack defines them) make a table, from which one vpermw
// looks up a tile row of 32 columns; the codes of 32 columns (1 KiB) are transposed once as 32-bit
// lanes, four rows' bytes each, and each row's bytes picked out of two lanes' registers (vpermt2b).
// The weight's panels (Int4CodesTransposed) convert each value, in twice the vector operations.
void convert_row_tiles_int4_bfloat16_amx(const Int4Pack& pack, int64_t first, int64_t top, int64_t depth, int64_t count,
                                         at::BFloat16* tiles, int64_t block_stride) {
  const Transpose16 transpose16;
  // Byte t of each 32-bit lane of two registers (the first 16 columns' and the next 16's) as 16-bit
  // lanes, the upper bytes zeroed by the mask.
  __m512i byte_of_lanes[4];
  for (int t = 0; t < 4; ++t) {
    alignas(64) int8_t index[64];
    for (int j = 0; j < 32; ++j) {
      index[2 * j] = static_cast<int8_t>(j < 16 ? 4 * j + t : 64 + 4 * (j - 16) + t);
      index[2 * j + 1] = 0;
    }
    byte_of_lanes[t] = _mm512_load_si512(index);
  }
  constexpr __mmask64 kLowBytes = 0x5555555555555555ull;
  const uint8_t* block = pack.data + first / kWholeBlockRows * kWholeBlockRows * pack.columns / 2;
  const bool high_nibbles = first % kWholeBlockRows >= kWholeBlockRows / 2;
  alignas(64) __m512i tables[kAmxTaskRows];
  int64_t tables_group = -1;
  for (int64_t k = 0; k < depth; k += kTileValues) {
    const int64_t column = top + k;
    if (const int64_t group = column / pack.group_size; group != tables_group) {
      const float* parameters = pack.scale_and_zeros + (group * pack.rows + first) * 2;
      for (int64_t i = 0; i < count; ++i) {
        const __m512 values = code_values16(parameters + 2 * i);
        tables[i] = (__m512i)_mm512_cvtne2ps_pbh(values, values);
      }
      tables_group = group;
    }
    __m512 lanes[16];
    transposed_column_bytes(block, column, transpose16, lanes);
#pragma GCC unroll 32
    for (int64_t i = 0; i < kAmxTaskRows; ++i) {
      at::BFloat16* tile_row =
          tiles + i / kAmxBlockRows * block_stride + k * kAmxBlockRows + i % kAmxBlockRows * kTileValues;
      if (i >= count) {
        _mm512_storeu_si512(tile_row, _mm512_setzero_si512());
        continue;
      }
      // Row first + i: byte i % 32 of each column, in lanes i / 4 and i / 4 + 8.
      const __m512i codes = _mm512_maskz_permutex2var_epi8(kLowBytes, _mm512_castps_si512(lanes[i / 4]),
                                                           byte_of_lanes[i % 4], _mm512_castps_si512(lanes[i / 4 + 8]));
      const __m512i indices =
          high_nibbles ? _mm512_srli_epi16(codes, 4) : _mm512_and_si512(codes, _mm512_set1_epi16(15));
      _mm512_storeu_si512(tile_row, _mm512_permutexvar_epi16(indices, tables[i]));
    }
  }
}

} // namespace qlgrad::math
