// MKL's GEMM on tiles: the weight in blocks of columns spread over the threads; each thread
// converts a block, a tile of rows at a time, into a tile of its own and multiplies there. Every
// row of a tile is a long run of contiguous codes: across rows the weight's pages change, and
// short runs would spend more on page walks than on converting.
//   float32: shallow tiles that stay in L2, accumulated into the output block.
//   bfloat16: tiles of full depth, so that the output, rounded to bfloat16 by the GEMM, is
//   written once rather than rounded at every accumulation.

#include "matmul_strategies.h"

#include <ATen/ATen.h>

namespace qlgrad::math {
namespace {

// A converted float32 tile stays in L2 while the GEMM reads it, with up to this many columns.
constexpr int64_t kTileBytes = int64_t{1} << 20;
constexpr int64_t kTileColumnsMax = 1024;
// A bfloat16 tile holds every row of its columns.
constexpr int64_t kFullDepthTileBytes = int64_t{4} << 20;

} // namespace

at::Tensor tiled_gemm(const at::Tensor& lhs, const WeightReader& reader) {
  const int64_t rows = lhs.size(0), depth = lhs.size(1), columns = reader.columns();
  const bool accumulate = lhs.scalar_type() == at::kFloat;
  const int64_t element_bytes = lhs.element_size();
  const int64_t align = kCacheLine / element_bytes;
  const ColumnTasks tasks(
      columns,
      accumulate ? kTileColumnsMax : std::max(align, kFullDepthTileBytes / element_bytes / depth / align * align),
      align, at::get_num_threads());
  const int64_t width = tasks.widest();
  // Multiples of 16 rows, as the int4 packing holds them together.
  const int64_t tile_depth =
      accumulate ? round_up(std::max(kCacheLine, kTileBytes / element_bytes / width), 16) : depth;
  auto result = at::empty({rows, columns}, lhs.options());
  at::parallel_for(0, tasks.size(), 1, [&](int64_t begin, int64_t end) {
    auto tile = at::empty({std::min(depth, tile_depth) * width}, lhs.options());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first = tasks.first(task), count = tasks.width(task);
      auto out = result.narrow(1, first, count);
      for (int64_t top = 0; top < depth; top += tile_depth) {
        const int64_t height = std::min(tile_depth, depth - top);
        // The first height x count elements, so that the tile is contiguous at every size.
        auto block = tile.narrow(0, 0, height * count).view({height, count});
        reader.tile(top, first, count, block);
        at::addmm_out(out, out, lhs.narrow(1, top, height), block, /*beta=*/top == 0 ? 0 : 1);
      }
    }
  });
  return result;
}

} // namespace qlgrad::math
