// Removal of objects that readers may still hold a lease on (the chunks of a
// value just overwritten). Mooncake refuses a plain remove of a leased object
// (-706) until the lease expires, and mooncake:// never force-removes (a
// reader in flight would then receive whatever reuses the memory). So these
// objects are removed when their leases allow: tried at once, then again
// whenever the store is written to, until removed or `give_up_after`. What is
// still leased when the store closes stays until a remove() of its key sweeps
// it (docs/mooncake_layout.md).
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
  ~DeferredRemoval() { Flush(/*force_now=*/true); }

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
