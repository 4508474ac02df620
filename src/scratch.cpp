#include "scratch.h"

#include <ATen/ATen.h>
#include <c10/util/accumulate.h>

#include <array>
#include <bit>
#include <cstdlib>
#include <memory>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace qlgrad::math {
namespace {

// The buffers' alignment: the kernels' vectors and tiles are 64 bytes, as torch's allocator aligns.
constexpr size_t kScratchAlignment = 64;

struct FreeMemory {
  void operator()(void* memory) const { std::free(memory); }
};

struct ScratchBuffer {
  std::unique_ptr<void, FreeMemory> memory;
  size_t bytes = 0;
};

thread_local std::array<ScratchBuffer, static_cast<size_t>(ScratchUse::kCount)> thread_buffers;

} // namespace

at::Tensor scratch(ScratchUse use, at::IntArrayRef sizes, at::ScalarType dtype) {
  const auto options = at::TensorOptions().dtype(dtype).device(at::kCPU);
  const auto bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * c10::elementSize(dtype);
  if (bytes == 0 || bytes > static_cast<size_t>(kScratchBytesMax)) {
    return at::empty(sizes, options);
  }
  ScratchBuffer& buffer = thread_buffers[static_cast<size_t>(use)];
  if (buffer.bytes < bytes) {
    const size_t grown = std::max(std::bit_ceil(bytes), kScratchAlignment);
    buffer.memory.reset(std::aligned_alloc(kScratchAlignment, grown));
    buffer.bytes = buffer.memory ? grown : 0;
    TORCH_CHECK(buffer.memory, "qlgrad: out of memory allocating ", grown, " bytes of scratch");
  }
#if defined(__SANITIZE_ADDRESS__)
  // The buffer past the request is poisoned, so that AddressSanitizer reports a kernel that reads or
  // writes past its tensor, as it would in memory of the tensor's own size.
  auto* memory = static_cast<char*>(buffer.memory.get());
  ASAN_UNPOISON_MEMORY_REGION(memory, bytes);
  ASAN_POISON_MEMORY_REGION(memory + bytes, buffer.bytes - bytes);
#endif
  return at::from_blob(buffer.memory.get(), sizes, options);
}

} // namespace qlgrad::math
