// Memory a dummy client (standalone-client mode) can transfer into, lent
// out for values about to be read by streaming loads (weight_iterator).
//
// A dummy client's transfers are made by the mooncake_client process, into
// shared memory both processes map. Read into the staging slots, every
// byte is copied once more, by us, into the caller's memory. Read into
// these blocks, Mooncake's client writes the bytes where they stay: the
// tensor handed to the caller is the block.
//
// The memory comes in regions from the client's pool (Api::
// alloc_transfer_buffer: the wheel maps a new memfd for each and populates
// it, 4 KiB page by page — slower than the ordinary memory a staged load
// reads into, so regions are never made on a load's path: Grow() adds them
// on a thread of their own, and until one has room Allocate says
// Unavailable and the caller uses ordinary memory). Each region is
// registered once. Mooncake offers no way to free a region, so regions live
// as long as the process (at most kMaxRegionBytes) and blocks are reused: a
// block given back is kept, pages in memory, for the next block of its size
// class (a loader that drops each batch once used reads into memory it
// touched before); beyond kKeepBytes of those, the oldest has its pages
// released (MADV_REMOVE) and stays reusable. After Close() (the store is
// going; its client may be gone) no region is added, and blocks given back
// have their pages released: tensors still held stay valid, as the mapping
// does (the wheel unmaps its regions at process exit only).
#pragma once

#include <cstddef>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "mooncake_connector/buffer.h"
#include "mooncake_connector/status.h"
#include "store/mooncake/mooncake_api_internal.h"

namespace mooncake_connector::mooncake {

class SharedBlocks : public std::enable_shared_from_this<SharedBlocks> {
 public:
  // Bytes asked of the client per region (more for a larger block).
  static constexpr size_t kRegionBytes = size_t{256} << 20;
  // Bytes of regions, at most.
  static constexpr size_t kMaxRegionBytes = size_t{2} << 30;
  // Bytes of given-back blocks kept with their pages in memory.
  static constexpr size_t kKeepBytes = size_t{512} << 20;

  SharedBlocks(const Api* api, Handle handle) : api_(api), handle_(handle) {}
  ~SharedBlocks();  // REQUIRES: Close() was called

  // A block of `size` bytes (> 0) in registered shared memory, given back
  // when the last copy of the buffer goes. Unavailable when no region has
  // room for it (callers use ordinary memory), and after Close().
  Result<Buffer> Allocate(size_t size);

  // Makes regions of `bytes` in all (at most kMaxRegionBytes), each with
  // room for a block of `largest` bytes, on a thread of its own, unless as
  // many are there or being made. Once a region cannot be had or
  // registered, no more are asked for.
  void Grow(size_t bytes, size_t largest);

  // Whether [p, p + size) lies within one region.
  bool Contains(const void* p, size_t size) const;

  // Waits for a Grow under way; no more regions; blocks given back from now
  // on release their pages.
  void Close();

  // For tests: bytes of the regions, and of the blocks kept in memory;
  // WaitForGrowth() returns when no Grow is under way.
  size_t region_bytes() const;
  size_t kept_bytes() const;
  void WaitForGrowth();

 private:
  struct Region {
    std::byte* base;
    size_t size;
    size_t used;  // carved from the start
  };

  void Give(std::byte* p, size_t size_class);
  std::byte* Carve(size_t size_class);  // REQUIRES: mu_ held
  void GrowTo();                        // grower_: regions up to target_bytes_
  static void Release(std::byte* p, size_t size);

  const Api* api_;
  const Handle handle_;
  mutable std::mutex mu_;
  std::vector<Region> regions_;
  std::deque<std::pair<std::byte*, size_t>> kept_;  // pages in memory; oldest first
  size_t kept_bytes_ = 0;
  std::multimap<size_t, std::byte*> released_;  // pages released; by size class
  size_t target_bytes_ = 0;                     // what Grow asked for
  size_t region_min_ = 0;                       // bytes of a region, at least
  bool closed_ = false;
  bool failed_ = false;
  bool growing_ = false;  // a GrowTo thread runs
  std::mutex grow_mu_;    // Grow, Close and WaitForGrowth: who starts and joins grower_
  std::thread grower_;
};

}  // namespace mooncake_connector::mooncake
