// Loading a rank of a model into CUDA device memory: a pipeline of a few
// pinned host buffers. Batch N is fetched into one while the batches before it
// are copied from the others to the device by DMA and their checksums are
// computed on other threads, so the load takes about as long as the slowest
// of the three, not their sum. (A tensor's checksum runs on one thread: the
// batches in flight are what lets several run at once.)
// A batch's checksums are checked before its buffer is used again, and all of
// them before the load returns.
#include <algorithm>
#include <mutex>
#include <thread>
#include <vector>

#include "core/cuda_internal.h"
#include "core/parallel_internal.h"
#include "model/model_internal.h"
#include "mooncake_connector/model.h"

namespace mooncake_connector {
namespace {

// Pinned buffers in one load's pipeline (each the size of its largest batch).
constexpr size_t kSlots = 4;

// Pinned buffers kept from one load to the next: pinning hundreds of MiB
// takes tens of milliseconds. Holds at most one load's worth; never
// destroyed, as the driver may be gone when static objects are.
class PinnedPool {
 public:
  static PinnedPool& Get() {
    static PinnedPool* pool = new PinnedPool;
    return *pool;
  }

  Result<cuda::PinnedBuffer> Take(const cuda::Driver& driver, uint64_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto best = free_.end();
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->size() >= bytes && (best == free_.end() || it->size() < best->size())) best = it;
      }
      if (best != free_.end()) {
        cuda::PinnedBuffer out = std::move(*best);
        free_.erase(best);
        return out;
      }
    }
    return driver.AllocatePinned(bytes);
  }

  void Give(cuda::PinnedBuffer buffer) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(std::move(buffer));
    std::sort(free_.begin(), free_.end(),
              [](const cuda::PinnedBuffer& a, const cuda::PinnedBuffer& b) { return a.size() > b.size(); });
    if (free_.size() > kKeep) free_.resize(kKeep);  // the largest stay
  }

 private:
  static constexpr size_t kKeep = kSlots;
  std::mutex mu_;
  std::vector<cuda::PinnedBuffer> free_;
};

// One pinned buffer of the pipeline, the event recorded after the copies out
// of it were queued, and the threads checking the checksums of what is in it.
struct Slot {
  cuda::PinnedBuffer buffer;
  cuda::Event copied = nullptr;
  bool busy = false;
  std::thread checker;
  std::vector<Status> verdicts;

  // The first bad checksum of the batch in this buffer, once all are known.
  Status Checked() {
    if (checker.joinable()) checker.join();
    for (const Status& s : verdicts) MC_RETURN_IF_ERROR(s);
    verdicts.clear();
    return Status::Ok();
  }
};

uint64_t Address(const TensorDestination& d) { return reinterpret_cast<uintptr_t>(d.bytes.data()); }

}  // namespace

Result<std::vector<std::string>> ModelReader::LoadIntoCuda(std::span<const TensorDestination> destinations,
                                                           const CudaTarget& target) {
  MC_RETURN_IF_ERROR(model_.CheckOpen());
  MC_ASSIGN_OR_RETURN(std::vector<size_t> which, Resolve(destinations));
  MC_ASSIGN_OR_RETURN(const cuda::Driver* driver, cuda::Driver::Get());
  MC_ASSIGN_OR_RETURN(cuda::Driver::ContextGuard context, driver->Enter(target.device));
  for (const TensorDestination& d : destinations) {
    if (d.bytes.empty()) continue;
    MC_RETURN_IF_ERROR(driver->CheckDeviceMemory(Address(d), d.bytes.size(), target.device)
                           .WithContext("loading tensor '" + d.name + "' onto CUDA device " +
                                        std::to_string(target.device)));
  }
  auto stream = reinterpret_cast<cuda::Stream>(target.stream);

  if (!has_manifest_) {  // values SGLang wrote: read whole, one at a time
    for (size_t i = 0; i < destinations.size(); ++i) {
      const TensorDestination& d = destinations[i];
      MC_ASSIGN_OR_RETURN(Tensor t, ReadUnknownFor(which[i], d));
      MC_RETURN_IF_ERROR(driver->CopyToDeviceAsync(Address(d), t.data(), t.nbytes(), stream));
      MC_RETURN_IF_ERROR(driver->Synchronize(stream));  // before t is freed
      Report(t.nbytes());
    }
    return Missed(which);
  }

  total_bytes_ = 0;
  for (const TensorDestination& d : destinations) total_bytes_ += d.bytes.size();
  Plan plan = PlanReads(which, options_.batch_bytes);
  uint64_t slot_bytes = 0;
  for (const std::vector<size_t>& batch : plan.batches) {
    uint64_t bytes = 0;
    for (size_t i : batch) bytes += destinations[i].bytes.size();
    slot_bytes = std::max(slot_bytes, bytes);
  }
  std::vector<Slot> slots(std::min<size_t>(kSlots, plan.batches.size()));
  // However the load ends, no copy may still read a buffer that goes back to
  // the pool.
  struct Release {
    const cuda::Driver* driver;
    cuda::Stream stream;
    std::vector<Slot>& slots;
    ~Release() {
      bool queued = std::any_of(slots.begin(), slots.end(), [](const Slot& s) { return s.busy; });
      if (queued) (void)driver->Synchronize(stream);
      for (Slot& s : slots) {
        if (s.checker.joinable()) s.checker.join();
        driver->DestroyEvent(s.copied);
        if (s.buffer.data() != nullptr) PinnedPool::Get().Give(std::move(s.buffer));
      }
    }
  } release{driver, stream, slots};
  for (Slot& s : slots) {
    MC_ASSIGN_OR_RETURN(s.buffer, PinnedPool::Get().Take(*driver, std::max<uint64_t>(slot_bytes, 1)));
    MC_ASSIGN_OR_RETURN(s.copied, driver->CreateEvent());
  }

  for (size_t b = 0; b < plan.batches.size(); ++b) {
    Slot& slot = slots[b % slots.size()];
    MC_RETURN_IF_ERROR(slot.Checked());
    if (slot.busy) MC_RETURN_IF_ERROR(driver->Wait(slot.copied));
    slot.busy = false;
    const std::vector<size_t>& batch = plan.batches[b];
    std::vector<size_t> read;
    std::vector<MutableBytes> staging;
    uint64_t at = 0;
    for (size_t i : batch) {
      read.push_back(Canonical(which[i]));
      staging.push_back(MutableBytes(slot.buffer.data() + at, destinations[i].bytes.size()));
      at += destinations[i].bytes.size();
    }
    std::vector<Status> results = ReadBatch(read, staging, /*checksums=*/false);
    for (const Status& s : results) MC_RETURN_IF_ERROR(s);
    for (size_t k = 0; k < batch.size(); ++k) {
      const TensorDestination& d = destinations[batch[k]];
      MC_RETURN_IF_ERROR(driver->CopyToDeviceAsync(Address(d), staging[k].data(), staging[k].size(), stream));
      slot.busy = true;
    }
    MC_RETURN_IF_ERROR(driver->Record(slot.copied, stream));
    if (options_.verify) {
      slot.verdicts.assign(read.size(), Status::Ok());
      slot.checker = std::thread([this, &slot, read = std::move(read), staging = std::move(staging)] {
        ParallelFor(read.size(), CopyThreads(),
                    [&](size_t k) { slot.verdicts[k] = CheckChecksum(read[k], staging[k]); });
      });
    }
    Report(at);
  }
  for (Slot& s : slots) MC_RETURN_IF_ERROR(s.Checked());
  // Other destinations of a stored tensor (aliases) are copied on the device.
  for (size_t i = 0; i < destinations.size(); ++i) {
    size_t from = plan.first.at(Canonical(which[i]));
    if (from != i && Address(destinations[i]) != Address(destinations[from]) && !destinations[i].bytes.empty()) {
      MC_RETURN_IF_ERROR(driver->CopyOnDeviceAsync(Address(destinations[i]), Address(destinations[from]),
                                                   destinations[i].bytes.size(), stream));
      Report(destinations[i].bytes.size());
    }
  }
  MC_RETURN_IF_ERROR(driver->Synchronize(stream));
  for (Slot& s : slots) s.busy = false;
  return Missed(which);
}

}  // namespace mooncake_connector
