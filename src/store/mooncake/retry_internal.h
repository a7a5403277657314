// Bounded retries of Mooncake's transient refusals (replica not ready while
// an upsert runs, a read lease that blocks a remove, a lease that expired
// during a transfer), and a few retries of transfer/RPC failures.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "store/mooncake/mooncake_api_internal.h"

namespace mooncake_connector::mooncake {

// A call that took this long to fail with a transfer or RPC failure has
// already waited out Mooncake's own RPC timeout: the peer is not answering.
inline constexpr std::chrono::milliseconds kSlowNetworkFailure{1000};

// Remembers for a moment that the master did not answer: a slow RPC failure
// (-9xx) means every other call of the store would wait the same timeout.
// Meanwhile calls fail at once with that code, so an operation over many
// keys (a model load) fails in one timeout rather than one per key. After
// kHold, calls go to Mooncake again (it may be back).
class MasterBreaker {
 public:
  static constexpr std::chrono::milliseconds kHold{2000};
  // The code to fail with now instead of calling Mooncake, or 0.
  int64_t Refusal() const;
  // Records how a call ended and how long it took.
  void Note(int64_t rc, std::chrono::steady_clock::duration took);

 private:
  std::atomic<int64_t> until_ns_{0};
  std::atomic<int64_t> code_{0};
};

// The time one operation may spend, and the pauses between its attempts.
class Deadline {
 public:
  explicit Deadline(std::chrono::milliseconds budget, MasterBreaker* breaker = nullptr)
      : end_(std::chrono::steady_clock::now() + budget), breaker_(breaker) {}

  bool Expired() const { return std::chrono::steady_clock::now() >= end_; }
  // Sleeps before the next attempt: 1 ms doubling to 64 ms, jittered, never
  // past the deadline. False (without sleeping) once the deadline has passed.
  bool Backoff();
  // Sleeps `pause`, or until the deadline if that comes first. False (without
  // sleeping) once the deadline has passed.
  bool Pause(std::chrono::milliseconds pause);

  int64_t Refusal() const { return breaker_ != nullptr ? breaker_->Refusal() : 0; }
  void Note(int64_t rc, std::chrono::steady_clock::duration took) {
    if (breaker_ != nullptr) breaker_->Note(rc, took);
  }

 private:
  std::chrono::steady_clock::time_point end_;
  MasterBreaker* breaker_;
  int attempt_ = 0;
};

// Calls `fn` (returning a Mooncake result code) until it returns a code that
// is not transient or the deadline passes. Transfer and RPC failures
// (-8xx/-9xx: maybe a hiccup, maybe a dead peer) get two more tries, but only
// while they fail fast (a slow one already waited out Mooncake's RPC timeout;
// trying again would only multiply the wait). Returns the last code.
template <typename Fn>
int64_t RetryTransient(Deadline& deadline, Fn&& fn) {
  int network_retries = 2;
  for (;;) {
    if (int64_t refused = deadline.Refusal()) return refused;
    auto start = std::chrono::steady_clock::now();
    int64_t rc = fn();
    auto took = std::chrono::steady_clock::now() - start;
    deadline.Note(rc, took);
    bool network = rc <= -800 && rc > -1000;
    bool fast = took < kSlowNetworkFailure;
    if (IsTransientError(rc) || (network && fast && network_retries-- > 0)) {
      if (deadline.Backoff()) continue;
    }
    return rc;
  }
}

}  // namespace mooncake_connector::mooncake
