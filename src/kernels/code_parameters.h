#pragma once
// What every kernel over int8 codes or float16 values shares: the parameters that turn codes into
// values, the runs of one group, the conversions of one value, and the unrolling over a row count.
// Inline and without an instruction set of their own: each kernel file compiles them for its own.

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace qlgrad::math {

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

// The runs of a block of `count` columns from column `first` of the weight that each lie in one
// group, in order: the run's group, and its columns [begin, end) within the block. Advanced by
// additions (a division per run costs as much as a run of 32 columns).
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

// The group of each column, for columns visited in increasing order from `column` on: a division
// at the start, then additions.
struct GroupCursor {
  int64_t group, end, group_size, last;

  [[gnu::always_inline]] GroupCursor(const CodeParameters& parameters, int64_t column)
      : group(std::min(column / parameters.group_size, parameters.groups - 1)),
        end((group + 1) * parameters.group_size),
        group_size(parameters.group_size),
        last(parameters.groups - 1) {}

  [[gnu::always_inline]] int64_t at(int64_t column) {
    while (column >= end && group < last) {
      ++group;
      end += group_size;
    }
    return group;
  }
};

template <typename Code>
[[gnu::always_inline]] inline float code_value(Code code) {
  return static_cast<float>(code);
}

template <>
[[gnu::always_inline]] inline float code_value(at::Half code) {
  return c10::detail::fp16_ieee_to_fp32_value(code.x);
}

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

// kernel.template operator()<Rows>() with Rows = rows, for rows in [1, Max]: kernels whose loops
// over rows are unrolled take the row count as a template argument. The kernel is a lambda of
// the calling kernel file, and so compiled for that file's instruction set.
template <int64_t Max, typename Kernel>
[[gnu::always_inline]] inline void with_rows(int64_t rows, const Kernel& kernel) {
  if constexpr (Max > 1) {
    if (rows < Max) {
      return with_rows<Max - 1>(rows, kernel);
    }
  }
  kernel.template operator()<Max>();
}

} // namespace qlgrad::math
