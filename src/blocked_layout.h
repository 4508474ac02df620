#pragma once
// int8 codes in the blocked layout in which fbgemm packs the B operand of its GEMMs
// (fbgemm::PackBMatrix): the weight of a quantized::linear_dynamic layer packed by the x86 and
// fbgemm engines, read where it lies so that a layer holds one byte per weight, not two.

#include <cstdint>

namespace qlgrad::math {

// The weight W [N, K] as fbgemm's B = W^T [K, N]: blocks of block_depth x block_width elements
// (k x n, every block whole, zero past the ends), the blocks of one range of k side by side
// along n, and those ranges one after the other. Within a block, the `interleave` consecutive
// k of one n lie together; the block's n follow each other so, and then the next `interleave` k.
struct BlockedLayout {
  int64_t rows;         // N, output features
  int64_t columns;      // K, input features
  int64_t block_depth;  // k per block
  int64_t block_width;  // n per block
  int64_t interleave;   // consecutive k of one n

  int64_t blocks_across() const { return (rows + block_width - 1) / block_width; }

  // Where W[n, k] lies, in bytes from the start of the packing.
  int64_t offset(int64_t n, int64_t k) const {
    const int64_t block_bytes = block_depth * block_width, within = k % block_depth;
    return k / block_depth * blocks_across() * block_bytes + n / block_width * block_bytes +
           within / interleave * block_width * interleave + n % block_width * interleave + within % interleave;
  }

  // The packing's bytes, padding included.
  int64_t size() const {
    return (columns + block_depth - 1) / block_depth * blocks_across() * block_depth * block_width;
  }

  // Whether fbgemm's AVX-512 packing: interleave 4, blocks of multiples of 16 both ways, which the
  // AVX-512 kernels read 16 x 16 codes (four 64-byte lines) at a time.
  bool in_squares() const { return interleave == 4 && block_width % 16 == 0 && block_depth % 16 == 0; }
};

} // namespace qlgrad::math
