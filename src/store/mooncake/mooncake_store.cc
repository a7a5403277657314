#include "mooncake_connector/mooncake_store.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <random>

#include "store/mooncake/chunked_value_internal.h"
#include "store/mooncake/mooncake_api_internal.h"
#include "store/mooncake/mooncake_store_internal.h"
#include "store/mooncake/network_internal.h"
#include "store/mooncake/transfer_arena_internal.h"

namespace mooncake_connector {
namespace {

using mooncake::Api;
using mooncake::ChunkHeader;
using mooncake::Handle;
using mooncake::TransferArena;

// Copies bytes [offset, offset + dst.size()) of the concatenation of `parts`.
void Gather(std::span<const ConstBytes> parts, uint64_t offset, MutableBytes dst) {
  size_t written = 0;
  for (ConstBytes part : parts) {
    if (written == dst.size()) break;
    if (offset >= part.size()) {
      offset -= part.size();
      continue;
    }
    size_t n = std::min(part.size() - offset, dst.size() - written);
    std::memcpy(dst.data() + written, part.data() + offset, n);
    written += n;
    offset = 0;
  }
}

uint64_t NewGeneration() {
  static std::mutex mutex;
  static std::mt19937_64 rng(std::random_device{}());
  std::lock_guard lock(mutex);
  uint64_t g;
  do g = rng(); while (g == 0);
  return g;
}

// What a key currently holds, as far as the writer needs to know.
struct Existing {
  bool exists = false;
  std::optional<ChunkHeader> header;  // set when the value is chunked
};

class MooncakeStore final : public Store {
 public:
  MooncakeStore(MooncakeConfig config, const Api* api, Handle handle)
      : config_(std::move(config)), api_(api), handle_(handle) {
    replicate_.replica_num = static_cast<size_t>(config_.replica_num);
    replicate_.with_soft_pin = config_.pin == PinMode::kSoft;
    replicate_.with_hard_pin = config_.pin == PinMode::kHard;
  }

  ~MooncakeStore() override {
    arena_.reset();  // unregisters before the client goes
    api_->destroy(handle_);
  }

  Status Init() {
    MC_ASSIGN_OR_RETURN(arena_, TransferArena::Create(api_, handle_, config_.chunk_size,
                                                      config_.transfer_slots));
    return Status::Ok();
  }

  std::string url() const override {
    return "mooncake://" + (config_.master_address.empty() ? std::string() : config_.master_address);
  }

  std::vector<Status> BatchPut(std::span<const PutRequest> requests,
                               const WriteOptions& options) override {
    mooncake::ReplicateConfig replicate = replicate_;
    replicate.replica_num = std::max<size_t>(replicate.replica_num, options.replica_num);
    replicate.with_soft_pin |= options.soft_pin;
    replicate.with_hard_pin |= options.hard_pin;
    std::vector<Status> out;
    out.reserve(requests.size());
    for (const PutRequest& r : requests) {
      Status s = ValidateKey(r.key);
      out.push_back(s.ok() ? PutOne(r, replicate) : s);
    }
    return out;
  }

  std::vector<Result<uint64_t>> BatchGetInto(std::span<const GetIntoRequest> requests) override {
    std::vector<Result<uint64_t>> out;
    out.reserve(requests.size());
    for (const GetIntoRequest& r : requests) {
      Status s = ValidateKey(r.key);
      if (!s.ok()) {
        out.emplace_back(s);
        continue;
      }
      std::string key(r.key);
      out.push_back(ReadValue(key, [&](uint64_t size) -> Result<MutableBytes> {
        if (size > r.destination.size()) {
          return InvalidArgument("buffer of " + std::to_string(r.destination.size()) +
                                 " bytes is too small for the " + std::to_string(size) +
                                 "-byte value of '" + key + "'");
        }
        return r.destination.first(size);
      }));
    }
    return out;
  }

  std::vector<Result<bool>> BatchExists(std::span<const std::string_view> keys) override {
    std::vector<Result<bool>> out(keys.size(), Result<bool>(false));
    std::vector<std::string> owned;
    std::vector<size_t> index;
    for (size_t i = 0; i < keys.size(); ++i) {
      Status s = ValidateKey(keys[i]);
      if (!s.ok()) {
        out[i] = s;
        continue;
      }
      owned.emplace_back(keys[i]);
      index.push_back(i);
    }
    if (owned.empty()) return out;
    std::vector<const char*> c_keys;
    for (const std::string& k : owned) c_keys.push_back(k.c_str());
    std::vector<int> results(owned.size(), 0);
    int rc = api_->batch_is_exist(handle_, c_keys.data(), c_keys.size(), results.data());
    for (size_t j = 0; j < owned.size(); ++j) {
      int r = rc != 0 ? rc : results[j];
      if (r == 1) out[index[j]] = true;
      else if (r == 0 || r == mooncake::kErrObjectNotFound) out[index[j]] = false;
      else out[index[j]] = Fail(r, "is_exist '" + owned[j] + "'");
    }
    return out;
  }

  Result<uint64_t> GetSize(std::string_view key) override {
    MC_RETURN_IF_ERROR(ValidateKey(key));
    std::string k(key);
    int64_t size = api_->get_size(handle_, k.c_str());
    if (size < 0) return Fail(size, "get_size '" + k + "'");
    if (static_cast<uint64_t>(size) != mooncake::kChunkHeaderSize) return static_cast<uint64_t>(size);
    MC_ASSIGN_OR_RETURN(std::optional<ChunkHeader> header, ReadHeaderIfChunked(k));
    return header ? header->total_size : static_cast<uint64_t>(size);
  }

  Status Remove(std::string_view key) override {
    MC_RETURN_IF_ERROR(ValidateKey(key));
    std::string k(key);
    MC_ASSIGN_OR_RETURN(Existing old, Inspect(k));
    if (!old.exists) return NotFound("key '" + k + "' not found");
    int rc = api_->remove(handle_, k.c_str(), /*force=*/1);
    if (rc != 0) return Fail(rc, "remove '" + k + "'");
    if (old.header) RemoveChunks(k, *old.header);
    return Status::Ok();
  }

  Result<std::vector<std::string>> List(std::string_view prefix) override {
    if (config_.master_address.empty()) {
      return FailedPrecondition("list() asks the master's admin HTTP endpoint, but no master is "
                                "configured: set MOONCAKE_MASTER as well as MOONCAKE_CLIENT");
    }
    std::string admin = mooncake::HostOf(config_.master_address);
    if (admin.find(':') != std::string::npos) admin = "[" + admin + "]";
    admin += ":" + std::to_string(config_.metrics_port);
    Result<std::string> body = mooncake::HttpGet(admin, "/get_all_keys", config_.connect_timeout);
    if (!body.ok()) {
      return body.status().WithContext("listing keys (master admin port: MOONCAKE_MASTER_METRICS_PORT=" +
                                       std::to_string(config_.metrics_port) + ")");
    }
    std::vector<std::string> keys;
    std::string_view rest = *body;
    while (!rest.empty()) {
      size_t nl = rest.find('\n');
      std::string_view line = rest.substr(0, nl);
      rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty() || mooncake::IsChunkKey(line) || !line.starts_with(prefix)) continue;
      keys.emplace_back(line);
    }
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    return keys;
  }

  Result<Buffer> Get(std::string_view key) override {
    MC_RETURN_IF_ERROR(ValidateKey(key));
    // Sized once the value's size is known: one round trip for small values.
    Buffer buffer;
    Result<uint64_t> got = ReadValue(std::string(key), [&](uint64_t size) -> Result<MutableBytes> {
      MC_ASSIGN_OR_RETURN(buffer, Buffer::Allocate(size));
      return buffer.bytes();
    });
    if (!got.ok()) return got.status();
    return buffer.Slice(0, *got);
  }

 private:
  uint64_t chunk_size() const { return config_.chunk_size; }

  // A status for a Mooncake error code; connection failures name the peer.
  Status Fail(int64_t code, const std::string& what) const {
    Status s = mooncake::FromMooncakeError(code, what);
    if (s.code() != StatusCode::kUnavailable) return s;
    std::string peer = config_.client_address.empty() ? "master " + config_.master_address
                                                      : "mooncake_client " + config_.client_address;
    return Status(s.code(), std::string(s.message()) + " [" + peer + "]");
  }

  // Reads a 64-byte object and parses it if it is a chunk header.
  Result<std::optional<ChunkHeader>> ReadHeaderIfChunked(const std::string& key) {
    TransferArena::Lease slot = arena_->Acquire(1);
    int64_t n = api_->get_into(handle_, key.c_str(), slot[0], chunk_size());
    if (n < 0) return Fail(n, "get_into '" + key + "'");
    ConstBytes object(slot[0], static_cast<size_t>(n));
    if (!mooncake::LooksLikeChunkHeader(object.size(), object)) return std::optional<ChunkHeader>();
    MC_ASSIGN_OR_RETURN(ChunkHeader h, mooncake::ParseChunkHeader(object));
    return std::optional<ChunkHeader>(h);
  }

  Result<Existing> Inspect(const std::string& key) {
    int64_t size = api_->get_size(handle_, key.c_str());
    if (size == mooncake::kErrObjectNotFound) return Existing{};
    if (size < 0) return Fail(size, "get_size '" + key + "'");
    Existing e{true, std::nullopt};
    if (static_cast<uint64_t>(size) == mooncake::kChunkHeaderSize) {
      Result<std::optional<ChunkHeader>> h = ReadHeaderIfChunked(key);
      if (h.ok()) e.header = *h;
      else if (h.status().code() == StatusCode::kNotFound) return Existing{};
      // A corrupt header is overwritten like any value; its chunks stay.
    }
    return e;
  }

  // Removes every chunk of a chunked value, best effort.
  void RemoveChunks(const std::string& key, const ChunkHeader& h) {
    for (uint64_t i = 0; i < h.num_chunks; ++i) {
      std::string ck = h.ChunkKey(key, i);
      api_->remove(handle_, ck.c_str(), /*force=*/1);
    }
  }

  Status PutObject(const std::string& key, std::span<const ConstBytes> parts, uint64_t offset,
                   uint64_t size, const mooncake::ReplicateConfig& replicate) {
    TransferArena::Lease slot = arena_->Acquire(1);
    Gather(parts, offset, {slot[0], size});
    int rc = api_->put_from(handle_, key.c_str(), slot[0], size, &replicate);
    if (rc != 0) return Fail(rc, "put_from '" + key + "' (" + std::to_string(size) + " bytes)");
    return Status::Ok();
  }

  // One batch of consecutive chunks, each in its own staging slot.
  struct ChunkBatch {
    uint64_t first = 0;               // index of the batch's first chunk
    std::vector<std::string> keys;
    std::vector<const char*> c_keys;  // into `keys`
    std::vector<void*> buffers;       // staging slots
    std::vector<size_t> sizes;        // exact chunk lengths
  };

  // Calls `fn` for each batch of up to transfer_slots chunks of `h`, holding
  // the batch's slots for the call. Stops at the first error.
  template <typename Fn>
  Status ForEachChunkBatch(const std::string& key, const ChunkHeader& h, Fn&& fn) {
    for (uint64_t first = 0; first < h.num_chunks; first += arena_->slots()) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(arena_->slots(), h.num_chunks - first));
      TransferArena::Lease slots = arena_->Acquire(n);
      ChunkBatch batch;
      batch.first = first;
      for (size_t j = 0; j < n; ++j) {
        uint64_t offset = (first + j) * h.chunk_size;
        batch.keys.push_back(h.ChunkKey(key, first + j));
        batch.buffers.push_back(slots[j]);
        batch.sizes.push_back(static_cast<size_t>(std::min(h.chunk_size, h.total_size - offset)));
      }
      for (const std::string& k : batch.keys) batch.c_keys.push_back(k.c_str());
      MC_RETURN_IF_ERROR(fn(batch));
    }
    return Status::Ok();
  }

  Status PutChunks(const std::string& key, const ChunkHeader& h, std::span<const ConstBytes> parts,
                   const mooncake::ReplicateConfig& replicate) {
    Status s = ForEachChunkBatch(key, h, [&](ChunkBatch& b) -> Status {
      size_t n = b.keys.size();
      for (size_t j = 0; j < n; ++j) {
        Gather(parts, (b.first + j) * h.chunk_size, {static_cast<std::byte*>(b.buffers[j]), b.sizes[j]});
      }
      std::vector<int> results(n, 0);
      int rc = api_->batch_put_from(handle_, b.c_keys.data(), b.buffers.data(), b.sizes.data(), n,
                                    &replicate, results.data());
      for (size_t j = 0; j < n; ++j) {
        int r = rc != 0 ? rc : results[j];
        if (r != 0) {
          return Fail(r, "put_from chunk " + std::to_string(b.first + j) + " of '" + key + "'");
        }
      }
      return Status::Ok();
    });
    if (!s.ok()) RemoveChunks(key, h);
    return s;
  }

  Status PutOne(const PutRequest& r, const mooncake::ReplicateConfig& replicate) {
    std::string key(r.key);
    uint64_t size = 0;
    for (ConstBytes p : r.parts) size += p.size();
    std::byte first[8] = {};
    size_t first_len = static_cast<size_t>(std::min<uint64_t>(size, sizeof first));
    Gather(r.parts, 0, {first, first_len});
    bool chunked = mooncake::NeedsChunking(size, {first, first_len}, chunk_size());

    std::optional<ChunkHeader> header;
    if (chunked) {
      header = mooncake::MakeChunkHeader(size, chunk_size(), NewGeneration());
      MC_RETURN_IF_ERROR(PutChunks(key, *header, r.parts, replicate));
    }
    // Mooncake's put keeps an existing value, so overwrite is remove + put.
    Result<Existing> old = Inspect(key);
    if (!old.ok()) {
      if (header) RemoveChunks(key, *header);
      return old.status();
    }
    if (old->exists) {
      int rc = api_->remove(handle_, key.c_str(), /*force=*/1);
      if (rc != 0 && rc != mooncake::kErrObjectNotFound) {
        if (header) RemoveChunks(key, *header);
        return Fail(rc, "remove '" + key + "' before overwriting it");
      }
    }
    Status put;
    if (header) {
      auto bytes = header->Encode();
      ConstBytes part(bytes.data(), bytes.size());
      put = PutObject(key, {&part, 1}, 0, bytes.size(), replicate);
      if (!put.ok()) RemoveChunks(key, *header);
    } else {
      put = PutObject(key, r.parts, 0, size, replicate);
    }
    if (put.ok() && old->header && (!header || old->header->generation != header->generation)) {
      RemoveChunks(key, *old->header);
    }
    return put;
  }

  // Reads a chunked value's chunks into `dst` (of h.total_size bytes).
  // Aborted when a chunk vanished (a concurrent overwrite or remove): the
  // caller starts over.
  Result<uint64_t> ReadChunks(const std::string& key, const ChunkHeader& h, MutableBytes dst) {
    MC_RETURN_IF_ERROR(ForEachChunkBatch(key, h, [&](ChunkBatch& b) -> Status {
      size_t n = b.keys.size();
      std::vector<int64_t> results(n, 0);
      int rc = api_->batch_get_into(handle_, b.c_keys.data(), b.buffers.data(), b.sizes.data(), n,
                                    results.data());
      for (size_t j = 0; j < n; ++j) {
        std::string which = "chunk " + std::to_string(b.first + j) + " of '" + key + "'";
        int64_t r = rc != 0 ? rc : results[j];
        if (r == mooncake::kErrObjectNotFound) return Aborted(which + " vanished");
        if (r < 0) return Fail(r, "get_into " + which);
        if (static_cast<uint64_t>(r) != b.sizes[j]) {
          return DataLoss(which + " holds " + std::to_string(r) + " bytes, expected " +
                          std::to_string(b.sizes[j]));
        }
        std::memcpy(dst.data() + (b.first + j) * h.chunk_size, b.buffers[j], b.sizes[j]);
      }
      return Status::Ok();
    }));
    return h.total_size;
  }

  // Where a value of `size` bytes goes; an error stops the read.
  using Destination = std::function<Result<MutableBytes>(uint64_t size)>;

  // Reads the value of `key` into the memory `destination` provides; returns
  // its size.
  Result<uint64_t> ReadValue(const std::string& key, const Destination& destination) {
    constexpr int kAttempts = 8;
    // Generation of a chunked value whose chunk went missing on the previous
    // attempt: seeing it again means no writer replaced it, so the chunk was
    // evicted or removed, and the value is lost.
    std::optional<uint64_t> torn_generation;
    for (int attempt = 0; attempt < kAttempts; ++attempt) {
      std::optional<ChunkHeader> header;
      bool too_large_for_a_slot = false;
      {
        TransferArena::Lease slot = arena_->Acquire(1);
        int64_t n = api_->get_into(handle_, key.c_str(), slot[0], chunk_size());
        if (n == mooncake::kErrInvalidParams || n == mooncake::kErrBufferOverflow) {
          too_large_for_a_slot = true;
        } else if (n < 0) {
          return Fail(n, "get_into '" + key + "'");
        } else {
          ConstBytes object(slot[0], static_cast<size_t>(n));
          if (!mooncake::LooksLikeChunkHeader(object.size(), object)) {
            MC_ASSIGN_OR_RETURN(MutableBytes dst, destination(object.size()));
            if (!object.empty()) std::memcpy(dst.data(), object.data(), object.size());
            return object.size();
          }
          MC_ASSIGN_OR_RETURN(ChunkHeader h, mooncake::ParseChunkHeader(object));
          header = h;
        }
      }  // the slot goes back before more slots are taken
      if (too_large_for_a_slot) {
        // Larger than a chunk: a single object written by another client.
        int64_t size = api_->get_size(handle_, key.c_str());
        if (size < 0) return Fail(size, "get_size '" + key + "'");
        if (static_cast<uint64_t>(size) <= chunk_size()) continue;  // changed under us
        MC_ASSIGN_OR_RETURN(MutableBytes dst, destination(static_cast<uint64_t>(size)));
        return ReadLargeObject(key, dst);
      }
      if (torn_generation == header->generation) {
        return DataLoss("a chunk of the " + std::to_string(header->total_size) + "-byte value of '" + key +
                        "' is gone (evicted under memory pressure? write weights with pin=hard)");
      }
      MC_ASSIGN_OR_RETURN(MutableBytes dst, destination(header->total_size));
      Result<uint64_t> got = ReadChunks(key, *header, dst);
      if (got.ok() || got.status().code() != StatusCode::kAborted) return got;
      torn_generation = header->generation;
    }
    return Aborted("value of key '" + key + "' kept changing while being read");
  }

  // An object above the chunk size (written by another Mooncake client):
  // read straight into `dst` (its exact size), registered for the call.
  Result<uint64_t> ReadLargeObject(const std::string& key, MutableBytes dst) {
    if (!config_.client_address.empty()) {
      return ResourceExhausted("'" + key + "' is one object of " + std::to_string(dst.size()) +
                               " bytes, above chunk_size; in standalone-client mode raise chunk_size "
                               "(MOONCAKE_CHUNK_SIZE) to read it");
    }
    int rc = api_->register_buffer(handle_, dst.data(), dst.size());
    if (rc != 0) return Fail(rc, "register_buffer for '" + key + "'");
    int64_t n = api_->get_into(handle_, key.c_str(), dst.data(), dst.size());
    api_->unregister_buffer(handle_, dst.data());
    if (n < 0) return Fail(n, "get_into '" + key + "'");
    return static_cast<uint64_t>(n);
  }

  const MooncakeConfig config_;
  const Api* api_;
  Handle handle_;
  mooncake::ReplicateConfig replicate_;
  std::unique_ptr<TransferArena> arena_;
};

}  // namespace

namespace mooncake {

Result<std::shared_ptr<Store>> NewMooncakeStore(const MooncakeConfig& config, const Api* api,
                                                Handle handle) {
  auto store = std::make_shared<MooncakeStore>(config, api, handle);
  MC_RETURN_IF_ERROR(store->Init());
  return std::shared_ptr<Store>(std::move(store));
}

}  // namespace mooncake
}  // namespace mooncake_connector
