// An in-process Mooncake Store behind the public function table, for driving
// MooncakeStore (mooncake://) without a cluster: it keeps objects in a map
// and follows the Mooncake semantics the backend relies on (put keeps an
// existing object; read leases block plain removes; same-size upsert rewrites
// in place, another size drops the old object before allocating; a write is
// Start, transfer, End, and End is checked by client only; a capacity in
// bytes). `inject` runs before every call and can fail it, or change the
// objects first (evict a chunk, tear a header), so tests reach exact points.
// Used by mooncake_scripted_test.cc and fuzz/mooncake_read_fuzz.cc.
#pragma once

#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "mooncake_connector/mooncake_api.h"

namespace mooncake_connector::testing {

class ScriptedMooncake {
 public:
  struct Call {
    std::string op;   // "get_into", "put_from", "upsert_from", "remove", ...
    std::string key;  // empty for calls without one
  };
  // Returns 0 to let the call run, or a Mooncake error code to return instead.
  std::function<int64_t(const Call&)> inject;
  uint64_t capacity = uint64_t{1} << 40;
  std::chrono::milliseconds lease{0};  // read lease per get/exists; 0 = none
  bool with_extensions = true;         // fill upsert_from, batch_remove, ...
  // batch_local_replicas: unset, it answers kErrNotSupported. Set, it is
  // called (mu held) for each key with a complete object, with the object's
  // bytes, and returns the address to report as this process's replica of
  // it (null: none); the size reported is the object's.
  std::function<const void*(const std::string& key, const std::vector<std::byte>& bytes)> local_replica;
  // A dummy client (standalone-client mode) as the wheel's: its transfers
  // are made by another process into memory shared with it, so
  // alloc_transfer_buffer maps new memory (injection sees
  // "alloc_transfer_buffer"; a failure returns null), register_buffer takes
  // such a region whole, and a transfer whose buffers are not all in
  // registered regions fails with kErrInvalidParams, counted as
  // calls["unregistered buffer"]. Set before api().
  bool dummy_client = false;

  // The function table; its Handle is this object.
  mooncake::Api api();

  // Direct access for tests (no injection, no leases).
  void Plant(const std::string& key, std::vector<std::byte> bytes);
  bool Has(const std::string& key);
  std::vector<std::byte>* Find(const std::string& key);  // REQUIRES: caller holds mu
  void EraseLocked(const std::string& key);              // REQUIRES: caller holds mu
  std::vector<std::string> Keys();
  // Call counts by op as injection sees them (a batch call counts each key),
  // and by native entry ("native get_into", "native batch_get_into",
  // "native put_from", "native batch_put_from").
  std::map<std::string, int> calls;
  // Bytes the get entries copied out of objects (REQUIRES: mu to read while
  // calls may run).
  uint64_t bytes_read = 0;

  std::mutex mu;

  ScriptedMooncake() = default;
  ~ScriptedMooncake();  // unmaps what alloc_transfer_buffer mapped
  ScriptedMooncake(const ScriptedMooncake&) = delete;
  ScriptedMooncake& operator=(const ScriptedMooncake&) = delete;

 private:
  friend struct ScriptedOps;
  struct Pending {
    uint64_t ticket;  // which write allocated it
    std::vector<std::byte> bytes;
  };
  uint64_t used_ = 0;
  uint64_t tickets_ = 0;
  std::map<std::string, std::vector<std::byte>> objects_;  // complete objects
  std::map<std::string, Pending> pending_;                 // writes between Start and End
  std::map<std::string, std::chrono::steady_clock::time_point> leases_;
  // dummy_client: the regions mapped (base -> size), those registered, and
  // the table the checking entries call.
  std::map<const std::byte*, size_t> mapped_, registered_;
  mooncake::Api inner_;
};

}  // namespace mooncake_connector::testing
