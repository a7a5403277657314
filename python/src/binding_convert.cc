// The binding's conversions (binding_internal.h): tensors in by DLPack
// (FromArray), tensors and bytes out, progress callbacks.
#include <cstring>

#include "binding_internal.h"
#include "mooncake_connector/dlpack.h"

namespace mooncake_connector::binding {

ConstBytes AsConst(const ByteArray& a) {
  return ConstBytes(reinterpret_cast<const std::byte*>(a.data()), a.size());
}

// A 1-d uint8 numpy array over a buffer's bytes; the array keeps them alive.
nb::object BytesArray(const Buffer& buffer) {
  auto* keep = new Buffer(buffer);
  nb::capsule owner(keep, [](void* p) noexcept { delete static_cast<Buffer*>(p); });
  return nb::cast(nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(keep->data(), {keep->size()}, owner));
}

// A "dltensor" capsule sharing `tensor`'s storage (the DLPack protocol's
// capsule: a consumer renames it "used_dltensor" and calls the deleter
// itself; one never consumed is deleted here).
nb::object DLPackCapsule(const Tensor& tensor) {
  dlpack::ManagedTensor* managed = dlpack::ToDLPack(tensor);
  PyObject* capsule = PyCapsule_New(managed, "dltensor", [](PyObject* self) {
    if (!PyCapsule_IsValid(self, "dltensor")) return;  // consumed
    auto* m = static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(self, "dltensor"));
    if (m != nullptr && m->deleter != nullptr) m->deleter(m);
  });
  if (capsule == nullptr) {
    managed->deleter(managed);
    throw nb::python_error();
  }
  return nb::steal(capsule);
}

InTensor FromArray(const AnyArray& a, const std::string& name, Where where) {
  const nb::dlpack::dtype t = a.dtype();
  Result<DType> dtype = dlpack::FromDataType({t.code, t.bits, t.lanes});
  if (!dtype.ok()) {
    Check(InvalidArgument("tensor '" + name + "' has a dtype with no safetensors equivalent (DLPack code " +
                          std::to_string(t.code) + ", " + std::to_string(t.bits) + " bits, " +
                          std::to_string(t.lanes) + " lanes)"));
  }
  InTensor in;
  in.dtype = *dtype;
  in.shape.resize(a.ndim());
  int64_t expected = 1;  // the stride of a compact row-major layout
  bool compact = true;
  for (size_t i = a.ndim(); i-- > 0;) {
    in.shape[i] = static_cast<int64_t>(a.shape(i));
    compact = compact && (in.shape[i] == 1 || a.stride(i) == expected);
    expected *= in.shape[i];
  }
  in.data = static_cast<std::byte*>(a.data());
  in.nbytes = a.nbytes();
  if (!compact && in.nbytes > 0) Check(InvalidArgument("tensor '" + name + "' is not contiguous"));
  const int32_t device = a.device_type();
  if (device == nb::device::cuda::value) in.cuda_device = a.device_id();
  if (device != nb::device::cpu::value && device != nb::device::cuda_host::value && in.cuda_device < 0) {
    Check(InvalidArgument("tensor '" + name + "' is on a device of DLPack type " + std::to_string(device) +
                          ", neither the CPU nor CUDA"));
  }
  if (where != kCpuOrCuda && (where == kCuda) != (in.cuda_device >= 0)) {
    Check(InvalidArgument("tensor '" + name + "' is " + (in.cuda_device >= 0 ? "on a CUDA device" : "in CPU memory") +
                          ", " + (where == kCuda ? "a CUDA device's" : "CPU memory") + " was expected"));
  }
  return in;
}

void NoteCudaDevice(const InTensor& in, const std::string& name, const char* what, int& device) {
  if (in.cuda_device < 0) return;
  if (device >= 0 && in.cuda_device != device) {
    Check(InvalidArgument(std::string(what) + ": tensor '" + name + "' is on CUDA device " +
                          std::to_string(in.cuda_device) + ", the others on " + std::to_string(device)));
  }
  device = in.cuda_device;
}

TensorView ViewOf(const InTensor& in) {
  return Unwrap(MakeTensorView(in.dtype, in.shape, ConstBytes(in.data, in.nbytes)));
}

TensorDestination DestinationOf(const std::string& name, const InTensor& in) {
  return {name, in.dtype, in.shape, MutableBytes(in.data, in.nbytes)};
}

ProgressFn Progress(nb::object callback) {
  if (callback.is_none()) return {};
  auto held = std::make_shared<nb::object>(std::move(callback));
  return [held](uint64_t done, uint64_t total) {
    nb::gil_scoped_acquire gil;
    (*held)(done, total);
  };
}

}  // namespace mooncake_connector::binding
