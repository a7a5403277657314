// What the files of the extension module mooncake_connector._impl share
// (binding.cc: the module, the connector; binding_model.cc: models and
// their readers; binding_convert.cc: the conversions). The binding only
// converts types; the logic lives in the C++ library.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "mooncake_connector/connector.h"
#include "mooncake_connector/model.h"

namespace mooncake_connector::binding {

namespace nb = nanobind;

// A failed Status on its way to Python: the module's exception translator
// turns it into the _errors.py exception of its code.
struct StatusError {
  Status status;
};

inline void Check(const Status& s) {
  if (!s.ok()) throw StatusError{s};
}

template <typename T>
T Unwrap(Result<T> r) {
  if (!r.ok()) throw StatusError{r.status()};
  return std::move(r).value();
}

using ByteArray = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
ConstBytes AsConst(const ByteArray& a);
nb::object BytesArray(const Buffer& buffer);
nb::object DLPackCapsule(const Tensor& tensor);

// The one way tensors come in from Python: a DLPack capsule (_tensors.py's
// to_dlpack; an object with __dlpack__ works too, slower), compact
// row-major, of a dtype safetensors names. The array holds the tensor's
// memory for as long as it lives.
using AnyArray = nb::ndarray<>;
using NamedArrays = std::vector<std::pair<std::string, AnyArray>>;

struct InTensor {
  DType dtype = DType::kU8;
  Shape shape;
  std::byte* data = nullptr;
  uint64_t nbytes = 0;
  int cuda_device = -1;  // the CUDA device it is on; -1: CPU memory
};

enum Where { kCpu, kCuda, kCpuOrCuda };

InTensor FromArray(const AnyArray& a, const std::string& name, Where where);
// A call's tensors on CUDA are all on one device: `device` (-1 until the
// first) becomes that of `in`, or `what` raises naming `name`'s.
void NoteCudaDevice(const InTensor& in, const std::string& name, const char* what, int& device);
TensorView ViewOf(const InTensor& in);
TensorDestination DestinationOf(const std::string& name, const InTensor& in);

// A Python progress callable, called from C++ with the GIL taken; None: none.
ProgressFn Progress(nb::object callback);

// The Connector as _impl.Connector: its tensors cross by DLPack.
class PyConnector {
 public:
  explicit PyConnector(std::unique_ptr<Connector> c) : c_(std::move(c)) {}

  void SetTensor(const std::string& key, const AnyArray& array) {
    TensorView view = ViewOf(FromArray(array, key, kCpu));
    Status s;
    {
      nb::gil_scoped_release release;
      s = c_->Set(key, view);
    }
    Check(s);
  }

  // None, or a DLPack capsule of the tensor (torch.from_dlpack).
  nb::object GetTensor(const std::string& key) {
    Result<std::optional<Tensor>> r = std::optional<Tensor>();
    {
      nb::gil_scoped_release release;
      r = c_->Get(key);
    }
    std::optional<Tensor> t = Unwrap(std::move(r));
    if (!t) return nb::none();
    return DLPackCapsule(*t);
  }

  Connector& get() { return *c_; }

 private:
  std::unique_ptr<Connector> c_;
};

// Binds Model, ModelReader and list_models (binding_model.cc).
void BindModel(nb::module_& m);

}  // namespace mooncake_connector::binding
