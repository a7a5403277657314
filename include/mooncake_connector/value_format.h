// The value format: how a tensor is stored under one key. Normative spec:
// docs/value_format.md. A value is a safetensors file holding one tensor named
// "tensor_bytes" -- byte-compatible with SGLang's "safe" serde.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "mooncake_connector/buffer.h"
#include "mooncake_connector/export.h"
#include "mooncake_connector/status.h"
#include "mooncake_connector/tensor.h"

namespace mooncake_connector {

inline constexpr std::string_view kTensorName = "tensor_bytes";
// Largest JSON header a reader accepts (the safetensors limit).
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// Most dimensions a stored tensor may have (torch allows 64).
inline constexpr size_t kMaxRank = 64;
// Writers pad the header so that tensor data starts at a multiple of this.
inline constexpr size_t kDataAlignment = 64;

// An encoded value as a scatter list: the header (8-byte length + padded JSON),
// then the tensor bytes, borrowed from the encoded view. The value is
// header + data; nothing else is copied.
struct EncodedTensor {
  std::string header;
  ConstBytes data;

  std::array<ConstBytes, 2> parts() const {
    return {ConstBytes(reinterpret_cast<const std::byte*>(header.data()), header.size()), data};
  }
  uint64_t size() const { return header.size() + data.size(); }
};

// `metadata` (optional) goes into the header's "__metadata__" object.
MC_EXPORT Result<EncodedTensor> EncodeTensor(const TensorView& tensor,
                                             const std::map<std::string, std::string>& metadata = {});

// Where the tensor lies in a value.
struct TensorLayout {
  DType dtype;
  Shape shape;
  uint64_t data_begin;  // absolute offset of the tensor bytes in the value
  uint64_t data_end;
};

struct NamedTensorLayout {
  std::string name;
  TensorLayout layout;
};

// Validates a safetensors file (a *.safetensors shard, or a value) as the
// spec demands, but for the rule that it holds "tensor_bytes", and returns
// its tensors ordered by data offset. DataLoss, with the reason, otherwise.
// With `metadata`, its "__metadata__" entries are stored there.
MC_EXPORT Result<std::vector<NamedTensorLayout>> ParseSafetensors(
    ConstBytes file, std::map<std::string, std::string>* metadata = nullptr);

// Validates a whole value as the spec demands and locates "tensor_bytes".
// DataLoss, with the reason, for anything malformed.
MC_EXPORT Result<TensorLayout> ParseTensorValue(ConstBytes value,
                                                std::map<std::string, std::string>* metadata = nullptr);

// Decodes a value held in `value`. The result shares `value`'s storage when
// the tensor bytes are aligned to the item size, and is a copy otherwise.
MC_EXPORT Result<Tensor> DecodeTensor(const Buffer& value);

}  // namespace mooncake_connector
