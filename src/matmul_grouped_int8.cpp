// torchao's group-wise forward with int8 activations in integer products (kernels.h,
// GroupedInt8PanelsFn and the rest). torchao quantizes the activation per row and dequantizes it,
// dequantizes the weight and multiplies in floating point; each product of two values there is
// (x code - its zero point) * (weight code - its zero point) times two scales, so the same sum
// can be taken in integers, run by run of one group, with the scales applied once per run. The
// activation is quantized by torchao's steps and packed once; each thread takes blocks of the
// weight's rows (the output's columns), converts a block of the depth into panels in its L2, and
// runs every block of the activation's rows against them.

#include "activation_quantization.h"
#include "matmul.h"
#include "matmul_strategies.h"
#include "scratch.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cmath>

namespace qlgrad::math {
namespace {

// The longest run: each weight row's values of a group are summed in runs of at most this many
// (a group of a whole row is thousands), each run's scale panel a few percent of its codes'.
constexpr int64_t kRunMax = 256;
// A block of panels: about 1024 deep and 512 columns wide, 512 KiB of codes in L2, as many bytes
// as the panel GEMM's bfloat16 training forwards hold.
constexpr int64_t kBlockDepth = 1024;
constexpr int64_t kBlockColumns = 512;

// The longest run that divides the group: a multiple of 16 (a vector lane of codes), or zero.
int64_t run_span(int64_t group_size) {
  for (int64_t span = std::min(kRunMax, group_size) / 16 * 16; span >= 16; span -= 16) {
    if (group_size % span == 0) {
      return span;
    }
  }
  return 0;
}

} // namespace

at::Tensor int8_dynamic_groupwise_linear(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scale,
                                         const at::Tensor& zero_point) {
  const bool zero = all_zero(zero_point);
  // bfloat16 activations stay on AMX tiles where the CPU has them: untimed against these.
  const bool integer_products = grouped_int8_reads(codes.size(1) / scale.size(1)) &&
                                (input.scalar_type() == at::kFloat || kernels().panel_rows_bfloat16_amx == nullptr);
  if (integer_products && (zero || !at::isFloatingType(zero_point.scalar_type()))) {
    const auto [low, high] = zero ? std::tuple(at::Tensor(), at::Tensor()) : at::aminmax(zero_point);
    if (zero || (low.item<int64_t>() >= -128 && high.item<int64_t>() <= 127)) {
      const auto int8_zero_point = zero ? std::nullopt : std::optional(zero_point.to(at::kChar).contiguous());
      // bfloat16 scales (torchao's bfloat16 layers) are read where they lie.
      const auto stored_scale =
          scale.scalar_type() == at::kBFloat16 ? scale.contiguous() : scale.to(at::kFloat).contiguous();
      if (auto result = grouped_int8_linear(input, codes, stored_scale, int8_zero_point)) {
        return *result;
      }
    }
  }
  // In floating point: the activation quantized and dequantized, times the values.
  return int8_groupwise_linear(int8_quant_dequant_rows_asymmetric(input), codes, scale.to(at::kFloat).contiguous(),
                               zero ? std::nullopt : std::optional(zero_point.to(at::kFloat).contiguous()));
}

bool grouped_int8_reads(int64_t group_size) {
  return kernels().panel_rows_grouped_int8 != nullptr && run_span(group_size) > 0;
}

std::optional<at::Tensor> grouped_int8_linear(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scale,
                                              const std::optional<at::Tensor>& zero_point) {
  TORCH_INTERNAL_ASSERT(input.dim() == 2 && input.is_contiguous() && codes.is_contiguous() && scale.is_contiguous());
  TORCH_INTERNAL_ASSERT(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16);
  TORCH_INTERNAL_ASSERT((scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kBFloat16) &&
                        (!zero_point || zero_point->scalar_type() == at::kChar));
  const int64_t rows = input.size(0), depth = input.size(1), columns = codes.size(0);
  const int64_t groups = scale.size(1), group_size = depth / groups, span = run_span(group_size);
  TORCH_INTERNAL_ASSERT(grouped_int8_reads(group_size));
  const bool bfloat16 = input.scalar_type() == at::kBFloat16;
  auto result = at::empty({rows, columns}, input.options());
  if (result.numel() == 0) {
    return result;
  }
  const auto& kernel = kernels();
  const auto [quantized, row_scale, row_offset] = int8_quantize_rows_asymmetric(input);
  const float* row_scales = row_scale.const_data_ptr<float>();
  if (!std::all_of(row_scales, row_scales + rows, [](float value) { return std::isfinite(value); })) {
    return std::nullopt;
  }
  const uint8_t* quantized_data = quantized.const_data_ptr<uint8_t>();
  const float* row_offsets = row_offset.const_data_ptr<float>();
  // Packed once, in blocks of kKernelRows rows of quads, the depth a multiple of 16.
  const int64_t row_blocks = (rows + kKernelRows - 1) / kKernelRows, block_bytes = kKernelRows * depth;
  auto packed = at::empty({row_blocks * block_bytes}, quantized.options());
  uint8_t* packed_data = packed.mutable_data_ptr<uint8_t>();
  const bool streamed = packed_rows_streamed(rows);
  at::parallel_for(0, row_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * kKernelRows;
      kernel.pack_rows_int8(reinterpret_cast<const int8_t*>(quantized_data + first * depth), depth,
                            std::min(kKernelRows, rows - first), depth, nullptr, 0,
                            reinterpret_cast<int8_t*>(packed_data + block * block_bytes), streamed);
    }
  });

  const int64_t block_depth = std::max(span, kBlockDepth / span * span);
  const ColumnTasks pieces(columns, kBlockColumns, kPanelColumns, at::get_num_threads());
  const int64_t widest = pieces.widest();
  const int8_t* code_data = codes.const_data_ptr<int8_t>();
  const int8_t* zero_points = zero_point ? zero_point->const_data_ptr<int8_t>() : nullptr;
  const GroupScales scales = scale.scalar_type() == at::kBFloat16
                                 ? GroupScales{nullptr, scale.const_data_ptr<at::BFloat16>()}
                                 : GroupScales{scale.const_data_ptr<float>(), nullptr};
  std::atomic<bool> values_in_int8{true};
  at::parallel_for(0, pieces.size(), 1, [&](int64_t begin, int64_t end) {
    auto panels = scratch(ScratchUse::kPanels, {grouped_int8_panel_bytes(block_depth, span) * (widest / kPanelColumns)},
                          at::kChar);
    // float32 sums of a bfloat16 result until the last block rounds them into it.
    auto sums = bfloat16 ? scratch(ScratchUse::kSums, {rows, widest}, at::kFloat) : at::Tensor();
    int8_t* panel_data = panels.mutable_data_ptr<int8_t>();
    for (int64_t index = begin; index < end; ++index) {
      const int64_t first = pieces.first(index), count = pieces.width(index);
      for (int64_t top = 0; top < depth; top += block_depth) {
        const int64_t height = std::min(block_depth, depth - top);
        if (!kernel.grouped_int8_panels(code_data + first * depth + top, depth, zero_points, scales, groups, group_size,
                                        span, top, first, height, count, panel_data)) {
          values_in_int8 = false;
          return;
        }
        const int64_t panel_bytes = grouped_int8_panel_bytes(height, span);
        const bool last = top + height == depth;
        for (int64_t row = 0; row < rows; row += kKernelRows) {
          for (int64_t column = 0; column < count; column += kPanelColumns) {
            float* out = bfloat16 ? sums.mutable_data_ptr<float>() + row * widest + column
                                  : result.mutable_data_ptr<float>() + row * columns + first + column;
            at::BFloat16* rounded =
                bfloat16 && last ? result.mutable_data_ptr<at::BFloat16>() + row * columns + first + column : nullptr;
            kernel.panel_rows_grouped_int8(
                std::min(kKernelRows, rows - row), packed_data + row / kKernelRows * block_bytes + top * kKernelRows,
                panel_data + column / kPanelColumns * panel_bytes, height, span, row_offsets + row, row_scales + row,
                out, bfloat16 ? widest : columns, count - column, /*accumulate=*/top > 0, rounded, columns);
          }
        }
      }
    }
  });
  if (!values_in_int8) {
    return std::nullopt;
  }
  return result;
}

} // namespace qlgrad::math
