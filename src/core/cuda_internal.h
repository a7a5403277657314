// The few CUDA driver calls a load onto a GPU needs, looked up at run time in
// libcuda.so.1 (the driver's library, present wherever a GPU is): nothing of
// CUDA is needed to build, and a machine without a GPU fails only when a load
// asks for one, with an error that says so.
//
// Streams and contexts are the driver's handles, which the CUDA runtime (and
// so PyTorch) shares: a torch stream's cuda_stream pointer is a CUstream, and
// the runtime works in each device's primary context.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "mooncake_connector/status.h"

namespace mooncake_connector::cuda {

using Stream = void*;  // CUstream
using Event = void*;   // CUevent

class Driver;

// Pinned (page-locked) host memory from cuMemHostAlloc: the device reads it
// by DMA, so copies out of it run at the link's speed and return at once.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(PinnedBuffer&& other) noexcept { *this = std::move(other); }
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept;
  ~PinnedBuffer();
  std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  friend class Driver;
  const Driver* driver_ = nullptr;
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
};

class Driver {
 public:
  // The process's driver, loaded and initialised once. FailedPrecondition
  // when there is no driver (no GPU here) or it will not initialise.
  static Result<const Driver*> Get();
  ~Driver();

  int DeviceCount() const;

  // Makes device `device`'s primary context (the one the CUDA runtime and
  // PyTorch use) current on this thread until the guard goes; the context
  // that was current before comes back.
  class ContextGuard {
   public:
    ~ContextGuard();
    ContextGuard(const ContextGuard&) = delete;
    ContextGuard& operator=(const ContextGuard&) = delete;
    ContextGuard(ContextGuard&& other) noexcept : driver_(other.driver_), device_(other.device_) {
      other.driver_ = nullptr;
    }

   private:
    friend class Driver;
    ContextGuard(const Driver* d, int device) : driver_(d), device_(device) {}
    const Driver* driver_;
    int device_;
  };
  Result<ContextGuard> Enter(int device) const;

  // Every call below needs the device's context current (Enter).
  Result<PinnedBuffer> AllocatePinned(uint64_t bytes) const;
  // True if `host` is in page-locked memory the device can read by DMA
  // (cuMemHostAlloc'ed or registered).
  bool IsPinned(const std::byte* host) const;
  // Checks that [pointer, pointer + bytes) is memory of device `device`.
  Status CheckDeviceMemory(uint64_t pointer, uint64_t bytes, int device) const;
  Status CopyToDeviceAsync(uint64_t device_pointer, const std::byte* host, uint64_t bytes, Stream stream) const;
  Status CopyOnDeviceAsync(uint64_t to, uint64_t from, uint64_t bytes, Stream stream) const;
  // Into host memory: pinned (AllocatePinned) for the copy to be
  // asynchronous; into pageable memory the driver returns once it is done.
  Status CopyToHostAsync(std::byte* host, uint64_t device_pointer, uint64_t bytes, Stream stream) const;
  Result<Event> CreateEvent() const;
  void DestroyEvent(Event event) const;
  Status Record(Event event, Stream stream) const;
  Status Wait(Event event) const;  // blocks until the work recorded before it is done
  Status Synchronize(Stream stream) const;

 private:
  friend class PinnedBuffer;
  struct Api;
  explicit Driver(std::unique_ptr<Api> api);
  // "what: CUDA_ERROR_NAME (description)"
  Status Check(int result, const std::string& what) const;

  std::unique_ptr<Api> api_;
};

// Pinned buffers kept from one operation to the next (GPU loads' pipeline
// buffers, a GPU save's staging buffers): pinning hundreds of MiB takes tens
// of milliseconds. Keeps the kKeep largest buffers given back; never
// destroyed, as the driver may be gone when static objects are.
class PinnedPool {
 public:
  static constexpr size_t kKeep = 4;
  static PinnedPool& Get();
  // The smallest kept buffer of at least `bytes`, else a new one (the
  // device's context current).
  Result<PinnedBuffer> Take(const Driver& driver, uint64_t bytes);
  void Give(PinnedBuffer buffer);

 private:
  PinnedPool() = default;
  std::mutex mu_;
  std::vector<PinnedBuffer> free_;
};

}  // namespace mooncake_connector::cuda
