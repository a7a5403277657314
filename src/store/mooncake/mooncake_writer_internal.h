// The write path of the mooncake:// store: first writes (mooncake_write.cc),
// the commit of a chunked value's header (mooncake_commit.cc) and removes
// (mooncake_remove.cc). Works through the store's MooncakeClient, which
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
  // One value over whatever the key holds (mooncake_commit.cc): a raw
  // object put when the key has none, else chunks, commit and settle.
  Status PutOne(const PutRequest& r, const ReplicateConfig& replicate);
  // The header of a new generation of `r`'s value of `size` bytes.
  ChunkHeader NewHeader(const PutRequest& r, uint64_t size) const;
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

  MooncakeClient& client_;
  // Whether direct writes are on: configured, possible here, and not turned
  // off by a provider that turned out unable.
  std::atomic<bool> direct_writes_{false};
};

}  // namespace mooncake_connector::mooncake
