// Private helpers of the model layer.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "mooncake_connector/buffer.h"
#include "mooncake_connector/model.h"
#include "mooncake_connector/status.h"
#include "mooncake_connector/tensor.h"

namespace mooncake_connector {

// A tensor (or file) of a save, as the save writes it and records it in the
// manifest (model_save.cc).
struct Model::SaveItem {
  std::string name;  // tensor name or file path
  std::string key;
  std::string header;  // the value's header (tensors), empty for files
  // The bytes; of a tensor in device memory (on_device), its staged host
  // copy while SaveValues has one, else `device` (not readable here).
  ConstBytes data;
  bool on_device = false;
  ConstBytes device;  // on_device: where the tensor lies in the device's memory
  ManifestTensor tensor;  // for tensors
  ManifestFile file;      // for files
  bool alias = false;
  std::optional<uint64_t> value_xxh3;  // of header + data, for the store
  bool hashed = false;                 // checksum (and value_xxh3) set
  uint64_t value_size() const { return header.size() + data.size(); }
  ConstBytes header_bytes() const { return {reinterpret_cast<const std::byte*>(header.data()), header.size()}; }
};

// InvalidArgument when a BOOL tensor's bytes hold one that is neither 0 nor
// 1 (no load could return it as saved).
Status CheckBoolBytes(const std::string& name, ConstBytes bytes);

// The piece size of the checksums a save records: a rank's tensors'
// (kTensorChecksumPiece); the files part's are whole (0).
inline uint64_t SavedChecksumPiece(std::optional<int> rank) { return rank ? kTensorChecksumPiece : 0; }

// 16 lowercase hex digits (checksums and save ids in manifests and values).
std::string Hex64(uint64_t v);

// The header a stored value of tensor `t` (rank `rank` of `model`, in a
// manifest part of version `format_version`) starts with: its
// "__metadata__" carries nothing before version 2, the part's key from 2,
// and the save that wrote the value from 3.
Result<std::string> ValueHeader(const Model& model, int rank, const ManifestTensor& t, int format_version);

// OK if a model.safetensors.index.json's weight_map names exactly the
// tensors the shards hold (`shard_of`: tensor -> shard). InvalidArgument
// naming the first difference otherwise.
Status CheckShardIndex(ConstBytes index, const std::map<std::string, std::string>& shard_of,
                       const std::string& where);

// InvalidArgument unless `path` may name a saved file: relative, safe
// (CheckStoredFileName), UTF-8 (the manifest is JSON).
Status CheckFileToSave(const std::string& path);

// "[2, 3]"
std::string ShapeText(const Shape& shape);

// Which manifest part `key` is of `model`: true with *rank set for
// "MODEL/manifest/rank_R.json", true with nullopt for ".../files.json",
// false for anything else.
bool ManifestPartOf(std::string_view model, std::string_view key, std::optional<int>* rank);

}  // namespace mooncake_connector
