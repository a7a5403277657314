#include "mooncake_connector/memory_store.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

#include "core/cuda_internal.h"
#include "core/parallel_internal.h"
#include "store/deliver_internal.h"

namespace mooncake_connector {
namespace {

// A batch reading at least this much is copied on more than one thread.
constexpr uint64_t kPieceBytes = uint64_t{4} << 20;  // a thread's share of a large value
constexpr uint64_t kParallelBytes = 8 << 20;

class MemoryStore final : public Store {
 public:
  MemoryStore(const MemoryStoreOptions& options, std::string name)
      : options_(options), name_(std::move(name)),
        shards_(std::max<size_t>(1, options.num_shards)) {}

  std::string url() const override { return "memory://" + name_; }
  uint64_t capacity() const { return options_.capacity_bytes; }
  bool pinned() const { return options_.pinned; }

  std::vector<Status> BatchPut(std::span<const PutRequest> requests,
                               const WriteOptions&) override {
    std::vector<Status> out;
    out.reserve(requests.size());
    for (const PutRequest& r : requests) out.push_back(PutOne(r));
    return out;
  }

  std::vector<Result<uint64_t>> BatchGetInto(std::span<const GetIntoRequest> requests) override {
    // Large batches are copied on a few threads (CopyThreads): one core's
    // memcpy does not saturate memory bandwidth. A value whose bytes are
    // hashed on the way is cut where the pieces of its hash begin
    // (data_xxh3_piece), each piece's hash taken on the thread that copies
    // it, or is one piece (a hash of all its bytes runs in order); the others
    // are cut into pieces, so that even one large value is copied in
    // parallel.
    std::vector<Result<uint64_t>> out;
    out.reserve(requests.size());
    constexpr size_t kNoDigest = SIZE_MAX;
    struct Piece {
      size_t request;
      uint64_t offset, size;
      size_t digest = kNoDigest;  // where a hashed piece's digest goes
    };
    struct Hashed {
      size_t request, first, count;  // its digests
    };
    std::vector<std::shared_ptr<const Buffer>> values(requests.size());
    std::vector<Piece> pieces;
    std::vector<Hashed> hashed;
    size_t digest_count = 0;
    uint64_t bytes = 0;
    for (size_t i = 0; i < requests.size(); ++i) {
      Result<std::shared_ptr<const Buffer>> value = Find(requests[i].key);
      Status fits = value.ok() ? requests[i].CheckFits((*value)->size()) : value.status();
      if (!fits.ok()) {
        out.emplace_back(fits);
        continue;
      }
      values[i] = std::move(*value);
      const GetIntoRequest& r = requests[i];
      uint64_t size = values[i]->size();
      out.emplace_back(size);
      // The bytes asked for: all of the value, or a partial read's range.
      const uint64_t lo = r.partial ? r.offset : 0;
      const uint64_t hi = r.partial ? r.offset + r.head.size() + r.destination.size() : size;
      bytes += hi - lo;
      if (r.data_xxh3 != nullptr && (r.partial || r.data_xxh3_piece == 0)) {
        pieces.push_back({i, lo, hi - lo});
      } else if (r.data_xxh3 != nullptr) {
        // Piece k of the hash: the value's bytes head + [k, k + 1) x piece
        // (the first task copies the head too).
        const uint64_t head = r.head.size(), piece = r.data_xxh3_piece;
        const uint64_t count = std::max<uint64_t>(1, (size - head + piece - 1) / piece);
        hashed.push_back({i, digest_count, static_cast<size_t>(count)});
        for (uint64_t k = 0; k < count; ++k) {
          const uint64_t from = k == 0 ? 0 : head + k * piece;
          pieces.push_back({i, from, std::min(size, head + (k + 1) * piece) - from, digest_count++});
        }
      } else {
        for (uint64_t at = lo; at < hi || at == lo; at += kPieceBytes) {
          pieces.push_back({i, at, std::min(kPieceBytes, hi - at)});
          if (hi == lo) break;
        }
      }
    }
    std::vector<uint64_t> digests(digest_count);
    ParallelFor(pieces.size(), bytes >= kParallelBytes ? CopyThreads() : 1, [&](size_t k) {
      const Piece& p = pieces[k];
      const GetIntoRequest& r = requests[p.request];
      if (p.digest != kNoDigest) {
        Xxh3Stream data;
        DeliverAt(r, p.offset, values[p.request]->bytes().subspan(p.offset, p.size), &data);
        digests[p.digest] = data.Digest();
      } else if (r.data_xxh3 != nullptr) {
        Deliver(r, values[p.request]->bytes());
      } else if (p.size > 0) {
        r.CopyAt(p.offset, values[p.request]->bytes().subspan(p.offset, p.size));
      }
    });
    for (const Hashed& h : hashed) {
      *requests[h.request].data_xxh3 = Xxh3OfDigests(std::span(digests).subspan(h.first, h.count));
    }
    return out;
  }

  std::vector<Result<bool>> BatchExists(std::span<const std::string_view> keys) override {
    std::vector<Result<bool>> out;
    out.reserve(keys.size());
    for (std::string_view key : keys) {
      Status valid = ValidateKey(key);
      if (!valid.ok()) {
        out.emplace_back(valid);
        continue;
      }
      out.emplace_back(Lookup(key) != nullptr);
    }
    return out;
  }

  Result<uint64_t> GetSize(std::string_view key) override {
    MC_ASSIGN_OR_RETURN(std::shared_ptr<const Buffer> value, Find(key));
    return value->size();
  }

  StoreFeatures Features() const override { return {.lends_values = true}; }

  std::vector<Result<Buffer>> BatchView(std::span<const std::string_view> keys) override {
    // Values are never changed in place (a put replaces the buffer), so a
    // view sharing the buffer's memory stays as it was.
    std::vector<Result<Buffer>> out;
    out.reserve(keys.size());
    for (std::string_view key : keys) {
      Result<std::shared_ptr<const Buffer>> value = Find(key);
      if (!value.ok()) {
        out.push_back(value.status());
      } else {
        std::shared_ptr<const Buffer> held = *value;
        std::byte* data = held->data();
        const size_t size = held->size();
        out.push_back(Buffer::Wrap(data, size, std::const_pointer_cast<Buffer>(std::move(held))));
      }
    }
    return out;
  }

  Result<Buffer> Get(std::string_view key) override {
    MC_ASSIGN_OR_RETURN(std::shared_ptr<const Buffer> value, Find(key));
    MC_ASSIGN_OR_RETURN(Buffer copy, Buffer::Allocate(value->size()));
    if (value->size() > 0) std::memcpy(copy.data(), value->data(), value->size());
    return copy;
  }

  Status Remove(std::string_view key) override {
    MC_RETURN_IF_ERROR(ValidateKey(key));
    Shard& shard = ShardFor(key);
    std::unique_lock lock(shard.mutex);
    auto it = shard.map.find(key);
    if (it == shard.map.end()) return MissingKey(key);
    used_.fetch_sub(it->second->size(), std::memory_order_relaxed);
    shard.map.erase(it);
    return Status::Ok();
  }

  Result<std::vector<std::string>> List(std::string_view prefix) override {
    std::vector<std::string> keys;
    for (Shard& shard : shards_) {
      std::shared_lock lock(shard.mutex);
      for (const auto& [key, value] : shard.map) {
        if (key.starts_with(prefix)) keys.push_back(key);
      }
    }
    std::sort(keys.begin(), keys.end());
    return keys;
  }

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct Shard {
    std::shared_mutex mutex;
    // Values are immutable once published; readers copy them outside the lock.
    std::unordered_map<std::string, std::shared_ptr<const Buffer>, StringHash, std::equal_to<>> map;
  };

  static Status MissingKey(std::string_view key) {
    return NotFound("key '" + std::string(key) + "' not found");
  }

  Shard& ShardFor(std::string_view key) {
    return shards_[StringHash{}(key) % shards_.size()];
  }

  std::shared_ptr<const Buffer> Lookup(std::string_view key) {
    Shard& shard = ShardFor(key);
    std::shared_lock lock(shard.mutex);
    auto it = shard.map.find(key);
    return it == shard.map.end() ? nullptr : it->second;
  }

  Result<std::shared_ptr<const Buffer>> Find(std::string_view key) {
    MC_RETURN_IF_ERROR(ValidateKey(key));
    std::shared_ptr<const Buffer> value = Lookup(key);
    if (value == nullptr) return MissingKey(key);
    return value;
  }

  Status PutOne(const PutRequest& r) {
    MC_RETURN_IF_ERROR(ValidateKey(r.key));
    uint64_t size = 0;
    for (ConstBytes part : r.parts) size += part.size();
    // Copy outside the lock: a large value must not block other keys.
    MC_ASSIGN_OR_RETURN(Buffer buffer, options_.pinned ? AllocatePinned(size) : Buffer::Allocate(size));
    size_t offset = 0;
    for (ConstBytes part : r.parts) {
      if (!part.empty()) std::memcpy(buffer.data() + offset, part.data(), part.size());
      offset += part.size();
    }
    auto value = std::make_shared<const Buffer>(std::move(buffer));

    Shard& shard = ShardFor(r.key);
    std::unique_lock lock(shard.mutex);
    auto it = shard.map.find(r.key);
    uint64_t old_size = it == shard.map.end() ? 0 : it->second->size();
    MC_RETURN_IF_ERROR(Reserve(size, old_size, r.key));
    if (it == shard.map.end()) {
      shard.map.emplace(std::string(r.key), std::move(value));
    } else {
      it->second = std::move(value);
    }
    return Status::Ok();
  }

  // Page-locked memory from the CUDA driver (MemoryStoreOptions::pinned).
  Result<Buffer> AllocatePinned(uint64_t size) {
    if (size == 0) return Buffer();
    MC_ASSIGN_OR_RETURN(const cuda::Driver* driver, cuda::Driver::Get());
    // Portable pinned memory: any context can DMA from it; one is needed to
    // allocate it.
    MC_ASSIGN_OR_RETURN(cuda::Driver::ContextGuard context, driver->Enter(0));
    MC_ASSIGN_OR_RETURN(cuda::PinnedBuffer pinned, driver->AllocatePinned(size));
    // Freed (when the value is replaced or removed, on whichever thread) in
    // the context it was allocated in.
    std::shared_ptr<cuda::PinnedBuffer> owner(new cuda::PinnedBuffer(std::move(pinned)),
                                              [driver](cuda::PinnedBuffer* p) {
                                                Result<cuda::Driver::ContextGuard> context = driver->Enter(0);
                                                delete p;
                                              });
    std::byte* data = owner->data();
    return Buffer::Wrap(data, size, std::move(owner));
  }

  // Accounts for replacing `old_size` bytes by `new_size` bytes.
  Status Reserve(uint64_t new_size, uint64_t old_size, std::string_view key) {
    uint64_t used = used_.load(std::memory_order_relaxed);
    while (true) {
      uint64_t next = used - old_size + new_size;
      if (options_.capacity_bytes != 0 && next > options_.capacity_bytes) {
        return ResourceExhausted("memory store '" + name_ + "' is full: putting " +
                                 std::to_string(new_size) + " bytes under '" + std::string(key) +
                                 "' would use " + std::to_string(next) + " of " +
                                 std::to_string(options_.capacity_bytes) + " bytes");
      }
      if (used_.compare_exchange_weak(used, next, std::memory_order_relaxed)) return Status::Ok();
    }
  }

  Result<uint64_t> GetIntoOne(const GetIntoRequest& r) {
    MC_ASSIGN_OR_RETURN(std::shared_ptr<const Buffer> value, Find(r.key));
    MC_RETURN_IF_ERROR(r.CheckFits(value->size()));
    Deliver(r, value->bytes());
    return value->size();
  }

  const MemoryStoreOptions options_;
  const std::string name_;
  std::vector<Shard> shards_;
  std::atomic<uint64_t> used_{0};
};

struct Registry {
  std::mutex mutex;
  std::map<std::string, std::weak_ptr<MemoryStore>, std::less<>> stores;
};

Registry& GlobalRegistry() {
  static Registry* registry = new Registry();  // never destroyed: safe at exit
  return *registry;
}

}  // namespace

std::shared_ptr<Store> NewMemoryStore(const MemoryStoreOptions& options, std::string name) {
  return std::make_shared<MemoryStore>(options, std::move(name));
}

Result<std::shared_ptr<Store>> OpenNamedMemoryStore(std::string_view name,
                                                    const MemoryStoreOptions& options) {
  Registry& registry = GlobalRegistry();
  std::lock_guard lock(registry.mutex);
  auto it = registry.stores.find(name);
  if (it != registry.stores.end()) {
    if (std::shared_ptr<MemoryStore> existing = it->second.lock()) {
      if (options.capacity_bytes != 0 && options.capacity_bytes != existing->capacity()) {
        return InvalidArgument("memory store '" + std::string(name) + "' is already open with capacity " +
                               std::to_string(existing->capacity()));
      }
      if (options.pinned && !existing->pinned()) {
        return InvalidArgument("memory store '" + std::string(name) + "' is already open without pinned values");
      }
      return std::shared_ptr<Store>(existing);
    }
  }
  if (options.pinned) {
    Result<const cuda::Driver*> driver = cuda::Driver::Get();
    if (!driver.ok()) {
      return FailedPrecondition("memory store '" + std::string(name) + "' with pinned values needs the CUDA driver: " +
                                std::string(driver.status().message()));
    }
  }
  auto store = std::make_shared<MemoryStore>(options, std::string(name));
  registry.stores[std::string(name)] = store;
  return std::shared_ptr<Store>(store);
}

}  // namespace mooncake_connector
