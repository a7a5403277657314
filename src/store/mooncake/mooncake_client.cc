// The Mooncake client of a mooncake:// store (mooncake_client_internal.h):
// its setup, and the object operations its reader and writer share.
#include <algorithm>
#include <cstring>

#include "store/mooncake/mooncake_client_internal.h"
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

MooncakeClient::MooncakeClient(MooncakeConfig config, const Api* api, Handle handle)
    : config_(std::move(config)), api_(api), handle_(handle) {
  replicate_.replica_num = static_cast<size_t>(config_.replica_num);
  replicate_.with_soft_pin = config_.pin == PinMode::kSoft;
  replicate_.with_hard_pin = config_.pin == PinMode::kHard;
  // Over RDMA the destination would have to be registered. A dummy client
  // can only transfer into its shared memory: it reads directly into the
  // blocks of it that the reader lends (shared_), and writes staged.
  const bool client_mode = !config_.client_address.empty();
  const bool direct = config_.direct_transfers && (client_mode || config_.protocol == "tcp");
  can_read_directly_ = direct && api_->batch_get_into_multi != nullptr &&
                       (!client_mode || api_->alloc_transfer_buffer != nullptr);
  can_write_directly_ = direct && !client_mode && api_->batch_put_from_multi != nullptr;
  if (client_mode && can_read_directly_) shared_ = std::make_shared<SharedBlocks>(api_, handle_);
  can_read_locally_ = can_read_directly_ && config_.local_reads && config_.global_segment_size > 0 &&
                      api_->batch_local_replicas != nullptr;
}

MooncakeClient::~MooncakeClient() {
  deferred_.reset();  // a last try at superseded chunks
  arena_.reset();     // unregisters before the client goes
  if (shared_) shared_->Close();  // lent blocks stay valid, as their mapping does
  api_->destroy(handle_);
}

Status MooncakeClient::Init() {
  MC_ASSIGN_OR_RETURN(arena_, TransferArena::Create(api_, handle_, config_.chunk_size,
                                                    config_.transfer_slots));
  deferred_ = std::make_unique<DeferredRemoval>(api_, handle_, kDeferredGiveUp);
  return Status::Ok();
}

Status MooncakeClient::Fail(int64_t code, const std::string& what) const {
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

Result<ChunkHeader> MooncakeClient::ReadHeader(const std::string& key, Deadline& deadline) {
  TransferArena::Lease slot = arena_->Acquire(1);
  int64_t n = RetryTransient(deadline, [&] {
    return api_->get_into(handle_, key.c_str(), slot[0], kChunkHeaderSize);
  });
  if (n < 0) return Fail(n, "get_into '" + key + "'");
  return ParseChunkHeader({slot[0], static_cast<size_t>(n)});
}

Result<Existing> MooncakeClient::Inspect(const std::string& key, Deadline& deadline) {
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

std::vector<std::string> MooncakeClient::ChunkKeys(const std::string& key,
                                                  const ChunkHeader& h) const {
  std::vector<std::string> keys;
  keys.reserve(static_cast<size_t>(h.num_chunks));
  for (uint64_t i = 0; i < h.num_chunks; ++i) keys.push_back(h.ChunkKey(key, i));
  return keys;
}

Status MooncakeClient::RemoveKeys(const std::vector<std::string>& keys, Deadline& deadline,
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

void MooncakeClient::RemoveGeneration(const std::string& key, const ChunkHeader& h,
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

void MooncakeClient::RemoveGenerations(
    std::span<const std::pair<const std::string*, const ChunkHeader*>> generations) {
  std::vector<std::string> keys;
  for (const auto& [key, h] : generations) {
    if (h->num_chunks > kMaxExplicitChunkRemoves) {
      RemoveGeneration(*key, *h, nullptr);
      continue;
    }
    std::vector<std::string> chunks = ChunkKeys(*key, *h);
    keys.insert(keys.end(), std::make_move_iterator(chunks.begin()), std::make_move_iterator(chunks.end()));
  }
  deferred_->Remove(std::move(keys));
}

void MooncakeClient::RemoveChunkObjects(const std::string& key,
                                       const std::optional<ChunkHeader>& header,
                                       Deadline& deadline) {
  if (header) RemoveGeneration(key, *header, &deadline);
  // Chunks of other generations (left by writers that raced, or by a writer
  // that died) are found by pattern on the master.
  api_->remove_by_regex(handle_, ChunkObjectsPattern(key).c_str(), /*force=*/0);
}

Result<bool> MooncakeClient::AllChunksExist(const std::string& key, const ChunkHeader& h) {
  if (h.num_chunks == 0 || h.num_chunks > kMaxExplicitChunkRemoves) return true;
  std::vector<std::string> chunks = ChunkKeys(key, h);
  std::vector<const char*> c_keys = CStrings(chunks);
  std::vector<int> exist(chunks.size(), 0);
  int rc = api_->batch_is_exist(handle_, c_keys.data(), c_keys.size(), exist.data());
  if (rc != 0) return Fail(rc, "is_exist of the chunks of '" + key + "'");
  return std::all_of(exist.begin(), exist.end(), [](int e) { return e == 1; });
}

Result<std::vector<std::string>> MooncakeClient::AllKeys(std::string_view prefix) {
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

}  // namespace mooncake_connector::mooncake
