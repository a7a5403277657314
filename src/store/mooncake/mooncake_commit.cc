// The 64-byte objects of a write (mooncake_write.cc puts the bytes): what
// the keys hold before it; the header objects that make a value's chunks its
// value, written by upsert (in place over an old header; over a raw object
// of another size after proving and freeing the 64 bytes); and the check
// after the commit that settles the races a commit can lose (a torn header,
// a later writer, a remove that swept the chunks). mooncake_write.cc runs
// the steps of a write; docs/mooncake_layout.md describes the protocol.
#include <algorithm>
#include <string>
#include <vector>

#include "store/mooncake/key_write_locks_internal.h"
#include "store/mooncake/mooncake_writer_internal.h"

namespace mooncake_connector::mooncake {

// Header objects of keys [at, at + n) of a call, in one staging slot: 64
// bytes apiece.
struct MooncakeWriter::HeaderSlot {
  TransferArena::Lease slot;
  std::vector<const char*> keys;
  std::vector<void*> buffers;
  std::vector<size_t> lengths;
};

template <typename KeyOf, typename Fn>
void MooncakeWriter::ForEachHeaderSlot(size_t count, KeyOf&& key_of, Fn&& fn) {
  const size_t per_slot = std::min(static_cast<size_t>(client_.slot_size() / kChunkHeaderSize), kMaxObjectsPerCall);
  for (size_t at = 0; at < count; at += per_slot) {
    const size_t n = std::min(per_slot, count - at);
    HeaderSlot h{client_.arena().Acquire(1), {}, {}, std::vector<size_t>(n, kChunkHeaderSize)};
    for (size_t j = 0; j < n; ++j) {
      h.keys.push_back(key_of(at + j).c_str());
      h.buffers.push_back(h.slot[0] + j * kChunkHeaderSize);
    }
    fn(at, n, h);
  }
}

void MooncakeWriter::LearnExisting(std::span<Value* const> values, Deadline& deadline) {
  // Several keys: one existence check, then the first 64 bytes of each key
  // that has a value, a header slot's run of keys per call: a header or a raw
  // object of under 64 bytes is then known; a larger raw object (refused for
  // the small buffer) or any error goes to Inspect, as does a single key.
  std::vector<Value*> inspect;
  for (Value* v : values) v->old = Existing{};
  if (values.size() < 2 || deadline.Refusal() != 0) {
    inspect.assign(values.begin(), values.end());
  } else {
    std::vector<const char*> keys;
    for (const Value* v : values) keys.push_back(v->key.c_str());
    std::vector<int> exist(values.size(), 1);
    if (client_.api()->batch_is_exist(client_.handle(), keys.data(), keys.size(), exist.data()) != 0) {
      std::fill(exist.begin(), exist.end(), 1);
    }
    std::vector<Value*> present;
    for (size_t j = 0; j < values.size(); ++j) {
      if (exist[j] != 0) present.push_back(values[j]);  // (an error for the key: looked at below)
    }
    auto key_of = [&](size_t i) -> const std::string& { return present[i]->key; };
    ForEachHeaderSlot(present.size(), key_of, [&](size_t at, size_t n, HeaderSlot& hs) {
      std::vector<int64_t> results(n, -1);
      int call = client_.api()->batch_get_into(client_.handle(), hs.keys.data(), hs.buffers.data(),
                                               hs.lengths.data(), n, results.data());
      for (size_t j = 0; j < n; ++j) {
        Value& v = *present[at + j];
        const int64_t r = call != 0 ? call : results[j];
        if (r == kErrObjectNotFound) continue;  // removed meanwhile: none
        if (r < 0 || r > static_cast<int64_t>(kChunkHeaderSize)) {
          inspect.push_back(&v);
          continue;
        }
        ConstBytes object(static_cast<const std::byte*>(hs.buffers[j]), static_cast<size_t>(r));
        v.old = Existing{true, object.size(), std::nullopt};
        // Any other 64-byte object (a raw foreign value, a torn or corrupt
        // header) is replaced like a value, as Inspect has it.
        Result<ChunkHeader> h = ParseChunkHeader(object);
        if (h.ok()) v.old.header = *h;
      }
    });
  }
  for (Value* v : inspect) {
    Result<Existing> old = client_.Inspect(v->key, deadline);
    if (old.ok()) {
      v->old = *old;
    } else {
      v->status = old.status();
    }
  }
}

std::vector<int64_t> MooncakeWriter::WriteHeaders(std::span<const HeaderWrite> headers, bool upsert,
                                                 const ReplicateConfig& replicate, Deadline& deadline) {
  // From slot memory, a header slot's run of 64-byte objects per call: the
  // batch entry where the provider has it and there are several, the
  // single-key entry otherwise. A retried call writes every header of it
  // again (same bytes).
  std::vector<int64_t> out(headers.size(), 0);
  auto batch = upsert ? client_.api()->batch_upsert_from : client_.api()->batch_put_from;
  auto one = upsert ? client_.api()->upsert_from : client_.api()->put_from;
  auto key_of = [&](size_t i) -> const std::string& { return *headers[i].key; };
  ForEachHeaderSlot(headers.size(), key_of, [&](size_t at, size_t n, HeaderSlot& hs) {
    for (size_t j = 0; j < n; ++j) {
      std::copy(headers[at + j].bytes.begin(), headers[at + j].bytes.end(), static_cast<std::byte*>(hs.buffers[j]));
    }
    std::vector<int> results(n, -1);
    int call = 0;
    auto locks = LockKeysForWrite(hs.keys);
    RetryTransient(deadline, [&]() -> int64_t {
      if (batch != nullptr && n > 1) {
        call = batch(client_.handle(), hs.keys.data(), hs.buffers.data(), hs.lengths.data(), n, &replicate, results.data());
        if (call != 0) return call;
      } else {
        for (size_t j = 0; j < n; ++j) {
          results[j] = one(client_.handle(), hs.keys[j], hs.buffers[j], kChunkHeaderSize, &replicate);
        }
      }
      // An upsert whose key a remove() took away mid-way: do it again (it
      // inserts then).
      if (upsert) std::replace(results.begin(), results.end(), kErrObjectNotFound, kErrReplicaNotReady);
      return FirstRetryable(results);
    });
    for (size_t j = 0; j < n; ++j) out[at + j] = call != 0 ? call : results[j];
  });
  return out;
}

Status MooncakeWriter::WriteHeader(const std::string& key, const ChunkHeader& h, bool upsert,
                                  const ReplicateConfig& replicate, Deadline& deadline) {
  const HeaderWrite write{&key, h.Encode()};
  const int64_t rc = WriteHeaders({&write, 1}, upsert, replicate, deadline)[0];
  return rc == 0 ? Status::Ok() : HeaderError(key, upsert, rc);
}

Status MooncakeWriter::HeaderError(const std::string& key, bool upsert, int64_t rc) {
  return client_.Fail(rc, std::string(upsert ? "upsert_from" : "put_from") + " '" + key + "' (" +
                      std::to_string(kChunkHeaderSize) + " bytes)");
}

Status MooncakeWriter::CommitHeader(const std::string& key, const ChunkHeader& h, const Existing& old,
                                   const ReplicateConfig& replicate, Deadline& deadline) {
  if (client_.api()->upsert_from == nullptr) {
    // Fallback without upsert (a native library that lacks it): remove, then
    // put. Readers can find the key missing in between.
    int64_t rc = RetryTransient(deadline, [&] { return client_.api()->remove(client_.handle(), key.c_str(), 0); });
    if (rc != 0 && rc != kErrObjectNotFound) return client_.Fail(rc, "remove '" + key + "' to overwrite it");
    return WriteHeader(key, h, false, replicate, deadline);
  }
  if (old.object_size == kChunkHeaderSize) {
    // Same size: Mooncake rewrites the object in place, allocating nothing.
    return WriteHeader(key, h, true, replicate, deadline);
  }
  // A raw value of another size: Mooncake drops it before allocating the
  // header's 64 bytes. Prove those bytes exist and free them just before.
  std::string reservation = h.ReservationKey(key);
  MC_RETURN_IF_ERROR(WriteHeader(reservation, h, false, replicate, deadline)
                         .WithContext("reserving space to overwrite '" + key + "'"));
  MC_RETURN_IF_ERROR(client_.RemoveKeys({reservation}, deadline, "'" + key + "'"));
  Status s = WriteHeader(key, h, true, replicate, deadline);
  // The freed bytes went to another writer first: the old value is gone
  // already, so keep trying to get the new one in until the deadline.
  while (s.code() == StatusCode::kResourceExhausted && deadline.Backoff()) {
    s = WriteHeader(key, h, true, replicate, deadline);
  }
  if (s.code() == StatusCode::kResourceExhausted) {
    return DataLoss("overwriting '" + key + "': the store ran out of space between reserving and "
                    "committing, and Mooncake dropped the previous value (" + std::string(s.message()) + ")");
  }
  return s;
}

std::vector<MooncakeWriter::Settled> MooncakeWriter::CheckSettled(std::span<const ChunkWrite> values,
                                                                 Deadline& deadline) {
  // Each header read back (a header slot's run per call: a batch call for
  // several, get_into for one), then the chunks of those that are ours, in
  // one existence check.
  std::vector<Settled> out(values.size(), Settled::kUnknown);
  auto key_of = [&](size_t i) -> const std::string& { return *values[i].key; };
  ForEachHeaderSlot(values.size(), key_of, [&](size_t at, size_t n, HeaderSlot& hs) {
    std::vector<const char*>& c_keys = hs.keys;
    std::vector<void*>& buffers = hs.buffers;
    std::vector<int64_t> results(n, -1);
    int call = 0;
    RetryTransient(deadline, [&]() -> int64_t {
      if (n == 1) return results[0] = client_.api()->get_into(client_.handle(), c_keys[0], buffers[0], kChunkHeaderSize);
      call = client_.api()->batch_get_into(client_.handle(), c_keys.data(), buffers.data(), hs.lengths.data(), n, results.data());
      return call != 0 ? call : FirstRetryable(results);
    });
    if (call != 0) return;
    std::vector<size_t> ours;  // indices into values
    std::vector<std::string> chunk_keys;
    for (size_t j = 0; j < n; ++j) {
      const ChunkWrite& v = values[at + j];
      if (results[j] < 0) continue;  // removed, or unreachable: nothing to settle
      Result<ChunkHeader> now =
          ParseChunkHeader({static_cast<const std::byte*>(buffers[j]), static_cast<size_t>(results[j])});
      if (!now.ok()) {
        if (now.status().code() == StatusCode::kDataLoss) out[at + j] = Settled::kTorn;
        continue;
      }
      if (now->generation != v.header->generation) {
        out[at + j] = Settled::kSuperseded;
        continue;
      }
      // Too many chunks to check one by one: taken as there.
      if (v.header->num_chunks == 0 || v.header->num_chunks > kMaxExplicitChunkRemoves) {
        out[at + j] = Settled::kYes;
        continue;
      }
      ours.push_back(at + j);
      std::vector<std::string> k = client_.ChunkKeys(*v.key, *v.header);
      chunk_keys.insert(chunk_keys.end(), k.begin(), k.end());
    }
    if (ours.empty()) return;
    std::vector<const char*> c_chunks = CStrings(chunk_keys);
    std::vector<int> exist(c_chunks.size(), 0);
    if (client_.api()->batch_is_exist(client_.handle(), c_chunks.data(), c_chunks.size(), exist.data()) != 0) return;
    size_t k = 0;
    for (size_t i : ours) {
      const size_t count = static_cast<size_t>(values[i].header->num_chunks);
      const bool all = std::all_of(exist.begin() + k, exist.begin() + k + count, [](int e) { return e == 1; });
      out[i] = all ? Settled::kYes : Settled::kChunksMissing;
      k += count;
    }
  });
  return out;
}

void MooncakeWriter::SettleHeader(const std::string& key, const ChunkHeader& h,
                                 std::span<const ConstBytes> parts, const ReplicateConfig& replicate,
                                 Deadline& deadline) {
  // After the commit, three races are settled here:
  //  - two writers rewriting one header in place at once can leave it torn
  //    (its own checksum fails): write ours again;
  //  - a header of another generation means a later write won: our chunks
  //    are superseded;
  //  - a remove() racing us can have swept our chunks before our header
  //    landed: put them again (the remove then linearizes before this write).
  const ChunkWrite ours{&key, &h, parts};
  for (int round = 0; round < 3; ++round) {
    switch (CheckSettled({&ours, 1}, deadline)[0]) {
      case Settled::kYes:
      case Settled::kUnknown:  // removed, or unreachable
        return;
      case Settled::kSuperseded:
        client_.RemoveGeneration(key, h, nullptr);
        return;
      case Settled::kChunksMissing:
        if (!PutChunks(key, h, parts, replicate, deadline).ok()) return;
        break;
      case Settled::kTorn:
        if (!WriteHeader(key, h, client_.api()->upsert_from != nullptr, replicate, deadline).ok()) return;
        break;
    }
  }
}

}  // namespace mooncake_connector::mooncake
