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
#include <algorithm>
#include <mutex>
#include <optional>
#include <random>

#include "core/hash_internal.h"
#include "core/parallel_internal.h"
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

// From this many bytes to hash, a write hashes on a helper thread while
// its chunks go in.
constexpr uint64_t kHashAsideBytes = 1 << 20;

uint64_t HashOf(std::span<const ConstBytes> parts) {
  Xxh3Stream hash;
  for (ConstBytes p : parts) hash.Update(p);
  return hash.Digest();
}

}  // namespace

MooncakeWriter::MooncakeWriter(MooncakeClient& client)
    : client_(client), direct_writes_(client.can_write_directly()) {}

ChunkHeader MooncakeWriter::NewHeader(uint64_t size) const {
  return MakeChunkHeader(size, client_.slot_size(), NewGeneration(), /*checksum=*/0);
}

std::vector<Status> MooncakeWriter::BatchPut(std::span<const PutRequest> requests,
                                            const WriteOptions& options) {
  client_.deferred().Flush();
  ReplicateConfig replicate = client_.replicate();
  replicate.replica_num = std::max<size_t>(replicate.replica_num, options.replica_num);
  replicate.with_soft_pin |= options.soft_pin;
  replicate.with_hard_pin |= options.hard_pin;
  // Keys given once are written together; a key given several times is
  // written alone, in order, after them, so that its last value wins. A
  // value that fails among others is written once more alone (what went
  // wrong may have been a passing refusal that its own retries outlast).
  std::vector<Value> values(requests.size());
  std::vector<Value*> together, alone;
  const std::vector<bool> repeated = RepeatedKeys(requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    Value& v = values[i];
    v.request = &requests[i];
    v.key = std::string(requests[i].key);
    for (ConstBytes p : requests[i].parts) v.size += p.size();
    if (Status s = ValidateKey(requests[i].key); !s.ok()) {
      v.status = s;
      continue;
    }
    (repeated[i] ? alone : together).push_back(&v);
  }
  WriteValues(together, replicate);
  if (together.size() > 1) {
    for (Value* v : together) {
      if (!v->status->ok()) alone.push_back(v);
    }
  }
  for (Value* v : alone) {
    v->status.reset();
    WriteValues({&v, 1}, replicate);
  }
  std::vector<Status> out;
  out.reserve(values.size());
  for (Value& v : values) out.push_back(std::move(*v.status));
  return out;
}

void MooncakeWriter::WriteValues(std::span<Value* const> values, const ReplicateConfig& replicate) {
  if (values.empty()) return;
  Deadline deadline = client_.NewDeadline();
  auto pending = [](std::span<Value* const> from) {
    std::vector<Value*> out;
    for (Value* v : from) {
      if (!v->status) out.push_back(v);
    }
    return out;
  };
  LearnExisting(values, deadline);

  // A value goes in as one raw object only over a key with no value, and
  // only if it cannot be mistaken for a header (NeedsChunking); every other
  // write puts chunks under a fresh generation, then commits its header.
  std::vector<Value*> raw, chunked;
  for (Value* v : pending(values)) {
    std::byte first[8] = {};
    const size_t first_len = static_cast<size_t>(std::min<uint64_t>(v->size, sizeof first));
    Gather(v->request->parts, 0, {first, first_len});
    const bool chunks = v->old.exists || NeedsChunking(v->size, {first, first_len}, client_.slot_size());
    (chunks ? chunked : raw).push_back(v);
  }
  PutRawObjects(raw, replicate, deadline);
  if (chunked.empty()) return;

  std::vector<ChunkWrite> writes;
  for (Value* v : chunked) {
    v->header = NewHeader(v->size);
    writes.push_back({&v->key, &v->header, v->request->parts});
  }
  // The headers' value checksums while the chunks go in (a header is
  // written only after its chunks): the caller's, asked for once the chunks
  // are in (it may be hashing meanwhile), or computed on a helper thread.
  // Small values are hashed at once (a thread would cost more).
  std::vector<uint64_t> checksums(chunked.size());
  uint64_t to_hash = 0;
  for (const Value* v : chunked) to_hash += v->request->value_xxh3 || v->request->value_xxh3_later ? 0 : v->size;
  auto hash_own = [&] {
    for (size_t j = 0; j < chunked.size(); ++j) {
      const PutRequest& r = *chunked[j]->request;
      if (!r.value_xxh3 && !r.value_xxh3_later) checksums[j] = HashOf(r.parts);
    }
  };
  Background hashing;
  if (to_hash >= kHashAsideBytes) {
    hashing.Run(hash_own);
  } else {
    hash_own();
  }
  std::vector<Status> put = PutChunkObjects(writes, replicate, deadline);
  hashing.Wait();
  for (size_t j = 0; j < chunked.size(); ++j) {
    const PutRequest& r = *chunked[j]->request;
    if (!put[j].ok()) {  // not committed: its header needs no checksum
      chunked[j]->status = std::move(put[j]);
      continue;
    }
    // Ours is of the whole value; the caller's as value_xxh3_head says (a
    // checksum in pieces makes a version-3 header).
    const bool given = r.value_xxh3 || r.value_xxh3_later;
    if (given) checksums[j] = r.value_xxh3 ? *r.value_xxh3 : r.value_xxh3_later();
    chunked[j]->header.SetChecksum(checksums[j], given ? r.value_xxh3_head : PutRequest::kWholeValue);
  }

  // The commits, together where one call does: headers over keys with no
  // value (by upsert where the provider has it: a value created meanwhile is
  // replaced, so our chunks never end up unreferenced), and headers over
  // 64-byte objects (an in-place upsert, which allocates nothing); over raw
  // values of another size, or without upsert, one by one (CommitHeader).
  const bool can_upsert = client_.api()->upsert_from != nullptr;
  auto in_place = [&](const Value* v) {
    return can_upsert && v->old.exists && v->old.object_size == kChunkHeaderSize;
  };
  for (const bool over_header : {false, true}) {
    if (over_header && !can_upsert) break;
    std::vector<Value*> together;
    std::vector<HeaderWrite> headers;
    for (Value* v : pending(chunked)) {
      if (over_header ? !in_place(v) : v->old.exists) continue;
      together.push_back(v);
      headers.push_back({&v->key, v->header.Encode()});
    }
    const bool upsert = over_header || can_upsert;
    std::vector<int64_t> written = WriteHeaders(headers, upsert, replicate, deadline);
    for (size_t j = 0; j < together.size(); ++j) {
      if (written[j] != 0) together[j]->status = HeaderError(together[j]->key, upsert, written[j]);
    }
  }
  for (Value* v : pending(chunked)) {
    if (!v->old.exists || in_place(v)) continue;
    if (Status s = CommitHeader(v->key, v->header, v->old, replicate, deadline); !s.ok()) v->status = std::move(s);
  }
  for (Value* v : chunked) {
    if (!v->status) continue;
    Deadline cleanup = client_.NewDeadline();
    // A failed in-place upsert makes Mooncake erase the object: put the old
    // header back (its chunks are untouched). A plain put, so that a value
    // another writer committed meanwhile is kept rather than replaced.
    if (v->old.header) (void)WriteHeader(v->key, *v->old.header, /*upsert=*/false, replicate, cleanup);
    client_.RemoveGeneration(v->key, v->header, &cleanup);
  }

  // The settle check of all the commits at once; SettleHeader settles any it
  // finds amiss (a later writer's header, a torn one, chunks swept by a
  // remove). Then the generations they replaced go.
  std::vector<Value*> committed = pending(chunked);
  std::vector<ChunkWrite> check;
  for (Value* v : committed) check.push_back({&v->key, &v->header, {}});
  std::vector<Settled> settled = CheckSettled(check, deadline);
  std::vector<std::pair<const std::string*, const ChunkHeader*>> replaced;
  for (size_t j = 0; j < committed.size(); ++j) {
    Value& v = *committed[j];
    if (settled[j] != Settled::kYes) SettleHeader(v.key, v.header, v.request->parts, replicate, deadline);
    if (v.old.header && v.old.header->generation != v.header.generation) replaced.emplace_back(&v.key, &*v.old.header);
    v.status = Status::Ok();
  }
  client_.RemoveGenerations(replaced);
}

void MooncakeWriter::PutRawObjects(std::span<Value* const> values, const ReplicateConfig& replicate,
                                  Deadline& deadline) {
  // Staged values first, then direct ones, so that a direct call the
  // provider turns down (nothing written) is simply done again staged. A put
  // over a key another writer created meanwhile keeps theirs and reports
  // success: that write won. A retried call puts each of its objects again
  // (those already in are kept).
  std::vector<Value*> order(values.begin(), values.end());
  std::stable_partition(order.begin(), order.end(), [&](const Value* v) { return !WritesDirectly(v->size); });
  const uint64_t slot_size = client_.slot_size();
  const uint64_t space = slot_size * client_.arena().slots();
  for (size_t next = 0; next < order.size();) {
    const size_t first = next;
    const bool direct = WritesDirectly(order[next]->size);
    std::vector<Value*> batch;
    std::vector<uint64_t> offsets;  // staged: where in the slots
    uint64_t used = 0;
    for (; next < order.size() && WritesDirectly(order[next]->size) == direct; ++next) {
      if (batch.size() == kMaxObjectsPerCall) break;
      const uint64_t size = order[next]->size;
      if (direct) {
        if (!batch.empty() && used + size > kDirectWriteCallBytes) break;
        used += size;
      } else {  // packed, 64-byte aligned, none across a slot's end
        uint64_t at = used;
        if (size > 0 && at / slot_size != (at + size - 1) / slot_size) at = (at / slot_size + 1) * slot_size;
        if (at + size > space) break;
        offsets.push_back(at);
        used = (at + size + 63) / 64 * 64;
      }
      batch.push_back(order[next]);
    }
    std::optional<TransferArena::Lease> slots;
    std::vector<void*> buffers;
    std::vector<size_t> lengths, pieces;  // direct: lengths of the pieces; staged: of the values
    std::vector<const char*> keys;
    for (size_t j = 0; j < batch.size(); ++j) {
      const Value& v = *batch[j];
      keys.push_back(v.key.c_str());
      if (direct) {
        pieces.push_back(AppendPieces(v.request->parts, 0, v.size, buffers, lengths));
        continue;
      }
      if (!slots) slots.emplace(client_.arena().Acquire(std::max<size_t>((used + slot_size - 1) / slot_size, 1)));
      std::byte* at = (*slots)[offsets[j] / slot_size] + offsets[j] % slot_size;
      Gather(v.request->parts, 0, {at, v.size});
      buffers.push_back(at);
      lengths.push_back(v.size);
    }
    const size_t n = batch.size();
    std::vector<int> results(n, -1);
    int64_t call = 0;
    RetryTransient(deadline, [&]() -> int64_t {
      auto locks = LockKeysForWrite(keys);
      if (direct) {
        call = client_.api()->batch_put_from_multi(client_.handle(), keys.data(), n, buffers.data(), lengths.data(),
                                                   pieces.data(), &replicate, results.data());
      } else if (n == 1) {
        results[0] = client_.api()->put_from(client_.handle(), keys[0], buffers[0], lengths[0], &replicate);
      } else {
        call = client_.api()->batch_put_from(client_.handle(), keys.data(), buffers.data(), lengths.data(), n,
                                             &replicate, results.data());
      }
      return call != 0 ? call : FirstRetryable(results);
    });
    if (direct && call == kErrNotSupported) {
      direct_writes_.store(false);
      next = first;
      continue;
    }
    for (size_t j = 0; j < n; ++j) {
      const int64_t rc = call != 0 ? call : results[j];
      batch[j]->status = rc == 0 ? Status::Ok()
                                 : client_.Fail(rc, "put_from '" + batch[j]->key + "' (" +
                                                        std::to_string(batch[j]->size) + " bytes)");
    }
  }
}

std::vector<Status> MooncakeWriter::PutChunkObjects(std::span<const ChunkWrite> values,
                                                   const ReplicateConfig& replicate, Deadline& deadline) {
  // The chunks of all the values in order, in calls that several values
  // share: straight from the callers' memory (direct writes) in calls of
  // about kDirectWriteCallBytes, or gathered into the staging slots, a slots'
  // worth per call; at most kMaxObjectsPerCall chunks a call. A value whose
  // chunk failed has its other chunks skipped. A retried call puts every
  // chunk again (those already in are kept). No key locks: chunk keys carry
  // their write's own generation.
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
      } else if (this_direct != direct || batch.size() == kMaxObjectsPerCall ||
                 (direct ? bytes + length > kDirectWriteCallBytes : batch.size() == client_.arena().slots())) {
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
