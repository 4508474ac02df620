#include "blocked_codes.h"

#include "cpu_capability.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
// GCC 12 warns that its own AVX-512 intrinsics read an uninitialized register (GCC bug
// 105593, fixed in 13): the "undefined" source operand of the unmasked unpacks.
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#endif

namespace qlgrad::math {
namespace {

// The portable copy: each n's codes a run of up to `interleave` bytes at a time, the runs of
// one block `block_width * interleave` bytes apart.
void copy_portable(const BlockedLayout& layout, const int8_t* packed, int64_t top, int64_t depth, int64_t first,
                   int64_t count, int8_t* out, int64_t ldo) {
  const int64_t interleave = layout.interleave, run_stride = layout.block_width * interleave;
  for (int64_t i = 0; i < depth; ++i) {
    int8_t* row = out + i * ldo;
    for (int64_t j = 0; j < count;) {
      // The rest of this block's range of k, from k = first + j.
      const int64_t k = first + j, block_end = std::min(count, j + layout.block_depth - k % layout.block_depth);
      const int8_t* run = packed + layout.offset(top + i, k - k % interleave);
      for (int64_t skip = k % interleave; j < block_end; run += run_stride, skip = 0) {
        const int64_t length = std::min(interleave - skip, block_end - j);
        if (length == 4) {
          std::memcpy(row + j, run, 4);  // fbgemm's int8 interleave: one 4-byte move
        } else {
          std::memcpy(row + j, run + skip, length);
        }
        j += length;
      }
    }
  }
}

#if defined(__x86_64__)
#define QLGRAD_AVX512F __attribute__((target("avx512f")))

// 16 n x 16 k from fbgemm's AVX-512 packings (interleave 4, blocks of multiples of 16 both
// ways): four 64-byte lines, line g holding k + 4g to k + 4g + 3 of the 16 n as 32-bit lanes,
// transposed as 4 x 16 lanes. rows[i], 128-bit lane j: the 16 codes of n = 4j + i.
QLGRAD_AVX512F void transpose_square(const int8_t* lines, int64_t line_stride, __m512i rows[4]) {
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
QLGRAD_AVX512F void copy_16x16(const int8_t* lines, int64_t line_stride, int8_t* out, int64_t ldo) {
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
QLGRAD_AVX512F void copy_16x64(const int8_t* lines, int64_t line_stride, int64_t square_stride, int8_t* out,
                               int64_t ldo) {
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
#endif

} // namespace

void BlockedLayout::copy(const int8_t* packed, int64_t top, int64_t depth, int64_t first, int64_t count, int8_t* out,
                         int64_t ldo) const {
#if defined(__x86_64__)
  if (cpu_capability() == CpuCapability::kAvx512 && interleave == 4 && block_width % 16 == 0 && block_depth % 16 == 0) {
    // Squares of 16 x 16 aligned to 16 lie in one block; the margins around them go the portable way.
    const int64_t n_begin = round_up16(top), n_end = std::max(n_begin, round_down16(top + depth));
    const int64_t k_begin = round_up16(first), k_end = std::max(k_begin, round_down16(first + count));
    if (n_begin < n_end && k_begin < k_end) {
      // Offsets advance by additions: divisions per square would cost more than its copy. The
      // bands of 16 rows of one block are copied side by side, k after k: their codes share each
      // line of the packing (block_width * 4 bytes), which is then read once, in order; a band
      // at a time would read a third of every line of a 48-wide block from memory, three times.
      const int64_t range_bytes = blocks_across() * block_depth * block_width, square_bytes = 16 * block_width;
      for (int64_t block_first = n_begin; block_first < n_end;) {
        const int64_t block_last = std::min(n_end, (block_first / block_width + 1) * block_width);
        const int8_t* block = packed + offset(block_first, 0);
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
        copy_portable(*this, packed, n0, n1 - n0, k0, k1 - k0, out + (n0 - top) * ldo + (k0 - first), ldo);
      };
      margin(top, n_begin, first, first + count);
      margin(n_end, top + depth, first, first + count);
      margin(n_begin, n_end, first, k_begin);
      margin(n_begin, n_end, k_end, first + count);
      return;
    }
  }
#endif
  copy_portable(*this, packed, top, depth, first, count, out, ldo);
}

} // namespace qlgrad::math
