// Between connecting (mooncake_open.cc) and the store (mooncake_store.cc).
#pragma once

#include <memory>

#include "mooncake_connector/mooncake_store.h"
#include "store/mooncake/mooncake_api_internal.h"
#include "store/mooncake/shared_blocks_internal.h"

namespace mooncake_connector::mooncake {

// A Store over a client `handle` that is already set up; takes ownership of
// the handle (destroyed with the store, or at once on error).
Result<std::shared_ptr<Store>> NewMooncakeStore(const MooncakeConfig& config, const Api* api,
                                                Handle handle);

// For tests: the shared memory a store made by NewMooncakeStore lends for
// reads (null outside standalone-client mode with direct reads).
SharedBlocks* SharedBlocksOf(Store& store);

}  // namespace mooncake_connector::mooncake
