// The manifest's JSON form (docs/model_layout.md). The parser is strict: a
// manifest comes from the store, so it is untrusted bytes (fuzzed by
// fuzz/manifest_fuzz.cc).
#include <cinttypes>
#include <cstdio>
#include <set>

#include <nlohmann/json.hpp>

#include "connector/local_files_internal.h"
#include "model/model_internal.h"
#include "mooncake_connector/model.h"
#include "mooncake_connector/value_format.h"

namespace mooncake_connector {
namespace {

using nlohmann::json;

// Larger manifests are not written by any tool (a million tensors is ~200 MB).
constexpr size_t kMaxManifestBytes = size_t{256} << 20;
// root -> "tensors" -> entry -> "shape" -> dimension.
constexpr int kMaxJsonDepth = 4;
// The pieces of tensors' checksums a manifest may name (version 4).
constexpr uint64_t kMinChecksumPiece = uint64_t{64} << 10;
constexpr uint64_t kMaxChecksumPiece = uint64_t{1} << 32;

Status Bad(const std::string& why) { return DataLoss("invalid model manifest: " + why); }

Result<uint64_t> ParseHex64(const json& j, const std::string& what) {
  if (!j.is_string() || j.get_ref<const std::string&>().size() != 16) {
    return Bad(what + " is not 16 hex digits");
  }
  uint64_t v = 0;
  for (char c : j.get_ref<const std::string&>()) {
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (d < 0) return Bad(what + " is not 16 lowercase hex digits");
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  return v;
}

Result<const json*> Member(const json& object, const char* name, const std::string& where) {
  auto it = object.find(name);
  if (it == object.end()) return Bad(where + " lacks \"" + name + "\"");
  return &*it;
}

Result<uint64_t> Unsigned(const json& object, const char* name, const std::string& where) {
  MC_ASSIGN_OR_RETURN(const json* j, Member(object, name, where));
  if (!j->is_number_unsigned()) return Bad(where + ": \"" + name + "\" is not a non-negative integer");
  return j->get<uint64_t>();
}

Result<std::string> Text(const json& object, const char* name, const std::string& where) {
  MC_ASSIGN_OR_RETURN(const json* j, Member(object, name, where));
  if (!j->is_string()) return Bad(where + ": \"" + name + "\" is not a string");
  return j->get<std::string>();
}

Result<ManifestTensor> ParseTensor(const json& j, size_t index, bool with_save) {
  std::string where = "tensor #" + std::to_string(index);
  if (!j.is_object()) return Bad(where + " is not an object");
  ManifestTensor t;
  MC_ASSIGN_OR_RETURN(t.name, Text(j, "name", where));
  if (t.name.empty()) return Bad(where + " has an empty name");
  where = "tensor '" + t.name + "'";
  MC_ASSIGN_OR_RETURN(std::string dtype, Text(j, "dtype", where));
  Result<DType> parsed = ParseDType(dtype);
  if (!parsed.ok()) return Bad(where + ": " + std::string(parsed.status().message()));
  t.dtype = *parsed;
  MC_ASSIGN_OR_RETURN(const json* shape, Member(j, "shape", where));
  if (!shape->is_array() || shape->size() > kMaxRank) return Bad(where + ": bad shape");
  for (const json& d : *shape) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      return Bad(where + ": a shape dimension is not a non-negative integer");
    }
    t.shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
  }
  MC_ASSIGN_OR_RETURN(t.nbytes, Unsigned(j, "nbytes", where));
  Result<uint64_t> expected = NumBytes(t.dtype, t.shape);
  if (!expected.ok() || *expected != t.nbytes) return Bad(where + ": nbytes does not match dtype x shape");
  MC_ASSIGN_OR_RETURN(const json* sum, Member(j, "xxh3", where));
  MC_ASSIGN_OR_RETURN(t.checksum, ParseHex64(*sum, where + ": xxh3"));
  if (auto a = j.find("alias_of"); a != j.end()) {
    if (!a->is_string() || a->get_ref<const std::string&>().empty()) {
      return Bad(where + ": alias_of is not a tensor name");
    }
    t.alias_of = a->get<std::string>();
  }
  if (with_save && t.alias_of.empty()) {
    MC_ASSIGN_OR_RETURN(const json* save, Member(j, "save", where));
    MC_ASSIGN_OR_RETURN(t.save_id, ParseHex64(*save, where + ": save"));
  }
  return t;
}

Result<ManifestFile> ParseFile(const json& j, size_t index) {
  std::string where = "file #" + std::to_string(index);
  if (!j.is_object()) return Bad(where + " is not an object");
  ManifestFile f;
  MC_ASSIGN_OR_RETURN(f.path, Text(j, "path", where));
  Status safe = CheckStoredFileName(f.path);
  if (!safe.ok()) return Bad(std::string(safe.message()));
  MC_ASSIGN_OR_RETURN(f.size, Unsigned(j, "size", where));
  MC_ASSIGN_OR_RETURN(const json* sum, Member(j, "xxh3", where));
  MC_ASSIGN_OR_RETURN(f.checksum, ParseHex64(*sum, where + ": xxh3"));
  return f;
}

// Names unique; an alias names a stored (non-alias) tensor of the same dtype
// and shape.
Status CheckTensors(const std::vector<ManifestTensor>& tensors) {
  std::map<std::string_view, const ManifestTensor*> by_name;
  for (const ManifestTensor& t : tensors) {
    if (!by_name.emplace(t.name, &t).second) return Bad("tensor '" + t.name + "' is listed twice");
  }
  for (const ManifestTensor& t : tensors) {
    if (t.alias_of.empty()) continue;
    auto it = by_name.find(t.alias_of);
    if (it == by_name.end() || !it->second->alias_of.empty()) {
      return Bad("tensor '" + t.name + "' is an alias of '" + t.alias_of + "', which is not stored");
    }
    const ManifestTensor& target = *it->second;
    if (target.dtype != t.dtype || target.shape != t.shape || target.checksum != t.checksum) {
      return Bad("tensor '" + t.name + "' differs from '" + t.alias_of + "', of which it is an alias");
    }
  }
  return Status::Ok();
}

}  // namespace

std::string Hex64(uint64_t v) {
  char text[17];
  std::snprintf(text, sizeof(text), "%016" PRIx64, v);
  return text;
}

const char* ModelLayoutName(ModelLayout layout) {
  return layout == ModelLayout::kCheckpoint ? "checkpoint" : "engine";
}

Result<ModelLayout> ParseModelLayout(std::string_view name) {
  if (name == "engine") return ModelLayout::kEngine;
  if (name == "checkpoint") return ModelLayout::kCheckpoint;
  return InvalidArgument("unknown model layout '" + std::string(name) + "' (engine or checkpoint)");
}

std::string ToolVersion() { return std::string("mooncake-connector ") + MC_VERSION; }

uint64_t ManifestPart::StoredBytes() const {
  uint64_t n = 0;
  for (const ManifestTensor& t : tensors) {
    if (t.alias_of.empty()) n += t.nbytes;
  }
  for (const ManifestFile& f : files) n += f.size;
  return n;
}

std::string EncodeManifest(const ManifestPart& part) {
  json j = {{"format", "mooncake-connector-model-manifest"},
            {"format_version", part.format_version},
            {"tool", part.tool},
            {"created", part.created},
            {"state", part.state == SaveState::kComplete ? "complete" : "saving"},
            {"world_size", part.world_size}};
  if (part.format_version >= 3) j["save"] = Hex64(part.save_id);
  if (part.rank) {
    j["rank"] = *part.rank;
    j["layout"] = ModelLayoutName(part.layout);
    json tensors = json::array();
    for (const ManifestTensor& t : part.tensors) {
      json e = {{"name", t.name},
                {"dtype", DTypeName(t.dtype)},
                {"shape", t.shape},
                {"nbytes", t.nbytes},
                {"xxh3", Hex64(t.checksum)}};
      if (!t.alias_of.empty()) e["alias_of"] = t.alias_of;
      if (part.format_version >= 3 && t.alias_of.empty()) e["save"] = Hex64(t.save_id);
      tensors.push_back(std::move(e));
    }
    if (part.format_version >= 4) j["xxh3_piece"] = part.checksum_piece;
    j["tensors"] = std::move(tensors);
  } else {
    json files = json::array();
    for (const ManifestFile& f : part.files) {
      files.push_back({{"path", f.path}, {"size", f.size}, {"xxh3", Hex64(f.checksum)}});
    }
    j["files"] = std::move(files);
  }
  return j.dump(1);
}

Result<ManifestPart> ParseManifest(std::string_view text) {
  if (text.size() > kMaxManifestBytes) return Bad("larger than " + std::to_string(kMaxManifestBytes) + " bytes");
  bool too_deep = false;
  json::parser_callback_t depth_check = [&](int depth, json::parse_event_t, json&) {
    if (depth > kMaxJsonDepth) too_deep = true;
    return !too_deep;
  };
  json j = json::parse(text.begin(), text.end(), depth_check, /*allow_exceptions=*/false);
  if (too_deep) return Bad("JSON nests too deeply");
  if (j.is_discarded() || !j.is_object()) return Bad("not a JSON object");
  ManifestPart part;
  MC_ASSIGN_OR_RETURN(std::string format, Text(j, "format", "the manifest"));
  if (format != "mooncake-connector-model-manifest") return Bad("unknown format '" + format + "'");
  MC_ASSIGN_OR_RETURN(uint64_t version, Unsigned(j, "format_version", "the manifest"));
  if (version == 0) return Bad("format_version 0 does not exist");
  if (version > static_cast<uint64_t>(kManifestFormatVersion)) {
    return Unimplemented("model manifest format version " + std::to_string(version) +
                         " is not supported by " + ToolVersion() + " (it reads versions 1 to " +
                         std::to_string(kManifestFormatVersion) + ")");
  }
  part.format_version = static_cast<int>(version);
  part.checksum_piece = 0;  // but for a rank part of version 4
  MC_ASSIGN_OR_RETURN(part.tool, Text(j, "tool", "the manifest"));
  MC_ASSIGN_OR_RETURN(part.created, Text(j, "created", "the manifest"));
  MC_ASSIGN_OR_RETURN(std::string state, Text(j, "state", "the manifest"));
  if (state == "complete") {
    part.state = SaveState::kComplete;
  } else if (state == "saving") {
    part.state = SaveState::kSaving;
  } else {
    return Bad("unknown state '" + state + "'");
  }
  MC_ASSIGN_OR_RETURN(uint64_t world, Unsigned(j, "world_size", "the manifest"));
  if (world < 1 || world > kMaxWorldSize) return Bad("world_size " + std::to_string(world) + " is out of range");
  part.world_size = static_cast<int>(world);
  if (version >= 3) {
    MC_ASSIGN_OR_RETURN(const json* save, Member(j, "save", "the manifest"));
    MC_ASSIGN_OR_RETURN(part.save_id, ParseHex64(*save, "the manifest's save"));
  }
  if (j.contains("rank")) {
    MC_ASSIGN_OR_RETURN(uint64_t rank, Unsigned(j, "rank", "the manifest"));
    if (rank >= world) return Bad("rank " + std::to_string(rank) + " is not below world_size");
    part.rank = static_cast<int>(rank);
    if (j.contains("layout")) {
      MC_ASSIGN_OR_RETURN(std::string layout, Text(j, "layout", "the manifest"));
      Result<ModelLayout> parsed = ParseModelLayout(layout);
      if (!parsed.ok()) return Bad(std::string(parsed.status().message()));
      part.layout = *parsed;
      if (part.layout == ModelLayout::kCheckpoint && world != 1) {
        return Bad("a checkpoint-layout part has world_size " + std::to_string(world) + " (it must be 1)");
      }
    }
    if (version >= 4) {
      MC_ASSIGN_OR_RETURN(part.checksum_piece, Unsigned(j, "xxh3_piece", "the manifest"));
      const uint64_t piece = part.checksum_piece;
      if (piece < kMinChecksumPiece || piece > kMaxChecksumPiece || (piece & (piece - 1)) != 0) {
        return Bad("xxh3_piece " + std::to_string(piece) + " is not a power of two from " +
                   std::to_string(kMinChecksumPiece) + " to " + std::to_string(kMaxChecksumPiece));
      }
    }
    MC_ASSIGN_OR_RETURN(const json* tensors, Member(j, "tensors", "the manifest"));
    if (!tensors->is_array()) return Bad("\"tensors\" is not a list");
    for (size_t i = 0; i < tensors->size(); ++i) {
      MC_ASSIGN_OR_RETURN(ManifestTensor t, ParseTensor((*tensors)[i], i, version >= 3));
      part.tensors.push_back(std::move(t));
    }
    MC_RETURN_IF_ERROR(CheckTensors(part.tensors));
  } else {
    MC_ASSIGN_OR_RETURN(const json* files, Member(j, "files", "the manifest"));
    if (!files->is_array()) return Bad("\"files\" is not a list");
    std::set<std::string_view> seen;
    for (size_t i = 0; i < files->size(); ++i) {
      MC_ASSIGN_OR_RETURN(ManifestFile f, ParseFile((*files)[i], i));
      part.files.push_back(std::move(f));
    }
    for (const ManifestFile& f : part.files) {
      if (!seen.insert(f.path).second) return Bad("file '" + f.path + "' is listed twice");
    }
  }
  return part;
}

}  // namespace mooncake_connector
