// Direct reads: values of a size the caller knows (model tensors) transferred
// by Mooncake straight into the caller's memory, each object scattered over
// the value's head and destination, instead of into the staging slots and
// copied out. A read gives the same bytes, checks and errors as a staged one:
// whatever a direct read cannot take as it is goes to the staged read.
#include <algorithm>
#include <cstring>
#include <memory>

#include "core/hash_internal.h"
#include "core/parallel_internal.h"
#include "store/deliver_internal.h"
#include "store/mooncake/mooncake_reader_internal.h"

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
  bool whole = false;                 // value_hash is checked here (against the header's checksum)
};

// One Mooncake object of a value: a raw value's only object, or a chunk.
struct DirectObject {
  size_t value;
  std::string key;
  uint64_t offset, size;  // its bytes in the value
  bool last;              // the value's last object
};

}  // namespace

MooncakeReader::MooncakeReader(MooncakeClient& client)
    : client_(client),
      direct_reads_(client.can_read_directly()),
      local_reads_(client.can_read_locally()) {}

Result<Buffer> MooncakeReader::Allocate(size_t size) {
  if (client_.shared() != nullptr && size >= kDirectTransferMin && direct_reads_.load(std::memory_order_relaxed)) {
    Result<Buffer> b = client_.shared()->Allocate(size);
    if (b.ok()) return b;
  }
  return Buffer::Allocate(size);
}

void MooncakeReader::StreamingLoadDone(uint64_t batch_bytes, uint64_t largest) {
  if (client_.shared() == nullptr || !direct_reads_.load(std::memory_order_relaxed)) return;
  if (streaming_loads_.fetch_add(1) < 1) return;
  // Room for the batch being read, the one before it (the loader still
  // holds a tensor of it), and size classes' rounding.
  const uint64_t batch = std::min<uint64_t>(std::max(batch_bytes, largest), SharedBlocks::kMaxRegionBytes);
  client_.shared()->Grow(static_cast<size_t>(batch * 5 / 2), static_cast<size_t>(std::min<uint64_t>(largest, batch)));
}

void MooncakeReader::ReadDirect(std::span<const GetIntoRequest> requests, std::span<const size_t> which,
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
      FirstObject first = ClassifyFirstObject(ConstBytes(headers[i]->data(), headers[i]->size()));
      const ChunkHeader& h = first.header;
      if (first.kind != FirstObject::kHeader || h.total_size != size || h.num_chunks == 0) continue;
      v->header = h;
      v->whole = ChecksValue(h, r);
      for (uint64_t c = 0; c < h.num_chunks; ++c) {
        objects.push_back({values.size(), h.ChunkKey(r.key, c), c * h.chunk_size, h.ChunkLength(c),
                           c + 1 == h.num_chunks});
      }
    } else {
      objects.push_back({values.size(), std::string(r.key), 0, size, true});
    }
    values.push_back(std::move(v));
  }

  // A value read and, where checksums apply, checked: its result is set.
  // (A mismatch is left to ReadValue, which reads the value again and
  // reports DataLoss if it persists.)
  auto finish = [&](DirectValue& v) {
    const GetIntoRequest& r = requests[v.request];
    if (v.whole && v.value_hash.Digest() != v.header->checksum) return;
    if (r.data_xxh3 != nullptr) *r.data_xxh3 = v.data_hash.Digest();
    out[v.request] = r.head.size() + r.destination.size();
  };
  // Bytes [o.offset, o.offset + o.size) of the value, copied from `from`
  // (null: already in place, transferred by Mooncake), fed to its hashes.
  auto take = [&](const DirectObject& o, const std::byte* from) {
    DirectValue& v = *values[o.value];
    const GetIntoRequest& r = requests[v.request];
    Xxh3Stream* data = r.data_xxh3 != nullptr ? &v.data_hash : nullptr;
    Xxh3Stream* value = v.whole ? &v.value_hash : nullptr;
    if (from != nullptr) {
      DeliverAt(r, o.offset, ConstBytes(from, o.size), data, value);
    } else {
      HashInPlaceAt(r, o.offset, o.size, data, value);
    }
  };

  // Values whose every object is in this client's own segment are copied
  // from there (local_reads_), several side by side, while the others are
  // transferred. Only values whose bytes are checked (the caller's hash, or
  // the value's checksum): a replica that changed under the copy is then
  // caught, as a torn transfer is.
  std::vector<const std::byte*> local(objects.size(), nullptr);
  std::vector<bool> local_value(values.size(), false);
  if (local_reads_.load(std::memory_order_relaxed) && direct_reads_.load(std::memory_order_relaxed)) {
    std::vector<size_t> checked;
    std::vector<const char*> keys;
    std::vector<uint64_t> sizes;
    for (size_t j = 0; j < objects.size(); ++j) {
      const DirectValue& v = *values[objects[j].value];
      if (requests[v.request].data_xxh3 == nullptr && !v.whole) continue;
      checked.push_back(j);
      keys.push_back(objects[j].key.c_str());
      sizes.push_back(objects[j].size);
    }
    constexpr size_t kPerQuery = 1024;
    for (size_t at = 0; at < checked.size(); at += kPerQuery) {
      const size_t n = std::min(kPerQuery, checked.size() - at);
      std::vector<const std::byte*> found =
          LocalReplicas(std::span(keys).subspan(at, n), std::span(sizes).subspan(at, n));
      for (size_t k = 0; k < n; ++k) local[checked[at + k]] = found[k];
    }
    std::fill(local_value.begin(), local_value.end(), true);
    for (size_t j = 0; j < objects.size(); ++j) {
      if (local[j] == nullptr) local_value[objects[j].value] = false;
    }
  }
  std::vector<std::pair<size_t, size_t>> local_runs;  // [first, end) objects of each local value
  for (size_t j = 0; j < objects.size(); ++j) {
    if (!local_value[objects[j].value]) continue;
    if (!local_runs.empty() && local_runs.back().second == j && objects[j - 1].value == objects[j].value) {
      local_runs.back().second = j + 1;
    } else {
      local_runs.emplace_back(j, j + 1);
    }
  }
  // Largest first: the last ones to finish are then the small ones.
  auto bytes_of = [&](const std::pair<size_t, size_t>& run) {
    return objects[run.second - 1].offset + objects[run.second - 1].size;
  };
  std::stable_sort(local_runs.begin(), local_runs.end(),
                   [&](const auto& a, const auto& b) { return bytes_of(a) > bytes_of(b); });
  Background copying;  // declared after `values`: waited for before they go
  if (!local_runs.empty()) {
    copying.Run([&] {
      ParallelFor(local_runs.size(), CopyThreads(), [&](size_t k) {
        for (size_t j = local_runs[k].first; j < local_runs[k].second; ++j) take(objects[j], local[j]);
        finish(*values[objects[local_runs[k].first].value]);
      });
    });
  }

  Background hashing;  // likewise
  size_t next = 0;
  while (direct_reads_.load(std::memory_order_relaxed)) {
    while (next < objects.size() && local_value[objects[next].value]) ++next;
    if (next == objects.size()) break;
    uint64_t bytes = 0;
    std::vector<size_t> call;  // the objects of this call
    for (; next < objects.size() && (call.empty() || bytes + objects[next].size <= kDirectCallBytes); ++next) {
      if (local_value[objects[next].value]) continue;
      call.push_back(next);
      bytes += objects[next].size;
    }
    if (client_.health().Refusal() != 0) break;  // ReadValue fails the rest at once
    // A dummy client transfers only into its shared memory: the heads
    // (small, in the caller's memory) are read into a shared block and
    // copied to their place after the call.
    Buffer heads;
    std::vector<std::pair<std::byte*, MutableBytes>> head_copies;  // from, to
    if (client_.shared() != nullptr) {
      uint64_t head_bytes = 0;
      for (size_t j : call) {
        ForEachPiece(requests[values[objects[j].value]->request], objects[j].offset, objects[j].size,
                     [&](MutableBytes piece, bool in_destination) {
                       if (!in_destination) head_bytes += piece.size();
                     });
      }
      if (head_bytes > 0) {
        Result<Buffer> b = client_.shared()->Allocate(static_cast<size_t>(head_bytes));
        if (!b.ok()) break;  // ReadValue reads the rest
        heads = std::move(*b);
      }
    }
    std::vector<const char*> keys;
    std::vector<void*> buffers;
    std::vector<size_t> sizes, pieces;
    uint64_t head_at = 0;
    for (size_t j : call) {
      const DirectObject& o = objects[j];
      keys.push_back(o.key.c_str());
      const size_t before = buffers.size();
      ForEachPiece(requests[values[o.value]->request], o.offset, o.size, [&](MutableBytes piece, bool in_destination) {
        std::byte* into = piece.data();
        if (!in_destination && client_.shared() != nullptr) {
          into = heads.data() + head_at;
          head_at += piece.size();
          head_copies.emplace_back(into, piece);
        }
        buffers.push_back(into);
        sizes.push_back(piece.size());
      });
      pieces.push_back(buffers.size() - before);
    }
    std::vector<int64_t> results(keys.size(), 0);
    auto start = std::chrono::steady_clock::now();
    int rc = client_.api()->batch_get_into_multi(client_.handle(), keys.data(), keys.size(), buffers.data(), sizes.data(),
                                        pieces.data(), results.data());
    client_.health().Note(rc != 0 ? rc : *std::min_element(results.begin(), results.end()),
                 std::chrono::steady_clock::now() - start);
    for (auto [from, to] : head_copies) std::memcpy(to.data(), from, to.size());
    if (rc == kErrNotSupported) direct_reads_.store(false);
    if (rc != 0) break;
    // Failures are noted before the hashing of this call starts, so it sees
    // every failure of a value whose last object this call holds.
    for (size_t k = 0; k < call.size(); ++k) {
      const DirectObject& o = objects[call[k]];
      if (results[k] < 0 || static_cast<uint64_t>(results[k]) != o.size) values[o.value]->failed = true;
    }
    std::vector<size_t> arrived;
    for (size_t j : call) {
      if (!values[objects[j].value]->failed) arrived.push_back(j);
    }
    // Hashed while the next call transfers (Run waits for the previous call's
    // hashing first, so each value's pieces are hashed in order). In
    // standalone-client mode values side by side (each value's objects in
    // order): the client process makes the transfers, and nothing else of
    // ours runs meanwhile; over TCP the transfer busy-polls both cores.
    const size_t hash_threads = client_.shared() != nullptr ? CopyThreads() : 1;
    std::vector<std::pair<size_t, size_t>> runs;  // [first, end) in `arrived`, one value each
    for (size_t k = 0; k < arrived.size(); ++k) {
      if (k > 0 && objects[arrived[k]].value == objects[arrived[k - 1]].value) {
        runs.back().second = k + 1;
      } else {
        runs.emplace_back(k, k + 1);
      }
    }
    hashing.Run([&, arrived = std::move(arrived), runs = std::move(runs), hash_threads] {
      ParallelFor(runs.size(), hash_threads, [&](size_t r) {
        for (size_t k = runs[r].first; k < runs[r].second; ++k) {
          take(objects[arrived[k]], nullptr);
          if (objects[arrived[k]].last) finish(*values[objects[arrived[k]].value]);
        }
      });
    });
  }
}

std::vector<const std::byte*> MooncakeReader::LocalReplicas(std::span<const char* const> keys,
                                                           std::span<const uint64_t> sizes) {
  std::vector<const std::byte*> out(keys.size(), nullptr);
  if (keys.empty() || !local_reads_.load(std::memory_order_relaxed)) return out;
  std::vector<const void*> addresses(keys.size(), nullptr);
  std::vector<uint64_t> found(keys.size(), 0);
  int rc = client_.api()->batch_local_replicas(client_.handle(), const_cast<const char**>(keys.data()), keys.size(), addresses.data(),
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
