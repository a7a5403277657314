// ModelReader's implementation (model.h declares the public class; this is
// its state and helpers, kept out of the public header). Model::OpenReader
// fills it. Not thread-safe, as ModelReader.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "core/pages_internal.h"
#include "mooncake_connector/model.h"

namespace mooncake_connector {

namespace cuda {
class Driver;
}  // namespace cuda

// A failed read of the stored tensor `which` (a Describe()), as a load
// reports it: DataLoss for a tensor gone from the store or not matching the
// manifest, the read's own error otherwise.
Status ReadFailure(const std::string& which, const Status& s);

class ModelReaderImpl {
 public:
  ModelReaderImpl(Model model, int rank, LoadOptions options)
      : model_(model), rank_(rank), options_(std::move(options)) {}
  // Reads tensors_[items[i]] into targets[i] with one batched store call,
  // checking each against the manifest (checksums too when `checksums`);
  // one status per item.
  std::vector<Status> ReadBatch(std::span<const size_t> items, std::span<const MutableBytes> targets,
                                bool checksums);
  // For each of tensors `items`: DataLoss (ChecksumMismatch) unless its bytes
  // in `data` (what was read for it) have the manifest's checksum; computed
  // on `threads` threads a piece of the checksums each (manifest format 4:
  // one large tensor is hashed on several), the largest tensors first.
  std::vector<Status> CheckChecksums(std::span<const size_t> items, std::span<const ConstBytes> data,
                                     size_t threads) const;
  Status ChecksumMismatch(size_t item) const;
  std::string Describe(size_t item) const;  // "tensor 'name' (rank R of model 'M')"
  // A tensor without a manifest entry: read whole and decoded.
  Result<Tensor> ReadUnknown(size_t index);
  // ReadUnknown for a load into `d`: InvalidArgument unless the stored tensor
  // has d's dtype and shape.
  Result<Tensor> ReadUnknownFor(size_t index, const TensorDestination& d);
  size_t Canonical(size_t index) const;
  // Storage for tensors_[index]: from the store (Store::AllocateForRead)
  // for a streaming load.
  Result<Tensor> AllocateTensor(size_t index);
  // The batch of NextBatch that starts at tensors_[from]: where it ends and
  // the canonical tensors it reads. `pending`: read by the batch before it.
  struct BatchPlan {
    size_t end;
    std::vector<size_t> read;
  };
  BatchPlan PlanBatch(size_t from, const std::vector<size_t>& pending) const;
  // Allocates storage for `read` (the batch at `from`) and faults its pages in
  // ahead (prefault_) while this batch is fetched; TakePrepared(from) stops
  // that and hands the storage over (empty if it was for another batch).
  void Prepare(size_t from, std::vector<size_t> read);
  std::vector<Tensor> TakePrepared(size_t from);
  // Each destination's tensor index, checked against the manifest.
  Result<std::vector<size_t>> Resolve(std::span<const TensorDestination> destinations) const;
  // The rank's tensors that no index in `which` names.
  std::vector<std::string> Missed(std::span<const size_t> which) const;
  // Splits the destinations into batches of at most batch_bytes (at least one
  // tensor each) so that each stored tensor is read once, into the first
  // destination that wants it. `first` maps each canonical tensor to that
  // destination.
  struct Plan {
    std::vector<std::vector<size_t>> batches;  // destination indices to read
    std::map<size_t, size_t> first;
  };
  Plan PlanReads(std::span<const size_t> which, uint64_t batch_bytes) const;
  void Report(uint64_t bytes);
  // The header a value of tensors_[item] must start with.
  Result<std::string> ExpectedHeader(size_t item) const;
  // DataLoss unless a read of tensors_[item] found it `as_listed` (header and
  // size as the manifest says) and, for BOOL, its `data` holds only 0 and 1.
  Status CheckRead(size_t item, bool as_listed, ConstBytes data) const;
  // DataLoss unless `value` (a whole stored value) is tensors_[item] as the
  // manifest lists it: its header and size (a BOOL tensor's elements 0 or 1
  // too); sets *data to its tensor bytes.
  Status CheckStored(size_t item, ConstBytes value, ConstBytes* data) const;
  // LoadIntoCuda's two ways: straight from the store's pinned memory by DMA
  // (nullopt when the store cannot lend its values or they are not pinned),
  // or through a pipeline of pinned buffers. `stream` is a CUstream.
  std::optional<Status> LoadIntoCudaFromStore(std::span<const TensorDestination> destinations,
                                              std::span<const size_t> which, const Plan& plan,
                                              const cuda::Driver& driver, void* stream);
  Status LoadIntoCudaStaged(std::span<const TensorDestination> destinations, std::span<const size_t> which,
                            const Plan& plan, const cuda::Driver& driver, int device, void* stream);

  Model model_;
  int rank_;
  LoadOptions options_;
  std::vector<ManifestTensor> tensors_;
  bool has_manifest_ = false;
  int format_version_ = 0;  // of the manifest; its values' headers depend on it
  uint64_t save_id_ = 0;    // of the manifest part read
  uint64_t checksum_piece_ = 0;  // of the manifest part read: tensors' checksums are Xxh3Pieces
  // Replaces DataLoss in `results` by Aborted ("the model changed during the
  // load") when the manifest part is no longer the one this reader read: a
  // value that is not what it listed is then another save's, not damage.
  void SayIfChanged(std::span<Status> results);
  // ExpectedHeader of each tensor, encoded once per distinct (dtype, shape,
  // nbytes, save) when the reader opens: headers_[header_of_[item]] ("" if that
  // failed: ExpectedHeader then reports why).
  std::vector<std::string> headers_;
  std::vector<uint32_t> header_of_;
  uint64_t total_bytes_ = 0;
  uint64_t done_bytes_ = 0;
  size_t next_ = 0;
  std::map<std::string, size_t> index_;          // name -> position in tensors_
  std::map<size_t, Tensor> shared_;               // read tensors that aliases share
  size_t prepared_from_ = SIZE_MAX;
  std::vector<Tensor> prepared_;
  std::unique_ptr<PrefaultAhead> prefault_;  // over prepared_'s pages; goes first
  std::atomic<uint64_t> streamed_bytes_{0};  // the largest tensor a streaming load allocated

  // ModelReader's API, as model.h documents it.
  const std::vector<ManifestTensor>& tensors() const { return tensors_; }
  bool has_manifest() const { return has_manifest_; }
  uint64_t total_bytes() const { return total_bytes_; }
  ~ModelReaderImpl();
  Result<std::vector<NamedTensor>> NextBatch();
  Result<std::vector<NamedTensor>> LoadAll();
  Result<std::vector<std::string>> LoadInto(std::span<const TensorDestination> destinations);
  Result<std::vector<std::string>> LoadIntoCuda(std::span<const TensorDestination> destinations,
                                                const CudaTarget& target);
  Result<std::vector<DeviceGroup>> PlanDeviceGroups(uint64_t group_bytes) const;
  Result<std::vector<std::string>> Check();
  std::vector<Status> ReadPieces(std::span<const TensorPiece> pieces);
  Result<std::vector<ShareBatch>> PlanShares(int world, uint64_t batch_bytes, bool split,
                                             std::optional<uint64_t> min_piece_bytes);
  Status CheckAssembled(size_t index, ConstBytes data);
};

}  // namespace mooncake_connector
