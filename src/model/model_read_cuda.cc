// Loading a rank of a model into CUDA device memory, one of two ways:
//  - straight from the store: a store that keeps its values in pinned memory
//    of this process (memory:// with pinned values) lends them (BatchView),
//    every tensor's copy to the device by DMA from there is queued, and the
//    checksums are computed on other threads while the copies run;
//  - otherwise a pipeline of a few pinned host buffers: batches N and N + 1
//    are fetched into two of them while the batches before them are copied
//    from the others to the device by DMA and their checksums are computed on
//    other threads, so the load takes about as long as the slowest of the
//    three, not their sum.
//    (A tensor's checksum runs on one thread per piece of it: the batches in
//    flight are what lets several run at once.) A batch's checksums are checked before its
//    buffer is used again, and all of them before the load returns.
#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "core/cuda_internal.h"
#include "core/parallel_internal.h"
#include "model/model_internal.h"
#include "model/model_reader_internal.h"
#include "model/model_memory_internal.h"
#include "mooncake_connector/model.h"

namespace mooncake_connector {
namespace {

// Pinned buffers in one load's pipeline (each the size of its largest batch).
constexpr size_t kSlots = 4;
// The pipeline's batches: at most this many bytes (or one larger tensor).
// Larger ones pin more host memory for nothing (4 x 256 MiB were 1 GiB above
// the model), and pinning is slow on a first load (~0.5 ms per MiB here).
constexpr uint64_t kStagedBatchBytes = uint64_t{64} << 20;
// Batches fetched at once, each into a buffer of its own: one 64 MiB store
// call at a time left the link idle between calls (a first 1.1 GiB load
// over TCP on 16 cores, `load_state_dict`'s load alone: 0.48 s one at a
// time, 0.37 s two; the raw wheel's one call for all of it 0.43 s).
constexpr size_t kFetchesInFlight = 2;

// One pinned buffer of the pipeline, the event recorded after the copies out
// of it were queued, and the threads checking the checksums of what is in it.
struct Slot {
  cuda::PinnedBuffer buffer;
  cuda::Event copied = nullptr;
  bool busy = false;
  std::thread checker;
  std::vector<Status> verdicts;
  // The batch being fetched into the buffer, on a thread of its own.
  std::thread fetcher;
  std::vector<size_t> read;
  std::vector<MutableBytes> staging;
  std::vector<Status> fetched;
  const std::vector<size_t>* batch = nullptr;
  uint64_t bytes = 0;  // of the batch

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

Status ModelReaderImpl::LoadIntoCudaStaged(std::span<const TensorDestination> destinations,
                                       std::span<const size_t> which, const Plan& plan,
                                       const cuda::Driver& driver, int device, void* cu_stream) {
  auto stream = reinterpret_cast<cuda::Stream>(cu_stream);
  if (plan.batches.empty()) return Status::Ok();
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
      for (Slot& s : slots) {
        if (s.fetcher.joinable()) s.fetcher.join();
      }
      bool queued = std::any_of(slots.begin(), slots.end(), [](const Slot& s) { return s.busy; });
      if (queued) (void)driver->Synchronize(stream);
      for (Slot& s : slots) {
        if (s.checker.joinable()) s.checker.join();
        driver->DestroyEvent(s.copied);
        if (s.buffer.data() != nullptr) cuda::PinnedPool::Get().Give(std::move(s.buffer));
      }
    }
  } release{&driver, stream, slots};
  for (Slot& s : slots) {
    MC_ASSIGN_OR_RETURN(s.copied, driver.CreateEvent());
  }
  // The first buffer now, the others on a helper thread while the first
  // batches are fetched (a buffer not in the pool yet is pinned afresh), each
  // used as soon as it is pinned: pinning runs at about the speed of a fetch
  // over TCP, so waiting for all of them stalled the pipeline at its second
  // batch.
  const uint64_t buffer_bytes = std::max<uint64_t>(slot_bytes, 1);
  MC_ASSIGN_OR_RETURN(slots[0].buffer, cuda::PinnedPool::Get().Take(driver, buffer_bytes));
  std::mutex pin_mu;
  std::condition_variable pin_cv;
  size_t pinned_slots = 1;  // slots [0, pinned_slots) have their buffer
  Status pinned = Status::Ok();
  std::thread pinning([&] {
    Status status = Status::Ok();
    Result<cuda::Driver::ContextGuard> context = driver.Enter(device);
    if (!context.ok()) status = context.status();
    for (size_t k = 1; k < slots.size() && status.ok(); ++k) {
      Result<cuda::PinnedBuffer> b = cuda::PinnedPool::Get().Take(driver, buffer_bytes);
      std::lock_guard<std::mutex> lock(pin_mu);
      if (b.ok()) {
        slots[k].buffer = std::move(*b);
        pinned_slots = k + 1;
      } else {
        status = b.status();
      }
      pin_cv.notify_all();
    }
    std::lock_guard<std::mutex> lock(pin_mu);
    pinned = status;
    pinned_slots = slots.size() + 1;  // done (pinned says how)
    pin_cv.notify_all();
  });
  struct Join {
    std::thread& t;
    ~Join() {
      if (t.joinable()) t.join();
    }
  } join{pinning};  // before `release` gives the buffers back
  auto buffer_ready = [&](size_t k) -> Status {
    std::unique_lock<std::mutex> lock(pin_mu);
    pin_cv.wait(lock, [&] { return pinned_slots > k; });
    return slots[k].buffer.data() != nullptr ? Status::Ok() : pinned;
  };

  // Up to kFetchesInFlight batches are fetched at once, each into its own
  // buffer on a thread of its own, and a fetched batch's copies to the
  // device are queued in batch order. At least one buffer is always
  // copying or free, so that a fetch never waits for the device.
  const size_t depth = std::min(kFetchesInFlight, std::max<size_t>(1, slots.size() - 1));
  size_t next_to_queue = 0;
  auto queue = [&]() -> Status {  // the oldest batch in flight: its copies, its checksums
    Slot& slot = slots[next_to_queue % slots.size()];
    ++next_to_queue;
    slot.fetcher.join();
    for (const Status& s : slot.fetched) MC_RETURN_IF_ERROR(s);
    for (size_t k = 0; k < slot.batch->size(); ++k) {
      const TensorDestination& d = destinations[(*slot.batch)[k]];
      MC_RETURN_IF_ERROR(driver.CopyToDeviceAsync(Address(d), slot.staging[k].data(), slot.staging[k].size(), stream));
      slot.busy = true;
    }
    MC_RETURN_IF_ERROR(driver.Record(slot.copied, stream));
    if (options_.verify) {
      slot.verdicts.assign(slot.read.size(), Status::Ok());
      slot.checker = std::thread([this, &slot] {
        slot.verdicts = CheckChecksums(slot.read, std::vector<ConstBytes>(slot.staging.begin(), slot.staging.end()),
                                       CopyThreads());
      });
    }
    Report(slot.bytes);
    return Status::Ok();
  };
  for (size_t b = 0; b < plan.batches.size(); ++b) {
    Slot& slot = slots[b % slots.size()];
    if (b < slots.size()) MC_RETURN_IF_ERROR(buffer_ready(b));
    MC_RETURN_IF_ERROR(slot.Checked());
    if (slot.busy) MC_RETURN_IF_ERROR(driver.Wait(slot.copied));
    slot.busy = false;
    slot.batch = &plan.batches[b];
    slot.read.clear();
    slot.staging.clear();
    uint64_t at = 0;
    for (size_t i : *slot.batch) {
      slot.read.push_back(Canonical(which[i]));
      slot.staging.push_back(MutableBytes(slot.buffer.data() + at, destinations[i].bytes.size()));
      at += destinations[i].bytes.size();
    }
    slot.bytes = at;
    slot.fetcher = std::thread([this, &slot] { slot.fetched = ReadBatch(slot.read, slot.staging, /*checksums=*/false); });
    if (b + 1 - next_to_queue >= depth) MC_RETURN_IF_ERROR(queue());
  }
  while (next_to_queue < plan.batches.size()) MC_RETURN_IF_ERROR(queue());
  for (Slot& s : slots) MC_RETURN_IF_ERROR(s.Checked());
  MC_RETURN_IF_ERROR(driver.Synchronize(stream));  // before the buffers go back to the pool
  for (Slot& s : slots) s.busy = false;
  return Status::Ok();
}

std::optional<Status> ModelReaderImpl::LoadIntoCudaFromStore(std::span<const TensorDestination> destinations,
                                                         std::span<const size_t> which, const Plan& plan,
                                                         const cuda::Driver& driver, void* cu_stream) {
  Store& store = model_.connector().store();
  if (!store.Features().lends_values) return std::nullopt;
  auto stream = reinterpret_cast<cuda::Stream>(cu_stream);
  // The stored tensors, batch by batch, each once (into its first destination).
  std::vector<std::vector<size_t>> items(plan.batches.size());
  std::vector<std::string> keys;
  for (size_t b = 0; b < plan.batches.size(); ++b) {
    for (size_t i : plan.batches[b]) {
      items[b].push_back(Canonical(which[i]));
      keys.push_back(model_.TensorKey(rank_, tensors_[items[b].back()].name));
    }
  }
  std::vector<std::string_view> key_views(keys.begin(), keys.end());
  std::vector<Result<Buffer>> views = store.BatchView(key_views);
  for (const Result<Buffer>& v : views) {
    if (v.status().code() == StatusCode::kUnimplemented) return std::nullopt;
    if (v.ok() && v->size() > 0 && !driver.IsPinned(v->data())) return std::nullopt;
  }
  // The values are held (views) until every copy out of them is done.
  std::vector<ConstBytes> data(views.size());
  for (size_t k = 0, b = 0; b < items.size(); ++b) {
    for (size_t item : items[b]) {
      const Result<Buffer>& v = views[k];
      Status checked[1] = {v.status().code() == StatusCode::kNotFound
                               ? DataLoss(Describe(item) + " is in the manifest but not in the store (removed?)")
                           : !v.ok() ? v.status().WithContext("reading " + Describe(item))
                                     : CheckStored(item, v->bytes(), &data[k])};
      SayIfChanged(checked);
      MC_RETURN_IF_ERROR(checked[0]);
      ++k;
    }
  }
  // Every copy is queued first; then the checksums of all tensors are
  // computed on CopyThreads() threads while the copies run, piece by piece
  // (CheckChecksums), so that one large tensor does not hold the load up.
  // However the load ends, no copy may still read a value when the views go.
  struct Drain {
    const cuda::Driver& driver;
    cuda::Stream stream;
    ~Drain() { (void)driver.Synchronize(stream); }
  } drain{driver, stream};
  std::vector<size_t> item_of(data.size());
  for (size_t k = 0, b = 0; b < items.size(); ++b) {
    for (size_t j = 0; j < items[b].size(); ++j, ++k) {
      const TensorDestination& d = destinations[plan.batches[b][j]];
      MC_RETURN_IF_ERROR(driver.CopyToDeviceAsync(Address(d), data[k].data(), data[k].size(), stream));
      item_of[k] = items[b][j];
    }
  }
  if (options_.verify) {
    // A value this model checked before, still the same stored value
    // (memory:// values never change), is not hashed again.
    ModelMemory& memory = *model_.memory_;
    std::vector<size_t> fresh, fresh_items;
    std::vector<ConstBytes> fresh_data;
    for (size_t k = 0; k < data.size(); ++k) {
      if (memory.CheckedBefore(keys[k], *views[k], data[k], tensors_[item_of[k]].checksum)) continue;
      fresh.push_back(k);
      fresh_items.push_back(item_of[k]);
      fresh_data.push_back(data[k]);
    }
    std::vector<Status> verdicts = CheckChecksums(fresh_items, fresh_data, CopyThreads());
    for (size_t n = 0; n < fresh.size(); ++n) {
      MC_RETURN_IF_ERROR(verdicts[n]);
      const size_t k = fresh[n];
      memory.RememberChecked(keys[k], *views[k], data[k], tensors_[item_of[k]].checksum);
    }
  }
  MC_RETURN_IF_ERROR(driver.Synchronize(stream));
  for (const std::vector<size_t>& batch : plan.batches) {
    uint64_t bytes = 0;
    for (size_t i : batch) bytes += destinations[i].bytes.size();
    Report(bytes);
  }
  return Status::Ok();
}

Result<std::vector<std::string>> ModelReaderImpl::LoadIntoCuda(std::span<const TensorDestination> destinations,
                                                           const CudaTarget& target) {
  MC_ASSIGN_OR_RETURN(Connector::InUse in_use, model_.Use());
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
  std::optional<Status> from_store = LoadIntoCudaFromStore(destinations, which, plan, *driver, stream);
  if (from_store) {
    MC_RETURN_IF_ERROR(*from_store);
  } else {
    const Plan staged = PlanReads(which, std::min(options_.batch_bytes, kStagedBatchBytes));
    MC_RETURN_IF_ERROR(LoadIntoCudaStaged(destinations, which, staged, *driver, target.device, stream));
  }
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
  return Missed(which);
}

Result<std::vector<DeviceGroup>> ModelReaderImpl::PlanDeviceGroups(uint64_t group_bytes) const {
  if (!has_manifest_) {
    return FailedPrecondition("a load onto a device in groups needs a manifest (model '" + model_.name() +
                              "' rank " + std::to_string(rank_) + " has none)");
  }
  const size_t n = tensors_.size();
  std::vector<size_t> last_use(n, 0);  // of each stored tensor: the last index handing it out
  for (size_t i = 0; i < n; ++i) last_use[Canonical(i)] = i;
  std::vector<DeviceGroup> groups;
  std::vector<bool> filled(n, false);
  DeviceGroup group;
  uint64_t bytes = 0;
  auto close = [&] {
    for (size_t i : group.hand_out) {
      if (last_use[Canonical(i)] == i) group.drop.push_back(Canonical(i));
    }
    groups.push_back(std::move(group));
    group = {};
    bytes = 0;
  };
  for (size_t i = 0; i < n; ++i) {
    const size_t stored = Canonical(i);
    if (!filled[stored]) {
      filled[stored] = true;
      group.fill.push_back(stored);
      bytes += tensors_[stored].nbytes;
    }
    group.hand_out.push_back(i);
    if (bytes >= group_bytes) close();
  }
  if (!group.hand_out.empty()) close();
  return groups;
}

}  // namespace mooncake_connector
