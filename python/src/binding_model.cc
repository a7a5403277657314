// Models and their readers in mooncake_connector._impl (binding_internal.h).
#include <nanobind/stl/function.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "binding_internal.h"

namespace mooncake_connector::binding {
namespace {

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
    d["xxh3_piece"] = p.checksum_piece;
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
  nb::list NextBatch() { return Capsules(&ModelReader::NextBatch); }
  // The same for the whole rank at once (ModelReader::LoadAll).
  nb::list LoadAll() { return Capsules(&ModelReader::LoadAll); }

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
      NoteCudaDevice(in, name, "load_into_cuda", device);
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
  nb::list Capsules(Result<std::vector<NamedTensor>> (ModelReader::*read)()) {
    Result<std::vector<NamedTensor>> r = std::vector<NamedTensor>();
    {
      nb::gil_scoped_release release;
      r = (r_.get()->*read)();
    }
    nb::list out;
    for (NamedTensor& t : Unwrap(std::move(r))) out.append(nb::make_tuple(t.name, DLPackCapsule(t.tensor)));
    return out;
  }

  std::unique_ptr<ModelReader> r_;
};

}  // namespace

void BindModel(nb::module_& m) {
  nb::class_<PyModelReader>(m, "ModelReader")
      .def("tensors", &PyModelReader::Tensors)
      .def("next_batch", &PyModelReader::NextBatch)
      .def("load_all", &PyModelReader::LoadAll)
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
      // Tensors in CPU memory, or on one CUDA device (their copies to the
      // host queued on `stream`, SaveStateDictCuda).
      .def("save_state_dict",
           [](Model& model, int rank, const NamedArrays& tensors, int world_size, const std::string& layout,
              uint64_t batch_bytes, nb::object progress, bool pin, uintptr_t stream) {
             std::vector<NamedTensorView> views;
             views.reserve(tensors.size());
             int device = -1;
             for (const auto& [name, array] : tensors) {
               InTensor in = FromArray(array, name, kCpuOrCuda);
               NoteCudaDevice(in, name, "save_state_dict", device);
               views.push_back({name, ViewOf(in), in.cuda_device >= 0});
             }
             SaveOptions o;
             o.world_size = world_size;
             o.layout = Unwrap(ParseModelLayout(layout));
             o.batch_bytes = batch_bytes;
             o.progress = Progress(std::move(progress));
             o.pin = pin;
             nb::gil_scoped_release release;
             Check(device < 0 ? model.SaveStateDict(rank, views, o)
                              : model.SaveStateDictCuda(rank, views, CudaTarget{device, stream}, o));
           },
           nb::arg("rank"), nb::arg("tensors"), nb::arg("world_size"), nb::arg("layout"), nb::arg("batch_bytes"),
           nb::arg("progress").none(), nb::arg("pin") = true, nb::arg("stream") = 0)
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
           [](Model& model, int rank, bool verify, uint64_t batch_bytes, nb::object progress, bool streaming,
              bool advise_huge_pages) {
             LoadOptions o;
             o.verify = verify;
             o.batch_bytes = batch_bytes;
             o.streaming = streaming;
             o.advise_huge_pages = advise_huge_pages;
             o.progress = Progress(std::move(progress));
             Result<std::unique_ptr<ModelReader>> r = std::unique_ptr<ModelReader>();
             {
               nb::gil_scoped_release release;
               r = model.OpenReader(rank, o);
             }
             return new PyModelReader(Unwrap(std::move(r)));
           },
           nb::arg("rank"), nb::arg("verify"), nb::arg("batch_bytes"), nb::arg("progress").none(),
           nb::arg("streaming") = false, nb::arg("advise_huge_pages") = true, nb::keep_alive<0, 1>());

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
}

}  // namespace mooncake_connector::binding
