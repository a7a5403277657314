#include <algorithm>
#include <random>
#include <thread>

#include "store/mooncake/retry_internal.h"

namespace mooncake_connector::mooncake {

namespace {
int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

int64_t NetworkHealth::Refusal() const {
  return NowNs() < refuse_until_ns_.load(std::memory_order_acquire) ? code_.load(std::memory_order_relaxed) : 0;
}

void NetworkHealth::Note(int64_t rc, std::chrono::steady_clock::duration took) {
  if (rc > -900 || rc <= -1000 || took < kSlowNetworkFailure) return;
  code_.store(rc, std::memory_order_relaxed);
  refuse_until_ns_.store(NowNs() + std::chrono::duration_cast<std::chrono::nanoseconds>(kHold).count(),
                         std::memory_order_release);
}

bool NetworkHealth::Impatient() const {
  return NowNs() < impatient_until_ns_.load(std::memory_order_relaxed);
}

void NetworkHealth::NoteGaveUp() {
  impatient_until_ns_.store(NowNs() + std::chrono::duration_cast<std::chrono::nanoseconds>(kImpatience).count(),
                            std::memory_order_relaxed);
}

bool Deadline::Backoff() {
  using namespace std::chrono;
  auto now = steady_clock::now();
  if (now >= end_) return false;
  thread_local std::minstd_rand rng(std::random_device{}());
  auto base = microseconds(1000) * (1 << std::min(attempt_++, 6));
  auto pause = base / 2 + microseconds(rng() % static_cast<uint64_t>(base.count()));
  std::this_thread::sleep_for(std::min<steady_clock::duration>(pause, end_ - now));
  return true;
}

bool Deadline::Pause(std::chrono::milliseconds pause) {
  auto now = std::chrono::steady_clock::now();
  if (now >= end_) return false;
  std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(pause, end_ - now));
  return true;
}

}  // namespace mooncake_connector::mooncake
