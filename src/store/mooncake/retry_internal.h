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

// What a store has lately seen of the network, so that an unreachable peer
// costs one wait rather than one per key:
//  - the master did not answer: a slow RPC failure (-9xx) means every other
//    call would wait the same RPC timeout. For kHold, calls fail at once with
//    that code (then they go to Mooncake again: it may be back);
//  - an operation spent its whole deadline on fast transfer failures (a peer
//    that refuses, and that the master does not drop): for kImpatience, others
//    try such failures only twice more instead of until their deadline.
class NetworkHealth {
 public:
  static constexpr std::chrono::milliseconds kHold{2000};
  static constexpr std::chrono::milliseconds kImpatience{10000};
  // The code to fail with now instead of calling Mooncake, or 0.
  int64_t Refusal() const;
  // Records how a call ended and how long it took.
  void Note(int64_t rc, std::chrono::steady_clock::duration took);
  bool Impatient() const;
  void NoteGaveUp();

 private:
  std::atomic<int64_t> refuse_until_ns_{0};
  std::atomic<int64_t> code_{0};
  std::atomic<int64_t> impatient_until_ns_{0};
};

// The time one operation may spend, and the pauses between its attempts.
class Deadline {
 public:
  explicit Deadline(std::chrono::milliseconds budget, NetworkHealth* health = nullptr)
      : end_(std::chrono::steady_clock::now() + budget), health_(health) {}

  bool Expired() const { return std::chrono::steady_clock::now() >= end_; }
  // Sleeps before the next attempt: 1 ms doubling to 64 ms, jittered, never
  // past the deadline. False (without sleeping) once the deadline has passed.
  bool Backoff();
  // Sleeps `pause`, or until the deadline if that comes first. False (without
  // sleeping) once the deadline has passed.
  bool Pause(std::chrono::milliseconds pause);

  int64_t Refusal() const { return health_ != nullptr ? health_->Refusal() : 0; }
  void Note(int64_t rc, std::chrono::steady_clock::duration took) {
    if (health_ != nullptr) health_->Note(rc, took);
  }
  bool Impatient() const { return health_ == nullptr || health_->Impatient(); }
  void NoteGaveUp() {
    if (health_ != nullptr) health_->NoteGaveUp();
  }

 private:
  std::chrono::steady_clock::time_point end_;
  NetworkHealth* health_;
  int attempt_ = 0;
};

// Calls `fn` (returning a Mooncake result code) until it returns a code that
// is not transient or the deadline passes. Transfer and RPC failures
// (-8xx/-9xx) are tried again until the deadline: a storage process that died
// or was cut off fails its transfers (at once, or after a connect timeout)
// until the master drops its replicas (its client_ttl, 10 s by default),
// after which another replica answers, or none (NotFound). Unless the store
// is impatient (NetworkHealth): then fast failures twice more, slow ones not
// again. A slow RPC failure (-9xx) is the master not answering: not tried
// again (NetworkHealth refuses the store's other calls for a moment).
// Returns the last code.
template <typename Fn>
int64_t RetryTransient(Deadline& deadline, Fn&& fn) {
  int quick_retries = 2;
  for (;;) {
    if (int64_t refused = deadline.Refusal()) return refused;
    auto start = std::chrono::steady_clock::now();
    int64_t rc = fn();
    auto took = std::chrono::steady_clock::now() - start;
    deadline.Note(rc, took);
    if (IsTransientError(rc)) {
      if (deadline.Backoff()) continue;
      return rc;
    }
    const bool network = rc <= -800 && rc > -1000;
    const bool slow = took >= kSlowNetworkFailure;
    // A slow RPC failure: the master is not answering (NetworkHealth holds
    // the others off). Anything else may be a storage peer that is gone.
    if (network && !(slow && rc <= -900)) {
      const bool patient = !deadline.Impatient();
      if (((!slow && quick_retries-- > 0) || patient) && deadline.Backoff()) continue;
      if (patient) deadline.NoteGaveUp();
    }
    return rc;
  }
}

}  // namespace mooncake_connector::mooncake
