#include <algorithm>
#include <cstring>

#include "store/mooncake/mooncake_store_impl_internal.h"
#include "store/mooncake/new_store_internal.h"
#include "store/mooncake/network_internal.h"

namespace mooncake_connector::mooncake {
namespace {
// How long superseded chunks are retried when leases keep them.
constexpr std::chrono::minutes kDeferredGiveUp{10};
}  // namespace

std::vector<const char*> CStrings(const std::vector<std::string>& keys) {
  std::vector<const char*> out;
  out.reserve(keys.size());
  for (const std::string& k : keys) out.push_back(k.c_str());
  return out;
}

MooncakeStore::MooncakeStore(MooncakeConfig config, const Api* api, Handle handle)
    : config_(std::move(config)), api_(api), handle_(handle) {
  replicate_.replica_num = static_cast<size_t>(config_.replica_num);
  replicate_.with_soft_pin = config_.pin == PinMode::kSoft;
  replicate_.with_hard_pin = config_.pin == PinMode::kHard;
  // Over RDMA the destination would have to be registered. A dummy client
  // can only transfer into its shared memory: it reads directly into the
  // blocks of it that AllocateForRead lends (shared_), and writes staged.
  const bool client_mode = !config_.client_address.empty();
  const bool direct = config_.direct_transfers && (client_mode || config_.protocol == "tcp");
  direct_reads_ = direct && api_->batch_get_into_multi != nullptr &&
                  (!client_mode || api_->alloc_transfer_buffer != nullptr);
  direct_writes_ = direct && !client_mode && api_->batch_put_from_multi != nullptr;
  if (client_mode && direct_reads_) shared_ = std::make_shared<SharedBlocks>(api_, handle_);
  local_reads_ = direct_reads_ && config_.local_reads && config_.global_segment_size > 0 &&
                 api_->batch_local_replicas != nullptr;
}

MooncakeStore::~MooncakeStore() {
  deferred_.reset();  // a last try at superseded chunks
  arena_.reset();     // unregisters before the client goes
  if (shared_) shared_->Close();  // lent blocks stay valid, as their mapping does
  api_->destroy(handle_);
}

Status MooncakeStore::Init() {
  MC_ASSIGN_OR_RETURN(arena_, TransferArena::Create(api_, handle_, config_.chunk_size,
                                                    config_.transfer_slots));
  deferred_ = std::make_unique<DeferredRemoval>(api_, handle_, kDeferredGiveUp);
  return Status::Ok();
}

Result<Buffer> MooncakeStore::AllocateForRead(size_t size) {
  if (shared_ != nullptr && size >= kDirectTransferMin && direct_reads_.load(std::memory_order_relaxed)) {
    Result<Buffer> b = shared_->Allocate(size);
    if (b.ok()) return b;
  }
  return Buffer::Allocate(size);
}

void MooncakeStore::StreamingLoadDone(uint64_t batch_bytes, uint64_t largest) {
  if (shared_ == nullptr || !direct_reads_.load(std::memory_order_relaxed)) return;
  if (streaming_loads_.fetch_add(1) < 1) return;
  // Room for the batch being read, the one before it (the loader still
  // holds a tensor of it), and size classes' rounding.
  const uint64_t batch = std::min<uint64_t>(std::max(batch_bytes, largest), SharedBlocks::kMaxRegionBytes);
  shared_->Grow(static_cast<size_t>(batch * 5 / 2), static_cast<size_t>(std::min<uint64_t>(largest, batch)));
}

std::string MooncakeStore::url() const {
  return "mooncake://" + (config_.master_address.empty() ? std::string() : config_.master_address);
}

Status MooncakeStore::Fail(int64_t code, const std::string& what) const {
  Status s = FromMooncakeError(code, what);
  if (s.code() != StatusCode::kUnavailable) return s;
  if (IsTransientError(code)) {
    return Status(s.code(), std::string(s.message()) + "; still refused after op_timeout=" +
                                std::to_string(config_.op_timeout.count()) + "ms");
  }
  std::string peer = config_.client_address.empty() ? "master " + config_.master_address
                                                    : "mooncake_client " + config_.client_address;
  return Status(s.code(), std::string(s.message()) + " [" + peer + "]");
}

Result<ChunkHeader> MooncakeStore::ReadHeader(const std::string& key, Deadline& deadline) {
  TransferArena::Lease slot = arena_->Acquire(1);
  int64_t n = RetryTransient(deadline, [&] {
    return api_->get_into(handle_, key.c_str(), slot[0], kChunkHeaderSize);
  });
  if (n < 0) return Fail(n, "get_into '" + key + "'");
  return ParseChunkHeader({slot[0], static_cast<size_t>(n)});
}

Result<Existing> MooncakeStore::Inspect(const std::string& key, Deadline& deadline) {
  for (;;) {
    // (Reading takes a lease on the key: a remove() soon after waits it out.)
    int64_t size = RetryTransient(deadline, [&] { return api_->get_size(handle_, key.c_str()); });
    if (size == kErrObjectNotFound) return Existing{};
    if (size < 0) return Fail(size, "get_size '" + key + "'");
    Existing e{true, static_cast<uint64_t>(size), std::nullopt};
    if (e.object_size != kChunkHeaderSize) return e;
    Result<ChunkHeader> h = ReadHeader(key, deadline);
    if (h.ok()) {
      e.header = *h;
    } else if (h.status().code() == StatusCode::kNotFound) {
      if (deadline.Backoff()) continue;  // removed in between: look again
      return Existing{};
    }
    // Any other 64-byte object (a raw foreign value, a corrupt header) is
    // replaced like a value: the header that replaces it has the same size.
    return e;
  }
}

std::vector<std::string> MooncakeStore::ChunkKeys(const std::string& key,
                                                  const ChunkHeader& h) const {
  std::vector<std::string> keys;
  keys.reserve(static_cast<size_t>(h.num_chunks));
  for (uint64_t i = 0; i < h.num_chunks; ++i) keys.push_back(h.ChunkKey(key, i));
  return keys;
}

Status MooncakeStore::RemoveKeys(const std::vector<std::string>& keys, Deadline& deadline,
                                 const std::string& what) {
  std::vector<std::string> left = keys;
  while (!left.empty()) {
    left = DeferredRemoval::TryRemove(api_, handle_, left);
    if (!left.empty() && !deadline.Backoff()) {
      return Fail(kErrObjectHasLease, "remove " + std::to_string(left.size()) + " object(s) of " + what);
    }
  }
  return Status::Ok();
}

void MooncakeStore::RemoveGeneration(const std::string& key, const ChunkHeader& h,
                                     Deadline* deadline) {
  if (h.num_chunks > kMaxExplicitChunkRemoves) {
    api_->remove_by_regex(handle_, ChunkObjectsPattern(key, h.generation).c_str(), /*force=*/0);
  } else if (deadline == nullptr) {
    deferred_->Remove(ChunkKeys(key, h));
  } else {
    // Best effort: what a lease still holds when the deadline passes is left
    // to the next remove()'s sweep.
    (void)RemoveKeys(ChunkKeys(key, h), *deadline, "'" + key + "'");
  }
}

void MooncakeStore::RemoveChunkObjects(const std::string& key,
                                       const std::optional<ChunkHeader>& header,
                                       Deadline& deadline) {
  if (header) RemoveGeneration(key, *header, &deadline);
  // Chunks of other generations (left by writers that raced, or by a writer
  // that died) are found by pattern on the master.
  api_->remove_by_regex(handle_, ChunkObjectsPattern(key).c_str(), /*force=*/0);
}

Result<bool> MooncakeStore::AllChunksExist(const std::string& key, const ChunkHeader& h) {
  if (h.num_chunks == 0 || h.num_chunks > kMaxExplicitChunkRemoves) return true;
  std::vector<std::string> chunks = ChunkKeys(key, h);
  std::vector<const char*> c_keys = CStrings(chunks);
  std::vector<int> exist(chunks.size(), 0);
  int rc = api_->batch_is_exist(handle_, c_keys.data(), c_keys.size(), exist.data());
  if (rc != 0) return Fail(rc, "is_exist of the chunks of '" + key + "'");
  return std::all_of(exist.begin(), exist.end(), [](int e) { return e == 1; });
}

std::vector<Result<bool>> MooncakeStore::BatchExists(std::span<const std::string_view> keys) {
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
  std::vector<const char*> c_keys = CStrings(owned);
  std::vector<int> results(owned.size(), 0);
  Deadline deadline = NewDeadline();
  int call = -1;  // the batch call's own code; stays -1 if it was never made
  int64_t rc = RetryTransient(deadline, [&]() -> int64_t {
    call = api_->batch_is_exist(handle_, c_keys.data(), c_keys.size(), results.data());
    return call != 0 ? call : FirstRetryable(results);
  });
  if (call != 0) {
    for (size_t j = 0; j < owned.size(); ++j) out[index[j]] = Fail(rc, "is_exist '" + owned[j] + "'");
    return out;
  }
  for (size_t j = 0; j < owned.size(); ++j) {
    int r = results[j];
    if (r == 1) {
      // A 64-byte object may be the tombstone of a removed key.
      Result<Existing> e = Inspect(owned[j], deadline);
      if (!e.ok()) out[index[j]] = e.status();
      else out[index[j]] = e->exists && !(e->header && e->header->tombstone);
    } else if (r == 0 || r == kErrObjectNotFound) out[index[j]] = false;
    else out[index[j]] = Fail(r, "is_exist '" + owned[j] + "'");
  }
  return out;
}

Result<uint64_t> MooncakeStore::GetSize(std::string_view key) {
  MC_RETURN_IF_ERROR(ValidateKey(key));
  std::string k(key);
  Deadline deadline = NewDeadline();
  MC_ASSIGN_OR_RETURN(Existing e, Inspect(k, deadline));
  if (!e.exists || (e.header && e.header->tombstone)) return NotFound("key '" + k + "' not found");
  return e.header ? e.header->total_size : e.object_size;
}

Status MooncakeStore::Remove(std::string_view key) {
  MC_RETURN_IF_ERROR(ValidateKey(key));
  std::string k(key);
  deferred_->Flush();
  Deadline deadline = NewDeadline();
  // The key is removed without being read first: a read would take a lease
  // that this very remove would then have to wait out. Its chunks are found
  // by pattern instead of through its header.
  int64_t rc = api_->remove(handle_, k.c_str(), /*force=*/0);
  const bool waited = IsTransientError(rc);
  if (waited) {
    // Readers hold a lease. Mark the key removed at once (an upsert ignores
    // leases; readers then see no value), and wait the leases out. A key read
    // without pause for all of op_timeout keeps its 64-byte tombstone until
    // it is written or removed again.
    if (api_->upsert_from != nullptr) (void)WriteTombstone(k, deadline);
    rc = RetryTransient(deadline, [&] { return api_->remove(handle_, k.c_str(), /*force=*/0); });
    if (IsTransientError(rc) && api_->upsert_from != nullptr) rc = 0;  // tombstoned
  }
  if (rc != 0 && rc != kErrObjectNotFound) return Fail(rc, "remove '" + k + "'");
  RemoveChunkObjects(k, std::nullopt, deadline);
  if (waited) {
    // A reader was active: its leases may still hold chunks the sweep had to
    // skip. Find them on the master and wait them out.
    Result<std::vector<std::string>> left = AllKeys(k + kChunkKeySeparator);
    if (left.ok() && !left->empty()) (void)RemoveKeys(*left, deadline, "'" + k + "'");
  }
  // A writer racing this remove may have committed a header whose chunks the
  // sweep just took (after the writer checked them): that header is marked
  // removed in place (the write lost the race), so readers do not keep
  // finding a header without its chunks.
  Result<Existing> now = Inspect(k, deadline);
  if (now.ok() && now->header && !now->header->tombstone) {
    Result<bool> complete = AllChunksExist(k, *now->header);
    if (complete.ok() && !*complete && api_->upsert_from != nullptr) {
      (void)WriteTombstone(k, deadline);
      api_->remove(handle_, k.c_str(), /*force=*/0);  // once: our own read leased it
      RemoveGeneration(k, *now->header, nullptr);
    }
  }
  if (rc == kErrObjectNotFound) return NotFound("key '" + k + "' not found");
  return Status::Ok();
}

Status MooncakeStore::WriteTombstone(const std::string& key, Deadline& deadline) {
  return WriteHeader(key, MakeTombstone(1), /*upsert=*/true, replicate_, deadline);
}

Result<std::vector<std::string>> MooncakeStore::AllKeys(std::string_view prefix) {
  if (config_.master_address.empty()) {
    return FailedPrecondition("list() asks the master's admin HTTP endpoint, but no master is "
                              "configured: set MOONCAKE_MASTER as well as MOONCAKE_CLIENT");
  }
  std::string admin = HostOf(config_.master_address);
  if (admin.find(':') != std::string::npos) admin = "[" + admin + "]";
  admin += ":" + std::to_string(config_.metrics_port);
  Result<std::string> body = HttpGet(admin, "/get_all_keys", config_.connect_timeout);
  if (!body.ok()) {
    return body.status().WithContext("listing keys on master " + config_.master_address +
                                     " (its admin port: MOONCAKE_MASTER_METRICS_PORT=" +
                                     std::to_string(config_.metrics_port) + ")");
  }
  std::vector<std::string> keys;
  std::string_view rest = *body;
  while (!rest.empty()) {
    size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.empty() && line.starts_with(prefix)) keys.emplace_back(line);
  }
  return keys;
}

Result<std::vector<std::string>> MooncakeStore::List(std::string_view prefix) {
  MC_ASSIGN_OR_RETURN(std::vector<std::string> keys, AllKeys(prefix));
  std::erase_if(keys, [](const std::string& k) { return IsChunkKey(k); });
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  return keys;
}

Result<std::shared_ptr<Store>> NewMooncakeStore(const MooncakeConfig& config, const Api* api,
                                                Handle handle) {
  auto store = std::make_shared<MooncakeStore>(config, api, handle);
  MC_RETURN_IF_ERROR(store->Init());
  return std::shared_ptr<Store>(std::move(store));
}

}  // namespace mooncake_connector::mooncake
