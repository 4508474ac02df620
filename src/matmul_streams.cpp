// The streams' division of work: ranges of the weight's rows (or of its columns, for int4) per
// thread, slabs that stay in cache, groups of kStreamedRowsMax rows of lhs at a time.

#include "matmul_strategies.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <numeric>

namespace qlgrad::math {
namespace {

// A thread streams at least this many weight rows, or the streaming is not split.
constexpr int64_t kStreamedRowsPerRangeMin = 256;
// The block sums a stream keeps in L2: whole rows of up to 8192 columns at 8 rows, read
// contiguously (at 8 x 4096 x 4096 on a Zen 4 EPYC, 2.44 ms against 3.30 with the sums in L1 and
// rows read in chunks a few KiB apart).
constexpr int64_t kStreamedSumBytes = 256 << 10;
// Codes copied out of a blocked packing for a stream stay in L2: slabs of this many bytes.
constexpr int64_t kCopiedSlabBytes = 256 << 10;

int64_t ranges_of(int64_t depth) {
  return std::clamp<int64_t>(depth / kStreamedRowsPerRangeMin, 1, at::get_num_threads());
}

} // namespace

// Each thread streams its own range of weight rows, one contiguous region of memory that
// hardware prefetchers follow page after page, into sums of its own. The rows are read whole
// where the block sums of every column fit in L2, else in column chunks that do. A blocked
// packing lies one range of block_depth columns after the other, each holding every row, and is
// read in that order: a range of columns at a time, copied into rows a slab at a time, each
// slab's codes staying in L2 while they are streamed.
template <typename Code>
at::Tensor streamed(const at::Tensor& lhs, const at::Tensor& weight, const std::optional<BlockedLayout>& blocked,
                    const CodeParameters& parameters, StreamFn<Code>* stream) {
  const int64_t rows = lhs.size(0), depth = lhs.size(1), columns = blocked ? blocked->columns : weight.size(1);
  const int64_t ranges = ranges_of(depth);
  // A stream takes up to kStreamedRowsMax rows of lhs; more are streamed a group at a time.
  const int64_t group_rows = std::min(rows, kStreamedRowsMax);
  // Whole cache lines of sums, so that chunks start where groups of a multiple of 16 columns do.
  const int64_t chunk =
      std::max<int64_t>(kCacheLine, kStreamedSumBytes / int64_t{sizeof(float)} / group_rows / kCacheLine * kCacheLine);
  const int64_t piece = blocked ? std::min(chunk, blocked->block_depth) : chunk;
  // Whole blocks of the packing (which a 16 x 16 copy needs in bands of 16 rows), so that no
  // block is read by two slabs.
  const int64_t align = blocked ? std::lcm<int64_t>(16, blocked->block_width) : 1;
  const int64_t ldc = blocked ? copied_row_stride(std::min(piece, columns)) : 0;
  const int64_t slab = blocked ? std::max<int64_t>(align, kCopiedSlabBytes / ldc / align * align) : depth;
  // Each range's sums zeroed by the thread that adds into them: zeroed by the calling thread, they
  // lay in its cache, and the others' first additions waited for them line by line (on a Zen 4
  // EPYC, 2 threads, the fp32 backward of 16 rows through a sequence of a decoder's products and
  // 4096 x 4096 took 0.84-0.96x the time so, of 4 rows 0.88-1.02x, of one row 0.88-1.03x, in three
  // processes each, alternated).
  auto sums = at::empty({ranges, rows, columns}, lhs.options());
  const auto* codes = weight.const_data_ptr<Code>();
  at::parallel_for(0, ranges, 1, [&](int64_t begin, int64_t end) {
    auto block_sums = at::empty({group_rows * block_sums_stride(std::min(chunk, columns))}, lhs.options());
    for (int64_t range = begin; range < end; ++range) {
      float* range_sums = sums[range].mutable_data_ptr<float>();
      std::fill(range_sums, range_sums + rows * columns, 0.0f);
      const int64_t range_end = piece_start(depth, ranges, range + 1, align);
      for (int64_t first = 0; first < columns; first += piece) {
        const int64_t count = std::min(piece, columns - first);
        for (int64_t top = piece_start(depth, ranges, range, align); top < range_end; top += slab) {
          const int64_t height = std::min(slab, range_end - top);
          const Code* slab_codes = codes + (blocked ? 0 : top * weight.stride(0) + first);
          const int64_t ldw = blocked ? ldc : weight.stride(0);
          if constexpr (std::is_same_v<Code, int8_t>) {
            if (blocked) {
              int8_t* copied = scratch_codes(height * ldc);
              kernels().copy_blocked(*blocked, codes, top, height, first, count, copied, ldc);
              slab_codes = copied;
            }
          }
          const CodeParameters slab_parameters = parameters.from_row(top);
          for (int64_t row = 0; row < rows; row += kStreamedRowsMax) {
            stream(
                std::min(kStreamedRowsMax, rows - row),
                {lhs.const_data_ptr<float>() + row * depth + top, depth, 0, height, slab_codes, ldw, &slab_parameters,
                 first, count, range_sums + row * columns + first, columns, block_sums.mutable_data_ptr<float>()});
          }
        }
      }
    }
  });
  return ranges == 1 ? sums[0] : sums.sum(0);
}

template at::Tensor streamed(const at::Tensor&, const at::Tensor&, const std::optional<BlockedLayout>&,
                             const CodeParameters&, StreamFn<int8_t>*);
template at::Tensor streamed(const at::Tensor&, const at::Tensor&, const std::optional<BlockedLayout>&,
                             const CodeParameters&, StreamFn<at::Half>*);

// Rows a group of up to kBlockedStreamRows at a time. The weight's rows are split into a part per
// thread (each part's codes in every range of block_depth columns contiguous), each thread
// summing its part over every range, so that the threads' shares are equal whatever the number
// of ranges (768 columns are a range of 512 and one of 256); the parts' sums are added at the
// end, in a fixed order.
at::Tensor stream_blocked(const at::Tensor& lhs, const int8_t* packed, const BlockedLayout& layout,
                          const float* zero_point) {
  const int64_t rows = lhs.size(0), depth = lhs.size(1);
  const int64_t column_ranges = (layout.columns + layout.block_depth - 1) / layout.block_depth;
  const int64_t parts = ranges_of(depth);
  auto sums = at::empty({parts, rows, layout.columns}, lhs.options());
  const float* source = lhs.const_data_ptr<float>();
  at::parallel_for(0, column_ranges * parts, 1, [&](int64_t begin, int64_t end) {
    auto partial =
        at::empty({std::min(rows, kBlockedStreamRows) * round_up(layout.block_depth, 4) * 16}, lhs.options());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t part = task / column_ranges, range = task % column_ranges;
      const int64_t n_begin = piece_start(depth, parts, part, 16), n_end = piece_start(depth, parts, part + 1, 16);
      float* part_sums = sums[part].mutable_data_ptr<float>();
      for (int64_t row = 0; row < rows; row += kBlockedStreamRows) {
        kernels().stream_blocked(std::min(kBlockedStreamRows, rows - row), source + row * depth, depth, packed, layout,
                                 zero_point, range * layout.block_depth, n_begin, n_end,
                                 partial.mutable_data_ptr<float>(), part_sums + row * layout.columns, layout.columns);
      }
    }
  });
  return parts == 1 ? sums[0] : sums.sum(0);
}

// Each thread takes a range of columns, a chunk of them at a time (their partial sums in L1).
at::Tensor stream_int4(const at::Tensor& lhs, const Int4Pack& pack) {
  auto result = at::empty({lhs.size(0), pack.columns}, lhs.options());
  const int64_t tasks = std::min<int64_t>(at::get_num_threads(), pack.columns / 16);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first = piece_start(pack.columns, tasks, task, 16);
      const int64_t count = piece_start(pack.columns, tasks, task + 1, 16) - first;
      auto partial = at::empty({count * lhs.size(0) * 16}, lhs.options());
      kernels().int4_stream(pack, lhs.size(0), lhs.const_data_ptr<float>(), lhs.size(1), first, count,
                            partial.mutable_data_ptr<float>(), result.mutable_data_ptr<float>(), pack.columns);
    }
  });
  return result;
}

} // namespace qlgrad::math
