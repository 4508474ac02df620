// The products of int8 inputs over int8 codes in integer GEMMs, exact: the int8 backward's
// (a quantized gradient by the stored codes) and torchao's int8 forwards (its quantized activation by
// the codes of W.T), each with its rescale, run by the int8 panel GEMM (matmul_panels.cpp) where the
// CPU has AVX512-VNNI or AMX tiles, else by torch._int_mm; torchao's forward of a few rows with
// the weight's rows as the kernel's broadcast operand (weight_rows_first_int8).

#include "matmul.h"

#include "matmul_strategies.h"
#include "panel_tasks.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <limits>

namespace qlgrad::math {
namespace {

// The int8 panel GEMM over stored codes (the int8 backward) serves every row count with AVX512-VNNI
// or AMX tiles, but on Intel's CPUs without AMX, where torch._int_mm on codes in rows (oneDNN's
// integer GEMM) takes the product from this many rows, as it was measured before the panel GEMM
// finished each task's sums in L1 (on a Zen 4 EPYC then, 2 threads, the whole int8 backward of
// 768x3072 and 4096x4096 layers over fbgemm's packing at 512-2048 rows 1.08-1.31x the time it
// took with torch._int_mm). Since, on that EPYC, the panel GEMM over torch._int_mm's path (rows
// x in -> out, two runs): 512 rows of 768 -> 3072, 3072 -> 768, 896 -> 4864, 4864 -> 896 and
// 4096 -> 4096 0.92-0.95x its time; 1024 rows 0.74-1.02x; 2048 rows 0.64-1.05x (the wider
// outputs, whose int32 sums torch._int_mm writes out whole and a pass rescales, gaining most). On
// AMX tiles: on a Sapphire Rapids Xeon, 2 threads, at 2048x3072x768 the whole int8 backward
// (quantizing the float32 gradient too) takes 5.9 ms, torch._int_mm alone on the quantized
// gradient 3.4 ms.
constexpr int64_t kIntelInt8PanelRowsEnd = 512;

// Row sums of int8 values made the offsets of their products with panels that hold each value
// plus 128: 128 times each, in place.
void as_code_offsets(int32_t* sums, int64_t count) {
  std::transform(sums, sums + count, sums, [](int32_t sum) { return 128 * sum; });
}

// The int8 panels hold each code plus 128: a product with them is code_offsets(lhs)[m] =
// 128 * sum_k lhs[m, k] too many in each row (int32 [M]).
at::Tensor code_offsets(const at::Tensor& lhs) {
  const int64_t rows = lhs.size(0), depth = lhs.size(1), stride = lhs.stride(0);
  auto offsets = at::empty({rows}, lhs.options().dtype(at::kInt));
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(depth, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    int32_t* sums = offsets.mutable_data_ptr<int32_t>();
    kernels().int8_row_sums(lhs.const_data_ptr<int8_t>() + begin * stride, stride, end - begin, depth, sums + begin);
    as_code_offsets(sums + begin, end - begin);
  });
  return offsets;
}

// How int32 sums of an int8 product become the result, as RescaleSumsFn makes them: offsets int32
// [M] (absent for none) and row scales float32 [M], contiguous; column scale and bias [N] float32
// (null for none).
struct RescaledSums {
  std::optional<at::Tensor> row_offset;
  at::Tensor row_scale;
  const float* column_scale;
  const float* bias;
  unsigned bfloat16_steps;
};

// float32 `values` contiguous, with each NaN whose low 16 bits are not all zero made the quiet
// NaN, whose are: RescaleSumsFn rounds to bfloat16 by a carry that would turn the others into
// numbers. Only such a NaN's bits change, and they are a copy's.
at::Tensor nans_rounding_keeps(const at::Tensor& values) {
  auto result = values.contiguous();
  const auto* bits = reinterpret_cast<const uint32_t*>(result.const_data_ptr<float>());
  bool carries_out = false;
  for (int64_t i = 0; i < result.numel(); ++i) {
    carries_out |= (bits[i] & 0x7F800000u) == 0x7F800000u && (bits[i] & 0xFFFFu) != 0;
  }
  return carries_out ? at::where(result.isnan(), std::numeric_limits<float>::quiet_NaN(), result) : result;
}

// result = `rescaled` sums [M, N], rows in parallel.
template <typename Element>
void rescale(const at::Tensor& sums, const RescaledSums& rescaled, RescaleSumsFn<Element>* rescale_sums,
             at::Tensor& result) {
  const int64_t columns = sums.size(1);
  const int32_t* offsets = rescaled.row_offset ? rescaled.row_offset->const_data_ptr<int32_t>() : nullptr;
  const float* row_scale = rescaled.row_scale.const_data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(columns, 1));
  at::parallel_for(0, sums.size(0), grain, [&](int64_t begin, int64_t end) {
    rescale_sums(sums.const_data_ptr<int32_t>() + begin * columns, columns, end - begin, columns,
                 offsets != nullptr ? offsets + begin : nullptr, row_scale + begin, rescaled.column_scale,
                 rescaled.bias, rescaled.bfloat16_steps, result.mutable_data_ptr<Element>() + begin * columns, columns);
  });
}

// result = `rescaled` (lhs @ W) for an int8 lhs, in the int8 panel GEMM, each block of sums
// rescaled as it is complete; its panels' code offset (128 times each row's sum of lhs) joins the
// rows' offsets.
template <typename Element>
void rescaled_int8_product(const at::Tensor& lhs, const WeightReader& reader, const RescaledSums& rescaled,
                           RescaleSumsFn<Element>* rescale_sums, at::Tensor& result) {
  auto offsets = code_offsets(lhs);
  if (rescaled.row_offset) {
    offsets.add_(*rescaled.row_offset);
  }
  const int32_t* offset_data = offsets.const_data_ptr<int32_t>();
  const float* row_scale = rescaled.row_scale.const_data_ptr<float>();
  Element* out = result.mutable_data_ptr<Element>();
  const int64_t stride = result.size(1);
  panel_gemm_int8(
      lhs, reader,
      [&](const int32_t* sums, int64_t sums_stride, int64_t row, int64_t rows, int64_t first, int64_t count) {
        rescale_sums(sums, sums_stride, rows, count, offset_data + row, row_scale + row,
                     rescaled.column_scale != nullptr ? rescaled.column_scale + first : nullptr,
                     rescaled.bias != nullptr ? rescaled.bias + first : nullptr, rescaled.bfloat16_steps,
                     out + row * stride + first, stride);
      });
}

// Whether the int8 forward of `rows` rows of x by codes in rows takes the weight's rows where they
// lie as the kernel's broadcast operand and x's rows as one panel (weight_rows_int8_product): the
// panel GEMM converts the whole weight into panels at every call, for a few rows much of its
// time, but this kernel computes 16 or 32 columns of x's panel whatever its rows (16 up to 16
// rows), so it takes over where at most 4 of them are padding. On a Zen 4 EPYC, 2 threads, three
// weights in turn, over the panel GEMM's time (rows x in -> out: 896 -> 896, 128, 4864; 4864 ->
// 896; 4096 -> 4096; the same bits): 12 rows 0.85-1.03x, 16 rows 0.76-0.90x, 28 rows 0.84-0.95x,
// 32 rows 0.72-0.90x; but 1-8 rows 1.02-1.57x (4096 -> 4096 at 8 rows 0.95x), 20-24 rows
// 0.86-1.23x, 40-56 rows (two panels) 0.98-1.36x, 64 rows 0.84-1.02x. Intel's CPUs, unmeasured,
// keep the panel GEMM (on AMX tiles where they have them).
bool weight_rows_first_int8(int64_t rows, int64_t depth) {
  const int64_t computed = rows <= 16 ? 16 : kPanelColumns;
  return kernels().weight_rows_int8 != nullptr && !is_intel_cpu() && rows <= kPanelColumns && computed - rows <= 4 &&
         depth > 0 && depth % 4 == 0;
}

// The weight rows a thread takes at a time: their sums by x's rows (96 x 32 int32, 12 KiB) stay
// in L1 for their transposition.
constexpr int64_t kWeightBlockRows = 8 * kKernelRows;

// result = `rescaled` (input @ codes.T) for int8 input [M, K] and codes [N, K] in rows, where
// weight_rows_first_int8(M, K): each thread runs blocks of the weight's rows by x's panel, then
// subtracts the panel's code offset (128 times each weight row's sum), transposes the block's
// sums and rescales them into its columns of the result.
template <typename Element>
void weight_rows_int8_product(const at::Tensor& input, const at::Tensor& codes, const RescaledSums& rescaled,
                              RescaleSumsFn<Element>* rescale_sums, at::Tensor& result) {
  TORCH_INTERNAL_ASSERT(!rescaled.row_offset && weight_rows_first_int8(input.size(0), input.size(1)));
  const auto& kernel = kernels();
  const int64_t rows = input.size(0), depth = input.size(1), columns = codes.size(0);
  auto x_panel = at::empty({kPanelColumns * depth}, input.options().dtype(at::kByte));
  kernel.int8_transposed_panels(input.const_data_ptr<int8_t>(), depth, depth, rows, x_panel.mutable_data_ptr<uint8_t>(),
                                depth);
  const uint8_t* panel_data = x_panel.const_data_ptr<uint8_t>();
  const int8_t* weight = codes.const_data_ptr<int8_t>();
  const float* row_scale = rescaled.row_scale.const_data_ptr<float>();
  Element* out = result.mutable_data_ptr<Element>();
  const ColumnTasks blocks(columns, kWeightBlockRows, kKernelRows, at::get_num_threads());
  const int64_t widest = blocks.widest();
  at::parallel_for(0, blocks.size(), 1, [&](int64_t begin, int64_t end) {
    const auto int32_options = input.options().dtype(at::kInt);
    auto sums = at::empty({widest * kPanelColumns}, int32_options);
    auto offsets = at::empty({widest}, int32_options);
    auto transposed = at::empty({rows * widest}, int32_options);
    int32_t* sum_data = sums.mutable_data_ptr<int32_t>();
    int32_t* offset_data = offsets.mutable_data_ptr<int32_t>();
    int32_t* transposed_data = transposed.mutable_data_ptr<int32_t>();
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = blocks.first(block), count = blocks.width(block);
      for (int64_t task = 0; task < count; task += kKernelRows) {
        kernel.weight_rows_int8(std::min(kKernelRows, count - task), weight + (first + task) * depth, depth, panel_data,
                                depth, sum_data + task * kPanelColumns, kPanelColumns, rows);
      }
      kernel.int8_row_sums(weight + first * depth, depth, count, depth, offset_data);
      as_code_offsets(offset_data, count);
      kernel.transpose_sums(sum_data, kPanelColumns, count, rows, offset_data, transposed_data, count);
      rescale_sums(transposed_data, count, rows, count, /*row_offset=*/nullptr, row_scale,
                   rescaled.column_scale != nullptr ? rescaled.column_scale + first : nullptr,
                   rescaled.bias != nullptr ? rescaled.bias + first : nullptr, rescaled.bfloat16_steps, out + first,
                   columns);
    }
  });
}

} // namespace

std::optional<at::Tensor> int8_codes_matmul(const at::Tensor& lhs, const at::Tensor& codes,
                                            const std::optional<BlockedLayout>& blocked,
                                            const std::optional<at::Tensor>& row_offset, const at::Tensor& row_scale) {
  TORCH_INTERNAL_ASSERT(lhs.dim() == 2 && lhs.stride(1) == 1 && lhs.scalar_type() == at::kChar);
  TORCH_INTERNAL_ASSERT(codes.scalar_type() == at::kChar);
  const auto& kernel = kernels();
  if (kernel.panel_rows_int8 == nullptr ||
      (lhs.size(0) >= kIntelInt8PanelRowsEnd && kernel.panel_rows_int8_amx == nullptr && is_intel_cpu())) {
    return std::nullopt;
  }
  const int64_t columns = blocked ? blocked->columns : codes.size(1);
  auto result = at::empty({lhs.size(0), columns}, lhs.options().dtype(at::kFloat));
  if (lhs.numel() == 0 || columns == 0) {
    return result.zero_();
  }
  const CodeParameters none;
  const RescaledSums rescaled{row_offset, row_scale, nullptr, nullptr, 0};
  if (blocked) {
    rescaled_int8_product(lhs, BlockedCodes(codes.const_data_ptr<int8_t>(), *blocked, none), rescaled,
                          kernel.rescale_sums, result);
  } else {
    rescaled_int8_product(lhs, RowCodes(codes, none), rescaled, kernel.rescale_sums, result);
  }
  return result;
}

at::Tensor int8_linear(const at::Tensor& input, const at::Tensor& codes) {
  TORCH_INTERNAL_ASSERT(input.dim() == 2 && input.is_contiguous() && input.scalar_type() == at::kChar);
  TORCH_INTERNAL_ASSERT(codes.dim() == 2 && codes.is_contiguous() && codes.scalar_type() == at::kChar);
  TORCH_INTERNAL_ASSERT(input.size(1) == codes.size(1));
  if (kernels().panel_rows_int8 == nullptr) {
    return at::_int_mm(input, codes.t());
  }
  if (input.numel() == 0 || codes.size(0) == 0) {
    return at::zeros({input.size(0), codes.size(0)}, input.options().dtype(at::kInt));
  }
  // The int32 sums less the code offset, a block at a time.
  auto result = at::empty({input.size(0), codes.size(0)}, input.options().dtype(at::kInt));
  const auto offsets = code_offsets(input);
  const int32_t* offset_data = offsets.const_data_ptr<int32_t>();
  int32_t* out = result.mutable_data_ptr<int32_t>();
  const int64_t stride = result.size(1);
  panel_gemm_int8(
      input, Int8CodesTransposed(codes),
      [&](const int32_t* sums, int64_t sums_stride, int64_t row, int64_t rows, int64_t first, int64_t count) {
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t c = 0; c < count; ++c) {
            out[(row + r) * stride + first + c] = sums[r * sums_stride + c] - offset_data[row + r];
          }
        }
      });
  return result;
}

at::Tensor int8_linear_rescaled(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& row_scale,
                                const at::Tensor& column_scale, const std::optional<at::Tensor>& bias,
                                at::ScalarType dtype) {
  const int64_t rows = input.size(0), columns = codes.size(0);
  TORCH_INTERNAL_ASSERT(row_scale.numel() == rows && column_scale.numel() == columns &&
                        (!bias || bias->numel() == columns));
  // Each operation's dtype, as torch promotes them.
  const auto product_dtype = at::promote_types(dtype, column_scale.scalar_type());
  const auto& kernel = kernels();
  if (kernel.rescale_sums == nullptr) {
    auto result =
        (int8_linear(input, codes).to(row_scale.scalar_type()) * row_scale.unsqueeze(1)).to(dtype) * column_scale;
    if (bias) {
      result.add_(*bias);
    }
    return result.to(dtype);
  }
  const auto is_bfloat16 = [](at::ScalarType type) { return type == at::kBFloat16; };
  unsigned bfloat16_steps = 0;
  bfloat16_steps |= is_bfloat16(row_scale.scalar_type()) ? unsigned{kConversion} : 0u;
  bfloat16_steps |= is_bfloat16(row_scale.scalar_type()) || is_bfloat16(dtype) ? unsigned{kRowProduct} : 0u;
  bfloat16_steps |= is_bfloat16(product_dtype) ? kColumnProduct | kBiasSum : 0;
  // bfloat16 parameters are exact in float32, their NaNs' low 16 bits zero.
  const auto as_float = [](const at::Tensor& parameter) {
    return parameter.scalar_type() == at::kFloat ? nans_rounding_keeps(parameter)
                                                 : parameter.to(at::kFloat).contiguous();
  };
  const auto row_factors = as_float(row_scale), column_factors = as_float(column_scale);
  const auto bias_values = bias ? std::optional(as_float(*bias)) : std::nullopt;
  const RescaledSums rescaled{std::nullopt, row_factors, column_factors.const_data_ptr<float>(),
                              bias_values ? bias_values->const_data_ptr<float>() : nullptr, bfloat16_steps};
  auto result = at::empty({rows, columns}, input.options().dtype(dtype));
  if (result.numel() == 0) {
    return result;
  }
  // Each path with the rescale that writes `dtype`.
  const auto multiply = [&](auto* rescale_sums) {
    if (weight_rows_first_int8(rows, input.size(1))) {
      weight_rows_int8_product(input, codes, rescaled, rescale_sums, result);
    } else if (kernel.panel_rows_int8 != nullptr && input.size(1) > 0) {
      rescaled_int8_product(input, Int8CodesTransposed(codes), rescaled, rescale_sums, result);
    } else {
      rescale(int8_linear(input, codes), rescaled, rescale_sums, result);
    }
  };
  if (dtype == at::kFloat) {
    multiply(kernel.rescale_sums);
  } else {
    multiply(kernel.rescale_sums_bfloat16);
  }
  return result;
}

} // namespace qlgrad::math
