// Removal of objects that readers may still hold a lease on (the chunks of a
// value just overwritten). Mooncake refuses a plain remove of a leased object
// (-706) until the lease expires, and mooncake:// never force-removes (a
// reader in flight would then receive whatever reuses the memory). So these
// objects are removed when their leases allow: tried at once, then again
// whenever the store is written to, until removed or `give_up_after`, and
// for a moment when the store closes. What is still leased then stays until a
// remove() of its key sweeps it (docs/mooncake_layout.md).
#pragma once

#include <chrono>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "store/mooncake/mooncake_api_internal.h"

namespace mooncake_connector::mooncake {

class DeferredRemoval {
 public:
  DeferredRemoval(const Api* api, Handle handle, std::chrono::milliseconds give_up_after)
      : api_(api), handle_(handle), give_up_after_(give_up_after) {}
  // At close, what is queued is tried until removed or kCloseWait has
  // passed: a lease taken by a read just before an overwrite (Mooncake's is
  // configurable; short ones are common) runs out meanwhile, so the replaced
  // chunks do not outlive the client unreferenced.
  static constexpr std::chrono::milliseconds kCloseWait{2000};
  ~DeferredRemoval() { Drain(kCloseWait); }
  // Retries everything queued until it is removed or `wait` has passed.
  void Drain(std::chrono::milliseconds wait);

  // Removes `keys` now where possible and queues the leased ones.
  void Remove(std::vector<std::string> keys);
  // Retries queued keys that are due (or all of them with force_now).
  void Flush(bool force_now = false);
  size_t pending() const;

  // Removes `keys` with plain (non-force) removes, batched. Returns the keys
  // that were refused for a transient reason (leased, not ready).
  static std::vector<std::string> TryRemove(const Api* api, Handle handle,
                                            const std::vector<std::string>& keys);

 private:
  struct Entry {
    std::string key;
    std::chrono::steady_clock::time_point give_up_at;
  };
  const Api* api_;
  Handle handle_;
  const std::chrono::milliseconds give_up_after_;
  mutable std::mutex mutex_;
  std::deque<Entry> queue_;
  std::chrono::steady_clock::time_point next_try_{};
};

}  // namespace mooncake_connector::mooncake
