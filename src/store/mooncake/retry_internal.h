// Bounded retries of Mooncake's transient refusals (replica not ready while
// an upsert runs, a read lease that blocks a remove, a lease that expired
// during a transfer), and a few retries of transfer/RPC failures.
#pragma once

#include <chrono>
#include <cstdint>

#include "store/mooncake/mooncake_api_internal.h"

namespace mooncake_connector::mooncake {

// The time one operation may spend, and the pauses between its attempts.
class Deadline {
 public:
  explicit Deadline(std::chrono::milliseconds budget)
      : end_(std::chrono::steady_clock::now() + budget) {}

  bool Expired() const { return std::chrono::steady_clock::now() >= end_; }
  // Sleeps before the next attempt: 1 ms doubling to 64 ms, jittered, never
  // past the deadline. False (without sleeping) once the deadline has passed.
  bool Backoff();
  // Sleeps `pause`, or until the deadline if that comes first. False (without
  // sleeping) once the deadline has passed.
  bool Pause(std::chrono::milliseconds pause);

 private:
  std::chrono::steady_clock::time_point end_;
  int attempt_ = 0;
};

// Calls `fn` (returning a Mooncake result code) until it returns a code that
// is not transient or the deadline passes; transfer and RPC failures
// (-8xx/-9xx: maybe a hiccup, maybe a dead peer) get two more tries. Returns
// the last code.
template <typename Fn>
int64_t RetryTransient(Deadline& deadline, Fn&& fn) {
  int network_retries = 2;
  for (;;) {
    int64_t rc = fn();
    bool network = rc <= -800 && rc > -1000;
    if (IsTransientError(rc) || (network && network_retries-- > 0)) {
      if (deadline.Backoff()) continue;
    }
    return rc;
  }
}

}  // namespace mooncake_connector::mooncake
