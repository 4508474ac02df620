// float32 products of int8 codes on AMX tiles as three bfloat16 products (three_part_product in
// matmul_strategies.h): the gradient split into three bfloat16 parts that sum to it exactly
// (kernels().split_three_bfloat16), the parts stacked as the rows of one panel GEMM in bfloat16
// products, the three sums added and each row's power of two undone, rows in parallel.

#include "matmul_strategies.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

namespace qlgrad::math {
namespace {

// Rows go kThreePartChunkRows at a time: the whole of 2048 rows, in fresh pages on every call, took
// as long as the products. The parts and sums (up to 10 MiB each for a gradient 3072 wide, 36 MiB
// together at 4096) are allocated per call, not kept as scratch (scratch.h): glibc does return
// them to the system between calls in some loops (1024 x 4096 -> 4096 on a Sapphire Rapids Xeon:
// 76-80 ms a call, 60 ms with them kept), but kept per thread they left a float32-base decoder's
// LoRA step 25 MB larger after its steps (bench/llm.py, qd-fp32), no faster.
constexpr int64_t kThreePartChunkRows = 512;

} // namespace

at::Tensor three_part_product(const at::Tensor& lhs, const std::optional<at::Tensor>& row_scale,
                              const WeightReader& reader) {
  const int64_t rows = lhs.size(0), depth = lhs.size(1), columns = reader.columns();
  const int64_t part_rows = std::min(round_up(rows, kAmxBlockRows), kThreePartChunkRows);
  // Rows a cache line past a multiple of 1 KiB apart, which the tiles read where they lie.
  int64_t ldp = round_up(depth, 32);
  if (ldp * int64_t{sizeof(at::BFloat16)} % 1024 == 0) {
    ldp += 32;
  }
  auto parts = at::empty({3 * part_rows, ldp}, lhs.options().dtype(at::kBFloat16));
  auto row_factors = at::empty({part_rows}, lhs.options());
  auto result = at::empty({rows, columns}, lhs.options());
  const float* factors = row_scale ? row_scale->const_data_ptr<float>() : nullptr;
  const int64_t factor_stride = row_scale && row_scale->numel() > 1 ? 1 : 0;
  for (int64_t top = 0; top < rows; top += part_rows) {
    const int64_t count = std::min(part_rows, rows - top);
    for (int64_t part = 0; part < 3; ++part) {
      parts.narrow(0, part * part_rows + count, part_rows - count).zero_();
    }
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(depth, 1));
    at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
      kernels().split_three_bfloat16(lhs.const_data_ptr<float>() + (top + begin) * depth, depth, end - begin, depth,
                                     factors, factor_stride, parts.mutable_data_ptr<at::BFloat16>() + begin * ldp, ldp,
                                     part_rows * ldp, row_factors.mutable_data_ptr<float>() + begin);
    });
    const auto sums = panel_gemm(parts.narrow(1, 0, depth), reader, std::nullopt, at::kBFloat16);
    const float* first = sums.const_data_ptr<float>();
    const float* second = first + part_rows * columns;
    const float* third = second + part_rows * columns;
    const float* undo = row_factors.const_data_ptr<float>();
    float* out = result.mutable_data_ptr<float>() + top * columns;
    at::parallel_for(0, count, std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(columns, 1)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t row = begin; row < end; ++row) {
                         for (int64_t c = row * columns; c < (row + 1) * columns; ++c) {
                           out[c] = (first[c] + second[c] + third[c]) * undo[row];
                         }
                       }
                     });
  }
  return result;
}

} // namespace qlgrad::math
