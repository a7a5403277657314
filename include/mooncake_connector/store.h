// The store interface: a flat key -> bytes map that every backend implements
// (memory://, mooncake://). Its operations are shaped like the Mooncake Store
// C ABI (batch put from memory ranges, batch get into caller buffers, batch
// exists, size, remove). A call is not one native call: mooncake:// may make
// several per key (reading a header, then its chunks; writing chunks, then
// committing; retrying transient refusals), as docs/mooncake_layout.md says.
//
// Contract for every backend (checked by tests/cpp/store_conformance.h):
//  - Keys are non-empty byte strings without control characters (ValidateKey);
//    others are InvalidArgument.
//  - Put replaces any existing value (last writer wins); a Put that fails
//    leaves the previous value readable.
//  - A read returns the bytes of one completed Put of that key, never a mix
//    of two and never another key's bytes.
//  - Batch calls return one result per request, in request order; requests are
//    independent, so one failure does not stop the others.
//  - A missing key is NotFound (Get, GetInto, GetSize, Remove).
//  - GetInto into a buffer smaller than the value is InvalidArgument and
//    leaves the value unchanged; the message names the value's size. With a
//    `head`, a value shorter than the head is InvalidArgument too.
//  - List returns the keys that start with `prefix`, sorted.
//  - All methods are safe to call from many threads at once.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mooncake_connector/buffer.h"
#include "mooncake_connector/export.h"
#include "mooncake_connector/status.h"

namespace mooncake_connector {

// Placement hints. Backends that keep one copy in one process ignore them.
struct WriteOptions {
  int replica_num = 1;    // copies on distinct storage segments
  bool soft_pin = false;  // evicted last under memory pressure
  bool hard_pin = false;  // never evicted
};

struct PutRequest {
  std::string_view key;
  // The value is the concatenation of these ranges (a scatter list), so that
  // a header and a payload need not be joined by the caller.
  std::span<const ConstBytes> parts;
  // Optional: the XXH3-64 of the whole value (all parts), or the checksum
  // value_xxh3_head says, when the caller has computed it already (a model
  // save hashes each tensor for its manifest);
  // a store that records a value checksum then takes it instead of reading
  // the value once more. It must be right: reads check against it.
  std::optional<uint64_t> value_xxh3 = std::nullopt;
  // Optional, in place of value_xxh3: a call that returns it, which such a
  // store makes only once the value's bytes are in and before it publishes
  // the value, so that a caller can hash while the store transfers. Called
  // on the thread that called BatchPut; again if the value is written again
  // (after a failure), so it must return the same checksum each time.
  std::function<uint64_t()> value_xxh3_later = nullptr;
  // What value_xxh3 (or value_xxh3_later's result) hashes: by default the
  // whole value (Xxh3). Otherwise the value in pieces (Xxh3Stream(piece,
  // head), docs/mooncake_layout.md, version 3): its first value_xxh3_head
  // bytes, then pieces of StoreFeatures::chunk_bytes, which a caller that
  // hashed a value's payload in pieces of that size can derive from their
  // digests without a pass over the bytes. A store whose chunk_bytes is 0
  // takes only the default.
  static constexpr uint64_t kWholeValue = UINT64_MAX;
  uint64_t value_xxh3_head = kWholeValue;
};

struct GetIntoRequest {
  std::string_view key;
  MutableBytes destination;
  // Optional scatter: when non-empty, the value's first head.size() bytes go
  // here and the rest to the start of `destination` (a tensor value's header
  // to scratch memory, its data straight into the tensor).
  MutableBytes head = {};
  // Optional: receives the XXH3-64 of the bytes the read put in `destination`
  // (the value after `head`), hashed as they are copied, while they are in
  // cache, so that a caller verifying a checksum makes no second pass over
  // the memory. Every store sets it on success when it is given.
  uint64_t* data_xxh3 = nullptr;
  // Optional: the caller expects a value of exactly head.size() +
  // destination.size() bytes (a tensor whose size the manifest gives). A
  // store may then transfer straight into `head` and `destination` without
  // staging, so that after a failed read (another size included) they hold
  // unspecified bytes; what is returned and reported is as without it. With
  // data_xxh3 given too, the caller checks the head's bytes and that hash
  // itself (against a manifest), so a store may skip checksums of its own
  // over the same value (a chunked value's).
  bool exact = false;
  // Optional byte range (as tensorstore's byte-range reads): when `partial`
  // is set, only the value's bytes [offset, offset + head.size() +
  // destination.size()) are delivered (to head, then destination); the
  // value must hold at least that many bytes and may hold more. A store
  // reads no more of the value than it must (a chunked value: the chunks
  // the range touches) and cannot check a checksum of the whole value: the
  // caller verifies what it assembles. data_xxh3 hashes the destination's
  // bytes. Not combined with `exact`. A successful read returns the size of
  // the whole value.
  bool partial = false;
  uint64_t offset = 0;
  // With data_xxh3: hash the destination's bytes in pieces of this many
  // bytes, as a model manifest of format 4 records tensors' checksums
  // (docs/model_layout.md); 0: as one piece.
  uint64_t data_xxh3_piece = 0;

  // True when the caller verifies this value itself (see `exact`).
  bool CallerVerifies() const { return exact && data_xxh3 != nullptr; }

  // Ok if a value of `size` bytes fits (partial: covers the range);
  // InvalidArgument naming the size (and the key) otherwise, also when the
  // value is shorter than `head`.
  Status CheckFits(uint64_t size) const;
  // Copies the value's bytes [offset, offset + bytes.size()) to where they
  // belong (partial: those of them in the range). REQUIRES:
  // CheckFits(offset + bytes.size()), or `partial`.
  void CopyAt(uint64_t offset, ConstBytes bytes) const;
  // Partial: the part of the value's bytes [*offset, *offset + bytes.size())
  // in the range, *offset made relative to the range's start. Otherwise
  // `bytes` unchanged.
  ConstBytes Clip(uint64_t* offset, ConstBytes bytes) const;
};

// Memory a store reads into faster than into other memory
// (StoreFeatures::read_memory): mooncake:// in standalone-client mode lends
// blocks of its client's shared memory, which Mooncake's client process
// writes in place (no copy out of staging). Lives as long as its store.
class MC_EXPORT ReadMemory {
 public:
  virtual ~ReadMemory() = default;
  // Memory for a value about to be read with BatchGetInto (a tensor a
  // streaming model load allocates); ordinary memory where none of the
  // faster kind is free or set up yet.
  virtual Result<Buffer> Allocate(size_t size) = 0;
  // A streaming load (LoadOptions::streaming) has ended: its reader asked
  // Allocate for about `batch_bytes` at a time (blocks of at most `largest`
  // bytes), and let go of each batch soon. Memory that is slow to set up is
  // prepared here for the next such load, off any load's path (mooncake://:
  // after a process's second streaming load, on a thread of its own, so
  // that a process that loads once or twice pays nothing).
  virtual void StreamingLoadDone(uint64_t batch_bytes, uint64_t largest) = 0;
};

// What a store offers beyond the calls every store has, for callers that
// plan around it (as tensorstore's SupportedFeatures): asked once, constant
// for the store's life.
struct StoreFeatures {
  // A first write of a value of more than this many bytes stores a
  // checksum of the whole value, so that PutRequest::value_xxh3 spares the
  // store a pass over it (an overwrite may record one at any size, computing
  // it itself when not given); in pieces of chunk_bytes after a head where
  // chunk_bytes > 0 (PutRequest::value_xxh3_head). UINT64_MAX: no checksum
  // is stored.
  uint64_t checksums_values_above = UINT64_MAX;
  // Values above this size are stored in objects of this many bytes
  // (mooncake://'s chunk_size); a reader plans pieces of at least this
  // size. 0: values are kept whole.
  uint64_t chunk_bytes = 0;
  // BatchView lends the stored values themselves (memory://); otherwise it
  // answers Unimplemented.
  bool lends_values = false;
  // Memory this store reads into faster than into other memory, for the
  // tensors a load allocates; null: any memory is as good (Buffer::Allocate).
  ReadMemory* read_memory = nullptr;
};

class MC_EXPORT Store {
 public:
  virtual ~Store() = default;

  // The URL that opens this store again (e.g. "memory://name").
  virtual std::string url() const = 0;

  virtual std::vector<Status> BatchPut(std::span<const PutRequest> requests,
                                       const WriteOptions& options) = 0;
  // Each result is the value's size, i.e. the bytes written at the start of
  // its destination. Requests may be served in parallel and in any order:
  // their destinations (and heads) must not overlap.
  virtual std::vector<Result<uint64_t>> BatchGetInto(std::span<const GetIntoRequest> requests) = 0;
  virtual std::vector<Result<bool>> BatchExists(std::span<const std::string_view> keys) = 0;
  virtual Result<uint64_t> GetSize(std::string_view key) = 0;
  virtual Status Remove(std::string_view key) = 0;
  virtual Result<std::vector<std::string>> List(std::string_view prefix) = 0;

  // The whole value in a new buffer aligned to kBufferAlignment. The default
  // asks for the size, then reads into a buffer of that size, and retries if
  // a concurrent writer changed the size in between.
  virtual Result<Buffer> Get(std::string_view key);

  // The stored values themselves, shared rather than copied, for a store
  // that keeps them in this process's memory (memory://); Unimplemented
  // otherwise (the default). A view stays valid and unchanged while held,
  // whatever is written or removed meanwhile. A stored value is lent under
  // one owner() for its whole life and its bytes never change, so views
  // with the same owner hold the same bytes. NotFound for a missing key.
  virtual std::vector<Result<Buffer>> BatchView(std::span<const std::string_view> keys);

  // Memory for a value about to be read with BatchGetInto: the store's
  // read memory (StoreFeatures::read_memory), or Buffer::Allocate(size).
  Result<Buffer> AllocateForRead(size_t size) const;

  // What this store offers beyond the calls every store has (see
  // StoreFeatures). The default: nothing beyond them.
  virtual StoreFeatures Features() const;
  // Whether a first write of a value of `size` bytes stores a checksum of
  // the whole value (StoreFeatures::checksums_values_above).
  bool RecordsValueChecksum(uint64_t size) const { return size > Features().checksums_values_above; }

  // Single-key forms of the batch calls.
  Status Put(std::string_view key, std::span<const ConstBytes> parts,
             const WriteOptions& options = {});
  Status Put(std::string_view key, ConstBytes value, const WriteOptions& options = {});
  Result<uint64_t> GetInto(std::string_view key, MutableBytes destination);
  Result<bool> Exists(std::string_view key);
};

// InvalidArgument unless `key` is acceptable to every backend: non-empty, at
// most kMaxKeyBytes bytes, no ASCII control characters (0x00-0x1f, 0x7f; the
// Mooncake backend uses them internally and lists keys one per line).
inline constexpr size_t kMaxKeyBytes = 4096;
MC_EXPORT Status ValidateKey(std::string_view key);

}  // namespace mooncake_connector
