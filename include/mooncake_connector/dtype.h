// Element types: every dtype of the safetensors format.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "mooncake_connector/export.h"
#include "mooncake_connector/status.h"

namespace mooncake_connector {

enum class DType : uint8_t {
  kBool,
  kU8,
  kI8,
  kU16,
  kI16,
  kU32,
  kI32,
  kU64,
  kI64,
  kF16,
  kBF16,
  kF32,
  kF64,
  kF8E4M3,  // float8 e4m3fn (torch.float8_e4m3fn)
  kF8E5M2,  // float8 e5m2 (torch.float8_e5m2)
};

inline constexpr DType kAllDTypes[] = {
    DType::kBool, DType::kU8,  DType::kI8,   DType::kU16,    DType::kI16,
    DType::kU32,  DType::kI32, DType::kU64,  DType::kI64,    DType::kF16,
    DType::kBF16, DType::kF32, DType::kF64,  DType::kF8E4M3, DType::kF8E5M2,
};

// Bytes per element (1, 2, 4 or 8).
MC_EXPORT size_t ItemSize(DType dtype);

// The safetensors name: "F32", "BF16", "F8_E4M3", "BOOL", ...
MC_EXPORT std::string_view DTypeName(DType dtype);

// Inverse of DTypeName. InvalidArgument for an unknown name.
MC_EXPORT Result<DType> ParseDType(std::string_view name);

}  // namespace mooncake_connector
