// The panel GEMM's kernels in int8 products (AVX512-VNNI), for int8 inputs times int8 codes with
// int32 sums, exact as an integer GEMM is: the kernel multiplies kKernelRows rows of packed input
// quads by a panel with vpdpbusd, whose unsigned operand is the panel. So the panels hold each
// code plus 128 as a uint8, and the product is short of the input rows' sums times 128, which
// the caller subtracts (matmul.cpp).

#include "variants.h"

#include "avx512_vnni.h"
#include "packed_rows_avx512.h"

namespace qlgrad::math {
namespace {

template <int64_t Rows>
void panel_kernel(const int8_t* lhs, const uint8_t* panel, int64_t depth, int32_t* out, int64_t ldo, int64_t width,
                  bool accumulate) {
  __m512i low[Rows], high[Rows];
#pragma GCC unroll 12
  for (int64_t r = 0; r < Rows; ++r) {
    low[r] = _mm512_setzero_si512();
    high[r] = _mm512_setzero_si512();
  }
  const auto* lhs_quads = reinterpret_cast<const int32_t*>(lhs);
  for (int64_t quad = 0; quad < depth / 4; ++quad) {
    const __m512i panel_low = _mm512_loadu_si512(panel + quad * 4 * kPanelColumns);
    const __m512i panel_high = _mm512_loadu_si512(panel + quad * 4 * kPanelColumns + 4 * 16);
#pragma GCC unroll 12
    for (int64_t r = 0; r < Rows; ++r) {
      const __m512i factors = _mm512_set1_epi32(lhs_quads[quad * kKernelRows + r]);
      low[r] = _mm512_dpbusd_epi32(low[r], panel_low, factors);
      high[r] = _mm512_dpbusd_epi32(high[r], panel_high, factors);
    }
  }
  const __mmask16 low_mask = avx512::lanes_mask(width), high_mask = avx512::lanes_mask(width - 16);
#pragma GCC unroll 12
  for (int64_t r = 0; r < Rows; ++r) {
    int32_t* row = out + r * ldo;
    if (accumulate) {
      low[r] = _mm512_add_epi32(low[r], _mm512_maskz_loadu_epi32(low_mask, row));
      high[r] = _mm512_add_epi32(high[r], _mm512_maskz_loadu_epi32(high_mask, row + 16));
    }
    _mm512_mask_storeu_epi32(row, low_mask, low[r]);
    _mm512_mask_storeu_epi32(row + 16, high_mask, high[r]);
  }
}

} // namespace

void panel_rows_int8_avx512_vnni(int64_t rows, const int8_t* lhs, const uint8_t* panel, int64_t depth, int32_t* out,
                                 int64_t ldo, int64_t width, bool accumulate) {
  with_rows<kKernelRows>(rows,
                         [&]<int64_t Rows>() { panel_kernel<Rows>(lhs, panel, depth, out, ldo, width, accumulate); });
}

// int8 rows take no factors (PackRowsFn): they are packed as they are.
void pack_rows_int8_avx512_vnni(const int8_t* lhs, int64_t ldl, int64_t count, int64_t depth, const float* /*factors*/,
                                int64_t /*factor_stride*/, int8_t* block) {
  pack_rows16(count, (depth + 3) / 4, block, [&](int64_t r, int64_t d, int64_t /*lanes*/) {
    const int64_t n = 4 * d, values = std::min<int64_t>(64, depth - n);
    const __mmask64 mask = values >= 64 ? __mmask64(~0ull) : __mmask64((1ull << values) - 1);
    return _mm512_maskz_loadu_epi8(mask, lhs + r * ldl + n);
  });
}

// 64 values at a time, each times one (vpdpbusd's unsigned operand) into 16 int32 sums.
void int8_row_sums_avx512_vnni(const int8_t* rows, int64_t stride, int64_t count, int64_t depth, int32_t* sums) {
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t r = 0; r < count; ++r) {
    __m512i lanes = _mm512_setzero_si512();
    for (int64_t n = 0; n < depth; n += 64) {
      const __mmask64 mask = depth - n >= 64 ? ~__mmask64{0} : (__mmask64{1} << (depth - n)) - 1;
      lanes = _mm512_dpbusd_epi32(lanes, ones, _mm512_maskz_loadu_epi8(mask, rows + r * stride + n));
    }
    sums[r] = _mm512_reduce_add_epi32(lanes);
  }
}

// 16 rows at a time, whose codes stay in L1 while each panel's share is written (as
// convert_panels in panels_avx512.cpp); four rows of 16 codes at a time interleaved into the 16
// quads of a panel row's half. Byte and word unpacking keep the columns in order within 128 bits.
void int8_panels_avx512_vnni(const int8_t* codes, int64_t ldw, int64_t depth, int64_t count, uint8_t* panels,
                             int64_t panel_depth) {
  constexpr int64_t kRowsAtOnce = 16;
  const __m128i offset = _mm_set1_epi8(static_cast<char>(0x80));
  for (int64_t block_top = 0; block_top < depth; block_top += kRowsAtOnce) {
    if (const int64_t next_top = block_top + kRowsAtOnce; next_top < depth) {
      avx512::prefetch_rows(codes + next_top * ldw, ldw, std::min(kRowsAtOnce, depth - next_top), count);
    }
    for (int64_t column = 0; column < round_up(count, kPanelColumns); column += 16) {
      const __mmask16 mask = avx512::lanes_mask(count - column);
      uint8_t* panel = panels + column / kPanelColumns * kPanelColumns * panel_depth + column % kPanelColumns * 4;
      for (int64_t n = block_top; n < std::min(depth, block_top + kRowsAtOnce); n += 4) {
        __m128i rows[4];
        for (int64_t i = 0; i < 4; ++i) {
          // Past `depth`, 128 (a code of zero), which the input's zero padding meets.
          const __m128i values =
              n + i < depth ? _mm_maskz_loadu_epi8(mask, codes + (n + i) * ldw + column) : _mm_setzero_si128();
          rows[i] = _mm_xor_si128(values, offset);
        }
        const __m128i low01 = _mm_unpacklo_epi8(rows[0], rows[1]), high01 = _mm_unpackhi_epi8(rows[0], rows[1]);
        const __m128i low23 = _mm_unpacklo_epi8(rows[2], rows[3]), high23 = _mm_unpackhi_epi8(rows[2], rows[3]);
        auto* out = reinterpret_cast<__m128i*>(panel + n / 4 * 4 * kPanelColumns);
        _mm_storeu_si128(out, _mm_unpacklo_epi16(low01, low23));
        _mm_storeu_si128(out + 1, _mm_unpackhi_epi16(low01, low23));
        _mm_storeu_si128(out + 2, _mm_unpacklo_epi16(high01, high23));
        _mm_storeu_si128(out + 3, _mm_unpackhi_epi16(high01, high23));
      }
    }
  }
}

// 16 rows of W at a time, 64 codes of each (16 quads, a 32-bit lane each) transposed into 16
// panel rows of quads of those 16 columns.
void int8_transposed_panels_avx512_vnni(const int8_t* codes, int64_t ldw, int64_t depth, int64_t count, uint8_t* panels,
                                        int64_t panel_depth) {
  const Transpose16 transpose16;
  const __m512i offset = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t row = 0; row < round_up(count, kPanelColumns); row += 16) {
    uint8_t* panel = panels + row / kPanelColumns * kPanelColumns * panel_depth + row % kPanelColumns * 4;
    for (int64_t column = 0; column < depth; column += 64) {
      const __mmask64 mask = depth - column >= 64 ? ~__mmask64{0} : (__mmask64{1} << (depth - column)) - 1;
      __m512 quads[16];
      for (int64_t i = 0; i < 16; ++i) {
        // Past `count`, zero; past `depth`, 128 (a code of zero), which the input's zero padding meets.
        const __m512i values =
            row + i < count ? _mm512_maskz_loadu_epi8(mask, codes + (row + i) * ldw + column) : _mm512_setzero_si512();
        quads[i] = _mm512_castsi512_ps(row + i < count ? _mm512_xor_si512(values, offset) : values);
      }
      transpose16(quads);
      for (int64_t j = 0; j < std::min<int64_t>(16, (panel_depth - column) / 4); ++j) {
        _mm512_storeu_si512(panel + (column / 4 + j) * 4 * kPanelColumns, _mm512_castps_si512(quads[j]));
      }
    }
  }
}

} // namespace qlgrad::math
