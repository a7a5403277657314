// Transparent huge pages for memory a load fills for the first time.
#pragma once

#include <cstddef>

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

}  // namespace mooncake_connector
