#include "store/mooncake/deferred_removal_internal.h"

#include <algorithm>
#include <thread>
#include <unordered_set>

namespace mooncake_connector::mooncake {
namespace {
constexpr size_t kBatch = 512;
constexpr auto kRetryEvery = std::chrono::milliseconds(200);
}  // namespace

std::vector<std::string> DeferredRemoval::TryRemove(const Api* api, Handle handle,
                                                    const std::vector<std::string>& keys) {
  std::vector<std::string> refused;
  for (size_t first = 0; first < keys.size(); first += kBatch) {
    size_t n = std::min(kBatch, keys.size() - first);
    std::vector<const char*> c_keys;
    for (size_t i = 0; i < n; ++i) c_keys.push_back(keys[first + i].c_str());
    std::vector<int> results(n, 0);
    if (api->batch_remove != nullptr) {
      int rc = api->batch_remove(handle, c_keys.data(), n, /*force=*/0, results.data());
      if (rc != 0) std::fill(results.begin(), results.end(), rc);
    } else {
      for (size_t i = 0; i < n; ++i) results[i] = api->remove(handle, c_keys[i], /*force=*/0);
    }
    for (size_t i = 0; i < n; ++i) {
      if (IsTransientError(results[i])) refused.push_back(keys[first + i]);
    }
  }
  return refused;
}

void DeferredRemoval::Remove(std::vector<std::string> keys) {
  if (keys.empty()) return;
  std::vector<std::string> refused = TryRemove(api_, handle_, keys);
  if (refused.empty()) return;
  auto give_up_at = std::chrono::steady_clock::now() + give_up_after_;
  std::lock_guard lock(mutex_);
  for (std::string& k : refused) queue_.push_back({std::move(k), give_up_at});
  next_try_ = std::chrono::steady_clock::now() + kRetryEvery;
}

void DeferredRemoval::Flush(bool force_now) {
  auto now = std::chrono::steady_clock::now();
  std::vector<Entry> batch;
  {
    std::lock_guard lock(mutex_);
    if (queue_.empty() || (!force_now && now < next_try_)) return;
    size_t n = force_now ? queue_.size() : std::min(kBatch, queue_.size());
    batch.assign(std::make_move_iterator(queue_.begin()),
                 std::make_move_iterator(queue_.begin() + static_cast<ptrdiff_t>(n)));
    queue_.erase(queue_.begin(), queue_.begin() + static_cast<ptrdiff_t>(n));
    next_try_ = now + kRetryEvery;
  }
  std::vector<std::string> keys;
  for (const Entry& e : batch) keys.push_back(e.key);
  std::vector<std::string> refused_list = TryRemove(api_, handle_, keys);
  std::unordered_set<std::string> refused(refused_list.begin(), refused_list.end());
  std::lock_guard lock(mutex_);
  for (Entry& e : batch) {
    if (e.give_up_at > now && refused.count(e.key) != 0) {
      queue_.push_back(std::move(e));
    }
  }
}

void DeferredRemoval::Drain(std::chrono::milliseconds wait) {
  const auto end = std::chrono::steady_clock::now() + wait;
  for (;;) {
    Flush(/*force_now=*/true);
    if (pending() == 0 || std::chrono::steady_clock::now() >= end) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

size_t DeferredRemoval::pending() const {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

}  // namespace mooncake_connector::mooncake
