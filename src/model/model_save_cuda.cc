// Saving a state dict that lies in a CUDA device's memory: the tensors reach
// the store through two pinned host buffers (save_staging_internal.h), not
// through a host copy of the whole rank.
#include <algorithm>
#include <string>
#include <vector>

#include "core/cuda_internal.h"
#include "model/model_internal.h"
#include "model/save_staging_internal.h"
#include "mooncake_connector/model.h"

namespace mooncake_connector {

SaveStaging::~SaveStaging() {
  bool queued = false;
  for (const Slot& s : slots_) queued = queued || s.queued;
  // No copy may still write a buffer that is freed.
  if (queued) (void)driver_.Synchronize(stream_);
  for (Slot& s : slots_) {
    driver_.DestroyEvent(s.copied);
    Release(std::move(s.buffer));
  }
}

void SaveStaging::Release(cuda::PinnedBuffer buffer) const {
  // One larger tensor's buffer is freed: the pool keeps what later saves and
  // loads use again, not the size of a model's largest tensor.
  if (buffer.size() <= std::max(expected_, kPooledBytes)) cuda::PinnedPool::Get().Give(std::move(buffer));
}

Result<std::vector<ConstBytes>> SaveStaging::Queue(size_t slot, std::span<const ConstBytes> device) {
  Slot& s = slots_.at(slot);
  uint64_t bytes = 0;
  for (ConstBytes d : device) bytes += d.size();
  if (s.buffer.size() < bytes) {
    MC_RETURN_IF_ERROR(Wait(slot));
    Release(std::move(s.buffer));
    MC_ASSIGN_OR_RETURN(s.buffer, cuda::PinnedPool::Get().Take(driver_, std::max(bytes, expected_)));
  }
  if (s.copied == nullptr) {
    MC_ASSIGN_OR_RETURN(s.copied, driver_.CreateEvent());
  }
  std::vector<ConstBytes> out;
  out.reserve(device.size());
  uint64_t at = 0;
  for (ConstBytes d : device) {
    std::byte* to = s.buffer.data() + at;
    MC_RETURN_IF_ERROR(driver_.CopyToHostAsync(to, reinterpret_cast<uintptr_t>(d.data()), d.size(), stream_));
    s.queued = true;
    out.emplace_back(to, d.size());
    at += d.size();
  }
  MC_RETURN_IF_ERROR(driver_.Record(s.copied, stream_));
  return out;
}

Status SaveStaging::Wait(size_t slot) {
  Slot& s = slots_.at(slot);
  if (!s.queued) return Status::Ok();
  MC_RETURN_IF_ERROR(driver_.Wait(s.copied));
  s.queued = false;
  return Status::Ok();
}

Status Model::SaveStateDictCuda(int rank, std::span<const NamedTensorView> tensors, const CudaTarget& source,
                                const SaveOptions& options) {
  MC_ASSIGN_OR_RETURN(const cuda::Driver* driver, cuda::Driver::Get());
  MC_ASSIGN_OR_RETURN(cuda::Driver::ContextGuard context, driver->Enter(source.device));
  auto stream = reinterpret_cast<cuda::Stream>(source.stream);
  for (const NamedTensorView& t : tensors) {
    if (!t.on_device || t.tensor.nbytes == 0) continue;
    const auto address = reinterpret_cast<uintptr_t>(t.tensor.data);
    MC_RETURN_IF_ERROR(driver->CheckDeviceMemory(address, t.tensor.nbytes, source.device)
                           .WithContext("saving tensor '" + t.name + "' from CUDA device " +
                                        std::to_string(source.device)));
    if (t.tensor.dtype == DType::kBool) {  // checked before anything is written, a piece at a time
      constexpr uint64_t kPiece = uint64_t{16} << 20;
      std::vector<std::byte> host(std::min(t.tensor.nbytes, kPiece));
      for (uint64_t at = 0; at < t.tensor.nbytes; at += kPiece) {
        const uint64_t n = std::min(kPiece, t.tensor.nbytes - at);
        MC_RETURN_IF_ERROR(driver->CopyToHostAsync(host.data(), address + at, n, stream));
        MC_RETURN_IF_ERROR(driver->Synchronize(stream));
        MC_RETURN_IF_ERROR(CheckBoolBytes(t.name, ConstBytes(host.data(), n)));
      }
    }
  }
  SaveStaging staging(*driver, stream);  // goes before the context guard
  return SaveTensors(rank, tensors, options, &staging);
}

}  // namespace mooncake_connector
