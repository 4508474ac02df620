// fbgemm's AVX-512 packing read as it lies (interleave 4, blocks of multiples of 16): copies of
// its codes into rows and into the int8 and float32 panels, 16 x 16 at a time, and the direct
// stream over it.

#include "variants.h"

#include <algorithm>

#include "avx512.h"

namespace qlgrad::math {
namespace {

using avx512::lanes_mask;

// 16 n x 16 k from fbgemm's AVX-512 packings (interleave 4, blocks of multiples of 16 both
// ways): four 64-byte lines, line g holding k + 4g to k + 4g + 3 of the 16 n as 32-bit lanes,
// transposed as 4 x 16 lanes. rows[i], 128-bit lane j: the 16 codes of n = 4j + i.
void transpose_square(const int8_t* lines, int64_t line_stride, __m512i rows[4]) {
  const __m512i line0 = _mm512_loadu_si512(lines), line1 = _mm512_loadu_si512(lines + line_stride);
  const __m512i line2 = _mm512_loadu_si512(lines + 2 * line_stride),
                line3 = _mm512_loadu_si512(lines + 3 * line_stride);
  const __m512i low01 = _mm512_unpacklo_epi32(line0, line1), high01 = _mm512_unpackhi_epi32(line0, line1);
  const __m512i low23 = _mm512_unpacklo_epi32(line2, line3), high23 = _mm512_unpackhi_epi32(line2, line3);
  rows[0] = _mm512_unpacklo_epi64(low01, low23);
  rows[1] = _mm512_unpackhi_epi64(low01, low23);
  rows[2] = _mm512_unpacklo_epi64(high01, high23);
  rows[3] = _mm512_unpackhi_epi64(high01, high23);
}

// One square into 16 rows of 16 codes, `ldo` bytes apart.
void copy_16x16(const int8_t* lines, int64_t line_stride, int8_t* out, int64_t ldo) {
  __m512i rows[4];
  transpose_square(lines, line_stride, rows);
  for (int64_t i = 0; i < 4; ++i) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i * ldo), _mm512_extracti32x4_epi32(rows[i], 0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + (4 + i) * ldo), _mm512_extracti32x4_epi32(rows[i], 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + (8 + i) * ldo), _mm512_extracti32x4_epi32(rows[i], 2));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + (12 + i) * ldo), _mm512_extracti32x4_epi32(rows[i], 3));
  }
}

// Four squares side by side (16 n x 64 k, `square_stride` bytes apart in the packing) into 16
// rows of 64 codes: each row one 64-byte store, the 128-bit lanes of the squares regrouped in
// registers, where one square at a time stores 16 bytes to each of 16 rows.
void copy_16x64(const int8_t* lines, int64_t line_stride, int64_t square_stride, int8_t* out, int64_t ldo) {
  __m512i squares[4][4];
  for (int64_t q = 0; q < 4; ++q) {
    transpose_square(lines + q * square_stride, line_stride, squares[q]);
  }
  for (int64_t i = 0; i < 4; ++i) {
    // Lane j of squares[q][i] is row 4j + i's codes k + 16q to k + 16q + 15.
    const __m512i first01 = _mm512_shuffle_i64x2(squares[0][i], squares[1][i], 0x44);  // rows 0, 1 of squares 0, 1
    const __m512i last01 = _mm512_shuffle_i64x2(squares[0][i], squares[1][i], 0xEE);   // rows 2, 3
    const __m512i first23 = _mm512_shuffle_i64x2(squares[2][i], squares[3][i], 0x44);
    const __m512i last23 = _mm512_shuffle_i64x2(squares[2][i], squares[3][i], 0xEE);
    _mm512_storeu_si512(out + i * ldo, _mm512_shuffle_i64x2(first01, first23, 0x88));
    _mm512_storeu_si512(out + (4 + i) * ldo, _mm512_shuffle_i64x2(first01, first23, 0xDD));
    _mm512_storeu_si512(out + (8 + i) * ldo, _mm512_shuffle_i64x2(last01, last23, 0x88));
    _mm512_storeu_si512(out + (12 + i) * ldo, _mm512_shuffle_i64x2(last01, last23, 0xDD));
  }
}

int64_t round_up16(int64_t value) {
  return (value + 15) / 16 * 16;
}

int64_t round_down16(int64_t value) {
  return value / 16 * 16;
}

// Bands of 16 weight rows whose codes a direct stream adds up in registers before it adds them to
// its partial sums: 8 blocks of a 48-wide packing, read as 24 sequential streams.
constexpr int64_t kBlockedStreamBands = 24;

// sums[r, k0 + k] = sum_n lhs[r, n] * (W[n, k0 + k] - zero_point[n]) for Rows rows, the weight rows
// n in [n_begin, n_end) (multiples of 16 but the end) and one range of block_depth columns from
// k0, read in fbgemm's AVX-512 packing (interleave 4, blocks 16-aligned in width) as it lies:
// each 64-byte line holds 4 consecutive k of 16 n, one per 32-bit lane. Vectorized over n, so
// nothing is copied or transposed: kBlockedStreamBands bands at a time are summed in registers,
// 4 k at a time, into 16-lane sums per k (`partial`, Rows x block_depth x 16 floats), which are
// reduced once, at the end.
template <int64_t Rows>
void stream_blocked_rows(const float* lhs, int64_t ldl, const int8_t* packed, const BlockedLayout& layout,
                         const float* zero_point, int64_t k0, int64_t n_begin, int64_t n_end, float* partial,
                         float* sums, int64_t lds) {
  constexpr int64_t kLanes = 16;
  const int64_t count = std::min(layout.block_depth, layout.columns - k0), quads = (count + 3) / 4;
  const int64_t line_stride = layout.block_width * 4;
  std::fill(partial, partial + Rows * quads * 4 * kLanes, 0.0f);
  for (int64_t chunk = n_begin; chunk < n_end; chunk += kBlockedStreamBands * kLanes) {
    const int64_t bands = std::min(kBlockedStreamBands, (n_end - chunk + kLanes - 1) / kLanes);
    const int8_t* lines[kBlockedStreamBands];
    for (int64_t band = 0; band < bands; ++band) {
      lines[band] = packed + layout.offset(chunk + band * kLanes, k0);
    }
    for (int64_t quad = 0; quad < quads; ++quad) {
      __m512 total[Rows][4];
      for (int64_t r = 0; r < Rows; ++r) {
        for (int64_t t = 0; t < 4; ++t) {
          total[r][t] = _mm512_setzero_ps();
        }
      }
      for (int64_t band = 0; band < bands; ++band) {
        const int64_t n = chunk + band * kLanes;
        const __mmask16 mask = lanes_mask(n_end - n);
        const __m512i codes = _mm512_loadu_si512(lines[band] + quad * line_stride);
        const __m512 offset = zero_point == nullptr ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask, zero_point + n);
        __m512 value[4];
        value[0] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(codes, 24), 24));
        value[1] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(codes, 16), 24));
        value[2] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(codes, 8), 24));
        value[3] = _mm512_cvtepi32_ps(_mm512_srai_epi32(codes, 24));
        for (int64_t r = 0; r < Rows; ++r) {
          // Zero past the weight's last row: the packing's padding codes add nothing.
          const __m512 factor = _mm512_maskz_loadu_ps(mask, lhs + r * ldl + n);
          for (int64_t t = 0; t < 4; ++t) {
            total[r][t] = _mm512_fmadd_ps(factor, _mm512_sub_ps(value[t], offset), total[r][t]);
          }
        }
      }
      for (int64_t r = 0; r < Rows; ++r) {
        for (int64_t t = 0; t < 4; ++t) {
          float* sum = partial + ((r * quads + quad) * 4 + t) * kLanes;
          _mm512_storeu_ps(sum, _mm512_add_ps(_mm512_loadu_ps(sum), total[r][t]));
        }
      }
    }
  }
  for (int64_t r = 0; r < Rows; ++r) {
    for (int64_t k = 0; k < count; ++k) {
      sums[r * lds + k0 + k] = _mm512_reduce_add_ps(_mm512_loadu_ps(partial + (r * quads * 4 + k) * kLanes));
    }
  }
}

} // namespace

void copy_blocked_avx512(const BlockedLayout& layout, const int8_t* packed, int64_t top, int64_t depth, int64_t first,
                         int64_t count, int8_t* out, int64_t ldo) {
  const int64_t block_depth = layout.block_depth, block_width = layout.block_width, interleave = layout.interleave;
  if (layout.in_squares()) {
    // Squares of 16 x 16 aligned to 16 lie in one block; the margins around them go the portable way.
    const int64_t n_begin = round_up16(top), n_end = std::max(n_begin, round_down16(top + depth));
    const int64_t k_begin = round_up16(first), k_end = std::max(k_begin, round_down16(first + count));
    if (n_begin < n_end && k_begin < k_end) {
      // Offsets advance by additions: divisions per square would cost more than its copy. The
      // bands of 16 rows of one block are copied side by side, k after k: their codes share each
      // line of the packing (block_width * 4 bytes), which is then read once, in order; a band
      // at a time would read a third of every line of a 48-wide block from memory, three times.
      const int64_t range_bytes = layout.blocks_across() * block_depth * block_width, square_bytes = 16 * block_width;
      for (int64_t block_first = n_begin; block_first < n_end;) {
        const int64_t block_last = std::min(n_end, (block_first / block_width + 1) * block_width);
        const int8_t* block = packed + layout.offset(block_first, 0);
        int8_t* rows = out + (block_first - top) * ldo - first;
        for (int64_t k = k_begin; k < k_end;) {
          const int64_t range_end = std::min(k_end, (k / block_depth + 1) * block_depth);
          const int8_t* lines = block + k / block_depth * range_bytes + k % block_depth * block_width;
          for (; k + 64 <= range_end; k += 64, lines += 4 * square_bytes) {
            for (int64_t band = 0; band < block_last - block_first; band += 16) {
              copy_16x64(lines + band * interleave, block_width * interleave, square_bytes, rows + band * ldo + k, ldo);
            }
          }
          for (; k < range_end; k += 16, lines += square_bytes) {
            for (int64_t band = 0; band < block_last - block_first; band += 16) {
              copy_16x16(lines + band * interleave, block_width * interleave, rows + band * ldo + k, ldo);
            }
          }
        }
        block_first = block_last;
      }
      const auto margin = [&](int64_t n0, int64_t n1, int64_t k0, int64_t k1) {
        copy_blocked_portable(layout, packed, n0, n1 - n0, k0, k1 - k0, out + (n0 - top) * ldo + (k0 - first), ldo);
      };
      margin(top, n_begin, first, first + count);
      margin(n_end, top + depth, first, first + count);
      margin(n_begin, n_end, first, k_begin);
      margin(n_begin, n_end, k_end, first + count);
      return;
    }
  }
  copy_blocked_portable(layout, packed, top, depth, first, count, out, ldo);
}

// Each 16 n x 16 k square of the packing straight into the int8 panels: in each 128-bit lane of
// line g, the quads of k + 4g to k + 4g + 3 for 4 n (4 x 4 codes, n by n) are transposed into
// panel quads (k by k, each quad 4 n), which is one byte shuffle; lane r of the four shuffled lines
// then makes panel row r's 16 columns (the lanes regrouped as copy_16x64 regroups them). Offsets
// advance by additions, square by square down the depth.
void blocked_int8_panels_avx512(const BlockedLayout& layout, const int8_t* packed, int64_t top, int64_t depth,
                                int64_t first, int64_t count, uint8_t* panels, int64_t panel_depth) {
  const __m512i quads_by_k =
      _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
  const __m512i offset = _mm512_set1_epi8(static_cast<char>(0x80));
  const int64_t block_width = layout.block_width, line_stride = block_width * 4;
  const int64_t block_bytes = layout.block_depth * block_width, range_bytes = layout.blocks_across() * block_bytes;
  for (int64_t column = 0; column < count; column += 16) {
    const int64_t k = first + column;
    const int8_t* range = packed + k / layout.block_depth * range_bytes + k % layout.block_depth * block_width;
    uint8_t* panel = panels + column / kPanelColumns * kPanelColumns * panel_depth + column % kPanelColumns * 4;
    const int8_t* lines = range + top / block_width * block_bytes + top % block_width * 4;
    int64_t within = top % block_width;
    for (int64_t n = 0; n < depth; n += 16) {
      __m512i shuffled[4];
      for (int64_t g = 0; g < 4; ++g) {
        const __m512i line = _mm512_xor_si512(_mm512_loadu_si512(lines + g * line_stride), offset);
        shuffled[g] = _mm512_shuffle_epi8(line, quads_by_k);
      }
      const __m512i low01 = _mm512_shuffle_i64x2(shuffled[0], shuffled[1], 0x44);
      const __m512i high01 = _mm512_shuffle_i64x2(shuffled[0], shuffled[1], 0xEE);
      const __m512i low23 = _mm512_shuffle_i64x2(shuffled[2], shuffled[3], 0x44);
      const __m512i high23 = _mm512_shuffle_i64x2(shuffled[2], shuffled[3], 0xEE);
      const __m512i panel_rows[4] = {_mm512_shuffle_i64x2(low01, low23, 0x88), _mm512_shuffle_i64x2(low01, low23, 0xDD),
                                     _mm512_shuffle_i64x2(high01, high23, 0x88),
                                     _mm512_shuffle_i64x2(high01, high23, 0xDD)};
      // Only the panel's rows: up to 4 rows past `depth`.
      const int64_t quads = std::min<int64_t>(4, (depth - n + 3) / 4);
      for (int64_t r = 0; r < quads; ++r) {
        _mm512_storeu_si512(panel + (n / 4 + r) * 4 * kPanelColumns, panel_rows[r]);
      }
      within += 16;
      lines += within == block_width ? block_bytes - (block_width - 16) * 4 : 64;
      within = within == block_width ? 0 : within;
    }
  }
}

// Each 16 n x 16 k square of the packing straight into the float32 panels: transpose_square's
// rows, each 16 codes widened to float32 less their row's zero point; the panel's columns past
// `count` zero, as ConvertPanelsFn writes them. Offsets advance as blocked_int8_panels' do.
void blocked_float_panels_avx512(const BlockedLayout& layout, const int8_t* packed, const float* zero_point,
                                 int64_t top, int64_t depth, int64_t first, int64_t count, float* panels,
                                 int64_t panel_depth) {
  const int64_t block_width = layout.block_width, line_stride = block_width * 4;
  const int64_t block_bytes = layout.block_depth * block_width, range_bytes = layout.blocks_across() * block_bytes;
  const int64_t panel_columns = (count + kPanelColumns - 1) / kPanelColumns * kPanelColumns;
  for (int64_t column = 0; column < panel_columns; column += 16) {
    float* panel = panels + column / kPanelColumns * kPanelColumns * panel_depth + column % kPanelColumns;
    if (column >= count) {
      for (int64_t n = 0; n < depth; ++n) {
        _mm512_storeu_ps(panel + n * kPanelColumns, _mm512_setzero_ps());
      }
      continue;
    }
    const __mmask16 mask = lanes_mask(count - column);
    const int64_t k = first + column;
    const int8_t* range = packed + k / layout.block_depth * range_bytes + k % layout.block_depth * block_width;
    const int8_t* lines = range + top / block_width * block_bytes + top % block_width * 4;
    int64_t within = top % block_width;
    for (int64_t n = 0; n < depth; n += 16) {
      alignas(64) int8_t rows[4][64];
      __m512i transposed[4];
      transpose_square(lines, line_stride, transposed);
      for (int64_t r = 0; r < 4; ++r) {
        _mm512_store_si512(rows[r], transposed[r]);
      }
      for (int64_t i = 0; i < std::min<int64_t>(16, depth - n); ++i) {
        // Row n + i is transposed row i % 4, 128-bit lane i / 4.
        const __m128i codes = _mm_load_si128(reinterpret_cast<const __m128i*>(rows[i % 4] + 16 * (i / 4)));
        __m512 values = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(codes));
        if (zero_point != nullptr) {
          values = _mm512_sub_ps(values, _mm512_set1_ps(zero_point[top + n + i]));
        }
        _mm512_storeu_ps(panel + (n + i) * kPanelColumns, _mm512_maskz_mov_ps(mask, values));
      }
      within += 16;
      lines += within == block_width ? block_bytes - (block_width - 16) * 4 : 64;
      within = within == block_width ? 0 : within;
    }
  }
}

void stream_blocked_avx512(int64_t rows, const float* lhs, int64_t ldl, const int8_t* packed,
                           const BlockedLayout& layout, const float* zero_point, int64_t k0, int64_t n_begin,
                           int64_t n_end, float* partial, float* sums, int64_t lds) {
  with_rows<kBlockedStreamRows>(rows, [&]<int64_t Rows>() {
    stream_blocked_rows<Rows>(lhs, ldl, packed, layout, zero_point, k0, n_begin, n_end, partial, sums, lds);
  });
}

} // namespace qlgrad::math
