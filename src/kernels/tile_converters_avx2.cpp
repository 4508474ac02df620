#include "tile_converters.h"
#include "variants.h"

#include "avx2.h"

namespace qlgrad::math {
namespace {

// Eight codes at a time, converted and stored as float32 or as bfloat16 rounded to nearest even.
template <typename Element>
void convert_codes_avx2(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top, int64_t first,
                        int64_t depth, int64_t columns, Element* tile) {
  constexpr int64_t kLanes = 8;
  const auto vectors = [](const int8_t* row, float offset, float factor, int64_t begin, int64_t end, Element* out) {
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
        const __m256i rounding = _mm256_add_epi32(_mm256_set1_epi32(0x7FFF),
                                                  _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1)));
        const __m256i upper = _mm256_srli_epi32(_mm256_add_epi32(bits, rounding), 16);
        const __m256i packed_words = _mm256_permute4x64_epi64(_mm256_packus_epi32(upper, upper), 0b1000);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c), _mm256_castsi256_si128(packed_words));
      }
    }
    return c;
  };
  convert_codes(codes, ldw, parameters, top, first, depth, columns, tile, vectors);
}

} // namespace

void convert_codes_float_avx2(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                              int64_t first, int64_t depth, int64_t columns, float* tile) {
  convert_codes_avx2(codes, ldw, parameters, top, first, depth, columns, tile);
}

void convert_codes_bfloat16_avx2(const int8_t* codes, int64_t ldw, const CodeParameters& parameters, int64_t top,
                                 int64_t first, int64_t depth, int64_t columns, at::BFloat16* tile) {
  convert_codes_avx2(codes, ldw, parameters, top, first, depth, columns, tile);
}

} // namespace qlgrad::math
