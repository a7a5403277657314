// Size classes for large blocks kept for reuse (buffer.cc's freed blocks,
// the shared memory blocks of mooncake:// in standalone-client mode).
#pragma once

#include <algorithm>
#include <cstddef>

namespace mooncake_connector {

// `size` (> 0) rounded up to a step of an eighth of its power of two, and
// of at least 64 KiB: at most 12.5% more, and tensors of one shape share a
// class.
inline size_t LargeSizeClass(size_t size) {
  size_t power = size_t{1} << (63 - __builtin_clzll(size));
  size_t step = std::max<size_t>(power / 8, size_t{64} << 10);
  return (size + step - 1) / step * step;
}

}  // namespace mooncake_connector
