#include "mooncake_connector/buffer.h"

#include <cassert>
#include <cstdlib>
#include <new>
#include <string>

namespace mooncake_connector {

Result<Buffer> Buffer::Allocate(size_t size) {
  // aligned_alloc wants a size that is a multiple of the alignment; a zero
  // size still gets a real (unique, aligned) pointer.
  size_t rounded = (size + kBufferAlignment - 1) / kBufferAlignment * kBufferAlignment;
  if (rounded < size) return ResourceExhausted("buffer size overflows");
  if (rounded == 0) rounded = kBufferAlignment;
  void* p = std::aligned_alloc(kBufferAlignment, rounded);
  if (p == nullptr) {
    return ResourceExhausted("cannot allocate " + std::to_string(size) + " bytes");
  }
  Buffer b;
  b.owner_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  b.data_ = static_cast<std::byte*>(p);
  b.size_ = size;
  return b;
}

Buffer Buffer::Wrap(std::byte* data, size_t size, std::shared_ptr<void> owner) {
  Buffer b;
  b.owner_ = std::move(owner);
  b.data_ = data;
  b.size_ = size;
  return b;
}

Buffer Buffer::Slice(size_t offset, size_t size) const {
  assert(offset <= size_ && size <= size_ - offset);
  return Wrap(data_ + offset, size, owner_);
}

}  // namespace mooncake_connector
