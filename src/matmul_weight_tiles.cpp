// The forward x @ W.T of int8 codes in rows (torchao's group-wise layers) and of torch's int4
// packing in bfloat16 products on AMX tiles, with the weight's rows as the tiles' first operand
// and x's rows as the panels (kernels.h, ConvertRowTilesFn and ConvertInt4RowTilesFn): x is packed
// into panels once for all threads; each thread takes
// blocks of kBlockWeightRows weight rows, converts a part of their depth into tiles, and runs each
// panel of x's part against every tile of the block; the sums, out.T, are transposed into the
// output once a block's depth is done. The weight, most of a forward of few rows, is converted in
// the order its codes lie, without the transposes its panels take (Int8CodesTransposed); x, a few
// rows, is transposed instead.

#include "matmul_strategies.h"

#include <ATen/ATen.h>

namespace qlgrad::math {
namespace {

// A block of kBlockWeightRows weight rows is converted kPartDepth of its depth at a time (128 KiB
// of tiles, in L2); each panel of x's part (32 KiB) stays in L1 while the block's tiles run
// against it. On a Sapphire Rapids Xeon, 2 threads, rotating weights (rows x in -> out, groups of
// 32), blocks of 128 rows against 256: 64 x 4096 -> 4096 2.06 against 2.18 ms, 256 x 896 -> 4864
// 1.21 against 1.17 ms; parts 1024 deep instead of 512: 2.11 and 1.48 ms.
constexpr int64_t kBlockWeightRows = 128;
constexpr int64_t kPartDepth = 512;
// Weight rows a task takes at most.
constexpr int64_t kTaskWeightRows = 512;

// x @ W.T for W's `columns` rows, which convert(first, top, depth, count, tiles, block_stride)
// converts as ConvertRowTilesFn does.
template <typename Convert>
at::Tensor row_tiles_gemm(const at::Tensor& lhs, int64_t columns, const Convert& convert) {
  const auto& kernel = kernels();
  const int64_t rows = lhs.size(0), depth = lhs.size(1);
  if (lhs.numel() == 0 || columns == 0) {
    return at::zeros({rows, columns}, lhs.options());
  }
  const int64_t stored_depth = round_up(depth, 32), panel_size = stored_depth * kPanelColumns;
  const int64_t panels = (rows + kPanelColumns - 1) / kPanelColumns;
  auto packed = at::empty({panels * panel_size}, lhs.options());
  const at::BFloat16* x = lhs.const_data_ptr<at::BFloat16>();
  at::BFloat16* panel_data = packed.mutable_data_ptr<at::BFloat16>();
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t panel = begin; panel < end; ++panel) {
      kernel.pack_panel_bfloat16_amx(x + panel * kPanelColumns * depth, depth,
                                     std::min(kPanelColumns, rows - panel * kPanelColumns), depth,
                                     panel_data + panel * panel_size);
    }
  });
  auto result = at::empty({rows, columns}, lhs.options());
  at::BFloat16* out = result.mutable_data_ptr<at::BFloat16>();
  const ColumnTasks pieces(columns, kTaskWeightRows, kAmxTaskRows, at::get_num_threads());
  const int64_t sums_stride = panels * kPanelColumns;
  at::parallel_for(0, pieces.size(), 1, [&](int64_t begin, int64_t end) {
    kernel.configure_tiles_amx();
    auto tiles = at::empty({kBlockWeightRows * kPartDepth}, lhs.options());
    auto sums = at::empty({kBlockWeightRows * sums_stride}, lhs.options().dtype(at::kFloat));
    at::BFloat16* tile_data = tiles.mutable_data_ptr<at::BFloat16>();
    float* sum_data = sums.mutable_data_ptr<float>();
    const int64_t piece_end = pieces.first(end);
    for (int64_t block = pieces.first(begin); block < piece_end; block += kBlockWeightRows) {
      const int64_t block_count = std::min(kBlockWeightRows, piece_end - block);
      for (int64_t top = 0; top < depth; top += kPartDepth) {
        const int64_t part = std::min(kPartDepth, depth - top), stored_part = round_up(part, 32);
        const int64_t sub_stride = kAmxTaskRows * stored_part;
        for (int64_t sub = 0; sub < block_count; sub += kAmxTaskRows) {
          convert(block + sub, top, part, std::min(kAmxTaskRows, block_count - sub),
                  tile_data + sub / kAmxTaskRows * sub_stride, stored_part * kAmxBlockRows);
        }
        for (int64_t panel = 0; panel < panels; ++panel) {
          for (int64_t sub = 0; sub < block_count; sub += kAmxTaskRows) {
            kernel.weight_rows_bfloat16_amx(std::min(kAmxTaskRows, block_count - sub),
                                            tile_data + sub / kAmxTaskRows * sub_stride,
                                            AmxLhsLayout::packed(stored_part * kAmxBlockRows),
                                            panel_data + panel * panel_size + top * kPanelColumns, stored_part,
                                            sum_data + sub * sums_stride + panel * kPanelColumns, sums_stride,
                                            std::min(kPanelColumns, rows - panel * kPanelColumns),
                                            /*accumulate=*/top > 0, /*rounded=*/nullptr, 0);
          }
        }
      }
      for (int64_t sub = 0; sub < block_count; sub += kAmxTaskRows) {
        kernel.store_transposed_bfloat16_amx(sum_data + sub * sums_stride, sums_stride,
                                             std::min(kAmxTaskRows, block_count - sub), rows, out + block + sub,
                                             columns);
      }
    }
  });
  return result;
}

} // namespace

at::Tensor weight_row_tiles_gemm(const at::Tensor& lhs, const at::Tensor& codes, const CodeParameters& parameters) {
  TORCH_INTERNAL_ASSERT(lhs.scalar_type() == at::kBFloat16 && lhs.is_contiguous() && codes.is_contiguous());
  const int8_t* weight = codes.const_data_ptr<int8_t>();
  const int64_t depth = lhs.size(1);
  return row_tiles_gemm(
      lhs, codes.size(0),
      [&](int64_t first, int64_t top, int64_t part, int64_t count, at::BFloat16* tiles, int64_t block_stride) {
        kernels().convert_row_tiles_int8_bfloat16_amx(weight + first * depth + top, depth, parameters, first, top, part,
                                                      count, tiles, block_stride);
      });
}

bool int4_row_tiles_reads(const Int4Pack& pack) {
  return kernels().convert_row_tiles_int4_bfloat16_amx != nullptr && pack.halves && pack.block == 64 &&
         pack.rows % 64 == 0;
}

at::Tensor int4_row_tiles_gemm(const at::Tensor& lhs, const Int4Pack& pack) {
  TORCH_INTERNAL_ASSERT(lhs.scalar_type() == at::kBFloat16 && lhs.is_contiguous() && lhs.size(1) == pack.columns);
  TORCH_INTERNAL_ASSERT(int4_row_tiles_reads(pack));
  return row_tiles_gemm(
      lhs, pack.rows,
      [&](int64_t first, int64_t top, int64_t part, int64_t count, at::BFloat16* tiles, int64_t block_stride) {
        kernels().convert_row_tiles_int4_bfloat16_amx(pack, first, top, part, count, tiles, block_stride);
      });
}

} // namespace qlgrad::math
