// The private extension module mooncake_connector._impl. It only converts
// types; the logic lives in the C++ library. Status errors become Python
// exceptions in one place: _errors.from_status, called by the translator below.
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

enum Where { kCpu, kCuda };

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
  if ((where == kCuda) != (in.cuda_device >= 0)) {
    Check(InvalidArgument("tensor '" + name + "' is " + (in.cuda_device >= 0 ? "on a CUDA device" : "in CPU memory") +
                          ", " + (where == kCuda ? "a CUDA device's" : "CPU memory") + " was expected"));
  }
  return in;
}

TensorView ViewOf(const InTensor& in) {
  return Unwrap(MakeTensorView(in.dtype, in.shape, ConstBytes(in.data, in.nbytes)));
}

TensorDestination DestinationOf(const std::string& name, const InTensor& in) {
  return {name, in.dtype, in.shape, MutableBytes(in.data, in.nbytes)};
}

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

using WritableBytes = nb::ndarray<uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

ConstBytes AsConst(const ByteArray& a) {
  return ConstBytes(reinterpret_cast<const std::byte*>(a.data()), a.size());
}

// A Python progress callable, called from C++ with the GIL taken; None: none.
ProgressFn Progress(nb::object callback) {
  if (callback.is_none()) return {};
  auto held = std::make_shared<nb::object>(std::move(callback));
  return [held](uint64_t done, uint64_t total) {
    nb::gil_scoped_acquire gil;
    (*held)(done, total);
  };
}

nb::dict ManifestDict(const ManifestPart& p) {
  nb::dict d;
  d["state"] = p.state == SaveState::kComplete ? "complete" : "saving";
  d["created"] = p.created;
  d["tool"] = p.tool;
  d["format_version"] = p.format_version;
  d["world_size"] = p.world_size;
  d["bytes"] = p.StoredBytes();
  if (p.rank) {
    d["rank"] = *p.rank;
    d["layout"] = ModelLayoutName(p.layout);
    d["tensors"] = p.tensors.size();
  } else {
    d["files"] = p.files.size();
  }
  return d;
}

nb::dict InfoDict(const ModelInfo& m) {
  nb::dict d;
  d["name"] = m.name;
  d["has_manifest"] = m.has_manifest;
  d["complete"] = m.complete;
  d["world_size"] = m.world_size;
  // "checkpoint" / "engine" (ModelInfo::layout); None when nothing tells.
  if (m.layout) {
    d["layout"] = ModelLayoutName(*m.layout);
  } else {
    d["layout"] = nb::none();
  }
  d["ranks"] = m.ranks;
  d["bytes"] = m.bytes;
  d["tensors"] = m.tensors;
  d["files"] = m.files;
  d["created"] = m.created;
  d["tool"] = m.tool;
  d["problems"] = m.problems;
  d["missing"] = m.missing;
  d["listed"] = m.listed;
  nb::list parts;
  for (const ManifestPart& p : m.parts) parts.append(ManifestDict(p));
  d["parts"] = parts;
  return d;
}

class PyModelReader {
 public:
  explicit PyModelReader(std::unique_ptr<ModelReader> r) : r_(std::move(r)) {}

  // [(name, dtype name or None, shape or None, nbytes, alias_of)]
  nb::list Tensors() const {
    nb::list out;
    for (const ManifestTensor& t : r_->tensors()) {
      if (r_->has_manifest()) {
        out.append(nb::make_tuple(t.name, std::string(DTypeName(t.dtype)), t.shape, t.nbytes, t.alias_of));
      } else {
        out.append(nb::make_tuple(t.name, nb::none(), nb::none(), nb::none(), ""));
      }
    }
    return out;
  }

  // [(name, DLPack capsule)] for torch.from_dlpack; empty at the end. One
  // capsule per tensor rather than an array that torch then views and
  // reshapes: a batch of thousands of small tensors made that many Python
  // objects that its garbage collector spent a third of the load on.
  nb::list NextBatch() {
    Result<std::vector<NamedTensor>> r = std::vector<NamedTensor>();
    {
      nb::gil_scoped_release release;
      r = r_->NextBatch();
    }
    nb::list out;
    for (NamedTensor& t : Unwrap(std::move(r))) out.append(nb::make_tuple(t.name, DLPackCapsule(t.tensor)));
    return out;
  }

  // Destinations in this process's memory.
  std::vector<std::string> LoadInto(const NamedArrays& tensors) {
    std::vector<TensorDestination> dests;
    dests.reserve(tensors.size());
    for (const auto& [name, array] : tensors) dests.push_back(DestinationOf(name, FromArray(array, name, kCpu)));
    nb::gil_scoped_release release;
    return Unwrap(r_->LoadInto(dests));
  }

  // Destinations in the memory of one CUDA device; copies queued on `stream`.
  std::vector<std::string> LoadIntoCuda(const NamedArrays& tensors, uintptr_t stream) {
    std::vector<TensorDestination> dests;
    dests.reserve(tensors.size());
    int device = -1;
    for (const auto& [name, array] : tensors) {
      InTensor in = FromArray(array, name, kCuda);
      if (device >= 0 && in.cuda_device != device) {
        Check(InvalidArgument("load_into_cuda: tensor '" + name + "' is on CUDA device " +
                              std::to_string(in.cuda_device) + ", the others on " + std::to_string(device)));
      }
      device = in.cuda_device;
      dests.push_back(DestinationOf(name, in));
    }
    nb::gil_scoped_release release;
    return Unwrap(r_->LoadIntoCuda(dests, CudaTarget{std::max(device, 0), stream}));
  }

  // Pieces of stored tensors (ModelReader::ReadPieces) into CPU memory
  // (byte tensors of the pieces' sizes): raises the first piece's error.
  void ReadPieces(const std::vector<size_t>& indices, const std::vector<uint64_t>& offsets,
                  const std::vector<AnyArray>& into) {
    if (offsets.size() != indices.size() || into.size() != indices.size()) {
      Check(InvalidArgument("read_pieces: indices, offsets and destinations differ in length"));
    }
    std::vector<TensorPiece> pieces;
    pieces.reserve(indices.size());
    for (size_t i = 0; i < indices.size(); ++i) {
      InTensor in = FromArray(into[i], "piece " + std::to_string(i), kCpu);
      pieces.push_back({indices[i], offsets[i], MutableBytes(in.data, in.nbytes)});
    }
    std::vector<Status> results;
    {
      nb::gil_scoped_release release;
      results = r_->ReadPieces(pieces);
    }
    for (const Status& s : results) Check(s);
  }

  void CheckAssembled(size_t index, const AnyArray& data) {
    InTensor in = FromArray(data, "assembled tensor", kCpu);
    Status s;
    {
      nb::gil_scoped_release release;
      s = r_->CheckAssembled(index, ConstBytes(in.data, in.nbytes));
    }
    Check(s);
  }

  ModelReader& get() { return *r_; }

 private:
  std::unique_ptr<ModelReader> r_;
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

  m.def("list_models", [](PyConnector& c) {
    Result<std::vector<ModelInfo>> r = std::vector<ModelInfo>();
    {
      nb::gil_scoped_release release;
      r = ListModels(c.get());
    }
    nb::list out;
    for (const ModelInfo& m : Unwrap(std::move(r))) out.append(InfoDict(m));
    return out;
  });
  m.def("tool_version", &ToolVersion);

  nb::class_<PyModelReader>(m, "ModelReader")
      .def("tensors", &PyModelReader::Tensors)
      .def("next_batch", &PyModelReader::NextBatch)
      .def("load_into", &PyModelReader::LoadInto)
      .def("load_into_cuda", &PyModelReader::LoadIntoCuda)
      // PlanDeviceGroups: [(fill [(name, dtype, shape, nbytes)],
      // hand_out [(name, stored name)], drop [stored name])].
      .def("device_groups",
           [](PyModelReader& r, uint64_t group_bytes) {
             const std::vector<ManifestTensor>& t = r.get().tensors();
             nb::list out;
             for (const DeviceGroup& g : Unwrap(r.get().PlanDeviceGroups(group_bytes))) {
               nb::list fill, hand_out, drop;
               for (size_t i : g.fill) {
                 fill.append(nb::make_tuple(t[i].name, std::string(DTypeName(t[i].dtype)), t[i].shape, t[i].nbytes));
               }
               for (size_t i : g.hand_out) {
                 hand_out.append(nb::make_tuple(t[i].name, t[i].alias_of.empty() ? t[i].name : t[i].alias_of));
               }
               for (size_t i : g.drop) drop.append(t[i].name);
               out.append(nb::make_tuple(fill, hand_out, drop));
             }
             return out;
           })
      .def("read_pieces", &PyModelReader::ReadPieces)
      .def("check_assembled", &PyModelReader::CheckAssembled)
      // PlanShares over the manifest's tensors:
      // [(end, [(index, offset, size, owner, whole)])].
      .def("plan_shares",
           [](PyModelReader& r, int world, uint64_t batch_bytes, bool split, std::optional<uint64_t> min_piece_bytes) {
             nb::list out;
             for (const ShareBatch& b : Unwrap(r.get().PlanShares(world, batch_bytes, split, min_piece_bytes))) {
               nb::list pieces;
               for (const SharePiece& p : b.pieces) {
                 pieces.append(nb::make_tuple(p.index, p.offset, p.size, p.owner, p.whole));
               }
               out.append(nb::make_tuple(b.end, pieces));
             }
             return out;
           },
           nb::arg("world"), nb::arg("batch_bytes"), nb::arg("split") = true, nb::arg("min_piece_bytes").none() = nb::none())
      .def_prop_ro("has_manifest", [](PyModelReader& r) { return r.get().has_manifest(); })
      .def_prop_ro("total_bytes", [](PyModelReader& r) { return r.get().total_bytes(); });

  nb::class_<Model>(m, "Model")
      .def_static("open", [](PyConnector& c) { return Unwrap(Model::Open(c.get())); }, nb::keep_alive<0, 1>())
      .def_prop_ro("name", &Model::name)
      .def("tensor_key", &Model::TensorKey)
      .def("file_key", &Model::FileKey)
      .def("pull_files",
           [](Model& model, std::optional<std::vector<std::string>> allow,
              std::optional<std::vector<std::string>> ignore) { return Unwrap(model.PullFiles(allow, ignore)); },
           nb::arg("allow").none(), nb::arg("ignore").none(), nb::call_guard<nb::gil_scoped_release>())
      .def("save_state_dict",
           [](Model& model, int rank, const NamedArrays& tensors, int world_size, const std::string& layout,
              uint64_t batch_bytes, nb::object progress, bool pin) {
             std::vector<NamedTensorView> views;
             views.reserve(tensors.size());
             for (const auto& [name, array] : tensors) views.push_back({name, ViewOf(FromArray(array, name, kCpu))});
             SaveOptions o;
             o.world_size = world_size;
             o.layout = Unwrap(ParseModelLayout(layout));
             o.batch_bytes = batch_bytes;
             o.progress = Progress(std::move(progress));
             o.pin = pin;
             nb::gil_scoped_release release;
             Check(model.SaveStateDict(rank, views, o));
           },
           nb::arg("rank"), nb::arg("tensors"), nb::arg("world_size"), nb::arg("layout"), nb::arg("batch_bytes"),
           nb::arg("progress").none(), nb::arg("pin") = true)
      .def("save_files",
           [](Model& model, const std::vector<std::string>& paths, std::vector<ByteArray> arrays,
              uint64_t batch_bytes, nb::object progress, bool pin) {
             std::vector<FileContent> files;
             for (size_t i = 0; i < paths.size(); ++i) files.push_back({paths[i], AsConst(arrays[i])});
             SaveOptions o;
             o.batch_bytes = batch_bytes;
             o.progress = Progress(std::move(progress));
             o.pin = pin;
             nb::gil_scoped_release release;
             Check(model.SaveFiles(files, o));
           },
           nb::arg("paths"), nb::arg("arrays"), nb::arg("batch_bytes"), nb::arg("progress").none(),
           nb::arg("pin") = true)
      .def("save_directory",
           [](Model& model, const std::string& dir, uint64_t batch_bytes, nb::object progress,
              bool links_outside, bool pin) {
             SaveOptions o;
             o.batch_bytes = batch_bytes;
             o.progress = Progress(std::move(progress));
             o.links_outside = links_outside;
             o.pin = pin;
             uint64_t written = 0;
             o.written_bytes = &written;
             nb::gil_scoped_release release;
             Check(model.SaveDirectory(dir, o));
             return written;
           },
           nb::arg("dir"), nb::arg("batch_bytes"), nb::arg("progress").none(), nb::arg("links_outside") = false,
           nb::arg("pin") = true)
      // The manifest part of rank `rank` (the files' part for None) as
      // ManifestDict, or None when there is none: one store read, no listing.
      .def("manifest",
           [](Model& model, std::optional<int> rank) -> nb::object {
             Result<std::optional<ManifestPart>> r = std::optional<ManifestPart>();
             {
               nb::gil_scoped_release release;
               r = model.ReadManifest(rank);
             }
             std::optional<ManifestPart> part = Unwrap(std::move(r));
             if (!part) return nb::none();
             return ManifestDict(*part);
           },
           nb::arg("rank").none())
      .def("inspect",
           [](Model& model) {
             Result<ModelInfo> r = ModelInfo();
             {
               nb::gil_scoped_release release;
               r = model.Inspect();
             }
             return InfoDict(Unwrap(std::move(r)));
           })
      .def("verify",
           [](Model& model, nb::object progress) {
             ProgressFn p = Progress(std::move(progress));
             Result<VerifyReport> r = VerifyReport();
             {
               nb::gil_scoped_release release;
               r = model.Verify(p);
             }
             VerifyReport v = Unwrap(std::move(r));
             nb::dict d;
             d["tensors"] = v.tensors;
             d["files"] = v.files;
             d["bytes"] = v.bytes;
             d["problems"] = v.problems;
             return d;
           },
           nb::arg("progress").none())
      .def("remove", [](Model& model) { return Unwrap(model.Remove()); },
           nb::call_guard<nb::gil_scoped_release>())
      .def("reader",
           [](Model& model, int rank, bool verify, uint64_t batch_bytes, nb::object progress, bool streaming) {
             LoadOptions o;
             o.verify = verify;
             o.batch_bytes = batch_bytes;
             o.streaming = streaming;
             o.progress = Progress(std::move(progress));
             Result<std::unique_ptr<ModelReader>> r = std::unique_ptr<ModelReader>();
             {
               nb::gil_scoped_release release;
               r = model.OpenReader(rank, o);
             }
             return new PyModelReader(Unwrap(std::move(r)));
           },
           nb::arg("rank"), nb::arg("verify"), nb::arg("batch_bytes"), nb::arg("progress").none(),
           nb::arg("streaming") = false, nb::keep_alive<0, 1>());
}
