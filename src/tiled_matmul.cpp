#include "tiled_matmul.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
// GCC 12 warns that its own AVX-512 intrinsics read an uninitialized register (GCC bug
// 105593, fixed in 13): the "undefined" source operand of an unmasked conversion.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
// Clones for AVX-512 and AVX2 where the CPU has them, chosen when the library loads.
#define QLGRAD_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define QLGRAD_VECTOR_CLONES
#endif

namespace qlgrad::math {
namespace {

// Up to this many rows the product is bound by reading the weight, not by arithmetic: one
// pass over the stored codes (a quarter of float32's bytes) with the rows accumulated side
// by side beats converting tiles for a GEMM.
constexpr int64_t kStreamedRowsMax = 8;
// A thread streams at least this many weight rows, or the streaming is not split.
constexpr int64_t kStreamedRowsPerRangeMin = 256;
// The block sums a stream keeps in L1.
constexpr int64_t kStreamedSumBytes = 32 << 10;
// A converted float32 tile stays in L2 while the GEMM reads it, with up to this many columns.
constexpr int64_t kTileBytes = int64_t{1} << 20;
constexpr int64_t kTileColumnsMax = 1024;
// A bfloat16 tile holds every row of its columns.
constexpr int64_t kFullDepthTileBytes = int64_t{4} << 20;
constexpr int64_t kCacheLine = 64;

int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Columns per task, at most `widest`, such that the tasks are a multiple of the threads: the
// output is often only a few tile widths wide, and 3 tasks on 2 threads take as long as 4.
int64_t columns_per_task(int64_t columns, int64_t widest, int64_t multiple) {
  const int64_t threads = at::get_num_threads();
  const int64_t tasks = threads * ((columns + threads * widest - 1) / (threads * widest));
  return std::clamp<int64_t>(round_up((columns + tasks - 1) / tasks, multiple), multiple, widest);
}

template <typename Code>
[[gnu::always_inline]] inline float code_value(Code code) {
  return static_cast<float>(code);
}

template <>
[[gnu::always_inline]] inline float code_value(at::Half code) {
  return c10::detail::fp16_ieee_to_fp32_value(code.x);
}

// A stream over weight rows [begin, end) and `columns` columns:
//   sums[r, c] += sum_n lhs[r, n] * (weight[n, c] - zero_point[n])
// for Rows rows of lhs, reading each weight row once for all of them. The sum runs in
// blocks of kDepthBlock rows added up apart (in block_sums, Rows x columns), so its rounding
// error grows as a GEMM's does rather than with the full depth.
template <int64_t Rows, typename Code>
[[gnu::always_inline]] inline void stream_rows(const float* lhs, int64_t ldl, int64_t begin, int64_t end,
                                               const Code* weight, int64_t ldw, const float* zero_point,
                                               int64_t columns, float* sums, int64_t lds, float* block_sums) {
  constexpr int64_t kDepthBlock = 128;
  for (int64_t first = begin; first < end; first += kDepthBlock) {
    std::fill(block_sums, block_sums + Rows * columns, 0.0f);
    for (int64_t n = first; n < std::min(end, first + kDepthBlock); ++n) {
      const Code* row = weight + n * ldw;
      const float offset = zero_point == nullptr ? 0.0f : zero_point[n];
      float factor[Rows];
      for (int64_t r = 0; r < Rows; ++r) {
        factor[r] = lhs[r * ldl + n];
      }
#pragma omp simd
      for (int64_t c = 0; c < columns; ++c) {
        const float value = code_value(row[c]) - offset;
        for (int64_t r = 0; r < Rows; ++r) {
          block_sums[r * columns + c] += factor[r] * value;
        }
      }
    }
    for (int64_t r = 0; r < Rows; ++r) {
#pragma omp simd
      for (int64_t c = 0; c < columns; ++c) {
        sums[r * lds + c] += block_sums[r * columns + c];
      }
    }
  }
}

// The stream for 1 to kStreamedRowsMax rows.
template <typename Code>
QLGRAD_VECTOR_CLONES void stream(int64_t rows, const float* lhs, int64_t ldl, int64_t begin, int64_t end,
                                 const Code* weight, int64_t ldw, const float* zero_point, int64_t columns, float* sums,
                                 int64_t lds, float* block_sums) {
  switch (rows) {
    case 1: return stream_rows<1>(lhs, ldl, begin, end, weight, ldw, zero_point, columns, sums, lds, block_sums);
    case 2: return stream_rows<2>(lhs, ldl, begin, end, weight, ldw, zero_point, columns, sums, lds, block_sums);
    case 3: return stream_rows<3>(lhs, ldl, begin, end, weight, ldw, zero_point, columns, sums, lds, block_sums);
    case 4: return stream_rows<4>(lhs, ldl, begin, end, weight, ldw, zero_point, columns, sums, lds, block_sums);
    case 5: return stream_rows<5>(lhs, ldl, begin, end, weight, ldw, zero_point, columns, sums, lds, block_sums);
    case 6: return stream_rows<6>(lhs, ldl, begin, end, weight, ldw, zero_point, columns, sums, lds, block_sums);
    case 7: return stream_rows<7>(lhs, ldl, begin, end, weight, ldw, zero_point, columns, sums, lds, block_sums);
    default: return stream_rows<8>(lhs, ldl, begin, end, weight, ldw, zero_point, columns, sums, lds, block_sums);
  }
}

// Each thread streams its own range of weight rows, one contiguous region of memory that
// hardware prefetchers follow page after page, into sums of its own; the sums of the
// ranges are added at the end, in a fixed order. The rows are read whole where the block
// sums of every column fit in L1 (one or two rows of lhs), else in column chunks that do.
template <typename Code>
at::Tensor streamed(const at::Tensor& lhs, const at::Tensor& weight, const float* zero_point) {
  const int64_t rows = lhs.size(0), depth = lhs.size(1), columns = weight.size(1);
  const int64_t ranges = std::clamp<int64_t>(depth / kStreamedRowsPerRangeMin, 1, at::get_num_threads());
  const int64_t chunk = std::max<int64_t>(kCacheLine, kStreamedSumBytes / int64_t{sizeof(float)} / rows);
  auto sums = at::zeros({ranges, rows, columns}, lhs.options());
  const auto* codes = weight.const_data_ptr<Code>();
  at::parallel_for(0, ranges, 1, [&](int64_t begin, int64_t end) {
    auto block_sums = at::empty({rows * std::min(chunk, columns)}, lhs.options());
    for (int64_t range = begin; range < end; ++range) {
      for (int64_t first = 0; first < columns; first += chunk) {
        stream(rows, lhs.const_data_ptr<float>(), depth, depth * range / ranges, depth * (range + 1) / ranges,
               codes + first, weight.stride(0), zero_point, std::min(chunk, columns - first),
               sums[range].mutable_data_ptr<float>() + first, columns, block_sums.mutable_data_ptr<float>());
      }
    }
  });
  return ranges == 1 ? sums[0] : sums.sum(0);
}

// tile[n, :] = codes[n, :] - zero_point[n] for an int8 block of `depth` rows and `columns`
// columns, as float32 or as bfloat16. For bfloat16 the float32 value is cut to its upper
// half: the codes minus a zero point are integers of magnitude <= 255, whose lower half is
// zero, so this is exact. Written with intrinsics: GCC lowers an int8-to-float conversion
// of generic vectors lane by lane.
template <typename Element>
void convert_codes_portable(const int8_t* codes, int64_t ldw, const float* zero_point, int64_t depth, int64_t columns,
                            Element* tile) {
  for (int64_t n = 0; n < depth; ++n) {
    const int8_t* row = codes + n * ldw;
    const float offset = zero_point == nullptr ? 0.0f : zero_point[n];
    for (int64_t c = 0; c < columns; ++c) {
      const float value = static_cast<float>(row[c]) - offset;
      if constexpr (std::is_same_v<Element, float>) {
        tile[n * columns + c] = value;
      } else {
        uint32_t bits;
        std::memcpy(&bits, &value, sizeof(bits));
        tile[n * columns + c] = at::BFloat16(static_cast<uint16_t>(bits >> 16), at::BFloat16::from_bits());
      }
    }
  }
}

#if defined(__x86_64__)
template <typename Element>
__attribute__((target("avx512f,avx512bw"))) void convert_codes_avx512(const int8_t* codes, int64_t ldw,
                                                                      const float* zero_point, int64_t depth,
                                                                      int64_t columns, Element* tile) {
  constexpr int64_t kLanes = 16;
  const int64_t vectorized = columns / kLanes * kLanes;
  for (int64_t n = 0; n < depth; ++n) {
    const int8_t* row = codes + n * ldw;
    Element* out = tile + n * columns;
    const __m512 offset = _mm512_set1_ps(zero_point == nullptr ? 0.0f : zero_point[n]);
    for (int64_t c = 0; c < vectorized; c += kLanes) {
      const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c));
      const __m512 values = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(packed)), offset);
      if constexpr (std::is_same_v<Element, float>) {
        _mm512_storeu_ps(out + c, values);
      } else {
        const __m256i upper = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(values), 16));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c), upper);
      }
    }
    convert_codes_portable(row + vectorized, ldw, zero_point == nullptr ? nullptr : zero_point + n, 1,
                           columns - vectorized, out + vectorized);
  }
}

template <typename Element>
__attribute__((target("avx2"))) void convert_codes_avx2(const int8_t* codes, int64_t ldw, const float* zero_point,
                                                        int64_t depth, int64_t columns, Element* tile) {
  constexpr int64_t kLanes = 8;
  const int64_t vectorized = columns / kLanes * kLanes;
  for (int64_t n = 0; n < depth; ++n) {
    const int8_t* row = codes + n * ldw;
    Element* out = tile + n * columns;
    const __m256 offset = _mm256_set1_ps(zero_point == nullptr ? 0.0f : zero_point[n]);
    for (int64_t c = 0; c < vectorized; c += kLanes) {
      const __m128i packed = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c));
      const __m256 values = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(packed)), offset);
      if constexpr (std::is_same_v<Element, float>) {
        _mm256_storeu_ps(out + c, values);
      } else {
        // The upper halves, packed within each 128-bit lane, then the lanes' lower quarters joined.
        const __m256i upper = _mm256_srli_epi32(_mm256_castps_si256(values), 16);
        const __m256i packed_words = _mm256_permute4x64_epi64(_mm256_packus_epi32(upper, upper), 0b1000);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c), _mm256_castsi256_si128(packed_words));
      }
    }
    convert_codes_portable(row + vectorized, ldw, zero_point == nullptr ? nullptr : zero_point + n, 1,
                           columns - vectorized, out + vectorized);
  }
}

// The float32 product from int8 codes in a GEMM of its own, for the AVX-512 CPUs it is
// measured on. Laid out as GEMMs are (Goto and van de Geijn): each thread takes a block of
// columns; per block of depth it converts the codes once into panels of 32 columns (the
// form a GEMM packs its weight into anyway, so the conversion is the packing), packs the
// rows of lhs by 12, and multiplies 12 rows by a panel with the 12 x 32 sums held in
// registers. MKL's GEMM cannot take this path: it would pack the converted tile again.
constexpr int64_t kPanelColumns = 32;
// 24 accumulators, 2 panel registers and a broadcast, of the 32 vector registers.
constexpr int64_t kKernelRows = 12;
// A panel of this depth (32 KiB) stays in L1 while 12 rows at a time run against it.
constexpr int64_t kDepthBlock = 256;
// Rows run against a depth block's panels at once: their slice of lhs (144 KiB) stays in L2.
constexpr int64_t kRowBlock = 144;
// Columns a thread takes at once: their panels (1 MiB) stay in L2 across row blocks.
constexpr int64_t kBlockColumns = 1024;
// From this many rows MKL's GEMM on converted tiles is the faster (measured, 2 threads, at
// 1024 rows: 1.10-1.14x the float GEMM against 1.20-1.33x); it blocks deeper for many rows.
constexpr int64_t kPanelGemmRowsEnd = 512;

#define QLGRAD_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

// The first `columns` of 16 lanes.
QLGRAD_AVX512 __mmask16 lanes_mask(int64_t columns) {
  return columns >= 16 ? __mmask16(0xFFFF) : columns <= 0 ? __mmask16(0) : __mmask16((1u << columns) - 1);
}

// out[r, 0:32] (+)= sum_n lhs[n, r] * panel[n, 0:32] for Rows rows of a packed block of lhs
// ([depth][kKernelRows]); `width` columns of out exist.
template <int64_t Rows>
QLGRAD_AVX512 void panel_kernel(const float* lhs, const float* panel, int64_t depth, float* out, int64_t ldo,
                                int64_t width, bool accumulate) {
  __m512 low[Rows], high[Rows];
#pragma GCC unroll 12
  for (int64_t r = 0; r < Rows; ++r) {
    low[r] = _mm512_setzero_ps();
    high[r] = _mm512_setzero_ps();
  }
  for (int64_t n = 0; n < depth; ++n) {
    const __m512 panel_low = _mm512_loadu_ps(panel + n * kPanelColumns);
    const __m512 panel_high = _mm512_loadu_ps(panel + n * kPanelColumns + 16);
#pragma GCC unroll 12
    for (int64_t r = 0; r < Rows; ++r) {
      const __m512 factor = _mm512_set1_ps(lhs[n * kKernelRows + r]);
      low[r] = _mm512_fmadd_ps(factor, panel_low, low[r]);
      high[r] = _mm512_fmadd_ps(factor, panel_high, high[r]);
    }
  }
  const __mmask16 low_mask = lanes_mask(width), high_mask = lanes_mask(width - 16);
#pragma GCC unroll 12
  for (int64_t r = 0; r < Rows; ++r) {
    float* row = out + r * ldo;
    if (accumulate) {
      low[r] = _mm512_add_ps(low[r], _mm512_maskz_loadu_ps(low_mask, row));
      high[r] = _mm512_add_ps(high[r], _mm512_maskz_loadu_ps(high_mask, row + 16));
    }
    _mm512_mask_storeu_ps(row, low_mask, low[r]);
    _mm512_mask_storeu_ps(row + 16, high_mask, high[r]);
  }
}

// panel_kernel for 1 to kKernelRows rows.
template <int64_t Rows = kKernelRows>
QLGRAD_AVX512 void panel_rows(int64_t rows, const float* lhs, const float* panel, int64_t depth, float* out,
                              int64_t ldo, int64_t width, bool accumulate) {
  if constexpr (Rows > 1) {
    if (rows < Rows) {
      return panel_rows<Rows - 1>(rows, lhs, panel, depth, out, ldo, width, accumulate);
    }
  }
  panel_kernel<Rows>(lhs, panel, depth, out, ldo, width, accumulate);
}

// codes[0:depth, 0:count] - zero_point as panels of kPanelColumns columns, each
// [depth][kPanelColumns] (zero beyond `count`), one after the other. A few rows at a time,
// whose codes stay in L1 while each panel's share is written as one contiguous run: a row
// at a time would store to every panel, kilobytes apart, in the same few L1 sets; a panel
// at a time would read each row from a page of its own.
QLGRAD_AVX512 void convert_panels(const int8_t* codes, int64_t ldw, const float* zero_point, int64_t depth,
                                  int64_t count, float* panels) {
  constexpr int64_t kRowsAtOnce = 16;
  for (int64_t top = 0; top < depth; top += kRowsAtOnce) {
    for (int64_t column = 0; column < count; column += kPanelColumns) {
      const __mmask16 low_mask = lanes_mask(count - column), high_mask = lanes_mask(count - column - 16);
      float* panel = panels + column * depth;
      for (int64_t n = top; n < std::min(depth, top + kRowsAtOnce); ++n) {
        const int8_t* row = codes + n * ldw + column;
        const __m512 offset = _mm512_set1_ps(zero_point == nullptr ? 0.0f : zero_point[n]);
        const __m512 low = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(low_mask, row)));
        const __m512 high = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(high_mask, row + 16)));
        _mm512_storeu_ps(panel + n * kPanelColumns, _mm512_maskz_sub_ps(low_mask, low, offset));
        _mm512_storeu_ps(panel + n * kPanelColumns + 16, _mm512_maskz_sub_ps(high_mask, high, offset));
      }
    }
  }
}

// lhs [rows, depth] times the weight's scale (per row of the weight, or one for all, or none) as
// blocks of kKernelRows rows, each [depth][kKernelRows] (zero past the last row), once for
// all threads: the kernel reads a step's 12 factors from one or two cache lines, where 12
// rows of lhs a power of two apart would compete for the same L1 sets.
at::Tensor pack_rows(const at::Tensor& lhs, const std::optional<at::Tensor>& scale) {
  const int64_t rows = lhs.size(0), depth = lhs.size(1);
  auto packed = at::empty({(rows + kKernelRows - 1) / kKernelRows, depth, kKernelRows}, lhs.options());
  const float* source = lhs.const_data_ptr<float>();
  const float* factors = scale ? scale->const_data_ptr<float>() : nullptr;
  const int64_t factor_stride = scale && scale->numel() > 1 ? 1 : 0;
  float* destination = packed.mutable_data_ptr<float>();
  at::parallel_for(0, packed.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const float* block_rows = source + block * kKernelRows * depth;
      float* block_out = destination + block * kKernelRows * depth;
      const int64_t count = std::min(kKernelRows, rows - block * kKernelRows);
      for (int64_t n = 0; n < depth; ++n) {
        const float factor = factors == nullptr ? 1.0f : factors[n * factor_stride];
        for (int64_t r = 0; r < kKernelRows; ++r) {
          block_out[n * kKernelRows + r] = r < count ? block_rows[r * depth + n] * factor : 0.0f;
        }
      }
    }
  });
  return packed;
}

// Splits of `extent` into `parts` near-equal pieces, the i-th starting at piece_start(i).
int64_t piece_start(int64_t extent, int64_t parts, int64_t i) {
  return extent * i / parts;
}

// result[:, first:first + count] = lhs @ (codes - zero_point)[:, first:first + count], from
// lhs packed by pack_rows, with room in `panels` for kDepthBlock x count floats. Each depth
// block's sums are added to the last's in the output.
QLGRAD_AVX512 void panel_gemm_columns(const at::Tensor& packed_lhs, int64_t rows, const at::Tensor& weight,
                                      const float* zero_point, int64_t first, int64_t count, at::Tensor& result,
                                      float* panels) {
  const int64_t depth = weight.size(0), ldw = weight.stride(0), ldr = result.stride(0);
  const float* lhs = packed_lhs.const_data_ptr<float>();
  const int8_t* codes = weight.const_data_ptr<int8_t>();
  float* out = result.mutable_data_ptr<float>();
  const int64_t depth_blocks = (depth + kDepthBlock - 1) / kDepthBlock;
  const int64_t row_blocks = (rows + kRowBlock - 1) / kRowBlock;
  const int64_t row_step = round_up((rows + row_blocks - 1) / row_blocks, kKernelRows);
  for (int64_t block = 0; block < depth_blocks; ++block) {
    const int64_t top = piece_start(depth, depth_blocks, block);
    const int64_t height = piece_start(depth, depth_blocks, block + 1) - top;
    convert_panels(codes + top * ldw + first, ldw, zero_point == nullptr ? nullptr : zero_point + top, height, count,
                   panels);
    // Rows a block at a time, whose slice of lhs stays in L2 across the panels.
    for (int64_t row_first = 0; row_first < rows; row_first += row_step) {
      const int64_t row_last = std::min(rows, row_first + row_step);
      for (int64_t column = 0; column < count; column += kPanelColumns) {
        for (int64_t row = row_first; row < row_last; row += kKernelRows) {
          panel_rows(std::min(kKernelRows, row_last - row), lhs + (row * depth + top * kKernelRows),
                     panels + column * height, height, out + row * ldr + first + column, ldr, count - column,
                     /*accumulate=*/block > 0);
        }
      }
    }
  }
}

at::Tensor panel_gemm(const at::Tensor& lhs, const at::Tensor& weight, const float* zero_point,
                      const std::optional<at::Tensor>& scale) {
  const int64_t columns = weight.size(1);
  const int64_t width = columns_per_task(columns, kBlockColumns, kPanelColumns);
  const auto packed_lhs = pack_rows(lhs, scale);
  auto result = at::empty({lhs.size(0), columns}, lhs.options());
  at::parallel_for(0, (columns + width - 1) / width, 1, [&](int64_t begin, int64_t end) {
    auto panels = at::empty({kDepthBlock * width}, lhs.options());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first = task * width;
      panel_gemm_columns(packed_lhs, lhs.size(0), weight, zero_point, first, std::min(width, columns - first), result,
                         panels.mutable_data_ptr<float>());
    }
  });
  return result;
}

#endif

template <typename Element>
void convert_codes(const int8_t* codes, int64_t ldw, const float* zero_point, int64_t depth, int64_t columns,
                   Element* tile) {
#if defined(__x86_64__)
  static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx512) {
    return convert_codes_avx512(codes, ldw, zero_point, depth, columns, tile);
  }
  if (avx2) {
    return convert_codes_avx2(codes, ldw, zero_point, depth, columns, tile);
  }
#endif
  convert_codes_portable(codes, ldw, zero_point, depth, columns, tile);
}

// The block weight[:, first:first + count] into `tile` ([depth, count], contiguous), in the
// tile's dtype, less the zero points.
void convert_block(const at::Tensor& weight, int64_t first, int64_t count, const float* zero_point, at::Tensor& tile) {
  if (weight.scalar_type() != at::kChar) {
    // float16 weights (fp16-packed layers): rare enough for ATen's conversion.
    tile.copy_(weight.narrow(1, first, count));
    return;
  }
  const int8_t* codes = weight.const_data_ptr<int8_t>() + first;
  if (tile.scalar_type() == at::kFloat) {
    convert_codes(codes, weight.stride(0), zero_point, tile.size(0), count, tile.mutable_data_ptr<float>());
  } else {
    convert_codes(codes, weight.stride(0), zero_point, tile.size(0), count, tile.mutable_data_ptr<at::BFloat16>());
  }
}

// The weight in blocks of columns spread over the threads; each thread converts a block,
// a tile of rows at a time, into a tile of its own and multiplies there. Every row of a
// tile is a long run of contiguous codes: across rows the weight's pages change, and short
// runs would spend more on page walks than on converting.
//   float32: shallow tiles that stay in L2, accumulated into the output block.
//   bfloat16: tiles of full depth, so that the output, rounded to bfloat16 by the GEMM, is
//   written once rather than rounded at every accumulation.
at::Tensor tiled(const at::Tensor& lhs, const at::Tensor& weight, const float* zero_point) {
  const int64_t rows = lhs.size(0), depth = lhs.size(1), columns = weight.size(1);
  const bool accumulate = lhs.scalar_type() == at::kFloat;
  const int64_t element_bytes = lhs.element_size();
  const int64_t align = kCacheLine / element_bytes;
  const int64_t width = columns_per_task(
      columns,
      accumulate ? kTileColumnsMax : std::max(align, kFullDepthTileBytes / element_bytes / depth / align * align),
      align);
  const int64_t tile_depth = accumulate ? std::max(kCacheLine, kTileBytes / element_bytes / width) : depth;
  auto result = at::empty({rows, columns}, lhs.options());
  at::parallel_for(0, (columns + width - 1) / width, 1, [&](int64_t begin, int64_t end) {
    auto tile = at::empty({std::min(depth, tile_depth) * width}, lhs.options());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first = task * width, count = std::min(width, columns - first);
      auto out = result.narrow(1, first, count);
      for (int64_t top = 0; top < depth; top += tile_depth) {
        const int64_t height = std::min(tile_depth, depth - top);
        // The first height x count elements, so that the tile is contiguous at every size.
        auto block = tile.narrow(0, 0, height * count).view({height, count});
        convert_block(weight.narrow(0, top, height), first, count, zero_point == nullptr ? nullptr : zero_point + top,
                      block);
        at::addmm_out(out, out, lhs.narrow(1, top, height), block, /*beta=*/top == 0 ? 0 : 1);
      }
    }
  });
  return result;
}

} // namespace

at::Tensor tiled_matmul(const at::Tensor& lhs, const at::Tensor& weight, const std::optional<at::Tensor>& zero_point,
                        const std::optional<at::Tensor>& scale) {
  TORCH_INTERNAL_ASSERT(lhs.dim() == 2 && lhs.is_contiguous() && weight.dim() == 2 && lhs.size(1) == weight.size(0));
  TORCH_INTERNAL_ASSERT(weight.stride(1) == 1 || weight.size(1) == 1);
  TORCH_INTERNAL_ASSERT(lhs.scalar_type() == at::kFloat || lhs.scalar_type() == at::kBFloat16);
  for (const auto& per_row : {zero_point, scale}) {
    TORCH_INTERNAL_ASSERT(!per_row || (per_row->scalar_type() == at::kFloat && per_row->is_contiguous()));
  }
  TORCH_INTERNAL_ASSERT(!zero_point || zero_point->numel() == weight.size(0));
  TORCH_INTERNAL_ASSERT(!scale ||
                        (lhs.scalar_type() == at::kFloat && (scale->numel() == 1 || scale->numel() == weight.size(0))));
  if (lhs.numel() == 0 || weight.size(1) == 0) {
    return at::zeros({lhs.size(0), weight.size(1)}, lhs.options());
  }
  const float* offsets = zero_point ? zero_point->const_data_ptr<float>() : nullptr;
#if defined(__x86_64__)
  static const bool avx512 =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  if (avx512 && lhs.scalar_type() == at::kFloat && weight.scalar_type() == at::kChar &&
      lhs.size(0) > kStreamedRowsMax && lhs.size(0) < kPanelGemmRowsEnd) {
    // The scale is applied as lhs is packed, which is a pass over lhs anyway.
    return panel_gemm(lhs, weight, offsets, scale);
  }
#endif
  const auto scaled = scale ? at::mul(lhs, *scale) : lhs;
  if (lhs.scalar_type() == at::kFloat && lhs.size(0) <= kStreamedRowsMax) {
    return weight.scalar_type() == at::kChar ? streamed<int8_t>(scaled, weight, offsets)
                                             : streamed<at::Half>(scaled, weight, offsets);
  }
  return tiled(scaled, weight, offsets);
}

} // namespace qlgrad::math
