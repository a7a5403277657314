// How a save reads tensors that lie in a CUDA device's memory
// (Model::SaveStateDictCuda): a batch at a time, copied into one of two
// pinned host buffers on the caller's stream, the next batch's copies
// running while the store writes the last one. The host holds two batches
// of the rank at most, never the whole rank.
#pragma once

#include <array>
#include <cstddef>
#include <span>
#include <vector>

#include "core/cuda_internal.h"
#include "mooncake_connector/buffer.h"
#include "mooncake_connector/model.h"
#include "mooncake_connector/status.h"

namespace mooncake_connector {

class SaveStaging {
 public:
  static constexpr size_t kSlots = 2;

  // Copies go on `stream`; the device's context must be current on the
  // thread that uses this object, for as long as it lives.
  SaveStaging(const cuda::Driver& driver, cuda::Stream stream) : driver_(driver), stream_(stream) {}
  // Waits for copies still queued, then gives the buffers to the
  // cuda::PinnedPool (repeated saves, e.g. weights published after each
  // training step, do not pin afresh), but for one a larger tensor needed.
  ~SaveStaging();
  SaveStaging(const SaveStaging&) = delete;
  SaveStaging& operator=(const SaveStaging&) = delete;

  // Buffers are taken at least this large (a whole batch's device bytes),
  // so that a slot is not pinned again as its batches grow; a slot grows
  // past it only for one larger tensor, and that buffer is freed rather than
  // kept in the pool.
  void Expect(uint64_t bytes) { expected_ = bytes; }
  // Queues the copies of `device` (spans of device memory) into slot
  // `slot`'s buffer (from the cuda::PinnedPool, grown to fit when needed)
  // and returns where each will be, in order. What the slot held before is
  // no longer readable.
  Result<std::vector<ConstBytes>> Queue(size_t slot, std::span<const ConstBytes> device);
  // Blocks until the copies queued into slot `slot` are done.
  Status Wait(size_t slot);

 private:
  struct Slot {
    cuda::PinnedBuffer buffer;
    cuda::Event copied = nullptr;
    bool queued = false;
  };
  // Buffers up to a save batch (or expected_) go back to the pool.
  static constexpr uint64_t kPooledBytes = Model::kSaveStagingBytes;
  void Release(cuda::PinnedBuffer buffer) const;

  const cuda::Driver& driver_;
  cuda::Stream stream_;
  uint64_t expected_ = 0;
  std::array<Slot, kSlots> slots_;
};

}  // namespace mooncake_connector
