// Private helpers around the public function table (mooncake_api.h).
#pragma once

#include <string>

#include "mooncake_connector/mooncake_api.h"
#include "mooncake_connector/status.h"

namespace mooncake_connector::mooncake {

// A Status for a negative Mooncake result of `what` (e.g. "put_from 'k'").
Status FromMooncakeError(int64_t code, const std::string& what);

// True for refusals that go away by themselves (replica not ready, read lease
// held or expired, replica busy, a write preempted by another client's): the
// operation is retried until its deadline.
bool IsTransientError(int64_t code);

// dlopens `path` and resolves every mooncake_store_* function of store_c.h,
// and the optional ones it exports. InvalidArgument naming the path, or the
// first missing required symbol, on failure. The library stays loaded for the
// life of the process.
Result<Api> LoadNativeMooncakeApi(const std::string& path);

}  // namespace mooncake_connector::mooncake
