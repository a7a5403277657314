// Writes of one Mooncake key from this process, one at a time.
//
// Mooncake's master checks the end of a write (PutEnd, UpsertEnd) against the
// writing client only, and an upsert preempts a write in progress at once. Two
// threads of one client writing the same key can therefore end each other's
// writes: the second thread's fresh allocation is marked complete by the
// first thread's End before its bytes arrive, and readers get whatever that
// memory held (zeros, or pieces of an older value). Every native write of a
// key that other threads of this process may also write (put_from,
// upsert_from, batch_put_from of user keys) holds the key's lock for the call.
// Chunk objects need none: their keys carry the writer's own generation.
#pragma once

#include <mutex>
#include <span>
#include <string_view>
#include <vector>

namespace mooncake_connector::mooncake {

// Locks of the stripe each key hashes to; several keys are locked in stripe
// order, so two batches never wait on each other in a cycle.
std::unique_lock<std::mutex> LockKeyForWrite(std::string_view key);
std::vector<std::unique_lock<std::mutex>> LockKeysForWrite(std::span<const char* const> keys);

}  // namespace mooncake_connector::mooncake
