#include "weight_cache.h"

#include <c10/util/Exception.h>

#include <list>
#include <map>
#include <mutex>

namespace qlgrad {
namespace detail {
namespace {

constexpr int64_t kDefaultLimitBytes = int64_t{1} << 30;

using Key = std::pair<const LinearPackedParamsBase*, Precision>;

class WeightCache {
 public:
  std::optional<CachedWeight> find(const Key& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(key);
    if (it == entries_.end()) {
      ++misses_;
      return std::nullopt;
    }
    ++hits_;
    recency_.splice(recency_.begin(), recency_, it->second.recency);
    return it->second.weight;
  }

  void insert(const PackedParams& packed, const Key& key, const CachedWeight& weight) {
    const int64_t bytes = weight.weight.nbytes();
    std::lock_guard<std::mutex> lock(mutex_);
    drop_destroyed();
    if (bytes > limit_bytes_ || entries_.count(key)) {
      return;
    }
    evict_until(limit_bytes_ - bytes);
    recency_.push_front(key);
    entries_.emplace(key, Entry{c10::weak_intrusive_ptr<LinearPackedParamsBase>(packed), weight,
                                bytes, recency_.begin()});
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
    CachedWeight weight;
    int64_t bytes;
    std::list<Key>::iterator recency;
  };

  void erase(std::map<Key, Entry>::iterator it) {
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
  std::map<Key, Entry> entries_;
  std::list<Key> recency_;  // most recently used first
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

CachedWeight cached_weight(const PackedParams& packed, Precision precision,
                           c10::function_ref<CachedWeight()> derive) {
  const Key key{packed.get(), precision};
  if (auto weight = cache().find(key)) {
    return *std::move(weight);
  }
  auto weight = derive();
  cache().insert(packed, key, weight);
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
  TORCH_CHECK_VALUE(bytes >= 0, "qlgrad.set_cache_limit: nbytes must be >= 0, got ", bytes);
  detail::cache().set_limit(bytes);
}

} // namespace qlgrad
