// The private extension module mooncake_connector._impl. It only converts
// types; the logic lives in the C++ library. Status errors become Python
// exceptions in one place: _errors.from_status, called by the translator below.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstring>

#include "mooncake_connector/connector.h"
#include "mooncake_connector/mooncake_store.h"
#include "mooncake_connector/value_format.h"
#include "mooncake_provider.h"

namespace nb = nanobind;
using namespace mooncake_connector;

namespace {

struct StatusError {
  Status status;
};

void Check(const Status& s) {
  if (!s.ok()) throw StatusError{s};
}

template <typename T>
T Unwrap(Result<T> r) {
  if (!r.ok()) throw StatusError{r.status()};
  return std::move(r).value();
}

using ByteArray = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// A 1-d uint8 numpy array over a buffer's bytes; the array keeps them alive.
nb::object BytesArray(const Buffer& buffer) {
  auto* keep = new Buffer(buffer);
  nb::capsule owner(keep, [](void* p) noexcept { delete static_cast<Buffer*>(p); });
  return nb::cast(nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(keep->data(), {keep->size()}, owner));
}

class PyConnector {
 public:
  explicit PyConnector(std::unique_ptr<Connector> c) : c_(std::move(c)) {}

  void SetTensor(const std::string& key, ByteArray data, const std::string& dtype_name,
                 const std::vector<int64_t>& shape) {
    DType dtype = Unwrap(ParseDType(dtype_name));
    TensorView view = Unwrap(MakeTensorView(
        dtype, shape, ConstBytes(reinterpret_cast<const std::byte*>(data.data()), data.size())));
    Status s;
    {
      nb::gil_scoped_release release;
      s = c_->Set(key, view);
    }
    Check(s);
  }

  // None, or (uint8 array, dtype name, shape).
  nb::object GetTensor(const std::string& key) {
    Result<std::optional<Tensor>> r = std::optional<Tensor>();
    {
      nb::gil_scoped_release release;
      r = c_->Get(key);
    }
    std::optional<Tensor> t = Unwrap(std::move(r));
    if (!t) return nb::none();
    return nb::make_tuple(BytesArray(t->buffer()), std::string(DTypeName(t->dtype())), t->shape());
  }

  Connector& get() { return *c_; }

 private:
  std::unique_ptr<Connector> c_;
};

// Result<T> -> T (or raise) for methods that run without the GIL.
template <auto Method, typename... Args>
auto Call(PyConnector& self, Args... args) {
  return Unwrap((self.get().*Method)(args...));
}

}  // namespace

NB_MODULE(_impl, m) {
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const StatusError& e) {
      nb::object errors = nb::module_::import_("mooncake_connector._errors");
      nb::object exc = errors.attr("from_status")(static_cast<int>(e.status.code()),
                                                  std::string(e.status.message()));
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    }
  });

  // Inside Python, mooncake:// uses the wheel unless MOONCAKE_STORE_LIBRARY
  // names a native library.
  SetDefaultMooncakeApi(mooncake_connector::python::PythonMooncakeApi());
  // The provider table for C++ code embedding Python (tests/cpp).
  m.def("mooncake_api_capsule", [] {
    return nb::capsule(mooncake_connector::python::PythonMooncakeApi(), "mooncake_connector.mooncake_api");
  });

  m.def("supported_schemes", &SupportedSchemes);
  // Every StatusCode by name (codes are contiguous from kOk), so a test can
  // hold _errors.py's table to the C++ enum.
  m.def("status_codes", [] {
    std::map<std::string, int> out;
    for (int c = 0;; ++c) {
      std::string_view name = StatusCodeName(static_cast<StatusCode>(c));
      if (name == "Unknown") break;
      out.emplace(name, c);
    }
    return out;
  });
  // The value format without a store: for interop checks and tools.
  m.def("encode_tensor", [](ByteArray data, const std::string& dtype_name,
                            const std::vector<int64_t>& shape) {
    TensorView view = Unwrap(MakeTensorView(
        Unwrap(ParseDType(dtype_name)), shape,
        ConstBytes(reinterpret_cast<const std::byte*>(data.data()), data.size())));
    EncodedTensor encoded = Unwrap(EncodeTensor(view));
    std::string blob = encoded.header;
    blob.append(reinterpret_cast<const char*>(encoded.data.data()), encoded.data.size());
    return nb::bytes(blob.data(), blob.size());
  });
  m.def("decode_tensor", [](nb::bytes blob) {
    Buffer buffer = Unwrap(Buffer::Allocate(blob.size()));
    if (blob.size() > 0) std::memcpy(buffer.data(), blob.c_str(), blob.size());
    Tensor t = Unwrap(DecodeTensor(buffer));
    return nb::make_tuple(BytesArray(t.buffer()), std::string(DTypeName(t.dtype())), t.shape());
  });

  nb::class_<PyConnector>(m, "Connector")
      .def_static(
          "create",
          [](const std::string& url, const std::string& device,
             const std::map<std::string, std::string>& options) {
            ConnectorOptions o;
            o.device = device;
            o.options = options;
            return new PyConnector(Unwrap(Connector::Create(url, o)));
          },
          nb::arg("url"), nb::arg("device"), nb::arg("options"),
          nb::call_guard<nb::gil_scoped_release>())
      .def("set_tensor", &PyConnector::SetTensor)
      .def("get_tensor", &PyConnector::GetTensor)
      .def("setstr",
           [](PyConnector& s, const std::string& key, const std::string& value) {
             Check(s.get().SetStr(key, value));
           },
           nb::call_guard<nb::gil_scoped_release>())
      .def("setbytes",
           [](PyConnector& s, const std::string& key, ByteArray data) {
             Check(s.get().SetBytes(
                 key, ConstBytes(reinterpret_cast<const std::byte*>(data.data()), data.size())));
           },
           nb::call_guard<nb::gil_scoped_release>())
      .def("getbytes",
           [](PyConnector& s, const std::string& key) -> nb::object {
             Result<std::optional<Buffer>> r = std::optional<Buffer>();
             {
               nb::gil_scoped_release release;
               r = s.get().GetBytes(key);
             }
             std::optional<Buffer> b = Unwrap(std::move(r));
             if (!b) return nb::none();
             return nb::bytes(reinterpret_cast<const char*>(b->data()), b->size());
           })
      .def("getstr",
           [](PyConnector& s, const std::string& key) {
             return Call<&Connector::GetStr, std::string_view>(s, key);
           },
           nb::call_guard<nb::gil_scoped_release>())
      .def("list",
           [](PyConnector& s, const std::string& prefix) {
             return Call<&Connector::List, std::string_view>(s, prefix);
           },
           nb::call_guard<nb::gil_scoped_release>())
      .def("exists",
           [](PyConnector& s, const std::string& key) {
             return Call<&Connector::Exists, std::string_view>(s, key);
           },
           nb::call_guard<nb::gil_scoped_release>())
      .def("remove",
           [](PyConnector& s, const std::string& key) {
             return Call<&Connector::Remove, std::string_view>(s, key);
           },
           nb::call_guard<nb::gil_scoped_release>())
      .def("get_local_dir", [](PyConnector& s) { return Call<&Connector::GetLocalDir>(s); })
      .def("pull_files",
           [](PyConnector& s, std::optional<std::vector<std::string>> allow,
              std::optional<std::vector<std::string>> ignore) {
             return Unwrap(s.get().PullFiles(allow, ignore));
           },
           nb::arg("allow").none(), nb::arg("ignore").none(), nb::call_guard<nb::gil_scoped_release>())
      .def("close", [](PyConnector& s) { Check(s.get().Close()); },
           nb::call_guard<nb::gil_scoped_release>())
      .def_prop_ro("closed", [](PyConnector& s) { return s.get().closed(); })
      .def_prop_ro("url", [](PyConnector& s) { return s.get().url().ToString(); })
      .def_prop_ro("model_name", [](PyConnector& s) { return s.get().model_name(); })
      .def_prop_ro("device", [](PyConnector& s) { return s.get().device(); });
}
