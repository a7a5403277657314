// Direct reads: values of a size the caller knows (model tensors) transferred
// by Mooncake straight into the caller's memory, each object scattered over
// the value's head and destination, instead of into the staging slots and
// copied out. A read gives the same bytes, checks and errors as a staged one:
// whatever a direct read cannot take as it is goes to the staged read.
#include <algorithm>
#include <memory>

#include "core/hash_internal.h"
#include "core/parallel_internal.h"
#include "store/deliver_internal.h"
#include "store/mooncake/mooncake_store_impl_internal.h"

namespace mooncake_connector::mooncake {
namespace {

// One value read directly, and the hashes of what has arrived of it (fed in
// order, by the hashing thread only).
struct DirectValue {
  size_t request;
  std::optional<ChunkHeader> header;  // set for a chunked value
  Xxh3Stream value_hash;              // of the whole value (chunked, version 2)
  Xxh3Stream data_hash;               // of its destination bytes (if asked for)
  bool failed = false;                // an object of it could not be read directly
};

// One Mooncake object of a value: a raw value's only object, or a chunk.
struct DirectObject {
  size_t value;
  std::string key;
  uint64_t offset, size;  // its bytes in the value
  bool last;              // the value's last object
};

}  // namespace

void MooncakeStore::ReadDirect(std::span<const GetIntoRequest> requests, std::span<const size_t> which,
                               const std::vector<std::optional<HeaderBytes>>& headers,
                               std::vector<std::optional<Result<uint64_t>>>& out) {
  std::vector<std::unique_ptr<DirectValue>> values;
  std::vector<DirectObject> objects;
  for (size_t i : which) {
    const GetIntoRequest& r = requests[i];
    const uint64_t size = r.head.size() + r.destination.size();
    auto v = std::make_unique<DirectValue>();
    v->request = i;
    if (headers[i]) {
      // Tombstones, headers of another size and damaged ones: ReadValue.
      Result<ChunkHeader> h = ParseChunkHeader(ConstBytes(headers[i]->data(), headers[i]->size()));
      if (!h.ok() || h->tombstone || h->total_size != size || h->num_chunks == 0) continue;
      v->header = *h;
      for (uint64_t c = 0; c < h->num_chunks; ++c) {
        objects.push_back({values.size(), h->ChunkKey(r.key, c), c * h->chunk_size, h->ChunkLength(c),
                           c + 1 == h->num_chunks});
      }
    } else {
      objects.push_back({values.size(), std::string(r.key), 0, size, true});
    }
    values.push_back(std::move(v));
  }

  Background hashing;  // declared after `values`: waited for before they go
  size_t next = 0;
  while (next < objects.size() && direct_reads_.load(std::memory_order_relaxed)) {
    const size_t first = next;
    uint64_t bytes = 0;
    std::vector<const char*> keys;
    std::vector<void*> buffers;
    std::vector<size_t> sizes, pieces;
    for (; next < objects.size() && (next == first || bytes + objects[next].size <= kDirectCallBytes); ++next) {
      const DirectObject& o = objects[next];
      keys.push_back(o.key.c_str());
      const size_t before = buffers.size();
      ForEachPiece(requests[values[o.value]->request], o.offset, o.size, [&](MutableBytes piece, bool) {
        buffers.push_back(piece.data());
        sizes.push_back(piece.size());
      });
      pieces.push_back(buffers.size() - before);
      bytes += o.size;
    }
    if (health_.Refusal() != 0) break;  // ReadValue fails the rest at once
    std::vector<int64_t> results(keys.size(), 0);
    auto start = std::chrono::steady_clock::now();
    int rc = api_->batch_get_into_multi(handle_, keys.data(), keys.size(), buffers.data(), sizes.data(),
                                        pieces.data(), results.data());
    health_.Note(rc != 0 ? rc : *std::min_element(results.begin(), results.end()),
                 std::chrono::steady_clock::now() - start);
    if (rc == kErrNotSupported) direct_reads_.store(false);
    if (rc != 0) break;
    // Failures are noted before the hashing of this call starts, so it sees
    // every failure of a value whose last object this call holds.
    std::vector<size_t> arrived;
    for (size_t j = 0; j < keys.size(); ++j) {
      const DirectObject& o = objects[first + j];
      if (results[j] < 0 || static_cast<uint64_t>(results[j]) != o.size) values[o.value]->failed = true;
    }
    for (size_t j = first; j < next; ++j) {
      if (!values[objects[j].value]->failed) arrived.push_back(j);
    }
    // Hashed while the next call transfers (Run waits for the previous call's
    // hashing first, so each value's pieces are hashed in order).
    hashing.Run([&, arrived = std::move(arrived)] {
      for (size_t j : arrived) {
        const DirectObject& o = objects[j];
        DirectValue& v = *values[o.value];
        const GetIntoRequest& r = requests[v.request];
        const bool whole = v.header && v.header->has_checksum() && !r.CallerVerifies();
        HashInPlaceAt(r, o.offset, o.size, r.data_xxh3 != nullptr ? &v.data_hash : nullptr,
                      whole ? &v.value_hash : nullptr);
        if (!o.last) continue;
        // A mismatch is left to ReadValue, which reads the value again and
        // reports DataLoss if it persists.
        if (whole && v.value_hash.Digest() != v.header->checksum) continue;
        if (r.data_xxh3 != nullptr) *r.data_xxh3 = v.data_hash.Digest();
        out[v.request] = r.head.size() + r.destination.size();
      }
    });
  }
}

}  // namespace mooncake_connector::mooncake
