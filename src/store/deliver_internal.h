// Putting a value's bytes where a GetIntoRequest wants them, with the hashes
// computed on the way (while each block is in cache) instead of in a second
// pass over memory.
#pragma once

#include <cstdint>

#include "core/hash_internal.h"
#include "mooncake_connector/store.h"

namespace mooncake_connector {

// As r.CopyAt(offset, bytes), block by block; after each block, the bytes of
// it that went to r.destination are fed to `data` and all of it to `value`
// (either may be null). Pieces of one value must come in order.
void DeliverAt(const GetIntoRequest& r, uint64_t offset, ConstBytes bytes, Xxh3Stream* data,
               Xxh3Stream* value = nullptr);

// A whole value in one piece: delivered, and *r.data_xxh3 set if asked for.
void Deliver(const GetIntoRequest& r, ConstBytes value);

// Sets *r.data_xxh3 (if asked for) from the first `n` bytes of
// r.destination, for a path that wrote them without hashing.
void HashDelivered(const GetIntoRequest& r, uint64_t n);

}  // namespace mooncake_connector
