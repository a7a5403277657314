// Running independent pieces of one call on a few threads.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <thread>
#include <utility>
#include <vector>

namespace mooncake_connector {

// How many threads a large read uses (the caller's included): two, or one
// on a single-core machine. Two overlap one value's transfer with another's
// copy and checksum; more would compete for the same cores and links.
inline size_t ReadThreads() {
  return std::min<size_t>(2, std::max(1u, std::thread::hardware_concurrency()));
}

// How many threads copy a large batch out of local memory (memory://): half
// the cores, two to eight. One core's memcpy is far from the memory's
// bandwidth on a server, and a load onto a GPU feeds a link of 50 GB/s.
inline size_t CopyThreads() {
  size_t cores = std::max(1u, std::thread::hardware_concurrency());
  return std::min<size_t>(cores, std::clamp<size_t>(cores / 2, 2, 8));
}

// Calls fn(i) for every i in [0, count), on up to `threads` threads (the
// caller's one of them), each taking the next index as it finishes one.
// Returns when all calls have returned. fn must not throw.
template <typename Fn>
void ParallelFor(size_t count, size_t threads, Fn&& fn) {
  threads = std::min(threads, count);
  if (threads <= 1) {
    for (size_t i = 0; i < count; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < count;) fn(i);
  };
  std::vector<std::thread> helpers;
  helpers.reserve(threads - 1);
  for (size_t t = 1; t < threads; ++t) helpers.emplace_back(work);
  work();
  for (std::thread& t : helpers) t.join();
}

// Runs one function at a time on a helper thread beside the caller (the
// checksums of one piece of a read while the next piece is transferred).
// Run waits for the previous function first; so does the destructor.
class Background {
 public:
  Background() = default;
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;
  ~Background() { Wait(); }

  template <typename Fn>
  void Run(Fn&& fn) {
    Wait();
    thread_ = std::thread(std::forward<Fn>(fn));
  }
  void Wait() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::thread thread_;
};

}  // namespace mooncake_connector
