// Streaming loads (ModelReader::NextBatch): batch after batch into new
// storage, the next batch's storage allocated and its pages faulted in on
// other threads while this one is fetched.
#include <algorithm>
#include <set>
#include <thread>

#include "model/model_internal.h"
#include "model/model_reader_internal.h"
#include "mooncake_connector/model.h"

namespace mooncake_connector {

ModelReaderImpl::~ModelReaderImpl() {
  prefault_.reset();
  // A reader may go after its connector closed (a generator collected
  // late): the store is gone then.
  if (options_.streaming && streamed_bytes_.load() > 0) {
    if (Result<Connector::InUse> in_use = model_.Use(); in_use.ok()) {
      if (ReadMemory* memory = model_.connector().store().Features().read_memory; memory != nullptr) {
        memory->StreamingLoadDone(options_.batch_bytes, streamed_bytes_.load());
      }
    }
  }
}

Result<Tensor> ModelReaderImpl::AllocateTensor(size_t index) {
  const ManifestTensor& t = tensors_[index];
  if (!options_.streaming) return Tensor::Allocate(t.dtype, t.shape);
  for (uint64_t was = streamed_bytes_.load(); was < t.nbytes && !streamed_bytes_.compare_exchange_weak(was, t.nbytes);) {
  }
  MC_ASSIGN_OR_RETURN(Buffer buffer, model_.connector().store().AllocateForRead(t.nbytes));
  return Tensor::FromBuffer(t.dtype, t.shape, std::move(buffer));
}

ModelReaderImpl::BatchPlan ModelReaderImpl::PlanBatch(size_t from, const std::vector<size_t>& pending) const {
  BatchPlan plan{from, {}};
  std::set<size_t> have(pending.begin(), pending.end());
  uint64_t bytes = 0;
  for (; plan.end < tensors_.size(); ++plan.end) {
    size_t c = Canonical(plan.end);
    auto shared = shared_.find(c);
    if (have.count(c) != 0 || (shared != shared_.end() && shared->second.data() != nullptr)) continue;
    if (!plan.read.empty() && bytes + tensors_[c].nbytes > options_.batch_bytes) break;
    plan.read.push_back(c);
    have.insert(c);
    bytes += tensors_[c].nbytes;
  }
  return plan;
}

void ModelReaderImpl::Prepare(size_t from, std::vector<size_t> read) {
  prefault_.reset();
  prepared_from_ = from;
  prepared_.clear();
  // Allocated here, on the caller's thread: memory from another thread's
  // malloc arena is returned to the system when freed, so every later batch
  // and save would fault it in afresh. Only the faulting runs beside the fetch.
  for (size_t c : read) {
    Result<Tensor> t = AllocateTensor(c);
    if (!t.ok()) break;  // NextBatch allocates the rest itself, and reports a failure
    prepared_.push_back(std::move(*t));
  }
  std::vector<MutableBytes> pages;
  for (const Tensor& t : prepared_) pages.push_back(MutableBytes(t.data(), t.nbytes()));
  // Stopped as soon as the fetch wants the memory: whatever it has not
  // faulted in by then the fetch's own copy threads fault in, as without it.
  prefault_ = std::make_unique<PrefaultAhead>(pages, PrefaultThreads());
}

std::vector<Tensor> ModelReaderImpl::TakePrepared(size_t from) {
  prefault_.reset();
  std::vector<Tensor> out;
  if (prepared_from_ == from) out = std::move(prepared_);
  prepared_.clear();
  prepared_from_ = SIZE_MAX;
  return out;
}

Result<std::vector<NamedTensor>> ModelReaderImpl::NextBatch() {
  MC_ASSIGN_OR_RETURN(Connector::InUse in_use, model_.Use());
  std::vector<NamedTensor> out;
  if (!has_manifest_) {
    uint64_t bytes = 0;
    while (next_ < tensors_.size() && (out.empty() || bytes < options_.batch_bytes)) {
      MC_ASSIGN_OR_RETURN(Tensor t, ReadUnknown(next_));
      bytes += t.nbytes();
      Report(t.nbytes());
      out.push_back({tensors_[next_].name, std::move(t)});
      ++next_;
    }
    return out;
  }
  // Which tensors are shared (alias targets): kept until the end.
  if (next_ == 0) {
    for (const ManifestTensor& t : tensors_) {
      if (!t.alias_of.empty()) shared_.emplace(index_.at(t.alias_of), Tensor());
    }
  }
  BatchPlan plan = PlanBatch(next_, {});
  std::vector<Tensor> prepared = TakePrepared(next_);
  const std::vector<size_t>& read = plan.read;  // canonical indices to read in this batch
  const size_t end = plan.end;
  std::vector<MutableBytes> targets;
  std::map<size_t, Tensor> fresh;
  uint64_t bytes = 0;
  for (size_t k = 0; k < read.size(); ++k) {
    const ManifestTensor& t = tensors_[read[k]];
    Tensor tensor;
    if (k < prepared.size() && prepared[k].dtype() == t.dtype && prepared[k].shape() == t.shape) {
      tensor = std::move(prepared[k]);
    } else {
      MC_ASSIGN_OR_RETURN(tensor, AllocateTensor(read[k]));
    }
    targets.push_back(MutableBytes(tensor.data(), tensor.nbytes()));
    fresh.emplace(read[k], std::move(tensor));
    bytes += t.nbytes;
  }
  if (end < tensors_.size() &&
      options_.prepare_next_batch.value_or(std::thread::hardware_concurrency() >= 4)) {
    Prepare(end, PlanBatch(end, read).read);
  }
  std::vector<Status> results = ReadBatch(read, targets, options_.verify);
  for (const Status& s : results) MC_RETURN_IF_ERROR(s);
  for (auto& [c, tensor] : fresh) {
    auto shared = shared_.find(c);
    if (shared != shared_.end()) shared->second = tensor;
  }
  for (; next_ < end; ++next_) {
    size_t c = Canonical(next_);
    auto f = fresh.find(c);
    out.push_back({tensors_[next_].name, f != fresh.end() ? f->second : shared_.at(c)});
  }
  if (!out.empty()) Report(bytes);
  return out;
}

}  // namespace mooncake_connector
