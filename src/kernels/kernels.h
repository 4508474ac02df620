#pragma once
// The kernels: the loops over codes, packings and products that are written (or compiled) once
// per instruction set, on raw pointers. kernels() is the one table of them, chosen once per
// process from the instruction set in use (instruction_set.h); nothing else in qlgrad asks which
// instruction set runs. The strategy that calls them (which kernel for which row count, how the
// work is divided among threads) lives outside this folder, in src/matmul*.
//
// A kernel file of an x86-64 instruction set includes its headers first and avx2.h or avx512.h
// last: from there on every function it defines is compiled for that set.

#include "../blocked_layout.h"
#include "code_parameters.h"
#include "instruction_set.h"
#include "int4_packing.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace qlgrad::math {

constexpr int64_t kCacheLine = 64;

inline int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Rows of lhs a stream (StreamFn) takes at once, summed side by side. Up to this many rows the
// product is bound by reading the weight, not by arithmetic: one float32 pass over the stored
// codes (a quarter of float32's bytes) beats converting tiles for a GEMM, and any narrower
// arithmetic.
constexpr int64_t kStreamedRowsMax = 8;
// Rows of lhs the direct stream over fbgemm's packing (BlockedStreamFn) takes at once.
constexpr int64_t kBlockedStreamRows = 4;
// Rows of lhs the int4 stream (Int4StreamFn) takes at once.
constexpr int64_t kInt4StreamedRowsMax = 4;
// The panel kernel's width: one panel of the converted weight, two AVX-512 vectors.
constexpr int64_t kPanelColumns = 32;
// The panel kernel's height: 24 accumulators, 2 panel registers and a broadcast, of the 32 vector registers.
constexpr int64_t kKernelRows = 12;

// The row stride of a stream's block sums: a cache line more than the row, so that the sums of
// one row are not stored to addresses 4 KiB apart from those of the next, which the CPU would
// take for the same when it orders loads after stores (measured 2.4x slower at 4 rows of 4096
// columns).
inline int64_t block_sums_stride(int64_t columns) {
  constexpr int64_t kLineFloats = kCacheLine / int64_t{sizeof(float)};
  return round_up(columns, kLineFloats) + kLineFloats;
}

// A stream over weight rows [begin, end) and the `columns` columns from column `first`:
//   sums[r, c] += sum_n lhs[r, n] * value[n, first + c]
// for `rows` (1 to kStreamedRowsMax) rows of lhs, reading each weight row once for all of them
// (`weight` points at column `first`). A group's scale multiplies lhs's factors, once per row and
// group. The sum runs in blocks of 128 weight rows added up apart (in `block_sums`, rows x
// block_sums_stride(columns) floats), so that its rounding error grows as a GEMM's does rather
// than with the full depth.
template <typename Code>
struct StreamArguments {
  const float* lhs;
  int64_t ldl;
  int64_t begin, end;
  const Code* weight;
  int64_t ldw;
  const CodeParameters* parameters;
  int64_t first, columns;
  float* sums;
  int64_t lds;
  float* block_sums;
};
template <typename Code>
using StreamFn = void(int64_t rows, const StreamArguments<Code>& arguments);

// tile[n, c] = value[top + n, first + c] for an int8 block of `depth` rows from weight row `top`
// and `columns` columns from column `first` (`codes` points at its first code), as float32 or
// as bfloat16 rounded to nearest even, a run of one group at a time.
template <typename Element>
using ConvertCodesFn = void(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                            int64_t first, int64_t depth, int64_t columns, Element* tile);

// out[i, j] = W[top + i, first + j] for i < depth and j < count from a blocked packing, out's rows
// `ldo` bytes apart.
using CopyBlockedFn = void(const BlockedLayout& layout, const int8_t* packed, int64_t top, int64_t depth, int64_t first,
                           int64_t count, int8_t* out, int64_t ldo);

// q[m, :] = round(grad[m, :] * channel_scale / s[m]) for rows m in [begin, end) of grad [M, n], with
// s[m] = max_j |grad[m, j] * channel_scale[j]| / 127 into row_scale[m]: symmetric int8 per row,
// the channel scale folded in first because it multiplies the contraction dimension, q's rows ldq
// codes apart. A row with a NaN or an infinity gets codes 0 and a NaN scale.
using QuantizeRowsFn = void(const float* grad, const float* channel_scale, int64_t begin, int64_t end, int64_t n,
                            int8_t* quantized, int64_t ldq, float* row_scale);

// torchao's symmetric int8 quantization of activations per row (choose_qparams_affine and
// quantize_affine with PerRow granularity, MappingType.SYMMETRIC, eps float32's epsilon), one
// operation at a time as torch rounds it, for rows [begin, end) of input [M, n] (float32, or
// bfloat16 whose results the steps in its dtype round to bfloat16):
//   s[m] = max(max(-min(min_j x[m, j], 0), max(max_j x[m, j], 0)) / 127.5, eps) in x's dtype
//   q[m, j] = clamp(round_half_even(x[m, j] * (1 / s[m])), -128, 127) in float32
// into row_scale[m] (float32) and quantized. A row holding a NaN gets a NaN scale, one holding an
// infinity (and no NaN) an infinite one, both codes of 0: torch's steps on an x86 CPU.
template <typename Element>
using QuantizeRowsSymmetricFn = void(const Element* input, int64_t begin, int64_t end, int64_t n, int8_t* quantized,
                                     float* row_scale);

// torchao's asymmetric int8 quantization of activations per row, then dequantized (torchao's
// _apply_int8_act_asym_per_token_quant_dequant: choose_qparams_affine with
// MappingType.ASYMMETRIC and its default eps, quantize_affine, dequantize_affine), one operation
// at a time as torch rounds it, every step in x's dtype (float32, or bfloat16 rounding each
// result to bfloat16), for rows [begin, end) of input [M, n] into out:
//   lo = min(min_j x, 0), hi = max(max_j x, 0)
//   s = max((hi - lo) / 255, smallest normal), z = clamp(-128 - round(lo / s), -128, 127)
//   q = clamp(round(x * (1 / s)) + z, -128, 127), out = (q - z) * s
// with NaNs and infinities flowing as torch's steps let them (on x86 CPUs, where a NaN
// converted to int8 is 0).
template <typename Element>
using QuantDequantRowsFn = void(const Element* input, int64_t begin, int64_t end, int64_t n, Element* out);

// A block of up to kKernelRows rows of lhs packed for the panel kernels: block[n / P][r][n % P] =
// lhs[r, n] * factors[n * factor_stride] (copied where factors is null), each product rounded
// once to Element, for r < count and n < depth; zero for count <= r < kKernelRows and past depth
// to a multiple of P, the values a kernel multiplies at once (1 float32, a pair of bfloat16, a
// quad of int8 values, which take no factors). lhs's rows (in Source: Element, or float32 for
// bfloat16 products) are ldl elements apart. `streamed`: other threads will read the block, which
// then goes past the caches where it can (packed_rows_avx512.h, pack_rows16; the AMX packers
// ignore it).
template <typename Source, typename Element = Source>
using PackRowsFn = void(const Source* lhs, int64_t ldl, int64_t count, int64_t depth, const float* factors,
                        int64_t factor_stride, Element* block, bool streamed);

// out[r, 0:32] (+)= sum_n lhs[n, r] * panel[n, 0:32] for `rows` (1 to kKernelRows) rows of a packed
// block of lhs ([depth][kKernelRows]); `width` columns of out exist.
using PanelRowsFn = void(int64_t rows, const float* lhs, const float* panel, int64_t depth, float* out, int64_t ldo,
                         int64_t width, bool accumulate);

// value[top:top + depth, first:first + count] as panels of kPanelColumns columns, each
// [depth][kPanelColumns] (zero beyond `count`), `panel_depth` rows of kPanelColumns apart (`codes`
// points at [top, first]; `panels` at the first panel's row for `top`).
template <typename Code>
using ConvertPanelsFn = void(const Code* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                             int64_t first, int64_t depth, int64_t count, float* panels, int64_t panel_depth);
// The same float32 panels of int8 codes W[top:top + depth, first:first + count] in fbgemm's
// AVX-512 packing (BlockedLayout::in_squares; top and first multiples of 16), read where they
// lie, each value its code less its row's zero point (zero_point [N], null for zero).
using BlockedFloatPanelsFn = void(const BlockedLayout& layout, const int8_t* packed, const float* zero_point,
                                  int64_t top, int64_t depth, int64_t first, int64_t count, float* panels,
                                  int64_t panel_depth);

// The same with bfloat16 products (vdpbf16ps) and float32 sums: lhs packed as [depth / 2][kKernelRows]
// pairs of bfloat16 (rows n and n + 1 of lhs's column side by side), or with ldl > 0 its rows where
// they lie, ldl elements apart; the panel [depth / 2][kPanelColumns] pairs (weight rows n and n + 1
// of each column side by side); depth even. With `rounded`, the sums (added to out's with
// `accumulate`) go there instead, rounded to bfloat16 (to nearest even), rows rounded_stride
// elements apart.
using PanelRowsBFloat16Fn = void(int64_t rows, const at::BFloat16* lhs, int64_t ldl, const at::BFloat16* panel,
                                 int64_t depth, float* out, int64_t ldo, int64_t width, bool accumulate,
                                 at::BFloat16* rounded, int64_t rounded_stride);

// value[top:top + depth, first:first + count] as such bfloat16 panels, rounded to nearest even,
// panel_depth (even) rows of kPanelColumns apart; an odd depth's last pair ends in a zero row.
template <typename Code>
using ConvertPanelsBFloat16Fn = void(const Code* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                                     int64_t first, int64_t depth, int64_t count, at::BFloat16* panels,
                                     int64_t panel_depth);

// For float32 products on bfloat16 tiles: lhs[r, n] * factors[n * factor_stride] (each rounded
// once to float32; lhs itself where factors is null) for r < rows and n < depth, times a power of
// two per row, as three bfloat16 values that sum to it exactly: part p of row r at
// parts + p * part_stride + r * ldp, zero from depth to ldp. The power of two brings the row's
// largest finite magnitude into [1, 2) (within [2^-126, 2^126]), so that no part of a value within
// 2^-100 of it is subnormal, which the bfloat16 conversions and products flush to zero;
// row_factors[r] is its inverse. A value that is not finite is its first part, the others zero.
using SplitThreeBFloat16Fn = void(const float* lhs, int64_t ldl, int64_t rows, int64_t depth, const float* factors,
                                  int64_t factor_stride, at::BFloat16* parts, int64_t ldp, int64_t part_stride,
                                  float* row_factors);

// The panel kernel with int8 products (vpdpbusd) and int32 sums: lhs int8 packed as [depth / 4][kKernelRows]
// quads (rows n to n + 3 of lhs's column side by side), or with ldl > 0 its rows where they lie,
// ldl bytes apart; the panel [depth / 4][kPanelColumns] quads of uint8 values (weight rows n to n +
// 3 of each column, each value plus 128); depth a multiple of 4.
using PanelRowsInt8Fn = void(int64_t rows, const int8_t* lhs, int64_t ldl, const uint8_t* panel, int64_t depth,
                             int32_t* out, int64_t ldo, int64_t width, bool accumulate);

// The same products with the weight's int8 codes as lhs, read where they lie: rows (up to
// kKernelRows) of W [N, K] in rows, ldw apart, by a panel of x's rows (Int8TransposedPanelsFn's,
// each code plus 128), out[r, c] = sum_k W[r, k] * (x[c, k] + 128) for c < width (up to
// kPanelColumns); depth a multiple of 4.
using WeightRowsInt8Fn = void(int64_t rows, const int8_t* weight, int64_t ldw, const uint8_t* panel, int64_t depth,
                              int32_t* out, int64_t ldo, int64_t width);
// out[c, r] = sums[r, c] - row_offset[r] for r < rows and c < columns: such sums, rows lds apart,
// into out's rows ldo apart.
using TransposeSumsFn = void(const int32_t* sums, int64_t lds, int64_t rows, int64_t columns, const int32_t* row_offset,
                             int32_t* out, int64_t ldo);

// The panel GEMM on AMX tiles (16 x 64-byte tile rows): the same products as PanelRowsBFloat16Fn
// and PanelRowsInt8Fn, whose panels of pairs and quads are the layout AMX multiplies, for up to
// kAmxTaskRows rows of lhs in two tiles of kAmxBlockRows rows. lhs lies as LhsLayout says, in
// tile rows of S values (S = 64 bytes' elements: 32 bfloat16 or 64 int8 values) along a depth
// that is a multiple of S (the panels past the weight's depth zero, or any int8 value). The
// tiles must have been configured (ConfigureTilesFn) on the calling thread since anything else
// used them: loading the configuration costs as much as a quarter of a kernel call.
constexpr int64_t kAmxBlockRows = 16;
constexpr int64_t kAmxTaskRows = 2 * kAmxBlockRows;
// Where lhs's rows lie for a kernel call: packed as the kernel reads them, or in place, lhs's own
// rows. The AMX kernels read the tile row of row r (below kAmxBlockRows) at depth step s at lhs + r
// * row_bytes + s * step_bytes (in bytes), rows 16 to 31 block_stride elements after rows 0 to 15:
// packed in blocks of kAmxBlockRows rows, each [depth / S][kAmxBlockRows][S], row_bytes 64 and
// step_bytes 16 x 64; in place, row_bytes their stride and step_bytes 64. The AVX-512 kernels
// (PanelRowsBFloat16Fn, PanelRowsInt8Fn) read their packing, or in place rows row_bytes apart.
struct LhsLayout {
  int64_t block_stride;
  int64_t row_bytes;
  int64_t step_bytes;
  bool in_place;

  // Blocks packed so, the second block_stride elements after the first.
  static constexpr LhsLayout packed(int64_t block_stride) {
    return {block_stride, 64, kAmxBlockRows * 64, /*in_place=*/false};
  }
};
using ConfigureTilesFn = void();
// With `rounded` (float32 sums only), the sums (added to out's with `accumulate`) go there instead,
// rounded to bfloat16 (to nearest even), rows rounded_stride elements apart.
template <typename Element, typename Panel, typename Sum>
using PanelRowsAmxFn = void(int64_t rows, const Element* lhs, const LhsLayout& lhs_layout, const Panel* panel,
                            int64_t depth, Sum* out, int64_t ldo, int64_t width, bool accumulate, at::BFloat16* rounded,
                            int64_t rounded_stride);

// The forward below pads the weight's rows and x's panels with zeros to a multiple of this depth:
// a tile row's 32 bfloat16 values, which the AVX512-BF16 kernel's rows and panels follow too.
constexpr int64_t kRowTilesDepthStep = 32;

// The forward x @ W.T of int8 codes W [N, K] in rows on AMX tiles with W's rows as the tiles'
// first operand (PanelRowsAmxFn's lhs) and x's rows as its panel, the sums out.T: the weight is
// converted in the order its codes lie, where its panels (ConvertTransposedPanelsFn) transpose
// them, and the sums, a row of x's per weight row, are transposed as they are stored.
//   ConvertRowTilesFn: value[first:first + count, top:top + depth] (`codes` points at W[first,
//     top]; `parameters` as ConvertTransposedPanelsFn's) in blocks of kAmxBlockRows weight rows,
//     each [depth / 32][kAmxBlockRows][32] bfloat16 rounded to nearest even, the second block
//     block_stride elements after the first; zero past `count` rows (up to kAmxTaskRows, to a
//     whole block) and past depth to a multiple of kRowTilesDepthStep.
//   PackPanelFn: `count` (up to kPanelColumns) rows of a bfloat16 x, ldl apart, as a panel of
//     pairs [depth / 2][kPanelColumns][2] (PanelRowsBFloat16Fn's), zero past count and past
//     depth to a multiple of kRowTilesDepthStep.
//   StoreTransposedFn: out[c, r] = sums[r, c] rounded to bfloat16 (to nearest even) for r < rows
//     and c < columns, sums' rows lds apart, out's ldo.
// PackPanelFn and StoreTransposedFn need AVX512-BF16 only, and serve the same forward on the
// AVX512-BF16 panel kernel (PanelRowsBFloat16Fn), with W's rows as its packed lhs:
//   PackCodeRowsFn: value[first:first + count, top:top + depth] as PackRowsFn's block of `count`
//     (up to kKernelRows) rows, [depth / 2][kKernelRows] pairs rounded to nearest even, zero past
//     count and past depth to a multiple of kRowTilesDepthStep.
using ConvertRowTilesFn = void(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t first,
                               int64_t top, int64_t depth, int64_t count, at::BFloat16* tiles, int64_t block_stride);
//   ConvertInt4RowTilesFn: the same for torch's int4 packing, values as Int4Pack defines them,
//     `first` a multiple of kAmxTaskRows, the rows in whole blocks of the AVX-512 packing and
//     `depth` a multiple of 32.
using ConvertInt4RowTilesFn = void(const Int4Pack& pack, int64_t first, int64_t top, int64_t depth, int64_t count,
                                   at::BFloat16* tiles, int64_t block_stride);
using PackPanelFn = void(const at::BFloat16* lhs, int64_t ldl, int64_t count, int64_t depth, at::BFloat16* panel);
using StoreTransposedFn = void(const float* sums, int64_t lds, int64_t rows, int64_t columns, at::BFloat16* out,
                               int64_t ldo);
using PackCodeRowsFn = void(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t first,
                            int64_t top, int64_t depth, int64_t count, at::BFloat16* block);
// The rescaling of an int8 product's int32 sums as torch computes it one operation at a time:
// out[m, n] = (((sums[m, n] - row_offset[m]) * row_scale[m]) * column_scale[n]) + bias[n] in
// float32 (the offset subtracted in int32; no offset, column scale or bias where it is null), each
// step's result rounded to bfloat16 where its bit in `bfloat16_steps` is set (RescaleStep: the
// conversion of the sum to a float, then the two products and the sum, as their tensors' dtypes
// make them), and the result to Element (float32, or bfloat16 rounded to nearest even). `rows`
// rows of `columns` sums, `sums_stride` apart, into out's rows `out_stride` apart; row_offset and
// row_scale point at the first row's, column_scale and bias at the first column's. Where a step
// rounds, a NaN among the parameters has its low 16 bits zero (bfloat16's NaNs have, and so have
// those that arithmetic makes): rounded by carry, it stays a NaN, which saves a NaN test a step.
enum RescaleStep : unsigned { kConversion = 1, kRowProduct = 2, kColumnProduct = 4, kBiasSum = 8 };
template <typename Element>
using RescaleSumsFn = void(const int32_t* sums, int64_t sums_stride, int64_t rows, int64_t columns,
                           const int32_t* row_offset, const float* row_scale, const float* column_scale,
                           const float* bias, unsigned bfloat16_steps, Element* out, int64_t out_stride);

// Such int8 panels of int8 codes W in rows, panel_depth (a multiple of 4) rows of kPanelColumns
// apart; past `depth` each value is 128 (a zero code), past `count` up to whole panels filler
// that no stored sum reads:
//   Int8PanelsFn: W[top:top + depth, first:first + count] (`codes` points at W[top, first]), the
//     weight of a product lhs @ W (the input gradient grad @ W);
//   Int8TransposedPanelsFn: the transpose W.T[top:top + depth, first:first + count] of W [N, K]
//     (`codes` points at W[first, top]), the weight of a forward x @ W.T.
using Int8PanelsFn = void(const int8_t* codes, int64_t ldw, int64_t depth, int64_t count, uint8_t* panels,
                          int64_t panel_depth);
using Int8TransposedPanelsFn = Int8PanelsFn;
// The int8 panels of W[top:top + depth, first:first + count] in fbgemm's AVX-512 packing
// (BlockedLayout::in_squares; top and first multiples of 16, top + depth a multiple of 4 or the
// weight's last row), as Int8PanelsFn writes them from codes in rows, read where they lie: past
// `depth` up to the next 4 rows and past `count` up to the next 16 columns, the packing's own
// codes (zero past the weight's ends: 128 in the panels, as Int8PanelsFn writes there).
using BlockedInt8PanelsFn = void(const BlockedLayout& layout, const int8_t* packed, int64_t top, int64_t depth,
                                 int64_t first, int64_t count, uint8_t* panels, int64_t panel_depth);

// sums[r] = the sum of row r's `depth` int8 values, for `count` rows `stride` apart: the int8
// panels' code offset is 128 times it.
using Int8RowSumsFn = void(const int8_t* rows, int64_t stride, int64_t count, int64_t depth, int32_t* sums);

// torchao's asymmetric int8 quantization of activations per row, QuantDequantRowsFn's steps without
// the dequantization, for the integer products of its group-wise layers' forward: for rows [begin,
// end) of input [M, n], codes[m, j] = q + 128 (uint8), row_scale[m] = s and row_offset[m] = z + 128,
// so that (codes[m, j] - row_offset[m]) * s is the dequantized value before its rounding. A row
// whose steps are not all finite (one holding a NaN or an infinity) gets a NaN scale and no codes.
template <typename Element>
using QuantizeRowsAsymmetricFn = void(const Element* input, int64_t begin, int64_t end, int64_t n, uint8_t* codes,
                                      float* row_scale, float* row_offset);

// The forward x @ W.T of int8 codes W [N, K] in groups along K with int8 activations (torchao's
// group-wise layers) as integer products per run of the depth: each run's int32 sums times its
// group's scale, summed in float32. A run is `span` values of one group (span a multiple of 16
// that divides the group size).
//   GroupedInt8PanelsFn: W.T[top:top + depth, first:first + count] (`codes` points at W[first,
//     top]; top and depth multiples of span) as panels of kPanelColumns columns,
//     grouped_int8_panel_bytes(depth, span) apart, each holding per run [span / 4][kPanelColumns]
//     quads of int8 values code - zero_point (zero_point int8 [N, groups], null for zero), then
//     the run's kPanelColumns scales (GroupScales [N, groups]) and kPanelColumns sums of its
//     values (float32); zero past `count`. False where a value lies outside int8 (the panels then
//     hold nothing of use).
//   GroupedInt8PanelRowsFn: out[r, 0:32] (+)= row_scale[r] * (the sum over the panel's runs of
//     scale * sum_n (lhs[r, n] - row_offset[r]) * value[n, 0:32]) for `rows` (1 to kKernelRows)
//     rows of a packed block of uint8 lhs (PackRowsFn's quads) over `depth` (a multiple of span),
//     the panel as GroupedInt8PanelsFn writes it; `width` columns of out exist. With `rounded`,
//     the result goes there instead, rounded to bfloat16 (to nearest even), rows rounded_stride
//     apart.
// Scales as the weight stores them: float32, or bfloat16 (torchao's bfloat16 layers), read in
// place and widened to float32 exactly; one of the two pointers is set.
struct GroupScales {
  const float* float32 = nullptr;
  const at::BFloat16* bfloat16 = nullptr;
};
using GroupedInt8PanelsFn = bool(const int8_t* codes, int64_t ldw, const int8_t* zero_point, GroupScales scale,
                                 int64_t groups, int64_t group_size, int64_t span, int64_t top, int64_t first,
                                 int64_t depth, int64_t count, int8_t* panels);
using GroupedInt8PanelRowsFn = void(int64_t rows, const uint8_t* lhs, const int8_t* panel, int64_t depth, int64_t span,
                                    const float* row_offset, const float* row_scale, float* out, int64_t ldo,
                                    int64_t width, bool accumulate, at::BFloat16* rounded, int64_t rounded_stride);

inline int64_t grouped_int8_panel_bytes(int64_t depth, int64_t span) {
  return depth / span * (span + 2 * int64_t{sizeof(float)}) * kPanelColumns;
}

// W.T[top:top + depth, first:first + count] of int8 codes W [N, K] in rows (`codes` points at
// W[first, top]; `parameters` per row of W and group of its columns, groups of whole 16 columns
// or one per row, top a multiple of 16), the panels of the forward x @ W.T: float32 panels as
// ConvertPanelsFn writes them, or bfloat16 pairs as ConvertPanelsBFloat16Fn, panel_depth rows
// apart; zero past `count` (any count) and `depth`.
template <typename Element>
using ConvertTransposedPanelsFn = void(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                                       int64_t first, int64_t depth, int64_t count, Element* panels,
                                       int64_t panel_depth);

// W[top:top + depth, first:first + count] of an int4 packing as panels, as ConvertPanelsFn
// writes them with panel_depth = depth (top, depth and count multiples of 16).
using Int4PanelsFn = void(const Int4Pack& pack, int64_t top, int64_t first, int64_t depth, int64_t count, float* out);
// The bfloat16 panels are panel_depth rows of kPanelColumns apart, as ConvertPanelsBFloat16Fn writes them.
using Int4PanelsBFloat16Fn = void(const Int4Pack& pack, int64_t top, int64_t first, int64_t depth, int64_t count,
                                  at::BFloat16* out, int64_t panel_depth);

// out[r, first + c] = sum_n lhs[r, n] * W[n, first + c] for `rows` (1 to kInt4StreamedRowsMax)
// rows and the columns [first, first + count) of an int4 packing, as dot products along the
// packing's 16 rows of a column; `partial` holds count * rows * 16 floats.
using Int4StreamFn = void(const Int4Pack& pack, int64_t rows, const float* lhs, int64_t ldl, int64_t first,
                          int64_t count, float* partial, float* out, int64_t ldo);

// sums[r, k0 + k] = sum_n lhs[r, n] * (W[n, k0 + k] - zero_point[n]) for `rows` (1 to
// kBlockedStreamRows) rows, the weight rows n in [n_begin, n_end) (multiples of 16 but the end)
// and one range of block_depth columns from k0, read in fbgemm's AVX-512 packing where it lies
// (reads_in_place). `partial` holds rows * round_up(block_depth, 4) * 16 floats.
using BlockedStreamFn = void(int64_t rows, const float* lhs, int64_t ldl, const int8_t* packed,
                             const BlockedLayout& layout, const float* zero_point, int64_t k0, int64_t n_begin,
                             int64_t n_end, float* partial, float* sums, int64_t lds);

// Whether a BlockedStreamFn reads this packing: 4 consecutive k of 16 n in each 64-byte line.
inline bool reads_in_place(const BlockedLayout& layout) {
  return layout.interleave == 4 && layout.block_width % 16 == 0 && layout.block_depth % 4 == 0;
}

struct Kernels {
  InstructionSet instruction_set;
  // Streams over codes in rows: int8 with any group size, int8 per tensor or channel or with
  // groups of whole 16-lane vectors, and float16 values.
  StreamFn<int8_t>* stream_int8;
  StreamFn<int8_t>* stream_int8_vector_groups;
  StreamFn<at::Half>* stream_float16;
  ConvertCodesFn<float>* convert_codes_float;
  ConvertCodesFn<at::BFloat16>* convert_codes_bfloat16;
  CopyBlockedFn* copy_blocked;
  QuantizeRowsFn* quantize_rows;
  QuantizeRowsSymmetricFn<float>* quantize_rows_symmetric;
  QuantizeRowsSymmetricFn<at::BFloat16>* quantize_rows_symmetric_bfloat16;
  QuantDequantRowsFn<float>* quant_dequant_rows_asymmetric;
  QuantDequantRowsFn<at::BFloat16>* quant_dequant_rows_asymmetric_bfloat16;
  // torch's int4 packing under this instruction set (block 0 where qlgrad does not read it).
  Int4Packing int4_packing;
  // The panel GEMM, the int4 stream and the direct stream over fbgemm's packing: AVX-512 only,
  // null elsewhere.
  PanelRowsFn* panel_rows = nullptr;
  PackRowsFn<float>* pack_rows = nullptr;
  RescaleSumsFn<float>* rescale_sums = nullptr;
  RescaleSumsFn<at::BFloat16>* rescale_sums_bfloat16 = nullptr;
  ConvertPanelsFn<int8_t>* convert_panels_int8 = nullptr;
  BlockedFloatPanelsFn* blocked_float_panels = nullptr;
  ConvertPanelsFn<at::Half>* convert_panels_float16 = nullptr;
  ConvertTransposedPanelsFn<float>* convert_transposed_panels_int8 = nullptr;
  Int4PanelsFn* int4_panels = nullptr;
  // The transposed weight's panels, for the forward x @ W.T: W.T[top:top + depth, first:first + count]
  // (depth along W's columns, the panels' columns W's rows), written as int4_panels writes W's;
  // first a multiple of kPanelColumns, count of 16 (and top even for bfloat16 pairs).
  Int4PanelsFn* int4_transposed_panels = nullptr;
  Int4StreamFn* int4_stream = nullptr;
  BlockedStreamFn* stream_blocked = nullptr;
  // The panel GEMM in bfloat16 products: AVX512-BF16 only (has_avx512_bf16), null elsewhere.
  PanelRowsBFloat16Fn* panel_rows_bfloat16 = nullptr;
  PackRowsFn<at::BFloat16>* pack_rows_bfloat16 = nullptr;
  PackRowsFn<float, at::BFloat16>* pack_float_rows_bfloat16 = nullptr;
  SplitThreeBFloat16Fn* split_three_bfloat16 = nullptr;
  ConvertPanelsBFloat16Fn<int8_t>* convert_panels_int8_bfloat16 = nullptr;
  ConvertPanelsBFloat16Fn<at::Half>* convert_panels_float16_bfloat16 = nullptr;
  ConvertTransposedPanelsFn<at::BFloat16>* convert_transposed_panels_int8_bfloat16 = nullptr;
  Int4PanelsBFloat16Fn* int4_panels_bfloat16 = nullptr;
  Int4PanelsBFloat16Fn* int4_transposed_panels_bfloat16 = nullptr;  // the same in bfloat16 pairs
  // The forward x @ W.T with W's rows first (PackPanelFn and the rest, above).
  PackCodeRowsFn* pack_code_rows_bfloat16 = nullptr;
  PackPanelFn* pack_panel_bfloat16 = nullptr;
  StoreTransposedFn* store_transposed_bfloat16 = nullptr;
  // The panel GEMM in int8 products: AVX512-VNNI only (has_avx512_vnni), null elsewhere.
  PanelRowsInt8Fn* panel_rows_int8 = nullptr;
  PackRowsFn<int8_t>* pack_rows_int8 = nullptr;
  Int8PanelsFn* int8_panels = nullptr;
  Int8TransposedPanelsFn* int8_transposed_panels = nullptr;
  BlockedInt8PanelsFn* blocked_int8_panels = nullptr;
  Int8RowSumsFn* int8_row_sums = nullptr;
  WeightRowsInt8Fn* weight_rows_int8 = nullptr;
  TransposeSumsFn* transpose_sums = nullptr;
  // The group-wise forward in integer products (GroupedInt8PanelsFn and the rest).
  QuantizeRowsAsymmetricFn<float>* quantize_rows_asymmetric = nullptr;
  QuantizeRowsAsymmetricFn<at::BFloat16>* quantize_rows_asymmetric_bfloat16 = nullptr;
  GroupedInt8PanelsFn* grouped_int8_panels = nullptr;
  GroupedInt8PanelRowsFn* panel_rows_grouped_int8 = nullptr;
  // The panel GEMM on AMX tiles, in bfloat16 and int8 products, with lhs as PanelRowsAmxFn reads it
  // (PackRowsFn's blocks of kAmxBlockRows rows and S values, or rows in place): has_amx() only, null
  // elsewhere.
  ConfigureTilesFn* configure_tiles_amx = nullptr;
  PanelRowsAmxFn<at::BFloat16, at::BFloat16, float>* panel_rows_bfloat16_amx = nullptr;
  PackRowsFn<at::BFloat16>* pack_rows_bfloat16_amx = nullptr;
  PackRowsFn<float, at::BFloat16>* pack_float_rows_bfloat16_amx = nullptr;
  PanelRowsAmxFn<int8_t, uint8_t, int32_t>* panel_rows_int8_amx = nullptr;
  PackRowsFn<int8_t>* pack_rows_int8_amx = nullptr;
  ConvertRowTilesFn* convert_row_tiles_int8_bfloat16_amx = nullptr;
  ConvertInt4RowTilesFn* convert_row_tiles_int4_bfloat16_amx = nullptr;
  PanelRowsAmxFn<at::BFloat16, at::BFloat16, float>* weight_rows_bfloat16_amx = nullptr;
};

// The kernels of the instruction set in use, chosen at the first call.
const Kernels& kernels();

} // namespace qlgrad::math
