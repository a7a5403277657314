#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>

#include "store/mooncake/own_memory_internal.h"

namespace mooncake_connector::mooncake {

std::vector<bool> ReadableMemory::Contains(std::span<const std::pair<const void*, uint64_t>> ranges) {
  std::lock_guard lock(mu_);
  std::vector<bool> out(ranges.size(), false);
  bool reloaded = false;
  for (size_t i = 0; i < ranges.size(); ++i) {
    const uintptr_t begin = reinterpret_cast<uintptr_t>(ranges[i].first);
    const uint64_t size = ranges[i].second;
    if (begin == 0 || size == 0 || begin + size < begin) continue;
    const uintptr_t end = begin + static_cast<uintptr_t>(size);
    if (!loaded_ || (!Covered(begin, end) && !reloaded)) {
      Reload();
      reloaded = true;
    }
    out[i] = Covered(begin, end);
  }
  return out;
}

bool ReadableMemory::Covered(uintptr_t begin, uintptr_t end) const {
  // The last mapping starting at or before `begin`; merged, so it alone
  // must reach `end`.
  auto it = std::upper_bound(readable_.begin(), readable_.end(), begin,
                             [](uintptr_t a, const std::pair<uintptr_t, uintptr_t>& m) { return a < m.first; });
  if (it == readable_.begin()) return false;
  --it;
  return begin >= it->first && end <= it->second;
}

void ReadableMemory::Reload() {
  loaded_ = true;
  readable_.clear();
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    // "begin-end perms offset dev inode [path]", addresses in hex.
    std::istringstream in(line);
    uintptr_t begin = 0, end = 0;
    char dash = 0;
    std::string perms;
    if (!(in >> std::hex >> begin >> dash >> end >> perms) || dash != '-' || perms.empty() || perms[0] != 'r') continue;
    if (!readable_.empty() && readable_.back().second == begin) {
      readable_.back().second = end;
    } else {
      readable_.emplace_back(begin, end);
    }
  }
}

}  // namespace mooncake_connector::mooncake
