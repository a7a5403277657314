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

#include "core/hash_internal.h"
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

// One value read object by object (MooncakeReader::ReadObjects): where its
// bytes go, what is checked, and how it ended.
struct ValueRead {
  const GetIntoRequest* request = nullptr;
  std::optional<ChunkHeader> header;  // a chunked value; none: one raw object
  bool check_whole = false;           // value_hash is compared with header->checksum
  std::optional<Xxh3Stream> value_hash;  // of the whole value as the header's checksum is, fed in order
  std::optional<Xxh3Stream> data_hash;  // of its destination bytes (if request->data_xxh3), from the first
  Status status;                      // the first failure of an object of it
  bool done = false;                  // every object taken and the value checked
};

// One Mooncake object of a value: a raw value's only object, or a chunk.
struct ObjectRead {
  size_t value;           // index into the values
  std::string key;
  uint64_t offset, size;  // its bytes in the value
  bool last;              // the value is finished (checked) after it
};

// The status of object `o` of `v` after a transfer returned `result` for it
// (its length, or an error code): Ok when all its bytes arrived; Aborted when
// it vanished (its value may have been replaced); DataLoss when it has
// another size; the error otherwise.
Status ObjectResult(const MooncakeClient& client, const ValueRead& v, const ObjectRead& o, int64_t result);
// Bytes [o.offset, o.offset + o.size) of the value arrived: copied from
// `from` (null: already in place), fed to the value's hashes.
void TakeObject(ValueRead& v, const ObjectRead& o, const std::byte* from);
// The value's objects are all taken: its checksum compared (DataLoss on a
// mismatch), request->data_xxh3 set, done.
void FinishValue(ValueRead& v);
// The chunks [from, to) of a chunked value, as objects of value `value`
// (`last` on the chunk to-1 when `finishes`).
std::vector<ObjectRead> ChunkObjects(size_t value, std::string_view key, const ChunkHeader& h, uint64_t from,
                                     uint64_t to, bool finishes);

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
  // Reads a chunked value through the staging slots (the edges of a range
  // as ranges of their chunks, where the provider can), or straight into
  // registered memory when its chunks are larger than a slot.
  Result<uint64_t> ReadChunks(const std::string& key, const ChunkHeader& h,
                              const GetIntoRequest& target, Deadline& deadline, std::mutex* turn);
  Result<uint64_t> ReadLargeObject(const std::string& key, const GetIntoRequest& target,
                                   uint64_t size, Deadline& deadline);

  // The one executor of object transfers (mooncake_read_objects.cc): reads
  // `objects` (each value's in order) in calls of at most `max_objects`
  // objects (and kMaxObjectsPerCall) and `max_bytes` bytes (at least one
  // object), each object's status by ObjectResult, its bytes taken by
  // TakeObject, a value finished by FinishValue after its `last` object.
  // Objects of a value that failed are skipped. A call that fails as a whole
  // gives its failure to the values of its objects and of the objects after
  // it, and ends the read; returns its code (0 if none did).
  struct ObjectTransfer {
    enum Kind {
      // Each object scattered straight over its request's head and
      // destination (batch_get_into_multi); hashed in place on a helper
      // thread (`hash_threads` values side by side) while the next call
      // transfers.
      kInPlace,
      // Each object straight into its request's destination, registered
      // memory without a head (batch_get_into); hashed as kInPlace.
      kRegistered,
      // Into staging slots (batch_get_into; objects of at most a slot),
      // copied out and hashed after the call, the slots given back before
      // the next call takes its own.
      kStaged,
    } kind;
    size_t max_objects;
    uint64_t max_bytes;
    // Retries transient failures until it; null: one attempt per call.
    Deadline* deadline = nullptr;
    // Held for each transfer (see ReadValue).
    std::mutex* turn = nullptr;
    size_t hash_threads = 1;
  };
  int64_t ReadObjects(std::vector<std::unique_ptr<ValueRead>>& values, std::span<const ObjectRead> objects,
                      const ObjectTransfer& how);
  // Direct reads (MooncakeConfig::direct_transfers; mooncake_read_direct.cc).
  // True when `r` may be transferred straight into its own memory.
  bool ReadsDirectly(const GetIntoRequest& r) const {
    const SharedBlocks* shared = client_.shared();
    return r.exact && r.head.size() + r.destination.size() >= kDirectTransferMin &&
           direct_reads_.load(std::memory_order_relaxed) &&
           (shared == nullptr || shared->Contains(r.destination.data(), r.destination.size()));
  }
  // Reads requests `which` straight into their memory: raw objects, and the
  // chunks of values whose header this batch has read (headers[i]), by
  // ReadObjects in place, in calls of about kDirectReadCallBytes. Objects held in
  // this client's own segment (local_reads_) are copied from there on a
  // helper thread, copy and checksum in one pass, several values side by
  // side. Sets out[i] for each value read and verified; the rest (another
  // size, a chunk missing or of another size, a checksum mismatch, an error)
  // are left to ReadValue, which reads them through the slots and says what
  // is wrong.
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
