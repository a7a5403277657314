// Registered staging memory for Mooncake transfers: `slots` buffers of
// `slot_size` bytes, registered with the client once. Every put copies into
// slots and every get copies out of them, so each byte is copied once per
// direction and transfers always use registered memory (which RDMA and the
// standalone-client mode require).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

#include "mooncake_connector/status.h"
#include "store/mooncake/mooncake_api_internal.h"

namespace mooncake_connector::mooncake {

class TransferArena {
 public:
  // Registers the memory with `handle`; unregisters it on destruction.
  static Result<std::unique_ptr<TransferArena>> Create(const Api* api, Handle handle,
                                                       size_t slot_size, int slots);
  ~TransferArena();

  // Slots held until destruction; returned to the arena then.
  class Lease {
   public:
    Lease(TransferArena* arena, std::vector<std::byte*> slots)
        : arena_(arena), slots_(std::move(slots)) {}
    Lease(Lease&& other) noexcept : arena_(other.arena_), slots_(std::move(other.slots_)) {
      other.slots_.clear();
    }
    Lease& operator=(Lease&&) = delete;
    ~Lease();
    std::byte* operator[](size_t i) const { return slots_[i]; }
    size_t size() const { return slots_.size(); }

   private:
    TransferArena* arena_;
    std::vector<std::byte*> slots_;
  };

  // Blocks until `n` slots are free and takes them all at once (so that
  // concurrent callers cannot deadlock holding partial sets).
  // REQUIRES: 1 <= n <= slots().
  Lease Acquire(size_t n);

  size_t slot_size() const { return slot_size_; }
  size_t slots() const { return total_slots_; }

 private:
  TransferArena(const Api* api, Handle handle, size_t slot_size) 
      : api_(api), handle_(handle), slot_size_(slot_size) {}
  void Release(const std::vector<std::byte*>& slots);

  const Api* api_;
  Handle handle_;
  const size_t slot_size_;
  size_t total_slots_ = 0;
  std::byte* base_ = nullptr;
  bool owns_memory_ = false;  // false when the provider allocated it
  std::mutex mutex_;
  std::condition_variable freed_;
  std::vector<std::byte*> free_;
};

}  // namespace mooncake_connector::mooncake
