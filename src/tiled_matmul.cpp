#include "tiled_matmul.h"

#include "cpu_capability.h"
#include "panel_tasks.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#if defined(__x86_64__)
// GCC 12 warns that its own AVX-512 intrinsics read an uninitialized register (GCC bug
// 105593, fixed in 13): the "undefined" source operand of an unmasked conversion.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

namespace qlgrad::math {
namespace {

// A thread streams at least this many weight rows, or the streaming is not split.
constexpr int64_t kStreamedRowsPerRangeMin = 256;
// The block sums a stream keeps in L2: whole rows of up to 8192 columns at 8 rows, read
// contiguously (at 8 x 4096 x 4096 on a Zen 5 EPYC, 2.44 ms against 3.30 with the sums in L1 and
// rows read in chunks a few KiB apart).
constexpr int64_t kStreamedSumBytes = 256 << 10;
// Codes copied out of a blocked packing for a stream stay in L2: slabs of this many bytes.
constexpr int64_t kCopiedSlabBytes = 256 << 10;
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

// What turns the codes of weight row n into values: value[n, k] = (code[n, k] - offset(n, g)) *
// factor(n, g) for the group g = k / group_size. Per tensor and per channel are one group per
// row whose scale lhs carries (factor 1); group-wise scales vary along the columns and are
// applied as the codes are read.
struct CodeParameters {
  const float* zero_point = nullptr;  // [N, groups]; null for zero
  const float* scale = nullptr;       // [N, groups]; null when lhs carries the scale
  int64_t groups = 1;
  int64_t group_size = 1;

  float offset(int64_t n, int64_t group) const { return zero_point == nullptr ? 0.0f : zero_point[n * groups + group]; }
  float factor(int64_t n, int64_t group) const { return scale == nullptr ? 1.0f : scale[n * groups + group]; }

  // The parameters of weight rows from `top` on, as those of rows from 0.
  CodeParameters from_row(int64_t top) const {
    CodeParameters shifted = *this;
    shifted.zero_point = zero_point == nullptr ? nullptr : zero_point + top * groups;
    shifted.scale = scale == nullptr ? nullptr : scale + top * groups;
    return shifted;
  }
};

// The row stride of codes copied out of a blocked packing: a cache line more than the row, so
// that the 16 rows a 16 x 16 copy stores to do not fall into one L1 set when the row is a
// multiple of 4 KiB (16 rows would evict each other from a 12-way set at every square).
int64_t copied_row_stride(int64_t columns) {
  return (columns + kCacheLine - 1) / kCacheLine * kCacheLine + kCacheLine;
}

// The row stride of a stream's block sums: a cache line more than the row, so that the sums of
// one row are not stored to addresses 4 KiB apart from those of the next, which the CPU would
// take for the same when it orders loads after stores (measured 2.4x slower at 4 rows of 4096
// columns).
int64_t block_sums_stride(int64_t columns) {
  return round_up(columns, kCacheLine / int64_t{sizeof(float)}) + kCacheLine / int64_t{sizeof(float)};
}

// A thread's scratch for codes copied out of a blocked packing (BlockedLayout::copy): at most a
// few hundred KiB, reused by every product on the thread.
int8_t* scratch_codes(int64_t bytes) {
  thread_local std::vector<int8_t> scratch;
  if (static_cast<int64_t>(scratch.size()) < bytes) {
    scratch.resize(bytes);
  }
  return scratch.data();
}

// The runs of a block of `count` columns from column `first` of the weight that each lie in one
// group, in order: the run's group, and its columns [begin, end) within the block. Advanced by
// additions (a division per run costs as much as a run of 32 columns), in loops rather than
// through a callback: a lambda would not take on the instruction set of the function it is in.
struct GroupRuns {
  int64_t group, begin, end;
  int64_t count, group_size;

  [[gnu::always_inline]] GroupRuns(int64_t first, int64_t count, int64_t group_size)
      : group(first / group_size),
        begin(0),
        end(std::min(count, (group + 1) * group_size - first)),
        count(count),
        group_size(group_size) {}

  [[gnu::always_inline]] bool more() const { return begin < count; }

  [[gnu::always_inline]] void next() {
    ++group;
    begin = end;
    end = std::min(count, end + group_size);
  }
};

// float32 to bfloat16, rounded to nearest even (values here are finite). Exact for the codes
// minus an integer zero point, whose lower 16 bits are zero.
[[gnu::always_inline]] inline at::BFloat16 to_bfloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return at::BFloat16(static_cast<uint16_t>(bits >> 16), at::BFloat16::from_bits());
}

// *out = value, in out's dtype: float32, or bfloat16 rounded to nearest even.
template <typename Element>
[[gnu::always_inline]] inline void store_value(float value, Element* out) {
  if constexpr (std::is_same_v<Element, float>) {
    *out = value;
  } else {
    *out = to_bfloat16(value);
  }
}

// A stream over weight rows [begin, end) and the `columns` columns from column `first`:
//   sums[r, c] += sum_n lhs[r, n] * value[n, first + c]
// for Rows rows of lhs, reading each weight row once for all of them (`weight` points at
// column `first`). A group's scale multiplies lhs's factors, once per row and group. The sum
// runs in blocks of kDepthBlock rows added up apart (in block_sums, Rows x columns), so its
// rounding error grows as a GEMM's does rather than with the full depth.
template <int64_t Rows, typename Code>
[[gnu::always_inline]] inline void stream_rows(const float* lhs, int64_t ldl, int64_t begin, int64_t end,
                                               const Code* weight, int64_t ldw, const CodeParameters& parameters,
                                               int64_t first, int64_t columns, float* sums, int64_t lds,
                                               float* block_sums) {
  constexpr int64_t kDepthBlock = 128;
  const int64_t ldb = block_sums_stride(columns);
  for (int64_t top = begin; top < end; top += kDepthBlock) {
    std::fill(block_sums, block_sums + Rows * ldb, 0.0f);
    for (int64_t n = top; n < std::min(end, top + kDepthBlock); ++n) {
      const Code* row = weight + n * ldw;
      for (GroupRuns run(first, columns, parameters.group_size); run.more(); run.next()) {
        const int64_t group = run.group, run_begin = run.begin, run_end = run.end;
        const float offset = parameters.offset(n, group), scale = parameters.factor(n, group);
        float factor[Rows];
        for (int64_t r = 0; r < Rows; ++r) {
          factor[r] = lhs[r * ldl + n] * scale;
        }
#pragma omp simd
        for (int64_t c = run_begin; c < run_end; ++c) {
          const float value = code_value(row[c]) - offset;
          for (int64_t r = 0; r < Rows; ++r) {
            block_sums[r * ldb + c] += factor[r] * value;
          }
        }
      }
    }
    for (int64_t r = 0; r < Rows; ++r) {
#pragma omp simd
      for (int64_t c = 0; c < columns; ++c) {
        sums[r * lds + c] += block_sums[r * ldb + c];
      }
    }
  }
}

// stream_rows for 1 to Rows rows.
template <int64_t Rows, typename... Arguments>
[[gnu::always_inline]] inline void stream_up_to(int64_t rows, const Arguments&... arguments) {
  if constexpr (Rows > 1) {
    if (rows < Rows) {
      return stream_up_to<Rows - 1>(rows, arguments...);
    }
  }
  stream_rows<Rows>(arguments...);
}

// A stream's signature: stream's, or stream_vectors's on AVX-512.
template <typename Code>
using StreamFn = void(int64_t rows, const float* lhs, int64_t ldl, int64_t begin, int64_t end, const Code* weight,
                      int64_t ldw, const CodeParameters& parameters, int64_t first, int64_t columns, float* sums,
                      int64_t lds, float* block_sums);

// The stream for 1 to kStreamedRowsMax rows, compiled for each instruction set qlgrad chooses
// between (the compiler vectorizes stream_rows for each).
#define QLGRAD_STREAM(name, attributes)                                                                             \
  template <typename Code>                                                                                          \
  attributes void name(int64_t rows, const float* lhs, int64_t ldl, int64_t begin, int64_t end, const Code* weight, \
                       int64_t ldw, const CodeParameters& parameters, int64_t first, int64_t columns, float* sums,  \
                       int64_t lds, float* block_sums) {                                                            \
    stream_up_to<kStreamedRowsMax>(rows, lhs, ldl, begin, end, weight, ldw, parameters, first, columns, sums, lds,  \
                                   block_sums);                                                                     \
  }
QLGRAD_STREAM(stream_portable, )
#if defined(__x86_64__)
QLGRAD_STREAM(stream_avx2, __attribute__((target("avx2,fma"))))
QLGRAD_STREAM(stream_avx512, __attribute__((target("arch=x86-64-v4"))))
#endif
#undef QLGRAD_STREAM

// The stream for the CPU capability in use.
template <typename Code>
StreamFn<Code>* stream() {
#if defined(__x86_64__)
  switch (cpu_capability()) {
    case CpuCapability::kAvx512: return &stream_avx512<Code>;
    case CpuCapability::kAvx2: return &stream_avx2<Code>;
    case CpuCapability::kDefault: break;
  }
#endif
  return &stream_portable<Code>;
}

// Each thread streams its own range of weight rows, one contiguous region of memory that
// hardware prefetchers follow page after page, into sums of its own; the sums of the
// ranges are added at the end, in a fixed order. The rows are read whole where the block
// sums of every column fit in L2, else in column chunks that do.
// A blocked packing (int8 codes only; on AVX-512 CPUs fbgemm's is streamed in place, by
// stream_blocked) lies one range of block_depth columns after the other, each holding every
// row, and is read in that order: a range of columns at a time, copied into rows a slab at a
// time, each slab's codes staying in L2 while they are streamed.
template <typename Code>
at::Tensor streamed(const at::Tensor& lhs, const at::Tensor& weight, const std::optional<BlockedLayout>& blocked,
                    const CodeParameters& parameters, StreamFn<Code>* stream_range = stream<Code>()) {
  const int64_t rows = lhs.size(0), depth = lhs.size(1), columns = blocked ? blocked->columns : weight.size(1);
  const int64_t ranges = std::clamp<int64_t>(depth / kStreamedRowsPerRangeMin, 1, at::get_num_threads());
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
  const auto range_start = [&](int64_t range) {
    return range == ranges ? depth : depth * range / ranges / align * align;
  };
  auto sums = at::zeros({ranges, rows, columns}, lhs.options());
  const auto* codes = weight.const_data_ptr<Code>();
  at::parallel_for(0, ranges, 1, [&](int64_t begin, int64_t end) {
    auto block_sums = at::empty({group_rows * block_sums_stride(std::min(chunk, columns))}, lhs.options());
    for (int64_t range = begin; range < end; ++range) {
      const int64_t range_end = range_start(range + 1);
      for (int64_t first = 0; first < columns; first += piece) {
        const int64_t count = std::min(piece, columns - first);
        for (int64_t top = range_start(range); top < range_end; top += slab) {
          const int64_t height = std::min(slab, range_end - top);
          const Code* slab_codes = codes + (blocked ? 0 : top * weight.stride(0) + first);
          const int64_t ldw = blocked ? ldc : weight.stride(0);
          if constexpr (std::is_same_v<Code, int8_t>) {
            if (blocked) {
              int8_t* copied = scratch_codes(height * ldc);
              blocked->copy(codes, top, height, first, count, copied, ldc);
              slab_codes = copied;
            }
          }
          for (int64_t row = 0; row < rows; row += kStreamedRowsMax) {
            stream_range(std::min(kStreamedRowsMax, rows - row), lhs.const_data_ptr<float>() + row * depth + top, depth,
                         0, height, slab_codes, ldw, parameters.from_row(top), first, count,
                         sums[range].mutable_data_ptr<float>() + row * columns + first, columns,
                         block_sums.mutable_data_ptr<float>());
          }
        }
      }
    }
  });
  return ranges == 1 ? sums[0] : sums.sum(0);
}

// out[c] = (codes[c] - offset) * factor for c in [begin, end), as float32 or as bfloat16.
template <typename Element>
[[gnu::always_inline]] inline void convert_run_portable(const int8_t* codes, float offset, float factor, int64_t begin,
                                                        int64_t end, Element* out) {
  for (int64_t c = begin; c < end; ++c) {
    store_value((static_cast<float>(codes[c]) - offset) * factor, out + c);
  }
}

// tile[n, c] = value[top + n, first + c] for an int8 block of `depth` rows from weight row `top`
// and `columns` columns from column `first` (`codes` points at its first code), as float32 or
// as bfloat16, a run of one group at a time. Written with intrinsics: GCC lowers an
// int8-to-float conversion of generic vectors lane by lane. Each converter takes the runs
// its vectors do not fill to the portable loop.
template <typename Element>
void convert_codes_portable(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                            int64_t first, int64_t depth, int64_t columns, Element* tile) {
  for (int64_t n = 0; n < depth; ++n) {
    for (GroupRuns run(first, columns, parameters.group_size); run.more(); run.next()) {
      const int64_t group = run.group, begin = run.begin, end = run.end;
      convert_run_portable(codes + n * ldw, parameters.offset(top + n, group), parameters.factor(top + n, group), begin,
                           end, tile + n * columns);
    }
  }
}

#if defined(__x86_64__)
template <typename Element>
__attribute__((target("avx512f,avx512bw"))) void convert_codes_avx512(const int8_t* codes, int64_t ldw,
                                                                      const CodeParameters& parameters, int64_t top,
                                                                      int64_t first, int64_t depth, int64_t columns,
                                                                      Element* tile) {
  constexpr int64_t kLanes = 16;
  for (int64_t n = 0; n < depth; ++n) {
    const int8_t* row = codes + n * ldw;
    Element* out = tile + n * columns;
    for (GroupRuns run(first, columns, parameters.group_size); run.more(); run.next()) {
      const int64_t group = run.group, begin = run.begin, end = run.end;
      const float offset = parameters.offset(top + n, group), factor = parameters.factor(top + n, group);
      const __m512 offsets = _mm512_set1_ps(offset), factors = _mm512_set1_ps(factor);
      int64_t c = begin;
      for (; c + kLanes <= end; c += kLanes) {
        const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c));
        const __m512 values =
            _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(packed)), offsets), factors);
        if constexpr (std::is_same_v<Element, float>) {
          _mm512_storeu_ps(out + c, values);
        } else {
          // Rounded to nearest even, as to_bfloat16.
          const __m512i bits = _mm512_castps_si512(values);
          const __m512i rounding = _mm512_add_epi32(
              _mm512_set1_epi32(0x7FFF), _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1)));
          const __m256i upper = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_add_epi32(bits, rounding), 16));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c), upper);
        }
      }
      convert_run_portable(row, offset, factor, c, end, out);
    }
  }
}

template <typename Element>
__attribute__((target("avx2"))) void convert_codes_avx2(const int8_t* codes, int64_t ldw,
                                                        const CodeParameters& parameters, int64_t top, int64_t first,
                                                        int64_t depth, int64_t columns, Element* tile) {
  constexpr int64_t kLanes = 8;
  for (int64_t n = 0; n < depth; ++n) {
    const int8_t* row = codes + n * ldw;
    Element* out = tile + n * columns;
    for (GroupRuns run(first, columns, parameters.group_size); run.more(); run.next()) {
      const int64_t group = run.group, begin = run.begin, end = run.end;
      const float offset = parameters.offset(top + n, group), factor = parameters.factor(top + n, group);
      const __m256 offsets = _mm256_set1_ps(offset), factors = _mm256_set1_ps(factor);
      int64_t c = begin;
      for (; c + kLanes <= end; c += kLanes) {
        const __m128i packed = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c));
        const __m256 values =
            _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(packed)), offsets), factors);
        if constexpr (std::is_same_v<Element, float>) {
          _mm256_storeu_ps(out + c, values);
        } else {
          // Rounded to nearest even, as to_bfloat16; then the upper halves, packed within each
          // 128-bit lane, and the lanes' lower quarters joined.
          const __m256i bits = _mm256_castps_si256(values);
          const __m256i rounding = _mm256_add_epi32(
              _mm256_set1_epi32(0x7FFF), _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1)));
          const __m256i upper = _mm256_srli_epi32(_mm256_add_epi32(bits, rounding), 16);
          const __m256i packed_words = _mm256_permute4x64_epi64(_mm256_packus_epi32(upper, upper), 0b1000);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c), _mm256_castsi256_si128(packed_words));
        }
      }
      convert_run_portable(row, offset, factor, c, end, out);
    }
  }
}

#endif

// The int4 packing of the running CPU capability, as ATen's kernels chose it when the process
// first used them (ATEN_CPU_CAPABILITY may lower it): rows per block, and whether whole
// blocks hold rows j and j + block / 2 in byte j.
struct Int4Packing {
  int64_t block;
  bool halves;
};

Int4Packing int4_packing() {
#if defined(__x86_64__)
  switch (cpu_capability()) {
    case CpuCapability::kAvx512: return {64, true};
    case CpuCapability::kAvx2: return {32, true};
    case CpuCapability::kDefault: break;
  }
  return {32, false};
#else
  TORCH_CHECK(false, "qlgrad: reading torch's int4 packing is implemented for x86-64 CPUs only");
#endif
}

// torch's CPU int4 packing (aten::_convert_weight_to_int4pack_for_cpu) of codes [N, K] in
// [0, 16), with W[n, k] = (code - 8) * scale[k / group_size, n] + zero[k / group_size, n] from
// scale_and_zeros [K / group_size, N, 2]. The packing is that of the running CPU capability's
// kernels: blocks of `block` weight rows (64 with AVX-512, 32 otherwise), each holding, for one
// column after the other, block / 2 bytes. In a whole block of an AVX2 or AVX-512 packing, byte
// j holds rows j (low nibble) and j + block / 2 (high nibble); in a last, partial block and in
// the portable packing, rows 2j and 2j + 1. N is a multiple of 16, as the packing requires.
struct Int4Pack {
  const uint8_t* data;
  int64_t rows;     // N
  int64_t columns;  // K
  int64_t block;
  bool halves;  // whole blocks hold rows j and j + block / 2 in byte j
  const float* scale_and_zeros;
  int64_t group_size;

  // Where 16 rows [row, row + 16) lie, row a multiple of 16: column c's bytes start at
  // first + c * stride; `shift` 0 or 4 picks the nibble of each of 16 bytes, or, with `pairs`, 8
  // bytes hold the 16 rows two by two, low nibble first.
  struct Rows16 {
    const uint8_t* first;
    int64_t stride;
    int shift;
    bool pairs;

    const uint8_t* column(int64_t c) const { return first + c * stride; }
  };

  Rows16 rows16(int64_t row) const {
    const int64_t first_row = row / block * block;
    const int64_t block_rows = std::min(block, rows - first_row);
    const uint8_t* run = data + first_row * columns / 2;
    const int64_t r = row - first_row;
    if (!(halves && block_rows == block)) {
      return {run + r / 2, block_rows / 2, 0, true};
    }
    return {run + r % (block / 2), block_rows / 2, r < block / 2 ? 0 : 4, false};
  }

  // W[row + i, column] for i in [0, 16), the rows `where` (rows16(row)) describes.
  void values16(const Rows16& where, int64_t row, int64_t column, float* out) const {
    const uint8_t* bytes = where.column(column);
    const float* parameters = scale_and_zeros + (column / group_size * rows + row) * 2;
    for (int64_t i = 0; i < 16; ++i) {
      const int code = where.pairs ? (bytes[i / 2] >> (4 * (i % 2))) & 15 : (bytes[i] >> where.shift) & 15;
      // Not std::fma, a library call where the build does not assume FMA instructions: the values
      // differ from the op's fused ones by a rounding at most, well within float32 exactness.
      out[i] = static_cast<float>(code - 8) * parameters[2 * i] + parameters[2 * i + 1];
    }
  }
};

#if defined(__x86_64__)

// The float32 product from int8 (or float16) values in a GEMM of its own, for AVX-512 CPUs.
// Laid out as GEMMs are (Goto and van de Geijn): per block of depth the weight is converted
// into panels of 32 columns (the form a GEMM packs its weight into anyway, so the conversion is
// the packing), the rows of lhs are packed by 12 once, and the kernel multiplies 12 rows by a
// panel with the 12 x 32 sums held in registers. MKL's GEMM cannot take this path: it would pack
// the converted tile again. The work is divided in one of two ways:
//   - by columns, below kSharedPanelRowsMin rows: each thread converts the panels of its block of
//     columns into its own L2 and runs every row against them. Few rows cannot repay a trip to
//     memory of the converted weight (four times the codes' bytes).
//   - by rows and columns from kSharedPanelRowsMin rows: all threads convert one depth block's
//     panels for every column, then share the tasks of PanelTasks (panel_tasks.h), so that any
//     number of threads get equal shares, on layers as narrow as 768 columns.
constexpr int64_t kSharedPanelRowsMin = 256;
// The depth of a block of panels divided by columns: a panel (32 KiB) stays in L1 while 12 rows
// at a time run against it.
constexpr int64_t kColumnTaskDepth = 256;
// The depth of a block of shared panels (a panel is 128 KiB, in L2). Each block's sums are added
// to the output: deeper blocks add fewer times. Measured on a Zen 5 EPYC at 256 x 768 x 3072,
// 2048 x 768 x 3072 and 256 x 4096 x 4096: 1024 rows 1.05-1.16x oneDNN's fp32 GEMM, 512 rows
// 1.05-1.17x, 256 rows 1.07-1.25x.
constexpr int64_t kSharedDepth = 1024;
// Columns a thread takes at once when dividing by columns (their panels, 1 MiB, stay in L2), and
// the pieces in which shared panels are converted.
constexpr int64_t kBlockColumns = 1024;
// Where MKL's GEMM runs its AVX-512 code (Intel CPUs), MKL on converted tiles is the faster from
// this many rows (measured on a Xeon, 2 threads, at 1024 rows: 1.10-1.14x the float GEMM against
// 1.20-1.33x); elsewhere MKL takes its AVX2 path and the panel GEMM serves every row count.
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

// Up to 16 codes from `codes` as float32 lanes, zero past the mask.
QLGRAD_AVX512 __m512 load_values16(__mmask16 mask, const int8_t* codes) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, codes)));
}

QLGRAD_AVX512 __m512 load_values16(__mmask16 mask, const at::Half* values) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, values));
}

// Weight rows n to n + Together - 1 added into block_sums (Rows x columns), 16 columns at a time
// (masked at the end of a run), one row after the other into each sum as stream_rows adds
// them: each sum is loaded and stored once for Together rows, where a row at a time spends more
// on the sums than on reading its codes. Each group's run takes lhs's factors times its scale
// once, as stream_rows does.
template <int64_t Rows, int64_t Together, typename Code>
QLGRAD_AVX512 void accumulate_vectors(const float* lhs, int64_t ldl, int64_t n, const Code* weight, int64_t ldw,
                                      const CodeParameters& parameters, int64_t first, int64_t columns,
                                      float* block_sums) {
  constexpr int64_t kLanes = 16;
  const int64_t ldb = block_sums_stride(columns);
  for (GroupRuns run(first, columns, parameters.group_size); run.more(); run.next()) {
    __m512 offset[Together];
    float factor[Rows][Together];
    for (int64_t j = 0; j < Together; ++j) {
      offset[j] = _mm512_set1_ps(parameters.offset(n + j, run.group));
      const float scale = parameters.factor(n + j, run.group);
      for (int64_t r = 0; r < Rows; ++r) {
        factor[r][j] = lhs[r * ldl + n + j] * scale;
      }
    }
    for (int64_t c = run.begin; c < run.end; c += kLanes) {
      const __mmask16 mask = lanes_mask(run.end - c);
      __m512 value[Together];
#pragma GCC unroll 8
      for (int64_t j = 0; j < Together; ++j) {
        value[j] = _mm512_sub_ps(load_values16(mask, weight + (n + j) * ldw + c), offset[j]);
      }
#pragma GCC unroll 8
      for (int64_t r = 0; r < Rows; ++r) {
        float* sum_row = block_sums + r * ldb + c;
        __m512 sum = _mm512_maskz_loadu_ps(mask, sum_row);
#pragma GCC unroll 8
        for (int64_t j = 0; j < Together; ++j) {
          sum = _mm512_fmadd_ps(_mm512_set1_ps(factor[r][j]), value[j], sum);
        }
        _mm512_mask_storeu_ps(sum_row, mask, sum);
      }
    }
  }
}

// stream_rows written with intrinsics, eight weight rows at a time: for int8 codes (per tensor,
// per channel, or with group-wise scales whose groups are whole vectors, where the compiler's
// loop over a run of unknown length spends more on its prologue and remainder than on the 2 to
// 16 vectors of a group) and for float16 values, which GCC converts one at a time.
template <int64_t Rows, typename Code>
QLGRAD_AVX512 void stream_vectors_rows(const float* lhs, int64_t ldl, int64_t begin, int64_t end, const Code* weight,
                                       int64_t ldw, const CodeParameters& parameters, int64_t first, int64_t columns,
                                       float* sums, int64_t lds, float* block_sums) {
  constexpr int64_t kDepthBlock = 128, kLanes = 16, kTogether = 8;
  const int64_t ldb = block_sums_stride(columns);
  for (int64_t top = begin; top < end; top += kDepthBlock) {
    std::fill(block_sums, block_sums + Rows * ldb, 0.0f);
    const int64_t block_end = std::min(end, top + kDepthBlock);
    int64_t n = top;
    for (; n + kTogether <= block_end; n += kTogether) {
      accumulate_vectors<Rows, kTogether>(lhs, ldl, n, weight, ldw, parameters, first, columns, block_sums);
    }
    for (; n < block_end; ++n) {
      accumulate_vectors<Rows, 1>(lhs, ldl, n, weight, ldw, parameters, first, columns, block_sums);
    }
    for (int64_t r = 0; r < Rows; ++r) {
      for (int64_t c = 0; c < columns; c += kLanes) {
        const __mmask16 mask = lanes_mask(columns - c);
        float* sum = sums + r * lds + c;
        _mm512_mask_storeu_ps(
            sum, mask,
            _mm512_add_ps(_mm512_maskz_loadu_ps(mask, sum), _mm512_maskz_loadu_ps(mask, block_sums + r * ldb + c)));
      }
    }
  }
}

// stream_vectors_rows for 1 to Rows rows, as stream.
template <typename Code, int64_t Rows = kStreamedRowsMax>
QLGRAD_AVX512 void stream_vectors(int64_t rows, const float* lhs, int64_t ldl, int64_t begin, int64_t end,
                                  const Code* weight, int64_t ldw, const CodeParameters& parameters, int64_t first,
                                  int64_t columns, float* sums, int64_t lds, float* block_sums) {
  if constexpr (Rows > 1) {
    if (rows < Rows) {
      return stream_vectors<Code, Rows - 1>(rows, lhs, ldl, begin, end, weight, ldw, parameters, first, columns, sums,
                                            lds, block_sums);
    }
  }
  stream_vectors_rows<Rows>(lhs, ldl, begin, end, weight, ldw, parameters, first, columns, sums, lds, block_sums);
}

// The offsets and factors of the 16 columns from `column` of weight row n: one group's
// broadcast where they lie in one (group sizes that are multiples of 16), else lane by lane.
QLGRAD_AVX512 void lane_parameters(const CodeParameters& parameters, int64_t n, int64_t column, __m512& offsets,
                                   __m512& factors) {
  const int64_t group = column / parameters.group_size;
  if (column + 16 <= (group + 1) * parameters.group_size) {
    offsets = _mm512_set1_ps(parameters.offset(n, group));
    factors = _mm512_set1_ps(parameters.factor(n, group));
    return;
  }
  alignas(64) float lane_offsets[16], lane_factors[16];
  for (int64_t lane = 0; lane < 16; ++lane) {
    // Columns past the weight's last take its last group: their lanes are masked off.
    const int64_t lane_group = std::min((column + lane) / parameters.group_size, parameters.groups - 1);
    lane_offsets[lane] = parameters.offset(n, lane_group);
    lane_factors[lane] = parameters.factor(n, lane_group);
  }
  offsets = _mm512_load_ps(lane_offsets);
  factors = _mm512_load_ps(lane_factors);
}

// value[top:top + depth, first:first + count] as panels of kPanelColumns columns, each
// [depth][kPanelColumns] (zero beyond `count`), `panel_depth` rows of kPanelColumns apart (`codes`
// points at [top, first]; `panels` at the first panel's row for `top`). A few rows at a time, whose codes stay in L1
// while each panel's share is written as one contiguous run: a row at a time would store to every panel, kilobytes
// apart, in the same few L1 sets; a panel at a time would read each row from a page of its own.
template <typename Code>
QLGRAD_AVX512 void convert_panels(const Code* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                                  int64_t first, int64_t depth, int64_t count, float* panels, int64_t panel_depth) {
  constexpr int64_t kRowsAtOnce = 16;
  for (int64_t block_top = 0; block_top < depth; block_top += kRowsAtOnce) {
    for (int64_t column = 0; column < count; column += kPanelColumns) {
      const __mmask16 low_mask = lanes_mask(count - column), high_mask = lanes_mask(count - column - 16);
      float* panel = panels + column * panel_depth;
      for (int64_t n = block_top; n < std::min(depth, block_top + kRowsAtOnce); ++n) {
        const Code* row = codes + n * ldw + column;
        __m512 low_offsets, low_factors, high_offsets, high_factors;
        lane_parameters(parameters, top + n, first + column, low_offsets, low_factors);
        lane_parameters(parameters, top + n, first + column + 16, high_offsets, high_factors);
        const __m512 low = load_values16(low_mask, row), high = load_values16(high_mask, row + 16);
        _mm512_storeu_ps(panel + n * kPanelColumns,
                         _mm512_maskz_mul_ps(low_mask, _mm512_sub_ps(low, low_offsets), low_factors));
        _mm512_storeu_ps(panel + n * kPanelColumns + 16,
                         _mm512_maskz_mul_ps(high_mask, _mm512_sub_ps(high, high_offsets), high_factors));
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

// Splits of `extent` into `parts` near-equal pieces, the i-th starting at piece_start(i), a
// multiple of `align` (but for the end).
int64_t piece_start(int64_t extent, int64_t parts, int64_t i, int64_t align = 1) {
  return i == parts ? extent : extent * i / parts / align * align;
}

// 16 x 16 floats transposed in registers: four rounds that each swap the off-diagonal blocks
// of half the size of the last round's, with the lane selections made once.
struct Transpose16 {
  __m512i low[4], high[4];

  QLGRAD_AVX512 Transpose16() {
    for (int round = 0, half = 8; half >= 1; ++round, half /= 2) {
      alignas(64) int32_t low_index[16], high_index[16];
      for (int32_t j = 0; j < 16; ++j) {
        const bool upper = (j & half) != 0;
        low_index[j] = upper ? 16 + j - half : j;
        high_index[j] = upper ? 16 + j : j + half;
      }
      low[round] = _mm512_load_si512(low_index);
      high[round] = _mm512_load_si512(high_index);
    }
  }

  QLGRAD_AVX512 void operator()(__m512 (&rows)[16]) const {
#pragma GCC unroll 4
    for (int round = 0, half = 8; half >= 1; ++round, half /= 2) {
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) {
        if ((i & half) == 0) {
          const __m512 first = rows[i], second = rows[i + half];
          rows[i] = _mm512_permutex2var_ps(first, low[round], second);
          rows[i + half] = _mm512_permutex2var_ps(first, high[round], second);
        }
      }
    }
  }
};

// The depth blocks of a reader's weight, `depth` rows deep or a little less: calls
// each(block, top, height) in order.
template <typename Reader, typename Each>
void for_each_depth_block(const Reader& reader, int64_t depth, const Each& each) {
  const int64_t blocks = (reader.depth() + depth - 1) / depth;
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t top = piece_start(reader.depth(), blocks, block, Reader::kRowAlignment);
    each(block, top, piece_start(reader.depth(), blocks, block + 1, Reader::kRowAlignment) - top);
  }
}

// result[:, first:first + count] = lhs @ W[:, first:first + count], on one thread, with room
// in `panels` for kColumnTaskDepth x count floats.
template <typename Reader>
QLGRAD_AVX512 void panel_gemm_columns(const float* packed_lhs, int64_t rows, const Reader& reader, int64_t first,
                                      int64_t count, float* out, int64_t ldo, float* panels) {
  const int64_t depth = reader.depth();
  const int64_t row_blocks = (rows + kRowBlock - 1) / kRowBlock;
  const int64_t row_step = round_up((rows + row_blocks - 1) / row_blocks, kKernelRows);
  for_each_depth_block(reader, kColumnTaskDepth, [&](int64_t block, int64_t top, int64_t height) {
    reader.panels(top, first, height, count, panels);
    // Rows a block at a time, whose slice of lhs stays in L2 across the panels.
    for (int64_t row_first = 0; row_first < rows; row_first += row_step) {
      const int64_t row_last = std::min(rows, row_first + row_step);
      for (int64_t column = 0; column < count; column += kPanelColumns) {
        for (int64_t row = row_first; row < row_last; row += kKernelRows) {
          panel_rows(std::min(kKernelRows, row_last - row), packed_lhs + (row * depth + top * kKernelRows),
                     panels + column * height, height, out + row * ldo + first + column, ldo, count - column,
                     /*accumulate=*/block > 0);
        }
      }
    }
  });
}

template <typename Reader>
at::Tensor panel_gemm(const at::Tensor& lhs, const Reader& reader, const std::optional<at::Tensor>& scale) {
  const int64_t rows = lhs.size(0), depth = reader.depth(), columns = reader.columns();
  const auto packed_lhs = pack_rows(lhs, scale);
  const float* packed = packed_lhs.const_data_ptr<float>();
  auto result = at::empty({rows, columns}, lhs.options());
  float* out = result.mutable_data_ptr<float>();
  const int64_t chunk = columns_per_task(columns, kBlockColumns, kPanelColumns);
  const int64_t chunks = (columns + chunk - 1) / chunk;
  if (rows < kSharedPanelRowsMin) {
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      auto panels = at::empty({kColumnTaskDepth * chunk}, lhs.options());
      for (int64_t piece = begin; piece < end; ++piece) {
        panel_gemm_columns(packed, rows, reader, piece * chunk, std::min(chunk, columns - piece * chunk), out, columns,
                           panels.mutable_data_ptr<float>());
      }
    });
    return result;
  }
  // Two parallel regions per depth block (packing lhs a block at a time would cost a third,
  // measured slower than packing it once).
  auto shared_panels = at::empty({kSharedDepth * round_up(columns, kPanelColumns)}, lhs.options());
  float* panels = shared_panels.mutable_data_ptr<float>();
  const PanelTasks tasks(rows, columns, chunk);
  for_each_depth_block(reader, kSharedDepth, [&](int64_t block, int64_t top, int64_t height) {
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t piece = begin; piece < end; ++piece) {
        const int64_t first = piece * chunk;
        reader.panels(top, first, height, std::min(chunk, columns - first), panels + first * height);
      }
    });
    at::parallel_for(0, tasks.size(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        const PanelTask task = tasks[index];
        panel_rows(task.rows, packed + (task.row * depth + top * kKernelRows), panels + task.column * height, height,
                   out + task.row * columns + task.column, columns, task.columns, /*accumulate=*/block > 0);
      }
    });
  });
  return result;
}

// Rows of lhs a direct stream over fbgemm's packing takes at once: 4 x 4 sums in registers.
constexpr int64_t kBlockedStreamRows = 4;
// Bands of 16 weight rows whose codes a direct stream adds up in registers before it adds them to
// its partial sums: 8 blocks of a 48-wide packing, read as 24 sequential streams.
constexpr int64_t kBlockedStreamBands = 24;

// sums[r, k0 + k] = sum_n lhs[r, n] * (W[n, k0 + k] - zero_point[n]) for Rows rows, the weight rows
// n in [n_begin, n_end) (multiples of 16 but the end) and one range of block_depth columns from
// k0, read in fbgemm's AVX-512 packing (interleave 4, blocks 16-aligned in width) as it lies:
// each 64-byte line holds 4 consecutive k of 16 n, one per 32-bit lane. Vectorized over n, so
// nothing is copied or transposed: kBlockedStreamBands bands at a time are summed in registers,
// 4 k at a time, into 16-lane sums per k (`partial`, Rows x block_depth x 16 floats), which are
// reduced once, at the end.
template <int64_t Rows>
QLGRAD_AVX512 void stream_blocked_rows(const float* lhs, int64_t ldl, const int8_t* packed, const BlockedLayout& layout,
                                       const float* zero_point, int64_t k0, int64_t n_begin, int64_t n_end,
                                       float* partial, float* sums, int64_t lds) {
  constexpr int64_t kLanes = 16;
  const int64_t count = std::min(layout.block_depth, layout.columns - k0), quads = (count + 3) / 4;
  const int64_t line_stride = layout.block_width * 4;
  std::fill(partial, partial + Rows * quads * 4 * kLanes, 0.0f);
  for (int64_t chunk = n_begin; chunk < n_end; chunk += kBlockedStreamBands * kLanes) {
    const int64_t bands = std::min(kBlockedStreamBands, (n_end - chunk + kLanes - 1) / kLanes);
    const int8_t* lines[kBlockedStreamBands];
    for (int64_t band = 0; band < bands; ++band) {
      lines[band] = packed + layout.offset(chunk + band * kLanes, k0);
    }
    for (int64_t quad = 0; quad < quads; ++quad) {
      __m512 total[Rows][4];
      for (int64_t r = 0; r < Rows; ++r) {
        for (int64_t t = 0; t < 4; ++t) {
          total[r][t] = _mm512_setzero_ps();
        }
      }
      for (int64_t band = 0; band < bands; ++band) {
        const int64_t n = chunk + band * kLanes;
        const __mmask16 mask = lanes_mask(n_end - n);
        const __m512i codes = _mm512_loadu_si512(lines[band] + quad * line_stride);
        const __m512 offset = zero_point == nullptr ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask, zero_point + n);
        __m512 value[4];
        value[0] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(codes, 24), 24));
        value[1] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(codes, 16), 24));
        value[2] = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(codes, 8), 24));
        value[3] = _mm512_cvtepi32_ps(_mm512_srai_epi32(codes, 24));
        for (int64_t r = 0; r < Rows; ++r) {
          // Zero past the weight's last row: the packing's padding codes add nothing.
          const __m512 factor = _mm512_maskz_loadu_ps(mask, lhs + r * ldl + n);
          for (int64_t t = 0; t < 4; ++t) {
            total[r][t] = _mm512_fmadd_ps(factor, _mm512_sub_ps(value[t], offset), total[r][t]);
          }
        }
      }
      for (int64_t r = 0; r < Rows; ++r) {
        for (int64_t t = 0; t < 4; ++t) {
          float* sum = partial + ((r * quads + quad) * 4 + t) * kLanes;
          _mm512_storeu_ps(sum, _mm512_add_ps(_mm512_loadu_ps(sum), total[r][t]));
        }
      }
    }
  }
  for (int64_t r = 0; r < Rows; ++r) {
    for (int64_t k = 0; k < count; ++k) {
      sums[r * lds + k0 + k] = _mm512_reduce_add_ps(_mm512_loadu_ps(partial + (r * quads * 4 + k) * kLanes));
    }
  }
}

// stream_blocked_rows for 1 to Rows rows.
template <int64_t Rows = kBlockedStreamRows>
QLGRAD_AVX512 void stream_blocked_up_to(int64_t rows, const float* lhs, int64_t ldl, const int8_t* packed,
                                        const BlockedLayout& layout, const float* zero_point, int64_t k0,
                                        int64_t n_begin, int64_t n_end, float* partial, float* sums, int64_t lds) {
  if constexpr (Rows > 1) {
    if (rows < Rows) {
      return stream_blocked_up_to<Rows - 1>(rows, lhs, ldl, packed, layout, zero_point, k0, n_begin, n_end, partial,
                                            sums, lds);
    }
  }
  stream_blocked_rows<Rows>(lhs, ldl, packed, layout, zero_point, k0, n_begin, n_end, partial, sums, lds);
}

// Whether stream_blocked reads this packing: fbgemm's AVX-512 one.
bool streams_in_place(const BlockedLayout& layout) {
  return layout.interleave == 4 && layout.block_width % 16 == 0 && layout.block_depth % 4 == 0;
}

// lhs [rows, N] @ (W - zero_point) from fbgemm's packing, rows a group of up to kBlockedStreamRows
// at a time. The weight's rows are split into a part per thread (each part's codes in every
// range of block_depth columns contiguous), each thread summing its part over every range, so
// that the threads' shares are equal whatever the number of ranges (768 columns are a range of
// 512 and one of 256); the parts' sums are added at the end, in a fixed order.
at::Tensor stream_blocked(const at::Tensor& lhs, const int8_t* packed, const BlockedLayout& layout,
                          const float* zero_point) {
  const int64_t rows = lhs.size(0), depth = lhs.size(1);
  const int64_t column_ranges = (layout.columns + layout.block_depth - 1) / layout.block_depth;
  const int64_t parts = std::clamp<int64_t>(depth / kStreamedRowsPerRangeMin, 1, at::get_num_threads());
  auto sums = at::empty({parts, rows, layout.columns}, lhs.options());
  const float* source = lhs.const_data_ptr<float>();
  at::parallel_for(0, column_ranges * parts, 1, [&](int64_t begin, int64_t end) {
    const int64_t quads = (layout.block_depth + 3) / 4;
    auto partial = at::empty({std::min(rows, kBlockedStreamRows) * quads * 4 * 16}, lhs.options());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t part = task / column_ranges, range = task % column_ranges;
      const int64_t n_begin = piece_start(depth, parts, part, 16), n_end = piece_start(depth, parts, part + 1, 16);
      float* part_sums = sums[part].mutable_data_ptr<float>();
      for (int64_t row = 0; row < rows; row += kBlockedStreamRows) {
        stream_blocked_up_to(std::min(kBlockedStreamRows, rows - row), source + row * depth, depth, packed, layout,
                             zero_point, range * layout.block_depth, n_begin, n_end, partial.mutable_data_ptr<float>(),
                             part_sums + row * layout.columns, layout.columns);
      }
    }
  });
  return parts == 1 ? sums[0] : sums.sum(0);
}

#endif

// An int8 (or float16) weight with its parameters, as the GEMMs read it.
struct StoredCodes {
  const at::Tensor& weight;
  const CodeParameters& parameters;
  // Depth blocks of the panel GEMM start at multiples of this.
  static constexpr int64_t kRowAlignment = 1;

  int64_t depth() const { return weight.size(0); }
  int64_t columns() const { return weight.size(1); }

#if defined(__x86_64__)
  // value[top:top + depth, first:first + count] as panels, as convert_panels writes them.
  QLGRAD_AVX512 void panels(int64_t top, int64_t first, int64_t depth, int64_t count, float* out) const {
    if (weight.scalar_type() == at::kChar) {
      convert_panels(weight.const_data_ptr<int8_t>() + top * weight.stride(0) + first, weight.stride(0), parameters,
                     top, first, depth, count, out, depth);
    } else {
      convert_panels(weight.const_data_ptr<at::Half>() + top * weight.stride(0) + first, weight.stride(0), parameters,
                     top, first, depth, count, out, depth);
    }
  }
#endif

  void tile(int64_t top, int64_t first, int64_t count, at::Tensor& tile) const;
};

// int8 codes in a blocked packing (fbgemm's), as the GEMMs read it: a block's codes are copied
// into rows in the thread's scratch, then converted as stored codes are. The copy is a pass
// over int8 codes in cache, beside the conversion's writes of four times as many bytes.
struct BlockedCodes {
  const int8_t* packed;
  const BlockedLayout& layout;
  const CodeParameters& parameters;
  // Whole 16-row bands, which the copy moves 16 x 16 at a time.
  static constexpr int64_t kRowAlignment = 16;
  // A tile's or a panel's rows are copied and converted this many at a time (bfloat16 tiles and
  // shared panels have a depth of 1024 and more).
  static constexpr int64_t kTileSlabRows = 64;

  int64_t depth() const { return layout.rows; }
  int64_t columns() const { return layout.columns; }

#if defined(__x86_64__)
  // A slab of kTileSlabRows rows at a time, whose copied codes stay in L1.
  QLGRAD_AVX512 void panels(int64_t top, int64_t first, int64_t depth, int64_t count, float* out) const {
    const int64_t ldc = copied_row_stride(count);
    int8_t* codes = scratch_codes(std::min(depth, kTileSlabRows) * ldc);
    for (int64_t slab = 0; slab < depth; slab += kTileSlabRows) {
      const int64_t height = std::min(kTileSlabRows, depth - slab);
      layout.copy(packed, top + slab, height, first, count, codes, ldc);
      convert_panels(codes, ldc, parameters, top + slab, first, height, count, out + slab * kPanelColumns, depth);
    }
  }
#endif

  void tile(int64_t top, int64_t first, int64_t count, at::Tensor& tile) const;
};

// Up to this many rows, the int4 product runs as dot products on the codes (Int4Codes::stream).
constexpr int64_t kInt4StreamedRowsMax = 4;

// The int4 packing as the GEMMs read it. Panels are converted 16 x 16 values at a time: 16 rows
// of a column lie together in the packing, and a transpose in registers turns them into the
// panels' rows.
struct Int4Codes {
  const Int4Pack& pack;
  static constexpr int64_t kRowAlignment = 16;

  int64_t depth() const { return pack.rows; }
  int64_t columns() const { return pack.columns; }

#if defined(__x86_64__)
  // The 16 values W[row:row + 16, column] of the rows `where` describes, with their group's
  // scales and zeros (as scales_and_zeros16 gives them): fma(code - 8, scale, zero), as the op
  // computes them.
  QLGRAD_AVX512 static __m512 values16(const Int4Pack::Rows16& where, int64_t column, __m512 scales, __m512 zeros) {
    const uint8_t* bytes = where.column(column);
    const __m128i nibbles = _mm_set1_epi8(15);
    __m128i codes;
    if (where.pairs) {
      const __m128i packed = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes));
      codes = _mm_unpacklo_epi8(_mm_and_si128(packed, nibbles), _mm_and_si128(_mm_srli_epi16(packed, 4), nibbles));
    } else {
      const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes));
      codes = _mm_and_si128(where.shift == 0 ? packed : _mm_srli_epi16(packed, 4), nibbles);
    }
    const __m512 centered = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(codes)), _mm512_set1_ps(8.0f));
    return _mm512_fmadd_ps(centered, scales, zeros);
  }

  // The scales and the zeros of rows [row, row + 16) in the group of `column`: lanes 0, 2, ..., 30
  // and 1, 3, ..., 31 of their 16 pairs.
  QLGRAD_AVX512 void scales_and_zeros16(int64_t row, int64_t column, __m512& scales, __m512& zeros) const {
    const float* pairs = pack.scale_and_zeros + (column / pack.group_size * pack.rows + row) * 2;
    const __m512 low = _mm512_loadu_ps(pairs), high = _mm512_loadu_ps(pairs + 16);
    const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    scales = _mm512_permutex2var_ps(low, evens, high);
    zeros = _mm512_permutex2var_ps(low, _mm512_add_epi32(evens, _mm512_set1_epi32(1)), high);
  }

  QLGRAD_AVX512 void panels(int64_t top, int64_t first, int64_t depth, int64_t count, float* out) const {
    const Transpose16 transpose16;
    for (int64_t row = 0; row < depth; row += 16) {
      const auto where = pack.rows16(top + row);
      for (int64_t column = 0; column < count; column += 16) {
        // 16 columns lie in one group: group sizes are multiples of 32.
        __m512 scales, zeros;
        scales_and_zeros16(top + row, first + column, scales, zeros);
        __m512 values[16];
        for (int64_t i = 0; i < 16; ++i) {
          values[i] = values16(where, first + column + i, scales, zeros);
        }
        transpose16(values);
        float* panel = out + (column / kPanelColumns * kPanelColumns) * depth + column % kPanelColumns;
        for (int64_t i = 0; i < 16; ++i) {
          _mm512_storeu_ps(panel + (row + i) * kPanelColumns, values[i]);
        }
      }
    }
  }

  // out[r, first + c] = sum_n lhs[r, n] * W[n, first + c] for Rows rows and the columns
  // [first, first + count), in dot products along the packing's 16 rows of a column: no value
  // is stored, where the panels would convert and transpose every one for a single row.
  // `partial` holds a 16-lane sum per column and row, reduced at the end.
  template <int64_t Rows>
  QLGRAD_AVX512 void stream_columns(const float* lhs, int64_t ldl, int64_t first, int64_t count, float* partial,
                                    float* out, int64_t ldo) const {
    constexpr int64_t kLanes = 16;
    std::fill(partial, partial + count * Rows * kLanes, 0.0f);
    for (int64_t row = 0; row < pack.rows; row += kLanes) {
      const auto where = pack.rows16(row);
      __m512 factors[Rows];
      for (int64_t r = 0; r < Rows; ++r) {
        factors[r] = _mm512_loadu_ps(lhs + r * ldl + row);
      }
      for (int64_t column = 0; column < count; column += kLanes) {
        __m512 scales, zeros;
        scales_and_zeros16(row, first + column, scales, zeros);
        for (int64_t i = 0; i < kLanes; ++i) {
          const __m512 values = values16(where, first + column + i, scales, zeros);
          float* sums = partial + (column + i) * Rows * kLanes;
          for (int64_t r = 0; r < Rows; ++r) {
            _mm512_storeu_ps(sums + r * kLanes,
                             _mm512_fmadd_ps(factors[r], values, _mm512_loadu_ps(sums + r * kLanes)));
          }
        }
      }
    }
    for (int64_t c = 0; c < count; ++c) {
      for (int64_t r = 0; r < Rows; ++r) {
        out[r * ldo + first + c] = _mm512_reduce_add_ps(_mm512_loadu_ps(partial + (c * Rows + r) * kLanes));
      }
    }
  }

  // stream_columns for 1 to Rows rows.
  template <int64_t Rows = kInt4StreamedRowsMax>
  QLGRAD_AVX512 void stream(int64_t rows, const float* lhs, int64_t ldl, int64_t first, int64_t count, float* partial,
                            float* out, int64_t ldo) const {
    if constexpr (Rows > 1) {
      if (rows < Rows) {
        return stream<Rows - 1>(rows, lhs, ldl, first, count, partial, out, ldo);
      }
    }
    stream_columns<Rows>(lhs, ldl, first, count, partial, out, ldo);
  }
#endif

  void tile(int64_t top, int64_t first, int64_t count, at::Tensor& tile) const;
};

template <typename Element>
void convert_codes(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top, int64_t first,
                   int64_t depth, int64_t columns, Element* tile) {
#if defined(__x86_64__)
  switch (cpu_capability()) {
    case CpuCapability::kAvx512: return convert_codes_avx512(codes, ldw, parameters, top, first, depth, columns, tile);
    case CpuCapability::kAvx2: return convert_codes_avx2(codes, ldw, parameters, top, first, depth, columns, tile);
    case CpuCapability::kDefault: break;
  }
#endif
  convert_codes_portable(codes, ldw, parameters, top, first, depth, columns, tile);
}

// value[top:top + depth, first:first + count] into `tile` ([depth, count], contiguous), in
// the tile's dtype.
void StoredCodes::tile(int64_t top, int64_t first, int64_t count, at::Tensor& tile) const {
  const int64_t depth = tile.size(0);
  if (weight.scalar_type() != at::kChar) {
    // float16 weights (fp16-packed layers): rare enough for ATen's conversion.
    tile.copy_(weight.narrow(0, top, depth).narrow(1, first, count));
    return;
  }
  const int8_t* codes = weight.const_data_ptr<int8_t>() + top * weight.stride(0) + first;
  if (tile.scalar_type() == at::kFloat) {
    convert_codes(codes, weight.stride(0), parameters, top, first, depth, count, tile.mutable_data_ptr<float>());
  } else {
    convert_codes(codes, weight.stride(0), parameters, top, first, depth, count, tile.mutable_data_ptr<at::BFloat16>());
  }
}

void BlockedCodes::tile(int64_t top, int64_t first, int64_t count, at::Tensor& tile) const {
  const int64_t depth = tile.size(0);
  const int64_t ldc = copied_row_stride(count);
  int8_t* codes = scratch_codes(std::min(depth, kTileSlabRows) * ldc);
  for (int64_t slab = 0; slab < depth; slab += kTileSlabRows) {
    const int64_t height = std::min(kTileSlabRows, depth - slab);
    layout.copy(packed, top + slab, height, first, count, codes, ldc);
    if (tile.scalar_type() == at::kFloat) {
      convert_codes(codes, ldc, parameters, top + slab, first, height, count,
                    tile.mutable_data_ptr<float>() + slab * count);
    } else {
      convert_codes(codes, ldc, parameters, top + slab, first, height, count,
                    tile.mutable_data_ptr<at::BFloat16>() + slab * count);
    }
  }
}

// W[top:top + depth, first:first + count] into `tile` (float32 [depth, count], contiguous), 16
// rows of a column at a time as they lie together in the packing.
void Int4Codes::tile(int64_t top, int64_t first, int64_t count, at::Tensor& tile) const {
  const int64_t depth = tile.size(0);
  float* out = tile.mutable_data_ptr<float>();
  float values[16];
  for (int64_t row = 0; row < depth; row += 16) {
    const auto where = pack.rows16(top + row);
    for (int64_t column = 0; column < count; ++column) {
      pack.values16(where, top + row, first + column, values);
      for (int64_t i = 0; i < std::min<int64_t>(16, depth - row); ++i) {
        out[(row + i) * count + column] = values[i];
      }
    }
  }
}

// The weight in blocks of columns spread over the threads; each thread converts a block,
// a tile of rows at a time, into a tile of its own and multiplies there. Every row of a
// tile is a long run of contiguous codes: across rows the weight's pages change, and short
// runs would spend more on page walks than on converting.
//   float32: shallow tiles that stay in L2, accumulated into the output block.
//   bfloat16: tiles of full depth, so that the output, rounded to bfloat16 by the GEMM, is
//   written once rather than rounded at every accumulation.
template <typename Reader>
at::Tensor tiled(const at::Tensor& lhs, const Reader& reader) {
  const int64_t rows = lhs.size(0), depth = lhs.size(1), columns = reader.columns();
  const bool accumulate = lhs.scalar_type() == at::kFloat;
  const int64_t element_bytes = lhs.element_size();
  const int64_t align = kCacheLine / element_bytes;
  const int64_t width = columns_per_task(
      columns,
      accumulate ? kTileColumnsMax : std::max(align, kFullDepthTileBytes / element_bytes / depth / align * align),
      align);
  // Multiples of 16 rows, as the int4 packing holds them together.
  const int64_t tile_depth =
      accumulate ? round_up(std::max(kCacheLine, kTileBytes / element_bytes / width), 16) : depth;
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
        reader.tile(top, first, count, block);
        at::addmm_out(out, out, lhs.narrow(1, top, height), block, /*beta=*/top == 0 ? 0 : 1);
      }
    }
  });
  return result;
}

} // namespace

at::Tensor tiled_matmul(const at::Tensor& lhs, const at::Tensor& weight, const std::optional<at::Tensor>& zero_point,
                        const std::optional<at::Tensor>& scale, const std::optional<BlockedLayout>& blocked) {
  const int64_t rows = blocked ? blocked->rows : weight.size(0), columns = blocked ? blocked->columns : weight.size(1);
  TORCH_INTERNAL_ASSERT(lhs.dim() == 2 && lhs.is_contiguous() && lhs.size(1) == rows);
  TORCH_INTERNAL_ASSERT(blocked ? weight.scalar_type() == at::kChar && weight.is_contiguous() &&
                                      weight.numel() == blocked->size()
                                : weight.dim() == 2 && (weight.stride(1) == 1 || weight.size(1) == 1));
  TORCH_INTERNAL_ASSERT(lhs.scalar_type() == at::kFloat || lhs.scalar_type() == at::kBFloat16);
  for (const auto& parameter : {zero_point, scale}) {
    TORCH_INTERNAL_ASSERT(!parameter || (parameter->scalar_type() == at::kFloat && parameter->is_contiguous()));
  }
  const bool groupwise = scale && scale->dim() == 2;
  if (groupwise) {
    TORCH_INTERNAL_ASSERT(weight.scalar_type() == at::kChar && scale->size(0) == rows && columns % scale->size(1) == 0);
    TORCH_INTERNAL_ASSERT(!zero_point || zero_point->sizes() == scale->sizes());
  } else {
    TORCH_INTERNAL_ASSERT(!zero_point || zero_point->numel() == rows);
    TORCH_INTERNAL_ASSERT(!scale ||
                          (lhs.scalar_type() == at::kFloat && (scale->numel() == 1 || scale->numel() == rows)));
  }
  if (lhs.numel() == 0 || columns == 0) {
    return at::zeros({lhs.size(0), columns}, lhs.options());
  }
  CodeParameters parameters;
  parameters.zero_point = zero_point ? zero_point->const_data_ptr<float>() : nullptr;
  parameters.groups = groupwise ? scale->size(1) : 1;
  parameters.group_size = columns / parameters.groups;
  // Per tensor and per channel, lhs carries the scale; group-wise scales are applied as the
  // codes are read.
  parameters.scale = groupwise ? scale->const_data_ptr<float>() : nullptr;
  const auto row_scale = groupwise ? std::nullopt : scale;
#if defined(__x86_64__)
  const bool avx512 = cpu_capability() == CpuCapability::kAvx512;
  // The vector streams, eight weight rows into each sum at once, stay the faster up to four groups
  // of 8 rows: on a Zen 5 EPYC, from 12 x 768 x 768 to 32 x 4096 x 4096, 0.73-1.05x oneDNN's fp32
  // GEMM against the panel GEMM's 1.02-1.26x.
  const int64_t streamed_rows_end = avx512 ? 4 * kStreamedRowsMax : kStreamedRowsMax;
  if (avx512 && lhs.scalar_type() == at::kFloat && lhs.size(0) > streamed_rows_end &&
      (lhs.size(0) < kPanelGemmRowsEnd || !is_intel_cpu())) {
    // The scale is applied as lhs is packed, which is a pass over lhs anyway.
    return blocked ? panel_gemm(lhs, BlockedCodes{weight.const_data_ptr<int8_t>(), *blocked, parameters}, row_scale)
                   : panel_gemm(lhs, StoredCodes{weight, parameters}, row_scale);
  }
#else
  const int64_t streamed_rows_end = kStreamedRowsMax;
#endif
  const auto scaled = row_scale ? at::mul(lhs, *row_scale) : lhs;
  if (lhs.scalar_type() == at::kFloat && lhs.size(0) <= streamed_rows_end) {
#if defined(__x86_64__)
    if (avx512 && weight.scalar_type() != at::kChar) {
      return streamed<at::Half>(scaled, weight, std::nullopt, parameters, &stream_vectors<at::Half>);
    }
    if (avx512 && blocked && streams_in_place(*blocked)) {
      return stream_blocked(scaled, weight.const_data_ptr<int8_t>(), *blocked, parameters.zero_point);
    }
    // One group per row, or groups of whole vectors (the streamed chunks start at multiples of
    // 16 columns too).
    if (avx512 && (!groupwise || parameters.group_size % 16 == 0)) {
      return streamed<int8_t>(scaled, weight, blocked, parameters, &stream_vectors<int8_t>);
    }
#endif
    if (weight.scalar_type() != at::kChar) {
      return streamed<at::Half>(scaled, weight, std::nullopt, parameters);
    }
    return streamed<int8_t>(scaled, weight, blocked, parameters);
  }
  return blocked ? tiled(scaled, BlockedCodes{weight.const_data_ptr<int8_t>(), *blocked, parameters})
                 : tiled(scaled, StoredCodes{weight, parameters});
}

namespace {

Int4Pack int4_pack(const at::Tensor& packed, int64_t group_size, const at::Tensor& scale_and_zeros) {
  TORCH_INTERNAL_ASSERT(packed.is_contiguous() && packed.scalar_type() == at::kByte);
  TORCH_INTERNAL_ASSERT(scale_and_zeros.scalar_type() == at::kFloat && scale_and_zeros.is_contiguous());
  const int64_t rows = scale_and_zeros.size(1), columns = scale_and_zeros.size(0) * group_size;
  TORCH_INTERNAL_ASSERT(rows % 16 == 0 && group_size % 32 == 0 && packed.numel() == rows * columns / 2);
  const auto packing = int4_packing();
  return {packed.const_data_ptr<uint8_t>(),        rows,      columns, packing.block, packing.halves,
          scale_and_zeros.const_data_ptr<float>(), group_size};
}

} // namespace

at::Tensor int4pack_dequantize(const at::Tensor& packed, int64_t group_size, const at::Tensor& scale_and_zeros) {
  const auto pack = int4_pack(packed, group_size, scale_and_zeros);
  auto weight = at::empty({pack.rows, pack.columns}, scale_and_zeros.options());
  Int4Codes{pack}.tile(0, 0, pack.columns, weight);
  return weight;
}

at::Tensor int4pack_matmul(const at::Tensor& lhs, const at::Tensor& packed, int64_t group_size,
                           const at::Tensor& scale_and_zeros) {
  TORCH_INTERNAL_ASSERT(lhs.dim() == 2 && lhs.is_contiguous());
  TORCH_INTERNAL_ASSERT(lhs.scalar_type() == at::kFloat);
  const auto pack = int4_pack(packed, group_size, scale_and_zeros);
  TORCH_INTERNAL_ASSERT(lhs.size(1) == pack.rows);
  if (lhs.size(0) == 0) {
    return at::zeros({0, pack.columns}, lhs.options());
  }
#if defined(__x86_64__)
  const bool avx512 = cpu_capability() == CpuCapability::kAvx512;
  if (avx512 && lhs.size(0) <= kInt4StreamedRowsMax) {
    // Each thread takes a range of columns; its partial sums stay in L2.
    auto result = at::empty({lhs.size(0), pack.columns}, lhs.options());
    const int64_t tasks = std::min<int64_t>(at::get_num_threads(), pack.columns / 16);
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t first = piece_start(pack.columns, tasks, task, 16);
        const int64_t count = piece_start(pack.columns, tasks, task + 1, 16) - first;
        auto partial = at::empty({count * lhs.size(0) * 16}, lhs.options());
        Int4Codes{pack}.stream(lhs.size(0), lhs.const_data_ptr<float>(), lhs.size(1), first, count,
                               partial.mutable_data_ptr<float>(), result.mutable_data_ptr<float>(), pack.columns);
      }
    });
    return result;
  }
  if (avx512) {
    return panel_gemm(lhs, Int4Codes{pack}, std::nullopt);
  }
#endif
  return tiled(lhs, Int4Codes{pack});
}

} // namespace qlgrad::math
