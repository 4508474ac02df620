// The panel GEMM's kernels in bfloat16 products (AVX512-BF16): panels of pairs of weight rows,
// rounded to nearest even as they are converted, and the kernel that multiplies kKernelRows rows
// of packed lhs pairs by a panel with vdpbf16ps, the sums in float32 registers.

#include "variants.h"

#include "avx512_bf16.h"
#include "packed_rows_avx512.h"
#include "transpose16_avx512.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

namespace qlgrad::math {
namespace {

// With Narrow, only the panel's first 16 columns (width <= 16): the other half's products, which
// no column takes, are left out. A last panel of 16 rows of x in the forwards with the weight's
// rows first (matmul_weight_tiles.cpp), on an AMD EPYC, 2 threads: torchao's group-wise layers at
// 144 and 208 rows of 896 -> 4864, 1024 -> 2816 and 4096 -> 4096, 0.92-0.95x the time. With
// InPlace, lhs's rows where they lie, ldl elements apart (a step's pairs from Rows lines), else a
// packed block (a step's pairs side by side).
template <int64_t Rows, bool Narrow, bool InPlace>
void panel_kernel(const at::BFloat16* lhs, int64_t ldl, const at::BFloat16* panel, int64_t depth, float* out,
                  int64_t ldo, int64_t width, bool accumulate, at::BFloat16* rounded, int64_t rounded_stride) {
  __m512 low[Rows], high[Rows];
  avx512::load_sums<Rows>(low, high, out, ldo, width, accumulate);
  const auto* lhs_pairs = reinterpret_cast<const int32_t*>(lhs);
  const int64_t row_pairs = InPlace ? ldl / 2 : 1, pair_step = InPlace ? 1 : kKernelRows;
  for (int64_t pair = 0; pair < depth / 2; ++pair) {
    const __m512bh panel_low = (__m512bh)_mm512_loadu_si512(panel + pair * 2 * kPanelColumns);
    const __m512bh panel_high =
        Narrow ? panel_low : (__m512bh)_mm512_loadu_si512(panel + pair * 2 * kPanelColumns + kPanelColumns);
#pragma GCC unroll 12
    for (int64_t r = 0; r < Rows; ++r) {
      const __m512bh factors = (__m512bh)_mm512_set1_epi32(lhs_pairs[pair * pair_step + r * row_pairs]);
      low[r] = _mm512_dpbf16_ps(low[r], factors, panel_low);
      if constexpr (!Narrow) {
        high[r] = _mm512_dpbf16_ps(high[r], factors, panel_high);
      }
    }
  }
  if (rounded != nullptr) {
    avx512::store_rounded_sums<Rows>(low, high, rounded, rounded_stride, width);
  } else {
    avx512::store_sums<Rows>(low, high, out, ldo, width);
  }
}

constexpr int64_t kRowsAtOnce = 16;

// Rows [block_top, block_top + kRowsAtOnce) of the panels from column 0 on, two panels (64
// columns: a whole cache line of each row's int8 codes) at a time while two are whole; returns the
// column where they end. Each 16 columns lie in one group (vector groups, from a multiple of 16),
// whose parameters are read once a row for the 16, and each step prefetches the lines of the two
// rows kRowsAtOnce on. The panels are convert_panels', bit for bit. Against converting a panel at
// a time (half a line of each row, masked, the groups of each 16 lanes found per panel, the next
// 16 rows' lines prefetched in one burst, on which the conversion stalled for a third of its
// time), bfloat16 gradients by 4096 x 4096 weights on an Intel Xeon with AMX, 2 threads,
// alternated: 8 rows per channel 1.85-2.06 -> 1.26-1.29 ms, groups of 128 2.05-2.07 -> 1.52-1.57,
// groups of 32 2.54-3.60 -> 1.99-2.10, float16 values 1.91-2.95 -> 1.58-1.73; 64 rows 0.80-0.88x
// the time; the decoder's shapes (896 x 4864, 4864 x 896, 3072 x 768) at 32 rows 0.78-0.92x, at
// 256 rows 0.90-1.00x, at 1024 rows the same.
template <bool Offsets, bool Factors, typename Code>
int64_t panel_pairs(const Code* codes, int64_t ldw, const CodeParameters& shared_parameters, int64_t top, int64_t first,
                    int64_t block_top, int64_t depth, int64_t count, at::BFloat16* panels, int64_t panel_depth) {
  constexpr int64_t kColumns = 2 * kPanelColumns, kQuarters = kColumns / 16;
  // A copy that the stores into the panels cannot alias: its fields stay in registers.
  const CodeParameters parameters = shared_parameters;
  const int64_t block_end = std::min(depth, block_top + kRowsAtOnce);
  GroupCursor groups(parameters, first);
  int64_t column = 0;
  for (; column + kColumns <= count; column += kColumns) {
    at::BFloat16* panel = panels + column * panel_depth;
    int64_t group[kQuarters];
    for (int64_t q = 0; q < kQuarters; ++q) {
      group[q] = groups.at(first + column + 16 * q);
    }
    for (int64_t n = block_top; n < block_end; n += 2) {
      // The lines of the rows kRowsAtOnce on, two rows at each step.
      for (int64_t line = 0; line < kColumns; line += 64 / int64_t{sizeof(Code)}) {
        avx512::prefetch_column(codes, ldw, n + kRowsAtOnce, std::min(depth, n + kRowsAtOnce + 2), column + line);
      }
      __m512 values[2][kQuarters];
      for (int64_t j = 0; j < 2; ++j) {
        // Where the row's parameters start (read only where they exist).
        const int64_t row = (top + n + j) * parameters.groups;
        for (int64_t q = 0; q < kQuarters; ++q) {
          if (n + j >= depth) {  // an odd depth's last pair
            values[j][q] = _mm512_setzero_ps();
            continue;
          }
          __m512 value = avx512::load_values16(codes + (n + j) * ldw + column + 16 * q);
          if constexpr (Offsets) {
            value = _mm512_sub_ps(value, _mm512_set1_ps(parameters.zero_point[row + group[q]]));
          }
          if constexpr (Factors) {
            value = _mm512_mul_ps(value, _mm512_set1_ps(parameters.scale[row + group[q]]));
          }
          values[j][q] = value;
        }
      }
      for (int64_t q = 0; q < kQuarters; ++q) {
        _mm512_storeu_si512(panel + (q / 2 * panel_depth + n + q % 2) * kPanelColumns,
                            avx512::bfloat16_pairs(values[0][q], values[1][q]));
      }
    }
  }
  return column;
}

// panel_pairs for the parameters at hand: where there are no zero points (or no scales) nothing is
// subtracted (or multiplied).
template <typename Code>
int64_t convert_panel_pairs(const Code* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                            int64_t first, int64_t block_top, int64_t depth, int64_t count, at::BFloat16* panels,
                            int64_t panel_depth) {
  const auto pairs =
      parameters.zero_point != nullptr
          ? (parameters.scale != nullptr ? &panel_pairs<true, true, Code> : &panel_pairs<true, false, Code>)
          : (parameters.scale != nullptr ? &panel_pairs<false, true, Code> : &panel_pairs<false, false, Code>);
  return pairs(codes, ldw, parameters, top, first, block_top, depth, count, panels, panel_depth);
}

// As the float32 panels are converted (panels_avx512.cpp), two rows at a time: two panels at a
// time where the groups allow (convert_panel_pairs), the rest one panel at a time.
template <typename Code>
void convert_panels(const Code* codes, int64_t ldw, const CodeParameters& shared_parameters, int64_t top, int64_t first,
                    int64_t depth, int64_t count, at::BFloat16* panels, int64_t panel_depth) {
  // A copy that the stores into the panels cannot alias: its fields stay in registers.
  const CodeParameters parameters = shared_parameters;
  const bool vector_groups = parameters.groups == 1 || (parameters.group_size % 16 == 0 && first % 16 == 0);
  for (int64_t block_top = 0; block_top < depth; block_top += kRowsAtOnce) {
    const int64_t whole = vector_groups ? convert_panel_pairs(codes, ldw, parameters, top, first, block_top, depth,
                                                              count, panels, panel_depth)
                                        : 0;
    for (int64_t column = whole; column < count; column += kPanelColumns) {
      at::BFloat16* panel = panels + column * panel_depth;
      avx512::prefetch_column(codes, ldw, block_top + kRowsAtOnce, std::min(depth, block_top + 2 * kRowsAtOnce),
                              column);
      const avx512::LaneGroups low_groups(parameters, first + column), high_groups(parameters, first + column + 16);
      for (int64_t n = block_top; n < std::min(depth, block_top + kRowsAtOnce); n += 2) {
        __m512 low, high, next_low = _mm512_setzero_ps(), next_high = _mm512_setzero_ps();
        avx512::values32(codes + n * ldw + column, parameters, top + n, low_groups, high_groups, count - column, low,
                         high);
        if (n + 1 < depth) {
          avx512::values32(codes + (n + 1) * ldw + column, parameters, top + n + 1, low_groups, high_groups,
                           count - column, next_low, next_high);
        }
        _mm512_storeu_si512(panel + n * kPanelColumns, avx512::bfloat16_pairs(low, next_low));
        _mm512_storeu_si512(panel + n * kPanelColumns + kPanelColumns, avx512::bfloat16_pairs(high, next_high));
      }
    }
  }
}

// Rows packed as bfloat16 pairs (PackRowsFn): a row's values n and n + 1 are the pair of one
// 4-byte lane, so its 32 values from n in order are 16 pairs. bfloat16 rows without factors are
// taken as they lie; else the values are multiplied by their factors and rounded to bfloat16 once
// (avx512::scaled_bfloat16_32).
template <typename Source>
void pack_pairs(const Source* lhs, int64_t ldl, int64_t count, int64_t depth, const float* factors,
                int64_t factor_stride, at::BFloat16* block, bool streamed) {
  if constexpr (std::is_same_v<Source, at::BFloat16>) {
    if (factors == nullptr) {
      pack_rows16(count, (depth + 1) / 2, block, streamed, [&](int64_t r, int64_t d, int64_t /*lanes*/) {
        const int64_t n = 2 * d;
        return _mm512_maskz_loadu_epi16(avx512::lanes_mask32(depth - n), lhs + r * ldl + n);
      });
      return;
    }
  }
  pack_rows16(count, (depth + 1) / 2, block, streamed, [&](int64_t r, int64_t d, int64_t /*lanes*/) {
    const int64_t n = 2 * d, values = std::min<int64_t>(32, depth - n);
    return avx512::scaled_bfloat16_32(lhs + r * ldl + n, values, factors, factor_stride, n);
  });
}

} // namespace

void panel_rows_bfloat16_avx512(int64_t rows, const at::BFloat16* lhs, int64_t ldl, const at::BFloat16* panel,
                                int64_t depth, float* out, int64_t ldo, int64_t width, bool accumulate,
                                at::BFloat16* rounded, int64_t rounded_stride) {
  with_rows<kKernelRows>(rows, [&]<int64_t Rows>() {
    if (ldl != 0) {
      if (width <= 16) {
        panel_kernel<Rows, true, true>(lhs, ldl, panel, depth, out, ldo, width, accumulate, rounded, rounded_stride);
      } else {
        panel_kernel<Rows, false, true>(lhs, ldl, panel, depth, out, ldo, width, accumulate, rounded, rounded_stride);
      }
    } else if (width <= 16) {
      panel_kernel<Rows, true, false>(lhs, 0, panel, depth, out, ldo, width, accumulate, rounded, rounded_stride);
    } else {
      panel_kernel<Rows, false, false>(lhs, 0, panel, depth, out, ldo, width, accumulate, rounded, rounded_stride);
    }
  });
}

void pack_rows_bfloat16_avx512(const at::BFloat16* lhs, int64_t ldl, int64_t count, int64_t depth, const float* factors,
                               int64_t factor_stride, at::BFloat16* block, bool streamed) {
  pack_pairs(lhs, ldl, count, depth, factors, factor_stride, block, streamed);
}

void pack_float_rows_bfloat16_avx512(const float* lhs, int64_t ldl, int64_t count, int64_t depth, const float* factors,
                                     int64_t factor_stride, at::BFloat16* block, bool streamed) {
  pack_pairs(lhs, ldl, count, depth, factors, factor_stride, block, streamed);
}

void split_three_bfloat16_avx512(const float* lhs, int64_t ldl, int64_t rows, int64_t depth, const float* factors,
                                 int64_t factor_stride, at::BFloat16* parts, int64_t ldp, int64_t part_stride,
                                 float* row_factors) {
  constexpr int64_t kLanes = 16;
  const __m512 infinity = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  const auto finite = [&](__m512 values) { return _mm512_cmp_ps_mask(_mm512_abs_ps(values), infinity, _CMP_LT_OQ); };
  // The row's values from n on, 32 at a time (zero past depth), times their factors.
  const auto values32 = [&](const float* row, int64_t n) {
    auto values = avx512::load32(row + n, depth - n);
    avx512::multiply32(values, factors, factor_stride, n, depth - n);
    return values;
  };
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = lhs + r * ldl;
    __m512 largest = _mm512_setzero_ps();
    for (int64_t n = 0; n < depth; n += 2 * kLanes) {
      const auto values = values32(row, n);
      for (const __m512 half : {values.first, values.second}) {
        largest = _mm512_mask_max_ps(largest, finite(half), largest, _mm512_abs_ps(half));
      }
    }
    int exponent = 0;
    std::frexp(_mm512_reduce_max_ps(largest), &exponent);  // largest in [2^(exponent - 1), 2^exponent)
    exponent = std::clamp(exponent - 1, -126, 126);
    const __m512 power = _mm512_set1_ps(std::ldexp(1.0f, -exponent));
    row_factors[r] = std::ldexp(1.0f, exponent);
    at::BFloat16* const row_parts[3] = {parts + r * ldp, parts + r * ldp + part_stride,
                                        parts + r * ldp + 2 * part_stride};
    for (int64_t n = 0; n < ldp; n += 2 * kLanes) {
      const auto values = values32(row, n);
      for (int64_t half = 0; half < 2; ++half) {
        const int64_t column = n + half * kLanes;
        // Zero past depth, which the tiles read in whole tile rows, whatever the factors.
        const __m512 value =
            _mm512_maskz_mul_ps(avx512::lanes_mask(depth - column), half == 0 ? values.first : values.second, power);
        const __m256bh first = _mm512_cvtneps_pbh(value);
        const __m512 rest = _mm512_maskz_sub_ps(finite(value), value, avx512::widen((__m256i)first));
        const __m256bh second = _mm512_cvtneps_pbh(rest);
        const __m256bh third = _mm512_cvtneps_pbh(_mm512_sub_ps(rest, avx512::widen((__m256i)second)));
        const __mmask16 stored = avx512::lanes_mask(ldp - column);
        _mm256_mask_storeu_epi16(row_parts[0] + column, stored, (__m256i)first);
        _mm256_mask_storeu_epi16(row_parts[1] + column, stored, (__m256i)second);
        _mm256_mask_storeu_epi16(row_parts[2] + column, stored, (__m256i)third);
      }
    }
  }
}

void convert_panels_int8_bfloat16_avx512(const int8_t* codes, int64_t ldw, const CodeParameters& parameters,
                                         int64_t top, int64_t first, int64_t depth, int64_t count, at::BFloat16* panels,
                                         int64_t panel_depth) {
  convert_panels(codes, ldw, parameters, top, first, depth, count, panels, panel_depth);
}

void convert_panels_float16_bfloat16_avx512(const at::Half* values, int64_t ldw, const CodeParameters& parameters,
                                            int64_t top, int64_t first, int64_t depth, int64_t count,
                                            at::BFloat16* panels, int64_t panel_depth) {
  convert_panels(values, ldw, parameters, top, first, depth, count, panels, panel_depth);
}

namespace {

// 16 rows of W at a time, 32 codes of each converted and rounded to 16 bfloat16 pairs (a 32-bit
// lane each, in order), then transposed as 32-bit lanes into 16 panel rows of pairs of those 16
// columns: one 16 x 16 transpose per 512 values, where transposing float32 values before the
// conversion takes one per 256. Without zero points (Offsets false) nothing is subtracted.
template <bool Offsets>
void convert_transposed_int8_bfloat16(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                                      int64_t first, int64_t depth, int64_t count, at::BFloat16* panels,
                                      int64_t panel_depth) {
  const Transpose16 transpose16;
  // The 16 rows are read 32 codes at a time, 16 streams that the hardware prefetchers do not keep
  // ahead of: rotating through weights, waiting for the codes took two fifths of the conversion.
  // Each row asks for the line 4 lines on, or past its end, the line as far into the row 16 on.
  constexpr int64_t kAhead = 256;
  const auto prefetch_ahead = [&](int64_t row, int64_t k) {
    if (k + kAhead < depth) {
      _mm_prefetch(reinterpret_cast<const char*>(codes + row * ldw + k + kAhead), _MM_HINT_T0);
    } else if (row + 16 < count) {
      _mm_prefetch(reinterpret_cast<const char*>(codes + (row + 16) * ldw + k + kAhead - depth), _MM_HINT_T0);
    }
  };
  for (int64_t row = 0; row < round_up(count, kPanelColumns); row += 16) {
    at::BFloat16* panel = panels + row / kPanelColumns * kPanelColumns * panel_depth + row % kPanelColumns * 2;
    // Groups are whole 16 columns (or one per row): each half of 32 codes lies in one, followed
    // by additions (a division costs about as much as converting the 32 codes; GroupRuns).
    GroupCursor low_groups(parameters, top), high_groups(parameters, top + 16);
    for (int64_t k = 0; k < depth; k += 32) {
      const int64_t low_group = low_groups.at(top + k), high_group = high_groups.at(top + k + 16);
      __m512 pairs[16];
      for (int64_t i = 0; i < 16; ++i) {
        if (row + i >= count) {
          pairs[i] = _mm512_setzero_ps();
          continue;
        }
        const int8_t* values = codes + (row + i) * ldw + k;
        const int64_t n = first + row + i;
        if (k % 64 == 0) {
          prefetch_ahead(row + i, k);
        }
        pairs[i] = _mm512_castsi512_ps(
            avx512::bfloat16_values32<Offsets>(values, depth - k, parameters, n, low_group, high_group));
      }
      transpose16(pairs);
      for (int64_t j = 0; j < 16 && k + 2 * j < depth; ++j) {
        _mm512_storeu_ps(panel + (k / 2 + j) * kPanelColumns * 2, pairs[j]);
      }
    }
  }
}

} // namespace

void convert_transposed_panels_int8_bfloat16_avx512(const int8_t* codes, int64_t ldw, const CodeParameters& parameters,
                                                    int64_t top, int64_t first, int64_t depth, int64_t count,
                                                    at::BFloat16* panels, int64_t panel_depth) {
  if (parameters.zero_point != nullptr) {
    convert_transposed_int8_bfloat16<true>(codes, ldw, parameters, top, first, depth, count, panels, panel_depth);
  } else {
    convert_transposed_int8_bfloat16<false>(codes, ldw, parameters, top, first, depth, count, panels, panel_depth);
  }
}

namespace {

// PackCodeRowsFn: `count` weight rows, 32 codes of each at a time converted and rounded to 16
// bfloat16 pairs (a 32-bit lane each, in order) and transposed as lanes into the block, as
// pack_pairs packs lhs's rows. The 32 codes' groups are the same for every row: found as each
// step's first row is converted, by additions (GroupCursor). Each row asks for the line kAhead
// codes on: its runs (a part of the depth) are too short for the hardware prefetchers.
template <bool Offsets>
void pack_code_rows(const int8_t* codes, int64_t ldw, const CodeParameters& shared_parameters, int64_t first,
                    int64_t top, int64_t depth, int64_t count, at::BFloat16* block) {
  // A copy that the stores into the block cannot alias: its fields stay in registers.
  const CodeParameters parameters = shared_parameters;
  constexpr int64_t kAhead = 256;
  GroupCursor low_groups(parameters, top), high_groups(parameters, top + 16);
  int64_t low_group = 0, high_group = 0;
  // The thread that packs the block multiplies by it at once: through the caches.
  const int64_t pairs = round_up(depth, kRowTilesDepthStep) / 2;
  pack_rows16(count, pairs, block, /*streamed=*/false, [&](int64_t r, int64_t d, int64_t /*lanes*/) {
    const int64_t k = 2 * d;
    if (r == 0) {
      low_group = low_groups.at(top + k);
      high_group = high_groups.at(top + k + 16);
    }
    const int8_t* row_codes = codes + r * ldw;
    if (k % 64 == 0) {
      // An address, not a pointer: past the row's end it points at nothing.
      _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(row_codes) + k + kAhead), _MM_HINT_T0);
    }
    return avx512::bfloat16_values32<Offsets>(row_codes + k, depth - k, parameters, first + r, low_group, high_group);
  });
}

} // namespace

void pack_code_rows_bfloat16_avx512(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t first,
                                    int64_t top, int64_t depth, int64_t count, at::BFloat16* block) {
  if (parameters.zero_point != nullptr) {
    pack_code_rows<true>(codes, ldw, parameters, first, top, depth, count, block);
  } else {
    pack_code_rows<false>(codes, ldw, parameters, first, top, depth, count, block);
  }
}

// Each half of the panel's 32 columns: 16 rows, their pairs transposed as 32-bit lanes.
void pack_panel_bfloat16_avx512(const at::BFloat16* lhs, int64_t ldl, int64_t count, int64_t depth,
                                at::BFloat16* panel) {
  for (int64_t half = 0; half < kPanelColumns; half += 16) {
    transpose_rows16(count - half, round_up(depth, kRowTilesDepthStep) / 2, reinterpret_cast<int32_t*>(panel) + half,
                     kPanelColumns, __mmask16(0xFFFF), [&](int64_t r, int64_t d, int64_t /*lanes*/) {
                       return _mm512_maskz_loadu_epi16(avx512::lanes_mask32(depth - 2 * d),
                                                       lhs + (half + r) * ldl + 2 * d);
                     });
  }
}

void store_transposed_bfloat16_avx512(const float* sums, int64_t lds, int64_t rows, int64_t columns, at::BFloat16* out,
                                      int64_t ldo) {
  transpose_blocks16(
      rows, columns,
      [&](int64_t row, int64_t column, __mmask16 mask) {
        return _mm512_maskz_loadu_ps(mask, sums + row * lds + column);
      },
      [&](int64_t column, int64_t row, __mmask16 mask, __m512 lanes) {
        _mm256_mask_storeu_epi16(out + column * ldo + row, mask, (__m256i)_mm512_cvtneps_pbh(lanes));
      });
}

} // namespace qlgrad::math
