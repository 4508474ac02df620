#pragma once
// The stream (StreamFn) as plain loops that the compiler vectorizes: streams_portable.cpp,
// streams_avx2.cpp and streams_avx512.cpp compile it for their instruction sets.

#include "kernels.h"

#include <algorithm>

namespace qlgrad::math {

// The stream of kernels.h for Rows rows of lhs.
template <int64_t Rows, typename Code>
[[gnu::always_inline]] inline void stream_rows(const StreamArguments<Code>& arguments) {
  constexpr int64_t kDepthBlock = 128;
  const auto [lhs, ldl, begin, end, weight, ldw, parameters, first, columns, sums, lds, block_sums] = arguments;
  const int64_t ldb = block_sums_stride(columns);
  for (int64_t top = begin; top < end; top += kDepthBlock) {
    std::fill(block_sums, block_sums + Rows * ldb, 0.0f);
    for (int64_t n = top; n < std::min(end, top + kDepthBlock); ++n) {
      const Code* row = weight + n * ldw;
      for (GroupRuns run(first, columns, parameters->group_size); run.more(); run.next()) {
        const int64_t group = run.group, run_begin = run.begin, run_end = run.end;
        const float offset = parameters->offset(n, group), scale = parameters->factor(n, group);
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

// The stream for 1 to kStreamedRowsMax rows, inlined into (and so compiled for the instruction
// set of) each kernel file's entry point.
template <typename Code>
[[gnu::always_inline]] inline void stream_up_to_max(int64_t rows, const StreamArguments<Code>& arguments) {
  with_rows<kStreamedRowsMax>(rows,
                              [&]<int64_t Rows>() __attribute__((always_inline)) { stream_rows<Rows>(arguments); });
}

} // namespace qlgrad::math
