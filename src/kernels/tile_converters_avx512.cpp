#include "tile_converters.h"
#include "variants.h"

#include "avx512.h"

namespace qlgrad::math {
namespace {

// Sixteen codes at a time, converted and stored as float32 or as bfloat16 rounded to nearest even.
template <typename Element>
void convert_codes_avx512(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                          int64_t first, int64_t depth, int64_t columns, Element* tile) {
  constexpr int64_t kLanes = 16;
  const auto vectors = [](const int8_t* row, float offset, float factor, int64_t begin, int64_t end, Element* out) {
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
        const __m256i upper = _mm512_cvtepi32_epi16(_mm512_srli_epi32(avx512::bfloat16_rounding(values), 16));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c), upper);
      }
    }
    return c;
  };
  convert_codes(codes, ldw, parameters, top, first, depth, columns, tile, vectors);
}

} // namespace

void convert_codes_float_avx512(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                                int64_t first, int64_t depth, int64_t columns, float* tile) {
  convert_codes_avx512(codes, ldw, parameters, top, first, depth, columns, tile);
}

void convert_codes_bfloat16_avx512(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                                   int64_t first, int64_t depth, int64_t columns, at::BFloat16* tile) {
  convert_codes_avx512(codes, ldw, parameters, top, first, depth, columns, tile);
}

} // namespace qlgrad::math
