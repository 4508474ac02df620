// The panel GEMM's kernels in int8 products (AVX512-VNNI), for int8 inputs times int8 codes with
// int32 sums, exact as an integer GEMM is: the kernel multiplies kKernelRows rows of packed input
// quads by a panel with vpdpbusd, whose unsigned operand is the panel. So the panels hold each
// code plus 128 as a uint8, and the product is short of the input rows' sums times 128, which
// the caller subtracts (matmul.cpp). The same kernel reads a weight's rows where they lie as its
// signed operand, with x's rows as the panel (WeightRowsInt8Fn): the product is then short of the
// weight rows' sums times 128.
//
// The forward of group-wise int8 codes with int8 activations (torchao's group-wise layers) in
// the same products: the kernel multiplies the packed activation quads by a panel of code quads
// run by run of one group, and adds each run's int32 sums times the run's scales to float32
// sums (kernels.h, GroupedInt8PanelsFn). The activations are vpdpbusd's unsigned operand there
// (codes plus 128, with each row's zero point plus 128 as its offset), the weight values (code
// less zero point) its signed one: a row's offset times the run's sum of values, subtracted from
// the run's sums, turns the products of unsigned codes into those of the values. Both are
// integers below 2^24 (255 * 128 * 256 at most, runs being at most 256 long), exact in float32,
// and so is their difference: one rounding per run, as it is scaled.

#include "variants.h"

#include "avx512_vnni.h"
#include "packed_rows_avx512.h"

#include <cstring>

namespace qlgrad::math {
namespace {

// Where a kernel's lhs quads lie: row r's quad at depth step q at bytes + r * row_bytes + q *
// quad_bytes. Packed ([depth / 4][kKernelRows] quads): 4 and 4 * kKernelRows; rows where they
// lie: their stride and 4.
struct LhsQuads {
  const uint8_t* bytes;
  int64_t row_bytes, quad_bytes;

  static LhsQuads packed(const void* lhs) { return {static_cast<const uint8_t*>(lhs), 4, 4 * kKernelRows}; }

  __m512i broadcast(int64_t r, int64_t quad) const {
    int32_t value;
    std::memcpy(&value, bytes + r * row_bytes + quad * quad_bytes, sizeof(value));
    return _mm512_set1_epi32(value);
  }
};

// sums + the products of lhs's quads with a panel's: vpdpbusd's unsigned operand is the panel
// (PanelUnsigned) or lhs.
template <bool PanelUnsigned>
[[gnu::always_inline]] inline __m512i add_quad_products(__m512i sums, __m512i panel_quads, __m512i lhs) {
  return PanelUnsigned ? _mm512_dpbusd_epi32(sums, panel_quads, lhs) : _mm512_dpbusd_epi32(sums, lhs, panel_quads);
}

// low[r] and high[r] += the products of row r's quads of lhs with the two halves of a panel's
// quads (with Halves 1, low[r] with the first half's only), over `quads` steps of the depth.
template <int64_t Rows, bool PanelUnsigned, int Halves = 2>
[[gnu::always_inline]] inline void multiply_quads(const LhsQuads& lhs_quads, const void* panel, int64_t quads,
                                                  __m512i (&low)[Rows], __m512i (&high)[Rows]) {
  const auto* bytes = static_cast<const uint8_t*>(panel);
  // Unrolled, the loop keeps each sum in one register (else GCC copies them between registers at
  // every step).
#pragma GCC unroll 4
  for (int64_t quad = 0; quad < quads; ++quad) {
    const __m512i panel_low = _mm512_loadu_si512(bytes + quad * 4 * kPanelColumns);
    const __m512i panel_high = Halves == 2 ? _mm512_loadu_si512(bytes + quad * 4 * kPanelColumns + 4 * 16) : panel_low;
#pragma GCC unroll 12
    for (int64_t r = 0; r < Rows; ++r) {
      const __m512i lhs = lhs_quads.broadcast(r, quad);
      low[r] = add_quad_products<PanelUnsigned>(low[r], panel_low, lhs);
      if constexpr (Halves == 2) {
        high[r] = add_quad_products<PanelUnsigned>(high[r], panel_high, lhs);
      }
    }
  }
}

// With Halves 1, the panel's first 16 columns only (width at most 16).
template <int64_t Rows, int Halves = 2>
void panel_kernel(const LhsQuads& lhs, const uint8_t* panel, int64_t depth, int32_t* out, int64_t ldo, int64_t width,
                  bool accumulate) {
  __m512i low[Rows], high[Rows];
#pragma GCC unroll 12
  for (int64_t r = 0; r < Rows; ++r) {
    low[r] = _mm512_setzero_si512();
    high[r] = _mm512_setzero_si512();
  }
  multiply_quads<Rows, /*PanelUnsigned=*/true, Halves>(lhs, panel, depth / 4, low, high);
  const __mmask16 low_mask = avx512::lanes_mask(width), high_mask = avx512::lanes_mask(width - 16);
#pragma GCC unroll 12
  for (int64_t r = 0; r < Rows; ++r) {
    int32_t* row = out + r * ldo;
    if (accumulate) {
      low[r] = _mm512_add_epi32(low[r], _mm512_maskz_loadu_epi32(low_mask, row));
      high[r] = _mm512_add_epi32(high[r], _mm512_maskz_loadu_epi32(high_mask, row + 16));
    }
    _mm512_mask_storeu_epi32(row, low_mask, low[r]);
    if constexpr (Halves == 2) {
      _mm512_mask_storeu_epi32(row + 16, high_mask, high[r]);
    }
  }
}

// A run's scales and value sums, after its codes.
constexpr int64_t kFooterBytes = 2 * kPanelColumns * int64_t{sizeof(float)};

// Rows of a kernel call that the kernel holds at once: 12 float32 sums, 12 int32 run sums, two
// panel registers and a broadcast of the 32 vector registers.
constexpr int64_t kHeldRows = kKernelRows / 2;

// The zero points of the 64 codes of a weight row from a column, a byte each: group_size is a
// multiple of 16, so each 16 codes (a 128-bit lane) share a group, whose index `lane_groups`
// holds.
__m512i zero_points_of(const int8_t* row_zero_points, const int64_t (&lane_groups)[4]) {
  uint32_t four = 0;
  for (int lane = 0; lane < 4; ++lane) {
    four |= uint32_t(uint8_t(row_zero_points[lane_groups[lane]])) << (8 * lane);
  }
  // Byte i of each 128-bit lane takes byte `lane` of the broadcast: vpshufb's indices are per lane.
  const __m512i lane_index = _mm512_set_epi64(0x0303030303030303, 0x0303030303030303, 0x0202020202020202,
                                              0x0202020202020202, 0x0101010101010101, 0x0101010101010101, 0, 0);
  return _mm512_shuffle_epi8(_mm512_set1_epi32(int32_t(four)), lane_index);
}

template <int64_t Rows>
void grouped_kernel(const int32_t* quads, const int8_t* panel, int64_t depth, int64_t span, const float* row_offset,
                    const float* row_scale, float* out, int64_t ldo, int64_t width, bool accumulate,
                    at::BFloat16* rounded, int64_t rounded_stride) {
  __m512 low[Rows], high[Rows];
#pragma GCC unroll 6
  for (int64_t r = 0; r < Rows; ++r) {
    low[r] = _mm512_setzero_ps();
    high[r] = _mm512_setzero_ps();
  }
  const int64_t run_bytes = span * kPanelColumns + kFooterBytes, runs = depth / span;
  for (int64_t run = 0; run < runs; ++run) {
    const int8_t* run_panel = panel + run * run_bytes;
    const int32_t* run_quads = quads + run * span / 4 * kKernelRows;
    __m512i low_sums[Rows], high_sums[Rows];
#pragma GCC unroll 6
    for (int64_t r = 0; r < Rows; ++r) {
      low_sums[r] = _mm512_setzero_si512();
      high_sums[r] = _mm512_setzero_si512();
    }
    multiply_quads<Rows, /*PanelUnsigned=*/false>(LhsQuads::packed(run_quads), run_panel, span / 4, low_sums,
                                                  high_sums);
    const auto* footer = reinterpret_cast<const float*>(run_panel + span * kPanelColumns);
    const __m512 scale_low = _mm512_loadu_ps(footer), scale_high = _mm512_loadu_ps(footer + 16);
    const __m512 values_low = _mm512_loadu_ps(footer + kPanelColumns);
    const __m512 values_high = _mm512_loadu_ps(footer + kPanelColumns + 16);
#pragma GCC unroll 6
    for (int64_t r = 0; r < Rows; ++r) {
      const __m512 offset = _mm512_set1_ps(row_offset[r]);
      const __m512 exact_low = _mm512_fnmadd_ps(offset, values_low, _mm512_cvtepi32_ps(low_sums[r]));
      const __m512 exact_high = _mm512_fnmadd_ps(offset, values_high, _mm512_cvtepi32_ps(high_sums[r]));
      low[r] = _mm512_fmadd_ps(exact_low, scale_low, low[r]);
      high[r] = _mm512_fmadd_ps(exact_high, scale_high, high[r]);
    }
  }
  const __mmask16 low_mask = avx512::lanes_mask(width), high_mask = avx512::lanes_mask(width - 16);
  const auto store = [&](__m512 sums, __mmask16 mask, float* to, at::BFloat16* rounded_to) {
    if (rounded_to == nullptr) {
      _mm512_mask_storeu_ps(to, mask, sums);
      return;
    }
    // A NaN keeps a NaN's bits, which rounding by carry could turn into an infinity.
    const __m512i bits = _mm512_mask_mov_epi32(
        avx512::bfloat16_rounding(sums), _mm512_cmp_ps_mask(sums, sums, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC00000));
    _mm256_mask_storeu_epi16(rounded_to, mask, _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
  };
#pragma GCC unroll 6
  for (int64_t r = 0; r < Rows; ++r) {
    const __m512 factor = _mm512_set1_ps(row_scale[r]);
    __m512 sums_low = _mm512_mul_ps(low[r], factor), sums_high = _mm512_mul_ps(high[r], factor);
    float* row = out + r * ldo;
    if (accumulate) {
      sums_low = _mm512_add_ps(sums_low, _mm512_maskz_loadu_ps(low_mask, row));
      sums_high = _mm512_add_ps(sums_high, _mm512_maskz_loadu_ps(high_mask, row + 16));
    }
    at::BFloat16* rounded_row = rounded == nullptr ? nullptr : rounded + r * rounded_stride;
    store(sums_low, low_mask, row, rounded_row);
    store(sums_high, high_mask, row + 16, rounded_row == nullptr ? nullptr : rounded_row + 16);
  }
}

} // namespace

void panel_rows_int8_avx512_vnni(int64_t rows, const int8_t* lhs, int64_t ldl, const uint8_t* panel, int64_t depth,
                                 int32_t* out, int64_t ldo, int64_t width, bool accumulate) {
  const LhsQuads quads = ldl != 0 ? LhsQuads{reinterpret_cast<const uint8_t*>(lhs), ldl, 4} : LhsQuads::packed(lhs);
  with_rows<kKernelRows>(rows,
                         [&]<int64_t Rows>() { panel_kernel<Rows>(quads, panel, depth, out, ldo, width, accumulate); });
}

void weight_rows_int8_avx512_vnni(int64_t rows, const int8_t* weight, int64_t ldw, const uint8_t* panel, int64_t depth,
                                  int32_t* out, int64_t ldo, int64_t width) {
  const LhsQuads in_place{reinterpret_cast<const uint8_t*>(weight), ldw, 4};
  with_rows<kKernelRows>(rows, [&]<int64_t Rows>() {
    if (width <= 16) {
      panel_kernel<Rows, 1>(in_place, panel, depth, out, ldo, width, /*accumulate=*/false);
    } else {
      panel_kernel<Rows>(in_place, panel, depth, out, ldo, width, /*accumulate=*/false);
    }
  });
}

// 16 x 16 sums at a time, less their rows' offsets, transposed.
void transpose_sums_avx512_vnni(const int32_t* sums, int64_t lds, int64_t rows, int64_t columns,
                                const int32_t* row_offset, int32_t* out, int64_t ldo) {
  transpose_blocks16(
      rows, columns,
      [&](int64_t row, int64_t column, __mmask16 mask) {
        return _mm512_castsi512_ps(_mm512_sub_epi32(_mm512_maskz_loadu_epi32(mask, sums + row * lds + column),
                                                    _mm512_set1_epi32(row_offset[row])));
      },
      [&](int64_t column, int64_t row, __mmask16 mask, __m512 lanes) {
        _mm512_mask_storeu_epi32(out + column * ldo + row, mask, _mm512_castps_si512(lanes));
      });
}

// int8 rows take no factors (PackRowsFn): they are packed as they are.
void pack_rows_int8_avx512_vnni(const int8_t* lhs, int64_t ldl, int64_t count, int64_t depth, const float* /*factors*/,
                                int64_t /*factor_stride*/, int8_t* block, bool streamed) {
  pack_rows16(count, (depth + 3) / 4, block, streamed, [&](int64_t r, int64_t d, int64_t /*lanes*/) {
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
// panel rows of quads of those 16 columns. Each step asks for the line of the next 16 rows at its
// column: 16 rows' runs are too many streams for the hardware prefetchers, and the codes come from
// memory (a model's weights are larger than L3). torchao's int8 training forwards through the
// 150m decoder's 56 projections (bfloat16, 8 layers) on a Zen 5 EPYC, 2 threads, alternated per
// pass: 48-64 rows 0.76x the time, 128 rows 0.82x, 256 rows 0.93-0.95x, 512-1024 rows 0.98x.
void int8_transposed_panels_avx512_vnni(const int8_t* codes, int64_t ldw, int64_t depth, int64_t count, uint8_t* panels,
                                        int64_t panel_depth) {
  const Transpose16 transpose16;
  const __m512i offset = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t row = 0; row < round_up(count, kPanelColumns); row += 16) {
    uint8_t* panel = panels + row / kPanelColumns * kPanelColumns * panel_depth + row % kPanelColumns * 4;
    for (int64_t column = 0; column < depth; column += 64) {
      avx512::prefetch_column(codes, ldw, row + 16, std::min(row + 32, count), column);
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

void panel_rows_grouped_int8_avx512_vnni(int64_t rows, const uint8_t* lhs, const int8_t* panel, int64_t depth,
                                         int64_t span, const float* row_offset, const float* row_scale, float* out,
                                         int64_t ldo, int64_t width, bool accumulate, at::BFloat16* rounded,
                                         int64_t rounded_stride) {
  const auto* quads = reinterpret_cast<const int32_t*>(lhs);
  for (int64_t first = 0; first < rows; first += kHeldRows) {
    with_rows<kHeldRows>(std::min(kHeldRows, rows - first), [&]<int64_t Rows>() {
      grouped_kernel<Rows>(quads + first, panel, depth, span, row_offset + first, row_scale + first, out + first * ldo,
                           ldo, width, accumulate, rounded == nullptr ? nullptr : rounded + first * rounded_stride,
                           rounded_stride);
    });
  }
}

namespace {

// The scales of runs for 16 weight rows (half a panel's columns), a vector per run, in order.
// Where a run is a group, each row's scales of 16 consecutive runs lie side by side: loaded a row
// at a time and transposed, 16 runs at once (gathering each run's was a quarter of the
// conversion's time in groups of 32). Runs shorter than their group read their rows' scale one by
// one, once a run.
template <typename Scale>
class RunScales {
 public:
  RunScales(const Scale* scale, int64_t groups, int64_t group_size, int64_t span, int64_t top, int64_t first_row,
            int64_t rows)
      : rows_(scale + first_row * groups),
        groups_(groups),
        group_size_(group_size),
        span_(span),
        top_(top),
        count_(rows) {}

  __m512 of(int64_t run) {
    if (span_ != group_size_) {
      const int64_t group = (top_ + run * span_) / group_size_;
      alignas(64) float scales[16] = {};
      for (int64_t i = 0; i < count_; ++i) {
        scales[i] = static_cast<float>(rows_[i * groups_ + group]);
      }
      return _mm512_load_ps(scales);
    }
    if (run % 16 == 0) {
      const int64_t group = top_ / group_size_ + run;
      const __mmask16 mask = avx512::lanes_mask(groups_ - group);
      for (int64_t i = 0; i < 16; ++i) {
        next_[i] = i < count_ ? avx512::load_values16(mask, rows_ + i * groups_ + group) : _mm512_setzero_ps();
      }
      transpose16_(next_);
    }
    return next_[run % 16];
  }

 private:
  const Scale* rows_;
  int64_t groups_, group_size_, span_, top_, count_;
  Transpose16 transpose16_;
  __m512 next_[16];
};

// 16 rows of W at a time (half a panel's columns), 64 codes of each (16 quads, a 32-bit lane each)
// less their zero points, transposed into 16 panel rows of quads of those 16 columns; the runs'
// value sums (vpdpbusd by ones) as they go. Each step asks for the next 16 rows' line at its column,
// as int8_transposed_panels does: torchao's group-wise int4 training forwards through the 150m
// decoder's projections (bfloat16, groups of 32, 8 layers) on a Zen 5 EPYC, 2 threads, alternated
// per pass: 16 rows 0.54x the time, 64 rows 0.66x, 128 rows 0.76x, 256 rows 0.84x, 1024 rows 0.96x.
template <typename Scale>
bool grouped_int8_panels(const int8_t* codes, int64_t ldw, const int8_t* zero_point, const Scale* scale, int64_t groups,
                         int64_t group_size, int64_t span, int64_t top, int64_t first, int64_t depth, int64_t count,
                         int8_t* panels) {
  const Transpose16 transpose16;
  const int64_t run_bytes = span * kPanelColumns + kFooterBytes, panel_bytes = grouped_int8_panel_bytes(depth, span);
  const __m512i ones = _mm512_set1_epi8(1);
  __mmask64 outside = 0;
  for (int64_t row = 0; row < round_up(count, kPanelColumns); row += 16) {
    int8_t* panel = panels + row / kPanelColumns * panel_bytes;
    const int64_t half = row % kPanelColumns, rows = std::clamp<int64_t>(count - row, 0, 16);
    RunScales<Scale> run_scales(scale, groups, group_size, span, top, first + row, rows);
    __m512i run_sums = _mm512_setzero_si512();
    int64_t run = 0, within = 0;
    for (int64_t column = 0; column < depth; column += 64) {
      avx512::prefetch_column(codes, ldw, row + 16, std::min(row + 32, count), column);
      const int64_t values = std::min<int64_t>(64, depth - column);
      const __mmask64 mask = values >= 64 ? ~__mmask64{0} : (__mmask64{1} << values) - 1;
      int64_t lane_groups[4];
      for (int64_t lane = 0; zero_point != nullptr && lane < 4; ++lane) {
        lane_groups[lane] = std::min((top + column + 16 * lane) / group_size, groups - 1);
      }
      __m512 quads[16];
      for (int64_t i = 0; i < 16; ++i) {
        __m512i row_codes = _mm512_setzero_si512();
        if (i < rows) {
          row_codes = _mm512_maskz_loadu_epi8(mask, codes + (row + i) * ldw + column);
          if (zero_point != nullptr) {
            const __m512i zeros = zero_points_of(zero_point + (first + row + i) * groups, lane_groups);
            const __m512i wrapped = _mm512_sub_epi8(row_codes, zeros);
            outside |= _mm512_mask_cmpneq_epi8_mask(mask, wrapped, _mm512_subs_epi8(row_codes, zeros));
            row_codes = _mm512_maskz_mov_epi8(mask, wrapped);
          }
        }
        quads[i] = _mm512_castsi512_ps(row_codes);
      }
      transpose16(quads);
#pragma GCC unroll 16
      for (int64_t j = 0; j < 16; ++j) {
        if (4 * j >= values) {
          break;
        }
        const __m512i quad = _mm512_castps_si512(quads[j]);
        _mm512_storeu_si512(panel + run * run_bytes + within * kPanelColumns + half * 4, quad);
        run_sums = _mm512_dpbusd_epi32(run_sums, ones, quad);
        within += 4;
        if (within == span) {
          auto* footer = reinterpret_cast<float*>(panel + run * run_bytes + span * kPanelColumns);
          _mm512_storeu_ps(footer + half, run_scales.of(run));
          _mm512_storeu_ps(footer + kPanelColumns + half, _mm512_cvtepi32_ps(run_sums));
          run_sums = _mm512_setzero_si512();
          within = 0;
          ++run;
        }
      }
    }
  }
  return outside == 0;
}

} // namespace

bool grouped_int8_panels_avx512_vnni(const int8_t* codes, int64_t ldw, const int8_t* zero_point, GroupScales scale,
                                     int64_t groups, int64_t group_size, int64_t span, int64_t top, int64_t first,
                                     int64_t depth, int64_t count, int8_t* panels) {
  return scale.bfloat16 != nullptr ? grouped_int8_panels(codes, ldw, zero_point, scale.bfloat16, groups, group_size,
                                                         span, top, first, depth, count, panels)
                                   : grouped_int8_panels(codes, ldw, zero_point, scale.float32, groups, group_size,
                                                         span, top, first, depth, count, panels);
}

} // namespace qlgrad::math
