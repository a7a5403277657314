// Between connecting (mooncake_open.cc) and the data path (mooncake_store.cc).
#pragma once

#include <memory>

#include "mooncake_connector/mooncake_store.h"
#include "store/mooncake/mooncake_api_internal.h"

namespace mooncake_connector::mooncake {

// A Store over a client `handle` that is already set up; takes ownership of
// the handle (destroyed with the store, or at once on error).
Result<std::shared_ptr<Store>> NewMooncakeStore(const MooncakeConfig& config, const Api* api,
                                                Handle handle);

}  // namespace mooncake_connector::mooncake
