#include "mooncake_connector/value_format.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

namespace mooncake_connector {
namespace {

using nlohmann::json;

constexpr size_t kLengthBytes = 8;
// Deeper JSON than this is never a safetensors header (root -> tensor ->
// shape list); refusing it early bounds parser work on hostile input.
constexpr int kMaxJsonDepth = 4;

Status Corrupt(std::string why) { return DataLoss("invalid tensor value: " + why); }

uint64_t LoadLE64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

void StoreLE64(uint64_t v, char* p) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

Result<uint64_t> ToUnsigned(const json& j, const char* what) {
  if (!j.is_number_unsigned()) return Corrupt(std::string(what) + " is not a non-negative integer");
  return j.get<uint64_t>();
}

using Entry = NamedTensorLayout;

Result<Entry> ParseEntry(const std::string& name, const json& j, uint64_t data_start,
                         uint64_t data_len) {
  if (!j.is_object()) return Corrupt("entry '" + name + "' is not an object");
  auto dtype_it = j.find("dtype");
  auto shape_it = j.find("shape");
  auto offsets_it = j.find("data_offsets");
  if (dtype_it == j.end() || shape_it == j.end() || offsets_it == j.end()) {
    return Corrupt("entry '" + name + "' lacks dtype, shape or data_offsets");
  }
  if (!dtype_it->is_string()) return Corrupt("dtype of '" + name + "' is not a string");
  Result<DType> dtype = ParseDType(dtype_it->get_ref<const std::string&>());
  if (!dtype.ok()) return Corrupt("entry '" + name + "': " + std::string(dtype.status().message()));
  if (!shape_it->is_array()) return Corrupt("shape of '" + name + "' is not a list");
  if (shape_it->size() > kMaxRank) {
    return Corrupt("shape of '" + name + "' has " + std::to_string(shape_it->size()) +
                   " dimensions; at most " + std::to_string(kMaxRank) + " are allowed");
  }
  Shape shape;
  for (const json& d : *shape_it) {
    MC_ASSIGN_OR_RETURN(uint64_t dim, ToUnsigned(d, "a shape dimension"));
    if (dim > static_cast<uint64_t>(INT64_MAX)) return Corrupt("shape dimension too large");
    shape.push_back(static_cast<int64_t>(dim));
  }
  if (!offsets_it->is_array() || offsets_it->size() != 2) {
    return Corrupt("data_offsets of '" + name + "' is not a pair");
  }
  MC_ASSIGN_OR_RETURN(uint64_t begin, ToUnsigned((*offsets_it)[0], "data_offsets[0]"));
  MC_ASSIGN_OR_RETURN(uint64_t end, ToUnsigned((*offsets_it)[1], "data_offsets[1]"));
  if (begin > end) return Corrupt("data_offsets of '" + name + "' are reversed");
  if (end > data_len) {
    return Corrupt("tensor '" + name + "' ends at byte " + std::to_string(end) +
                   " of a data section of " + std::to_string(data_len) + " bytes (truncated?)");
  }
  Result<uint64_t> nbytes = NumBytes(*dtype, shape);
  if (!nbytes.ok() || *nbytes != end - begin) {
    return Corrupt("entry '" + name + "': shape x item size does not equal its byte range");
  }
  return Entry{name, TensorLayout{*dtype, std::move(shape), data_start + begin, data_start + end}};
}

}  // namespace

Result<EncodedTensor> EncodeTensor(const TensorView& tensor, const std::map<std::string, std::string>& metadata) {
  MC_ASSIGN_OR_RETURN(uint64_t nbytes, NumBytes(tensor.dtype, tensor.shape));
  if (nbytes != tensor.nbytes) return InvalidArgument("view byte size does not match its shape");
  json entry = {{"dtype", DTypeName(tensor.dtype)},
                {"shape", tensor.shape},
                {"data_offsets", {0, nbytes}}};
  json header = {{std::string(kTensorName), std::move(entry)}};
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string body = header.dump();
  // Pad with spaces so that the data starts on a kDataAlignment boundary.
  size_t total = kLengthBytes + body.size();
  body.append((kDataAlignment - total % kDataAlignment) % kDataAlignment, ' ');
  EncodedTensor out;
  out.header.resize(kLengthBytes);
  StoreLE64(body.size(), out.header.data());
  out.header += body;
  out.data = tensor.bytes();
  return out;
}

Result<std::vector<NamedTensorLayout>> ParseSafetensors(ConstBytes value,
                                                        std::map<std::string, std::string>* metadata) {
  if (value.size() < kLengthBytes) return Corrupt("shorter than the 8-byte header length");
  uint64_t header_len = LoadLE64(value.data());
  if (header_len > kMaxHeaderBytes) {
    return Corrupt("header length " + std::to_string(header_len) + " exceeds the limit of " +
                   std::to_string(kMaxHeaderBytes));
  }
  if (header_len > value.size() - kLengthBytes) {
    return Corrupt("header length " + std::to_string(header_len) + " runs past the end of a " +
                   std::to_string(value.size()) + "-byte value (truncated?)");
  }
  const char* text = reinterpret_cast<const char*>(value.data()) + kLengthBytes;
  if (header_len == 0 || text[0] != '{') return Corrupt("header does not start with '{'");
  // Safetensors allows only spaces after the JSON object.
  size_t json_len = header_len;
  while (json_len > 0 && text[json_len - 1] == ' ') --json_len;

  bool too_deep = false;
  bool duplicate = false;
  std::vector<std::string> names;  // members of the root object
  json::parser_callback_t checks = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth > kMaxJsonDepth) too_deep = true;
    if (event == json::parse_event_t::key && depth == 1) {
      const std::string& name = parsed.get_ref<const std::string&>();
      if (std::find(names.begin(), names.end(), name) != names.end()) duplicate = true;
      names.push_back(name);
    }
    return !too_deep && !duplicate;
  };
  json header = json::parse(text, text + json_len, checks, /*allow_exceptions=*/false);
  if (too_deep) return Corrupt("header JSON nests too deeply");
  if (text[json_len - 1] != '}') return Corrupt("header is padded with bytes other than spaces");
  if (std::memchr(text, 0, json_len) != nullptr) return Corrupt("header contains a NUL byte");
  if (duplicate) return Corrupt("header names a tensor twice");
  if (header.is_discarded()) return Corrupt("header is not valid JSON");
  if (!header.is_object()) return Corrupt("header is not a JSON object");

  const uint64_t data_start = kLengthBytes + header_len;
  const uint64_t data_len = value.size() - data_start;
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) return Corrupt("__metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) return Corrupt("__metadata__ values must be strings");
        if (metadata != nullptr) (*metadata)[m.key()] = m->get<std::string>();
      }
      continue;
    }
    MC_ASSIGN_OR_RETURN(Entry e, ParseEntry(it.key(), *it, data_start, data_len));
    entries.push_back(std::move(e));
  }
  // The data section must be covered exactly: no holes, no overlaps.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    // Empty tensors sit at the offset where the next one begins.
    return std::tie(a.layout.data_begin, a.layout.data_end) <
           std::tie(b.layout.data_begin, b.layout.data_end);
  });
  uint64_t cursor = data_start;
  for (const Entry& e : entries) {
    if (e.layout.data_begin != cursor) {
      return Corrupt("tensor '" + e.name + "' does not start where the previous one ends");
    }
    cursor = e.layout.data_end;
  }
  if (cursor - data_start != data_len) {
    return Corrupt("tensors cover " + std::to_string(cursor - data_start) + " bytes but the data "
                   "section holds " + std::to_string(data_len) + " (truncated or trailing bytes)");
  }
  return entries;
}

Result<TensorLayout> ParseTensorValue(ConstBytes value, std::map<std::string, std::string>* metadata) {
  MC_ASSIGN_OR_RETURN(std::vector<NamedTensorLayout> entries, ParseSafetensors(value, metadata));
  for (Entry& e : entries) {
    if (e.name == kTensorName) return std::move(e.layout);
  }
  return Corrupt("no tensor named '" + std::string(kTensorName) + "'");
}

Result<Tensor> DecodeTensor(const Buffer& value) {
  MC_ASSIGN_OR_RETURN(TensorLayout layout, ParseTensorValue(value.bytes()));
  Buffer data = value.Slice(layout.data_begin, layout.data_end - layout.data_begin);
  if (layout.dtype == DType::kBool) {
    ConstBytes b = data.bytes();
    if (std::any_of(b.begin(), b.end(), [](std::byte v) { return v > std::byte{1}; })) {
      return Corrupt("a BOOL element is neither 0 nor 1");
    }
  }
  if (reinterpret_cast<uintptr_t>(data.data()) % ItemSize(layout.dtype) == 0) {
    return Tensor::FromBuffer(layout.dtype, std::move(layout.shape), std::move(data));
  }
  MC_ASSIGN_OR_RETURN(TensorView view,
                      MakeTensorView(layout.dtype, std::move(layout.shape), data.bytes()));
  return Tensor::Copy(view);
}

}  // namespace mooncake_connector
