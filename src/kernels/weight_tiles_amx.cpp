// The forward x @ W.T of int8 codes in rows on AMX tiles with the weight's rows as the tiles' first
// operand (ConvertRowTilesFn in kernels.h): the weight converted in the order its codes lie, the
// rows of x packed as the panels that the tile kernel (panels_amx.cpp) multiplies it by, and the
// sums, out.T, transposed as they are stored.

#include "variants.h"

#include "amx.h"
#include "packed_rows_avx512.h"

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

// Each half of the panel's 32 columns: 16 rows, their pairs transposed as 32-bit lanes.
void pack_panel_bfloat16_amx(const at::BFloat16* lhs, int64_t ldl, int64_t count, int64_t depth, at::BFloat16* panel) {
  for (int64_t half = 0; half < kPanelColumns; half += 16) {
    transpose_rows16(count - half, round_up(depth, kTileValues) / 2, reinterpret_cast<int32_t*>(panel) + half,
                     kPanelColumns, __mmask16(0xFFFF), [&](int64_t r, int64_t d, int64_t /*lanes*/) {
                       const int64_t values = depth - 2 * d;
                       const __mmask32 mask = values >= 32  ? ~__mmask32{0}
                                              : values <= 0 ? __mmask32{0}
                                                            : (__mmask32{1} << values) - 1;
                       return _mm512_maskz_loadu_epi16(mask, lhs + (half + r) * ldl + 2 * d);
                     });
  }
}

void store_transposed_bfloat16_amx(const float* sums, int64_t lds, int64_t rows, int64_t columns, at::BFloat16* out,
                                   int64_t ldo) {
  const Transpose16 transpose16;
  for (int64_t row = 0; row < rows; row += 16) {
    const __mmask16 row_mask = avx512::lanes_mask(rows - row);
    for (int64_t column = 0; column < columns; column += 16) {
      const __mmask16 column_mask = avx512::lanes_mask(columns - column);
      __m512 values[16];
      for (int64_t i = 0; i < 16; ++i) {
        values[i] =
            row + i < rows ? _mm512_maskz_loadu_ps(column_mask, sums + (row + i) * lds + column) : _mm512_setzero_ps();
      }
      transpose16(values);
      for (int64_t j = 0; j < std::min<int64_t>(16, columns - column); ++j) {
        _mm256_mask_storeu_epi16(out + (column + j) * ldo + row, row_mask, (__m256i)_mm512_cvtneps_pbh(values[j]));
      }
    }
  }
}

} // namespace qlgrad::math
