// Saving a model: tensors per rank, files, a Hugging Face directory; and
// removing one. The manifest part says "saving" before the first value and
// "complete" after the last (docs/model_layout.md).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <tuple>

#include <nlohmann/json.hpp>

#include "connector/local_files_internal.h"
#include "core/hash_internal.h"
#include "core/parallel_internal.h"
#include "model/model_internal.h"
#include "model/model_memory_internal.h"
#include "mooncake_connector/model.h"
#include "mooncake_connector/value_format.h"

namespace mooncake_connector {

struct Model::SaveItem {
  std::string name;  // tensor name or file path
  std::string key;
  std::string header;  // the value's header (tensors), empty for files
  ConstBytes data;
  ManifestTensor tensor;  // for tensors
  ManifestFile file;      // for files
  bool alias = false;
  std::optional<uint64_t> value_xxh3;  // of header + data, for the store
  bool hashed = false;                 // checksum (and value_xxh3) set
  uint64_t value_size() const { return header.size() + data.size(); }
};

namespace {

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

// A read-only mapping of a whole file.
class MappedFile {
 public:
  static Result<std::unique_ptr<MappedFile>> Open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NotFound("cannot open '" + path + "': " + std::strerror(errno));
    struct stat st{};
    if (::fstat(fd, &st) != 0) {
      int e = errno;
      ::close(fd);
      return Internal("cannot stat '" + path + "': " + std::strerror(e));
    }
    auto f = std::unique_ptr<MappedFile>(new MappedFile());
    f->size_ = static_cast<size_t>(st.st_size);
    if (f->size_ > 0) {
      void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        int e = errno;
        ::close(fd);
        return ResourceExhausted("cannot map '" + path + "': " + std::strerror(e));
      }
      f->data_ = static_cast<std::byte*>(p);
    }
    f->fd_ = fd;  // kept to notice a change of the file while it is saved
    f->mtime_ = st.st_mtim;
    return f;
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(data_, size_);
    if (fd_ >= 0) ::close(fd_);
  }
  ConstBytes bytes() const { return {data_, size_}; }

  // InvalidArgument naming `name` when the file was truncated or rewritten
  // since it was mapped: its bytes are no longer the ones being saved (and
  // pages past a new end cannot be read at all).
  Status Unchanged(const std::string& name) const {
    struct stat st{};
    if (::fstat(fd_, &st) != 0) return Internal("cannot stat '" + name + "': " + std::strerror(errno));
    if (static_cast<size_t>(st.st_size) == size_ && st.st_mtim.tv_sec == mtime_.tv_sec &&
        st.st_mtim.tv_nsec == mtime_.tv_nsec) {
      return Status::Ok();
    }
    return InvalidArgument("'" + name + "' changed while it was being saved (" + std::to_string(st.st_size) +
                           " bytes now, " + std::to_string(size_) + " when the save began): the save stops "
                           "unfinished; save again once the folder is stable");
  }

 private:
  MappedFile() = default;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
  int fd_ = -1;
  struct timespec mtime_{};
};

// A caller's file name: relative, safe, UTF-8 (the manifest is JSON).
Status CheckFileToSave(const std::string& path) {
  Status safe = CheckStoredFileName(path);
  if (!safe.ok()) return InvalidArgument("cannot save file '" + path + "': " + std::string(safe.message()));
  if (!IsValidUtf8(path)) return InvalidArgument("file name '" + path + "' is not valid UTF-8");
  return Status::Ok();
}

bool IsOtherWeightFormat(const std::string& name) {
  for (const char* ext : {".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx"}) {
    size_t n = std::strlen(ext);
    if (name.size() >= n && name.compare(name.size() - n, n, ext) == 0) return true;
  }
  return false;
}

// Where a link in a saved folder may point: inside the folder, and for a
// Hugging Face cache snapshot (REPO/snapshots/REV, whose files are relative
// links into REPO/blobs) inside that repository's blobs.
Result<std::vector<std::filesystem::path>> LinkAreas(const std::filesystem::path& top) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path root = fs::canonical(top, ec);
  if (ec) return NotFound("cannot resolve '" + top.string() + "': " + ec.message());
  std::vector<fs::path> areas = {root};
  if (root.parent_path().filename() == "snapshots") areas.push_back(root.parent_path().parent_path() / "blobs");
  return areas;
}

bool IsWithin(const std::filesystem::path& path, const std::filesystem::path& area) {
  std::filesystem::path rel = path.lexically_relative(area);
  return !rel.empty() && *rel.begin() != "..";
}

// A link met while saving a folder: it must resolve, must not lead back into
// a folder it sits in (a loop), and must stay inside the folder (or the
// cache's blobs) unless `anywhere`, so that saving a folder never uploads a
// file the folder only points at by accident (a key, a home directory).
Status CheckLink(const std::filesystem::path& link, const std::string& rel,
                 const std::vector<std::filesystem::path>& areas, bool anywhere) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path target = fs::canonical(link, ec);
  if (ec) return NotFound("'" + rel + "' is a link that does not resolve: " + ec.message());
  fs::path parent = fs::canonical(link.parent_path(), ec);
  if (!ec && fs::is_directory(target, ec) && (parent == target || IsWithin(parent, target))) {
    return InvalidArgument("'" + rel + "' links to '" + target.string() + "', a folder it is inside (a loop)");
  }
  if (anywhere) return Status::Ok();
  for (const fs::path& area : areas) {
    if (target == area || IsWithin(target, area)) return Status::Ok();
  }
  return InvalidArgument("'" + rel + "' links to '" + target.string() + "', outside the folder '" +
                         areas.front().string() +
                         "': copy it in, or allow links outside the folder (--follow-links-outside)");
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

Result<Model> Model::Open(Connector& connector) {
  std::string name = connector.model_name();
  while (!name.empty() && name.back() == '/') name.pop_back();
  if (name.empty()) {
    return InvalidArgument("the URL names no model: give one as its path, e.g. mooncake:///org/model");
  }
  // A model's keys are MODEL/keys/rank_N/..., MODEL/files/... and
  // MODEL/manifest/...: a name with one of those segments would read as
  // another model's keys (and that model's rm or re-save would take them).
  for (size_t at = 0; at <= name.size();) {
    size_t end = std::min(name.find('/', at), name.size());
    std::string_view segment = std::string_view(name).substr(at, end - at);
    at = end + 1;
    for (std::string_view reserved : {"keys", "files", "manifest"}) {
      if (segment == reserved) {
        return InvalidArgument("model name '" + name + "' has a segment '" + std::string(reserved) +
                               "', which the key layout reserves (MODEL/keys/rank_N/, MODEL/files/, "
                               "MODEL/manifest/): choose another name");
      }
    }
  }
  return Model(&connector, std::move(name));
}

Model::Model(Connector* c, std::string name)
    : connector_(c), name_(std::move(name)), memory_(std::make_shared<ModelMemory>()) {}

Result<Connector::InUse> Model::Use() const {
  return connector_->Use("the connector of model '" + name_ + "'");
}

std::string Model::TensorKey(int rank, std::string_view param) const {
  return name_ + "/keys/rank_" + std::to_string(rank) + "/" + std::string(param);
}

std::string Model::FileKey(std::string_view path) const { return name_ + "/files/" + std::string(path); }

std::string Model::ManifestKey(std::optional<int> rank) const {
  return name_ + (rank ? "/manifest/rank_" + std::to_string(*rank) + ".json" : "/manifest/files.json");
}

Result<std::optional<ManifestPart>> Model::ReadManifest(std::optional<int> rank) {
  MC_ASSIGN_OR_RETURN(Connector::InUse in_use, Use());
  std::string key = ManifestKey(rank);
  Result<Buffer> got = connector_->store().Get(key);
  if (got.status().code() == StatusCode::kNotFound) return std::optional<ManifestPart>();
  if (!got.ok()) return got.status().WithContext("reading the manifest '" + key + "'");
  std::string_view text(reinterpret_cast<const char*>(got->data()), got->size());
  // A complete part read before in exactly this text (every load of a model
  // reads its manifest; parsing one of thousands of tensors costs more than
  // comparing the bytes).
  if (std::shared_ptr<const ManifestPart> seen = memory_->RecalledManifest(key, text)) {
    return std::optional<ManifestPart>(*seen);
  }
  Result<ManifestPart> part = ParseManifest(text);
  if (!part.ok()) return part.status().WithContext("'" + key + "'");
  if (part->rank != rank) return DataLoss("'" + key + "' is the manifest of another part");
  if (part->state == SaveState::kComplete) memory_->RememberManifest(key, *part, std::string(text));
  return std::optional<ManifestPart>(std::move(*part));
}

std::map<std::string, std::string> Model::ValueMetadata(int rank, uint64_t save_id) const {
  std::map<std::string, std::string> metadata = {{kManifestMarker, ManifestKey(rank)}};
  if (save_id != 0) metadata.emplace(kSaveMarker, Hex64(save_id));
  return metadata;
}

Result<std::string> ValueHeader(const Model& model, int rank, const ManifestTensor& t, int format_version) {
  std::map<std::string, std::string> metadata;
  if (format_version >= 2) metadata = model.ValueMetadata(rank, t.save_id);
  MC_ASSIGN_OR_RETURN(EncodedTensor encoded, EncodeTensor(TensorView{t.dtype, t.shape, nullptr, t.nbytes}, metadata));
  return std::move(encoded.header);
}

Status Model::WriteManifest(const ManifestPart& part, const WriteOptions& write) {
  std::string text = EncodeManifest(part);
  ConstBytes bytes(reinterpret_cast<const std::byte*>(text.data()), text.size());
  const std::string key = ManifestKey(part.rank);
  memory_->ForgetManifests(key);  // a new save supersedes what was seen
  // Always hard-pinned (a few hundred bytes): a model saved unpinned may
  // lose values to eviction, but never its manifest, so it shows as damaged
  // rather than vanishing.
  WriteOptions pinned = write;
  pinned.hard_pin = true;
  MC_RETURN_IF_ERROR(connector_->store().Put(key, bytes, pinned).WithContext("writing the manifest"));
  if (part.state == SaveState::kComplete) memory_->RememberManifest(key, part, std::move(text));
  return Status::Ok();
}

Status Model::SaveValues(std::optional<int> rank, std::vector<SaveItem>& items, const SaveOptions& options,
                         uint64_t save_id) {
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
  // Progress counts the tensors' (files') bytes, not their value headers.
  uint64_t total = 0;
  for (const SaveItem& it : items) total += it.alias ? 0 : it.data.size();

  // A tensor's checksum (the manifest's) and its value's (the store's,
  // header included) in one pass over its memory, the second hash reading
  // each block from cache; the value's only where the store records one
  // (mooncake://: values larger than a chunk), elsewhere it would be a
  // second pass for nothing. Tensors are hashed when needed: those an
  // earlier save may hold already before anything is written (an unchanged
  // value is not written again); the others batch by batch, each batch's
  // on a helper thread while the batch before it is written.
  auto hash = [&](std::span<const size_t> which, size_t threads) {
    ParallelFor(which.size(), threads, [&](size_t k) {
      SaveItem& it = items[which[k]];
      if (it.hashed || it.alias) return;
      it.hashed = true;
      if (!store.RecordsValueChecksum(it.value_size())) {
        it.tensor.checksum = Xxh3(it.data);
        return;
      }
      constexpr size_t kBlock = 256 << 10;
      Xxh3Stream data, value;
      value.Update(ConstBytes(reinterpret_cast<const std::byte*>(it.header.data()), it.header.size()));
      for (size_t at = 0; at < it.data.size(); at += kBlock) {
        ConstBytes block = it.data.subspan(at, std::min(kBlock, it.data.size() - at));
        data.Update(block);
        value.Update(block);
      }
      it.tensor.checksum = data.Digest();
      it.value_xxh3 = value.Digest();
    });
  };

  std::vector<size_t> candidates;
  std::vector<uint64_t> candidate_save_ids;  // the save that wrote each candidate's stored value
  // Values of an older format version have other headers: written again.
  if (old.ok() && old->has_value() && (*old)->format_version == kManifestFormatVersion) {
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
    hash(known, CopyThreads());
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
    std::vector<bool> intact = StoredAsBefore(rank, which, candidate_save_ids, options.batch_bytes);
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

  // Batches of at most batch_bytes (at least one value), one store call each.
  std::vector<std::vector<size_t>> batches;
  {
    uint64_t bytes = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      if (done[i] || items[i].alias) continue;
      if (batches.empty() || (!batches.back().empty() && bytes + items[i].value_size() > options.batch_bytes)) {
        batches.emplace_back();
        bytes = 0;
      }
      batches.back().push_back(i);
      bytes += items[i].value_size();
    }
  }
  if (options.check_sources) MC_RETURN_IF_ERROR(options.check_sources());  // before hashing reads them
  if (!batches.empty()) hash(batches[0], CopyThreads());
  Background hashing;  // the next batch's checksums (one thread: the transfer has the other cores)
  for (size_t b = 0; b < batches.size(); ++b) {
    const std::vector<size_t>& batch = batches[b];
    hashing.Wait();
    if (options.check_sources) MC_RETURN_IF_ERROR(options.check_sources());
    if (b + 1 < batches.size()) hashing.Run([&, b] { hash(batches[b + 1], 1); });
    std::vector<std::array<ConstBytes, 2>> parts;
    parts.reserve(batch.size());
    std::vector<PutRequest> requests;
    for (size_t i : batch) {
      const SaveItem& it = items[i];
      ConstBytes header(reinterpret_cast<const std::byte*>(it.header.data()), it.header.size());
      parts.push_back({header, it.data});
      std::span<const ConstBytes> p(parts.back());
      if (header.empty()) p = p.subspan(1);
      requests.push_back(PutRequest{it.key, p, it.value_xxh3});
    }
    std::vector<Status> results = store.BatchPut(requests, write);
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

  hashing.Wait();
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

Status Model::RemoveRanksFrom(int world_size) {
  Store& store = connector_->store();
  MC_ASSIGN_OR_RETURN(std::vector<std::string> parts, store.List(name_ + "/manifest/"));
  for (const std::string& key : parts) {
    std::optional<int> rank;
    if (!ManifestPartOf(name_, key, &rank) || !rank || *rank < world_size) continue;
    MC_ASSIGN_OR_RETURN(std::vector<std::string> keys, store.List(TensorKey(*rank, "")));
    keys.push_back(key);  // the part goes last
    for (const std::string& k : keys) {
      Status s = store.Remove(k);
      if (!s.ok() && s.code() != StatusCode::kNotFound) {
        return s.WithContext("removing rank " + std::to_string(*rank) + " of model '" + name_ + "', saved now for " +
                             std::to_string(world_size) + " rank(s)");
      }
    }
  }
  return Status::Ok();
}

Status Model::CheckStillOurs(const ManifestPart& part) {
  Result<std::optional<ManifestPart>> now = ReadManifest(part.rank);
  // Gone (a master restart) or unreadable: this save writes it again.
  if (!now.ok() || !now->has_value() || (*now)->save_id == part.save_id) return Status::Ok();
  return Aborted("another save of model '" + name_ + "' " +
                 (part.rank ? "rank " + std::to_string(*part.rank) : std::string("(its files)")) + ", started " +
                 (*now)->created + ", began while this one ran (two saves at once): this one stops without "
                 "publishing, so that the model holds one save's values; the other's stands once it "
                 "finishes. Save again to store this one's.");
}

std::vector<bool> Model::StoredAsBefore(std::optional<int> rank, std::span<const SaveItem* const> items,
                                        std::span<const uint64_t> was_save_ids, uint64_t batch_bytes) {
  std::vector<bool> intact(items.size(), false);
  // Values of one shape written by one save share their header: encoded once.
  std::map<std::tuple<DType, Shape, uint64_t, uint64_t>, std::string> headers;
  for (size_t from = 0; from < items.size();) {
    size_t to = from;
    uint64_t bytes = 0;
    while (to < items.size() && (to == from || bytes + items[to]->data.size() <= batch_bytes)) {
      bytes += items[to++]->data.size();
    }
    std::unique_ptr<std::byte[]> scratch(new std::byte[std::max<uint64_t>(bytes, 1)]);
    std::vector<std::string> expected(to - from), heads(to - from);
    std::vector<uint64_t> hashes(to - from, 0);
    std::vector<GetIntoRequest> requests(to - from);
    uint64_t at = 0;
    for (size_t k = from; k < to; ++k) {
      const SaveItem& it = *items[k];
      const size_t j = k - from;
      if (rank) {
        ManifestTensor was = it.tensor;
        was.save_id = was_save_ids[k];
        auto [header, fresh] = headers.try_emplace({was.dtype, was.shape, was.nbytes, was.save_id});
        if (fresh) {
          Result<std::string> encoded = ValueHeader(*this, *rank, was, kManifestFormatVersion);
          if (encoded.ok()) header->second = std::move(*encoded);  // else "": never intact, written again
        }
        expected[j] = header->second;
      }
      heads[j].assign(expected[j].size(), '\0');
      requests[j] = GetIntoRequest{it.key, MutableBytes(scratch.get() + at, it.data.size()),
                                   MutableBytes(reinterpret_cast<std::byte*>(heads[j].data()), heads[j].size()),
                                   &hashes[j], /*exact=*/true};
      at += it.data.size();
    }
    std::vector<Result<uint64_t>> got = connector_->store().BatchGetInto(requests);
    for (size_t k = from; k < to; ++k) {
      const size_t j = k - from;
      const uint64_t checksum = rank ? items[k]->tensor.checksum : items[k]->file.checksum;
      intact[k] = got[j].ok() && *got[j] == expected[j].size() + items[k]->data.size() && heads[j] == expected[j] &&
                  hashes[j] == checksum;
    }
    from = to;
  }
  return intact;
}

Status Model::SaveStateDict(int rank, std::span<const NamedTensorView> tensors,
                            const SaveOptions& options) {
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
    if (t.tensor.dtype == DType::kBool &&
        std::any_of(it.data.begin(), it.data.end(), [](std::byte b) { return b > std::byte{1}; })) {
      return InvalidArgument("tensor '" + t.name + "' is BOOL but holds a byte that is neither 0 nor 1 "
                             "(no load could return it as saved)");
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
  return SaveValues(rank, items, options, save_id);
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

Status Model::SaveDirectory(const std::string& dir, const SaveOptions& options) {
  MC_ASSIGN_OR_RETURN(Connector::InUse in_use, Use());
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return NotFound("'" + dir + "' is not a directory");
  std::vector<std::string> shards, others;
  fs::path top = fs::path(dir).lexically_normal();
  if (!top.has_filename() && top.has_parent_path() && top != top.root_path()) top = top.parent_path();  // "dir/"
  MC_ASSIGN_OR_RETURN(std::vector<fs::path> link_areas, LinkAreas(top));
  for (auto it = fs::recursive_directory_iterator(top, fs::directory_options::follow_directory_symlink, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    // The name as the user sees it in the folder, never the link's target.
    std::string rel = it->path().lexically_relative(top).generic_string();
    std::string base = it->path().filename().string();
    if (!base.empty() && base[0] == '.') {  // hidden files and folders (.git, .cache)
      if (it->is_directory()) it.disable_recursion_pending();
      continue;
    }
    if (it->is_symlink()) {
      MC_RETURN_IF_ERROR(CheckLink(it->path(), rel, link_areas, options.links_outside));
    }
    if (!it->is_regular_file()) continue;
    if (EndsWith(base, ".safetensors")) {
      shards.push_back(rel);
    } else if (!IsOtherWeightFormat(base)) {
      others.push_back(rel);
    }
  }
  if (ec) return Internal("listing '" + dir + "': " + ec.message());
  if (shards.empty()) return InvalidArgument("'" + dir + "' has no *.safetensors weights");
  // Every name is checked before anything is written.
  for (const std::string& rel : others) MC_RETURN_IF_ERROR(CheckFileToSave(rel));
  std::sort(shards.begin(), shards.end());
  std::sort(others.begin(), others.end());

  std::vector<std::unique_ptr<MappedFile>> mapped;
  std::vector<NamedTensorView> tensors;
  std::map<std::string, std::string> shard_of;
  for (const std::string& rel : shards) {
    MC_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> f, MappedFile::Open(dir + "/" + rel));
    Result<std::vector<NamedTensorLayout>> layout = ParseSafetensors(f->bytes());
    if (!layout.ok()) return layout.status().WithContext("shard '" + rel + "'");
    for (NamedTensorLayout& e : *layout) {
      ConstBytes data = f->bytes().subspan(e.layout.data_begin, e.layout.data_end - e.layout.data_begin);
      MC_ASSIGN_OR_RETURN(TensorView view, MakeTensorView(e.layout.dtype, e.layout.shape, data));
      if (!shard_of.emplace(e.name, rel).second) {
        return InvalidArgument("tensor '" + e.name + "' is in both '" + shard_of[e.name] + "' and '" + rel + "'");
      }
      tensors.push_back({e.name, view});
    }
    mapped.push_back(std::move(f));
  }
  // Safetensors orders a file's tensors by name; keep that order overall.
  std::stable_sort(tensors.begin(), tensors.end(),
                   [](const NamedTensorView& a, const NamedTensorView& b) { return a.name < b.name; });
  std::vector<std::unique_ptr<MappedFile>> file_maps;
  std::vector<FileContent> files;
  for (const std::string& rel : others) {
    MC_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> f, MappedFile::Open(dir + "/" + rel));
    if (EndsWith(rel, "model.safetensors.index.json")) {
      MC_RETURN_IF_ERROR(CheckShardIndex(f->bytes(), shard_of, rel));
    }
    files.push_back({rel, f->bytes()});
    file_maps.push_back(std::move(f));
  }
  uint64_t tensor_bytes = 0;
  for (const NamedTensorView& t : tensors) tensor_bytes += t.tensor.nbytes;
  SaveOptions tensor_options = options;
  SaveOptions file_options = options;
  if (options.progress) {
    // One progress over both parts.
    uint64_t file_bytes = 0;
    for (const FileContent& f : files) file_bytes += f.bytes.size();
    tensor_options.progress = [&, file_bytes](uint64_t done, uint64_t total) {
      options.progress(done, total + file_bytes);
    };
    file_options.progress = [&, tensor_bytes](uint64_t done, uint64_t total) {
      options.progress(tensor_bytes + done, tensor_bytes + total);
    };
  }
  tensor_options.world_size = 1;
  tensor_options.layout = ModelLayout::kCheckpoint;  // the checkpoint's own names, unsharded
  file_options.world_size = 1;
  // A shard truncated or rewritten under the save stops it at the next
  // batch with its name, instead of transfers failing on pages past its end.
  auto unchanged = [&, caller = options.check_sources]() -> Status {
    for (size_t i = 0; i < mapped.size(); ++i) MC_RETURN_IF_ERROR(mapped[i]->Unchanged(shards[i]));
    for (size_t i = 0; i < file_maps.size(); ++i) MC_RETURN_IF_ERROR(file_maps[i]->Unchanged(others[i]));
    return caller ? caller() : Status::Ok();
  };
  tensor_options.check_sources = unchanged;
  file_options.check_sources = unchanged;
  MC_RETURN_IF_ERROR(SaveStateDict(0, tensors, tensor_options));
  return SaveFiles(files, file_options);
}

Result<uint64_t> Model::Remove() {
  MC_ASSIGN_OR_RETURN(Connector::InUse in_use, Use());
  Store& store = connector_->store();
  uint64_t removed = 0;
  memory_->ForgetManifests(name_ + "/manifest/");
  // First every manifest part is marked not complete: the model stops
  // looking complete before its values go, yet keeps a manifest, so a load
  // meanwhile (or after a remove that fails half-way) is refused instead of
  // listing what is left and returning a shorter model. The manifest goes
  // last.
  MC_ASSIGN_OR_RETURN(std::vector<std::string> parts, store.List(name_ + "/manifest/"));
  for (const std::string& key : parts) {
    std::optional<int> rank;
    if (!ManifestPartOf(name_, key, &rank)) continue;
    Result<std::optional<ManifestPart>> part = ReadManifest(rank);
    if (!part.ok() || !part->has_value() || (*part)->state != SaveState::kComplete) continue;
    (*part)->state = SaveState::kSaving;
    MC_RETURN_IF_ERROR(WriteManifest(**part, WriteOptions{}).WithContext("marking model '" + name_ +
                                                                         "' as being removed"));
  }
  memory_->ForgetManifests(name_ + "/manifest/");
  for (const char* part : {"/keys/", "/files/", "/manifest/"}) {
    MC_ASSIGN_OR_RETURN(std::vector<std::string> keys, store.List(name_ + part));
    for (const std::string& key : keys) {
      Status s = store.Remove(key);
      if (s.ok()) {
        ++removed;
      } else if (s.code() != StatusCode::kNotFound) {
        return s.WithContext("removing '" + key + "' of model '" + name_ + "'");
      }
    }
  }
  if (removed == 0) return NotFound("no model '" + name_ + "' in " + store.url());
  return removed;
}

Status CheckShardIndex(ConstBytes index, const std::map<std::string, std::string>& shard_of,
                       const std::string& where) {
  using nlohmann::json;
  json j = json::parse(index.begin(), index.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
    return InvalidArgument("'" + where + "' has no weight_map object");
  }
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (shard_of.count(it.key()) == 0) {
      return InvalidArgument("'" + where + "' names tensor '" + it.key() + "', which no shard holds");
    }
  }
  if (j["weight_map"].size() != shard_of.size()) {
    return InvalidArgument("the shards hold " + std::to_string(shard_of.size()) + " tensors but '" + where +
                           "' names " + std::to_string(j["weight_map"].size()));
  }
  return Status::Ok();
}

}  // namespace mooncake_connector
