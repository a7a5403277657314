#include "mooncake_connector/dtype.h"

#include <string>

namespace mooncake_connector {
namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t item_size;
};

constexpr DTypeInfo kInfo[] = {
    {DType::kBool, "BOOL", 1},       {DType::kU8, "U8", 1},
    {DType::kI8, "I8", 1},           {DType::kU16, "U16", 2},
    {DType::kI16, "I16", 2},         {DType::kU32, "U32", 4},
    {DType::kI32, "I32", 4},         {DType::kU64, "U64", 8},
    {DType::kI64, "I64", 8},         {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},       {DType::kF32, "F32", 4},
    {DType::kF64, "F64", 8},         {DType::kF8E4M3, "F8_E4M3", 1},
    {DType::kF8E5M2, "F8_E5M2", 1},
};

const DTypeInfo& Info(DType dtype) { return kInfo[static_cast<size_t>(dtype)]; }

static_assert(std::size(kInfo) == std::size(kAllDTypes));

}  // namespace

size_t ItemSize(DType dtype) { return Info(dtype).item_size; }

std::string_view DTypeName(DType dtype) { return Info(dtype).name; }

Result<DType> ParseDType(std::string_view name) {
  for (const DTypeInfo& info : kInfo) {
    if (info.name == name) return info.dtype;
  }
  return InvalidArgument("unknown dtype '" + std::string(name) + "'");
}

}  // namespace mooncake_connector
