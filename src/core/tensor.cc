#include "mooncake_connector/tensor.h"

#include <cstring>
#include <string>

namespace mooncake_connector {

Result<uint64_t> NumElements(const Shape& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return InvalidArgument("negative dimension " + std::to_string(d));
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) {
      return InvalidArgument("shape has too many elements");
    }
  }
  return n;
}

Result<uint64_t> NumBytes(DType dtype, const Shape& shape) {
  MC_ASSIGN_OR_RETURN(uint64_t n, NumElements(shape));
  uint64_t bytes;
  if (__builtin_mul_overflow(n, static_cast<uint64_t>(ItemSize(dtype)), &bytes)) {
    return InvalidArgument("tensor byte size overflows");
  }
  return bytes;
}

Result<TensorView> MakeTensorView(DType dtype, Shape shape, ConstBytes bytes) {
  MC_ASSIGN_OR_RETURN(uint64_t want, NumBytes(dtype, shape));
  if (want != bytes.size()) {
    return InvalidArgument("tensor of dtype " + std::string(DTypeName(dtype)) +
                           " and this shape needs " + std::to_string(want) +
                           " bytes, got " + std::to_string(bytes.size()));
  }
  return TensorView{dtype, std::move(shape), bytes.data(), want};
}

Result<Tensor> Tensor::Allocate(DType dtype, Shape shape) {
  MC_ASSIGN_OR_RETURN(uint64_t bytes, NumBytes(dtype, shape));
  MC_ASSIGN_OR_RETURN(Buffer buffer, Buffer::Allocate(bytes));
  return FromBuffer(dtype, std::move(shape), std::move(buffer));
}

Result<Tensor> Tensor::FromBuffer(DType dtype, Shape shape, Buffer buffer) {
  MC_ASSIGN_OR_RETURN(TensorView v, MakeTensorView(dtype, std::move(shape), buffer.bytes()));
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(v.shape);
  t.buffer_ = std::move(buffer);
  return t;
}

Result<Tensor> Tensor::Copy(const TensorView& view) {
  MC_ASSIGN_OR_RETURN(Tensor t, Allocate(view.dtype, view.shape));
  if (t.nbytes() != view.nbytes) return InvalidArgument("view nbytes does not match its shape");
  if (view.nbytes > 0) std::memcpy(t.data(), view.data, view.nbytes);
  return t;
}

}  // namespace mooncake_connector
