// What is stored of a model (inspect, ls) and whether it is intact (verify;
// and, for a save, which values an earlier save left intact).
#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <tuple>

#include "core/hash_internal.h"
#include "model/model_internal.h"
#include "mooncake_connector/model.h"

namespace mooncake_connector {
namespace {

// "rank_3/..." -> 3; nullopt when `rest` does not start with a rank folder.
std::optional<int> RankFolder(std::string_view rest) {
  constexpr std::string_view kRank = "rank_";
  if (rest.substr(0, kRank.size()) != kRank) return std::nullopt;
  rest.remove_prefix(kRank.size());
  size_t digits = 0;
  int rank = 0;
  while (digits < rest.size() && digits < 6 && rest[digits] >= '0' && rest[digits] <= '9') {
    rank = rank * 10 + (rest[digits] - '0');
    ++digits;
  }
  if (digits == 0 || digits >= rest.size() || rest[digits] != '/') return std::nullopt;
  return rank;
}

// The model a key belongs to, by the first layout marker in it.
std::optional<std::string> ModelOfKey(std::string_view key) {
  size_t best = std::string_view::npos;
  for (std::string_view marker : {"/keys/rank_", "/files/", "/manifest/"}) {
    size_t at = key.find(marker);
    if (at != std::string_view::npos && at > 0 && at < best) best = at;
  }
  if (best == std::string_view::npos) return std::nullopt;
  return std::string(key.substr(0, best));
}

}  // namespace

bool ManifestPartOf(std::string_view model, std::string_view key, std::optional<int>* rank) {
  const std::string prefix = std::string(model) + "/manifest/";
  if (!key.starts_with(prefix)) return false;
  std::string_view rest = key.substr(prefix.size());
  if (rest == "files.json") {
    *rank = std::nullopt;
    return true;
  }
  if (rest.substr(0, 5) != "rank_" || rest.size() < 11 || rest.substr(rest.size() - 5) != ".json") return false;
  std::string_view digits = rest.substr(5, rest.size() - 10);
  if (digits.empty() || digits.size() > 6 || digits.find_first_not_of("0123456789") != std::string_view::npos) {
    return false;
  }
  int r = 0;
  for (char c : digits) r = r * 10 + (c - '0');
  *rank = r;
  return true;
}

std::string ShapeText(const Shape& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

Result<ModelInfo> Model::Inspect() {
  MC_ASSIGN_OR_RETURN(Connector::InUse in_use, Use());
  Store& store = connector_->store();
  ModelInfo info;
  info.name = name_;
  std::set<int> ranks;
  MC_ASSIGN_OR_RETURN(std::vector<std::string> manifest_keys, store.List(name_ + "/manifest/"));
  std::optional<int> world;
  std::optional<ModelLayout> saw_layout;
  bool layout_agrees = true;
  bool all_complete = true;
  for (const std::string& key : manifest_keys) {
    std::optional<int> rank;
    if (!ManifestPartOf(name_, key, &rank)) continue;
    Result<std::optional<ManifestPart>> part = ReadManifest(rank);
    if (!part.ok()) {
      info.problems.push_back(std::string(part.status().message()));
      all_complete = false;
      continue;
    }
    if (!part->has_value()) continue;  // removed meanwhile
    ManifestPart& p = **part;
    info.has_manifest = true;
    if (p.state != SaveState::kComplete) {
      all_complete = false;
      info.problems.push_back((rank ? "rank " + std::to_string(*rank) : std::string("the files")) +
                              ": save started " + p.created + " is not complete");
    }
    if (rank) {
      ranks.insert(*rank);
      if (world && *world != p.world_size) {
        info.problems.push_back("the ranks disagree on world_size");
        all_complete = false;
      }
      world = p.world_size;
      if (saw_layout && *saw_layout != p.layout) {
        info.problems.push_back("the ranks disagree on the layout");
        all_complete = false;
        layout_agrees = false;
      }
      saw_layout = p.layout;
      info.tensors += p.tensors.size();
    } else {
      info.files += p.files.size();
    }
    info.bytes += p.StoredBytes();
    if (info.created.empty() || p.created < info.created) info.created = p.created;
    info.tool = p.tool;
    info.parts.push_back(std::move(p));
  }
  MC_ASSIGN_OR_RETURN(std::vector<std::string> tensor_keys, store.List(name_ + "/keys/"));
  std::set<int> stored_ranks;
  for (const std::string& key : tensor_keys) {
    if (auto r = RankFolder(std::string_view(key).substr(name_.size() + 6))) stored_ranks.insert(*r);
  }
  ranks.insert(stored_ranks.begin(), stored_ranks.end());
  info.ranks.assign(ranks.begin(), ranks.end());
  if (layout_agrees) info.layout = saw_layout;
  info.world_size = world.value_or(static_cast<int>(ranks.empty() ? 0 : *ranks.rbegin() + 1));
  if (info.has_manifest) {
    for (int r = 0; r < info.world_size; ++r) {
      bool have = std::any_of(info.parts.begin(), info.parts.end(),
                              [&](const ManifestPart& p) { return p.rank == r; });
      if (!have) {
        info.problems.push_back("rank " + std::to_string(r) + " has no manifest");
        all_complete = false;
      }
    }
    info.complete = all_complete && world.has_value();
    if (!world) info.problems.push_back("no rank has a manifest");
  } else {
    if (!info.ranks.empty()) {
      MC_ASSIGN_OR_RETURN(std::vector<std::string> file_keys, store.List(name_ + "/files/"));
      info.files = file_keys.size();
      info.tensors = tensor_keys.size();
    }
    info.problems.push_back("no manifest (written by SGLang or by hand): loads by listing, unverified");
    // Only an engine writes rank folders without a manifest (SGLang's
    // save_model), and that is how such a model is loaded (SGLang's KV path).
    if (!info.ranks.empty()) info.layout = ModelLayout::kEngine;
  }
  if (info.ranks.empty() && info.parts.empty()) {
    return NotFound("no model '" + name_ + "' in " + store.url());
  }
  MC_RETURN_IF_ERROR(CountMissing(info));
  return info;
}

Status Model::CountMissing(ModelInfo& info) {
  // One batched existence check of every value the complete parts list.
  std::vector<std::string> keys;
  for (const ManifestPart& p : info.parts) {
    if (p.state != SaveState::kComplete) continue;
    for (const ManifestTensor& t : p.tensors) {
      if (t.alias_of.empty()) keys.push_back(TensorKey(*p.rank, t.name));
    }
    for (const ManifestFile& f : p.files) keys.push_back(FileKey(f.path));
  }
  if (keys.empty()) return Status::Ok();
  std::vector<std::string_view> views(keys.begin(), keys.end());
  std::vector<Result<bool>> exists = connector_->store().BatchExists(views);
  std::vector<std::string> gone;
  for (size_t i = 0; i < exists.size(); ++i) {
    if (!exists[i].ok()) return exists[i].status().WithContext("checking the values of model '" + name_ + "'");
    if (!*exists[i]) gone.push_back(keys[i]);
  }
  info.listed = keys.size();
  info.missing = gone.size();
  if (gone.empty()) return Status::Ok();
  info.complete = false;
  std::string names;
  for (size_t i = 0; i < gone.size() && i < 4; ++i) names += (i ? ", '" : "'") + gone[i] + "'";
  if (gone.size() > 4) names += ", ...";
  info.problems.push_back("damaged: " + std::to_string(gone.size()) + " of its " + std::to_string(keys.size()) +
                          " values are gone from the store (" + names +
                          "): evicted (saved unpinned?) or removed; save it again");
  return Status::Ok();
}

Result<VerifyReport> Model::Verify(const ProgressFn& progress) {
  MC_ASSIGN_OR_RETURN(Connector::InUse in_use, Use());
  MC_ASSIGN_OR_RETURN(ModelInfo info, Inspect());
  if (!info.has_manifest) {
    return FailedPrecondition("model '" + name_ + "' has no manifest: nothing to verify against");
  }
  VerifyReport report;
  report.problems = info.problems;
  uint64_t done = 0;
  for (const ManifestPart& part : info.parts) {
    if (part.rank) {
      LoadOptions options;
      options.verify = true;
      if (progress) {
        options.progress = [&, base = done](uint64_t d, uint64_t) { progress(base + d, info.bytes); };
      }
      // A part that is not complete is reported above; its tensors are not.
      if (part.state != SaveState::kComplete) continue;
      MC_ASSIGN_OR_RETURN(std::unique_ptr<ModelReader> reader, OpenReader(*part.rank, options));
      MC_ASSIGN_OR_RETURN(std::vector<std::string> problems, reader->Check());
      report.problems.insert(report.problems.end(), problems.begin(), problems.end());
      report.tensors += part.tensors.size();
      report.bytes += reader->total_bytes();
      done += reader->total_bytes();
      continue;
    }
    for (const ManifestFile& f : part.files) {
      Result<Buffer> got = ReadCheckedFile(f);
      if (got.status().code() == StatusCode::kDataLoss) {
        report.problems.push_back(std::string(got.status().message()));
      } else if (!got.ok()) {
        return got.status();
      }
      ++report.files;
      report.bytes += f.size;
      done += f.size;
      if (progress) progress(done, info.bytes);
    }
  }
  return report;
}

Result<std::vector<ModelInfo>> ListModels(Connector& connector) {
  MC_ASSIGN_OR_RETURN(Connector::InUse in_use, connector.Use("the connector"));
  // The URL's path names a model or a folder of models, by whole segments:
  // "team" lists team and team/..., never teamwork.
  std::string prefix = connector.model_name();
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  MC_ASSIGN_OR_RETURN(std::vector<std::string> keys, connector.store().List(prefix));
  std::set<std::string> names;
  for (const std::string& key : keys) {
    std::optional<std::string> m = ModelOfKey(key);
    if (m && (prefix.empty() || *m == prefix || m->starts_with(prefix + "/"))) names.insert(*m);
  }
  std::vector<ModelInfo> out;
  for (const std::string& name : names) {
    Model model(&connector, name);
    Result<ModelInfo> info = model.Inspect();
    if (info.status().code() == StatusCode::kNotFound) continue;  // only stray keys, or removed meanwhile
    MC_RETURN_IF_ERROR(info.status());
    out.push_back(std::move(*info));
  }
  return out;
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
      requests[j].data_xxh3_piece = SavedChecksumPiece(rank);  // candidates' checksums are this save's
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

}  // namespace mooncake_connector
