// The forward x @ W.T of int8 codes in rows (torchao's group-wise layers) and of torch's int4
// packing in bfloat16 products with the weight's rows as the first operand and x's rows as the
// panels (kernels.h, ConvertRowTilesFn and the rest): on AMX tiles, or with the AVX512-BF16 panel
// kernel. x is packed into panels once for all threads; each thread takes blocks of weight rows,
// converts a part of their depth (into tiles, or the panel kernel's packed rows), and runs each
// panel of x's part against every task of the block; the sums, out.T, are transposed into the
// output once a block's depth is done. The weight, most of a forward of few rows, is converted in
// the order its codes lie, without the transposes its panels take (Int8CodesTransposed); x, a few
// rows, is transposed instead.

#include "matmul_strategies.h"

#include <ATen/ATen.h>

namespace qlgrad::math {
namespace {

// A part of the depth: kPartDepth of a block's rows are converted at once (128 KiB of bfloat16
// values, in L2); each panel of x's part (32 KiB) stays in L1 while the block's rows run against
// it. On a Sapphire Rapids Xeon, 2 threads, rotating weights (rows x in -> out, groups of 32),
// blocks of 128 rows against 256: 64 x 4096 -> 4096 2.06 against 2.18 ms, 256 x 896 -> 4864 1.21
// against 1.17 ms; parts 1024 deep instead of 512: 2.11 and 1.48 ms.
constexpr int64_t kPartDepth = 512;
// Weight rows a task takes at most.
constexpr int64_t kTaskWeightRows = 512;

// The AMX tiles: two tiles of weight rows (ConvertRowTilesFn's blocks of kAmxBlockRows) at a time,
// blocks of 128.
struct AmxWeightRows {
  static constexpr int64_t kTaskRows = kAmxTaskRows, kConvertedRows = kAmxBlockRows, kBlockWeightRows = 128;
  static void prepare_thread() { kernels().configure_tiles_amx(); }
  static void multiply(int64_t rows, const at::BFloat16* weight, int64_t block_stride, const at::BFloat16* panel,
                       int64_t depth, float* sums, int64_t lds, int64_t width, bool accumulate) {
    kernels().weight_rows_bfloat16_amx(rows, weight, LhsLayout::packed(block_stride), panel, depth, sums, lds, width,
                                       accumulate, /*rounded=*/nullptr, 0);
  }
};

// The AVX512-BF16 panel kernel: kKernelRows weight rows (a PackCodeRowsFn block) at a time, blocks
// of 120 (about AMX's 128 rows).
struct Avx512WeightRows {
  static constexpr int64_t kTaskRows = kKernelRows, kConvertedRows = kKernelRows, kBlockWeightRows = 10 * kKernelRows;
  static void prepare_thread() {}
  static void multiply(int64_t rows, const at::BFloat16* weight, int64_t /*block_stride*/, const at::BFloat16* panel,
                       int64_t depth, float* sums, int64_t lds, int64_t width, bool accumulate) {
    kernels().panel_rows_bfloat16(rows, weight, 0, panel, depth, sums, lds, width, accumulate, /*rounded=*/nullptr, 0);
  }
};

// x @ W.T for W's `columns` rows, which convert(first, top, depth, count, weight_rows,
// block_stride) converts for Kernel's task of `count` rows as ConvertRowTilesFn or PackCodeRowsFn
// does, in blocks of Kernel::kConvertedRows rows block_stride elements apart.
template <typename Kernel, typename Convert>
at::Tensor row_tiles_gemm(const at::Tensor& lhs, int64_t columns, const Convert& convert) {
  constexpr int64_t kTaskRows = Kernel::kTaskRows, kBlockWeightRows = Kernel::kBlockWeightRows;
  const auto& kernel = kernels();
  const int64_t rows = lhs.size(0), depth = lhs.size(1);
  if (lhs.numel() == 0 || columns == 0) {
    return at::zeros({rows, columns}, lhs.options());
  }
  const int64_t stored_depth = round_up(depth, kRowTilesDepthStep), panel_size = stored_depth * kPanelColumns;
  const int64_t panels = (rows + kPanelColumns - 1) / kPanelColumns;
  auto packed = at::empty({panels * panel_size}, lhs.options());
  const at::BFloat16* x = lhs.const_data_ptr<at::BFloat16>();
  at::BFloat16* panel_data = packed.mutable_data_ptr<at::BFloat16>();
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t panel = begin; panel < end; ++panel) {
      kernel.pack_panel_bfloat16(x + panel * kPanelColumns * depth, depth,
                                 std::min(kPanelColumns, rows - panel * kPanelColumns), depth,
                                 panel_data + panel * panel_size);
    }
  });
  auto result = at::empty({rows, columns}, lhs.options());
  at::BFloat16* out = result.mutable_data_ptr<at::BFloat16>();
  const ColumnTasks pieces(columns, kTaskWeightRows, kTaskRows, at::get_num_threads());
  const int64_t sums_stride = panels * kPanelColumns;
  at::parallel_for(0, pieces.size(), 1, [&](int64_t begin, int64_t end) {
    Kernel::prepare_thread();
    auto converted = at::empty({kBlockWeightRows * kPartDepth}, lhs.options());
    auto sums = at::empty({kBlockWeightRows * sums_stride}, lhs.options().dtype(at::kFloat));
    at::BFloat16* converted_data = converted.mutable_data_ptr<at::BFloat16>();
    float* sum_data = sums.mutable_data_ptr<float>();
    const int64_t piece_end = pieces.first(end);
    for (int64_t block = pieces.first(begin); block < piece_end; block += kBlockWeightRows) {
      const int64_t block_count = std::min(kBlockWeightRows, piece_end - block);
      for (int64_t top = 0; top < depth; top += kPartDepth) {
        const int64_t part = std::min(kPartDepth, depth - top), stored_part = round_up(part, kRowTilesDepthStep);
        const int64_t task_stride = kTaskRows * stored_part, block_stride = Kernel::kConvertedRows * stored_part;
        for (int64_t task = 0; task < block_count; task += kTaskRows) {
          convert(block + task, top, part, std::min(kTaskRows, block_count - task),
                  converted_data + task / kTaskRows * task_stride, block_stride);
        }
        for (int64_t panel = 0; panel < panels; ++panel) {
          for (int64_t task = 0; task < block_count; task += kTaskRows) {
            Kernel::multiply(std::min(kTaskRows, block_count - task), converted_data + task / kTaskRows * task_stride,
                             block_stride, panel_data + panel * panel_size + top * kPanelColumns, stored_part,
                             sum_data + task * sums_stride + panel * kPanelColumns, sums_stride,
                             std::min(kPanelColumns, rows - panel * kPanelColumns), /*accumulate=*/top > 0);
          }
        }
      }
      kernel.store_transposed_bfloat16(sum_data, sums_stride, block_count, rows, out + block, columns);
    }
  });
  return result;
}

} // namespace

at::Tensor weight_row_tiles_gemm(const at::Tensor& lhs, const at::Tensor& codes, const CodeParameters& parameters) {
  TORCH_INTERNAL_ASSERT(lhs.scalar_type() == at::kBFloat16 && lhs.is_contiguous() && codes.is_contiguous());
  const auto& kernel = kernels();
  const int8_t* weight = codes.const_data_ptr<int8_t>();
  const int64_t depth = lhs.size(1);
  if (kernel.convert_row_tiles_int8_bfloat16_amx != nullptr) {
    return row_tiles_gemm<AmxWeightRows>(
        lhs, codes.size(0),
        [&](int64_t first, int64_t top, int64_t part, int64_t count, at::BFloat16* tiles, int64_t block_stride) {
          kernel.convert_row_tiles_int8_bfloat16_amx(weight + first * depth + top, depth, parameters, first, top, part,
                                                     count, tiles, block_stride);
        });
  }
  TORCH_INTERNAL_ASSERT(kernel.pack_code_rows_bfloat16 != nullptr);
  return row_tiles_gemm<Avx512WeightRows>(
      lhs, codes.size(0),
      [&](int64_t first, int64_t top, int64_t part, int64_t count, at::BFloat16* block, int64_t /*block_stride*/) {
        kernel.pack_code_rows_bfloat16(weight + first * depth + top, depth, parameters, first, top, part, count, block);
      });
}

bool int4_row_tiles_reads(const Int4Pack& pack) {
  return kernels().convert_row_tiles_int4_bfloat16_amx != nullptr && pack.halves && pack.block == 64 &&
         pack.rows % 64 == 0;
}

at::Tensor int4_row_tiles_gemm(const at::Tensor& lhs, const Int4Pack& pack) {
  TORCH_INTERNAL_ASSERT(lhs.scalar_type() == at::kBFloat16 && lhs.is_contiguous() && lhs.size(1) == pack.columns);
  TORCH_INTERNAL_ASSERT(int4_row_tiles_reads(pack));
  return row_tiles_gemm<AmxWeightRows>(
      lhs, pack.rows,
      [&](int64_t first, int64_t top, int64_t part, int64_t count, at::BFloat16* tiles, int64_t block_stride) {
        kernels().convert_row_tiles_int4_bfloat16_amx(pack, first, top, part, count, tiles, block_stride);
      });
}

} // namespace qlgrad::math
