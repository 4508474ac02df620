#pragma once
// The tile converter (ConvertCodesFn) as plain loops: the portable kernel, and the runs that the
// vector converters' registers do not fill.

#include "kernels.h"

namespace qlgrad::math {

// out[c] = (codes[c] - offset) * factor for c in [begin, end), as float32 or as bfloat16.
template <typename Element>
[[gnu::always_inline]] inline void convert_run(const int8_t* codes, float offset, float factor, int64_t begin,
                                               int64_t end, Element* out) {
  for (int64_t c = begin; c < end; ++c) {
    store_value((static_cast<float>(codes[c]) - offset) * factor, out + c);
  }
}

// The converter of kernels.h, with Vectors(row, offset, factor, begin, end, out) converting the
// leading whole vectors of each run and returning where it stopped; the rest of the run goes the
// portable way. GCC lowers an int8-to-float conversion of generic vectors lane by lane, so the
// vector converters are written with intrinsics.
template <typename Element, typename Vectors>
[[gnu::always_inline]] inline void convert_codes(const int8_t* codes, int64_t ldw, const CodeParameters& parameters,
                                                 int64_t top, int64_t first, int64_t depth, int64_t columns,
                                                 Element* tile, const Vectors& vectors) {
  for (int64_t n = 0; n < depth; ++n) {
    const int8_t* row = codes + n * ldw;
    Element* out = tile + n * columns;
    for (GroupRuns run(first, columns, parameters.group_size); run.more(); run.next()) {
      const float offset = parameters.offset(top + n, run.group), factor = parameters.factor(top + n, run.group);
      const int64_t converted = vectors(row, offset, factor, run.begin, run.end, out);
      convert_run(row, offset, factor, converted, run.end, out);
    }
  }
}

} // namespace qlgrad::math
