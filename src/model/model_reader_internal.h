// ModelReader's implementation (model.h declares the public class; this is
// its state and helpers, kept out of the public header). Model::OpenReader
// fills it. Not thread-safe, as ModelReader.
#pragma once

#include <atomic>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "mooncake_connector/model.h"

namespace mooncake_connector {

namespace cuda {
class Driver;
}  // namespace cuda

class ModelReaderImpl {
 public:
  ModelReaderImpl(Model model, int rank, LoadOptions options)
      : model_(model), rank_(rank), options_(std::move(options)) {}
  // Reads tensors_[items[i]] into targets[i] with one batched store call,
  // checking each against the manifest (checksums too when `checksums`);
  // one status per item.
  std::vector<Status> ReadBatch(std::span<const size_t> items, std::span<const MutableBytes> targets,
                                bool checksums);
  // DataLoss unless `data` (what was read for tensors_[item]) has the
  // manifest's checksum.
  Status CheckChecksum(size_t item, ConstBytes data) const;
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
  // Allocates storage for `read` (the batch at `from`) and touches its pages
  // on preparer_; TakePrepared(from) stops that and hands the storage over
  // (empty if it was for another batch).
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
                            const Plan& plan, const cuda::Driver& driver, void* stream);

  Model model_;
  int rank_;
  LoadOptions options_;
  std::vector<ManifestTensor> tensors_;
  bool has_manifest_ = false;
  int format_version_ = 0;  // of the manifest; its values' headers depend on it
  uint64_t save_id_ = 0;    // of the manifest part read
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
  std::thread preparer_;
  size_t prepared_from_ = SIZE_MAX;
  std::vector<Tensor> prepared_;  // its pages are touched by preparer_ until joined
  std::atomic<bool> stop_preparing_{false};
  std::atomic<uint64_t> streamed_bytes_{0};  // the largest tensor a streaming load allocated

  // The public API (model.h documents it).
  // The rank's tensors in stored order. From the manifest when there is one;
  // otherwise from listing, with dtype and shape unknown until read.
  const std::vector<ManifestTensor>& tensors() const { return tensors_; }
  bool has_manifest() const { return has_manifest_; }
  uint64_t total_bytes() const { return total_bytes_; }

  ~ModelReaderImpl();

  // The next tensors (at most batch_bytes of them, at least one), read with
  // one batched store call into new 64-byte aligned storage; empty when all
  // were returned. Aliases come back sharing their target's storage. While a
  // batch is fetched, the next one's storage is allocated and its pages
  // touched on another thread (first-touch page faults off the fetch's path;
  // at most one batch more memory).
  Result<std::vector<NamedTensor>> NextBatch();

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
};

}  // namespace mooncake_connector
