// Dense row-major tensors: an owning Tensor and a borrowed TensorView.
#pragma once

#include <cstdint>
#include <vector>

#include "mooncake_connector/buffer.h"
#include "mooncake_connector/dtype.h"
#include "mooncake_connector/export.h"
#include "mooncake_connector/status.h"

namespace mooncake_connector {

using Shape = std::vector<int64_t>;

// Product of the dimensions (1 for a 0-d shape). InvalidArgument for a
// negative dimension or when the product, or product * item size, overflows.
MC_EXPORT Result<uint64_t> NumElements(const Shape& shape);
MC_EXPORT Result<uint64_t> NumBytes(DType dtype, const Shape& shape);

// Borrowed, contiguous, row-major. The caller keeps `data` alive.
struct TensorView {
  DType dtype = DType::kU8;
  Shape shape;
  const std::byte* data = nullptr;
  uint64_t nbytes = 0;  // == NumBytes(dtype, shape)

  ConstBytes bytes() const { return {data, static_cast<size_t>(nbytes)}; }
};

// Builds a view after checking that `bytes` holds exactly
// NumBytes(dtype, shape) bytes.
MC_EXPORT Result<TensorView> MakeTensorView(DType dtype, Shape shape, ConstBytes bytes);

// An owning, contiguous, row-major tensor. Copies share the storage (like
// torch.Tensor); the storage is freed with the last copy.
class MC_EXPORT Tensor {
 public:
  Tensor() = default;

  // New storage aligned to kBufferAlignment, uninitialised.
  static Result<Tensor> Allocate(DType dtype, Shape shape);
  // Takes `buffer` as storage. InvalidArgument unless buffer.size() equals
  // NumBytes(dtype, shape).
  static Result<Tensor> FromBuffer(DType dtype, Shape shape, Buffer buffer);
  // Deep copy of a view into new aligned storage.
  static Result<Tensor> Copy(const TensorView& view);

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t ndim() const { return static_cast<int64_t>(shape_.size()); }
  std::byte* data() const { return buffer_.data(); }
  uint64_t nbytes() const { return buffer_.size(); }
  const Buffer& buffer() const { return buffer_; }
  TensorView view() const { return {dtype_, shape_, buffer_.data(), buffer_.size()}; }

 private:
  DType dtype_ = DType::kU8;
  Shape shape_{0};
  Buffer buffer_;
};

}  // namespace mooncake_connector
