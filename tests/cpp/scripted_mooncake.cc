#include "scripted_mooncake.h"

#include <sys/mman.h>

#include <regex>
#include <thread>

namespace mooncake_connector::testing {

using mooncake::Handle;
using mooncake::ReplicateConfig;

struct ScriptedOps {
  static ScriptedMooncake* S(Handle h) { return static_cast<ScriptedMooncake*>(h); }

  // Runs the injection hook (outside the lock, so it may use Plant/Find).
  static int64_t Hook(ScriptedMooncake* s, const char* op, const char* key) {
    {
      std::lock_guard lock(s->mu);
      s->calls[op]++;
    }
    return s->inject ? s->inject({op, key ? key : ""}) : 0;
  }

  static void Lease(ScriptedMooncake* s, const std::string& key) {
    if (s->lease.count() > 0) s->leases_[key] = std::chrono::steady_clock::now() + s->lease;
  }
  static bool Leased(ScriptedMooncake* s, const std::string& key) {
    auto it = s->leases_.find(key);
    return it != s->leases_.end() && it->second > std::chrono::steady_clock::now();
  }

  // A write as Mooncake does it: Start (allocate, or take the object over
  // for an in-place upsert; the key is unreadable meanwhile), the transfer,
  // then End. Each step takes the lock on its own, with a yield in between,
  // so other threads' calls interleave with it as they do with the real one.
  // As in Mooncake's master, End is checked by client only: any write of
  // this client ends whatever write of the key is in progress, and an upsert
  // preempts a write in progress at once.
  static int Put(ScriptedMooncake* s, const char* key, const void* buf, size_t size, bool upsert) {
    if (size == 0) return 0;
    uint64_t ticket;
    {
      std::lock_guard lock(s->mu);
      auto pending = s->pending_.find(key);
      auto it = s->objects_.find(key);
      if (!upsert && (pending != s->pending_.end() || it != s->objects_.end())) {
        return 0;  // Mooncake keeps the existing object
      }
      ticket = ++s->tickets_;
      if (pending != s->pending_.end()) {  // preempted: its buffer is discarded
        s->used_ -= pending->second.bytes.size();
        s->pending_.erase(pending);
      }
      if (it != s->objects_.end() && it->second.size() == size) {  // in place
        s->pending_[key] = {ticket, std::move(it->second)};
        s->objects_.erase(it);
      } else {
        if (it != s->objects_.end()) {  // another size: dropped first
          s->used_ -= it->second.size();
          s->objects_.erase(it);
        }
        if (s->used_ + size > s->capacity) return mooncake::kErrNoAvailableHandle;
        // Fresh memory holds whatever was there before.
        s->pending_[key] = {ticket, std::vector<std::byte>(size, std::byte{0xEE})};
        s->used_ += size;
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));  // the transfer
    {
      std::lock_guard lock(s->mu);
      auto pending = s->pending_.find(key);
      if (pending != s->pending_.end() && pending->second.ticket == ticket) {
        std::memcpy(pending->second.bytes.data(), buf, size);
      }
    }
    std::this_thread::yield();
    std::lock_guard lock(s->mu);
    auto pending = s->pending_.find(key);
    if (pending != s->pending_.end()) {
      s->objects_[key] = std::move(pending->second.bytes);
      s->pending_.erase(pending);
    }
    return 0;
  }

  static int64_t Get(ScriptedMooncake* s, const char* key, void* buf, size_t size) {
    auto it = s->objects_.find(key);
    if (it == s->objects_.end()) {
      return s->pending_.count(key) != 0 ? mooncake::kErrReplicaNotReady : mooncake::kErrObjectNotFound;
    }
    if (it->second.size() > size) return mooncake::kErrInvalidParams;
    if (!it->second.empty()) std::memcpy(buf, it->second.data(), it->second.size());
    s->bytes_read += it->second.size();
    Lease(s, key);
    return static_cast<int64_t>(it->second.size());
  }

  static int Remove(ScriptedMooncake* s, const char* key, int force) {
    auto it = s->objects_.find(key);
    if (it == s->objects_.end()) {
      return s->pending_.count(key) != 0 ? mooncake::kErrReplicaNotReady : mooncake::kErrObjectNotFound;
    }
    if (!force && Leased(s, key)) return mooncake::kErrObjectHasLease;
    s->used_ -= it->second.size();
    s->objects_.erase(it);
    return 0;
  }

  // dummy_client: whether each of `n` buffers lies in a registered region
  // (counted as "unregistered buffer" when one does not).
  static bool Shared(ScriptedMooncake* s, size_t n, const void* const* bufs, const size_t* sizes) {
    std::lock_guard lock(s->mu);
    for (size_t i = 0; i < n; ++i) {
      const auto* p = static_cast<const std::byte*>(bufs[i]);
      auto it = s->registered_.upper_bound(p);
      if (sizes[i] == 0) continue;
      if (it == s->registered_.begin() || p + sizes[i] > std::prev(it)->first + std::prev(it)->second) {
        s->calls["unregistered buffer"]++;
        return false;
      }
    }
    return true;
  }
  static size_t Total(const size_t* pieces, size_t n) {
    size_t total = 0;
    for (size_t i = 0; i < n; ++i) total += pieces[i];
    return total;
  }

  // The dummy client's entries: checks, then the in-process ones.
  static void AsDummyClient(mooncake::Api& a) {
    a.alloc_transfer_buffer = [](Handle h, size_t size) -> void* {
      auto* s = S(h);
      if (Hook(s, "alloc_transfer_buffer", nullptr) != 0) return nullptr;
      void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return nullptr;
      std::lock_guard lock(s->mu);
      s->mapped_[static_cast<std::byte*>(p)] = size;
      return p;
    };
    a.register_buffer = [](Handle h, void* p, size_t size) -> int {
      auto* s = S(h);
      std::lock_guard lock(s->mu);
      auto it = s->mapped_.find(static_cast<std::byte*>(p));
      if (it == s->mapped_.end() || it->second != size) return mooncake::kErrInvalidParams;
      s->registered_[it->first] = size;
      return 0;
    };
    a.unregister_buffer = [](Handle h, void* p) -> int {
      auto* s = S(h);
      std::lock_guard lock(s->mu);
      s->registered_.erase(static_cast<std::byte*>(p));
      return 0;
    };
    a.put_from = [](Handle h, const char* key, void* buf, size_t size, const ReplicateConfig* c) -> int {
      if (!Shared(S(h), 1, &buf, &size)) return mooncake::kErrInvalidParams;
      return S(h)->inner_.put_from(h, key, buf, size, c);
    };
    a.get_into = [](Handle h, const char* key, void* buf, size_t size) -> int64_t {
      if (!Shared(S(h), 1, &buf, &size)) return mooncake::kErrInvalidParams;
      return S(h)->inner_.get_into(h, key, buf, size);
    };
    a.batch_put_from = [](Handle h, const char** keys, void** bufs, const size_t* sizes, size_t n,
                          const ReplicateConfig* c, int* out) -> int {
      if (!Shared(S(h), n, bufs, sizes)) return mooncake::kErrInvalidParams;
      return S(h)->inner_.batch_put_from(h, keys, bufs, sizes, n, c, out);
    };
    a.batch_get_into = [](Handle h, const char** keys, void** bufs, const size_t* sizes, size_t n,
                          int64_t* out) -> int {
      if (!Shared(S(h), n, bufs, sizes)) return mooncake::kErrInvalidParams;
      return S(h)->inner_.batch_get_into(h, keys, bufs, sizes, n, out);
    };
    if (a.upsert_from != nullptr) {
      a.upsert_from = [](Handle h, const char* key, void* buf, size_t size, const ReplicateConfig* c) -> int {
        if (!Shared(S(h), 1, &buf, &size)) return mooncake::kErrInvalidParams;
        return S(h)->inner_.upsert_from(h, key, buf, size, c);
      };
      a.batch_upsert_from = [](Handle h, const char** keys, void** bufs, const size_t* sizes, size_t n,
                               const ReplicateConfig* c, int* out) -> int {
        if (!Shared(S(h), n, bufs, sizes)) return mooncake::kErrInvalidParams;
        return S(h)->inner_.batch_upsert_from(h, keys, bufs, sizes, n, c, out);
      };
      a.batch_get_into_multi = [](Handle h, const char** keys, size_t n, void* const* bufs, const size_t* sizes,
                                  const size_t* pieces, int64_t* out) -> int {
        if (!Shared(S(h), Total(pieces, n), bufs, sizes)) return mooncake::kErrInvalidParams;
        return S(h)->inner_.batch_get_into_multi(h, keys, n, bufs, sizes, pieces, out);
      };
      a.batch_get_range_into = [](Handle h, const char** keys, size_t n, void* const* bufs,
                                  const uint64_t* offsets, const size_t* sizes, int64_t* out) -> int {
        if (!Shared(S(h), n, bufs, sizes)) return mooncake::kErrInvalidParams;
        return S(h)->inner_.batch_get_range_into(h, keys, n, bufs, offsets, sizes, out);
      };
      a.batch_put_from_multi = [](Handle h, const char** keys, size_t n, void* const* bufs, const size_t* sizes,
                                  const size_t* pieces, const ReplicateConfig* c, int* out) -> int {
        if (!Shared(S(h), Total(pieces, n), bufs, sizes)) return mooncake::kErrInvalidParams;
        return S(h)->inner_.batch_put_from_multi(h, keys, n, bufs, sizes, pieces, c, out);
      };
    }
  }
};

ScriptedMooncake::~ScriptedMooncake() {
  for (auto [base, size] : mapped_) munmap(const_cast<std::byte*>(base), size);
}

mooncake::Api ScriptedMooncake::api() {
  using O = ScriptedOps;
  mooncake::Api a;
  a.provider = "a scripted in-process Mooncake (tests)";
  a.create = [] { return Handle(nullptr); };
  a.destroy = [](Handle) {};
  a.setup = [](Handle, const char*, const char*, uint64_t, uint64_t, const char*, const char*,
               const char*) { return 0; };
  a.register_buffer = [](Handle, void*, size_t) { return 0; };
  a.unregister_buffer = [](Handle, void*) { return 0; };
  a.put_from = [](Handle h, const char* key, void* buf, size_t size, const ReplicateConfig*) -> int {
    auto* s = O::S(h);
    if (int64_t rc = O::Hook(s, "put_from", key)) return static_cast<int>(rc);
    {
      std::lock_guard lock(s->mu);
      s->calls["native put_from"]++;
    }
    return O::Put(s, key, buf, size, false);
  };
  a.batch_put_from = [](Handle h, const char** keys, void** bufs, const size_t* sizes, size_t n,
                        const ReplicateConfig*, int* out) -> int {
    auto* s = O::S(h);
    {
      std::lock_guard lock(s->mu);
      s->calls["native batch_put_from"]++;
    }
    for (size_t i = 0; i < n; ++i) {
      out[i] = static_cast<int>(O::Hook(s, "put_from", keys[i]));
      if (out[i] != 0) continue;
      out[i] = O::Put(s, keys[i], bufs[i], sizes[i], false);
    }
    return 0;
  };
  a.get_into = [](Handle h, const char* key, void* buf, size_t size) -> int64_t {
    auto* s = O::S(h);
    if (int64_t rc = O::Hook(s, "get_into", key)) return rc;
    std::lock_guard lock(s->mu);
    s->calls["native get_into"]++;
    return O::Get(s, key, buf, size);
  };
  a.batch_get_into = [](Handle h, const char** keys, void** bufs, const size_t* sizes, size_t n,
                        int64_t* out) -> int {
    auto* s = O::S(h);
    {
      std::lock_guard lock(s->mu);
      s->calls["native batch_get_into"]++;
    }
    // Injection sees each key as a get_into.
    for (size_t i = 0; i < n; ++i) {
      out[i] = O::Hook(s, "get_into", keys[i]);
      if (out[i] != 0) continue;
      std::lock_guard lock(s->mu);
      out[i] = O::Get(s, keys[i], bufs[i], sizes[i]);
    }
    return 0;
  };
  a.is_exist = [](Handle h, const char* key) -> int {
    auto* s = O::S(h);
    if (int64_t rc = O::Hook(s, "is_exist", key)) return static_cast<int>(rc);
    std::lock_guard lock(s->mu);
    bool has = s->objects_.count(key) != 0;
    if (has) O::Lease(s, key);
    return has ? 1 : 0;
  };
  a.batch_is_exist = [](Handle h, const char** keys, size_t n, int* out) -> int {
    auto* s = O::S(h);
    for (size_t i = 0; i < n; ++i) {
      out[i] = static_cast<int>(O::Hook(s, "is_exist", keys[i]));
      if (out[i] != 0) continue;
      std::lock_guard lock(s->mu);
      bool has = s->objects_.count(keys[i]) != 0;
      if (has) O::Lease(s, keys[i]);
      out[i] = has ? 1 : 0;
    }
    return 0;
  };
  a.get_size = [](Handle h, const char* key) -> int64_t {
    auto* s = O::S(h);
    if (int64_t rc = O::Hook(s, "get_size", key)) return rc;
    std::lock_guard lock(s->mu);
    auto it = s->objects_.find(key);
    if (it == s->objects_.end()) {
      return s->pending_.count(key) != 0 ? mooncake::kErrReplicaNotReady : mooncake::kErrObjectNotFound;
    }
    O::Lease(s, key);
    return static_cast<int64_t>(it->second.size());
  };
  a.remove = [](Handle h, const char* key, int force) -> int {
    auto* s = O::S(h);
    if (int64_t rc = O::Hook(s, "remove", key)) return static_cast<int>(rc);
    std::lock_guard lock(s->mu);
    return O::Remove(s, key, force);
  };
  a.remove_by_regex = [](Handle h, const char* pattern, int force) -> int64_t {
    auto* s = O::S(h);
    if (int64_t rc = O::Hook(s, "remove_by_regex", nullptr)) return rc;
    std::regex re(pattern, std::regex::ECMAScript);
    std::lock_guard lock(s->mu);
    int64_t n = 0;
    for (const std::string& k : [&] {
           std::vector<std::string> ks;
           for (auto& [key, v] : s->objects_) ks.push_back(key);
           return ks;
         }()) {
      if (std::regex_search(k, re) && O::Remove(s, k.c_str(), force) == 0) ++n;
    }
    return n;
  };
  a.remove_all = [](Handle, int) -> int64_t { return 0; };
  if (with_extensions) {
    a.batch_local_replicas = [](Handle h, const char** keys, size_t n, const void** addresses,
                                uint64_t* sizes) -> int {
      auto* s = O::S(h);
      std::lock_guard lock(s->mu);
      s->calls["native batch_local_replicas"]++;
      if (!s->local_replica) return mooncake::kErrNotSupported;
      for (size_t i = 0; i < n; ++i) {
        auto it = s->objects_.find(keys[i]);
        addresses[i] = it == s->objects_.end() ? nullptr : s->local_replica(it->first, it->second);
        sizes[i] = addresses[i] == nullptr ? 0 : it->second.size();
        if (addresses[i] != nullptr) O::Lease(s, keys[i]);
      }
      return 0;
    };
    a.upsert_from = [](Handle h, const char* key, void* buf, size_t size, const ReplicateConfig*) -> int {
      auto* s = O::S(h);
      if (int64_t rc = O::Hook(s, "upsert_from", key)) return static_cast<int>(rc);
      {
        std::lock_guard lock(s->mu);
        s->calls["native upsert_from"]++;
      }
      return O::Put(s, key, buf, size, true);
    };
    a.batch_upsert_from = [](Handle h, const char** keys, void** bufs, const size_t* sizes, size_t n,
                             const ReplicateConfig*, int* out) -> int {
      auto* s = O::S(h);
      {
        std::lock_guard lock(s->mu);
        s->calls["native batch_upsert_from"]++;
      }
      for (size_t i = 0; i < n; ++i) {
        out[i] = static_cast<int>(O::Hook(s, "upsert_from", keys[i]));
        if (out[i] != 0) continue;
        out[i] = O::Put(s, keys[i], bufs[i], sizes[i], true);
      }
      return 0;
    };
    // As the wheel's batch_get_into_multi_buffers: each key's pieces must add
    // up to exactly its object's size (smaller: -600, larger: -800).
    a.batch_get_into_multi = [](Handle h, const char** keys, size_t n, void* const* bufs,
                                const size_t* sizes, const size_t* pieces, int64_t* out) -> int {
      auto* s = O::S(h);
      {
        std::lock_guard lock(s->mu);
        s->calls["native batch_get_into_multi"]++;
      }
      size_t at = 0;
      for (size_t i = 0; i < n; at += pieces[i], ++i) {
        out[i] = O::Hook(s, "get_into", keys[i]);
        if (out[i] != 0) continue;
        size_t total = 0;
        for (size_t j = 0; j < pieces[i]; ++j) total += sizes[at + j];
        std::lock_guard lock(s->mu);
        auto it = s->objects_.find(keys[i]);
        if (it == s->objects_.end()) {
          out[i] = s->pending_.count(keys[i]) != 0 ? mooncake::kErrReplicaNotReady : mooncake::kErrObjectNotFound;
          continue;
        }
        if (total != it->second.size()) {
          out[i] = total < it->second.size() ? mooncake::kErrInvalidParams : mooncake::kErrTransferFail;
          continue;
        }
        size_t offset = 0;
        for (size_t j = 0; j < pieces[i]; ++j) {
          if (sizes[at + j] > 0) std::memcpy(bufs[at + j], it->second.data() + offset, sizes[at + j]);
          offset += sizes[at + j];
        }
        s->bytes_read += total;
        O::Lease(s, keys[i]);
        out[i] = static_cast<int64_t>(total);
      }
      return 0;
    };
    // As the wheel's get_into_ranges: a range past the object's end is -600.
    a.batch_get_range_into = [](Handle h, const char** keys, size_t n, void* const* bufs,
                                const uint64_t* offsets, const size_t* sizes, int64_t* out) -> int {
      auto* s = O::S(h);
      {
        std::lock_guard lock(s->mu);
        s->calls["native batch_get_range_into"]++;
      }
      for (size_t i = 0; i < n; ++i) {
        out[i] = O::Hook(s, "get_into", keys[i]);
        if (out[i] != 0) continue;
        std::lock_guard lock(s->mu);
        auto it = s->objects_.find(keys[i]);
        if (it == s->objects_.end()) {
          out[i] = s->pending_.count(keys[i]) != 0 ? mooncake::kErrReplicaNotReady : mooncake::kErrObjectNotFound;
          continue;
        }
        if (offsets[i] > it->second.size() || sizes[i] > it->second.size() - offsets[i]) {
          out[i] = mooncake::kErrInvalidParams;
          continue;
        }
        if (sizes[i] > 0) std::memcpy(bufs[i], it->second.data() + offsets[i], sizes[i]);
        s->bytes_read += sizes[i];
        O::Lease(s, keys[i]);
        out[i] = static_cast<int64_t>(sizes[i]);
      }
      return 0;
    };
    // As the wheel's batch_put_from_multi_buffers: put semantics, each key's
    // object gathered from its pieces.
    a.batch_put_from_multi = [](Handle h, const char** keys, size_t n, void* const* bufs, const size_t* sizes,
                                const size_t* pieces, const ReplicateConfig*, int* out) -> int {
      auto* s = O::S(h);
      {
        std::lock_guard lock(s->mu);
        s->calls["native batch_put_from_multi"]++;
      }
      size_t at = 0;
      for (size_t i = 0; i < n; at += pieces[i], ++i) {
        out[i] = static_cast<int>(O::Hook(s, "put_from", keys[i]));
        if (out[i] != 0) continue;
        std::vector<std::byte> value;
        for (size_t j = 0; j < pieces[i]; ++j) {
          const auto* p = static_cast<const std::byte*>(bufs[at + j]);
          value.insert(value.end(), p, p + sizes[at + j]);
        }
        out[i] = O::Put(s, keys[i], value.data(), value.size(), false);
      }
      return 0;
    };
    a.batch_remove = [](Handle h, const char** keys, size_t n, int force, int* out) -> int {
      auto* s = O::S(h);
      {
        std::lock_guard lock(s->mu);
        s->calls["native batch_remove"]++;
      }
      for (size_t i = 0; i < n; ++i) {
        out[i] = static_cast<int>(O::Hook(s, "remove", keys[i]));
        if (out[i] != 0) continue;
        std::lock_guard lock(s->mu);
        out[i] = O::Remove(s, keys[i], force);
      }
      return 0;
    };
  }
  if (dummy_client) {
    inner_ = a;
    O::AsDummyClient(a);
  }
  return a;
}

void ScriptedMooncake::Plant(const std::string& key, std::vector<std::byte> bytes) {
  std::lock_guard lock(mu);
  auto it = objects_.find(key);
  if (it != objects_.end()) used_ -= it->second.size();
  used_ += bytes.size();
  objects_[key] = std::move(bytes);
}

bool ScriptedMooncake::Has(const std::string& key) {
  std::lock_guard lock(mu);
  return objects_.count(key) != 0;
}

std::vector<std::byte>* ScriptedMooncake::Find(const std::string& key) {
  auto it = objects_.find(key);
  return it == objects_.end() ? nullptr : &it->second;
}

void ScriptedMooncake::EraseLocked(const std::string& key) {
  auto it = objects_.find(key);
  if (it == objects_.end()) return;
  used_ -= it->second.size();
  objects_.erase(it);
}

std::vector<std::string> ScriptedMooncake::Keys() {
  std::lock_guard lock(mu);
  std::vector<std::string> out;
  for (auto& [k, v] : objects_) out.push_back(k);
  return out;
}

}  // namespace mooncake_connector::testing
