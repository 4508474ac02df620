#pragma once
// Scratch memory: the buffers that a product needs only while it runs (an int8 gradient's codes,
// lhs packed for the kernels, each thread's panels and sums), kept by each thread for its next
// product instead of allocated anew. Blocks of a few hundred KiB to a few MiB that are allocated
// and freed on every call are often returned to the system by glibc's malloc as they are freed
// (its heaps trimmed, its largest blocks unmapped), so that each call wrote them in fresh pages:
// on a Sapphire Rapids Xeon, 2 threads, the int8 input gradient of 256 x 3072 -> 768 called in a
// loop took 0.73-1.40 ms a call with 60-600 page faults, and takes 0.61 ms with none; that of 2048
// rows 10.0-10.7 ms with 4500, now 4.1 ms. (Outputs, which the caller keeps, are allocated as
// before.)

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace qlgrad::math {

// What a scratch buffer holds. Each use has a buffer of its own in each thread, so that a product
// holds one of each at once (the calling thread packs lhs, then takes its share of the panels and
// sums as one of the threads).
enum class ScratchUse { kGradientCodes, kPackedRows, kPanels, kSums, kCount };

// Larger buffers are allocated for the call alone: a thread keeps at most this much per use.
constexpr int64_t kScratchBytesMax = int64_t{32} << 20;

// An uninitialized contiguous CPU tensor of `sizes` and `dtype` in this thread's buffer for `use`,
// valid until the same thread asks for the same use again: it never leaves the product that asks
// for it. The buffer grows to the largest size asked for (in powers of two, up to
// kScratchBytesMax) and is freed when the thread ends.
at::Tensor scratch(ScratchUse use, at::IntArrayRef sizes, at::ScalarType dtype);

} // namespace qlgrad::math
