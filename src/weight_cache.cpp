#include "weight_cache.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>
#include <list>
#include <mutex>
#include <unordered_map>

namespace qlgrad {
namespace detail {
namespace {

// Large enough for the int8 weights of a 1.5B-weight model (1 byte per element, plus 4 or 8
// bytes per output channel): a 1B-class model fits with room to spare.
constexpr int64_t kDefaultLimitBytes = int64_t{3} << 29;

using Key = const LinearPackedParamsBase*;

// How often each key was asked for lately: admission compares these. The counts halve
// once the lookups since the last halving reach kAgingFactor times the keys counted, so
// that a model no longer in use cools down and a new one can take its place; keys of
// destroyed objects fall out as their counts reach zero.
class Frequency {
 public:
  uint32_t record(Key key) {
    if (++lookups_ >= kAgingFactor * static_cast<int64_t>(counts_.size() + 1)) {
      age();
    }
    auto& count = counts_[key];
    count = std::min(count + 1, std::numeric_limits<uint32_t>::max() - 1);
    return count;
  }

  uint32_t of(Key key) const {
    auto it = counts_.find(key);
    return it == counts_.end() ? 0 : it->second;
  }

  void clear() {
    counts_.clear();
    lookups_ = 0;
  }

 private:
  static constexpr int64_t kAgingFactor = 8;

  void age() {
    for (auto it = counts_.begin(); it != counts_.end();) {
      it->second /= 2;
      it = it->second == 0 ? counts_.erase(it) : std::next(it);
    }
    lookups_ = 0;
  }

  std::unordered_map<Key, uint32_t> counts_;
  int64_t lookups_ = 0;
};

class WeightCache {
 public:
  std::optional<math::StoredWeight> find(Key key) {
    std::lock_guard<std::mutex> lock(mutex_);
    frequency_.record(key);
    auto it = entries_.find(key);
    if (it == entries_.end()) {
      ++misses_;
      return std::nullopt;
    }
    ++hits_;
    recency_.splice(recency_.begin(), recency_, it->second.recency);
    return it->second.weight;
  }

  void insert(const PackedParams& packed, const math::StoredWeight& weight) {
    const Key key = packed.get();
    const int64_t bytes = weight.nbytes();
    std::lock_guard<std::mutex> lock(mutex_);
    drop_destroyed();
    if (entries_.count(key) || !admits(key, bytes)) {
      return;
    }
    evict_until(limit_bytes_ - bytes);
    recency_.push_front(key);
    entries_.emplace(key,
                     Entry{c10::weak_intrusive_ptr<LinearPackedParamsBase>(packed), weight, bytes, recency_.begin()});
    bytes_ += bytes;
  }

  CacheInfo info() {
    std::lock_guard<std::mutex> lock(mutex_);
    drop_destroyed();
    return {static_cast<int64_t>(entries_.size()), bytes_, hits_, misses_, limit_bytes_};
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    evict_until(0);
    frequency_.clear();
    hits_ = 0;
    misses_ = 0;
  }

  void set_limit(int64_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_bytes_ = bytes;
    evict_until(limit_bytes_);
  }

 private:
  struct Entry {
    // Weak: keeps the object's memory (so its address is not reused as a key)
    // but not the object itself.
    c10::weak_intrusive_ptr<LinearPackedParamsBase> owner;
    math::StoredWeight weight;
    int64_t bytes;
    std::list<Key>::iterator recency;
  };

  // Whether `key` may take `bytes`: free room, or it was asked for clearly more often than
  // each least recently used entry that would make room for it. "Clearly": in a cycle the
  // layers asked for earlier in the current round are one ahead (and halving rounds one
  // count down while the other stays), which must not make them trade places.
  bool admits(Key key, int64_t bytes) const {
    constexpr uint32_t kMargin = 2;
    if (bytes > limit_bytes_) {
      return false;
    }
    const uint32_t candidate = frequency_.of(key);
    int64_t freed = limit_bytes_ - bytes_;
    for (auto victim = recency_.rbegin(); freed < bytes && victim != recency_.rend(); ++victim) {
      if (frequency_.of(*victim) + kMargin > candidate) {
        return false;
      }
      freed += entries_.at(*victim).bytes;
    }
    return true;
  }

  void erase(std::unordered_map<Key, Entry>::iterator it) {
    bytes_ -= it->second.bytes;
    recency_.erase(it->second.recency);
    entries_.erase(it);
  }

  void drop_destroyed() {
    for (auto it = entries_.begin(); it != entries_.end();) {
      auto next = std::next(it);
      if (it->second.owner.expired()) {
        erase(it);
      }
      it = next;
    }
  }

  void evict_until(int64_t max_bytes) {
    while (bytes_ > max_bytes && !recency_.empty()) {
      erase(entries_.find(recency_.back()));
    }
  }

  std::mutex mutex_;
  std::unordered_map<Key, Entry> entries_;
  std::list<Key> recency_;  // most recently used first
  Frequency frequency_;
  int64_t bytes_ = 0;
  int64_t hits_ = 0;
  int64_t misses_ = 0;
  int64_t limit_bytes_ = kDefaultLimitBytes;
};

// Never destroyed: backward can run from threads that outlive static destruction.
WeightCache& cache() {
  static auto* instance = new WeightCache();
  return *instance;
}

} // namespace

math::StoredWeight cached_weight(const PackedParams& packed, c10::function_ref<math::StoredWeight()> unpack) {
  if (auto weight = cache().find(packed.get())) {
    return *std::move(weight);
  }
  auto weight = unpack();
  cache().insert(packed, weight);
  return weight;
}

} // namespace detail

CacheInfo cache_info() {
  return detail::cache().info();
}

void clear_cache() {
  detail::cache().clear();
}

void set_cache_limit(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes >= 0 && bytes <= kMaxCacheLimitBytes,
                    "qlgrad.set_cache_limit: nbytes must lie in [0, 2**62] (0 disables the cache), got ", bytes);
  detail::cache().set_limit(bytes);
}

} // namespace qlgrad
