// Loading a rank of a model: batched reads straight into tensor memory (the
// value's header goes to scratch and is checked against the manifest), and
// checksums verified against the manifest.
#include <algorithm>
#include <cstring>
#include <set>
#include <tuple>

#include <unistd.h>

#include "core/hash_internal.h"
#include "model/model_internal.h"
#include "model/model_reader_internal.h"
#include "model/model_memory_internal.h"
#include "mooncake_connector/model.h"
#include "mooncake_connector/value_format.h"

namespace mooncake_connector {

Result<std::unique_ptr<ModelReader>> Model::OpenReader(int rank, const LoadOptions& options) {
  MC_ASSIGN_OR_RETURN(Connector::InUse in_use, Use());
  if (rank < 0) return InvalidArgument("rank " + std::to_string(rank) + " is negative");
  auto r = std::make_unique<ModelReaderImpl>(*this, rank, options);
  MC_ASSIGN_OR_RETURN(std::optional<ManifestPart> manifest, ReadManifest(rank));
  if (!manifest) {
    // Seen complete by this model (its connector), now gone from the store: lost, not
    // never saved. Loaded by the remembered manifest if its tensors are all
    // still there (their checksums are checked as ever).
    if (std::shared_ptr<const ManifestPart> seen = memory_->RecalledManifest(ManifestKey(rank))) {
      MC_RETURN_IF_ERROR(CheckRecalledTensors(rank, *seen));
      manifest = *seen;
    }
  }
  if (manifest) {
    if (manifest->state != SaveState::kComplete) {
      return FailedPrecondition("the save of model '" + name_ + "' rank " + std::to_string(rank) +
                                " (started " + manifest->created +
                                ") is not complete: it failed or is still running; save again to "
                                "resume it, or remove the model");
    }
    r->tensors_ = std::move(manifest->tensors);
    r->has_manifest_ = true;
    r->format_version_ = manifest->format_version;
    r->save_id_ = manifest->save_id;
    for (const ManifestTensor& t : r->tensors_) r->total_bytes_ += t.alias_of.empty() ? t.nbytes : 0;
    // Tensors of one shape (and save) share a header: each distinct one
    // encoded once (a load of 2048 tensors of one shape spent a fifth of its
    // time here).
    std::map<std::tuple<DType, Shape, uint64_t, uint64_t>, uint32_t> distinct;
    r->header_of_.reserve(r->tensors_.size());
    for (size_t i = 0; i < r->tensors_.size(); ++i) {
      const ManifestTensor& t = r->tensors_[i];
      auto [it, fresh] = distinct.try_emplace({t.dtype, t.shape, t.nbytes, t.save_id},
                                              static_cast<uint32_t>(r->headers_.size()));
      if (fresh) {
        Result<std::string> header = r->ExpectedHeader(i);
        r->headers_.push_back(header.ok() ? std::move(*header) : std::string());
      }
      r->header_of_.push_back(it->second);
    }
  } else {
    std::string prefix = TensorKey(rank, "");
    MC_ASSIGN_OR_RETURN(std::vector<std::string> keys, connector_->store().List(prefix));
    if (keys.empty()) {
      return NotFound("model '" + name_ + "' has no tensors for rank " + std::to_string(rank) + " in " +
                      connector_->store().url());
    }
    for (const std::string& key : keys) {
      ManifestTensor t;
      t.name = key.substr(prefix.size());
      r->tensors_.push_back(std::move(t));
    }
  }
  for (size_t i = 0; i < r->tensors_.size(); ++i) r->index_.emplace(r->tensors_[i].name, i);
  return std::unique_ptr<ModelReader>(new ModelReader(std::move(r)));
}

Status Model::CheckRecalledTensors(int rank, const ManifestPart& part) {
  std::vector<std::string> keys;
  std::vector<const ManifestTensor*> stored;
  for (const ManifestTensor& t : part.tensors) {
    if (!t.alias_of.empty()) continue;
    keys.push_back(TensorKey(rank, t.name));
    stored.push_back(&t);
  }
  std::vector<std::string_view> views(keys.begin(), keys.end());
  std::vector<Result<bool>> exists = connector_->store().BatchExists(views);
  std::vector<std::string> lost;
  for (size_t i = 0; i < exists.size(); ++i) {
    if (!exists[i].ok()) return exists[i].status().WithContext("checking what is left of model '" + name_ + "'");
    if (!*exists[i]) lost.push_back(stored[i]->name);
  }
  if (lost.empty()) return Status::Ok();
  std::string names;
  for (size_t i = 0; i < lost.size() && i < 8; ++i) names += (i ? ", '" : "'") + lost[i] + "'";
  if (lost.size() > 8) names += ", ...";
  return DataLoss("model '" + name_ + "' rank " + std::to_string(rank) + " (saved complete " + part.created +
                  ") has lost its manifest and " + std::to_string(lost.size()) + " of its " + std::to_string(keys.size()) +
                  " tensors since this connector saw it (" + names + ") in " + connector_->store().url() +
                  ": the master restarted, the values were evicted, or another client removed the model; "
                  "save it again");
}

size_t ModelReaderImpl::Canonical(size_t index) const {
  const std::string& target = tensors_[index].alias_of;
  return target.empty() ? index : index_.at(target);
}

void ModelReaderImpl::Report(uint64_t bytes) {
  done_bytes_ += bytes;
  if (options_.progress) options_.progress(done_bytes_, total_bytes_);
}

std::string ModelReaderImpl::Describe(size_t item) const {
  return "tensor '" + tensors_[item].name + "' (rank " + std::to_string(rank_) + " of model '" + model_.name() + "')";
}

Status ModelReaderImpl::CheckChecksum(size_t item, ConstBytes data) const {
  if (Xxh3(data) == tensors_[item].checksum) return Status::Ok();
  return DataLoss("checksum mismatch in " + Describe(item) + ": the stored bytes are corrupted");
}

namespace {

// A failed read of the stored tensor `which`, as a load reports it.
Status ReadFailure(const std::string& which, const Status& s) {
  if (s.code() == StatusCode::kNotFound) {
    return DataLoss(which + " is in the manifest but not in the store (evicted under memory pressure, or removed)");
  }
  if (s.code() == StatusCode::kInvalidArgument) {
    return DataLoss(which + " in the store does not match the manifest: " + std::string(s.message()));
  }
  return s.WithContext("reading " + which);
}

}  // namespace

std::vector<Status> ModelReaderImpl::ReadBatch(std::span<const size_t> items, std::span<const MutableBytes> targets,
                                           bool checksums) {
  const size_t n = items.size();
  std::vector<std::string> keys(n), expected(n), heads(n);
  std::vector<GetIntoRequest> requests(n);
  std::vector<uint64_t> hashes(n, 0);  // of each tensor's bytes, by the store while it copies
  std::vector<Status> out(n);
  for (size_t j = 0; j < n; ++j) {
    const ManifestTensor& t = tensors_[items[j]];
    keys[j] = model_.TensorKey(rank_, t.name);
    Result<std::string> header = ExpectedHeader(items[j]);
    if (!header.ok()) {
      out[j] = header.status();
      continue;
    }
    expected[j] = std::move(*header);
    heads[j].assign(expected[j].size(), '\0');
    requests[j] = GetIntoRequest{keys[j], targets[j],
                                 MutableBytes(reinterpret_cast<std::byte*>(heads[j].data()), heads[j].size()),
                                 checksums ? &hashes[j] : nullptr, /*exact=*/true};
  }
  std::vector<Result<uint64_t>> got = model_.connector().store().BatchGetInto(requests);
  for (size_t j = 0; j < n; ++j) {
    if (!out[j].ok()) continue;
    const ManifestTensor& t = tensors_[items[j]];
    const std::string which = Describe(items[j]);
    const Result<uint64_t>& r = got[j];
    if (!r.ok()) {
      out[j] = ReadFailure(which, r.status());
    } else if (Status s = CheckRead(items[j], *r == expected[j].size() + t.nbytes && heads[j] == expected[j],
                                    targets[j].first(std::min<uint64_t>(t.nbytes, targets[j].size())));
               !s.ok()) {
      out[j] = s;
    } else if (checksums && hashes[j] != t.checksum) {
      out[j] = DataLoss("checksum mismatch in " + which + ": the stored bytes are corrupted");
    }
  }
  SayIfChanged(out);
  return out;
}

void ModelReaderImpl::SayIfChanged(std::span<Status> results) {
  if (!has_manifest_) return;
  if (std::none_of(results.begin(), results.end(),
                   [](const Status& s) { return s.code() == StatusCode::kDataLoss; })) {
    return;
  }
  Result<std::optional<ManifestPart>> now = model_.ReadManifest(rank_);
  if (!now.ok()) return;
  if (now->has_value() && (*now)->state == SaveState::kComplete && (*now)->save_id == save_id_) return;
  const std::string what = !now->has_value() ? "removed" : (*now)->state == SaveState::kComplete ? "saved again"
                                                                                                  : "being saved again";
  for (Status& s : results) {
    if (s.code() != StatusCode::kDataLoss) continue;
    s = Aborted("model '" + model_.name() + "' rank " + std::to_string(rank_) +
                " changed during the load (it was " + what + " meanwhile: a concurrent save or remove); " +
                "load it again (" + std::string(s.message()) + ")");
  }
}

std::vector<Status> ModelReaderImpl::ReadPieces(std::span<const TensorPiece> pieces) {
  const size_t n = pieces.size();
  std::vector<std::string> keys(n), expected(n), heads(n);
  std::vector<GetIntoRequest> requests(n);
  std::vector<Status> out(n);
  for (size_t j = 0; j < n; ++j) {
    const TensorPiece& p = pieces[j];
    if (p.index >= tensors_.size() || p.offset > tensors_[p.index].nbytes ||
        p.destination.size() > tensors_[p.index].nbytes - p.offset) {
      out[j] = InvalidArgument("piece " + std::to_string(j) + " is not within a stored tensor of " +
                               (p.index < tensors_.size() ? Describe(p.index) : "this rank"));
      continue;
    }
    keys[j] = model_.TensorKey(rank_, tensors_[p.index].name);
    Result<std::string> header = ExpectedHeader(p.index);
    if (!header.ok()) {
      out[j] = header.status();
      continue;
    }
    expected[j] = std::move(*header);
    GetIntoRequest r{keys[j], p.destination};
    r.partial = true;
    r.offset = expected[j].size() + p.offset;
    if (p.offset == 0) {  // the piece that starts the tensor also reads its header
      heads[j].assign(expected[j].size(), '\0');
      r.head = MutableBytes(reinterpret_cast<std::byte*>(heads[j].data()), heads[j].size());
      r.offset = 0;
    }
    requests[j] = r;
  }
  std::vector<Result<uint64_t>> got = model_.connector().store().BatchGetInto(requests);
  for (size_t j = 0; j < n; ++j) {
    if (!out[j].ok()) continue;
    const size_t item = pieces[j].index;
    const std::string which = Describe(item);
    const Result<uint64_t>& r = got[j];
    if (!r.ok()) {
      out[j] = ReadFailure(which, r.status());
    } else if (*r != expected[j].size() + tensors_[item].nbytes || (!heads[j].empty() && heads[j] != expected[j])) {
      out[j] = CheckRead(item, /*as_listed=*/false, {});
    }
  }
  SayIfChanged(out);
  return out;
}

Status ModelReaderImpl::CheckAssembled(size_t index, ConstBytes data) {
  if (index >= tensors_.size() || data.size() != tensors_[index].nbytes) {
    return InvalidArgument("the assembled bytes are not those of a stored tensor of this rank");
  }
  std::vector<Status> result{CheckRead(index, /*as_listed=*/true, data)};
  if (result[0].ok() && options_.verify) result[0] = CheckChecksum(index, data);
  SayIfChanged(result);  // another save's bytes, not damage
  return result[0];
}

Result<std::string> ModelReaderImpl::ExpectedHeader(size_t item) const {
  if (item < header_of_.size() && !headers_[header_of_[item]].empty()) return headers_[header_of_[item]];
  return ValueHeader(model_, rank_, tensors_[item], format_version_);
}

Status ModelReaderImpl::CheckRead(size_t item, bool as_listed, ConstBytes data) const {
  const ManifestTensor& t = tensors_[item];
  if (!as_listed) {
    return DataLoss(Describe(item) + " in the store is not the value the manifest lists: another save of the "
                    "model wrote it (two saves of this model and rank at once?), or it was overwritten; save "
                    "the model again");
  }
  if (t.dtype == DType::kBool && std::any_of(data.begin(), data.end(), [](std::byte b) { return b > std::byte{1}; })) {
    return DataLoss(Describe(item) + " has a BOOL element that is neither 0 nor 1");
  }
  return Status::Ok();
}

Status ModelReaderImpl::CheckStored(size_t item, ConstBytes value, ConstBytes* data) const {
  MC_ASSIGN_OR_RETURN(std::string header, ExpectedHeader(item));
  const uint64_t nbytes = tensors_[item].nbytes;
  const bool as_listed = value.size() == header.size() + nbytes &&
                         std::memcmp(value.data(), header.data(), header.size()) == 0;
  *data = as_listed ? value.subspan(header.size()) : ConstBytes();
  return CheckRead(item, as_listed, *data);
}

Result<Tensor> ModelReaderImpl::ReadUnknown(size_t index) {
  const ManifestTensor& t = tensors_[index];
  std::string key = model_.TensorKey(rank_, t.name);
  Result<Buffer> value = model_.connector().store().Get(key);
  if (value.status().code() == StatusCode::kNotFound) {
    return NotFound("tensor '" + t.name + "' of model '" + model_.name() + "' vanished while loading");
  }
  if (!value.ok()) return value.status().WithContext("reading tensor '" + t.name + "'");
  std::map<std::string, std::string> metadata;
  if (ParseTensorValue(value->bytes(), &metadata).ok()) {
    auto marker = metadata.find(kManifestMarker);
    if (marker != metadata.end()) {
      return DataLoss("tensor '" + t.name + "' of model '" + model_.name() + "' was saved with a manifest ('" +
                      marker->second + "') that is not in " + model_.connector().store().url() +
                      ": the save did not finish, the model is being removed, or it was lost in part (a master "
                      "restart, eviction); not loading what is left as a whole model. Save it again");
    }
  }
  Result<Tensor> tensor = DecodeTensor(*value);
  if (!tensor.ok()) return tensor.status().WithContext("tensor '" + t.name + "'");
  return tensor;
}

ModelReaderImpl::~ModelReaderImpl() {
  stop_preparing_.store(true);
  if (preparer_.joinable()) preparer_.join();
  // A reader may go after its connector closed (a generator collected
  // late): the store is gone then.
  if (options_.streaming && streamed_bytes_.load() > 0) {
    if (Result<Connector::InUse> in_use = model_.Use(); in_use.ok()) {
      model_.connector().store().StreamingLoadDone(options_.batch_bytes, streamed_bytes_.load());
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
  if (preparer_.joinable()) preparer_.join();
  prepared_from_ = from;
  prepared_.clear();
  // Allocated here, on the caller's thread: memory from another thread's
  // malloc arena is returned to the system when freed, so every later batch
  // and save would fault it in afresh. Only the touching runs beside the fetch.
  for (size_t c : read) {
    Result<Tensor> t = AllocateTensor(c);
    if (!t.ok()) break;  // NextBatch allocates the rest itself, and reports a failure
    prepared_.push_back(std::move(*t));
  }
  std::vector<MutableBytes> pages;
  for (const Tensor& t : prepared_) pages.push_back(MutableBytes(t.data(), t.nbytes()));
  // Stopped as soon as the fetch wants the memory: whatever it has not
  // touched by then the fetch's own copy threads fault in, as without it.
  stop_preparing_.store(false);
  preparer_ = std::thread([this, pages = std::move(pages)] {
    static const size_t page = static_cast<size_t>(std::max(4096L, sysconf(_SC_PAGESIZE)));
    for (MutableBytes b : pages) {
      auto* bytes = reinterpret_cast<volatile char*>(b.data());
      for (size_t at = 0; at < b.size(); at += page) {
        if (at % (64 * page) == 0 && stop_preparing_.load(std::memory_order_relaxed)) return;
        bytes[at] = 0;
      }
    }
  });
}

std::vector<Tensor> ModelReaderImpl::TakePrepared(size_t from) {
  stop_preparing_.store(true);
  if (preparer_.joinable()) preparer_.join();
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

namespace {

// InvalidArgument naming both unless a tensor stored as dtype/shape fits `d`.
Status CheckFitsDestination(DType dtype, const Shape& shape, const TensorDestination& d) {
  if (dtype == d.dtype && shape == d.shape) return Status::Ok();
  return InvalidArgument("tensor '" + d.name + "' is stored as " + std::string(DTypeName(dtype)) + ShapeText(shape) +
                         " but the destination is " + std::string(DTypeName(d.dtype)) + ShapeText(d.shape));
}

}  // namespace

Result<Tensor> ModelReaderImpl::ReadUnknownFor(size_t index, const TensorDestination& d) {
  MC_ASSIGN_OR_RETURN(Tensor t, ReadUnknown(index));
  MC_RETURN_IF_ERROR(CheckFitsDestination(t.dtype(), t.shape(), d));
  return t;
}

Result<std::vector<size_t>> ModelReaderImpl::Resolve(std::span<const TensorDestination> destinations) const {
  std::vector<size_t> which(destinations.size());
  for (size_t i = 0; i < destinations.size(); ++i) {
    const TensorDestination& d = destinations[i];
    auto it = index_.find(d.name);
    if (it == index_.end()) {
      return NotFound("model '" + model_.name() + "' rank " + std::to_string(rank_) + " has no tensor '" +
                      d.name + "'");
    }
    which[i] = it->second;
    MC_ASSIGN_OR_RETURN(uint64_t nbytes, NumBytes(d.dtype, d.shape));
    if (nbytes != d.bytes.size()) {
      return InvalidArgument("destination of '" + d.name + "' holds " + std::to_string(d.bytes.size()) +
                             " bytes, its dtype and shape need " + std::to_string(nbytes));
    }
    const ManifestTensor& t = tensors_[it->second];
    if (has_manifest_) MC_RETURN_IF_ERROR(CheckFitsDestination(t.dtype, t.shape, d));
  }
  return which;
}

std::vector<std::string> ModelReaderImpl::Missed(std::span<const size_t> which) const {
  std::vector<bool> covered(tensors_.size(), false);
  for (size_t i : which) covered[i] = true;
  std::vector<std::string> missed;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (!covered[i]) missed.push_back(tensors_[i].name);
  }
  return missed;
}

ModelReaderImpl::Plan ModelReaderImpl::PlanReads(std::span<const size_t> which, uint64_t batch_bytes) const {
  Plan plan;
  std::vector<size_t> batch;
  uint64_t bytes = 0;
  for (size_t i = 0; i < which.size(); ++i) {
    size_t c = Canonical(which[i]);
    if (plan.first.count(c) != 0) continue;
    if (!batch.empty() && bytes + tensors_[c].nbytes > batch_bytes) {
      plan.batches.push_back(std::move(batch));
      batch.clear();
      bytes = 0;
    }
    plan.first.emplace(c, i);
    batch.push_back(i);
    bytes += tensors_[c].nbytes;
  }
  if (!batch.empty()) plan.batches.push_back(std::move(batch));
  return plan;
}

Result<std::vector<std::string>> ModelReaderImpl::LoadInto(std::span<const TensorDestination> destinations) {
  MC_ASSIGN_OR_RETURN(Connector::InUse in_use, model_.Use());
  MC_ASSIGN_OR_RETURN(std::vector<size_t> which, Resolve(destinations));
  if (!has_manifest_) {
    for (size_t i = 0; i < destinations.size(); ++i) {
      const TensorDestination& d = destinations[i];
      MC_ASSIGN_OR_RETURN(Tensor t, ReadUnknownFor(which[i], d));
      if (t.nbytes() > 0) std::memcpy(d.bytes.data(), t.data(), t.nbytes());
      Report(t.nbytes());
    }
    return Missed(which);
  }
  total_bytes_ = 0;
  for (const TensorDestination& d : destinations) total_bytes_ += d.bytes.size();
  // Each stored tensor is read once, into the first destination that wants
  // it; other destinations of it (aliases) get a copy.
  Plan plan = PlanReads(which, options_.batch_bytes);
  for (const std::vector<size_t>& batch : plan.batches) {
    std::vector<size_t> read;
    std::vector<MutableBytes> targets;
    uint64_t bytes = 0;
    for (size_t i : batch) {
      read.push_back(Canonical(which[i]));
      targets.push_back(destinations[i].bytes);
      bytes += destinations[i].bytes.size();
    }
    std::vector<Status> results = ReadBatch(read, targets, options_.verify);
    for (const Status& s : results) MC_RETURN_IF_ERROR(s);
    Report(bytes);
  }
  for (size_t i = 0; i < destinations.size(); ++i) {
    size_t from = plan.first.at(Canonical(which[i]));
    if (from != i && destinations[i].bytes.data() != destinations[from].bytes.data() &&
        !destinations[i].bytes.empty()) {
      std::memcpy(destinations[i].bytes.data(), destinations[from].bytes.data(), destinations[i].bytes.size());
      Report(destinations[i].bytes.size());
    }
  }
  return Missed(which);
}

Result<std::vector<std::string>> ModelReaderImpl::Check() {
  MC_ASSIGN_OR_RETURN(Connector::InUse in_use, model_.Use());
  if (!has_manifest_) {
    return FailedPrecondition("model '" + model_.name() + "' rank " + std::to_string(rank_) +
                              " has no manifest to check against");
  }
  std::vector<std::string> problems;
  size_t next = 0;
  while (next < tensors_.size()) {
    std::vector<size_t> read;
    std::vector<MutableBytes> targets;
    uint64_t bytes = 0;
    for (; next < tensors_.size(); ++next) {
      const ManifestTensor& t = tensors_[next];
      if (!t.alias_of.empty()) continue;
      if (!read.empty() && bytes + t.nbytes > options_.batch_bytes) break;
      read.push_back(next);
      bytes += t.nbytes;
    }
    MC_ASSIGN_OR_RETURN(Buffer scratch, model_.connector().store().AllocateForRead(bytes));
    uint64_t at = 0;
    for (size_t i : read) {
      targets.push_back(scratch.bytes().subspan(at, tensors_[i].nbytes));
      at += tensors_[i].nbytes;
    }
    std::vector<Status> results = ReadBatch(read, targets, options_.verify);
    for (const Status& s : results) {
      if (!s.ok()) problems.emplace_back(s.message());
    }
    Report(bytes);
  }
  return problems;
}

}  // namespace mooncake_connector
