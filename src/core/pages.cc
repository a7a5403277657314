#include "core/pages_internal.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <string>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older kernels answer EINVAL
#endif

namespace mooncake_connector {

namespace {

bool Wanted(const char* variable) {
  const char* v = std::getenv(variable);
  return v == nullptr || std::string(v) != "0";
}

// Pieces a prefault thread takes at a time: whole huge pages, so that a
// piece never splits one.
constexpr size_t kPrefaultPiece = 4 * kHugePage;

}  // namespace

bool HugePagesWanted() {
  static const bool wanted = Wanted("MOONCAKE_CONNECTOR_HUGE_PAGES");
  return wanted;
}

bool PrefaultWanted() {
  static const bool wanted = Wanted("MOONCAKE_CONNECTOR_PREFAULT");
  return wanted;
}

void AdviseHugePages(void* data, size_t size) {
  if (!HugePagesWanted() || size < kHugePage) return;
  const auto begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kHugePage - 1) / kHugePage * kHugePage;
  const uintptr_t end = (begin + size) / kHugePage * kHugePage;
  if (end <= first) return;
  // Advice only: a refusal leaves ordinary pages, as before.
  (void)madvise(reinterpret_cast<void*>(first), end - first, MADV_HUGEPAGE);
}

PrefaultAhead::PrefaultAhead(std::span<const std::span<std::byte>> ranges, size_t threads) {
  if (!PrefaultWanted() || threads == 0) return;
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  for (std::span<std::byte> r : ranges) {
    // The whole pages inside the range: a page at its edge may hold bytes
    // of other objects, which the transfer's own fault maps anyway.
    const auto at = reinterpret_cast<uintptr_t>(r.data());
    const uintptr_t first = (at + page - 1) / page * page;
    const uintptr_t end = (at + r.size()) / page * page;
    for (uintptr_t p = first; p < end;) {
      const uintptr_t next = std::min(end, (p / kPrefaultPiece + 1) * kPrefaultPiece);
      pieces_.push_back({p, next - p});
      p = next;
    }
  }
  threads = std::min(threads, pieces_.size());
  for (size_t t = 0; t < threads; ++t) {
    threads_.emplace_back([this] {
      for (size_t i; !stop_.load(std::memory_order_relaxed) && (i = next_.fetch_add(1)) < pieces_.size();) {
        // Advice only: where the kernel refuses (too old, memory it cannot
        // populate), the load faults the pages itself, as without it.
        if (madvise(reinterpret_cast<void*>(pieces_[i].begin), pieces_[i].size, MADV_POPULATE_WRITE) != 0 &&
            errno == EINVAL) {
          refused_ = true;  // not this kernel (or memory): no use asking again
          stop_ = true;
          return;
        }
        done_.fetch_add(1);
      }
    });
  }
}

PrefaultAhead::~PrefaultAhead() {
  stop_ = true;
  for (std::thread& t : threads_) t.join();
}

}  // namespace mooncake_connector
