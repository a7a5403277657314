// Transparent huge pages, and faulting pages in ahead, for memory a load
// fills for the first time.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <thread>
#include <vector>

#include "core/parallel_internal.h"

namespace mooncake_connector {

inline constexpr size_t kHugePage = size_t{2} << 20;

// False when MOONCAKE_CONNECTOR_HUGE_PAGES=0 (read once per process): where
// the kernel compacts memory on a huge-page fault (THP "defrag" set to
// madvise or always) and memory is fragmented, a first touch can stall
// instead of running faster.
bool HugePagesWanted();

// Advises the whole 2 MiB pages inside [data, data + size) to use transparent
// huge pages (MADV_HUGEPAGE), where HugePagesWanted(): pages not yet touched
// are then faulted in 2 MiB at a time instead of 4 KiB. Changes no byte and
// no page already there; a no-op for ranges holding no whole huge page and
// where the kernel refuses (no THP, memory it cannot advise).
void AdviseHugePages(void* data, size_t size);

// False when MOONCAKE_CONNECTOR_PREFAULT=0 (read once per process).
bool PrefaultWanted();

// Threads a PrefaultAhead gets beside a load: half the copy threads (4 on 16
// cores, 1 on 2), so the faulting keeps ahead without taking the copies' cores.
inline size_t PrefaultThreads() { return std::max<size_t>(1, CopyThreads() / 2); }

// Faults in the pages of `ranges` for writing, in their order, on `threads`
// helper threads while the caller fills them (madvise MADV_POPULATE_WRITE,
// Linux 5.14 and later; elsewhere, or where the kernel refuses, nothing
// happens). Each fresh page is faulted once either way: ahead of the load,
// on threads of their own, instead of one by one inside the transfer that
// writes it. Changes no byte and no page already there. Stops at its next
// piece and joins its threads when destroyed. A no-op unless
// PrefaultWanted().
class PrefaultAhead {
 public:
  PrefaultAhead(std::span<const std::span<std::byte>> ranges, size_t threads);
  ~PrefaultAhead();
  PrefaultAhead(const PrefaultAhead&) = delete;
  PrefaultAhead& operator=(const PrefaultAhead&) = delete;

  // Pieces to fault in, and those done so far; refused() once the kernel
  // said it cannot (for tests).
  size_t pieces() const { return pieces_.size(); }
  size_t done() const { return done_.load(); }
  bool refused() const { return refused_.load(); }

 private:
  struct Piece {
    uintptr_t begin;
    size_t size;
  };
  std::vector<Piece> pieces_;
  std::atomic<size_t> next_{0};
  std::atomic<size_t> done_{0};
  std::atomic<bool> stop_{false};
  std::atomic<bool> refused_{false};
  std::vector<std::thread> threads_;
};

}  // namespace mooncake_connector
