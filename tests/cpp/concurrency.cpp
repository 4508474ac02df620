// Worker threads call the public backward functions on shared packed params and weights,
// in every precision, while another thread empties the weight cache and changes its limit
// (0 included). Some calls pack a weight afresh and drop it on return, so that entries of
// destroyed params are swept while other threads use the cache, and a new object that
// takes a freed address is never served the weight of the one before. Every result must
// equal, bit for bit, the one computed on a single thread before the workers started; a
// thread that does not finish in time is a failure, not a hang.

#include "testing.h"

#include <qlgrad/qlgrad.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <thread>
#include <vector>

namespace {

using qlgrad::kPrecisions;
using qlgrad::Precision;
using qlgrad_test::Tally;

constexpr int kWorkers = 8;
constexpr int kIterationsPerWorker = 1000;
constexpr auto kDeadline = std::chrono::seconds(240);
// Between two changes of the cache, long enough for workers to find weights in it, so that
// hits contend with misses, insertions and changes (without a pause nearly every call misses).
constexpr auto kCacheChangeInterval = std::chrono::milliseconds(1);
// 0 disables the cache; 4 KiB holds no weight here; 1 GiB holds them all.
constexpr std::array<int64_t, 4> kCacheLimits{0, int64_t{1} << 12, int64_t{1} << 16, int64_t{1} << 30};

// The shared arguments and the backward functions that take them.
struct Shared {
  qlgrad_test::Int8Weight int8;
  qlgrad_test::PackedParams fp16_packed;
  std::vector<at::Tensor> grad_outputs;
  // Packed afresh for every call, one weight per grad_output: different weights, so that
  // a weight served to the wrong object changes the result.
  std::vector<qlgrad_test::Int8Weight> fresh;
};

enum class Entry { kPackedInt8, kPackedFp16, kPlainInt8, kFreshPackedInt8 };
constexpr std::array<Entry, 4> kEntries{Entry::kPackedInt8, Entry::kPackedFp16, Entry::kPlainInt8,
                                        Entry::kFreshPackedInt8};

using Key = std::tuple<Entry, Precision, size_t>;  // entry, precision, grad_output index

at::Tensor call(const Shared& shared, const Key& key) {
  const auto [entry, precision, index] = key;
  const at::Tensor& grad_output = shared.grad_outputs[index];
  switch (entry) {
    case Entry::kPackedInt8: return qlgrad::linear_dynamic_backward(grad_output, shared.int8.packed, precision);
    case Entry::kPackedFp16: return qlgrad::linear_dynamic_fp16_backward(grad_output, shared.fp16_packed, precision);
    case Entry::kPlainInt8:
      return qlgrad::linear_int8_backward(grad_output, shared.int8.values, shared.int8.scale, shared.int8.zero_point,
                                          precision);
    case Entry::kFreshPackedInt8:
      return qlgrad::linear_dynamic_backward(grad_output, qlgrad_test::prepack_int8(shared.fresh[index].quantized),
                                             precision);
  }
  std::abort();
}

const char* entry_name(Entry entry) {
  switch (entry) {
    case Entry::kPackedInt8: return "linear_dynamic_backward";
    case Entry::kPackedFp16: return "linear_dynamic_fp16_backward";
    case Entry::kPlainInt8: return "linear_int8_backward";
    case Entry::kFreshPackedInt8: return "linear_dynamic_backward on params packed for the call";
  }
  std::abort();
}

// Counts workers still running, so that main can wait with a deadline (std::thread has no
// timed join).
class Countdown {
 public:
  explicit Countdown(int count) : count_(count) {}
  void done() {
    std::lock_guard<std::mutex> lock(mutex_);
    --count_;
    changed_.notify_all();
  }
  bool wait_for(std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, timeout, [this] { return count_ == 0; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  int count_;
};

} // namespace

int main() {
  at::manual_seed(0);
  Tally tally;
  Shared shared{qlgrad_test::int8_weight(256, 96),
                qlgrad_test::prepack_fp16(at::randn({256, 96}) * 0.1),
                // The last has rows enough for a backward that splits rows among intra-op
                // threads (at::parallel_for) to split them, and with the weight's 256 outputs
                // takes fp32's three bfloat16 products where the CPU has AMX tiles.
                {at::randn({8, 256}), at::randn({2, 3, 256}), at::randn({256, 1}).t(), at::randn({1024, 256})},
                {}};
  for (size_t i = 0; i < shared.grad_outputs.size(); ++i) {
    shared.fresh.push_back(qlgrad_test::int8_weight(256, 96));
  }

  std::map<Key, at::Tensor> expected;
  for (Entry entry : kEntries) {
    for (Precision precision : kPrecisions) {
      for (size_t i = 0; i < shared.grad_outputs.size(); ++i) {
        expected[{entry, precision, i}] = call(shared, {entry, precision, i});
      }
    }
  }

  std::atomic<int64_t> mismatches{0}, errors{0}, calls{0}, cache_changes{0}, cache_hits{0};
  std::atomic<bool> stop_cache_thread{false};
  Countdown running(kWorkers);
  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      for (int i = 0; i < kIterationsPerWorker; ++i) {
        const Key key{kEntries[(w + i) % kEntries.size()], kPrecisions[(w + 2 * i) % kPrecisions.size()],
                      static_cast<size_t>(i) % shared.grad_outputs.size()};
        try {
          const auto got = call(shared, key);
          if (!at::equal(got, expected.at(key))) {
            ++mismatches;
            tally.check(std::string("worker result equals the single-threaded one: ") + entry_name(std::get<0>(key)) +
                            " " + qlgrad::precision_name(std::get<1>(key)),
                        false);
          }
        } catch (const std::exception& e) {
          ++errors;
          tally.check("worker call", false, e.what());
        }
        ++calls;
      }
      running.done();
    });
  }
  std::thread cache_thread([&] {
    for (int64_t i = 0; !stop_cache_thread.load(); ++i) {
      qlgrad::clear_cache();
      qlgrad::set_cache_limit(kCacheLimits[i % kCacheLimits.size()]);
      const auto info = qlgrad::cache_info();
      if (info.bytes > info.limit_bytes) {
        tally.check("cache bytes within the limit", false, std::to_string(info.bytes));
      }
      ++cache_changes;
      std::this_thread::sleep_for(kCacheChangeInterval);
      cache_hits += qlgrad::cache_info().hits - info.hits;
    }
  });

  if (!running.wait_for(kDeadline)) {
    tally.check("workers finish before the deadline", false, "a thread hangs; not joining it");
    tally.finish();
    std::_Exit(1);
  }
  stop_cache_thread = true;
  cache_thread.join();
  for (auto& worker : workers) {
    worker.join();
  }

  tally.check("every call returned", errors == 0 && calls == kWorkers * kIterationsPerWorker);
  tally.check("every result equals the single-threaded one, bit for bit", mismatches == 0);
  tally.check("the cache thread ran", cache_changes > 0);
  tally.check("workers found weights in the cache between changes", cache_hits > 0);
  qlgrad_test::report_figure("threads", kWorkers);
  qlgrad_test::report_figure("iterations_per_thread", kIterationsPerWorker);
  qlgrad_test::report_figure("cache_changes", cache_changes.load());
  qlgrad_test::report_figure("cache_hits", cache_hits.load());
  return tally.finish();
}
