// Private helpers of the model layer.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "mooncake_connector/buffer.h"
#include "mooncake_connector/status.h"
#include "mooncake_connector/tensor.h"

namespace mooncake_connector {

// OK if a model.safetensors.index.json's weight_map names exactly the
// tensors the shards hold (`shard_of`: tensor -> shard). InvalidArgument
// naming the first difference otherwise.
Status CheckShardIndex(ConstBytes index, const std::map<std::string, std::string>& shard_of,
                       const std::string& where);

// "[2, 3]"
std::string ShapeText(const Shape& shape);

// Which manifest part `key` is of `model`: true with *rank set for
// "MODEL/manifest/rank_R.json", true with nullopt for ".../files.json",
// false for anything else.
bool ManifestPartOf(std::string_view model, std::string_view key, std::optional<int>* rank);

}  // namespace mooncake_connector
