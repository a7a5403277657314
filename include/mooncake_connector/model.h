// Model weights and files in a store, in SGLang's layout, with a manifest.
// Normative description: docs/model_layout.md.
//
//   {model}/keys/rank_{r}/{param}   one tensor value per parameter (SGLang's)
//   {model}/files/{relative path}   raw file bytes (SGLang's)
//   {model}/manifest/rank_{r}.json  our manifest of rank r's tensors
//   {model}/manifest/files.json     our manifest of the files
//
//   auto c = Connector::Create("mooncake:///org/model");
//   Model m = Model::Open(**c).value();
//   m.SaveDirectory("/models/org/model", {});          // rank 0 + files
//   auto reader = m.OpenReader(0, {});                  // batches of tensors
//
// A manifest part is written with state "saving" before the first value and
// rewritten with state "complete" after the last, so a save that fails or is
// killed never looks complete; saving again resumes (values already stored
// with the same checksum are skipped) and finishes it. Models without a
// manifest (written by SGLang itself, or by hand) load by listing.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mooncake_connector/connector.h"
#include "mooncake_connector/export.h"
#include "mooncake_connector/status.h"
#include "mooncake_connector/store.h"
#include "mooncake_connector/tensor.h"

namespace mooncake_connector {
// Version 4: a rank part records "xxh3_piece", and a tensor longer than that
// has as checksum the XXH3-64 of its pieces' XXH3-64s (so that one large
// tensor is hashed on several threads); version 3 and before (still read):
// the XXH3-64 of all its bytes. Version 3: every save has an id, recorded in
// its parts and, with kSaveMarker, in the "__metadata__" of every tensor
// value it writes; each tensor entry names the save that wrote its value.
// Version 2 (still read): values carry kManifestMarker only. Version 1 (still
// read): neither.
inline constexpr int kManifestFormatVersion = 4;
// The piece size of tensors' checksums that saves record (version 4).
inline constexpr uint64_t kTensorChecksumPiece = uint64_t{16} << 20;
// The "__metadata__" entry of a tensor value saved with a manifest; its value
// is the manifest part's key. A load that finds no manifest refuses such a
// value: the model is incomplete or lost in part, not an SGLang model.
inline constexpr const char* kManifestMarker = "mooncake_connector.manifest";
// The "__metadata__" entry naming the save that wrote a tensor value (16 hex
// digits): a load meets another save's value as a header that differs from
// the one the manifest implies, with or without checksums.
inline constexpr const char* kSaveMarker = "mooncake_connector.save";

// The most ranks a model may be saved for (manifests with more are refused).
inline constexpr int kMaxWorldSize = 1 << 16;

// "mooncake-connector X.Y.Z": written into manifests.
MC_EXPORT std::string ToolVersion();

struct ManifestTensor {
  std::string name;
  DType dtype = DType::kU8;
  Shape shape;
  uint64_t nbytes = 0;
  uint64_t checksum = 0;  // XXH3-64 of the tensor bytes, in pieces (ManifestPart::checksum_piece)
  // Non-empty: this tensor shares storage with the named one; only that one
  // is stored, and loads give both names the same tensor.
  std::string alias_of;
  // The save that wrote the stored value (version 3; 0 before, and for an
  // alias): a resumed save keeps values an earlier save wrote.
  uint64_t save_id = 0;
};

struct ManifestFile {
  std::string path;  // relative, '/'-separated
  uint64_t size = 0;
  uint64_t checksum = 0;  // XXH3-64 of the bytes
};

enum class SaveState { kSaving, kComplete };

// How a model's tensors are named and split (docs/model_layout.md):
//  kEngine      per-rank engine state dicts (SGLang's save_model layout: its
//               fused, sharded parameter names), tied to the tensor-parallel
//               degree they were saved with (world_size).
//  kCheckpoint  the checkpoint's own tensor names, unsharded, as rank 0 of 1
//               (what SaveDirectory writes): an engine renames, fuses and
//               shards them itself (SGLang's load_weights), so it serves any
//               tensor-parallel degree.
enum class ModelLayout { kEngine, kCheckpoint };
MC_EXPORT const char* ModelLayoutName(ModelLayout layout);  // "engine" / "checkpoint"
MC_EXPORT Result<ModelLayout> ParseModelLayout(std::string_view name);

// One manifest object: a rank's tensors or the model's files.
struct ManifestPart {
  int format_version = kManifestFormatVersion;
  std::string tool;
  std::string created;  // UTC, ISO 8601 (when this save started)
  SaveState state = SaveState::kSaving;
  std::optional<int> rank;  // set for a rank part, unset for the files part
  int world_size = 1;       // ranks the model was saved for
  // Of a rank part; a part without "layout" (written before it existed) is
  // kEngine. kCheckpoint needs world_size 1.
  ModelLayout layout = ModelLayout::kEngine;
  std::vector<ManifestTensor> tensors;
  std::vector<ManifestFile> files;
  // This save's id (version 3; 0 before): random, new for every save, so a
  // save can tell that another save of the same part has started meanwhile.
  uint64_t save_id = 0;
  // Of a rank part of version 4: tensors' checksums are taken in pieces of
  // this many bytes; 0 (before version 4, and the files part): of all their
  // bytes at once.
  uint64_t checksum_piece = kTensorChecksumPiece;

  uint64_t StoredBytes() const;  // tensors (aliases once) and files
};

// JSON text of a part, and its strict parser (the bytes come from the store:
// untrusted). DataLoss naming what is wrong.
MC_EXPORT std::string EncodeManifest(const ManifestPart& part);
MC_EXPORT Result<ManifestPart> ParseManifest(std::string_view json_text);

// Called with (bytes done, bytes in all) as work proceeds; may be called from
// the thread that runs the operation only.
using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;

struct SaveOptions {
  int world_size = 1;
  // What SaveStateDict records (SaveDirectory always writes kCheckpoint).
  // kCheckpoint needs world_size 1.
  ModelLayout layout = ModelLayout::kEngine;
  WriteOptions write;
  // One batched store call moves at most this many bytes (and at least one
  // value).
  uint64_t batch_bytes = uint64_t{256} << 20;
  ProgressFn progress;
  // Values and manifests are written with Mooncake's hard pin (never
  // evicted), on top of `write`; false leaves what `write` and the store's
  // own pin option say (an unpinned value may be evicted under memory
  // pressure). Stores that never evict ignore it.
  bool pin = true;
  // SaveDirectory follows links (files and folders) that stay inside the
  // folder, or inside a Hugging Face cache's blobs; with this, also links
  // that lead anywhere else.
  bool links_outside = false;
  // When set, the bytes (tensor data, file bytes) this save wrote are added
  // to it: what an earlier save left intact is not written again.
  uint64_t* written_bytes = nullptr;
  // Called before each batch is written and before the save is published:
  // an error stops the save unfinished (SaveDirectory uses it to stop when a
  // file it saves changes under it).
  std::function<Status()> check_sources;
};

struct LoadOptions {
  bool verify = true;  // check each tensor's checksum against the manifest
  uint64_t batch_bytes = uint64_t{256} << 20;
  // Whether NextBatch prepares the next batch's storage while it fetches: it
  // allocates it and faults its pages in on helper threads (one batch more
  // memory; the faulting not where MOONCAKE_CONNECTOR_PREFAULT=0). Unset: on
  // machines of four or more cores (on two, the fetch keeps both busy and it
  // only slowed loads).
  std::optional<bool> prepare_next_batch;
  // Whether the caller lets go of each batch's tensors before it asks for
  // many more (weight_iterator's way: each tensor is copied into the model
  // and dropped). NextBatch then takes their storage from the store
  // (Store::AllocateForRead), which may lend memory it reads into faster
  // and reuses it across batches: in standalone-client mode, the client's
  // shared memory, written in place by the client process. Only a hint:
  // tensors kept stay valid and correct, in memory that is only slower to
  // come by than ordinary memory.
  bool streaming = false;
  // Whether LoadInto advises the caller's destinations to use transparent
  // huge pages (and MOONCAKE_CONNECTOR_HUGE_PAGES is not 0). Fresh tensors of
  // their own mappings fill faster so; an engine's parameters that lie in
  // its malloc heap filled twice as slowly (SGLang's, docs/performance.md).
  bool advise_huge_pages = true;
  ProgressFn progress;
};

struct NamedTensorView {
  std::string name;
  TensorView tensor;
  // tensor.data is an address in the memory of a CUDA device
  // (SaveStateDictCuda's source), which the CPU does not read.
  bool on_device = false;
};

struct NamedTensor {
  std::string name;
  Tensor tensor;
};

// A destination for LoadInto: memory the caller owns, with the dtype and
// shape it expects.
struct TensorDestination {
  std::string name;
  DType dtype = DType::kU8;
  Shape shape;
  MutableBytes bytes;
};

// Where LoadIntoCuda puts tensors (SaveStateDictCuda takes them from): a
// CUDA device, and the stream its copies are queued on (a CUstream / cudaStream_t such as a torch stream's
// cuda_stream; 0 is the legacy default stream).
struct CudaTarget {
  int device = 0;
  uintptr_t stream = 0;
};

// One step of a load onto memory the caller allocates (a CUDA device's;
// ModelReader::PlanDeviceGroups): allocate and fill `fill` (LoadIntoCuda),
// hand out `hand_out` in that order, then let go of `drop`.
struct DeviceGroup {
  std::vector<size_t> fill;      // stored tensors (indices into tensors()), about group_bytes in all
  std::vector<size_t> hand_out;  // indices into tensors(); an alias's bytes are its alias_of's
  std::vector<size_t> drop;      // stored tensors of this or an earlier fill no later group hands out
};

struct FileContent {
  std::string path;  // relative
  ConstBytes bytes;
};

// What ls/inspect show about a model.
struct ModelInfo {
  std::string name;
  bool has_manifest = false;
  bool complete = false;  // every part complete and every rank present
  int world_size = 0;
  // From the rank parts of the manifest (unset when they disagree, which is
  // then one of the problems); kEngine for tensors stored without a
  // manifest (SGLang's save_model).
  std::optional<ModelLayout> layout;
  std::vector<int> ranks;  // ranks with stored tensors or a manifest part
  uint64_t bytes = 0;      // from the manifest; 0 without one
  uint64_t tensors = 0;
  uint64_t files = 0;
  std::string created;
  std::string tool;
  std::vector<ManifestPart> parts;  // as stored
  std::vector<std::string> problems;  // why it is not complete
  // Values a complete manifest part lists that the store no longer has
  // (evicted, removed): such a model is damaged, not complete.
  uint64_t missing = 0;
  uint64_t listed = 0;  // the values the complete parts list (missing counts among them)
};

struct VerifyReport {
  uint64_t tensors = 0;
  uint64_t files = 0;
  uint64_t bytes = 0;
  std::vector<std::string> problems;  // empty: every value matched
};

// A cooperative load of one rank by `world` loaders (the processes of a
// tensor-parallel group): each fetches a disjoint share of the stored bytes
// and the group exchanges them, so that every loader ends with every tensor.
// The rank's tensors (in stored order) are cut into batches of about
// batch_bytes (at least one tensor); each batch reads the stored tensors
// its tensors need that no earlier batch read (an alias needs its target).
// A stored tensor larger than the batch's share (its bytes / world) is split
// by rows (its first dimension) into min(world, rows) pieces of equal rows,
// one to each of the least loaded loaders; the other tensors go whole, the
// largest first, each to the loader with the fewest bytes so far over the
// whole plan. So a loader fetches at most total / world + one batch share
// (tensors not split) + one row. Deterministic: every loader computes the
// same plan.
struct SharePiece {
  size_t index = 0;     // the stored tensor
  uint64_t offset = 0;  // its bytes [offset, offset + size) (row boundaries)
  uint64_t size = 0;
  int owner = 0;        // the loader that fetches them
  bool whole = true;    // the piece is the whole tensor
};
struct ShareBatch {
  size_t end = 0;                  // the batch is tensors[previous end, end)
  std::vector<SharePiece> pieces;  // by stored order, then offset
};
// No piece is smaller than min_piece_bytes (a tensor is cut into at most
// nbytes / min_piece_bytes pieces): a store reads a value in objects (a
// mooncake:// value above its chunk size in chunks, one below it whole), so
// a range transfers the objects it touches, and pieces much smaller than an
// object would transfer more than they save. split=false: whole tensors
// only (a loader then fetches up to total / world + the largest tensor).
MC_EXPORT std::vector<ShareBatch> PlanShares(std::span<const ManifestTensor> tensors, int world,
                                             uint64_t batch_bytes, bool split = true,
                                             uint64_t min_piece_bytes = 0);

// Bytes [offset, offset + destination.size()) of a stored tensor (a piece of
// a cooperative load's plan), for ModelReader::ReadPieces.
struct TensorPiece {
  size_t index = 0;
  uint64_t offset = 0;
  MutableBytes destination;
};

class ModelReader;

class ModelMemory;
class SaveStaging;

class MC_EXPORT Model {
 public:
  // The model the connector's URL path names. InvalidArgument when the path
  // is empty. The connector must outlive the model, its copies and every
  // reader they open. Keep the model for as long as the connector: copies
  // share what it remembers (the manifests it read or wrote, so that a
  // model lost from the store afterwards is reported as lost rather than as
  // never saved; the values a load has checked), a new Open starts afresh.
  static Result<Model> Open(Connector& connector);

  const std::string& name() const { return name_; }
  std::string TensorKey(int rank, std::string_view param) const;
  std::string FileKey(std::string_view path) const;
  std::string ManifestKey(std::optional<int> rank) const;
  // The "__metadata__" of rank `rank`'s tensor values written by save
  // `save_id` (kManifestMarker, and kSaveMarker unless save_id is 0).
  std::map<std::string, std::string> ValueMetadata(int rank, uint64_t save_id) const;

  // Stores rank `rank`'s whole state dict (names unique, valid in a key).
  // Tensors sharing storage (same data pointer, dtype and shape) are stored
  // once. Values already stored with the same checksum are not written again;
  // stored tensors of this rank that `tensors` lacks are removed at the end.
  Status SaveStateDict(int rank, std::span<const NamedTensorView> tensors,
                       const SaveOptions& options = {});
  // SaveStateDict for a state dict in the memory of a CUDA device: each
  // tensor marked on_device lies in memory of source.device (checked), the
  // others in host memory. The device tensors are copied into pinned host
  // buffers batch by batch (batches of at most kSaveStagingBytes, or one
  // larger tensor), queued on source.stream (after the work queued there
  // before), the next batch while the store writes one: the host holds two
  // batches of the rank, not the whole rank. Needs the CUDA driver at run
  // time (FailedPrecondition without one).
  static constexpr uint64_t kSaveStagingBytes = uint64_t{128} << 20;
  Status SaveStateDictCuda(int rank, std::span<const NamedTensorView> tensors, const CudaTarget& source,
                           const SaveOptions& options = {});
  // Stores files under {model}/files/ (same resume and cleanup rules).
  Status SaveFiles(std::span<const FileContent> files, const SaveOptions& options = {});
  // A Hugging Face style directory as rank 0: the tensors of every
  // *.safetensors shard (checked against model.safetensors.index.json when
  // present) and every other regular file but hidden ones and other weight
  // formats (*.bin, *.pt, *.pth, *.ckpt, *.h5, *.msgpack, *.gguf, *.onnx).
  Status SaveDirectory(const std::string& dir, const SaveOptions& options = {});

  // SGLang's pull_files: writes the model's files into the connector's
  // GetLocalDir(), keeping relative paths; returns the paths written. With
  // `allow`, only files matching one of its fnmatch patterns; then none
  // matching one of `ignore` (a pattern counts when it matches the whole key,
  // as in SGLang, or the relative path). With a files manifest: the files it
  // lists, each checked (size, XXH3) — FailedPrecondition when that part is
  // not complete, DataLoss naming a listed file that is missing or differs,
  // Aborted when a save replaced them meanwhile. Without one (SGLang's own
  // layout): what "{model}/files/" lists. Every file is read before any is
  // written: on an error nothing is. DataLoss when a stored name is
  // absolute, has "..", "." or empty components; symlinks inside the
  // directory are never followed.
  Result<std::vector<std::string>> PullFiles(
      const std::optional<std::vector<std::string>>& allow = std::nullopt,
      const std::optional<std::vector<std::string>>& ignore = std::nullopt);
  // File `f`'s stored bytes, checked against its manifest entry: DataLoss
  // naming it when it is missing or differs.
  Result<Buffer> ReadCheckedFile(const ManifestFile& f);

  // The manifest part, or nullopt when there is none.
  Result<std::optional<ManifestPart>> ReadManifest(std::optional<int> rank);
  Result<ModelInfo> Inspect();

  // Reads every stored tensor and file back and checks it against the
  // manifest (FailedPrecondition without one).
  Result<VerifyReport> Verify(const ProgressFn& progress = {});

  // Removes the model's tensors, files and manifest: the manifest parts are
  // first marked not complete (so the model stops looking complete, and a
  // load meanwhile is refused rather than listing what is left), the
  // manifest goes last. Returns the number of keys removed; NotFound when
  // there was nothing.
  Result<uint64_t> Remove();

  Result<std::unique_ptr<ModelReader>> OpenReader(int rank, const LoadOptions& options = {});

  Connector& connector() { return *connector_; }
  // The connector in use for an operation (Connector::Use); FailedPrecondition
  // once it is closed.
  Result<Connector::InUse> Use() const;

 private:
  friend Result<std::vector<ModelInfo>> ListModels(Connector& connector);
  struct SaveItem;
  friend class ModelReaderImpl;
  Model(Connector* c, std::string name);
  // SaveStateDict's work; tensors on a device are read through `staging`
  // (SaveStateDictCuda), InvalidArgument without it.
  Status SaveTensors(int rank, std::span<const NamedTensorView> tensors, const SaveOptions& options,
                     SaveStaging* staging);
  Status SaveValues(std::optional<int> rank, std::vector<SaveItem>& items, const SaveOptions& options,
                    uint64_t save_id, SaveStaging* staging = nullptr);
  // Which of `items` (an earlier save's, by the manifest `was`) the store
  // holds exactly as that save wrote them: read back and checked (header,
  // size and checksum), in batches of options.batch_bytes.
  std::vector<bool> StoredAsBefore(std::optional<int> rank, std::span<const SaveItem* const> items,
                                   std::span<const uint64_t> was_save_ids, uint64_t batch_bytes);
  // Aborted when the stored manifest of the part is another save's: a save
  // of the same part started after this one.
  Status CheckStillOurs(const ManifestPart& part);
  // Sets info.listed/missing from one batched existence check of the values
  // its complete parts list; a model missing any is not complete.
  Status CountMissing(ModelInfo& info);
  // Removes the tensors and manifest parts of ranks >= world_size.
  Status RemoveRanksFrom(int world_size);
  Status WriteManifest(const ManifestPart& part, const WriteOptions& write);
  // DataLoss naming the tensors of a remembered part that the store no
  // longer has.
  Status CheckRecalledTensors(int rank, const ManifestPart& part);

  Connector* connector_;
  std::string name_;
  std::shared_ptr<ModelMemory> memory_;
};

// The models in a store: every name with a manifest or SGLang-layout keys.
MC_EXPORT Result<std::vector<ModelInfo>> ListModels(Connector& connector);

class ModelReaderImpl;

// Reads one rank of a model, in batches. Not thread-safe. Its model's
// connector must outlive it.
class MC_EXPORT ModelReader {
 public:
  // The rank's tensors in stored order. From the manifest when there is one;
  // otherwise from listing, with dtype and shape unknown until read.
  const std::vector<ManifestTensor>& tensors() const;
  bool has_manifest() const;
  uint64_t total_bytes() const;

  ~ModelReader();

  // The next tensors (at most batch_bytes of them, at least one), read with
  // one batched store call into new 64-byte aligned storage; empty when all
  // were returned. Aliases come back sharing their target's storage. While a
  // batch is fetched, the next one's storage is allocated and its pages
  // touched on another thread (first-touch page faults off the fetch's path;
  // at most one batch more memory).
  Result<std::vector<NamedTensor>> NextBatch();

  // The rank's whole state in one go, in stored order (what a caller that
  // keeps every tensor would gather from NextBatch): every stored tensor
  // allocated first (new 64-byte aligned storage, as NextBatch's) and all
  // filled by one LoadInto, whose threads fault the pages in ahead of the
  // transfers; aliases share their target's storage. Memory: the rank's
  // stored bytes, nothing more (ordinary memory: LoadOptions::streaming is
  // for callers that let go of each batch, and LoadAll keeps all). Without a
  // manifest (dtypes and shapes unknown until read): NextBatch until the
  // end. FailedPrecondition on a reader something was read from already.
  Result<std::vector<NamedTensor>> LoadAll();

  // Fills the caller's memory, no allocation for values that match the
  // manifest. Every destination must name a tensor of the rank with the same
  // dtype and shape (NotFound / InvalidArgument otherwise). Returns the names
  // of the rank's tensors no destination asked for.
  Result<std::vector<std::string>> LoadInto(std::span<const TensorDestination> destinations);

  // LoadInto for memory of a CUDA device: each destination's bytes are device
  // addresses of target.device (checked; never touched by the CPU). Values are
  // read into pinned host buffers, a batch at a time, and copied to the
  // device on target.stream while the next batches are fetched; checksums
  // are computed off that path, on other threads. Returns when every copy has
  // finished and every checksum matched. Needs the CUDA driver at run time
  // (FailedPrecondition without one). The pinned buffers (up to four, each
  // the size of the largest batch: batch_bytes, or one larger tensor) are
  // kept for the next load.
  Result<std::vector<std::string>> LoadIntoCuda(std::span<const TensorDestination> destinations,
                                                const CudaTarget& target);
  // A streaming load onto a device, in groups: every tensor in stored order,
  // each stored tensor filled once, in the first group that hands it (or an
  // alias of it) out; a group closes once its fills reach group_bytes (the
  // last one may be smaller). Memory held at once: a group's fills and the
  // stored tensors later aliases still need. FailedPrecondition without a
  // manifest (dtypes and shapes unknown until read).
  Result<std::vector<DeviceGroup>> PlanDeviceGroups(uint64_t group_bytes) const;

  // Reads every stored tensor into scratch memory, batch by batch, checking
  // each against the manifest (checksums too). One line per problem; empty
  // when all is well. FailedPrecondition without a manifest.
  Result<std::vector<std::string>> Check();

  // Reads pieces of stored tensors (indices into tensors()), each into its
  // destination: one status per piece. A piece is checked against the
  // manifest as far as a piece can be (the value's size; the piece at
  // offset 0 also the value's header: dtype, shape, save), not by checksum:
  // once the pieces of a tensor are together, CheckAssembled checks it.
  std::vector<Status> ReadPieces(std::span<const TensorPiece> pieces);
  // PlanShares over this rank's tensors for a cooperative load by `world`
  // processes, pieces of split tensors no smaller than min_piece_bytes, by
  // default the store's chunk size (StoreFeatures::chunk_bytes).
  // FailedPrecondition without a manifest.
  Result<std::vector<ShareBatch>> PlanShares(int world, uint64_t batch_bytes, bool split = true,
                                             std::optional<uint64_t> min_piece_bytes = std::nullopt);
  // The whole tensor `index` assembled from pieces: its checksum (when the
  // reader verifies) and element values, as a read of it whole checks them.
  // May run beside another call on this reader (a cooperative load checks
  // one batch while it fetches the next).
  Status CheckAssembled(size_t index, ConstBytes data);

 private:
  friend class Model;
  explicit ModelReader(std::unique_ptr<ModelReaderImpl> impl);
  std::unique_ptr<ModelReaderImpl> impl_;
};

}  // namespace mooncake_connector
