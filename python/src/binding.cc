// The private extension module mooncake_connector._impl: the module and the
// connector (models: binding_model.cc; conversions: binding_convert.cc). It
// only converts types; the logic lives in the C++ library. Status errors
// become Python exceptions in one place: _errors.from_status, called by the
// translator below.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstring>

#include "mooncake_connector/connector.h"
#include "mooncake_connector/dlpack.h"
#include "mooncake_connector/model.h"
#include "mooncake_connector/mooncake_store.h"
#include "mooncake_connector/value_format.h"
#include "binding_internal.h"
#include "mooncake_provider.h"

using namespace mooncake_connector;
using namespace mooncake_connector::binding;

namespace {

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
      // Messages name untrusted things (file names, keys) that need not be
      // UTF-8: undecodable bytes are shown escaped rather than lost to a
      // UnicodeDecodeError.
      std::string_view text = e.status.message();
      nb::object message = nb::steal(PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()),
                                                           "backslashreplace"));
      if (!message.is_valid()) {
        PyErr_Clear();
        message = nb::str("(an undecodable message)");
      }
      nb::object exc = errors.attr("from_status")(static_cast<int>(e.status.code()), message);
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
  // The memory a mooncake:// connector of `url` with `options` contributes
  // to the cluster as its own segment (0: a pure or standalone client, or
  // another scheme). What Mooncake places there goes with the process.
  m.def("own_segment_bytes", [](const std::string& text, const std::map<std::string, std::string>& options) {
    Result<Url> url = ParseUrl(text);
    if (!url.ok() || url->scheme != "mooncake") return uint64_t{0};
    Result<MooncakeConfig> config = MooncakeConfigFrom(*url, options);
    if (!config.ok() || !config->client_address.empty()) return uint64_t{0};
    return config->global_segment_size;
  });
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
      .def("close", [](PyConnector& s) { Check(s.get().Close()); },
           nb::call_guard<nb::gil_scoped_release>())
      .def_prop_ro("closed", [](PyConnector& s) { return s.get().closed(); })
      .def_prop_ro("url", [](PyConnector& s) { return s.get().url().ToString(); })
      .def_prop_ro("model_name", [](PyConnector& s) { return s.get().model_name(); })
      .def_prop_ro("device", [](PyConnector& s) { return s.get().device(); });

  m.def("tool_version", &ToolVersion);

  BindModel(m);
}
