// Loading a rank of a model: batched reads straight into tensor memory (the
// value's header goes to scratch and is checked against the manifest), and
// checksums verified against the manifest.
#include <algorithm>
#include <cstring>
#include <tuple>

#include "core/hash_internal.h"
#include "core/pages_internal.h"
#include "core/parallel_internal.h"
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
    r->checksum_piece_ = manifest->checksum_piece;
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

Status ModelReaderImpl::ChecksumMismatch(size_t item) const {
  return DataLoss("checksum mismatch in " + Describe(item) + ": the stored bytes are corrupted");
}

std::vector<Status> ModelReaderImpl::CheckChecksums(std::span<const size_t> items, std::span<const ConstBytes> data,
                                                    size_t threads) const {
  std::vector<size_t> order(items.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return data[x].size() > data[y].size(); });
  Xxh3PieceTasks pieces(checksum_piece_);
  std::vector<size_t> range(items.size());
  for (size_t k : order) range[k] = pieces.Add(data[k]);
  ParallelFor(pieces.tasks(), threads, [&](size_t n) { pieces.Hash(n); });
  std::vector<Status> out(items.size());
  for (size_t k = 0; k < items.size(); ++k) {
    if (pieces.Digest(range[k]) != tensors_[items[k]].checksum) out[k] = ChecksumMismatch(items[k]);
  }
  return out;
}

Status ReadFailure(const std::string& which, const Status& s) {
  if (s.code() == StatusCode::kNotFound) {
    return DataLoss(which + " is in the manifest but not in the store (evicted under memory pressure, or removed)");
  }
  if (s.code() == StatusCode::kInvalidArgument) {
    return DataLoss(which + " in the store does not match the manifest: " + std::string(s.message()));
  }
  return s.WithContext("reading " + which);
}

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
    requests[j].data_xxh3_piece = checksum_piece_;
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
      out[j] = ChecksumMismatch(items[j]);
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
  // The caller's memory is often fresh (torch.empty): advised to use huge
  // pages, it is faulted in 2 MiB at a time as the load fills it, not 4 KiB
  // (a first 1.1 GiB load over TCP on 16 cores: 0.95 s -> 0.53 s, the raw
  // wheel's 0.51 s into numpy memory, which numpy advises alike).
  if (options_.advise_huge_pages) {
    for (const TensorDestination& d : destinations) AdviseHugePages(d.bytes.data(), d.bytes.size());
  }
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
  // Fresh destinations are faulted in ahead of the transfers, in the order
  // they fill them, on threads of their own: the transfers then write mapped
  // memory instead of stopping at each fault (a first 1.1 GiB load on 16
  // cores: 0.90-0.94x the raw wheel without, 0.97-1.19x with it).
  std::vector<MutableBytes> ahead;
  for (const std::vector<size_t>& batch : plan.batches) {
    for (size_t i : batch) ahead.push_back(destinations[i].bytes);
  }
  PrefaultAhead prefault(ahead, PrefaultThreads());
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

// One LoadInto over storage allocated for the whole rank, rather than
// NextBatch's batch after batch: its prefault threads run ahead of every
// transfer, where NextBatch prepares only the next batch, and only on 4+
// cores (a first load of 1.1 GiB in a new process on 2 cores, own segment:
// 1.87 s by NextBatch, 1.29 s by LoadInto into fresh tensors).
Result<std::vector<NamedTensor>> ModelReaderImpl::LoadAll() {
  if (next_ != 0 || done_bytes_ != 0) {
    return FailedPrecondition("LoadAll reads the whole rank: it needs a reader nothing was read from yet");
  }
  std::vector<NamedTensor> out;
  if (!has_manifest_) {
    for (;;) {
      MC_ASSIGN_OR_RETURN(std::vector<NamedTensor> batch, NextBatch());
      if (batch.empty()) return out;
      for (NamedTensor& t : batch) out.push_back(std::move(t));
    }
  }
  std::vector<Tensor> stored(tensors_.size());
  std::vector<TensorDestination> destinations;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (Canonical(i) != i) continue;
    const ManifestTensor& t = tensors_[i];
    MC_ASSIGN_OR_RETURN(stored[i], Tensor::Allocate(t.dtype, t.shape));
    destinations.push_back({t.name, t.dtype, t.shape, MutableBytes(stored[i].data(), stored[i].nbytes())});
  }
  MC_RETURN_IF_ERROR(LoadInto(destinations).status());
  out.reserve(tensors_.size());
  for (size_t i = 0; i < tensors_.size(); ++i) out.push_back({tensors_[i].name, stored[Canonical(i)]});
  return out;
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
