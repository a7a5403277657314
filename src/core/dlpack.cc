#include "mooncake_connector/dlpack.h"

#include <memory>
#include <string>

namespace mooncake_connector::dlpack {
namespace {

struct ExportContext {
  ManagedTensor managed;
  Tensor tensor;  // keeps the storage alive
  Shape shape;
};

void DeleteExport(ManagedTensor* self) {
  delete static_cast<ExportContext*>(self->manager_ctx);
}

}  // namespace

Result<DataType> ToDataType(DType dtype) {
  uint8_t bits = static_cast<uint8_t>(ItemSize(dtype) * 8);
  switch (dtype) {
    case DType::kBool: return DataType{kBool, 8, 1};
    case DType::kU8: case DType::kU16: case DType::kU32: case DType::kU64:
      return DataType{kUInt, bits, 1};
    case DType::kI8: case DType::kI16: case DType::kI32: case DType::kI64:
      return DataType{kInt, bits, 1};
    case DType::kF16: case DType::kF32: case DType::kF64:
      return DataType{kFloat, bits, 1};
    case DType::kBF16: return DataType{kBfloat, 16, 1};
    case DType::kF8E4M3: return DataType{kFloat8E4M3FN, 8, 1};
    case DType::kF8E5M2: return DataType{kFloat8E5M2, 8, 1};
  }
  return InvalidArgument("dtype has no DLPack code");
}

Result<DType> FromDataType(DataType t) {
  for (DType d : kAllDTypes) {
    Result<DataType> c = ToDataType(d);
    if (c.ok() && c->code == t.code && c->bits == t.bits && c->lanes == t.lanes) return d;
  }
  return InvalidArgument("unsupported DLPack dtype (code " + std::to_string(t.code) +
                         ", bits " + std::to_string(t.bits) + ", lanes " +
                         std::to_string(t.lanes) + ")");
}

ManagedTensor* ToDLPack(const Tensor& tensor) {
  auto ctx = std::make_unique<ExportContext>();
  ctx->tensor = tensor;
  ctx->shape = tensor.shape();
  DLTensor& t = ctx->managed.dl_tensor;
  t.data = tensor.data();
  t.device = Device{kCPU, 0};
  t.ndim = static_cast<int32_t>(ctx->shape.size());
  t.dtype = *ToDataType(tensor.dtype());  // every DType has a code
  t.shape = ctx->shape.data();
  t.strides = nullptr;
  t.byte_offset = 0;
  ctx->managed.manager_ctx = ctx.get();
  ctx->managed.deleter = &DeleteExport;
  return &ctx.release()->managed;
}

Result<Tensor> FromDLPack(ManagedTensor* managed) {
  if (managed == nullptr) return InvalidArgument("null DLPack tensor");
  // From here on the deleter runs exactly once, whatever happens.
  std::shared_ptr<ManagedTensor> owner(managed, [](ManagedTensor* m) {
    if (m->deleter != nullptr) m->deleter(m);
  });
  const DLTensor& t = managed->dl_tensor;
  if (t.device.device_type != kCPU && t.device.device_type != kCUDAHost) {
    return InvalidArgument("DLPack tensor is not in host memory (device type " +
                           std::to_string(t.device.device_type) + ")");
  }
  if (t.ndim < 0) return InvalidArgument("DLPack tensor has negative ndim");
  MC_ASSIGN_OR_RETURN(DType dtype, FromDataType(t.dtype));
  Shape shape(t.shape, t.shape + t.ndim);
  if (t.strides != nullptr) {
    int64_t expected = 1;
    for (int32_t i = t.ndim - 1; i >= 0; --i) {
      // Strides of size-1 dimensions carry no meaning.
      if (shape[i] != 1 && t.strides[i] != expected) {
        return InvalidArgument("DLPack tensor is not compact row-major");
      }
      expected *= shape[i];
    }
  }
  MC_ASSIGN_OR_RETURN(uint64_t nbytes, NumBytes(dtype, shape));
  auto* data = static_cast<std::byte*>(t.data) + t.byte_offset;
  return Tensor::FromBuffer(dtype, std::move(shape),
                            Buffer::Wrap(data, nbytes, std::move(owner)));
}

}  // namespace mooncake_connector::dlpack
