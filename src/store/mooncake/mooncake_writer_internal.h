// The write path of the mooncake:// store: the steps of a batch of writes
// (mooncake_write.cc), the commit of a chunked value's header and the check
// that settles it (mooncake_commit.cc), and removes (mooncake_remove.cc). Works through the store's MooncakeClient, which
// outlives it.
#pragma once

#include <array>
#include <atomic>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "store/mooncake/mooncake_client_internal.h"

namespace mooncake_connector::mooncake {

class MooncakeWriter {
 public:
  explicit MooncakeWriter(MooncakeClient& client);

  std::vector<Status> BatchPut(std::span<const PutRequest> requests, const WriteOptions& options);
  Status Remove(std::string_view key);

 private:
  // True when a value of `size` bytes is written straight from the caller's
  // memory (direct writes).
  bool WritesDirectly(uint64_t size) const {
    return size >= kDirectTransferMin && direct_writes_.load(std::memory_order_relaxed);
  }
  // One value of a BatchPut on its way through the steps of its write.
  struct Value {
    const PutRequest* request = nullptr;
    std::string key;
    uint64_t size = 0;
    Existing old;                  // what the key held (LearnExisting)
    ChunkHeader header;            // the new generation, when written as chunks
    std::optional<Status> status;  // set once the value is written or failed
  };
  // The write of `values` (distinct keys), each step for all of them at
  // once: what the keys hold; the raw objects of new small values; the
  // chunks of the others; the commits; the settle checks and the removal of
  // the generations they replaced. A single-key put is a batch of one. Sets
  // every value's status.
  void WriteValues(std::span<Value* const> values, const ReplicateConfig& replicate);
  // What each key holds: one existence check for several keys, then Inspect
  // for those that have a value (one key: Inspect). A key that cannot be
  // inspected gets its status.
  void LearnExisting(std::span<Value* const> values, Deadline& deadline);
  // The raw objects of values whose keys had none (byte for byte what other
  // Mooncake clients write), in calls they share: straight from the
  // callers' memory (direct writes) about kDirectWriteCallBytes per call, or packed
  // into the staging slots, a slots' worth per call (one value alone: the
  // single-key put). Sets each value's status.
  void PutRawObjects(std::span<Value* const> values, const ReplicateConfig& replicate, Deadline& deadline);
  // The header of a new generation of `r`'s value of `size` bytes.
  ChunkHeader NewHeader(uint64_t size) const;
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
  // The error of a header write that ended with Mooncake code `rc`.
  Status HeaderError(const std::string& key, bool upsert, int64_t rc);
  // Marks `key` removed in place (an upsert, which ignores read leases).
  // REQUIRES: the provider has upsert_from.
  Status WriteTombstone(const std::string& key, Deadline& deadline);
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
  // Our header over the value `old` describes (it exists): in place over a
  // header, after a 64-byte reservation over a raw object of another size.
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
  // objects (key_of(i) names the i-th) that fit one staging slot, at most
  // kMaxObjectsPerCall a run: `slot` holds their keys and a 64-byte place
  // in the slot for each.
  struct HeaderSlot;
  template <typename KeyOf, typename Fn>
  void ForEachHeaderSlot(size_t count, KeyOf&& key_of, Fn&& fn);
  std::vector<Settled> CheckSettled(std::span<const ChunkWrite> values, Deadline& deadline);

  MooncakeClient& client_;
  // Whether direct writes are on: configured, possible here, and not turned
  // off by a provider that turned out unable.
  std::atomic<bool> direct_writes_{false};
};

}  // namespace mooncake_connector::mooncake
