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
  std::vector<std::unique_ptr<ValueRead>> values;
  std::vector<ObjectRead> objects;
  for (size_t i : which) {
    const GetIntoRequest& r = requests[i];
    const uint64_t size = r.head.size() + r.destination.size();
    auto v = std::make_unique<ValueRead>();
    v->request = &r;
    if (headers[i]) {
      // Tombstones, headers of another size and damaged ones: ReadValue.
      FirstObject first = ClassifyFirstObject(ConstBytes(headers[i]->data(), headers[i]->size()));
      const ChunkHeader& h = first.header;
      if (first.kind != FirstObject::kHeader || h.total_size != size || h.num_chunks == 0) continue;
      v->header = h;
      v->check_whole = ChecksValue(h, r);
      for (ObjectRead& o : ChunkObjects(values.size(), r.key, h, 0, h.num_chunks, true)) objects.push_back(std::move(o));
    } else {
      objects.push_back({values.size(), std::string(r.key), 0, size, true});
    }
    values.push_back(std::move(v));
  }

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
      const ValueRead& v = *values[objects[j].value];
      if (v.request->data_xxh3 == nullptr && !v.check_whole) continue;
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
  std::vector<ObjectRead> remote;
  for (size_t j = 0; j < objects.size(); ++j) {
    if (!local_value[objects[j].value]) {
      remote.push_back(std::move(objects[j]));  // its key is not needed here again
    } else if (!local_runs.empty() && local_runs.back().second == j && objects[j - 1].value == objects[j].value) {
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
  {
    Background copying;  // waited for before the results are read
    if (!local_runs.empty()) {
      copying.Run([&] {
        ParallelFor(local_runs.size(), CopyThreads(), [&](size_t k) {
          for (size_t j = local_runs[k].first; j < local_runs[k].second; ++j) {
            TakeObject(*values[objects[j].value], objects[j], local[j]);
          }
          FinishValue(*values[objects[local_runs[k].first].value]);
        });
      });
    }
    // In standalone-client mode values are hashed side by side (each
    // value's objects in order): the client process makes the transfers,
    // and nothing else of ours runs meanwhile; over TCP the transfer
    // busy-polls both cores.
    if (!remote.empty() && direct_reads_.load(std::memory_order_relaxed)) {
      ObjectTransfer how{ObjectTransfer::kInPlace, remote.size(), kDirectReadCallBytes};
      how.hash_threads = client_.shared() != nullptr ? CopyThreads() : 1;
      if (ReadObjects(values, remote, how) == kErrNotSupported) direct_reads_.store(false);
    }
  }
  for (const auto& v : values) {
    if (!v->done || !v->status.ok()) continue;  // ReadValue reads it again and says what is wrong
    const GetIntoRequest& r = *v->request;
    out[static_cast<size_t>(&r - requests.data())] = r.head.size() + r.destination.size();
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
