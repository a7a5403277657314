// Private helpers of the model layer.
#pragma once

#include <map>
#include <string>

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

}  // namespace mooncake_connector
