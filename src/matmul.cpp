#include "matmul.h"

#include "matmul_strategies.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

namespace qlgrad::math {
namespace {

// Where MKL's GEMM runs its AVX-512 code (Intel CPUs), MKL on converted tiles is the faster from
// this many rows (on a Sapphire Rapids Xeon, 2 threads, at 256 rows of 3072x768, 768x3072 and
// 4096x4096: 0.97-1.20x MKL's float GEMM against the panel GEMM's 0.94-1.22x; at 384 rows of
// 3072x768 1.18x against 1.22x); elsewhere MKL takes its AVX2 path and the panel GEMM serves
// every row count.
constexpr int64_t kPanelGemmRowsEnd = 256;
// Where the AVX-512 streams are (eight weight rows into each sum at once), they stay the faster
// up to four groups of kStreamedRowsMax rows: on a Zen 4 EPYC, from 12 x 768 x 768 to
// 32 x 4096 x 4096, 0.73-1.05x oneDNN's fp32 GEMM against the panel GEMM's 1.02-1.26x. Against
// MKL's AVX-512 GEMM (Intel CPUs), up to two: on a Sapphire Rapids Xeon, 2 threads, at 17-32 rows
// of 768x768 and 24-32 of 4096x4096 the panel GEMM runs at 0.77-1.07x MKL's, the streams at
// 0.84-1.41x.
constexpr int64_t kVectorStreamedRowsEnd = 4 * kStreamedRowsMax;
constexpr int64_t kIntelVectorStreamedRowsEnd = 2 * kStreamedRowsMax;
// fbgemm's packing streams in passes of half as many rows, and so stops at 16 rows on every CPU:
// on a Zen 4 EPYC, 2 threads, per channel, over oneDNN's fp32 GEMM, at 24-32 rows of 768x768,
// 768x3072, 3072x768, 896x4864, 4864x896 and 2048x2048 the panel GEMM 0.77-0.98x against the
// streams' 0.99-1.31x; at 24 and 32 rows of 4096x4096 0.97x and 1.03x against 0.91x and 1.01x;
// 32 x 1024 -> 4096 1.11x against 1.07x.
constexpr int64_t kPackingStreamedRowsEnd = 2 * kStreamedRowsMax;
// On AMD's Zen 5 and later (kAmdZen5Family), whose panel GEMM multiplies twice as fast a cycle as
// a Zen 4's while the streams are bound by reading and converting the codes in every pass, float32
// products of codes in rows and of float16 values run the panel GEMM past fewer rows, the fewer
// the dearer a code's conversion. On a Zen 5 EPYC, 2 threads, the panel GEMM over the streams'
// time, alternated per call, eight weights in turn (896 -> 4864, 4864 -> 896, 768 -> 3072,
// 3072 -> 768, 768 -> 768, 1024 -> 2816): groups of 32 at 9 rows 0.74-1.15x, at 12-16 rows
// 0.64-0.98x, at 24-32 rows 0.51-0.69x; groups of 128 at 16 rows 0.85-1.20x, at 24 rows 0.74-0.95x;
// per channel at 24 rows 0.83-1.08x, at 32 rows 0.76-0.98x; float16 values at 9-16 rows 0.50-1.04x
// (4096 -> 4096 1.01-1.06x). fbgemm's packing keeps its 16 rows (at 9-16 rows 0.79-1.23x).
constexpr int64_t kGroupedStreamedRowsEnd = 2 * kStreamedRowsMax, kChannelStreamedRowsEnd = 3 * kStreamedRowsMax;
// Groups of up to this many codes (and float16 values) stream in one pass only.
constexpr int64_t kDearestGroupSize = 32;
// Where the bfloat16 panel GEMM runs on AMX tiles, or with AVX512-BF16 on CPUs other than Intel's,
// bfloat16 products past this many rows run it rather than float32's streams; so do int8 products
// on AMX tiles. On an Intel Xeon with AMX, 2 threads, bfloat16 gradients of int8 codes (groups of
// 32, or per channel) by 896x4864, 4864x896, 896x896, 896x128, 1024x2816, 2816x1024 and 4096x4096
// layers: at 9-15 rows the tiles took 0.40-0.85x the streams' time, at 8 rows 0.59-0.93x (one
// per-channel shape 1.01x), at 7 rows 0.80-1.09x per channel and 0.74-0.94x with groups of 32, at
// 4-6 rows the streams were faster per channel (0.70-0.94x the tiles' time). A float32 gradient of
// a per-channel weight at 8-15 rows of 768x3072, 3072x768, 768x768 and 4096x4096: `bf16`
// 0.49-0.91x and `int8` 0.39-0.85x the float32 streams' time. On a Zen 4 EPYC (AVX512-BF16), 2
// threads, bfloat16 gradients by 4096x4096 weights, the panel GEMM over the streams at 8 rows: per
// channel 0.86x, groups of 128 0.78x, groups of 32 0.65x, float16 values 1.16x (0.58-0.78x from 12
// rows; at 1024x1024 0.75-0.83x from 6 rows); at 5-7 rows 0.72-0.97x but for float16 values
// (1.18-1.27x).
constexpr int64_t kBFloat16StreamedRowsEnd = 7;
// With AVX512-BF16 and no AMX tiles, but on Intel's CPUs, codes in rows run it from 4 rows, its
// panels converted in blocks twice as wide (matmul_panels.cpp, BFloat16Products): on that EPYC, 2
// threads, bfloat16 gradients, alternated in one process, over the dense bfloat16 GEMM's time, the
// panel GEMM against the streams: 4096x4096 at 4-7 rows, groups of 32 0.57-0.71x against
// 0.70-0.88x, groups of 128 0.45-0.53x against 0.50-0.60x, per channel 0.36-0.49x against
// 0.39-0.50x; the layers 896 -> 4864, 4864 -> 896, 1024 -> 2816 and 2816 -> 1024 at 4 rows per
// channel 0.42-0.55x against 0.40-0.61x, in groups of 32 0.64-0.78x against 0.70-0.82x, at 5-7
// rows 0.43-0.89x against 0.52-1.19x (896 -> 896 0.83-0.92x against 0.95-1.47x); at 2-3 rows of
// 4096x4096 per channel the streams were faster (0.35-0.38x against 0.40-0.42x).
constexpr int64_t kAvx512BFloat16StreamedRowsEnd = 3;
// But fbgemm's packing, whose bfloat16 panels are converted from a copy of its rows, and float16
// values, whose conversion costs most, stream one pass more there: on that EPYC, float32 gradients
// per channel at 8 rows, the bfloat16 panel GEMM over the float32 streams' time 0.60-1.07x with the
// weight in cache (1.07x at 4096x4096), 1.26-1.29x with it evicted between calls (896x4864,
// 768x3072); at 9-32 rows 0.43-0.86x. bfloat16 gradients of float16 values at 8 rows, the panel
// GEMM in its wide blocks against the streams, alternated in one process: 4096x4096 2.42 against
// 1.97 ms, 768x3072, 3072x768, 896x4864, 4864x896 and 1024x2816 0.40-0.76 against 0.30-0.73 ms.
constexpr int64_t kBFloat16OnePassMoreStreamedRowsEnd = kStreamedRowsMax;
// On a Zen 5 (kAmdZen5Family), whose streams prefetch their next rows, bfloat16
// gradients past 5 rows of codes in rows, past 6 of fbgemm's packing and past 3 of float16 values:
// 2 threads, eight weights in turn (896 -> 4864, 4864 -> 896, 1024 -> 2816, 4096 -> 4096; 768 ->
// 3072 and 896 -> 896), alternated per call. Codes in rows, per channel and in groups of 32 and
// 128, the panel GEMM over the streams' time: at 4 rows 0.94-1.32x, at 5 rows 0.85-1.23x, at 6
// rows 0.80-1.05x, at 7-8 rows 0.69-1.04x. Over the dense bfloat16 GEMM's time, the panel GEMM
// against the streams: fbgemm's packing at 4 rows 0.42-0.76x against 0.39-0.62x, at 5-6 rows
// 0.41-0.72x against 0.48-0.78x, at 7-8 rows 0.41-0.71x against 0.53-0.95x; float16 values at 4-8
// rows 0.53-1.00x against 0.54-2.28x.
constexpr int64_t kZen5RowsBFloat16StreamedRowsEnd = 5, kZen5PackingBFloat16StreamedRowsEnd = 6;
// Where MKL's GEMM has AVX-512 code (Intel CPUs) and the CPU has no AMX tiles, MKL on bfloat16
// tiles from this many rows, as it was measured there before the bfloat16 panel GEMM packed its
// rows with vectors; elsewhere the bfloat16 panel GEMM serves every row count (on AMX tiles: on
// a Sapphire Rapids Xeon, 2 threads, at 256-2048 rows 1.2-1.9x the dense bfloat16 GEMM against
// MKL's tiles' 1.3-3.0x; at 33 rows 0.8-0.9x against 2.6x): on a Zen 4 EPYC, 2 threads, over the dense bfloat16
// GEMM, 1.03-1.07x at 256-1024 rows of 896x4864, 4864x896 and 896x896 against MKL's tiles'
// 1.06-1.50x. (torch's int4 packing has no bfloat16 tiles: its bfloat16 products are the panel
// GEMM's at every row count.)
constexpr int64_t kBFloat16PanelRowsEnd = 256;
// And where it runs with AVX512-VNNI (no AMX tiles), on CPUs other than Intel's (whose streams
// end at 16 rows, measured against MKL's AVX-512 GEMM), the int8 precision runs it past this many
// rows, where the float32 streams convert every code to multiply it: on a Zen 4 EPYC, 2 threads,
// float32 gradients of fbgemm's packing per channel (4096x4096, 768x3072, 3072x768, 768x768), the
// whole int8 backward over the float32 streams' time at 4-8 rows 0.32-0.72x, at 12-32 rows
// 0.23-0.44x; at 1-3 rows 0.59-0.97x with the weight in cache, but 1.06-1.41x with it evicted
// between calls, as in a model's backward (4096x4096, 896x4864, 768x3072; 0.78-0.99x at 4 rows).
constexpr int64_t kVnniStreamedRowsEnd = 3;
// Where the AMX tiles are, float32 products of int8 codes (per tensor or per channel) past one
// pass of the streams and at least kThreePartDepthMin deep run on them as three bfloat16 products
// (three_part_product). On an Intel Xeon with AMX, 2 threads, the input gradients of 768x3072,
// 3072x768, 768x768, 4096x4096, 896x4864 and 4864x896 layers: at 12-512 rows 0.38-0.84x the time
// of the streams, the float32 panel GEMM or MKL on tiles (at 256 rows 0.47-0.53x), at 8 rows
// 1.2-1.4x the stream's; with a depth of 128 (896x128) 1.1-1.6x from 24 rows, where adding up the
// three sums takes as long as the products.
constexpr int64_t kThreePartRowsMin = kStreamedRowsMax + 1, kThreePartDepthMin = 256;

// The rows up to which float32 products stream: fbgemm's packing (`blocked`) up to
// kPackingStreamedRowsEnd, codes in rows (in groups of `group_size`, 0 for one scale per row or for
// all) and float16 values as each CPU's measurements chose.
int64_t float32_streamed_rows_end(bool blocked, bool float16_values, int64_t group_size) {
  if (blocked) {
    return std::min(streamed_rows_end(), kPackingStreamedRowsEnd);
  }
  if (kernels().panel_rows == nullptr || amd_cpu_family() < kAmdZen5Family) {
    return streamed_rows_end();
  }
  if (float16_values || (group_size > 0 && group_size <= kDearestGroupSize)) {
    return kStreamedRowsMax;
  }
  return group_size > 0 ? kGroupedStreamedRowsEnd : kChannelStreamedRowsEnd;
}

// Whether bfloat16 products run the AVX512-BF16 panel kernel (no AMX tiles) on a CPU other than
// Intel's: there the bfloat16 panel GEMM takes over from the float32 streams at fewer rows.
bool avx512_bfloat16_panels_past_few_rows() {
  const auto& kernel = kernels();
  return kernel.panel_rows_bfloat16 != nullptr && kernel.panel_rows_bfloat16_amx == nullptr && !is_intel_cpu();
}

// Whether a bfloat16 forward of int8 codes in rows (torchao's group-wise layers) of `rows` rows of
// x takes the weight's rows as the first operand (weight_row_tiles_gemm), by the weight's rows
// (the layer's outputs). Its conversion reads the codes in order, but x is read again for every
// block of weight rows, and its panels are 32 rows of x wide.
// On AMX tiles below 256 rows for 2048 weight rows or more, below 65 from 256, never below 256. On
// a Sapphire Rapids Xeon, 2 threads, rotating weights, groups of 32 (rows x in -> out), over the
// panels of W.T (Int8CodesTransposed): 16 x 4096 -> 4096 1.62-1.71 ms against 1.82-1.90, 64 x
// 4096 -> 4096 2.12 against 2.48, 192 x 4096 -> 4096 3.99-4.01 against 4.19-4.28, 192 x 896 -> 4864
// 1.00 against 1.03, 256 x 896 -> 4864 1.23-1.26 against 1.26-1.27 (equal), 256 x 4096 -> 4096
// 5.41 against 5.09; narrower layers: 16 x 4864 -> 896 0.34-0.35 against 0.39-0.41, 64 x 896 ->
// 896 0.104 against 0.110, 128 x 896 -> 896 0.157 against 0.146, 192 x 4864 -> 896 1.13 against
// 1.04; 16 x 896 -> 128 0.026 against 0.022.
// With the AVX512-BF16 panel kernel below 768 rows for 512 weight rows or more, from 128 rows, and
// from 16 for weights of 2^24 codes or more (4096 x 4096 and larger), whose codes come from memory:
// with fewer rows x's panels are mostly padding. On an AMD EPYC, 2 threads, the same weights in
// turn, over the panels of W.T (the same bits): 16-96 x 4096 -> 4096, 4096 -> 11008, 11008 -> 4096
// and 2048 -> 8192 0.84-0.97x, at 8 rows 1.12x; 128-512 x 4096 -> 4096 0.93-0.94x, 1024 rows
// 1.00x; 8M codes (2048 -> 4096, 4096 -> 2048, 2816 -> 2816, 1536 -> 4096) at 16 rows 1.05-1.15x,
// 32 rows 0.94-1.04x, 64-112 rows 0.96-1.00x; the decoder's 1024 -> 2816, 2816 -> 1024, 896 ->
// 4864 and 4864 -> 896 at 16-48 rows 1.02-1.36x, 64-96 rows 0.93-1.04x, 128-256 rows 0.90-1.01x,
// 512-768 rows 0.96-1.03x; 1024 -> 256 and 896 -> 128 at 128-256 rows 0.81-1.02x, at 768 rows
// 1.04-1.15x.
bool weight_rows_first(int64_t rows, int64_t weight_rows, int64_t depth) {
  if (kernels().convert_row_tiles_int8_bfloat16_amx != nullptr) {
    return rows < (weight_rows >= 2048 ? 256 : weight_rows >= 256 ? 65 : 0);
  }
  const int64_t rows_min = weight_rows * depth >= (int64_t{1} << 24) ? 16 : 128;
  return kernels().pack_code_rows_bfloat16 != nullptr && weight_rows >= 512 && rows >= rows_min && rows < 768;
}

void check_codes_arguments(const at::Tensor& lhs, const at::Tensor& weight, const std::optional<at::Tensor>& zero_point,
                           const std::optional<at::Tensor>& scale, const std::optional<BlockedLayout>& blocked) {
  const int64_t rows = blocked ? blocked->rows : weight.size(0), columns = blocked ? blocked->columns : weight.size(1);
  TORCH_INTERNAL_ASSERT(lhs.dim() == 2 && lhs.is_contiguous() && lhs.size(1) == rows);
  TORCH_INTERNAL_ASSERT(blocked ? weight.scalar_type() == at::kChar && weight.is_contiguous() &&
                                      weight.numel() == blocked->size()
                                : weight.dim() == 2 && (weight.stride(1) == 1 || weight.size(1) == 1));
  TORCH_INTERNAL_ASSERT(lhs.scalar_type() == at::kFloat || lhs.scalar_type() == at::kBFloat16);
  for (const auto& parameter : {zero_point, scale}) {
    TORCH_INTERNAL_ASSERT(!parameter || (parameter->scalar_type() == at::kFloat && parameter->is_contiguous()));
  }
  if (scale && scale->dim() == 2) {
    TORCH_INTERNAL_ASSERT(weight.scalar_type() == at::kChar && scale->size(0) == rows && columns % scale->size(1) == 0);
    TORCH_INTERNAL_ASSERT(!zero_point || zero_point->sizes() == scale->sizes());
  } else {
    TORCH_INTERNAL_ASSERT(!zero_point || zero_point->numel() == rows);
    TORCH_INTERNAL_ASSERT(!scale || scale->numel() == 1 || scale->numel() == rows);
  }
}

Int4Pack int4_pack(const at::Tensor& packed, int64_t group_size, const at::Tensor& scale_and_zeros) {
  TORCH_INTERNAL_ASSERT(packed.is_contiguous() && packed.scalar_type() == at::kByte);
  TORCH_INTERNAL_ASSERT(scale_and_zeros.scalar_type() == at::kFloat && scale_and_zeros.is_contiguous());
  const int64_t rows = scale_and_zeros.size(1), columns = scale_and_zeros.size(0) * group_size;
  TORCH_INTERNAL_ASSERT(rows % 16 == 0 && group_size % 32 == 0 && packed.numel() == rows * columns / 2);
  const auto packing = kernels().int4_packing;
  TORCH_CHECK(packing.block > 0, "qlgrad: reading torch's int4 packing is implemented for x86-64 CPUs only");
  return {packed.const_data_ptr<uint8_t>(),        rows,      columns, packing.block, packing.halves,
          scale_and_zeros.const_data_ptr<float>(), group_size};
}

// lhs @ W in lhs's dtype: in bfloat16 products for a bfloat16 lhs where the CPU has them, else in
// float32 ones (MKL on float32 tiles where there is no panel GEMM).
at::Tensor panel_product(const at::Tensor& lhs, const WeightReader& reader) {
  const auto& kernel = kernels();
  if (lhs.scalar_type() == at::kBFloat16 && kernel.panel_rows_bfloat16 != nullptr) {
    return panel_gemm(lhs, reader, std::nullopt, std::nullopt, /*bfloat16_result=*/true);
  }
  const auto lhs_float = lhs.to(at::kFloat);
  const auto result =
      kernel.panel_rows != nullptr ? panel_gemm(lhs_float, reader, std::nullopt) : tiled_gemm(lhs_float, reader);
  return result.to(lhs.scalar_type());
}

} // namespace

at::Tensor codes_matmul(const at::Tensor& lhs, const at::Tensor& weight, const std::optional<at::Tensor>& zero_point,
                        const std::optional<at::Tensor>& scale, const std::optional<BlockedLayout>& blocked,
                        bool bfloat16_products) {
  check_codes_arguments(lhs, weight, zero_point, scale, blocked);
  const int64_t columns = blocked ? blocked->columns : weight.size(1);
  if (lhs.numel() == 0 || columns == 0) {
    return at::zeros({lhs.size(0), columns}, lhs.options());
  }
  const bool groupwise = scale && scale->dim() == 2;
  CodeParameters parameters;
  parameters.zero_point = zero_point ? zero_point->const_data_ptr<float>() : nullptr;
  parameters.groups = groupwise ? scale->size(1) : 1;
  parameters.group_size = columns / parameters.groups;
  // Per tensor and per channel, lhs carries the scale; group-wise scales are applied as the
  // codes are read.
  parameters.scale = groupwise ? scale->const_data_ptr<float>() : nullptr;
  const auto row_scale = groupwise ? std::nullopt : scale;
  const auto& kernel = kernels();
  const bool is_int8 = weight.scalar_type() == at::kChar;
  const int64_t rows = lhs.size(0);
  const auto products = bfloat16_products ? at::kBFloat16 : lhs.scalar_type();
  if (products == at::kFloat && is_int8 && !groupwise && kernel.split_three_bfloat16 != nullptr &&
      kernel.panel_rows_bfloat16_amx != nullptr && rows >= kThreePartRowsMin && lhs.size(1) >= kThreePartDepthMin) {
    return blocked
               ? three_part_product(lhs, row_scale, BlockedCodes(weight.const_data_ptr<int8_t>(), *blocked, parameters))
               : three_part_product(lhs, row_scale, RowCodes(weight, parameters));
  }
  const bool panels = products == at::kFloat
                          ? kernel.panel_rows != nullptr && (rows < kPanelGemmRowsEnd || !is_intel_cpu())
                          : kernel.panel_rows_bfloat16 != nullptr &&
                                (rows < kBFloat16PanelRowsEnd || !is_intel_cpu() || kernel.panel_rows_bfloat16_amx);
  const int64_t streams_end =
      float32_streamed_rows_end(blocked.has_value(), !is_int8, groupwise ? parameters.group_size : 0);
  if (panels && rows > (bfloat16_products ? bfloat16_streamed_rows_end(blocked.has_value(), !is_int8) : streams_end)) {
    // The scale is applied as lhs is packed, which is a pass over lhs anyway.
    const bool bfloat16_result = lhs.scalar_type() == at::kBFloat16;
    const auto result = blocked ? panel_gemm(lhs, BlockedCodes(weight.const_data_ptr<int8_t>(), *blocked, parameters),
                                             row_scale, products, bfloat16_result)
                                : panel_gemm(lhs, RowCodes(weight, parameters), row_scale, products, bfloat16_result);
    return result.to(lhs.scalar_type());
  }
  if (rows <= streams_end) {
    // The streams read the weight once, which a few rows are bound by, in float32 for any lhs.
    const auto lhs_float = lhs.to(at::kFloat);
    const auto scaled = row_scale ? at::mul(lhs_float, *row_scale) : lhs_float;
    at::Tensor result;
    if (!is_int8) {
      result = streamed<at::Half>(scaled, weight, std::nullopt, parameters, kernel.stream_float16);
    } else if (blocked && kernel.stream_blocked != nullptr && reads_in_place(*blocked)) {
      result = stream_blocked(scaled, weight.const_data_ptr<int8_t>(), *blocked, parameters.zero_point);
    } else {
      // One group per row, or groups of whole vectors (the streamed chunks start at multiples of
      // 16 columns too).
      const bool vector_groups = !groupwise || parameters.group_size % 16 == 0;
      result = streamed<int8_t>(scaled, weight, blocked, parameters,
                                vector_groups ? kernel.stream_int8_vector_groups : kernel.stream_int8);
    }
    return result.to(lhs.scalar_type());
  }
  // float32 tiles take the scale as their codes are converted, at no cost, where scaling lhs
  // took a pass of its own (3-4% of the product at 256-2048 rows of 3072 x 768, on a Sapphire
  // Rapids Xeon); bfloat16 tiles take it from lhs, each product of lhs and scale rounded once.
  at::Tensor scaled = lhs, weight_scale;
  if (row_scale && products == at::kFloat) {
    weight_scale = row_scale->expand({lhs.size(1)}).contiguous();
    parameters.scale = weight_scale.const_data_ptr<float>();
  } else if (row_scale) {
    scaled = at::mul(lhs, *row_scale);
  }
  scaled = scaled.to(products);
  const auto result = blocked ? tiled_gemm(scaled, BlockedCodes(weight.const_data_ptr<int8_t>(), *blocked, parameters))
                              : tiled_gemm(scaled, RowCodes(weight, parameters));
  return result.to(lhs.scalar_type());
}

int64_t streamed_rows_end() {
  if (kernels().panel_rows == nullptr) {
    return kStreamedRowsMax;
  }
  return is_intel_cpu() ? kIntelVectorStreamedRowsEnd : kVectorStreamedRowsEnd;
}

int64_t bfloat16_streamed_rows_end(bool fbgemm_packing, bool float16_values) {
  const auto& kernel = kernels();
  if (kernel.panel_rows_bfloat16_amx != nullptr) {
    return kBFloat16StreamedRowsEnd;
  }
  if (avx512_bfloat16_panels_past_few_rows()) {
    if (amd_cpu_family() >= kAmdZen5Family) {
      return fbgemm_packing   ? kZen5PackingBFloat16StreamedRowsEnd
             : float16_values ? kAvx512BFloat16StreamedRowsEnd
                              : kZen5RowsBFloat16StreamedRowsEnd;
    }
    return fbgemm_packing || float16_values ? kBFloat16OnePassMoreStreamedRowsEnd : kAvx512BFloat16StreamedRowsEnd;
  }
  return streamed_rows_end();
}

int64_t int8_streamed_rows_end() {
  const auto& kernel = kernels();
  if (kernel.panel_rows_int8_amx != nullptr) {
    return kBFloat16StreamedRowsEnd;
  }
  return kernel.panel_rows_int8 != nullptr && !is_intel_cpu() ? kVnniStreamedRowsEnd : streamed_rows_end();
}

at::Tensor int4pack_dequantize(const at::Tensor& packed, int64_t group_size, const at::Tensor& scale_and_zeros) {
  const auto pack = int4_pack(packed, group_size, scale_and_zeros);
  auto weight = at::empty({pack.rows, pack.columns}, scale_and_zeros.options());
  Int4Codes(pack).tile(0, 0, pack.columns, weight);
  return weight;
}

// Where the bfloat16 panel GEMM runs with AVX512-BF16 (no AMX tiles), on CPUs other than Intel's,
// a bfloat16 lhs streams one row only: past it the panels, converted from the packing by table
// lookups, are faster than the float32 stream. On a Zen 4 EPYC, 2 threads, bfloat16 gradients of
// groups of 128, alternated in one process, over the dense bfloat16 GEMM: 4096 x 4096 at 2, 3 and 4
// rows 0.54x, 0.72x, 0.73x streamed, 0.50x, 0.53x, 0.50x in the panel GEMM (at one row 0.40x
// streamed against 0.48x); the layers 896 -> 4864, 4864 -> 896, 1024 -> 2816 and 896 -> 896 at 2
// rows 0.55-0.75x against 0.42-0.66x, at 4 rows 0.78-1.10x against 0.53-0.62x.
constexpr int64_t kInt4BFloat16StreamedRowsMax = 1;

int64_t int4_streamed_rows_max(at::ScalarType dtype) {
  return dtype == at::kBFloat16 && avx512_bfloat16_panels_past_few_rows() ? kInt4BFloat16StreamedRowsMax
                                                                          : kInt4StreamedRowsMax;
}

at::Tensor int4pack_matmul(const at::Tensor& lhs, const at::Tensor& packed, int64_t group_size,
                           const at::Tensor& scale_and_zeros) {
  TORCH_INTERNAL_ASSERT(lhs.dim() == 2 && lhs.is_contiguous());
  TORCH_INTERNAL_ASSERT(lhs.scalar_type() == at::kFloat || lhs.scalar_type() == at::kBFloat16);
  const auto pack = int4_pack(packed, group_size, scale_and_zeros);
  TORCH_INTERNAL_ASSERT(lhs.size(1) == pack.rows);
  if (lhs.size(0) == 0) {
    return at::zeros({0, pack.columns}, lhs.options());
  }
  if (kernels().int4_stream != nullptr && lhs.size(0) <= int4_streamed_rows_max(lhs.scalar_type())) {
    return stream_int4(lhs.to(at::kFloat), pack).to(lhs.scalar_type());
  }
  return panel_product(lhs, Int4Codes(pack));
}

// From this many rows the product from the packing in bfloat16 products is faster than torch's
// int4 kernel with bfloat16 inputs.
constexpr int64_t kInt4BFloat16RowsMin = 16;
// And its float32 product of the bfloat16 values, where at least this many rows meet at least
// this many columns (on a Sapphire Rapids Xeon, 2 threads, against torch's kernel: 0.60-0.90x
// its time at 32-256 rows of 896 -> 896, 896 -> 4864, 4864 -> 896 and 4096 -> 4096; at 16 rows
// 0.90-1.27x, and 1.0-1.9x up to 256 rows of 896 -> 128, where the conversions of the input and
// the output are a larger share).
constexpr int64_t kInt4TorchsBFloat16RowsMin = 32, kInt4TorchsBFloat16ColumnsMin = 256;

bool int4pack_linear_is_faster(int64_t rows, at::ScalarType dtype) {
  return kernels().int4_packing.block > 0 && rows >= (dtype == at::kBFloat16 ? kInt4BFloat16RowsMin : 1);
}

bool int4pack_linear_is_torchs(int64_t rows, int64_t columns, at::ScalarType dtype) {
  const auto& kernel = kernels();
  const bool faster = dtype == at::kFloat || (dtype == at::kBFloat16 && rows >= kInt4TorchsBFloat16RowsMin &&
                                              columns >= kInt4TorchsBFloat16ColumnsMin);
  return faster && kernel.panel_rows != nullptr && kernel.int4_packing.block > 0;
}

// Where the AMX tiles are, a bfloat16 forward from torch's int4 packing takes the weight's rows as
// the tiles' first operand (int4_row_tiles_gemm) below this many rows of x, for weights of at least
// this many rows (the layer's outputs). On an Intel Xeon with AMX, 2 threads, torchao's int4 layers
// (groups of 128; rows x in -> out), alternated twice, against the weight's panels: 16 x 4096 ->
// 4096 1.44-1.54 -> 1.24-1.31 ms, 64 rows 2.20-2.30 -> 1.87-1.91, 128 rows 3.32-3.42 -> 2.95, 192
// rows 4.21-4.27 -> 4.27-5.76 (x is read again for each block of weight rows); 16 x 896 -> 4864
// 0.37-0.39 -> 0.32-0.33, 128 rows 0.80 -> 0.77-0.78; 16 x 1024 -> 2048 0.20-0.23 -> 0.17-0.18, 128
// rows 0.49-0.59 -> 0.42; narrower weights slower at 16-64 rows: 4864 -> 896 0.36-0.59 -> 0.39-0.66,
// 896 -> 896 0.10-0.14 -> 0.11-0.15, 896 -> 128 0.045 -> 0.060.
constexpr int64_t kInt4RowTilesRowsEnd = 129, kInt4RowTilesWeightRowsMin = 2048;

at::Tensor int4pack_linear(const at::Tensor& input, const at::Tensor& packed, int64_t group_size,
                           const at::Tensor& scale_and_zeros) {
  TORCH_INTERNAL_ASSERT(input.dim() == 2 && input.is_contiguous());
  TORCH_INTERNAL_ASSERT(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16);
  const auto pack = int4_pack(packed, group_size, scale_and_zeros);
  TORCH_INTERNAL_ASSERT(input.size(1) == pack.columns);
  if (input.size(0) == 0) {
    return at::zeros({0, pack.rows}, input.options());
  }
  if (input.scalar_type() == at::kBFloat16 && int4_row_tiles_reads(pack) && pack.rows >= kInt4RowTilesWeightRowsMin &&
      input.size(0) < kInt4RowTilesRowsEnd) {
    return int4_row_tiles_gemm(input, pack);
  }
  return panel_product(input, Int4CodesTransposed(pack));
}

at::Tensor int8_groupwise_linear(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scale,
                                 const std::optional<at::Tensor>& zero_point) {
  TORCH_INTERNAL_ASSERT(input.dim() == 2 && input.is_contiguous() && input.size(1) == codes.size(1));
  TORCH_INTERNAL_ASSERT(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16);
  TORCH_INTERNAL_ASSERT(codes.dim() == 2 && codes.is_contiguous() && codes.scalar_type() == at::kChar);
  const int64_t groups = scale.size(1), group_size = codes.size(1) / groups;
  TORCH_INTERNAL_ASSERT((!zero_point || scale.sizes() == zero_point->sizes()) && scale.size(0) == codes.size(0));
  TORCH_INTERNAL_ASSERT(groups == 1 || group_size % 16 == 0);
  const auto& kernel = kernels();
  if (kernel.panel_rows == nullptr || input.size(0) == 0) {
    auto values = codes.view({codes.size(0), groups, group_size}).to(at::kFloat);
    if (zero_point) {
      values = values - zero_point->unsqueeze(2);
    }
    values = values * scale.unsqueeze(2);
    return at::mm(input, values.view_as(codes).to(input.scalar_type()).t());
  }
  CodeParameters parameters;
  parameters.scale = scale.const_data_ptr<float>();
  parameters.zero_point = zero_point ? zero_point->const_data_ptr<float>() : nullptr;
  parameters.groups = groups;
  parameters.group_size = group_size;
  if (input.scalar_type() == at::kBFloat16 && weight_rows_first(input.size(0), codes.size(0), codes.size(1))) {
    return weight_row_tiles_gemm(input, codes, parameters);
  }
  return panel_product(input, Int8CodesTransposed(codes, parameters));
}

at::Tensor int8_groupwise_dequantize(const at::Tensor& codes, const at::Tensor& scale,
                                     const std::optional<at::Tensor>& zero_point, at::ScalarType dtype) {
  TORCH_INTERNAL_ASSERT(codes.dim() == 2 && codes.is_contiguous() && codes.scalar_type() == at::kChar);
  TORCH_INTERNAL_ASSERT(scale.dim() == 2 && scale.size(0) == codes.size(0) && codes.size(1) % scale.size(1) == 0);
  TORCH_INTERNAL_ASSERT(!zero_point || zero_point->sizes() == scale.sizes());
  TORCH_INTERNAL_ASSERT(dtype == at::kFloat || dtype == at::kBFloat16);
  const int64_t rows = codes.size(0), columns = codes.size(1);
  auto values = at::empty({rows, columns}, codes.options().dtype(dtype));
  if (values.numel() == 0) {
    return values;
  }
  CodeParameters parameters;
  parameters.scale = scale.const_data_ptr<float>();
  parameters.zero_point = zero_point ? zero_point->const_data_ptr<float>() : nullptr;
  parameters.groups = scale.size(1);
  parameters.group_size = columns / scale.size(1);
  const int8_t* code_data = codes.const_data_ptr<int8_t>();
  const auto& kernel = kernels();
  at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t{1} << 15) / columns), [&](int64_t begin, int64_t end) {
    const int8_t* first = code_data + begin * columns;
    if (dtype == at::kFloat) {
      kernel.convert_codes_float(first, columns, parameters, begin, 0, end - begin, columns,
                                 values.mutable_data_ptr<float>() + begin * columns);
    } else {
      kernel.convert_codes_bfloat16(first, columns, parameters, begin, 0, end - begin, columns,
                                    values.mutable_data_ptr<at::BFloat16>() + begin * columns);
    }
  });
  return values;
}

bool all_zero(const at::Tensor& zero_point) {
  if (!zero_point.is_contiguous()) {
    return false;
  }
  // In chunks, so that the first with a nonzero byte ends the scan; each chunk in one
  // vectorized pass.
  constexpr size_t kChunkBytes = 4096;
  const auto* bytes = static_cast<const uint8_t*>(zero_point.const_data_ptr());
  const size_t size = zero_point.nbytes();
  for (size_t begin = 0; begin < size; begin += kChunkBytes) {
    uint8_t any = 0;
    for (size_t i = begin; i < std::min(size, begin + kChunkBytes); ++i) {
      any |= bytes[i];
    }
    if (any != 0) {
      return false;
    }
  }
  return true;
}

} // namespace qlgrad::math
