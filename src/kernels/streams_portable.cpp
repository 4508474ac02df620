#include "streams.h"
#include "variants.h"

namespace qlgrad::math {

void stream_int8_portable(int64_t rows, const StreamArguments<int8_t>& arguments) {
  stream_up_to_max(rows, arguments);
}

void stream_float16_portable(int64_t rows, const StreamArguments<at::Half>& arguments) {
  stream_up_to_max(rows, arguments);
}

} // namespace qlgrad::math
