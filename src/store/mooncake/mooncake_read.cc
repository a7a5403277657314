// The read path. A read returns the bytes of one completed write of the key:
// raw objects are single Mooncake objects; a chunked value is read from the
// generation its header names (chunks are never rewritten), its size taken
// from the header and its bytes checked against the header's checksum.
#include <algorithm>
#include <cstring>

#include "core/hash_internal.h"
#include "store/deliver_internal.h"
#include "store/mooncake/mooncake_reader_internal.h"

namespace mooncake_connector::mooncake {
namespace {
// A chunk missing while its header still names it: a writer or remover may
// be between steps, so it is looked at again this many times (with backoff)
// before the value is reported lost.
constexpr int kVanishedChecks = 5;
// A checksum mismatch is read again this many times before it is DataLoss.
constexpr int kChecksumChecks = 2;
}  // namespace

FirstObject ClassifyFirstObject(ConstBytes object) {
  FirstObject first;
  if (!LooksLikeChunkHeader(object.size(), object)) return first;
  Result<ChunkHeader> parsed = ParseChunkHeader(object);
  if (!parsed.ok()) {
    first.kind = FirstObject::kDamaged;
    first.damage = parsed.status();
  } else {
    first.kind = parsed->tombstone ? FirstObject::kAbsent : FirstObject::kHeader;
    first.header = *parsed;
  }
  return first;
}

std::vector<Result<uint64_t>> MooncakeReader::BatchGetInto(std::span<const GetIntoRequest> requests) {
  // One native batch call reads many keys: each request that accepts at most
  // a quarter slot gets a piece of the staging slots that large (values
  // larger than their piece are refused by Mooncake and read one by one
  // below, as are requests for more).
  // Raw values are done then; a chunk header is kept and the value's chunks
  // read after the slots are given back; anything else (a missing key, an
  // error, a transient refusal) is read again by ReadValue, which retries.
  std::vector<std::optional<Result<uint64_t>>> out(requests.size());
  std::vector<std::optional<HeaderBytes>> headers(requests.size());
  const std::vector<bool> repeated = RepeatedKeys(requests);
  size_t next = 0;
  while (next < requests.size()) {
    std::vector<size_t> batch;
    std::vector<uint64_t> offsets, sizes;
    uint64_t used = 0;  // bytes of the slots taken, pieces 64-byte aligned
    const uint64_t space = static_cast<uint64_t>(client_.slot_size()) * client_.arena().slots();
    for (; next < requests.size() && batch.size() < kMaxObjectsPerCall; ++next) {
      const GetIntoRequest& r = requests[next];
      Status valid = ValidateKey(r.key);
      if (!valid.ok()) {
        out[next] = valid;
        continue;
      }
      // Repeated keys, and ranges (the value may be larger than what a
      // range asks for): ReadValue.
      if (repeated[next] || r.partial) continue;
      uint64_t want = std::max<uint64_t>(r.head.size() + r.destination.size(), kChunkHeaderSize);
      if (ReadsDirectly(r)) {
        // A value of this size is one raw object, read straight into place
        // by ReadDirect; or a chunk header, read here (ReadDirect then reads
        // its chunks). A writer with another chunk_size makes the guess
        // wrong: that read fails and ReadValue reads the key as ever.
        if (client_.IsRawSize(r.head.size() + r.destination.size())) continue;
        want = kChunkHeaderSize;
      }
      // Large values gain nothing from sharing a call (the transfer
      // dominates) and copy out of cache-warm staging when read one by one.
      if (want > client_.slot_size() / 4) continue;
      // A piece never straddles two slots (they need not be contiguous).
      uint64_t at = used;
      if (at / client_.slot_size() != (at + want - 1) / client_.slot_size()) at = (at / client_.slot_size() + 1) * client_.slot_size();
      if (at + want > space) break;
      batch.push_back(next);
      offsets.push_back(at);
      sizes.push_back(want);
      used = (at + want + 63) / 64 * 64;
    }
    if (batch.empty()) continue;
    const size_t n = batch.size();
    const size_t slots_needed = static_cast<size_t>((used + client_.slot_size() - 1) / client_.slot_size());
    TransferArena::Lease slots = client_.arena().Acquire(std::max<size_t>(slots_needed, 1));
    std::vector<std::string> keys(n);
    std::vector<void*> buffers(n);
    for (size_t j = 0; j < n; ++j) {
      keys[j] = std::string(requests[batch[j]].key);
      buffers[j] = slots[offsets[j] / client_.slot_size()] + offsets[j] % client_.slot_size();
    }
    std::vector<const char*> c_keys = CStrings(keys);
    std::vector<int64_t> results(n, 0);
    if (client_.health().Refusal() != 0) continue;  // ReadValue fails them at once
    auto start = std::chrono::steady_clock::now();
    int rc = client_.api()->batch_get_into(client_.handle(), c_keys.data(), buffers.data(), sizes.data(), n, results.data());
    auto took = std::chrono::steady_clock::now() - start;
    client_.health().Note(rc != 0 ? rc : *std::min_element(results.begin(), results.end()), took);
    for (size_t j = 0; rc == 0 && j < n; ++j) {
      if (results[j] < 0) continue;  // read again below
      const GetIntoRequest& r = requests[batch[j]];
      ConstBytes object(static_cast<const std::byte*>(buffers[j]), static_cast<size_t>(results[j]));
      if (LooksLikeChunkHeader(object.size(), object)) {
        HeaderBytes h;
        std::copy(object.begin(), object.end(), h.begin());
        headers[batch[j]] = h;
        continue;
      }
      Status fits = r.CheckFits(object.size());
      if (fits.ok()) Deliver(r, object);
      out[batch[j]] = fits.ok() ? Result<uint64_t>(object.size()) : Result<uint64_t>(fits);
    }
  }
  std::vector<size_t> direct;
  for (size_t i = 0; i < requests.size(); ++i) {
    const GetIntoRequest& r = requests[i];
    if (out[i] || repeated[i] || !ReadsDirectly(r)) continue;
    if (headers[i] || client_.IsRawSize(r.head.size() + r.destination.size())) direct.push_back(i);
  }
  ReadDirect(requests, direct, headers, out);
  // The rest one by one, client_.read_threads() at a time: one value's transfer
  // overlaps another's copy out of the slots and checksum.
  std::vector<size_t> rest;
  for (size_t i = 0; i < requests.size(); ++i) {
    if (!out[i]) rest.push_back(i);
  }
  std::mutex turn;
  ParallelFor(rest.size(), client_.read_threads(), [&](size_t k) {
    const size_t i = rest[k];
    const GetIntoRequest& r = requests[i];
    out[i] = ReadValue(
        std::string(r.key),
        [&](uint64_t size) -> Result<GetIntoRequest> {
          MC_RETURN_IF_ERROR(r.CheckFits(size));
          return r;
        },
        headers[i] ? &*headers[i] : nullptr, &turn);
  });
  std::vector<Result<uint64_t>> done;
  done.reserve(requests.size());
  for (std::optional<Result<uint64_t>>& r : out) done.push_back(std::move(*r));
  return done;
}

Result<Buffer> MooncakeReader::Get(std::string_view key) {
  MC_RETURN_IF_ERROR(ValidateKey(key));
  // Sized once the value's size is known: one round trip for small values.
  Buffer buffer;
  Result<uint64_t> got = ReadValue(std::string(key), [&](uint64_t size) -> Result<GetIntoRequest> {
    MC_ASSIGN_OR_RETURN(buffer, Buffer::Allocate(size));
    return GetIntoRequest{key, buffer.bytes()};
  });
  if (!got.ok()) return got.status();
  return buffer.Slice(0, *got);
}

Result<uint64_t> MooncakeReader::ReadValue(const std::string& key, const Destination& destination,
                                          const HeaderBytes* first_header, std::mutex* turn) {
  Deadline deadline = client_.NewDeadline();
  std::optional<uint64_t> vanished_generation;
  int vanished = 0;
  int mismatches = 0;
  for (;;) {
    ChunkHeader header;
    bool large = false;
    {
      // The header a batched read already fetched is used once; a re-read
      // (a vanished chunk, a checksum mismatch) fetches it again.
      std::optional<TransferArena::Lease> lease;
      const std::byte* object_data;
      int64_t n;
      if (first_header != nullptr) {
        object_data = first_header->data();
        n = static_cast<int64_t>(first_header->size());
        first_header = nullptr;
      } else {
        lease.emplace(client_.arena().Acquire(1));
        std::byte* slot = (*lease)[0];
        object_data = slot;
        n = RetryTransient(deadline, [&] { return client_.api()->get_into(client_.handle(), key.c_str(), slot, client_.slot_size()); });
      }
      if (n == kErrInvalidParams || n == kErrBufferOverflow) {
        large = true;
      } else if (n < 0) {
        return client_.Fail(n, "get_into '" + key + "'");
      } else {
        ConstBytes object(object_data, static_cast<size_t>(n));
        FirstObject first = ClassifyFirstObject(object);
        if (first.kind == FirstObject::kRaw) {
          MC_ASSIGN_OR_RETURN(GetIntoRequest target, destination(object.size()));
          Deliver(target, object);
          return object.size();
        }
        if (first.kind == FirstObject::kDamaged) {
          if (++mismatches <= kChecksumChecks && deadline.Backoff()) continue;
          return first.damage.WithContext("reading '" + key + "'");
        }
        if (first.kind == FirstObject::kAbsent) return NotFound("key '" + key + "' not found");
        header = first.header;
      }
    }  // the slot goes back before more slots are taken
    if (large) {
      // Larger than a slot: a single object written by another client.
      int64_t size = RetryTransient(deadline, [&] { return client_.api()->get_size(client_.handle(), key.c_str()); });
      if (size < 0) return client_.Fail(size, "get_size '" + key + "'");
      if (static_cast<uint64_t>(size) <= client_.slot_size()) continue;  // changed under us
      MC_ASSIGN_OR_RETURN(GetIntoRequest target, destination(static_cast<uint64_t>(size)));
      return ReadLargeObject(key, target, static_cast<uint64_t>(size), deadline);
    }
    MC_ASSIGN_OR_RETURN(GetIntoRequest target, destination(header.total_size));
    Result<uint64_t> got = ReadChunks(key, header, target, deadline, turn);
    if (got.ok()) return got;
    if (got.status().code() == StatusCode::kAborted) {
      // A chunk vanished: the value was replaced or removed meanwhile (a new
      // header, or none), or it was lost (the same header, again and again).
      if (vanished_generation != header.generation) vanished = 0;
      vanished_generation = header.generation;
      if (++vanished < kVanishedChecks && deadline.Pause(std::chrono::milliseconds(10 << vanished))) {
        continue;
      }
      return DataLoss("a chunk of the " + std::to_string(header.total_size) + "-byte value of '" +
                      key + "' is gone (evicted under memory pressure? write weights with pin=hard)");
    }
    if (got.status().code() == StatusCode::kDataLoss && ++mismatches <= kChecksumChecks &&
        deadline.Backoff()) {
      continue;
    }
    return got;
  }
}

Result<uint64_t> MooncakeReader::ReadChunks(const std::string& key, const ChunkHeader& h,
                                           const GetIntoRequest& target, Deadline& deadline,
                                           std::mutex* turn) {
  // Chunk lengths come from the header only. A share of the slots per call,
  // so that client_.read_threads() reads run at once.
  ObjectTransfer how{ObjectTransfer::kStaged, std::max<size_t>(1, client_.arena().slots() / client_.read_threads()),
                     UINT64_MAX, &deadline, turn};
  std::vector<std::unique_ptr<ValueRead>> values;
  values.push_back(std::make_unique<ValueRead>());
  ValueRead& v = *values[0];
  v.header = h;
  if (h.chunk_size > client_.slot_size() && h.num_chunks > 0) {
    // Chunks larger than a slot (written with a larger chunk_size): straight
    // into registered memory.
    if (!client_.config().client_address.empty()) {
      return ResourceExhausted("'" + key + "' was written in chunks of " + std::to_string(h.chunk_size) +
                               " bytes, above this client's chunk_size; in standalone-client mode "
                               "raise chunk_size (MOONCAKE_CHUNK_SIZE) to read it");
    }
    return ReadRegistered(key, target, h.total_size, [&](MutableBytes dst) -> Result<uint64_t> {
      const GetIntoRequest whole{key, dst};
      v.request = &whole;
      v.check_whole = h.has_checksum();
      how.kind = ObjectTransfer::kRegistered;
      ReadObjects(values, ChunkObjects(0, key, h, 0, h.num_chunks, false), how);
      if (v.status.ok()) FinishValue(v);
      if (!v.status.ok()) return v.status;
      return h.total_size;
    });
  }
  v.request = &target;
  v.check_whole = ChecksValue(h, target);
  uint64_t from = 0, to = h.num_chunks;
  // A range: the chunks it touches, no more.
  const bool partial = target.partial;
  if (partial && h.chunk_size > 0) {
    from = target.offset / h.chunk_size;
    const uint64_t end = target.offset + target.head.size() + target.destination.size();
    to = std::max(from, std::min<uint64_t>(h.num_chunks, (end + h.chunk_size - 1) / h.chunk_size));
  }
  // A range that only touches its first or last chunk reads just its bytes
  // of it, where the provider reads ranges; on any error the chunk is read
  // whole, which says what is wrong.
  const bool ranges = partial && !v.check_whole && client_.api()->batch_get_range_into != nullptr;
  const uint64_t range_begin = partial ? target.offset : 0;
  const uint64_t range_end = partial ? range_begin + target.head.size() + target.destination.size() : 0;
  // The range's bytes [lo, hi) of chunk c, if they are not the whole chunk.
  auto edge = [&](uint64_t c) -> std::optional<std::pair<uint64_t, uint64_t>> {
    const uint64_t c_begin = c * h.chunk_size, c_end = c_begin + h.ChunkLength(c);
    const uint64_t lo = std::max(range_begin, c_begin), hi = std::min(range_end, c_end);
    if (!ranges || lo >= hi || (lo == c_begin && hi == c_end)) return std::nullopt;
    return std::pair(lo, hi);
  };
  auto read_edge = [&](uint64_t c, std::pair<uint64_t, uint64_t> range) -> bool {
    const auto [lo, hi] = range;
    TransferArena::Lease slot = client_.arena().Acquire(1);
    const std::string chunk_key = h.ChunkKey(key, c);
    const char* c_key = chunk_key.c_str();
    void* buffer = slot[0];
    const uint64_t offset = lo - c * h.chunk_size;
    const size_t size = hi - lo;
    int64_t result = 0;
    int call = -1;
    RetryTransient(deadline, [&]() -> int64_t {
      std::unique_lock<std::mutex> my_turn;
      if (turn != nullptr) my_turn = std::unique_lock(*turn);
      call = client_.api()->batch_get_range_into(client_.handle(), &c_key, 1, &buffer, &offset, &size, &result);
      return call != 0 ? call : result;
    });
    if (call != 0 || result != static_cast<int64_t>(size)) return false;
    TakeObject(v, {0, chunk_key, lo, size, false}, static_cast<const std::byte*>(buffer));
    return true;
  };
  // The last chunk is read after the others, so that bytes arrive in order;
  // a range within one chunk is that chunk's first (and only) edge.
  const auto first_edge = from < to ? edge(from) : std::nullopt;
  const auto last_edge = to - from > 1 ? edge(to - 1) : std::nullopt;
  if (first_edge && read_edge(from, *first_edge)) ++from;
  ReadObjects(values, ChunkObjects(0, key, h, from, last_edge ? to - 1 : to, false), how);
  if (last_edge && v.status.ok() && !read_edge(to - 1, *last_edge)) {
    ReadObjects(values, ChunkObjects(0, key, h, to - 1, to, false), how);
  }
  if (v.status.ok()) FinishValue(v);
  if (!v.status.ok()) return v.status;
  return h.total_size;
}

Result<uint64_t> MooncakeReader::ReadRegistered(
    const std::string& key, const GetIntoRequest& target, uint64_t size,
    const std::function<Result<uint64_t>(MutableBytes)>& read) {
  Buffer scratch;
  MutableBytes dst = target.destination.first(std::min<uint64_t>(size, target.destination.size()));
  if (!target.head.empty() || target.partial) {
    MC_ASSIGN_OR_RETURN(scratch, Buffer::Allocate(size));
    dst = scratch.bytes();
  }
  int rc = client_.api()->register_buffer(client_.handle(), dst.data(), dst.size());
  if (rc != 0) return client_.Fail(rc, "register_buffer for '" + key + "'");
  Result<uint64_t> got = read(dst);
  client_.api()->unregister_buffer(client_.handle(), dst.data());
  if (got.ok()) {
    if (!scratch.bytes().empty()) {
      Deliver(target, scratch.bytes().first(*got));
    } else {
      HashDelivered(target, *got);
    }
  }
  return got;
}

Result<uint64_t> MooncakeReader::ReadLargeObject(const std::string& key, const GetIntoRequest& target,
                                                uint64_t size, Deadline& deadline) {
  if (!client_.config().client_address.empty()) {
    return ResourceExhausted("'" + key + "' is one object of " + std::to_string(size) +
                             " bytes, above chunk_size; in standalone-client mode raise chunk_size "
                             "(MOONCAKE_CHUNK_SIZE) to read it");
  }
  return ReadRegistered(key, target, size, [&](MutableBytes dst) -> Result<uint64_t> {
    int64_t n = RetryTransient(deadline, [&] {
      return client_.api()->get_into(client_.handle(), key.c_str(), dst.data(), dst.size());
    });
    if (n < 0) return client_.Fail(n, "get_into '" + key + "'");
    return static_cast<uint64_t>(n);
  });
}

}  // namespace mooncake_connector::mooncake
