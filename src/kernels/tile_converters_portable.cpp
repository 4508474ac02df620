#include "tile_converters.h"
#include "variants.h"

namespace qlgrad::math {
namespace {

// No vectors: every run goes the portable way.
constexpr auto kNoVectors = [](const int8_t*, float, float, int64_t begin, int64_t, auto*) { return begin; };

} // namespace

void convert_codes_float_portable(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                                  int64_t first, int64_t depth, int64_t columns, float* tile) {
  convert_codes(codes, ldw, parameters, top, first, depth, columns, tile, kNoVectors);
}

void convert_codes_bfloat16_portable(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                                     int64_t first, int64_t depth, int64_t columns, at::BFloat16* tile) {
  convert_codes(codes, ldw, parameters, top, first, depth, columns, tile, kNoVectors);
}

} // namespace qlgrad::math
