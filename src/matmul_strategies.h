#pragma once
// The ways a product lhs @ W with a stored weight runs (matmul.cpp chooses among them by row
// count), and the arithmetic of dividing it among threads that they share (panel_tasks.h; the
// streams' piece_start here).

#include "kernels/kernels.h"
#include "panel_tasks.h"
#include "weight_readers.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <functional>
#include <optional>

namespace qlgrad::math {

// The i-th of `parts` near-equal pieces of `extent` starts here, a multiple of `align` (but for the end).
inline int64_t piece_start(int64_t extent, int64_t parts, int64_t i, int64_t align = 1) {
  return i == parts ? extent : extent * i / parts / align * align;
}

// Streams: float32 lhs [rows, depth] @ W in one pass over the weight per kStreamedRowsMax rows,
// each thread over a range of the weight's rows, the ranges' sums added at the end in a fixed
// order. `stream` is a stream of kernels(); `weight` holds codes in rows, or, with `blocked`,
// int8 codes in that packing, copied into rows a slab at a time.
template <typename Code>
at::Tensor streamed(const at::Tensor& lhs, const at::Tensor& weight, const std::optional<BlockedLayout>& blocked,
                    const CodeParameters& parameters, StreamFn<Code>* stream);

// The direct stream over fbgemm's AVX-512 packing (reads_in_place), nothing copied:
// lhs [rows, N] @ (W - zero_point).
at::Tensor stream_blocked(const at::Tensor& lhs, const int8_t* packed, const BlockedLayout& layout,
                          const float* zero_point);

// The int4 stream for up to kInt4StreamedRowsMax rows of lhs.
at::Tensor stream_int4(const at::Tensor& lhs, const Int4Pack& pack);

// The panel GEMM (where kernels().panel_rows is): (lhs * scale) @ W in float32, with `scale` [N] or
// [1] or none, the weight converted into panels as it goes. With a bfloat16 lhs (where
// kernels().panel_rows_bfloat16 is), in bfloat16 products and float32 sums, each lhs[m, n] *
// scale[n] rounded to bfloat16 once. The result is float32 (an int8 lhs: panel_gemm_int8).
// `products` is lhs's dtype, or bfloat16 for a float32 lhs, packed as a bfloat16 one would be.
// With `bfloat16_result` (float32 sums), the result is rounded to bfloat16 once: as the AMX
// kernels store it, else in a pass of its own.
at::Tensor panel_gemm(const at::Tensor& lhs, const WeightReader& reader, const std::optional<at::Tensor>& scale,
                      std::optional<at::ScalarType> products = std::nullopt, bool bfloat16_result = false);

// float32 products of int8 codes on AMX tiles, which multiply bfloat16 values: (lhs * scale) @ W as
// the sum of three products, one per bfloat16 part of lhs * scale (SplitThreeBFloat16Fn), each
// exact in float32 (a part's 8 significant bits times a code less its zero point, an integer of at
// most 255), summed in float32 on the tiles; the parts are stacked as the rows of one lhs, so that
// one conversion of the weight serves all three. The float32 product's accuracy at about a third
// of the bfloat16 products' speed. lhs float32 [M, N], contiguous; `row_scale` [N] or [1] or none;
// the reader's values exact in bfloat16 (int8 codes less their zero points, no scale); where
// kernels().split_three_bfloat16 and the AMX kernels are.
at::Tensor three_part_product(const at::Tensor& lhs, const std::optional<at::Tensor>& row_scale,
                              const WeightReader& reader);

// Rows [row, row + rows) and columns [first, first + count) of panel_gemm_int8's int32 sums,
// `sums` pointing at the first, rows `stride` apart, as soon as they are complete: made into the
// caller's result while they are in cache.
using FinishSums =
    std::function<void(const int32_t* sums, int64_t stride, int64_t row, int64_t rows, int64_t first, int64_t count)>;

// The int8 panel GEMM of an int8 lhs (where kernels().panel_rows_int8 is): the int32 sums of int8
// products with W's uint8 panels (each value plus 128), short of 128 times each row's sum of lhs,
// go to `finish` a block at a time instead of into a result of their own, which a rescale would
// take another pass over.
void panel_gemm_int8(const at::Tensor& lhs, const WeightReader& reader, const FinishSums& finish);

// Whether `rows` rows packed for the panel kernels, which every thread of a product reads, go past
// the caches as they are packed (PackRowsFn's `streamed`): enough of them, with more than one
// thread, on Zen 4 CPUs (measured slower on a Zen 5, unmeasured on Intel's).
bool packed_rows_streamed(int64_t rows);

// x @ W.T in bfloat16 (x bfloat16 [rows, K], int8 codes W [N, K] in rows, contiguous, with
// `parameters` as Int8CodesTransposed's) with W's rows as the first operand: on AMX tiles where
// kernels().convert_row_tiles_int8_bfloat16_amx is, else with the AVX512-BF16 panel kernel (where
// kernels().pack_code_rows_bfloat16 is); float32 sums rounded once.
at::Tensor weight_row_tiles_gemm(const at::Tensor& lhs, const at::Tensor& codes, const CodeParameters& parameters);

// Whether int4_row_tiles_gemm reads this packing: torch's AVX-512 packing in whole blocks, where
// kernels().convert_row_tiles_int4_bfloat16_amx is.
bool int4_row_tiles_reads(const Int4Pack& pack);

// x @ W.T in bfloat16 (x bfloat16 [rows, K], contiguous) from torch's int4 packing as
// weight_row_tiles_gemm multiplies int8 codes, where int4_row_tiles_reads(pack).
at::Tensor int4_row_tiles_gemm(const at::Tensor& lhs, const Int4Pack& pack);

// Whether grouped_int8_linear takes groups of this size: where kernels().panel_rows_grouped_int8
// is, for groups of a multiple of 16 values.
bool grouped_int8_reads(int64_t group_size);

// torchao's group-wise forward with int8 activations (less the bias) in integer products: input
// float32 or bfloat16 [M, K] (contiguous) quantized per row as torchao quantizes it
// (QuantizeRowsAsymmetricFn), times int8 codes [N, K] in groups of K / G (grouped_int8_reads)
// less zero_point (int8 [N, G], or none), times scale (float32 or bfloat16 [N, G], contiguous);
// the result in input's dtype, the same sums as torchao's but for the roundings of the dequantized
// values and of the sums. Nothing where a row holds a NaN or an infinity or a code less its zero
// point lies outside int8: the caller takes another way.
std::optional<at::Tensor> grouped_int8_linear(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scale,
                                              const std::optional<at::Tensor>& zero_point);

// MKL's GEMM on tiles of the weight converted in each thread's L2, in lhs's dtype (float32 or
// bfloat16).
at::Tensor tiled_gemm(const at::Tensor& lhs, const WeightReader& reader);

} // namespace qlgrad::math
