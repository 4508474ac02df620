// torch's CPU int4 packing as bfloat16 panels (AVX512-BF16): the values as the float32 panels hold
// them, rounded to nearest even, rows paired.

#include "variants.h"

#include "avx512_bf16.h"
#include "int4_vectors_avx512.h"

namespace qlgrad::math {
namespace {

// Rows [top, top + depth) of W into the panels from their row `row_offset` on (a multiple of 16),
// value by value: 16 x 16 squares of float32 values (for_each_square), transposed.
void square_panels(const Int4Pack& pack, int64_t top, int64_t row_offset, int64_t first, int64_t depth, int64_t count,
                   at::BFloat16* out, int64_t panel_depth) {
  for_each_square(pack, top, first, depth, count, [&](int64_t row, int64_t column, const __m512(&values)[16]) {
    at::BFloat16* panel = out + (column / kPanelColumns * kPanelColumns) * panel_depth + column % kPanelColumns * 2;
    for (int64_t pair = 0; pair < 8; ++pair) {
      _mm512_storeu_si512(panel + ((row_offset + row) / 2 + pair) * 2 * kPanelColumns,
                          avx512::bfloat16_pairs(values[2 * pair], values[2 * pair + 1]));
    }
  });
}

constexpr int64_t kBlockPairs = kWholeBlockRows / 2;

// The values of codes 0 to 15 of two weight rows in a group (`scale_and_zeros` at the first row's
// scale, then its zero, then the second row's), rounded to nearest even as square_panels makes
// them: lanes 0-15 the first row's, lanes 16-31 the second's.
__m512i two_rows_table(const float* scale_and_zeros) {
  return (__m512i)_mm512_cvtne2ps_pbh(code_values16(scale_and_zeros + 2), code_values16(scale_and_zeros));
}

// Rows [top, top + depth) of whole blocks of the AVX-512 packing as bfloat16 panels, columns from
// `first` (a multiple of 32) 32 at a time. Within a group, a pair of rows has 16 values per row, one
// per code: a table of 32 bfloat16 values (fma(code - 8, scale, zero), rounded to nearest even, as
// square_panels makes them) from which one vpermw looks up 16 columns of the pair. The codes of
// 32 columns (1 KiB) are transposed once as bytes, four to a 32-bit lane (16 x 16 lanes, columns
// by pairs of pairs of rows), and each lane's bytes widened into table indices. square_panels
// converts each value and transposes float32 values, about six times the vector operations: bfloat16
// gradients by 4096 x 4096, groups of 128, on an Intel Xeon with AMX, 2 threads, alternated: 8 rows
// 1.84-1.96 -> 1.00-1.02 ms, 16 rows 2.07-2.08 -> 1.06-1.13, 64 rows 2.69-2.82 -> 1.90, 256 rows
// 5.80-6.08 -> 4.74-4.96. The codes asked for kCodesAheadBytes ahead: on a Zen 5 EPYC, 2 threads, the
// 150m decoder's four shapes (896 -> 896, 128 and 4864; 4864 -> 896; four copies each, their
// codes from memory) alternated in one process, over the dense bfloat16 layers' backward: 16 rows
// 0.64-0.72x -> 0.46-0.50x, 64 rows 0.80x -> 0.70-0.71x, 128 rows 0.89x -> 0.79-0.80x, 256 rows
// 0.93-0.98x -> 0.90-0.97x, 512 rows 0.92-0.96x -> 0.91-0.98x; the pieces of the shared panels
// (from 256 rows) asking for the next blocks' runs past their own, 256 rows 0.91-0.94x -> 0.90-0.92x,
// 384 rows 0.86x -> 0.83x.
void looked_up_panels(const Int4Pack& pack, int64_t top, int64_t first, int64_t depth, int64_t count, at::BFloat16* out,
                      int64_t panel_depth) {
  const Transpose16 transpose16;
  // Bytes 0 and 1 (2 and 3) of each 32-bit lane as 16-bit lanes: a pair's codes, column by column.
  const __m512i first_pair =
      _mm512_broadcast_i32x4(_mm_setr_epi8(0, -1, 1, -1, 4, -1, 5, -1, 8, -1, 9, -1, 12, -1, 13, -1));
  const __m512i second_pair =
      _mm512_broadcast_i32x4(_mm_setr_epi8(2, -1, 3, -1, 6, -1, 7, -1, 10, -1, 11, -1, 14, -1, 15, -1));
  const __m512i low_nibble = _mm512_set1_epi16(15);
  // The second row of a pair reads its table's second half.
  const __m512i second_row = _mm512_set1_epi32(16 << 16);
  alignas(64) __m512i tables[kBlockPairs];
  const int64_t end = top + depth;
  for (int64_t block_top = top / kWholeBlockRows * kWholeBlockRows; block_top < end; block_top += kWholeBlockRows) {
    const uint8_t* block = pack.data + block_top * pack.columns / 2;
    // The block's pairs in [top, end): [pair_begin, pair_end).
    const int64_t pair_begin = (std::max(top, block_top) - block_top) / 2;
    const int64_t pair_end = (std::min(end, block_top + kWholeBlockRows) - block_top) / 2;
    int64_t tables_group = -1;
    for (int64_t column = first; column < first + count; column += 2 * 16) {
      if (const int64_t group = column / pack.group_size; group != tables_group) {
        const float* parameters = pack.scale_and_zeros + (group * pack.rows + block_top) * 2;
        for (int64_t pair = 0; pair < kBlockPairs; ++pair) {
          tables[pair] = two_rows_table(parameters + 4 * pair);
        }
        tables_group = group;
      }
      // The codes kCodesAheadBytes on in the order they are read: along the block's run of
      // columns [first, first + count), then along the next blocks' (a run may be shorter than
      // the distance: the shared panels' pieces are 64 columns, 2 KiB).
      const int64_t run_bytes = count * kWholeBlockColumnBytes;
      const int64_t ahead = (column - first) * kWholeBlockColumnBytes + kCodesAheadBytes;
      const uint8_t* prefetched = block + first * kWholeBlockColumnBytes +
                                  ahead / run_bytes * pack.columns * kWholeBlockColumnBytes + ahead % run_bytes;
      for (int64_t line = 0; line < 2 * 16 * kWholeBlockColumnBytes; line += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(prefetched + line), _MM_HINT_T0);
      }
      __m512 lanes[16];
      transposed_column_bytes(block, column, transpose16, lanes);
      for (int64_t l = 0; l < 16; ++l) {
        const int64_t offset = column + 16 * (l / 8) - first;
        at::BFloat16* panel = out + offset / kPanelColumns * kPanelColumns * panel_depth + offset % kPanelColumns * 2;
        for (int64_t half = 0; half < 2; ++half) {
          const __m512i codes =
              _mm512_shuffle_epi8(_mm512_castps_si512(lanes[l]), half == 0 ? first_pair : second_pair);
          for (int64_t nibble = 0; nibble < 2; ++nibble) {
            const int64_t pair = nibble * kBlockPairs / 2 + 2 * (l % 8) + half;
            if (pair < pair_begin || pair >= pair_end) {
              continue;
            }
            const __m512i indices = nibble == 0
                                        ? _mm512_ternarylogic_epi32(codes, low_nibble, second_row, 0xEA)  // (a & b) | c
                                        : _mm512_or_si512(_mm512_srli_epi16(codes, 4), second_row);
            _mm512_storeu_si512(panel + (block_top + 2 * pair - top) / 2 * 2 * kPanelColumns,
                                _mm512_permutexvar_epi16(indices, tables[pair]));
          }
        }
      }
    }
  }
}

// The transposed weight's panels (W.T, as int4_transposed_panels_bfloat16_avx512 makes them) of
// rows [first, first + count) of W in whole blocks of the AVX-512 packing, count a multiple of 16,
// depth even.
// Each row n of W has, within a group, 16 values, one per code: 16 rows' tables of 16 bfloat16
// values (fma(code - 8, scale, zero), rounded to nearest even, as values16 and bfloat16_pairs make
// them: two_rows_table) lie in four pairs of registers, four rows a pair, from which four vpermi2w
// look up a pair of columns of 16 rows, each filling the lanes of its four rows. The codes of the pair's two
// columns, interleaved and widened to 16-bit lanes, index them. Against converting value by value
// (for_each_column16: a float32 conversion and an fma a value, then a rounding), torch's int4
// packing's bfloat16 training forward on a Zen 5 EPYC, 2 threads, alternated in one process,
// the same layer repeated, over that conversion's time: 16 x 4096 -> 4096 0.89x, 64 x 1024 ->
// 2816 and 256 x 896 -> 4864 0.97-0.98x, 192 x 4096 -> 4096 1.00x.
void looked_up_transposed_panels(const Int4Pack& pack, int64_t top, int64_t first, int64_t depth, int64_t count,
                                 at::BFloat16* out, int64_t panel_depth) {
  // Lane 2j + t (row j, column t of the pair) reads table entry 16 (j % 4) + code of pair j / 4.
  const __m512i row_offsets = _mm512_set_epi16(48, 48, 32, 32, 16, 16, 0, 0, 48, 48, 32, 32, 16, 16, 0, 0, 48, 48, 32,
                                               32, 16, 16, 0, 0, 48, 48, 32, 32, 16, 16, 0, 0);
  const __m512i low_nibble = _mm512_set1_epi16(15);
  const int64_t pairs = depth / 2;
  for (int64_t row = 0; row < count; row += 16) {
    const int64_t n = first + row;
    const int64_t in_block = n % kWholeBlockRows;
    const uint8_t* codes = pack.data + (n - in_block) * pack.columns / 2 + in_block % kWholeBlockColumnBytes;
    const bool high = in_block >= kWholeBlockColumnBytes;
    at::BFloat16* panel = out + row / kPanelColumns * kPanelColumns * panel_depth + row % kPanelColumns * 2;
    __m512i tables[8];
    int64_t next_group = 0;
    for (int64_t pair = 0; pair < pairs; ++pair) {
      const int64_t k = top + 2 * pair;
      if (2 * pair == next_group) {
        const float* parameters = pack.scale_and_zeros + (k / pack.group_size * pack.rows + n) * 2;
        for (int64_t rows = 0; rows < 8; ++rows) {
          tables[rows] = two_rows_table(parameters + 4 * rows);
        }
        next_group = k / pack.group_size * pack.group_size + pack.group_size - top;
      }
      _mm_prefetch(reinterpret_cast<const char*>(codes + k * kWholeBlockColumnBytes + kCodesAheadBytes), _MM_HINT_T0);
      const __m128i column = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k * kWholeBlockColumnBytes));
      const __m128i next = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + (k + 1) * kWholeBlockColumnBytes));
      const __m512i bytes = _mm512_cvtepu8_epi16(_mm256_inserti128_si256(
          _mm256_castsi128_si256(_mm_unpacklo_epi8(column, next)), _mm_unpackhi_epi8(column, next), 1));
      __m512i values = high ? _mm512_or_si512(_mm512_srli_epi16(bytes, 4), row_offsets)
                            : _mm512_ternarylogic_epi32(bytes, low_nibble, row_offsets, 0xEA);  // (a & b) | c
      for (int q = 0; q < 4; ++q) {
        values = _mm512_mask2_permutex2var_epi16(tables[2 * q], values, __mmask32{0xFFu} << (8 * q), tables[2 * q + 1]);
      }
      _mm512_storeu_si512(panel + pair * 2 * kPanelColumns, values);
    }
  }
}

}  // namespace

void int4_panels_bfloat16_avx512(const Int4Pack& pack, int64_t top, int64_t first, int64_t depth, int64_t count,
                                 at::BFloat16* out, int64_t panel_depth) {
  // The whole blocks of the AVX-512 packing are looked up; the rest (a last, partial block, or
  // another instruction set's packing) converted value by value.
  const bool blocks = pack.halves && pack.block == kWholeBlockRows && first % 32 == 0 && count % 32 == 0;
  const int64_t whole = blocks ? std::clamp(pack.rows / kWholeBlockRows * kWholeBlockRows - top, int64_t{0}, depth) : 0;
  if (whole > 0) {
    looked_up_panels(pack, top, first, whole, count, out, panel_depth);
  }
  if (whole < depth) {
    square_panels(pack, top + whole, whole, first, depth - whole, count, out, panel_depth);
  }
}

void int4_transposed_panels_bfloat16_avx512(const Int4Pack& pack, int64_t top, int64_t first, int64_t depth,
                                            int64_t count, at::BFloat16* out, int64_t panel_depth) {
  // Whole panels of rows in whole blocks of the AVX-512 packing are looked up; the rest converted
  // value by value.
  const bool blocks = pack.halves && pack.block == kWholeBlockRows && first % kPanelColumns == 0 && depth % 2 == 0;
  const int64_t whole =
      blocks ? std::clamp((pack.rows / kWholeBlockRows * kWholeBlockRows - first) / kPanelColumns * kPanelColumns,
                          int64_t{0}, count / kPanelColumns * kPanelColumns)
             : 0;
  if (whole > 0) {
    looked_up_transposed_panels(pack, top, first, depth, whole, out, panel_depth);
  }
  if (whole < count) {
    for_each_column16<2>(pack, top, first + whole, depth, count - whole,
                         [&](int64_t row, int64_t k, const __m512(&values)[2]) {
                           _mm512_storeu_si512(out + (whole + row) / kPanelColumns * kPanelColumns * panel_depth +
                                                   k * kPanelColumns + row % kPanelColumns * 2,
                                               avx512::bfloat16_pairs(values[0], values[1]));
                         });
  }
}

}  // namespace qlgrad::math
