// Putting a value's bytes where a GetIntoRequest wants them, with the hashes
// computed on the way (while each block is in cache) instead of in a second
// pass over memory; and the mirror for writes, taking them from a
// PutRequest's parts (Gather, AppendPieces).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "core/hash_internal.h"
#include "mooncake_connector/store.h"

namespace mooncake_connector {

// As r.CopyAt(offset, bytes), block by block; after each block, the bytes of
// it that went to r.destination are fed to `data` and all of it to `value`
// (either may be null). Pieces of one value must come in order. A partial
// request takes the bytes in its range and feeds nothing to `value`.
void DeliverAt(const GetIntoRequest& r, uint64_t offset, ConstBytes bytes, Xxh3Stream* data,
               Xxh3Stream* value = nullptr);

// A whole value in one piece: delivered, and *r.data_xxh3 set if asked for.
void Deliver(const GetIntoRequest& r, ConstBytes value);

// Calls fn(piece, in_destination) for the memory that bytes [offset,
// offset + size) of the value go to, in order: a part of r.head, then a part
// of r.destination.
// REQUIRES: r.CheckFits(offset + size).
template <typename Fn>
void ForEachPiece(const GetIntoRequest& r, uint64_t offset, uint64_t size, Fn&& fn) {
  const uint64_t head = r.head.size();
  if (offset < head && size > 0) {
    const uint64_t n = std::min(size, head - offset);
    fn(r.head.subspan(static_cast<size_t>(offset), static_cast<size_t>(n)), false);
    offset += n;
    size -= n;
  }
  if (size > 0) fn(r.destination.subspan(static_cast<size_t>(offset - head), static_cast<size_t>(size)), true);
}

// For bytes [offset, offset + size) of the value already in place (read
// straight into r's memory): feeds those in r.destination to `data` and all
// of them to `value` (either may be null), block by block so the second
// hash reads from cache. Pieces of one value must come in order.
void HashInPlaceAt(const GetIntoRequest& r, uint64_t offset, uint64_t size, Xxh3Stream* data,
                   Xxh3Stream* value);

// Sets *r.data_xxh3 (if asked for) from the first `n` bytes of
// r.destination, for a path that wrote them without hashing.
void HashDelivered(const GetIntoRequest& r, uint64_t n);

// Copies bytes [offset, offset + dst.size()) of the concatenation of `parts`.
void Gather(std::span<const ConstBytes> parts, uint64_t offset, MutableBytes dst);

// Appends to buffers/sizes the memory of bytes [offset, offset + size) of
// the concatenation of `parts` (a gather list for a direct put); returns how
// many pieces it appended.
size_t AppendPieces(std::span<const ConstBytes> parts, uint64_t offset, uint64_t size, std::vector<void*>& buffers,
                    std::vector<size_t>& sizes);

}  // namespace mooncake_connector
