// DLPack interchange (the unversioned DLManagedTensor ABI, data type codes of
// DLPack 1.1). The structs below are our own declarations, layout-compatible
// with DLPack's; they live in our namespace so that they never clash with a
// dlpack.h the user includes. Pass pointers across with reinterpret_cast.
#pragma once

#include <cstdint>

#include "mooncake_connector/export.h"
#include "mooncake_connector/status.h"
#include "mooncake_connector/tensor.h"

namespace mooncake_connector::dlpack {

enum DeviceType : int32_t { kCPU = 1, kCUDA = 2, kCUDAHost = 3 };

enum TypeCode : uint8_t {
  kInt = 0,
  kUInt = 1,
  kFloat = 2,
  kBfloat = 4,
  kBool = 6,
  kFloat8E4M3FN = 10,
  kFloat8E5M2 = 12,
};

struct Device {
  int32_t device_type;
  int32_t device_id;
};

struct DataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct DLTensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;  // null means compact row-major
  uint64_t byte_offset;
};

struct ManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor* self);
};

MC_EXPORT Result<DataType> ToDataType(DType dtype);
MC_EXPORT Result<DType> FromDataType(DataType dtype);

// Returns a ManagedTensor that shares `tensor`'s storage. The consumer calls
// its deleter exactly once.
MC_EXPORT ManagedTensor* ToDLPack(const Tensor& tensor);

// Takes ownership of `managed` (its deleter runs when the last copy of the
// returned Tensor's storage goes, or at once on error). Zero-copy.
// REQUIRES: a CPU (or CUDA host) tensor, compact row-major, one lane.
MC_EXPORT Result<Tensor> FromDLPack(ManagedTensor* managed);

}  // namespace mooncake_connector::dlpack
