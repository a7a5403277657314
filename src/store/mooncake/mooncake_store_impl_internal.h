// The mooncake:// Store: the class shared by its metadata operations
// (mooncake_store.cc), its read path (mooncake_read.cc) and its write path
// (mooncake_write.cc). The layout and the guarantees are in
// docs/mooncake_layout.md.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/parallel_internal.h"
#include "mooncake_connector/mooncake_store.h"
#include "store/deliver_internal.h"
#include "store/mooncake/chunked_value_internal.h"
#include "store/mooncake/deferred_removal_internal.h"
#include "store/mooncake/mooncake_api_internal.h"
#include "store/mooncake/own_memory_internal.h"
#include "store/mooncake/retry_internal.h"
#include "store/mooncake/shared_blocks_internal.h"
#include "store/mooncake/transfer_arena_internal.h"

namespace mooncake_connector::mooncake {

// Direct transfers (MooncakeConfig::direct_transfers) are for values of at
// least this size: over TCP each piece of a scattered object is a transfer
// of its own, which costs more than copying a small value through a slot.
inline constexpr uint64_t kDirectTransferMin = uint64_t{1} << 20;
// Bytes per direct native call: enough that the call's fixed cost (a round
// trip to the master) is small beside the transfer; small enough that the
// checksums of one call can be computed beside the next call's transfer.
inline constexpr uint64_t kDirectCallBytes = uint64_t{64} << 20;

// Chunk objects removed (or checked) one by one, batched, on remove() and
// after a write; a header that claims more is cleaned by the pattern sweep
// alone, so a hostile header cannot make a remove issue millions of calls.
inline constexpr uint64_t kMaxExplicitChunkRemoves = 4096;

// What the object under a key is, as far as a writer or remover needs to know.
struct Existing {
  bool exists = false;
  uint64_t object_size = 0;             // size of the object under the key
  std::optional<ChunkHeader> header;    // set when it is a valid header
};

class MooncakeStore final : public Store {
 public:
  MooncakeStore(MooncakeConfig config, const Api* api, Handle handle);
  ~MooncakeStore() override;
  Status Init();

  std::string url() const override;
  // Values larger than a chunk are chunked, with a checksum in their header.
  StoreFeatures Features() const override {
    return {.checksums_values_above = slot_size(), .chunk_bytes = slot_size()};
  }
  // In standalone-client mode, values of kDirectTransferMin bytes or more
  // get a block of the client's shared memory (SharedBlocks), read into
  // directly, where one is free; ordinary memory otherwise.
  Result<Buffer> AllocateForRead(size_t size) override;
  // Standalone-client mode: after the second streaming load, shared
  // memory for 2.5 batches is made in the background.
  void StreamingLoadDone(uint64_t batch_bytes, uint64_t largest) override;
  // For tests: the shared blocks (null outside standalone-client mode).
  SharedBlocks* shared_blocks() const { return shared_.get(); }
  std::vector<Status> BatchPut(std::span<const PutRequest> requests,
                               const WriteOptions& options) override;
  std::vector<Result<uint64_t>> BatchGetInto(std::span<const GetIntoRequest> requests) override;
  std::vector<Result<bool>> BatchExists(std::span<const std::string_view> keys) override;
  Result<uint64_t> GetSize(std::string_view key) override;
  Status Remove(std::string_view key) override;
  Result<std::vector<std::string>> List(std::string_view prefix) override;
  Result<Buffer> Get(std::string_view key) override;

 private:
  using HeaderBytes = std::array<std::byte, kChunkHeaderSize>;
  // Where a value of `size` bytes goes (checked to fit); an error stops the
  // read.
  using Destination = std::function<Result<GetIntoRequest>(uint64_t size)>;

  uint64_t slot_size() const { return config_.chunk_size; }
  // MooncakeConfig::read_threads, resolved (see there).
  size_t read_threads() const {
    if (config_.read_threads > 0) return static_cast<size_t>(config_.read_threads);
    return config_.client_address.empty() ? 1 : ReadThreads();
  }
  Deadline NewDeadline() const { return Deadline(config_.op_timeout, &health_); }
  // A status for a Mooncake error code; connection failures name the peer.
  Status Fail(int64_t code, const std::string& what) const;

  // mooncake_store.cc
  // Every key on the master that starts with `prefix` (chunk objects too),
  // from its admin HTTP endpoint.
  Result<std::vector<std::string>> AllKeys(std::string_view prefix);
  Result<Existing> Inspect(const std::string& key, Deadline& deadline);
  // Reads the 64-byte object under `key` as a header. NotFound if absent.
  Result<ChunkHeader> ReadHeader(const std::string& key, Deadline& deadline);
  Status RemoveKeys(const std::vector<std::string>& keys, Deadline& deadline,
                    const std::string& what);
  void RemoveChunkObjects(const std::string& key, const std::optional<ChunkHeader>& header,
                          Deadline& deadline);
  // Removes the chunks of one generation: by key (waiting out leases until
  // `deadline`, or handing leased ones to the deferred removal when
  // `deadline` is null), or by one pattern call when the header claims more
  // chunks than are worth naming one by one.
  void RemoveGeneration(const std::string& key, const ChunkHeader& h, Deadline* deadline);
  std::vector<std::string> ChunkKeys(const std::string& key, const ChunkHeader& h) const;
  // Marks `key` removed in place (an upsert, which ignores read leases).
  // REQUIRES: the provider has upsert_from.
  Status WriteTombstone(const std::string& key, Deadline& deadline);

  // mooncake_read.cc
  // Reads one value. `first_header`: a chunk header a batched read already
  // fetched for this key (used instead of the first get). `turn`: reads of
  // one call running side by side take it for each transfer of chunks, so
  // that one transfer is in flight at a time (concurrent transfers over TCP
  // are slower, not faster) while the other read copies and hashes.
  Result<uint64_t> ReadValue(const std::string& key, const Destination& destination,
                             const HeaderBytes* first_header = nullptr, std::mutex* turn = nullptr);
  Result<uint64_t> ReadChunks(const std::string& key, const ChunkHeader& h,
                              const GetIntoRequest& target, Deadline& deadline, std::mutex* turn);
  Result<uint64_t> ReadLargeObject(const std::string& key, const GetIntoRequest& target,
                                   uint64_t size, Deadline& deadline);
  // Reads the chunks through the staging slots into `target`, or (target
  // null) straight into `registered`.
  Result<uint64_t> ReadChunksInto(const std::string& key, const ChunkHeader& h,
                                  MutableBytes registered, const GetIntoRequest* target,
                                  Deadline& deadline, std::mutex* turn);
  // Direct reads (MooncakeConfig::direct_transfers; mooncake_read_direct.cc).
  // True when `r` may be transferred straight into its own memory.
  bool ReadsDirectly(const GetIntoRequest& r) const {
    return r.exact && r.head.size() + r.destination.size() >= kDirectTransferMin &&
           direct_reads_.load(std::memory_order_relaxed) &&
           (shared_ == nullptr || shared_->Contains(r.destination.data(), r.destination.size()));
  }
  // True when a value of `size` bytes is written straight from the caller's
  // memory (direct writes, mooncake_write.cc).
  bool WritesDirectly(uint64_t size) const {
    return size >= kDirectTransferMin && direct_writes_.load(std::memory_order_relaxed);
  }
  // True when a value of `size` bytes is stored as one raw object by a writer
  // with this store's chunk_size.
  bool IsRawSize(uint64_t size) const {
    return size > 0 && size <= slot_size() && size != kChunkHeaderSize;
  }
  // Reads requests `which` straight into their memory: raw objects, and the
  // chunks of values whose header this batch has read (headers[i]). Calls of
  // about kDirectCallBytes, the checksums of one computed on a helper thread
  // while the next one transfers. Objects held in this client's own segment
  // (local_reads_) are copied from there on that helper thread, copy and
  // checksum in one pass, several values side by side. Sets out[i] for each value read and
  // verified; the rest (another size, a chunk missing or of another size, a
  // checksum mismatch, an error) are left to ReadValue, which reads them
  // through the slots and says what is wrong.
  void ReadDirect(std::span<const GetIntoRequest> requests, std::span<const size_t> which,
                  const std::vector<std::optional<HeaderBytes>>& headers,
                  std::vector<std::optional<Result<uint64_t>>>& out);
  // For each object (keys[i], of sizes[i] bytes): where it lies in this
  // client's own segment, readable here and of that size; null for the
  // others (and for all when local reads are off).
  std::vector<const std::byte*> LocalReplicas(std::span<const char* const> keys, std::span<const uint64_t> sizes);
  // Reads straight into registered memory: the target's destination, or a
  // temporary buffer when it scatters (then copied to it).
  Result<uint64_t> ReadRegistered(const std::string& key, const GetIntoRequest& target,
                                  uint64_t size,
                                  const std::function<Result<uint64_t>(MutableBytes)>& read);

  // mooncake_write.cc
  // Batched first writes of raw objects (small ones staged, large ones
  // direct); a set status for each request it finished, nullopt for those
  // left to PutOne.
  std::vector<std::optional<Status>> PutNewValues(std::span<const PutRequest> requests,
                                                  const ReplicateConfig& replicate);
  // The first writes of chunked values (keys[which] had no value), batched
  // across values; sets done[i] for each written, leaves the others to
  // PutOne.
  void PutNewChunkedValues(std::span<const PutRequest> requests, std::span<const size_t> which,
                           std::span<const uint64_t> sizes, const ReplicateConfig& replicate,
                           std::vector<std::optional<Status>>& done);
  Status PutOne(const PutRequest& r, const ReplicateConfig& replicate);
  // One raw object: bytes [offset, offset + size) of `parts`, put.
  Status PutObject(const std::string& key, std::span<const ConstBytes> parts, uint64_t offset,
                   uint64_t size, const ReplicateConfig& replicate, Deadline& deadline);
  // Header objects of several keys (a value's header, a tombstone, a
  // reservation), by upsert or put; one Mooncake code per header (0: written).
  // WriteHeader: one, with the error named.
  struct HeaderWrite {
    const std::string* key;
    std::array<std::byte, kChunkHeaderSize> bytes;
  };
  std::vector<int64_t> WriteHeaders(std::span<const HeaderWrite> headers, bool upsert,
                                    const ReplicateConfig& replicate, Deadline& deadline);
  Status WriteHeader(const std::string& key, const ChunkHeader& h, bool upsert, const ReplicateConfig& replicate,
                     Deadline& deadline);
  // One value's chunks under a fresh generation (chunks of several values:
  // PutChunkObjects, whose calls they share). Ok, or the first chunk that
  // could not be put.
  struct ChunkWrite {
    const std::string* key;
    const ChunkHeader* header;
    std::span<const ConstBytes> parts;
  };
  std::vector<Status> PutChunkObjects(std::span<const ChunkWrite> values, const ReplicateConfig& replicate,
                                      Deadline& deadline);
  Status PutChunks(const std::string& key, const ChunkHeader& h, std::span<const ConstBytes> parts,
                   const ReplicateConfig& replicate, Deadline& deadline);
  Status CommitHeader(const std::string& key, const ChunkHeader& h, const Existing& old,
                      const ReplicateConfig& replicate, Deadline& deadline);
  void SettleHeader(const std::string& key, const ChunkHeader& h, std::span<const ConstBytes> parts,
                    const ReplicateConfig& replicate, Deadline& deadline);
  // Whether each value's commit stands: its header read back is ours and
  // every chunk is there (kYes; also for values with too many chunks to
  // check), a later write's header replaced it (kSuperseded), it is torn
  // (kTorn), some chunk is gone (kChunksMissing), or the key is gone or
  // unreachable (kUnknown). Reads only key, header of each.
  enum class Settled { kYes, kSuperseded, kTorn, kChunksMissing, kUnknown };
  // Calls fn(at, n, slot) for consecutive runs of the `count` header
  // objects (key_of(i) names the i-th) that fit one staging slot: `slot`
  // holds their keys and a 64-byte place in the slot for each.
  struct HeaderSlot;
  template <typename KeyOf, typename Fn>
  void ForEachHeaderSlot(size_t count, KeyOf&& key_of, Fn&& fn);
  std::vector<Settled> CheckSettled(std::span<const ChunkWrite> values, Deadline& deadline);
  // Which of the chunks of `h` exist (all of them when it has too many to
  // check one by one). Takes read leases on them.
  Result<bool> AllChunksExist(const std::string& key, const ChunkHeader& h);

  const MooncakeConfig config_;
  mutable NetworkHealth health_;
  const Api* api_;
  Handle handle_;
  ReplicateConfig replicate_;
  std::unique_ptr<TransferArena> arena_;
  std::unique_ptr<DeferredRemoval> deferred_;
  // Whether direct reads are on: configured, possible here, and not turned
  // off by a provider that turned out unable.
  std::atomic<bool> direct_reads_{false};
  std::atomic<bool> direct_writes_{false};
  // Whether direct reads look for objects in this client's own segment
  // (MooncakeConfig::local_reads, a segment of its own, a provider that can
  // tell), and the memory such objects may lie in.
  std::atomic<bool> local_reads_{false};
  ReadableMemory readable_;
  // Standalone-client mode: the shared memory lent for reads. A dummy
  // client transfers only into shared memory its client maps, so there
  // direct reads are for destinations in these blocks alone (their value's
  // head is read through a block too).
  std::shared_ptr<SharedBlocks> shared_;
  std::atomic<int> streaming_loads_{0};
};

// Which requests name a key that another request of the same call names too.
// Those stay out of native batch calls (Mooncake mixes up a key given twice
// in one batch) and are done one by one, in request order.
template <typename Request>
std::vector<bool> RepeatedKeys(std::span<const Request> requests) {
  std::unordered_map<std::string_view, size_t> seen;
  for (const Request& r : requests) ++seen[r.key];
  std::vector<bool> out(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) out[i] = seen[requests[i].key] > 1;
  return out;
}

// Pointers to the keys' characters, for the C ABI's key arrays (valid while
// `keys` is alive and unchanged).
std::vector<const char*> CStrings(const std::vector<std::string>& keys);

// The first transient or transfer/RPC failure code among per-key results, or
// 0: lets RetryTransient retry a whole batch when one of its keys was refused
// for a moment or could not be moved (a storage peer gone).
template <typename T>
int64_t FirstRetryable(const std::vector<T>& results) {
  auto it = std::find_if(results.begin(), results.end(),
                         [](T r) { return IsTransientError(r) || (r <= -800 && r > -1000); });
  return it == results.end() ? 0 : *it;
}

// The chunks [first, first + n) of a value with header `h`: their object
// keys, the buffers `buffer_at(j)` gives for them, and their exact lengths.
struct ChunkBatch {
  std::vector<std::string> keys;
  std::vector<void*> buffers;
  std::vector<size_t> sizes;
};
template <typename BufferAt>
ChunkBatch MakeChunkBatch(const std::string& key, const ChunkHeader& h, uint64_t first, size_t n,
                          BufferAt&& buffer_at) {
  ChunkBatch b;
  for (size_t j = 0; j < n; ++j) {
    b.keys.push_back(h.ChunkKey(key, first + j));
    b.buffers.push_back(buffer_at(j));
    b.sizes.push_back(static_cast<size_t>(h.ChunkLength(first + j)));
  }
  return b;
}

// Calls fn(first, n) for consecutive runs of at most `per_batch` of the
// `count` chunks; stops at the first error.
template <typename Fn>
Status ForEachBatch(uint64_t count, size_t per_batch, Fn&& fn) {
  for (uint64_t first = 0; first < count; first += per_batch) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(per_batch, count - first));
    MC_RETURN_IF_ERROR(fn(first, n));
  }
  return Status::Ok();
}

}  // namespace mooncake_connector::mooncake
