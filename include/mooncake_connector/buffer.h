// Byte ranges and a reference-counted byte buffer.
#pragma once

#include <cstddef>
#include <memory>
#include <span>

#include "mooncake_connector/export.h"
#include "mooncake_connector/status.h"

namespace mooncake_connector {

using ConstBytes = std::span<const std::byte>;
using MutableBytes = std::span<std::byte>;

// Alignment of every buffer this library allocates.
inline constexpr size_t kBufferAlignment = 64;

// A shared handle to `size` contiguous bytes. Copies share the memory; the
// memory is released when the last copy (and anything holding owner()) goes.
// Thread safety: the handle is as safe as std::shared_ptr; the bytes are not
// synchronised.
class MC_EXPORT Buffer {
 public:
  Buffer() = default;  // empty: data() == nullptr, size() == 0

  // Uninitialised memory aligned to kBufferAlignment. ResourceExhausted when
  // the allocation fails. Buffers of 1 MiB and more are mapped whole and, once
  // freed, kept for the next buffer of their size class (sizes rounded up by
  // at most 12.5%; at most 512 MiB kept process-wide, the oldest unmapped
  // first), so memory freed by one load is filled by the next without
  // page faults.
  static Result<Buffer> Allocate(size_t size);

  // Borrows `data`; `owner` keeps it alive (may be null when the caller
  // guarantees the lifetime).
  static Buffer Wrap(std::byte* data, size_t size, std::shared_ptr<void> owner);

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  MutableBytes bytes() const { return {data_, size_}; }
  const std::shared_ptr<void>& owner() const { return owner_; }

  // A buffer over [offset, offset + size) sharing this one's owner.
  // REQUIRES: offset + size <= this->size().
  Buffer Slice(size_t offset, size_t size) const;

 private:
  std::shared_ptr<void> owner_;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace mooncake_connector
