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
    for (; next < objects.size() && (next == first || bytes + objects[next].size <= kDirectCallBytes); ++next) {
      bytes += objects[next].size;
    }
    if (health_.Refusal() != 0) break;  // ReadValue fails the rest at once
    // Objects in this client's own segment are copied from there below; the
    // others are transferred by Mooncake now. Only for values whose bytes
    // are checked (the caller's hash, or the value's checksum): a replica
    // that changed under the copy is then caught, as a torn transfer is.
    std::vector<size_t> checked;
    std::vector<const char*> checked_keys;
    std::vector<uint64_t> checked_sizes;
    for (size_t j = first; j < next; ++j) {
      const DirectValue& v = *values[objects[j].value];
      if (requests[v.request].data_xxh3 == nullptr && !(v.header && v.header->has_checksum())) continue;
      checked.push_back(j);
      checked_keys.push_back(objects[j].key.c_str());
      checked_sizes.push_back(objects[j].size);
    }
    std::vector<const std::byte*> local(next - first, nullptr);
    std::vector<const std::byte*> found = LocalReplicas(checked_keys, checked_sizes);
    for (size_t k = 0; k < checked.size(); ++k) local[checked[k] - first] = found[k];
    std::vector<const char*> keys;
    std::vector<void*> buffers;
    std::vector<size_t> sizes, pieces, transferred;
    for (size_t j = first; j < next; ++j) {
      if (local[j - first] != nullptr) continue;
      const DirectObject& o = objects[j];
      keys.push_back(o.key.c_str());
      const size_t before = buffers.size();
      ForEachPiece(requests[values[o.value]->request], o.offset, o.size, [&](MutableBytes piece, bool) {
        buffers.push_back(piece.data());
        sizes.push_back(piece.size());
      });
      pieces.push_back(buffers.size() - before);
      transferred.push_back(j);
    }
    if (!keys.empty()) {
      std::vector<int64_t> results(keys.size(), 0);
      auto start = std::chrono::steady_clock::now();
      int rc = api_->batch_get_into_multi(handle_, keys.data(), keys.size(), buffers.data(), sizes.data(),
                                          pieces.data(), results.data());
      health_.Note(rc != 0 ? rc : *std::min_element(results.begin(), results.end()),
                   std::chrono::steady_clock::now() - start);
      if (rc == kErrNotSupported) direct_reads_.store(false);
      if (rc != 0) break;
      // Failures are noted before the hashing of this call starts, so it
      // sees every failure of a value whose last object this call holds.
      for (size_t k = 0; k < keys.size(); ++k) {
        const DirectObject& o = objects[transferred[k]];
        if (results[k] < 0 || static_cast<uint64_t>(results[k]) != o.size) values[o.value]->failed = true;
      }
    }
    // The objects of each value not failed, in order (a value's objects are
    // consecutive): one run per value, runs side by side.
    std::vector<std::pair<size_t, size_t>> runs;
    bool copies = false;
    for (size_t j = first; j < next; ++j) {
      if (values[objects[j].value]->failed) continue;
      copies = copies || local[j - first] != nullptr;
      if (!runs.empty() && runs.back().second == j && objects[j - 1].value == objects[j].value) {
        runs.back().second = j + 1;
      } else {
        runs.emplace_back(j, j + 1);
      }
    }
    // Done while the next call transfers (Run waits for the previous call's
    // work first, so each value's pieces are hashed in order).
    hashing.Run([&, first, copies, runs = std::move(runs), local = std::move(local)] {
      ParallelFor(runs.size(), copies ? CopyThreads() : 1, [&](size_t k) {
        for (size_t j = runs[k].first; j < runs[k].second; ++j) {
          const DirectObject& o = objects[j];
          DirectValue& v = *values[o.value];
          const GetIntoRequest& r = requests[v.request];
          const bool whole = v.header && v.header->has_checksum() && !r.CallerVerifies();
          Xxh3Stream* data = r.data_xxh3 != nullptr ? &v.data_hash : nullptr;
          Xxh3Stream* value = whole ? &v.value_hash : nullptr;
          if (const std::byte* at = local[j - first]; at != nullptr) {
            DeliverAt(r, o.offset, ConstBytes(at, o.size), data, value);
          } else {
            HashInPlaceAt(r, o.offset, o.size, data, value);
          }
          if (!o.last) continue;
          // A mismatch is left to ReadValue, which reads the value again and
          // reports DataLoss if it persists.
          if (whole && v.value_hash.Digest() != v.header->checksum) continue;
          if (r.data_xxh3 != nullptr) *r.data_xxh3 = v.data_hash.Digest();
          out[v.request] = r.head.size() + r.destination.size();
        }
      });
    });
  }
}

std::vector<const std::byte*> MooncakeStore::LocalReplicas(std::span<const char* const> keys,
                                                           std::span<const uint64_t> sizes) {
  std::vector<const std::byte*> out(keys.size(), nullptr);
  if (keys.empty() || !local_reads_.load(std::memory_order_relaxed)) return out;
  std::vector<const void*> addresses(keys.size(), nullptr);
  std::vector<uint64_t> found(keys.size(), 0);
  int rc = api_->batch_local_replicas(handle_, const_cast<const char**>(keys.data()), keys.size(), addresses.data(),
                                      found.data());
  if (rc == kErrNotSupported) local_reads_.store(false);
  if (rc != 0) return out;  // transferred as ever (which reports what is wrong)
  // Another size is another object than the one expected: the transfer
  // path says what is wrong with it.
  std::vector<std::pair<const void*, uint64_t>> ranges(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) ranges[i] = {addresses[i], found[i] == sizes[i] ? found[i] : 0};
  std::vector<bool> readable = readable_.Contains(ranges);
  for (size_t i = 0; i < keys.size(); ++i) {
    if (readable[i]) out[i] = static_cast<const std::byte*>(addresses[i]);
  }
  return out;
}

}  // namespace mooncake_connector::mooncake
