// Copies out of a blocked packing (fbgemm's), any layout.

#include "variants.h"

#include <algorithm>
#include <cstring>

namespace qlgrad::math {

// Each n's codes a run of up to `interleave` bytes at a time, the runs of one block
// `block_width * interleave` bytes apart.
void copy_blocked_portable(const BlockedLayout& layout, const int8_t* packed, int64_t top, int64_t depth, int64_t first,
                           int64_t count, int8_t* out, int64_t ldo) {
  const int64_t interleave = layout.interleave, run_stride = layout.block_width * interleave;
  for (int64_t i = 0; i < depth; ++i) {
    int8_t* row = out + i * ldo;
    for (int64_t j = 0; j < count;) {
      // The rest of this block's range of k, from k = first + j.
      const int64_t k = first + j, block_end = std::min(count, j + layout.block_depth - k % layout.block_depth);
      const int8_t* run = packed + layout.offset(top + i, k - k % interleave);
      for (int64_t skip = k % interleave; j < block_end; run += run_stride, skip = 0) {
        const int64_t length = std::min(interleave - skip, block_end - j);
        if (length == 4) {
          std::memcpy(row + j, run, 4);  // fbgemm's int8 interleave: one 4-byte move
        } else {
          std::memcpy(row + j, run + skip, length);
        }
        j += length;
      }
    }
  }
}

} // namespace qlgrad::math
