#include "streams.h"
#include "variants.h"

#include "avx2.h"

namespace qlgrad::math {

void stream_int8_avx2(int64_t rows, const StreamArguments<int8_t>& arguments) {
  stream_up_to_max(rows, arguments);
}

void stream_float16_avx2(int64_t rows, const StreamArguments<at::Half>& arguments) {
  stream_up_to_max(rows, arguments);
}

} // namespace qlgrad::math
