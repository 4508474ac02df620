// The panel GEMM's kernels on AMX tiles (Intel's Xeons from Sapphire Rapids): bfloat16 products
// with float32 sums (tdpbf16ps) and int8 products with int32 sums (tdpbsud), each instruction
// 16 rows by 16 columns by a tile row's depth. The weight's panels are those of the AVX-512
// kernels (panels_avx512_bf16.cpp, panels_avx512_vnni.cpp): a panel row holds 32 columns of
// pairs or quads of depth, 128 bytes, whose halves are the rows of AMX's second operand, so
// they are read as they are. lhs is read as LhsLayout says: packed in tiles of 16 rows of 64
// bytes, or its rows where they lie.

#include "variants.h"

#include "amx.h"

#include <type_traits>

namespace qlgrad::math {
namespace {

// Every tile 16 rows of 64 bytes: 0 to 3 the sums of rows 0-15 by columns 0-15, rows 0-15 by
// columns 16-31, rows 16-31 by columns 0-15 and rows 16-31 by columns 16-31; 4 and 5 lhs's rows
// 0-15 and 16-31; 6 and 7 the panel's columns 0-15 and 16-31.
constexpr int64_t kTileRowBytes = 64;
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};
// Static: ldtilecfg reads 64 bytes that GCC's intrinsic declares as 8.
constexpr TileConfig kTileConfig{};

// A panel row: 32 columns of 4 bytes (a pair of bfloat16 or a quad of int8 values).
constexpr int64_t kPanelRowBytes = kPanelColumns * 4;

// The tile products of lhs's tile `Lhs` (4 or 5) by the panel's first tile and, where the
// panel is wider than it (`wide`), its second, into the sums of its rows. (The intrinsics take
// their tiles' numbers as literals.)
template <typename Element, int Lhs>
[[gnu::always_inline]] inline void multiply_tiles(bool wide) {
  if constexpr (std::is_same_v<Element, int8_t>) {
    if constexpr (Lhs == 4) {
      _tile_dpbsud(0, 4, 6);
      if (wide) {
        _tile_dpbsud(1, 4, 7);
      }
    } else {
      _tile_dpbsud(2, 5, 6);
      if (wide) {
        _tile_dpbsud(3, 5, 7);
      }
    }
  } else if constexpr (Lhs == 4) {
    _tile_dpbf16ps(0, 4, 6);
    if (wide) {
      _tile_dpbf16ps(1, 4, 7);
    }
  } else {
    _tile_dpbf16ps(2, 5, 6);
    if (wide) {
      _tile_dpbf16ps(3, 5, 7);
    }
  }
}

// Which operand a tile kernel reads once while the other stays in L1 (stream loads, tileloaddt1,
// keep the operand read once from pushing the other out): the panel (panel_gemm_columns' parts of
// lhs stay in L1 across the panels), or lhs (a weight's rows as lhs, matmul_weight_tiles.cpp,
// whose panels of x stay in L1 across the weight's tiles: with the panels streamed there instead,
// on a Sapphire Rapids Xeon, 2 threads, 192 x 4096 -> 4096 took 4.78 ms against 4.11, 256 x 896
// -> 4864 1.43 against 1.21).
enum class Streamed { kPanel, kLhs };

// The sums of `rows` rows (up to kAmxTaskRows; the bottom tiles with Bottom) by a panel.
template <bool Bottom, Streamed Once, typename Element, typename Sum>
void tile_kernel(int64_t rows, const Element* lhs, const LhsLayout& lhs_layout, const void* panel, int64_t depth,
                 Sum* out, int64_t ldo, int64_t width, bool accumulate, at::BFloat16* rounded, int64_t rounded_stride) {
  constexpr int64_t kDepthStep = kTileRowBytes / sizeof(Element);
  constexpr int64_t kSumRowBytes = kPanelColumns * sizeof(Sum);
  const int64_t out_stride = ldo * int64_t{sizeof(Sum)};
  // Whole tiles of the output are loaded and stored where they lie (`width` counts the columns
  // from the panel's first to out's last: past 32 the tiles are whole); the last rows and
  // columns, and sums rounded to bfloat16, go through `sums`.
  const bool whole = width >= kPanelColumns && rows == (Bottom ? kAmxTaskRows : kAmxBlockRows) && rounded == nullptr;
  if (whole && accumulate) {
    _tile_loadd(0, out, out_stride);
    _tile_loadd(1, out + 16, out_stride);
    if constexpr (Bottom) {
      _tile_loadd(2, out + 16 * ldo, out_stride);
      _tile_loadd(3, out + 16 * ldo + 16, out_stride);
    }
  } else {
    _tile_zero(0);
    _tile_zero(1);
    if constexpr (Bottom) {
      _tile_zero(2);
      _tile_zero(3);
    }
  }
  const auto* top_rows = reinterpret_cast<const char*>(lhs);
  const auto* bottom_rows = reinterpret_cast<const char*>(lhs + lhs_layout.block_stride);
  const int64_t lhs_row_bytes = lhs_layout.row_bytes;
  const auto* panel_rows = static_cast<const char*>(panel);
  // A panel of up to 16 columns (a weight's rows by up to 16 rows of x) leaves its second tile's
  // products out.
  const bool wide = width > 16;
  // The next call's sums (the same rows by the next panel, where the panel GEMM's parts of lhs
  // run every panel in turn) are fetched while this call multiplies, four rows a step: loaded as
  // tiles when it starts, they came from memory where a block's sums outgrow L2. On a Sapphire
  // Rapids Xeon, 2 threads, alternated builds: the bfloat16 input gradient of 1024 x 4864 -> 896
  // 5.2-5.9 -> 4.9-5.3 ms, the int8 one of 2048 x 3072 -> 768 6.1-6.5 -> 5.6 ms; the decoder's
  // projections at 256 rows (one depth block, its sums in L2) the same.
  const auto* next_sums = reinterpret_cast<const char*>(out + kPanelColumns);
  for (int64_t step = 0; step < depth / kDepthStep; ++step) {
    if constexpr (Once == Streamed::kPanel) {
      for (int64_t r = 4 * step; r < std::min(4 * step + 4, rows); ++r) {
        _mm_prefetch(next_sums + r * out_stride, _MM_HINT_T0);
        _mm_prefetch(next_sums + r * out_stride + 64, _MM_HINT_T0);
      }
    }
    const int64_t lhs_offset = step * lhs_layout.step_bytes;
    const char* panel_step = panel_rows + step * 16 * kPanelRowBytes;
    if constexpr (Once == Streamed::kPanel) {
      _tile_stream_loadd(6, panel_step, kPanelRowBytes);
      _tile_stream_loadd(7, panel_step + kTileRowBytes, kPanelRowBytes);
      _tile_loadd(4, top_rows + lhs_offset, lhs_row_bytes);
    } else {
      _tile_loadd(6, panel_step, kPanelRowBytes);
      if (wide) {
        _tile_loadd(7, panel_step + kTileRowBytes, kPanelRowBytes);
      }
      _tile_stream_loadd(4, top_rows + lhs_offset, lhs_row_bytes);
    }
    multiply_tiles<Element, 4>(wide);
    if constexpr (Bottom) {
      if constexpr (Once == Streamed::kPanel) {
        _tile_loadd(5, bottom_rows + lhs_offset, lhs_row_bytes);
      } else {
        _tile_stream_loadd(5, bottom_rows + lhs_offset, lhs_row_bytes);
      }
      multiply_tiles<Element, 5>(wide);
    }
  }
  if (whole) {
    _tile_stored(0, out, out_stride);
    _tile_stored(1, out + 16, out_stride);
    if constexpr (Bottom) {
      _tile_stored(2, out + 16 * ldo, out_stride);
      _tile_stored(3, out + 16 * ldo + 16, out_stride);
    }
    return;
  }
  alignas(64) Sum sums[kAmxTaskRows][kPanelColumns];
  _tile_stored(0, sums[0], kSumRowBytes);
  _tile_stored(1, sums[0] + 16, kSumRowBytes);
  if constexpr (Bottom) {
    _tile_stored(2, sums[16], kSumRowBytes);
    _tile_stored(3, sums[16] + 16, kSumRowBytes);
  }
  const __mmask16 low_mask = avx512::lanes_mask(width), high_mask = avx512::lanes_mask(width - 16);
  for (int64_t r = 0; r < rows; ++r) {
    for (const auto [column, mask] : {std::pair(0, low_mask), std::pair(16, high_mask)}) {
      __m512i values = _mm512_load_si512(sums[r] + column);
      if (accumulate) {
        const __m512i stored = _mm512_maskz_loadu_epi32(mask, out + r * ldo + column);
        values = std::is_same_v<Sum, float>
                     ? _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(values), _mm512_castsi512_ps(stored)))
                     : _mm512_add_epi32(values, stored);
      }
      if constexpr (std::is_same_v<Sum, float>) {
        if (rounded != nullptr) {
          _mm256_mask_storeu_epi16(rounded + r * rounded_stride + column, mask,
                                   (__m256i)_mm512_cvtneps_pbh(_mm512_castsi512_ps(values)));
          continue;
        }
      }
      _mm512_mask_storeu_epi32(out + r * ldo + column, mask, values);
    }
  }
}

template <Streamed Once = Streamed::kPanel, typename Element, typename Sum>
void panel_rows_amx(int64_t rows, const Element* lhs, const LhsLayout& lhs_layout, const void* panel, int64_t depth,
                    Sum* out, int64_t ldo, int64_t width, bool accumulate, at::BFloat16* rounded,
                    int64_t rounded_stride) {
  if (rows > kAmxBlockRows) {
    tile_kernel<true, Once>(rows, lhs, lhs_layout, panel, depth, out, ldo, width, accumulate, rounded, rounded_stride);
  } else {
    tile_kernel<false, Once>(rows, lhs, lhs_layout, panel, depth, out, ldo, width, accumulate, rounded, rounded_stride);
  }
}

// A block of kAmxBlockRows rows of lhs as tiles: block[n / S][r][n % S] for the S values of a tile
// row, zero past `count` rows and past `depth`. load(r, n, values) gives row r's S values from n
// as one vector, of which `values` exist (zero past them).
template <typename Element, typename Load>
void pack_tiles(int64_t count, int64_t depth, Element* block, const Load& load) {
  constexpr int64_t kDepthStep = kTileRowBytes / sizeof(Element);
  for (int64_t n = 0; n < depth; n += kDepthStep) {
    for (int64_t r = 0; r < kAmxBlockRows; ++r) {
      _mm512_storeu_si512(block + (n * kAmxBlockRows + r * kDepthStep),
                          r < count ? load(r, n, std::min(kDepthStep, depth - n)) : _mm512_setzero_si512());
    }
  }
}

template <typename Source>
void pack_bfloat16_tiles(const Source* lhs, int64_t ldl, int64_t count, int64_t depth, const float* factors,
                         int64_t factor_stride, at::BFloat16* block) {
  pack_tiles(count, depth, block, [&](int64_t r, int64_t n, int64_t values) {
    return avx512::scaled_bfloat16_32(lhs + r * ldl + n, values, factors, factor_stride, n);
  });
}

} // namespace

void configure_tiles_amx() {
  _tile_loadconfig(&kTileConfig);
}

void panel_rows_bfloat16_amx(int64_t rows, const at::BFloat16* lhs, const LhsLayout& lhs_layout,
                             const at::BFloat16* panel, int64_t depth, float* out, int64_t ldo, int64_t width,
                             bool accumulate, at::BFloat16* rounded, int64_t rounded_stride) {
  panel_rows_amx(rows, lhs, lhs_layout, panel, depth, out, ldo, width, accumulate, rounded, rounded_stride);
}

void weight_rows_bfloat16_amx(int64_t rows, const at::BFloat16* weight, const LhsLayout& weight_layout,
                              const at::BFloat16* panel, int64_t depth, float* out, int64_t ldo, int64_t width,
                              bool accumulate, at::BFloat16* rounded, int64_t rounded_stride) {
  panel_rows_amx<Streamed::kLhs>(rows, weight, weight_layout, panel, depth, out, ldo, width, accumulate, rounded,
                                 rounded_stride);
}

void pack_rows_bfloat16_amx(const at::BFloat16* lhs, int64_t ldl, int64_t count, int64_t depth, const float* factors,
                            int64_t factor_stride, at::BFloat16* block, bool /*streamed*/) {
  pack_bfloat16_tiles(lhs, ldl, count, depth, factors, factor_stride, block);
}

void pack_float_rows_bfloat16_amx(const float* lhs, int64_t ldl, int64_t count, int64_t depth, const float* factors,
                                  int64_t factor_stride, at::BFloat16* block, bool /*streamed*/) {
  pack_bfloat16_tiles(lhs, ldl, count, depth, factors, factor_stride, block);
}

void panel_rows_int8_amx(int64_t rows, const int8_t* lhs, const LhsLayout& lhs_layout, const uint8_t* panel,
                         int64_t depth, int32_t* out, int64_t ldo, int64_t width, bool accumulate,
                         at::BFloat16* /*rounded*/, int64_t /*rounded_stride*/) {
  panel_rows_amx(rows, lhs, lhs_layout, panel, depth, out, ldo, width, accumulate, nullptr, 0);
}

// int8 rows take no factors (PackRowsFn): they are packed as they are.
void pack_rows_int8_amx(const int8_t* lhs, int64_t ldl, int64_t count, int64_t depth, const float* /*factors*/,
                        int64_t /*factor_stride*/, int8_t* block, bool /*streamed*/) {
  pack_tiles(count, depth, block, [&](int64_t r, int64_t n, int64_t values) {
    const __mmask64 mask = values >= 64 ? ~__mmask64{0} : (__mmask64{1} << values) - 1;
    return _mm512_maskz_loadu_epi8(mask, lhs + r * ldl + n);
  });
}

} // namespace qlgrad::math
