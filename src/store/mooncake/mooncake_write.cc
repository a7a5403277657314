// The write path. Mooncake has no atomic replace, so a write never touches
// the old value before the new bytes are in the store:
//  - a raw value goes in with put only when the key has no value;
//  - every other write (any overwrite, any large, empty or header-sized value)
//    puts immutable chunks under a fresh generation first, and then commits
//    with the 64-byte header: over an old header an in-place same-size upsert
//    (it needs no space, so it cannot fail for lack of it); over a raw object
//    a size-changing upsert, done right after proving and freeing the 64
//    bytes it needs.
// Superseded chunks are removed with plain removes, waiting out readers'
// leases (deferred_removal_internal.h); nothing is ever force-removed.
#include <mutex>
#include <optional>
#include <random>

#include "core/hash_internal.h"
#include "store/mooncake/key_write_locks_internal.h"
#include "store/mooncake/mooncake_writer_internal.h"

namespace mooncake_connector::mooncake {
namespace {

uint64_t NewGeneration() {
  static std::mutex mutex;
  static std::mt19937_64 rng(std::random_device{}());
  std::lock_guard lock(mutex);
  uint64_t g;
  do g = rng(); while (g == 0);
  return g;
}

uint64_t HashOf(std::span<const ConstBytes> parts) {
  Xxh3Stream hash;
  for (ConstBytes p : parts) hash.Update(p);
  return hash.Digest();
}

}  // namespace

MooncakeWriter::MooncakeWriter(MooncakeClient& client)
    : client_(client), direct_writes_(client.can_write_directly()) {}

ChunkHeader MooncakeWriter::NewHeader(const PutRequest& r, uint64_t size) const {
  return MakeChunkHeader(size, client_.slot_size(), NewGeneration(), r.value_xxh3 ? *r.value_xxh3 : HashOf(r.parts));
}

std::vector<Status> MooncakeWriter::BatchPut(std::span<const PutRequest> requests,
                                            const WriteOptions& options) {
  client_.deferred().Flush();
  ReplicateConfig replicate = client_.replicate();
  replicate.replica_num = std::max<size_t>(replicate.replica_num, options.replica_num);
  replicate.with_soft_pin |= options.soft_pin;
  replicate.with_hard_pin |= options.hard_pin;
  std::vector<std::optional<Status>> done = PutNewValues(requests, replicate);
  std::vector<Status> out;
  out.reserve(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    if (done[i]) {
      out.push_back(*done[i]);
      continue;
    }
    Status s = ValidateKey(requests[i].key);
    out.push_back(s.ok() ? PutOne(requests[i], replicate) : s);
  }
  return out;
}

std::vector<std::optional<Status>> MooncakeWriter::PutNewValues(std::span<const PutRequest> requests,
                                                               const ReplicateConfig& replicate) {
  // First writes of raw objects go in with one batch_is_exist for all of
  // them and few batch puts: exactly what PutOne does for them one by one (is
  // the key free? then put; a put over a key a concurrent writer just
  // created keeps theirs, which simply won). Values written directly (1 MiB
  // and more) are gathered from the caller's memory, one batch_put_from_multi
  // per kDirectCallBytes; the others, if at most a quarter slot, are packed
  // into slots, one batch_put_from per slots' worth. Everything else, and anything
  // this pass cannot finish (the key exists, an error, a transient refusal),
  // is left to PutOne.
  std::vector<std::optional<Status>> done(requests.size());
  const std::vector<bool> repeated = RepeatedKeys(requests);
  std::vector<size_t> candidates;
  std::vector<uint64_t> sizes(requests.size(), 0);
  for (size_t i = 0; i < requests.size(); ++i) {
    const PutRequest& r = requests[i];
    for (ConstBytes p : r.parts) sizes[i] += p.size();
    std::byte first[8] = {};
    size_t first_len = static_cast<size_t>(std::min<uint64_t>(sizes[i], sizeof first));
    Gather(r.parts, 0, {first, first_len});
    if (repeated[i] || !ValidateKey(r.key).ok()) continue;
    if (NeedsChunking(sizes[i], {first, first_len}, client_.slot_size())) {
      // Chunked first writes are batched when written directly (their
      // headers then go in by one batch upsert).
      if (sizes[i] > client_.slot_size() && WritesDirectly(sizes[i]) && client_.api()->batch_upsert_from != nullptr) {
        candidates.push_back(i);
      }
      continue;
    }
    if (sizes[i] <= client_.slot_size() / 4 || WritesDirectly(sizes[i])) candidates.push_back(i);
  }
  if (candidates.size() < 2) return done;  // nothing to share a call with: PutOne
  std::vector<std::string> keys(requests.size());
  std::vector<const char*> c_keys;
  for (size_t i : candidates) {
    keys[i] = std::string(requests[i].key);
    c_keys.push_back(keys[i].c_str());
  }
  std::vector<int> exist(candidates.size(), 0);
  if (client_.health().Refusal() != 0) return done;  // PutOne fails them at once
  if (client_.api()->batch_is_exist(client_.handle(), c_keys.data(), c_keys.size(), exist.data()) != 0) return done;
  std::vector<size_t> small, large, chunked;
  for (size_t j = 0; j < candidates.size(); ++j) {
    if (exist[j] != 0) continue;
    const size_t i = candidates[j];
    if (sizes[i] > client_.slot_size()) {
      chunked.push_back(i);
      continue;
    }
    // As PutObject: direct from 1 MiB on (no copy into a slot).
    (WritesDirectly(sizes[i]) ? large : small).push_back(i);
  }

  // One batch put of `batch`'s keys from `buffers`; its successes are done.
  auto put = [&](const std::vector<size_t>& batch, std::vector<void*>& buffers, std::vector<size_t>& lengths,
                 const std::vector<size_t>* pieces) {
    std::vector<const char*> put_keys;
    for (size_t i : batch) put_keys.push_back(keys[i].c_str());
    std::vector<int> results(batch.size(), -1);
    auto locks = LockKeysForWrite(put_keys);
    auto start = std::chrono::steady_clock::now();
    int rc = pieces == nullptr
                 ? client_.api()->batch_put_from(client_.handle(), put_keys.data(), buffers.data(), lengths.data(), batch.size(),
                                        &replicate, results.data())
                 : client_.api()->batch_put_from_multi(client_.handle(), put_keys.data(), batch.size(), buffers.data(),
                                              lengths.data(), pieces->data(), &replicate, results.data());
    if (rc == kErrNotSupported) {
      direct_writes_.store(false);
      return;
    }
    client_.health().Note(rc != 0 ? rc : *std::min_element(results.begin(), results.end()),
                 std::chrono::steady_clock::now() - start);
    for (size_t j = 0; rc == 0 && j < batch.size(); ++j) {
      if (results[j] == 0) done[batch[j]] = Status::Ok();
    }
  };

  const uint64_t space = static_cast<uint64_t>(client_.slot_size()) * client_.arena().slots();
  for (size_t next = 0; next < small.size();) {
    std::vector<size_t> batch;
    std::vector<uint64_t> offsets;
    uint64_t used = 0;
    for (; next < small.size(); ++next) {
      const uint64_t size = sizes[small[next]];
      uint64_t at = used;
      if (size > 0 && at / client_.slot_size() != (at + size - 1) / client_.slot_size()) at = (at / client_.slot_size() + 1) * client_.slot_size();
      if (at + size > space) break;
      batch.push_back(small[next]);
      offsets.push_back(at);
      used = (at + size + 63) / 64 * 64;
    }
    if (client_.health().Refusal() != 0) break;
    const size_t slots_needed = static_cast<size_t>((used + client_.slot_size() - 1) / client_.slot_size());
    TransferArena::Lease slots = client_.arena().Acquire(std::max<size_t>(slots_needed, 1));
    std::vector<void*> buffers;
    std::vector<size_t> lengths;
    for (size_t j = 0; j < batch.size(); ++j) {
      std::byte* at = slots[offsets[j] / client_.slot_size()] + offsets[j] % client_.slot_size();
      Gather(requests[batch[j]].parts, 0, {at, sizes[batch[j]]});
      buffers.push_back(at);
      lengths.push_back(sizes[batch[j]]);
    }
    put(batch, buffers, lengths, nullptr);
  }
  for (size_t next = 0; next < large.size() && direct_writes_.load(std::memory_order_relaxed);) {
    std::vector<size_t> batch, pieces;
    std::vector<void*> buffers;
    std::vector<size_t> lengths;
    uint64_t bytes = 0;
    for (; next < large.size() && (batch.empty() || bytes + sizes[large[next]] <= kDirectCallBytes); ++next) {
      const size_t i = large[next];
      batch.push_back(i);
      pieces.push_back(AppendPieces(requests[i].parts, 0, sizes[i], buffers, lengths));
      bytes += sizes[i];
    }
    if (client_.health().Refusal() != 0) break;
    put(batch, buffers, lengths, &pieces);
  }
  if (!chunked.empty() && client_.health().Refusal() == 0 && direct_writes_.load(std::memory_order_relaxed)) {
    PutNewChunkedValues(requests, chunked, sizes, replicate, done);
  }
  return done;
}

void MooncakeWriter::PutNewChunkedValues(std::span<const PutRequest> requests, std::span<const size_t> which,
                                        std::span<const uint64_t> sizes, const ReplicateConfig& replicate,
                                        std::vector<std::optional<Status>>& done) {
  // PutOne's steps for a key without a value (chunks under a fresh
  // generation, then the header upserted, then the settle check), each step
  // done for all the values at once: the chunks of several values share
  // batch_put_from_multi calls of about kDirectCallBytes, the headers go in
  // by one batch upsert, and one read of the headers and one existence check
  // of the chunks stand for SettleHeader's look at each. A value a step
  // fails for has its chunks removed and is left to PutOne (which says what
  // is wrong if it persists); one whose check finds anything amiss (a later
  // writer's header, a torn one, a chunk swept by a remove) is settled by
  // SettleHeader as ever.
  struct NewValue {
    size_t request;
    std::string key;
    ChunkHeader header;
    bool failed = false;
  };
  std::vector<NewValue> values;
  for (size_t i : which) {
    const PutRequest& r = requests[i];
    values.push_back({i, std::string(r.key), NewHeader(r, sizes[i])});
  }
  Deadline deadline = client_.NewDeadline();

  // The chunks of all the values, sharing calls.
  std::vector<ChunkWrite> writes;
  for (const NewValue& v : values) writes.push_back({&v.key, &v.header, requests[v.request].parts});
  std::vector<Status> put = PutChunkObjects(writes, replicate, deadline);
  for (size_t v = 0; v < values.size(); ++v) values[v].failed = !put[v].ok();

  // Every header whose chunks are all in, by upsert (as CommitHeader for a
  // key without a value: a value created meanwhile is replaced, so our
  // chunks never end up unreferenced).
  std::vector<size_t> committed;
  std::vector<size_t> ready;
  std::vector<HeaderWrite> headers;
  for (size_t v = 0; v < values.size(); ++v) {
    if (values[v].failed) continue;
    ready.push_back(v);
    headers.push_back({&values[v].key, values[v].header.Encode()});
  }
  std::vector<int64_t> written = WriteHeaders(headers, /*upsert=*/true, replicate, deadline);
  for (size_t j = 0; j < ready.size(); ++j) {
    if (written[j] == 0) {
      committed.push_back(ready[j]);
    } else {
      values[ready[j]].failed = true;
    }
  }
  for (const NewValue& v : values) {
    if (!v.failed) continue;
    Deadline cleanup = client_.NewDeadline();
    client_.RemoveGeneration(v.key, v.header, &cleanup);
  }

  // The settle check for all of them at once; SettleHeader settles any it
  // finds amiss (a later writer's header, a torn one, a chunk swept by a
  // remove) as ever.
  std::vector<ChunkWrite> check;
  for (size_t v : committed) check.push_back({&values[v].key, &values[v].header, {}});
  std::vector<Settled> settled = CheckSettled(check, deadline);
  for (size_t j = 0; j < committed.size(); ++j) {
    const NewValue& value = values[committed[j]];
    if (settled[j] != Settled::kYes) {
      SettleHeader(value.key, value.header, requests[value.request].parts, replicate, deadline);
    }
    done[value.request] = Status::Ok();
  }
}

Status MooncakeWriter::PutObject(const std::string& key, std::span<const ConstBytes> parts,
                                uint64_t offset, uint64_t size, const ReplicateConfig& replicate,
                                Deadline& deadline) {
  // A large put goes straight from the caller's memory.
  const bool direct = WritesDirectly(size);
  std::optional<TransferArena::Lease> slot;
  std::vector<void*> buffers;
  std::vector<size_t> sizes;
  if (direct) {
    AppendPieces(parts, offset, size, buffers, sizes);
  } else {
    slot.emplace(client_.arena().Acquire(1));
    Gather(parts, offset, {(*slot)[0], size});
  }
  int64_t rc = RetryTransient(deadline, [&]() -> int64_t {
    auto lock = LockKeyForWrite(key);
    if (direct) {
      const char* k = key.c_str();
      const size_t pieces = buffers.size();
      int result = -1;
      int r = client_.api()->batch_put_from_multi(client_.handle(), &k, 1, buffers.data(), sizes.data(), &pieces, &replicate,
                                         &result);
      return r != 0 ? r : result;
    }
    return client_.api()->put_from(client_.handle(), key.c_str(), (*slot)[0], size, &replicate);
  });
  if (direct && rc == kErrNotSupported) {
    direct_writes_.store(false);
    return PutObject(key, parts, offset, size, replicate, deadline);
  }
  if (rc != 0) return client_.Fail(rc, "put_from '" + key + "' (" + std::to_string(size) + " bytes)");
  return Status::Ok();
}

std::vector<Status> MooncakeWriter::PutChunkObjects(std::span<const ChunkWrite> values,
                                                   const ReplicateConfig& replicate, Deadline& deadline) {
  // The chunks of all the values in order, in calls that several values
  // share: straight from the callers' memory (direct writes) in calls of
  // about kDirectCallBytes, or gathered into the staging slots, a slots'
  // worth per call. A value whose chunk failed has its other chunks skipped.
  // A retried call puts every chunk again (those already in are kept). No
  // key locks: chunk keys carry their write's own generation.
  std::vector<Status> out(values.size());
  std::vector<std::pair<size_t, uint64_t>> chunks;  // (value, chunk)
  for (size_t v = 0; v < values.size(); ++v) {
    for (uint64_t c = 0; c < values[v].header->num_chunks; ++c) chunks.emplace_back(v, c);
  }
  for (size_t next = 0; next < chunks.size();) {
    const size_t first = next;
    bool direct = false;
    uint64_t bytes = 0;
    std::vector<std::pair<size_t, uint64_t>> batch;
    std::vector<std::string> keys;
    std::vector<void*> buffers;
    std::vector<size_t> lengths, pieces;  // direct: lengths of the pieces; staged: of the chunks
    for (; next < chunks.size(); ++next) {
      const auto [v, c] = chunks[next];
      if (!out[v].ok()) continue;
      const ChunkHeader& h = *values[v].header;
      const size_t length = static_cast<size_t>(h.ChunkLength(c));
      const bool this_direct = WritesDirectly(h.total_size);
      if (batch.empty()) {
        direct = this_direct;
      } else if (this_direct != direct ||
                 (direct ? bytes + length > kDirectCallBytes : batch.size() == client_.arena().slots())) {
        break;
      }
      batch.emplace_back(v, c);
      keys.push_back(h.ChunkKey(*values[v].key, c));
      if (direct) {
        pieces.push_back(AppendPieces(values[v].parts, c * h.chunk_size, length, buffers, lengths));
      } else {
        lengths.push_back(length);
      }
      bytes += length;
    }
    if (batch.empty()) break;
    std::optional<TransferArena::Lease> slots;
    if (!direct) {
      slots.emplace(client_.arena().Acquire(batch.size()));
      for (size_t j = 0; j < batch.size(); ++j) {
        const auto [v, c] = batch[j];
        buffers.push_back((*slots)[j]);
        Gather(values[v].parts, c * values[v].header->chunk_size, {(*slots)[j], lengths[j]});
      }
    }
    std::vector<const char*> c_keys = CStrings(keys);
    std::vector<int> results(batch.size(), -1);
    int64_t rc = RetryTransient(deadline, [&]() -> int64_t {
      int r = direct ? client_.api()->batch_put_from_multi(client_.handle(), c_keys.data(), batch.size(), buffers.data(),
                                                  lengths.data(), pieces.data(), &replicate, results.data())
                     : client_.api()->batch_put_from(client_.handle(), c_keys.data(), buffers.data(), lengths.data(), batch.size(),
                                            &replicate, results.data());
      return r != 0 ? r : FirstRetryable(results);
    });
    if (direct && rc == kErrNotSupported) {  // nothing was written: these chunks again, staged
      direct_writes_.store(false);
      next = first;
      continue;
    }
    for (size_t j = 0; j < batch.size(); ++j) {
      const auto [v, c] = batch[j];
      const int64_t r = rc != 0 ? rc : results[j];
      if (r != 0 && out[v].ok()) {
        out[v] = client_.Fail(r, "put_from chunk " + std::to_string(c) + " of '" + *values[v].key + "'");
      }
    }
  }
  return out;
}

Status MooncakeWriter::PutChunks(const std::string& key, const ChunkHeader& h,
                                std::span<const ConstBytes> parts, const ReplicateConfig& replicate,
                                Deadline& deadline) {
  const ChunkWrite write{&key, &h, parts};
  return PutChunkObjects({&write, 1}, replicate, deadline)[0];
}

}  // namespace mooncake_connector::mooncake
