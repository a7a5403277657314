#include <cstdlib>
#include <string>

#include "mooncake_connector/buffer.h"
#include "store/mooncake/transfer_arena_internal.h"

namespace mooncake_connector::mooncake {

Result<std::unique_ptr<TransferArena>> TransferArena::Create(const Api* api, Handle handle,
                                                             size_t slot_size, int slots) {
  std::unique_ptr<TransferArena> arena(new TransferArena(api, handle, slot_size));
  size_t total = slot_size * static_cast<size_t>(slots);
  if (api->alloc_transfer_buffer != nullptr) {
    arena->base_ = static_cast<std::byte*>(api->alloc_transfer_buffer(handle, total));
  }
  if (arena->base_ == nullptr) {
    arena->base_ = static_cast<std::byte*>(std::aligned_alloc(kBufferAlignment, total));
    if (arena->base_ == nullptr) {
      return ResourceExhausted("cannot allocate " + std::to_string(total) + " bytes of transfer memory");
    }
    arena->owns_memory_ = true;
  }
  int rc = api->register_buffer(handle, arena->base_, total);
  if (rc != 0) {
    if (arena->owns_memory_) std::free(arena->base_);
    arena->base_ = nullptr;
    return FromMooncakeError(rc, "register_buffer of " + std::to_string(total) + " bytes");
  }
  for (int i = 0; i < slots; ++i) arena->free_.push_back(arena->base_ + i * slot_size);
  arena->total_slots_ = static_cast<size_t>(slots);
  return arena;
}

TransferArena::~TransferArena() {
  if (base_ == nullptr) return;
  api_->unregister_buffer(handle_, base_);
  if (owns_memory_) std::free(base_);
}

TransferArena::Lease TransferArena::Acquire(size_t n) {
  std::unique_lock lock(mutex_);
  freed_.wait(lock, [&] { return free_.size() >= n; });
  std::vector<std::byte*> taken(free_.end() - static_cast<ptrdiff_t>(n), free_.end());
  free_.resize(free_.size() - n);
  return Lease(this, std::move(taken));
}

void TransferArena::Release(const std::vector<std::byte*>& slots) {
  {
    std::lock_guard lock(mutex_);
    free_.insert(free_.end(), slots.begin(), slots.end());
  }
  freed_.notify_all();
}

TransferArena::Lease::~Lease() {
  if (!slots_.empty()) arena_->Release(slots_);
}

}  // namespace mooncake_connector::mooncake
