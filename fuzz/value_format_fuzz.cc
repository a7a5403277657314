// libFuzzer target: ParseTensorValue and DecodeTensor on arbitrary bytes must
// return a Status, never crash, hang or read out of bounds.
#include <cstring>

#include "mooncake_connector/value_format.h"

using namespace mooncake_connector;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Copy into an exactly-sized heap buffer so that ASan sees overreads.
  Result<Buffer> buffer = Buffer::Allocate(size);
  if (!buffer.ok()) return 0;
  if (size > 0) std::memcpy(buffer->data(), data, size);
  Result<Tensor> tensor = DecodeTensor(*buffer);
  if (tensor.ok()) {
    // A value that decodes must re-encode to a value that decodes the same.
    Result<EncodedTensor> encoded = EncodeTensor(tensor->view());
    if (!encoded.ok()) __builtin_trap();
    if (tensor->shape() != ParseTensorValue(buffer->bytes())->shape) __builtin_trap();
  }
  return 0;
}
