#pragma once
// Products with a stored weight, lhs @ W, with the weight kept in its stored form (int8 codes,
// float16 for fp16-packed layers, torch's int4 packing): the product runs on blocks of the weight
// converted on the fly, so no float copy of the whole weight ever exists. Which way it runs, by
// row count (matmul_strategies.h has the ways):
//   - products of up to streamed_rows_end() rows stream over the codes once, in float32 whatever
//     lhs's dtype, reading fbgemm's AVX-512 packing in place;
//   - where the AVX-512 panel GEMM is, it runs the others (but from 256 rows on Intel's CPUs,
//     where MKL's GEMM on tiles converted in each thread's L2 is the faster), in bfloat16
//     products for a bfloat16 lhs where the CPU has AVX512-BF16 (on AMX tiles where it has them;
//     on Intel's CPUs without, up to 255 rows);
//   - the rest, and all products on other CPUs, run MKL's GEMM on tiles;
//   - but on AMX tiles, float32 products of int8 codes per tensor or per channel past one pass of
//     the streams (and at least 256 deep) run there as three bfloat16 products, one per bfloat16
//     part of lhs, each exact: float32's accuracy.

#include "blocked_layout.h"
#include "kernels/kernels.h"

#include <ATen/core/Tensor.h>

#include <optional>

namespace qlgrad::math {

// Rows up to which products stream: kStreamedRowsMax, or four passes of it (32) where the AVX-512
// streams are (two, 16, on Intel's CPUs, where MKL's AVX-512 GEMM sets the pace; and for fbgemm's
// packing, streamed in passes of half as many rows, on every CPU).
int64_t streamed_rows_end();

// The same for bfloat16 products (the bf16 precision) of codes in rows, of fbgemm's packing or of
// float16 values: fewer where the bfloat16 panel GEMM runs on AMX tiles or, but on Intel's CPUs,
// with AVX512-BF16 (3 rows of codes in rows there, one pass for fbgemm's packing and float16
// values).
int64_t bfloat16_streamed_rows_end(bool fbgemm_packing, bool float16_values);

// The same for int8 products of int8 codes per tensor or per channel (the int8 precision): fewer
// on AMX tiles and where the int8 panel GEMM runs with AVX512-VNNI on CPUs other than Intel's.
int64_t int8_streamed_rows_end();

// result [M, K] = (lhs[m, n] * scale[n]) @ (weight[n, k] - zero_point[n]), accumulated in
// float32 and returned in lhs's dtype; or, with group-wise parameters,
// lhs @ (scale[n, g] * (weight[n, k] - zero_point[n, g])) with g = k / (K / G).
//   lhs         float32 or bfloat16 [M, N], contiguous: the GEMM runs in its dtype, or in
//               bfloat16 products for a float32 lhs too with `bfloat16_products` (past the
//               streams, which take float32), its values (times the scale) rounded once
//   weight      int8 or float16 [N, K] with unit stride along K (or K = 1); or, with `blocked`,
//               int8 codes in that layout (contiguous, blocked->size() bytes), read in place
//   zero_point  float32 [N] or [N, G] (like scale), contiguous (integers of the int8 range);
//               absent for zero
//   scale       float32 [N] or [1], contiguous; or [N, G] for an int8 weight. Absent for
//               one. Each product lhs[m, n] * scale[n] is rounded to float32 once, as at::mul
//               rounds, and for a bfloat16 lhs then to bfloat16; a group-wise scale multiplies
//               the code minus its zero point once, in float32 (then rounded to bfloat16
//               for a bfloat16 lhs), or lhs's factor in the streaming kernel.
// int8 codes minus a zero point are integers of magnitude at most 255, which float32 and
// bfloat16 both hold exactly: without group-wise scales converting a tile rounds nothing, and
// in float32 the result differs from a product with a float32 weight only in the order of
// the sums.
at::Tensor codes_matmul(const at::Tensor& lhs, const at::Tensor& weight, const std::optional<at::Tensor>& zero_point,
                        const std::optional<at::Tensor>& scale = std::nullopt,
                        const std::optional<BlockedLayout>& blocked = std::nullopt, bool bfloat16_products = false);

// result [M, K] = lhs @ W for an int4 weight [N, K] as torch packs it for the CPU
// (aten::_convert_weight_to_int4pack_for_cpu under the running CPU capability), read in place:
// W[n, k] = (code[n, k] - 8) * scale[k / group_size, n] + zero[k / group_size, n] in float32,
// as the op dequantizes it (fused on AVX-512, as the op's AVX kernels compute it).
//   lhs              float32 or bfloat16 [M, N], contiguous, N a multiple of 16; with a bfloat16
//                    lhs, bfloat16 products (the values rounded to bfloat16) where the CPU has
//                    AVX512-BF16 and M is past the int4 stream's rows (kInt4StreamedRowsMax, one
//                    where AVX512-BF16 runs without AMX tiles but on Intel's CPUs), else float32
//                    ones. The result is in lhs's dtype.
//   packed           uint8, contiguous, N * K / 2 bytes
//   group_size       a multiple of 32
//   scale_and_zeros  float32 [K / group_size, N, 2], contiguous
at::Tensor int4pack_matmul(const at::Tensor& lhs, const at::Tensor& packed, int64_t group_size,
                           const at::Tensor& scale_and_zeros);

// result [M, N] = input @ W.T, the forward of aten::_weight_int4pack_mm_for_cpu, from the same
// packing read in place (the panels of W.T need no transpose: see Int4CodesTransposed).
//   input  float32 or bfloat16 [M, K], contiguous; bfloat16 products (input and weight rounded
//          to bfloat16, as a bfloat16 nn.Linear has them) where the CPU has AVX512-BF16, else
//          float32 ones, with float32 sums. The result is in input's dtype.
// The packing's arguments as int4pack_matmul takes them.
at::Tensor int4pack_linear(const at::Tensor& input, const at::Tensor& packed, int64_t group_size,
                           const at::Tensor& scale_and_zeros);

// Whether int4pack_linear is the faster than torch's own int4 kernel at this many rows of an
// input of this dtype (it runs everywhere int4pack_matmul does).
bool int4pack_linear_is_faster(int64_t rows, at::ScalarType dtype);

// Whether torch's own int4 kernel's result for `rows` rows of this dtype and `columns` output
// columns is, bit for bit, int4pack_linear's of the float32 values, in float32 and, for bfloat16
// inputs, rounded as torch's kernel rounds (to nearest even, a NaN as 0xFFFF): where the float32
// panel GEMM runs (AVX-512), whose every sum is, as torch's, one chain of fused multiply-adds
// along the whole depth in order, of the same weight values, fma(code - 8, scale, zero) (torch's
// kernel takes bfloat16 inputs and parameters as float32 values too), and for bfloat16 inputs
// where that is the faster. Torch's kernel multiplies float32 inputs in scalar code (on a
// Sapphire Rapids Xeon, 2 threads, 256 x 896 -> 896 in 180 ms; the panel GEMM in 1.6 ms), so
// where this holds qlgrad's product serves inputs that do not require grad too.
bool int4pack_linear_is_torchs(int64_t rows, int64_t columns, at::ScalarType dtype);

// The row stride of an int8 lhs of `depth` columns for int8_codes_matmul: where the int8 panel GEMM
// reads its rows where they lie (AMX tiles; AVX512-VNNI on AMD's CPUs), rows a multiple of 1 KiB
// apart would share a few of L1's sets, and are spaced a cache line further; elsewhere `depth`
// (torch._int_mm takes contiguous rows).
int64_t int8_rows_stride(int64_t depth);

// result [M, K] float32 = (lhs @ codes - row_offset[:, None]) * row_scale[:, None] for int8 lhs
// [M, N] (rows contiguous, lhs.stride(0) apart) and int8 codes [N, K] in rows (unit stride along
// K) or, with `blocked`, in that packing, read in place; row_offset int32 [M] (absent for none)
// and row_scale float32 [M], contiguous. The sums are exactly torch._int_mm(lhs, codes)'s, each
// converted and multiplied by its row's scale once. In the int8 panel GEMM (on AMX tiles where the
// CPU has them), which rescales each block of sums while it is in cache. Absent where that is not
// the faster (the CPU has no AVX512-VNNI, or lhs has many rows and the CPU no AMX): the caller
// multiplies codes in rows with torch._int_mm.
std::optional<at::Tensor> int8_codes_matmul(const at::Tensor& lhs, const at::Tensor& codes,
                                            const std::optional<BlockedLayout>& blocked,
                                            const std::optional<at::Tensor>& row_offset, const at::Tensor& row_scale);

// int8_linear(input, codes) rescaled as torch computes
// (((sums.to(row_scale.dtype) * row_scale[:, None]).to(dtype) * column_scale) + bias).to(dtype)
// one operation at a time, where `+` adds in place (into the column product's dtype): row_scale
// [M], column_scale [N] and bias [N] (absent for none) float32 or bfloat16, dtype float32 or bfloat16.
at::Tensor int8_linear_rescaled(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& row_scale,
                                const at::Tensor& column_scale, const std::optional<at::Tensor>& bias,
                                at::ScalarType dtype);

// result [M, N] int32 = input @ codes.T for int8 input [M, K] and int8 codes [N, K] (both
// contiguous): torch._int_mm(input, codes.t()), exactly. In the int8 panel GEMM where the CPU
// has AVX512-VNNI (the codes read in place, each panel converted as it goes; on AMX tiles where
// it has them), else torch._int_mm.
at::Tensor int8_linear(const at::Tensor& input, const at::Tensor& codes);

// result [M, N] = input @ W.T with W[n, k] = scale[n, g] * (codes[n, k] - zero_point[n, g]),
// g = k / (K / G), from int8 codes [N, K] in rows, read in place: the forward of torchao's
// group-wise int8 layers. input float32 or bfloat16 [M, K], contiguous: bfloat16 products (each
// value rounded to bfloat16, as a bfloat16 nn.Linear holds it) where the CPU has AVX512-BF16,
// float32 ones elsewhere on AVX-512, and elsewhere the product with the dequantized weight.
// scale and zero_point float32 [N, G], contiguous (zero_point absent for zero); K / G a multiple
// of 16 or G = 1. The result is in input's dtype.
at::Tensor int8_groupwise_linear(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scale,
                                 const std::optional<at::Tensor>& zero_point);

// The forward of torchao's group-wise int8 layers with int8 activations, less the bias: input
// float32 or bfloat16 [M, K] (contiguous) quantized and dequantized per row as torchao does
// (int8_quant_dequant_rows_asymmetric) @ W.T, W as int8_groupwise_linear's (scale and
// zero_point [N, G] of any dtype). In integer products where the CPU has AVX512-VNNI and the
// values codes - zero_point are int8 (grouped_int8_linear: exact sums of the integer products,
// each run of a group's scaled once, the activation's scale last), else by
// int8_groupwise_linear. The result is in input's dtype.
at::Tensor int8_dynamic_groupwise_linear(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scale,
                                         const at::Tensor& zero_point);

// W[n, k] = (codes[n, k] - zero_point[n, g]) * scale[n, g], g = k / (K / G), each value computed
// in float32 and rounded once to `dtype` (float32 or bfloat16), in one pass: torchao's
// dequantization of its group-wise int8 weights bit for bit where the zero points are integers
// and the scales finite (torchao subtracts in the weight's dtype, exact for such zero points, and
// multiplies there or in float32). codes int8 [N, K] and scale, zero_point float32 [N, G]
// (zero_point absent for zero), contiguous.
at::Tensor int8_groupwise_dequantize(const at::Tensor& codes, const at::Tensor& scale,
                                     const std::optional<at::Tensor>& zero_point, at::ScalarType dtype);

// Whether every zero point is 0, as a symmetric quantization stores them: the kernels then take
// none and convert the codes with their scales alone (bfloat16 input gradients of 256 rows in
// groups of 32 on a Sapphire Rapids Xeon, 2 threads: 4864 x 896 1.60 ms against 1.70-1.72 ms with
// the zeros read, 896 x 4864 1.52-1.57 against 1.63-1.65 ms). Read as bytes,
// whose being all zero means every value is 0 for integer and floating dtypes alike; a
// non-contiguous zero point counts as not zero.
bool all_zero(const at::Tensor& zero_point);

// W [N, K] in float32, each value as int4pack_matmul computes it.
at::Tensor int4pack_dequantize(const at::Tensor& packed, int64_t group_size, const at::Tensor& scale_and_zeros);

} // namespace qlgrad::math
