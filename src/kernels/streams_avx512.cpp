// The streams of AVX-512 CPUs: the compiler-vectorized one for group sizes that are not whole
// vectors, and one written with intrinsics, eight weight rows at a time, for int8 codes (per
// tensor, per channel, or with group-wise scales whose groups are whole vectors, where the
// compiler's loop over a run of unknown length spends more on its prologue and remainder than on
// the 2 to 16 vectors of a group) and for float16 values, which GCC converts one at a time.

#include "streams.h"
#include "variants.h"

#include <algorithm>

#include "avx512.h"

namespace qlgrad::math {
namespace {

using avx512::lanes_mask;
using avx512::load_values16;

// Weight rows n to n + Together - 1 added into block_sums (Rows x columns), 16 columns at a time
// (masked at the end of a run), one row after the other into each sum as stream_rows adds
// them: each sum is loaded and stored once for Together rows, where a row at a time spends more
// on the sums than on reading its codes. Each group's run takes lhs's factors times its scale
// once, as stream_rows does; with Offsets its zero point is subtracted from each value. Each line
// of the Together rows asks for the line of the next Together rows (those before rows_end) at its
// column: eight runs of rows 4 KiB apart are more streams than the hardware prefetchers keep up
// with. On a Zen 5 EPYC, 2 threads, 4096 x 4096 weights alternated in one process, in L3 or
// evicted: groups of 32 at one row 0.65-0.83x the time, at 4 rows 0.92-1.00x, at 8 rows
// 0.92-1.01x; groups of 128 at one row 0.77-0.95x; float16 values at 1-4 rows 0.65-0.74x.
template <int64_t Rows, int64_t Together, bool Offsets, typename Code>
void accumulate_vectors(const float* lhs, int64_t ldl, int64_t n, int64_t rows_end, const Code* weight, int64_t ldw,
                        const CodeParameters& parameters, int64_t first, int64_t columns, float* block_sums) {
  constexpr int64_t kLanes = 16;
  const int64_t ldb = block_sums_stride(columns);
  for (GroupRuns run(first, columns, parameters.group_size); run.more(); run.next()) {
    __m512 offset[Together];
    float factor[Rows][Together];
    for (int64_t j = 0; j < Together; ++j) {
      if constexpr (Offsets) {
        offset[j] = _mm512_set1_ps(parameters.offset(n + j, run.group));
      }
      const float scale = parameters.factor(n + j, run.group);
      for (int64_t r = 0; r < Rows; ++r) {
        factor[r][j] = lhs[r * ldl + n + j] * scale;
      }
    }
    for (int64_t c = run.begin; c < run.end; c += kLanes) {
      if constexpr (Together > 1) {
        avx512::prefetch_column(weight, ldw, n + Together, std::min(rows_end, n + 2 * Together), c);
      }
      const __mmask16 mask = lanes_mask(run.end - c);
      __m512 value[Together];
#pragma GCC unroll 8
      for (int64_t j = 0; j < Together; ++j) {
        value[j] = load_values16(mask, weight + (n + j) * ldw + c);
        if constexpr (Offsets) {
          value[j] = _mm512_sub_ps(value[j], offset[j]);
        }
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

// The stream of kernels.h for Rows rows of lhs, eight weight rows into each sum at once.
template <int64_t Rows, typename Code>
void stream_vectors_rows(const StreamArguments<Code>& arguments) {
  constexpr int64_t kDepthBlock = 128, kLanes = 16, kTogether = 8;
  const auto [lhs, ldl, begin, end, weight, ldw, parameters, first, columns, sums, lds, block_sums] = arguments;
  const int64_t ldb = block_sums_stride(columns);
  // Without zero points (float16 values, symmetric codes) nothing is subtracted: on a Zen 4 EPYC,
  // 2 threads, alternated in one process, two runs, float32 gradients of symmetric int8 codes per
  // channel (4096 x 4096, 896 -> 4864, 4864 -> 896, 1024 -> 2816) at one row 0.81-0.91x the time,
  // at 2-4 rows 0.89-0.99x, at 8-32 rows 0.97-1.01x; bfloat16 gradients of float16 values at 1-8
  // rows 0.90-0.95x. (fbgemm's packing, streamed by stream_blocked, measured the same either way.)
  const bool offsets = parameters->zero_point != nullptr;
  const auto accumulate =
      offsets ? &accumulate_vectors<Rows, kTogether, true, Code> : &accumulate_vectors<Rows, kTogether, false, Code>;
  const auto accumulate_one =
      offsets ? &accumulate_vectors<Rows, 1, true, Code> : &accumulate_vectors<Rows, 1, false, Code>;
  for (int64_t top = begin; top < end; top += kDepthBlock) {
    std::fill(block_sums, block_sums + Rows * ldb, 0.0f);
    const int64_t block_end = std::min(end, top + kDepthBlock);
    int64_t n = top;
    for (; n + kTogether <= block_end; n += kTogether) {
      accumulate(lhs, ldl, n, end, weight, ldw, *parameters, first, columns, block_sums);
    }
    for (; n < block_end; ++n) {
      accumulate_one(lhs, ldl, n, end, weight, ldw, *parameters, first, columns, block_sums);
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

template <typename Code>
void stream_vectors(int64_t rows, const StreamArguments<Code>& arguments) {
  with_rows<kStreamedRowsMax>(rows, [&]<int64_t Rows>() { stream_vectors_rows<Rows>(arguments); });
}

} // namespace

void stream_int8_avx512(int64_t rows, const StreamArguments<int8_t>& arguments) {
  stream_up_to_max(rows, arguments);
}

void stream_int8_vectors_avx512(int64_t rows, const StreamArguments<int8_t>& arguments) {
  stream_vectors(rows, arguments);
}

void stream_float16_vectors_avx512(int64_t rows, const StreamArguments<at::Half>& arguments) {
  stream_vectors(rows, arguments);
}

} // namespace qlgrad::math
