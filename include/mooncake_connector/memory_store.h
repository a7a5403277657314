// memory:// -- an in-process store: the embedded default for one process,
// C++ users and tests. Thread-safe; keys are spread over shards, each with its
// own reader-writer lock. Values are copied in on Put and out on Get, so no
// caller ever holds a reference into the store.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "mooncake_connector/export.h"
#include "mooncake_connector/status.h"
#include "mooncake_connector/store.h"

namespace mooncake_connector {

struct MemoryStoreOptions {
  // Total value bytes the store may hold; 0 means no limit. A Put that would
  // pass it fails with ResourceExhausted and changes nothing.
  uint64_t capacity_bytes = 0;
  size_t num_shards = 16;
  // Values in page-locked (pinned) host memory, allocated through the CUDA
  // driver (loaded at run time): a load onto a GPU then copies each tensor
  // straight from the store by DMA instead of through staging buffers.
  // Opening such a store fails (FailedPrecondition) without a CUDA driver;
  // pinning makes puts slower and the memory cannot be swapped out.
  bool pinned = false;
};

// A new, private store.
MC_EXPORT std::shared_ptr<Store> NewMemoryStore(const MemoryStoreOptions& options = {},
                                                std::string name = "");

// The process-wide store called `name` ("" is the default store): the same
// name returns the same store while anyone holds it. `options` apply only when
// this call creates the store; InvalidArgument if they conflict with the
// capacity of a store that already exists.
MC_EXPORT Result<std::shared_ptr<Store>> OpenNamedMemoryStore(std::string_view name,
                                                              const MemoryStoreOptions& options);

}  // namespace mooncake_connector
