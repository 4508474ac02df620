#include "tiled_matmul.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace qlgrad::math {
namespace {

// Up to this many rows the product is bound by reading the weight, not by arithmetic: one
// pass over the stored codes (a quarter of float32's bytes) with the rows accumulated side
// by side beats converting tiles for a GEMM.
constexpr int64_t kStreamedRowsMax = 4;
// Columns one streaming task accumulates: its float32 accumulators (rows x columns) stay in
// L1, and each weight row is read in runs of whole cache lines.
constexpr int64_t kStreamedColumnsMax = 512;
// A converted tile stays in L2 while the GEMM reads it.
constexpr int64_t kTileBytes = int64_t{1} << 20;
constexpr int64_t kCacheLine = 64;

int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Columns per task such that every thread gets work (the column count of the output is
// often only a few times the tile width), at most `widest`.
int64_t columns_per_task(int64_t columns, int64_t widest, int64_t multiple) {
  const int64_t per_thread = round_up((columns + at::get_num_threads() - 1) / at::get_num_threads(), multiple);
  return std::clamp<int64_t>(per_thread, multiple, widest);
}

template <typename Code>
[[gnu::always_inline]] inline float code_value(Code code) {
  return static_cast<float>(code);
}

template <>
[[gnu::always_inline]] inline float code_value(at::Half code) {
  return c10::detail::fp16_ieee_to_fp32_value(code.x);
}

// out[r, c] = sum_n lhs[r, n] * (weight[n, c] - zero_point[n]) for Rows rows and one block
// of columns, reading each weight row once for all rows. The sum runs in blocks of
// kDepthBlock terms added up apart, so its rounding error grows as a GEMM's does rather
// than with the full depth.
template <int64_t Rows, typename Code>
[[gnu::always_inline]] inline void stream_rows(const float* lhs, int64_t depth, const Code* weight, int64_t ldw,
                                                const int32_t* zero_point, int64_t columns, float* out,
                                                int64_t ldo) {
  constexpr int64_t kDepthBlock = 128;
  constexpr int64_t kPrefetchRows = 8;
  alignas(64) float sums[Rows][kStreamedColumnsMax] = {};
  alignas(64) float block_sums[Rows][kStreamedColumnsMax];
  for (int64_t first = 0; first < depth; first += kDepthBlock) {
    std::memset(block_sums, 0, sizeof(block_sums));
    for (int64_t n = first; n < std::min(depth, first + kDepthBlock); ++n) {
      const Code* row = weight + n * ldw;
      if (n + kPrefetchRows < depth) {
        // Each row lies in another page when the weight is wide, where hardware prefetchers stop.
        for (int64_t c = 0; c < columns * int64_t{sizeof(Code)}; c += kCacheLine) {
          __builtin_prefetch(reinterpret_cast<const char*>(row + kPrefetchRows * ldw) + c);
        }
      }
      const float offset = zero_point == nullptr ? 0.0f : static_cast<float>(zero_point[n]);
      float factor[Rows];
      for (int64_t r = 0; r < Rows; ++r) {
        factor[r] = lhs[r * depth + n];
      }
#pragma omp simd
      for (int64_t c = 0; c < columns; ++c) {
        const float value = code_value(row[c]) - offset;
        for (int64_t r = 0; r < Rows; ++r) {
          block_sums[r][c] += factor[r] * value;
        }
      }
    }
    for (int64_t r = 0; r < Rows; ++r) {
#pragma omp simd
      for (int64_t c = 0; c < columns; ++c) {
        sums[r][c] += block_sums[r][c];
      }
    }
  }
  for (int64_t r = 0; r < Rows; ++r) {
    std::memcpy(out + r * ldo, sums[r], columns * sizeof(float));
  }
}

template <typename Code>
[[gnu::always_inline]] inline void stream_rows_dispatch(int64_t rows, const float* lhs, int64_t depth,
                                                         const Code* weight, int64_t ldw, const int32_t* zero_point,
                                                         int64_t columns, float* out, int64_t ldo) {
  switch (rows) {
    case 1: return stream_rows<1>(lhs, depth, weight, ldw, zero_point, columns, out, ldo);
    case 2: return stream_rows<2>(lhs, depth, weight, ldw, zero_point, columns, out, ldo);
    case 3: return stream_rows<3>(lhs, depth, weight, ldw, zero_point, columns, out, ldo);
    default: return stream_rows<4>(lhs, depth, weight, ldw, zero_point, columns, out, ldo);
  }
}

// Multiversioned entry points: the loops above vectorize to AVX-512 or AVX2 where the CPU
// has them.
#define QLGRAD_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))

QLGRAD_VECTOR_CLONES void stream_int8_rows(int64_t rows, const float* lhs, int64_t depth, const int8_t* weight,
                                           int64_t ldw, const int32_t* zero_point, int64_t columns, float* out,
                                           int64_t ldo) {
  stream_rows_dispatch(rows, lhs, depth, weight, ldw, zero_point, columns, out, ldo);
}

QLGRAD_VECTOR_CLONES void stream_half_rows(int64_t rows, const float* lhs, int64_t depth, const at::Half* weight,
                                           int64_t ldw, const int32_t* zero_point, int64_t columns, float* out,
                                           int64_t ldo) {
  stream_rows_dispatch(rows, lhs, depth, weight, ldw, zero_point, columns, out, ldo);
}

void stream_rows(const float* lhs, int64_t rows, int64_t depth, const int8_t* weight, int64_t ldw,
                 const int32_t* zero_point, int64_t columns, float* out, int64_t ldo) {
  stream_int8_rows(rows, lhs, depth, weight, ldw, zero_point, columns, out, ldo);
}

void stream_rows(const float* lhs, int64_t rows, int64_t depth, const at::Half* weight, int64_t ldw,
                 const int32_t* zero_point, int64_t columns, float* out, int64_t ldo) {
  stream_half_rows(rows, lhs, depth, weight, ldw, zero_point, columns, out, ldo);
}

// tile[n, c] = weight[n, c] - zero_point[n] in Element, for a block of `columns` columns.
template <typename Element, typename Code>
[[gnu::always_inline]] inline void convert_tile(const Code* weight, int64_t ldw, const int32_t* zero_point,
                                                 int64_t depth, int64_t columns, Element* tile) {
  for (int64_t n = 0; n < depth; ++n) {
    const Code* row = weight + n * ldw;
    Element* out = tile + n * columns;
    const float offset = zero_point == nullptr ? 0.0f : static_cast<float>(zero_point[n]);
#pragma omp simd
    for (int64_t c = 0; c < columns; ++c) {
      const float value = code_value(row[c]) - offset;
      if constexpr (std::is_same_v<Element, float>) {
        out[c] = value;
      } else if constexpr (std::is_same_v<Code, int8_t>) {
        // An integer of magnitude <= 255 has no bits below bfloat16's: truncation is exact.
        uint32_t bits;
        std::memcpy(&bits, &value, sizeof(bits));
        out[c] = c10::BFloat16(static_cast<uint16_t>(bits >> 16), c10::BFloat16::from_bits());
      } else {
        out[c] = c10::BFloat16(value);  // rounds to nearest even
      }
    }
  }
}

#define QLGRAD_CONVERT_TILE(Element, Code)                                                                    \
  QLGRAD_VECTOR_CLONES void convert_tile_##Element##_##Code(const Code* weight, int64_t ldw,                  \
                                                            const int32_t* zero_point, int64_t depth,         \
                                                            int64_t columns, Element* tile) {                  \
    convert_tile(weight, ldw, zero_point, depth, columns, tile);                                               \
  }                                                                                                            \
  void convert(const Code* weight, int64_t ldw, const int32_t* zero_point, int64_t depth, int64_t columns,     \
               Element* tile) {                                                                                \
    convert_tile_##Element##_##Code(weight, ldw, zero_point, depth, columns, tile);                            \
  }

using BFloat16 = at::BFloat16;
using Half = at::Half;
QLGRAD_CONVERT_TILE(float, int8_t)
QLGRAD_CONVERT_TILE(BFloat16, int8_t)
QLGRAD_CONVERT_TILE(float, Half)
QLGRAD_CONVERT_TILE(BFloat16, Half)
#undef QLGRAD_CONVERT_TILE

template <typename Code>
at::Tensor streamed(const at::Tensor& lhs, const at::Tensor& weight, const int32_t* zero_point) {
  const int64_t rows = lhs.size(0), depth = lhs.size(1), columns = weight.size(1);
  auto result = at::empty({rows, columns}, lhs.options());
  const int64_t width = columns_per_task(columns, kStreamedColumnsMax, kCacheLine);
  const auto* codes = weight.const_data_ptr<Code>();
  at::parallel_for(0, (columns + width - 1) / width, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first = task * width;
      stream_rows(lhs.const_data_ptr<float>(), rows, depth, codes + first, weight.stride(0), zero_point,
                  std::min(width, columns - first), result.mutable_data_ptr<float>() + first, columns);
    }
  });
  return result;
}

// Column blocks of the weight, each converted whole (all N rows, so the GEMM on it runs
// at full depth and the output block is written once) into a tile of the thread's own, and
// multiplied there; the blocks are spread over the threads.
template <typename Element, typename Code>
at::Tensor tiled(const at::Tensor& lhs, const at::Tensor& weight, const int32_t* zero_point) {
  const int64_t rows = lhs.size(0), depth = lhs.size(1), columns = weight.size(1);
  auto result = at::empty({rows, columns}, lhs.options());
  constexpr int64_t kAlign = kCacheLine / sizeof(Element);
  const int64_t widest = std::max(kAlign, kTileBytes / int64_t{sizeof(Element)} / depth / kAlign * kAlign);
  const int64_t width = columns_per_task(columns, widest, kAlign);
  const auto* codes = weight.const_data_ptr<Code>();
  at::parallel_for(0, (columns + width - 1) / width, 1, [&](int64_t begin, int64_t end) {
    auto tile = at::empty({depth, width}, lhs.options());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first = task * width, count = std::min(width, columns - first);
      // The first depth x count elements, so that the tile is contiguous at every width.
      auto block = tile.view(-1).narrow(0, 0, depth * count).view({depth, count});
      convert(codes + first, weight.stride(0), zero_point, depth, count, block.mutable_data_ptr<Element>());
      auto out = result.narrow(1, first, count);
      at::mm_out(out, lhs, block);
    }
  });
  return result;
}

template <typename Code>
at::Tensor tiled_matmul_of(const at::Tensor& lhs, const at::Tensor& weight, const int32_t* zero_point) {
  if (lhs.scalar_type() == at::kBFloat16) {
    return tiled<BFloat16, Code>(lhs, weight, zero_point);
  }
  if (lhs.size(0) <= kStreamedRowsMax) {
    return streamed<Code>(lhs, weight, zero_point);
  }
  return tiled<float, Code>(lhs, weight, zero_point);
}

} // namespace

at::Tensor tiled_matmul(const at::Tensor& lhs, const at::Tensor& weight, const std::optional<at::Tensor>& zero_point) {
  TORCH_INTERNAL_ASSERT(lhs.dim() == 2 && lhs.is_contiguous() && weight.dim() == 2 && lhs.size(1) == weight.size(0));
  TORCH_INTERNAL_ASSERT(weight.stride(1) == 1 || weight.size(1) == 1);
  TORCH_INTERNAL_ASSERT(lhs.scalar_type() == at::kFloat || lhs.scalar_type() == at::kBFloat16);
  TORCH_INTERNAL_ASSERT(!zero_point || (zero_point->scalar_type() == at::kInt && zero_point->is_contiguous() &&
                                        zero_point->numel() == weight.size(0)));
  if (lhs.numel() == 0 || weight.size(1) == 0) {
    return at::zeros({lhs.size(0), weight.size(1)}, lhs.options());
  }
  const int32_t* offsets = zero_point ? zero_point->const_data_ptr<int32_t>() : nullptr;
  switch (weight.scalar_type()) {
    case at::kChar:
      return tiled_matmul_of<int8_t>(lhs, weight, offsets);
    case at::kHalf:
      return tiled_matmul_of<Half>(lhs, weight, offsets);
    default:
      TORCH_INTERNAL_ASSERT(false, "tiled_matmul: weight dtype ", weight.scalar_type());
  }
}

} // namespace qlgrad::math
