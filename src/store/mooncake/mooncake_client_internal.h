// The client of the mooncake:// store (mooncake_store.cc), and the
// helpers its reader and writer share. The layout and the guarantees are in
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
#include "mooncake_connector/store.h"
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
// Bytes per direct native read call: enough that the call's fixed cost (a
// round trip to the master) is small beside the transfer; small enough that
// the checksums of one call can be computed beside the next call's transfer.
inline constexpr uint64_t kDirectReadCallBytes = uint64_t{64} << 20;
// Bytes per direct native write call (a save_state_dict batch, 1 GiB by
// default, is one call): nothing is hashed per call, and each call is two
// round trips to the master and a wait in which Mooncake's waiting thread
// polls the transfers' status without sleeping, a core's worth on a small
// machine (41% of a 2-core own-mode save's samples in 64 MiB calls;
// docs/performance.md).
inline constexpr uint64_t kDirectWriteCallBytes = uint64_t{1} << 30;
// Objects per batch call, whatever their size: over TCP each object of a
// call is a transfer of its own, and Mooncake's TCP transport queues at most
// MC_TCP_MAX_QUEUED_TRANSFERS_PER_PEER (1,024 by default) per peer and fails
// the rest of a call ("queue-full"); one storage process is one peer, and a
// client may make calls from several threads at once (reads, saves). With
// the default 16 MiB chunks a 1 GiB call is 64 objects; this bounds the calls
// of small chunks and small values.
inline constexpr size_t kMaxObjectsPerCall = 256;

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

// The Mooncake client a mooncake:// store works through, shared by its
// reader (mooncake_reader_internal.h) and its writer
// (mooncake_writer_internal.h): the function table and handle, the health of
// the network, the staging slots, the replication settings, and the object
// operations both use (a key's header, removing a generation's chunks).
// Owned by the MooncakeStore, which outlives its reader and writer.
class MooncakeClient {
 public:
  MooncakeClient(MooncakeConfig config, const Api* api, Handle handle);
  ~MooncakeClient();
  MooncakeClient(const MooncakeClient&) = delete;
  MooncakeClient& operator=(const MooncakeClient&) = delete;
  // Registers the staging slots.
  Status Init();

  const MooncakeConfig& config() const { return config_; }
  const Api* api() const { return api_; }
  Handle handle() const { return handle_; }
  NetworkHealth& health() const { return health_; }
  TransferArena& arena() const { return *arena_; }
  const ReplicateConfig& replicate() const { return replicate_; }
  DeferredRemoval& deferred() const { return *deferred_; }

  // What this client can do beyond staged transfers (MooncakeConfig::
  // direct_transfers and local_reads, what the provider offers): the reader
  // and the writer start from these and turn them off when a provider turns
  // out unable.
  bool can_read_directly() const { return can_read_directly_; }
  bool can_write_directly() const { return can_write_directly_; }
  bool can_read_locally() const { return can_read_locally_; }
  // Standalone-client mode with direct reads: the client's shared memory
  // lent for reads (null otherwise). A dummy client transfers only into
  // shared memory its client maps, so there direct reads are for
  // destinations in these blocks alone (their value's head is read through a
  // block too).
  SharedBlocks* shared() const { return shared_.get(); }

  uint64_t slot_size() const { return config_.chunk_size; }
  // MooncakeConfig::read_threads, resolved (see there).
  size_t read_threads() const {
    if (config_.read_threads > 0) return static_cast<size_t>(config_.read_threads);
    return config_.client_address.empty() ? 1 : ReadThreads();
  }
  Deadline NewDeadline() const { return Deadline(config_.op_timeout, &health_); }
  // A status for a Mooncake error code; connection failures name the peer.
  Status Fail(int64_t code, const std::string& what) const;
  // True when a value of `size` bytes is stored as one raw object by a writer
  // with this client's chunk_size.
  bool IsRawSize(uint64_t size) const {
    return size > 0 && size <= slot_size() && size != kChunkHeaderSize;
  }

  // Objects (mooncake_client.cc).
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
  // The chunks of several replaced generations (key, header), handed to the
  // deferred removal together: one removal call for all of them.
  void RemoveGenerations(std::span<const std::pair<const std::string*, const ChunkHeader*>> generations);
  std::vector<std::string> ChunkKeys(const std::string& key, const ChunkHeader& h) const;
  // Which of the chunks of `h` exist (all of them when it has too many to
  // check one by one). Takes read leases on them.
  Result<bool> AllChunksExist(const std::string& key, const ChunkHeader& h);

 private:
  const MooncakeConfig config_;
  mutable NetworkHealth health_;
  const Api* api_;
  Handle handle_;
  ReplicateConfig replicate_;
  std::unique_ptr<TransferArena> arena_;
  std::unique_ptr<DeferredRemoval> deferred_;
  bool can_read_directly_ = false;
  bool can_write_directly_ = false;
  bool can_read_locally_ = false;
  std::shared_ptr<SharedBlocks> shared_;
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

}  // namespace mooncake_connector::mooncake
