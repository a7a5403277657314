// A model's keys, its manifest parts, and removing it (docs/model_layout.md).
#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/model_internal.h"
#include "model/model_memory_internal.h"
#include "mooncake_connector/model.h"
#include "mooncake_connector/value_format.h"

namespace mooncake_connector {

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

}  // namespace mooncake_connector
