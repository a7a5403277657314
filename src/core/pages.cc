#include "core/pages_internal.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <string>

namespace mooncake_connector {

bool HugePagesWanted() {
  static const bool wanted = [] {
    const char* v = std::getenv("MOONCAKE_CONNECTOR_HUGE_PAGES");
    return v == nullptr || std::string(v) != "0";
  }();
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

}  // namespace mooncake_connector
