// Saving a model: tensors per rank and files. The manifest part says
// "saving" before the first value and "complete" after the last
// (docs/model_layout.md).
#include <algorithm>
#include <array>
#include <chrono>
#include <ctime>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "connector/local_files_internal.h"
#include "core/hash_internal.h"
#include "core/parallel_internal.h"
#include "model/model_internal.h"
#include "model/model_memory_internal.h"
#include "model/save_staging_internal.h"
#include "mooncake_connector/model.h"
#include "mooncake_connector/value_format.h"

namespace mooncake_connector {


namespace {

// What a save reads back at once to check the values an earlier save left
// (StoredAsBefore): scratch memory, so less than a save's batch.
constexpr uint64_t kCheckBatchBytes = uint64_t{256} << 20;

std::string UtcNow() {
  std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

// A new save's id: random, never 0.
uint64_t NewSaveId() {
  std::random_device device;
  uint64_t id = (uint64_t{device()} << 32) ^ device() ^
                static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  return id == 0 ? 1 : id;
}

bool SameValue(const ManifestTensor& a, const ManifestTensor& b) {
  return a.alias_of.empty() && b.alias_of.empty() && a.dtype == b.dtype && a.shape == b.shape &&
         a.nbytes == b.nbytes && a.checksum == b.checksum;
}

bool SameValue(const ManifestFile& a, const ManifestFile& b) {
  return a.size == b.size && a.checksum == b.checksum;
}

// InvalidArgument unless rank, world size and layout fit together.
Status CheckSaveTarget(std::optional<int> rank, const SaveOptions& options) {
  if (rank && options.layout == ModelLayout::kCheckpoint && options.world_size != 1) {
    return InvalidArgument("a checkpoint-layout model is saved unsharded, as rank 0 of 1 (world_size " +
                           std::to_string(options.world_size) + " given)");
  }
  if (options.world_size < 1 || options.world_size > kMaxWorldSize) {
    return InvalidArgument("world_size " + std::to_string(options.world_size) + " is out of range (1 to " +
                           std::to_string(kMaxWorldSize) + ")");
  }
  if (rank && (*rank < 0 || *rank >= options.world_size)) {
    return InvalidArgument("rank " + std::to_string(*rank) + " is not below world_size " +
                           std::to_string(options.world_size));
  }
  return Status::Ok();
}

}  // namespace

Status CheckBoolBytes(const std::string& name, ConstBytes bytes) {
  if (std::any_of(bytes.begin(), bytes.end(), [](std::byte b) { return b > std::byte{1}; })) {
    return InvalidArgument("tensor '" + name + "' is BOOL but holds a byte that is neither 0 nor 1 "
                           "(no load could return it as saved)");
  }
  return Status::Ok();
}

Status CheckFileToSave(const std::string& path) {
  Status safe = CheckStoredFileName(path);
  if (!safe.ok()) return InvalidArgument("cannot save file '" + path + "': " + std::string(safe.message()));
  if (!IsValidUtf8(path)) return InvalidArgument("file name '" + path + "' is not valid UTF-8");
  return Status::Ok();
}

Status Model::SaveValues(std::optional<int> rank, std::vector<SaveItem>& items, const SaveOptions& options,
                         uint64_t save_id, SaveStaging* staging) {
  Store& store = connector_->store();
  const std::string prefix = rank ? TensorKey(*rank, "") : FileKey("");
  WriteOptions write = options.write;
  write.hard_pin |= options.pin;
  // What an earlier save (complete or interrupted) left: values with the
  // same checksum that are still stored are not written again.
  Result<std::optional<ManifestPart>> old = ReadManifest(rank);
  if (!old.ok() && old.status().code() != StatusCode::kDataLoss) return old.status();

  ManifestPart part;
  part.tool = ToolVersion();
  part.created = UtcNow();
  part.save_id = save_id;
  part.rank = rank;
  part.world_size = options.world_size;
  part.layout = options.layout;
  part.checksum_piece = SavedChecksumPiece(rank);
  const uint64_t piece = part.checksum_piece;
  MC_RETURN_IF_ERROR(CheckSaveTarget(rank, options));
  // Progress counts the tensors' (files') bytes, not their value headers.
  uint64_t total = 0;
  for (const SaveItem& it : items) total += it.alias ? 0 : it.data.size();

  // Tensors are hashed when needed: those an earlier save may
  // hold already before anything is written (an unchanged value is not
  // written again); the others batch by batch, each batch's on helper
  // threads while the store writes it (a store that records value checksums
  // asks for them once the bytes are in: PutRequest::value_xxh3_later).
  // Where the store records a checksum of the value (mooncake://: values
  // larger than a chunk) in the pieces of its chunk size after a head, and
  // the chunk is the checksum's piece (16 MiB both by default), the value's
  // checksum follows from the tensor's pieces' digests and its header's
  // (PutRequest::value_xxh3_head): one pass over the memory, the pieces on
  // several threads. Otherwise a tensor whose value has a checksum of the
  // store's is hashed twice in one pass over its memory, the second hash
  // reading each block from cache (another chunk size); the others in the
  // pieces of their checksum (a task each), so that one large tensor does
  // not hold the rest up.
  const uint64_t chunk = store.Features().chunk_bytes;
  auto from_pieces = [&](const SaveItem& it) {
    return store.RecordsValueChecksum(it.value_size()) && piece > 0 && chunk == piece;
  };
  auto value_head = [&](const SaveItem& it) {
    return from_pieces(it) ? uint64_t{it.header.size()} : PutRequest::kWholeValue;
  };
  auto hash = [&](std::span<const size_t> which, size_t threads) {
    std::vector<size_t> with_value;  // hashed in one pass with their value's checksum
    std::vector<size_t> in_pieces;   // the others, hashed by `pieces`
    Xxh3PieceTasks pieces(piece);
    for (size_t i : which) {
      SaveItem& it = items[i];
      if (it.hashed || it.alias) continue;
      it.hashed = true;
      if (store.RecordsValueChecksum(it.value_size()) && !from_pieces(it)) {
        with_value.push_back(i);
      } else {
        in_pieces.push_back(i);
        pieces.Add(it.data);
      }
    }
    ParallelFor(with_value.size() + pieces.tasks(), threads, [&](size_t n) {
      if (n >= with_value.size()) return pieces.Hash(n - with_value.size());
      SaveItem& it = items[with_value[n]];
      constexpr size_t kBlock = 256 << 10;
      Xxh3Stream data(piece), value;
      value.Update(it.header_bytes());
      for (size_t at = 0; at < it.data.size(); at += kBlock) {
        ConstBytes block = it.data.subspan(at, std::min(kBlock, it.data.size() - at));
        data.Update(block);
        value.Update(block);
      }
      it.tensor.checksum = data.Digest();
      it.value_xxh3 = value.Digest();
    });
    for (size_t k = 0; k < in_pieces.size(); ++k) {
      SaveItem& it = items[in_pieces[k]];
      it.tensor.checksum = pieces.Digest(k);
      if (!from_pieces(it)) continue;
      // The pieces value_head(it) says: the header, then the tensor's (none
      // for a value that is all header).
      std::vector<uint64_t> digests;
      if (!it.header.empty()) digests.push_back(Xxh3(it.header_bytes()));
      if (!it.data.empty()) digests.insert(digests.end(), pieces.Digests(k).begin(), pieces.Digests(k).end());
      it.value_xxh3 = Xxh3OfDigests(digests);
    }
  };

  // Tensors in device memory are read through `staging`, a group of items
  // at a time: `queue` starts copying a group's device tensors into a slot,
  // `take` waits for them and points the items' data at the copies,
  // `untake` points it back once the group is written (the slot is then
  // free for the group after next). Without staging these do nothing.
  std::array<std::vector<ConstBytes>, SaveStaging::kSlots> staged;
  auto on_device = [&](std::span<const size_t> which) {
    std::vector<size_t> out;
    for (size_t i : which) {
      if (items[i].on_device && !items[i].alias) out.push_back(i);
    }
    return out;
  };
  auto queue = [&](std::span<const size_t> which, size_t slot) -> Status {
    if (staging == nullptr) return Status::Ok();
    std::vector<ConstBytes> from;
    for (size_t i : on_device(which)) from.push_back(items[i].device);
    MC_ASSIGN_OR_RETURN(staged[slot], staging->Queue(slot, from));
    return Status::Ok();
  };
  auto take = [&](std::span<const size_t> which, size_t slot) -> Status {
    if (staging == nullptr) return Status::Ok();
    MC_RETURN_IF_ERROR(staging->Wait(slot));
    size_t k = 0;
    for (size_t i : on_device(which)) items[i].data = staged[slot][k++];
    return Status::Ok();
  };
  auto untake = [&](std::span<const size_t> which) {
    for (size_t i : which) {
      if (items[i].on_device) items[i].data = items[i].device;
    }
  };
  // `which` in groups of at most `limit` bytes of values (or one larger
  // value), in order, leaving out aliases.
  auto groups = [&](std::span<const size_t> which, uint64_t limit) {
    std::vector<std::vector<size_t>> out;
    uint64_t bytes = 0;
    for (size_t i : which) {
      if (items[i].alias) continue;
      if (out.empty() || (!out.back().empty() && bytes + items[i].value_size() > limit)) {
        out.emplace_back();
        bytes = 0;
      }
      out.back().push_back(i);
      bytes += items[i].value_size();
    }
    return out;
  };
  const uint64_t batch_limit = staging ? std::min(options.batch_bytes, kSaveStagingBytes) : options.batch_bytes;
  if (staging != nullptr) {
    uint64_t device_bytes = 0;
    for (const SaveItem& it : items) {
      if (it.on_device && !it.alias) device_bytes += it.device.size();
    }
    staging->Expect(std::min(batch_limit, device_bytes));
  }

  std::vector<size_t> candidates;
  std::vector<uint64_t> candidate_save_ids;  // the save that wrote each candidate's stored value
  // Values of an older format version have other headers: written again.
  // Nor are tensors whose checksums were taken in other pieces.
  if (old.ok() && old->has_value() && (*old)->format_version == kManifestFormatVersion &&
      (*old)->checksum_piece == piece) {
    const ManifestPart& was = **old;
    std::map<std::string_view, size_t> tensors, files;
    for (size_t i = 0; i < was.tensors.size(); ++i) tensors.emplace(was.tensors[i].name, i);
    for (size_t i = 0; i < was.files.size(); ++i) files.emplace(was.files[i].path, i);
    std::vector<size_t> known;  // stored before under this name, same dtype, shape and size
    for (size_t i = 0; rank && i < items.size(); ++i) {
      auto f = tensors.find(items[i].name);
      if (f == tensors.end()) continue;
      ManifestTensor t = items[i].tensor;
      t.checksum = was.tensors[f->second].checksum;
      if (SameValue(was.tensors[f->second], t)) known.push_back(i);
    }
    if (staging == nullptr) {
      hash(known, CopyThreads());
    } else {
      for (const std::vector<size_t>& group : groups(known, batch_limit)) {
        MC_RETURN_IF_ERROR(queue(group, 0));
        MC_RETURN_IF_ERROR(take(group, 0));
        hash(group, CopyThreads());
        untake(group);
      }
    }
    for (size_t i = 0; i < items.size(); ++i) {
      const SaveItem& it = items[i];
      if (it.alias) continue;
      if (rank) {
        auto f = tensors.find(it.name);
        if (f != tensors.end() && it.hashed && SameValue(was.tensors[f->second], it.tensor)) {
          candidates.push_back(i);
          candidate_save_ids.push_back(was.tensors[f->second].save_id);
        }
      } else {
        auto f = files.find(it.name);
        if (f != files.end() && SameValue(was.files[f->second], it.file)) {
          candidates.push_back(i);
          candidate_save_ids.push_back(0);
        }
      }
    }
  }
  std::vector<bool> done(items.size(), false);
  uint64_t done_bytes = 0;
  auto record = [&](size_t i) {
    done[i] = true;
    if (rank) {
      part.tensors.push_back(items[i].tensor);
    } else {
      part.files.push_back(items[i].file);
    }
    done_bytes += items[i].data.size();
  };
  if (!candidates.empty()) {
    // A value is kept only when it is read back as the earlier save wrote
    // it: one overwritten since (by another save, or a plain set) or damaged
    // is written again, so saving again repairs.
    std::vector<const SaveItem*> which;
    for (size_t i : candidates) which.push_back(&items[i]);
    // Read back into scratch memory: in batches of at most 256 MiB (128 MiB
    // from a device), not a save's 1 GiB.
    std::vector<bool> intact = StoredAsBefore(rank, which, candidate_save_ids,
                                              std::min(batch_limit, kCheckBatchBytes));
    for (size_t j = 0; j < candidates.size(); ++j) {
      if (!intact[j]) continue;
      if (rank) items[candidates[j]].tensor.save_id = candidate_save_ids[j];
      record(candidates[j]);
    }
  }
  MC_RETURN_IF_ERROR(WriteManifest(part, write));
  if (options.progress) options.progress(done_bytes, total);
  const uint64_t kept_bytes = done_bytes;
  uint64_t written_so_far = 0;  // of done_bytes - kept_bytes, added to options.written_bytes

  // Batches of at most batch_bytes (at least one value; from a device, at
  // most kSaveStagingBytes), one store call each.
  std::vector<size_t> to_write;
  for (size_t i = 0; i < items.size(); ++i) {
    if (!done[i]) to_write.push_back(i);
  }
  const std::vector<std::vector<size_t>> batches = groups(to_write, batch_limit);
  // Half the copy threads hash while the store writes (the transfer has
  // the others).
  const size_t hash_threads = std::max<size_t>(1, CopyThreads() / 2);
  if (!batches.empty()) MC_RETURN_IF_ERROR(queue(batches[0], 0));
  for (size_t b = 0; b < batches.size(); ++b) {
    const std::vector<size_t>& batch = batches[b];
    if (options.check_sources) MC_RETURN_IF_ERROR(options.check_sources());  // before hashing reads them
    // This batch's device tensors are in host memory from here; the next
    // batch's are copied while this one is written.
    MC_RETURN_IF_ERROR(take(batch, b % SaveStaging::kSlots));
    if (b + 1 < batches.size()) MC_RETURN_IF_ERROR(queue(batches[b + 1], (b + 1) % SaveStaging::kSlots));
    Background hashing;  // this batch's checksums, started once the requests are made
    std::vector<std::array<ConstBytes, 2>> parts;
    parts.reserve(batch.size());
    std::vector<PutRequest> requests;
    for (size_t i : batch) {
      const SaveItem& it = items[i];
      ConstBytes header = it.header_bytes();
      parts.push_back({header, it.data});
      std::span<const ConstBytes> p(parts.back());
      if (header.empty()) p = p.subspan(1);
      PutRequest request{it.key, p};
      request.value_xxh3_head = value_head(it);  // what `hash` computes (did, or will)
      if (it.hashed) {  // hashed before (an earlier save's candidate)
        request.value_xxh3 = it.value_xxh3;
      } else if (store.RecordsValueChecksum(it.value_size())) {
        request.value_xxh3_later = [&hashing, &it] {
          hashing.Wait();
          return *it.value_xxh3;
        };
      }
      requests.push_back(std::move(request));
    }
    hashing.Run([&] { hash(batch, hash_threads); });
    std::vector<Status> results = store.BatchPut(requests, write);
    hashing.Wait();
    untake(batch);
    std::optional<Status> failed;
    for (size_t j = 0; j < batch.size(); ++j) {
      if (results[j].ok()) {
        record(batch[j]);
      } else if (!failed) {
        failed = results[j].WithContext("saving " + std::string(rank ? "tensor '" : "file '") +
                                        items[batch[j]].name + "' of model '" + name_ +
                                        "' (the save can be resumed by running it again)");
      }
    }
    // Written after every batch, failed or not: values of this save are then
    // never in the store without a manifest that says the save is not
    // complete (the first one can have gone, e.g. with a master restart), so
    // no load takes what is there for a whole model. After the last batch
    // the complete manifest follows at once: the one from before that batch
    // says "saving" meanwhile, and a save cut short there writes that batch
    // again when run again.
    const bool last = !failed && b + 1 == batches.size();
    MC_RETURN_IF_ERROR(CheckStillOurs(part));
    Status manifest = last ? Status::Ok() : WriteManifest(part, write);
    if (options.written_bytes != nullptr) *options.written_bytes += done_bytes - kept_bytes - written_so_far;
    written_so_far = done_bytes - kept_bytes;
    if (failed) return *failed;
    MC_RETURN_IF_ERROR(manifest);
    if (options.progress) options.progress(done_bytes, total);
  }

  // A tensor sharing another's storage has its checksum.
  std::map<std::string_view, uint64_t> checksums;
  for (const SaveItem& it : items) {
    if (!it.alias) checksums.emplace(it.name, it.tensor.checksum);
  }
  for (SaveItem& it : items) {
    if (auto c = checksums.find(it.tensor.alias_of); it.alias && c != checksums.end()) it.tensor.checksum = c->second;
  }

  // Values this save does not have are stale: remove them, then publish.
  std::set<std::string_view> wanted;
  for (const SaveItem& it : items) {
    if (!it.alias) wanted.insert(it.key);
  }
  MC_ASSIGN_OR_RETURN(std::vector<std::string> stored, store.List(prefix));
  for (const std::string& key : stored) {
    if (wanted.count(key) != 0) continue;
    Status s = store.Remove(key);
    if (!s.ok() && s.code() != StatusCode::kNotFound) return s.WithContext("removing stale '" + key + "'");
  }
  part.tensors.clear();
  part.files.clear();
  for (const SaveItem& it : items) {
    if (rank) {
      part.tensors.push_back(it.tensor);
    } else {
      part.files.push_back(it.file);
    }
  }
  part.state = SaveState::kComplete;
  if (options.check_sources) MC_RETURN_IF_ERROR(options.check_sources());
  MC_RETURN_IF_ERROR(CheckStillOurs(part));
  MC_RETURN_IF_ERROR(WriteManifest(part, write));
  // Rank 0 of a save for fewer ranks than before removes the ranks the model
  // no longer has, so that it is complete (e.g. saved at TP 2, then at 1).
  return rank == 0 ? RemoveRanksFrom(options.world_size) : Status::Ok();
}


Status Model::SaveStateDict(int rank, std::span<const NamedTensorView> tensors,
                            const SaveOptions& options) {
  return SaveTensors(rank, tensors, options, nullptr);
}

Status Model::SaveTensors(int rank, std::span<const NamedTensorView> tensors, const SaveOptions& options,
                          SaveStaging* staging) {
  MC_ASSIGN_OR_RETURN(Connector::InUse in_use, Use());
  std::vector<SaveItem> items;
  items.reserve(tensors.size());
  std::set<std::string_view> names;
  // Tensors that share storage (same data, dtype and shape) are stored once.
  std::map<std::tuple<const std::byte*, uint64_t, DType, Shape>, size_t> by_storage;
  std::map<std::tuple<DType, Shape, uint64_t>, std::string> headers;
  const uint64_t save_id = NewSaveId();
  const std::map<std::string, std::string> metadata = ValueMetadata(rank, save_id);
  for (const NamedTensorView& t : tensors) {
    if (t.name.empty()) return InvalidArgument("a tensor has an empty name");
    if (!IsValidUtf8(t.name)) return InvalidArgument("tensor name '" + t.name + "' is not valid UTF-8");
    if (!names.insert(t.name).second) return InvalidArgument("tensor '" + t.name + "' is given twice");
    SaveItem it;
    it.name = t.name;
    it.key = TensorKey(rank, t.name);
    MC_RETURN_IF_ERROR(ValidateKey(it.key).WithContext("tensor '" + t.name + "'"));
    // Tensors of one dtype, shape and size share their header: encoded once.
    auto shape_key = std::make_tuple(t.tensor.dtype, t.tensor.shape, t.tensor.nbytes);
    auto header = headers.find(shape_key);
    if (header == headers.end()) {
      MC_ASSIGN_OR_RETURN(EncodedTensor encoded, EncodeTensor(t.tensor, metadata));
      header = headers.emplace(std::move(shape_key), std::move(encoded.header)).first;
    }
    it.header = header->second;
    it.data = t.tensor.bytes();
    if (t.on_device) {
      if (staging == nullptr) {
        return InvalidArgument("tensor '" + t.name + "' is in a CUDA device's memory: save it with "
                               "SaveStateDictCuda");
      }
      it.on_device = true;  // its BOOL bytes were checked by SaveStateDictCuda
      it.device = it.data;
    } else if (t.tensor.dtype == DType::kBool) {
      MC_RETURN_IF_ERROR(CheckBoolBytes(t.name, it.data));
    }
    it.tensor = ManifestTensor{t.name, t.tensor.dtype, t.tensor.shape, t.tensor.nbytes, 0, "", save_id};
    if (t.tensor.nbytes > 0) {
      auto [found, inserted] = by_storage.try_emplace(
          std::make_tuple(t.tensor.data, t.tensor.nbytes, t.tensor.dtype, t.tensor.shape), items.size());
      if (!inserted) {
        it.alias = true;
        it.tensor.alias_of = items[found->second].name;
        it.tensor.save_id = 0;
      }
    }
    items.push_back(std::move(it));
  }
  // Checksums are computed by SaveValues, batch by batch.
  return SaveValues(rank, items, options, save_id, staging);
}

Status Model::SaveFiles(std::span<const FileContent> files, const SaveOptions& options) {
  MC_ASSIGN_OR_RETURN(Connector::InUse in_use, Use());
  std::vector<SaveItem> items;
  std::set<std::string_view> paths;
  for (const FileContent& f : files) {
    MC_RETURN_IF_ERROR(CheckFileToSave(f.path));
    if (!paths.insert(f.path).second) return InvalidArgument("file '" + f.path + "' is given twice");
    SaveItem it;
    it.name = f.path;
    it.key = FileKey(f.path);
    MC_RETURN_IF_ERROR(ValidateKey(it.key).WithContext("file '" + f.path + "'"));
    it.data = f.bytes;
    it.file = ManifestFile{f.path, f.bytes.size(), Xxh3(f.bytes)};
    it.value_xxh3 = it.file.checksum;  // a file's value is its bytes
    it.hashed = true;
    items.push_back(std::move(it));
  }
  return SaveValues(std::nullopt, items, options, NewSaveId());
}

}  // namespace mooncake_connector
