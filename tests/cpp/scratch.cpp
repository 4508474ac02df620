// The per-thread scratch buffers (src/scratch.h): a use's buffer is reused by the same thread, grows
// to the largest size asked for, is 64-byte aligned, and lies apart from the thread's other uses
// and from every other thread's; past the limit a request gets memory of its own. Under the
// sanitizers: threads that write their buffers at once do not race, and the buffers are freed with
// their threads (a leak fails the run), and under AddressSanitizer a buffer past a request is
// poisoned, as memory of the request's own size would end there.

#include "testing.h"

#include "scratch.h"

#include <barrier>
#include <cstdint>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace {

using qlgrad::math::kScratchBytesMax;
using qlgrad::math::scratch;
using qlgrad::math::ScratchUse;

uintptr_t address(const at::Tensor& tensor) {
  return reinterpret_cast<uintptr_t>(tensor.const_data_ptr());
}

bool apart(const at::Tensor& a, const at::Tensor& b) {
  return address(a) + a.nbytes() <= address(b) || address(b) + b.nbytes() <= address(a);
}

// Every byte written and read back: where a buffer were smaller than the tensor, AddressSanitizer
// would report it.
bool holds(at::Tensor tensor, uint8_t value) {
  auto bytes = tensor.view({-1}).view(at::kByte);
  bytes.fill_(value);
  return bytes.eq(value).all().item<bool>();
}

} // namespace

int main() {
  qlgrad_test::Tally tally;

  const auto first = scratch(ScratchUse::kPanels, {1000}, at::kFloat);
  tally.check("a scratch tensor has the sizes and dtype asked for",
              first.sizes() == at::IntArrayRef{1000} && first.scalar_type() == at::kFloat && first.is_contiguous());
  tally.check("its memory is 64-byte aligned", address(first) % 64 == 0);
  tally.check("it holds what is written to it", holds(first, 0x5A));
  const auto smaller = scratch(ScratchUse::kPanels, {10, 20}, at::kBFloat16);
  tally.check("the same use in the same thread reuses the buffer", address(smaller) == address(first));
  const auto larger = scratch(ScratchUse::kPanels, {3, 100000}, at::kInt);
  tally.check("a larger request grows the buffer, all of it usable", holds(larger, 0xA5));
  tally.check("the grown buffer is reused too",
              address(scratch(ScratchUse::kPanels, {3, 100000}, at::kInt)) == address(larger));

  // One tensor of every use at once, as a product holds them.
  std::vector<at::Tensor> uses;
  for (const auto use : {ScratchUse::kGradientCodes, ScratchUse::kPackedRows, ScratchUse::kPanels, ScratchUse::kSums}) {
    uses.push_back(scratch(use, {4096}, at::kFloat));
  }
  bool all_apart = true;
  for (size_t i = 0; i < uses.size(); ++i) {
    for (size_t j = i + 1; j < uses.size(); ++j) {
      all_apart = all_apart && apart(uses[i], uses[j]);
    }
  }
  tally.check("each use has a buffer of its own", all_apart);

  const auto kept = scratch(ScratchUse::kSums, {16}, at::kFloat);
  const auto beyond = scratch(ScratchUse::kSums, {kScratchBytesMax + 1}, at::kByte);
  tally.check("past the limit a request gets memory of its own",
              beyond.storage().nbytes() >= beyond.nbytes() && apart(beyond, kept) && holds(beyond, 0x11));
  tally.check("and the buffer is kept as it was",
              address(scratch(ScratchUse::kSums, {16}, at::kFloat)) == address(kept));
  tally.check("an empty request gets an empty tensor", scratch(ScratchUse::kSums, {0, 7}, at::kFloat).numel() == 0);

#if defined(__SANITIZE_ADDRESS__)
  // A buffer grown for a larger request keeps AddressSanitizer's view of a smaller one: the bytes
  // past it are poisoned (from the next 8-byte granule), and a larger request again clears them.
  scratch(ScratchUse::kPackedRows, {4096}, at::kByte);
  const auto* small = static_cast<const char*>(scratch(ScratchUse::kPackedRows, {100}, at::kByte).const_data_ptr());
  const bool poisoned_past = __asan_address_is_poisoned(small + 104) && !__asan_address_is_poisoned(small + 99);
  const auto* again = static_cast<const char*>(scratch(ScratchUse::kPackedRows, {4096}, at::kByte).const_data_ptr());
  tally.check("under AddressSanitizer the buffer past a request is poisoned, and cleared for a larger one",
              poisoned_past && !__asan_address_is_poisoned(again + 4095));
#endif

  // Threads at once: each writes its own buffer for the same use, and notes where it lies while
  // every thread still holds its own (a thread's buffers are freed as it ends).
  constexpr int kThreads = 4;
  std::vector<uintptr_t> addresses(kThreads);
  std::vector<char> kept_writes(kThreads, 0);
  std::barrier all_noted(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      bool each = true;
      for (int round = 0; round < 50; ++round) {
        auto buffer = scratch(ScratchUse::kPanels, {1 << 16}, at::kByte);
        each = each && holds(buffer, static_cast<uint8_t>(t + round));
        addresses[t] = address(buffer);
      }
      kept_writes[t] = each ? 1 : 0;
      all_noted.arrive_and_wait();
    });
  }
  for (auto& thread : threads) {
    thread.join();
  }
  bool each_kept = true, distinct = true;
  for (int t = 0; t < kThreads; ++t) {
    each_kept = each_kept && kept_writes[t] == 1;
    for (int u = t + 1; u < kThreads; ++u) {
      distinct = distinct && addresses[t] != addresses[u];
    }
  }
  tally.check("threads writing their buffers at once each keep what they wrote", each_kept);
  tally.check("each thread has buffers of its own", distinct);
  return tally.finish();
}
