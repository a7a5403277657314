// The read path of the mooncake:// store (mooncake_read.cc, and direct reads
// in mooncake_read_direct.cc): a read returns the bytes of one completed
// write of the key. Works through the store's MooncakeClient, which outlives
// it.
#pragma once

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "store/mooncake/mooncake_client_internal.h"

namespace mooncake_connector::mooncake {

// What the object under a key is, by the layout's rules (docs/mooncake_layout.md):
// the value itself (raw), a chunk header, a tombstone (the key reads as
// absent), or a header that fails its own checksum (`damage` says why; a
// concurrent in-place rewrite tears one, so it is read again first).
struct FirstObject {
  enum Kind { kRaw, kHeader, kAbsent, kDamaged } kind = kRaw;
  ChunkHeader header;  // kHeader
  Status damage;       // kDamaged
};
FirstObject ClassifyFirstObject(ConstBytes object);

// Whether a read of request `r` checks the bytes against the header's
// checksum of the whole value: not for a range of it, nor when the caller
// checks what it asked for (GetIntoRequest::CallerVerifies).
inline bool ChecksValue(const ChunkHeader& h, const GetIntoRequest& r) {
  return h.has_checksum() && !r.CallerVerifies() && !r.partial;
}

class MooncakeReader final : public ReadMemory {
 public:
  explicit MooncakeReader(MooncakeClient& client);

  std::vector<Result<uint64_t>> BatchGetInto(std::span<const GetIntoRequest> requests);
  Result<Buffer> Get(std::string_view key);
  // In standalone-client mode, values of kDirectTransferMin bytes or more
  // get a block of the client's shared memory (SharedBlocks), read into
  // directly, where one is free; ordinary memory otherwise.
  Result<Buffer> Allocate(size_t size) override;
  // Standalone-client mode: after the second streaming load, shared
  // memory for 2.5 batches is made in the background.
  void StreamingLoadDone(uint64_t batch_bytes, uint64_t largest) override;

 private:
  using HeaderBytes = std::array<std::byte, kChunkHeaderSize>;
  // Where a value of `size` bytes goes (checked to fit); an error stops the
  // read.
  using Destination = std::function<Result<GetIntoRequest>(uint64_t size)>;

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
    const SharedBlocks* shared = client_.shared();
    return r.exact && r.head.size() + r.destination.size() >= kDirectTransferMin &&
           direct_reads_.load(std::memory_order_relaxed) &&
           (shared == nullptr || shared->Contains(r.destination.data(), r.destination.size()));
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

  MooncakeClient& client_;
  // Whether direct reads are on: configured, possible here, and not turned
  // off by a provider that turned out unable.
  std::atomic<bool> direct_reads_{false};
  // Whether direct reads look for objects in this client's own segment
  // (MooncakeConfig::local_reads, a segment of its own, a provider that can
  // tell), and the memory such objects may lie in.
  std::atomic<bool> local_reads_{false};
  ReadableMemory readable_;
  std::atomic<int> streaming_loads_{0};
};

}  // namespace mooncake_connector::mooncake
