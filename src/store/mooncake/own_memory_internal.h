// Which address ranges this process can read: the check before copying a
// replica out of this client's own segment at an address the master gave.
// Mooncake's own reads memcpy from such an address on the endpoint's word
// alone; a stale endpoint (a dead client's, its port reused by this one)
// would make that a crash. Here such a range is simply not local.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

namespace mooncake_connector::mooncake {

class ReadableMemory {
 public:
  // For each (address, size): whether all of it lies in readable mappings of
  // this process. The mappings are read from /proc/self/maps once and read
  // again (once per call) when a range is not found in them.
  std::vector<bool> Contains(std::span<const std::pair<const void*, uint64_t>> ranges);

 private:
  bool Covered(uintptr_t begin, uintptr_t end) const;  // REQUIRES: mu_ held
  void Reload();                                        // REQUIRES: mu_ held

  std::mutex mu_;
  bool loaded_ = false;
  std::vector<std::pair<uintptr_t, uintptr_t>> readable_;  // [begin, end), sorted, adjacent merged
};

}  // namespace mooncake_connector::mooncake
