// The one executor of a read's object transfers: the objects of values whose
// layout is known (a raw value's object, a chunked value's chunks), moved in
// batched calls straight into place or through the staging slots, each
// object's result judged and each value's bytes hashed and checked the same
// way whichever the transfer.
#include <algorithm>
#include <cstring>

#include "core/parallel_internal.h"
#include "store/deliver_internal.h"
#include "store/mooncake/mooncake_reader_internal.h"

namespace mooncake_connector::mooncake {

Status ObjectResult(const MooncakeClient& client, const ValueRead& v, const ObjectRead& o, int64_t result) {
  if (result >= 0 && static_cast<uint64_t>(result) == o.size) return Status::Ok();
  const std::string key(v.request->key);
  const std::string which =
      v.header ? "chunk " + std::to_string(o.offset / v.header->chunk_size) + " of '" + key + "'" : "'" + key + "'";
  const std::string expected = v.header ? " bytes its header says" : " bytes expected";
  if (result == kErrObjectNotFound) return Aborted(which + " vanished");
  if (result == kErrInvalidParams || result == kErrBufferOverflow) {
    // Mooncake refuses a buffer smaller than the object: stored data that
    // contradicts its header (or another value than the one expected).
    return DataLoss(which + " is larger than the " + std::to_string(o.size) + expected);
  }
  if (result < 0) return client.Fail(result, "get_into " + which);
  return DataLoss(which + " holds " + std::to_string(result) + " bytes, not the " + std::to_string(o.size) +
                  expected);
}

void TakeObject(ValueRead& v, const ObjectRead& o, const std::byte* from) {
  const GetIntoRequest& r = *v.request;
  if (r.data_xxh3 != nullptr && !v.data_hash) v.data_hash.emplace(r.data_xxh3_piece);
  Xxh3Stream* data = r.data_xxh3 != nullptr ? &*v.data_hash : nullptr;
  if (v.check_whole && !v.value_hash) v.value_hash.emplace(v.header->checksum_piece(), v.header->checksum_head);
  Xxh3Stream* value = v.check_whole ? &*v.value_hash : nullptr;
  if (from != nullptr) {
    DeliverAt(r, o.offset, ConstBytes(from, o.size), data, value);
  } else {
    HashInPlaceAt(r, o.offset, o.size, data, value);
  }
}

void FinishValue(ValueRead& v) {
  // No object taken: an empty value.
  if (v.status.ok() && v.check_whole && (v.value_hash ? v.value_hash->Digest() : Xxh3({})) != v.header->checksum) {
    v.status = DataLoss("checksum mismatch in the " + std::to_string(v.header->total_size) + "-byte value of '" +
                        std::string(v.request->key) + "' (corrupted or mixed chunks)");
  }
  if (v.status.ok() && v.request->data_xxh3 != nullptr) *v.request->data_xxh3 = v.data_hash ? v.data_hash->Digest() : Xxh3({});
  v.done = true;
}

std::vector<ObjectRead> ChunkObjects(size_t value, std::string_view key, const ChunkHeader& h, uint64_t from,
                                     uint64_t to, bool finishes) {
  std::vector<ObjectRead> objects;
  const std::string k(key);
  for (uint64_t c = from; c < to; ++c) {
    objects.push_back({value, h.ChunkKey(k, c), c * h.chunk_size, h.ChunkLength(c), finishes && c + 1 == to});
  }
  return objects;
}

int64_t MooncakeReader::ReadObjects(std::vector<std::unique_ptr<ValueRead>>& values,
                                    std::span<const ObjectRead> objects, const ObjectTransfer& how) {
  const bool staged = how.kind == ObjectTransfer::kStaged;
  // A dummy client transfers only into its shared memory: heads read in
  // place (small, in the caller's memory) go to a shared block and are
  // copied to their place after the call.
  const bool shared_heads = how.kind == ObjectTransfer::kInPlace && client_.shared() != nullptr;
  // Calls Mooncake as `how` says: until the deadline, or once.
  auto attempt = [&](auto&& call) -> int64_t {
    auto locked = [&]() -> int64_t {
      std::unique_lock<std::mutex> my_turn;
      if (how.turn != nullptr) my_turn = std::unique_lock(*how.turn);
      return call();
    };
    if (how.deadline != nullptr) return RetryTransient(*how.deadline, locked);
    if (int64_t refused = client_.health().Refusal()) return refused;
    auto start = std::chrono::steady_clock::now();
    int64_t rc = locked();
    client_.health().Note(rc, std::chrono::steady_clock::now() - start);
    return rc;
  };
  Background hashing;  // of in-place calls; declared last, waited for first
  // The values of objects [from, end) fail with `code` (the others are done,
  // or belong to no one here: another thread may be finishing them).
  auto fail_all = [&](size_t from, int64_t code, const std::string& what) {
    hashing.Wait();
    Status failed = client_.Fail(code, what);
    for (size_t j = from; j < objects.size(); ++j) {
      ValueRead& v = *values[objects[j].value];
      if (v.status.ok()) v.status = failed;
    }
    return code;
  };
  size_t next = 0;
  for (;;) {
    std::vector<size_t> call;  // the objects of this call
    uint64_t bytes = 0;
    for (; next < objects.size(); ++next) {
      const ObjectRead& o = objects[next];
      if (!values[o.value]->status.ok()) continue;
      if (!call.empty() && (call.size() == std::min(how.max_objects, kMaxObjectsPerCall) || bytes + o.size > how.max_bytes)) {
        break;
      }
      call.push_back(next);
      bytes += o.size;
    }
    if (call.empty()) break;
    // What this call reads, for an error message.
    auto what = [&]() -> std::string {
      const ValueRead& first = *values[objects[call.front()].value];
      if (!first.header || objects[call.back()].value != objects[call.front()].value) {
        return std::to_string(call.size()) + " objects";
      }
      return "chunks " + std::to_string(objects[call.front()].offset / first.header->chunk_size) + "-" +
             std::to_string(objects[call.back()].offset / first.header->chunk_size) + " of '" +
             std::string(first.request->key) + "'";
    };
    std::vector<const char*> keys;
    std::vector<void*> buffers;
    std::vector<size_t> sizes, pieces;
    std::optional<TransferArena::Lease> slots;
    Buffer heads;
    std::vector<std::pair<std::byte*, MutableBytes>> head_copies;  // from, to
    if (staged) slots.emplace(client_.arena().Acquire(call.size()));
    if (shared_heads) {
      uint64_t head_bytes = 0;
      for (size_t j : call) {
        ForEachPiece(*values[objects[j].value]->request, objects[j].offset, objects[j].size,
                     [&](MutableBytes piece, bool in_destination) {
                       if (!in_destination) head_bytes += piece.size();
                     });
      }
      if (head_bytes > 0) {
        Result<Buffer> b = client_.shared()->Allocate(static_cast<size_t>(head_bytes));
        if (!b.ok()) return fail_all(call.front(), kErrBufferOverflow, "shared memory for the heads of " + what());
        heads = std::move(*b);
      }
    }
    uint64_t head_at = 0;
    for (size_t k = 0; k < call.size(); ++k) {
      const ObjectRead& o = objects[call[k]];
      keys.push_back(o.key.c_str());
      if (staged) {
        buffers.push_back((*slots)[k]);
        sizes.push_back(o.size);
        continue;
      }
      const size_t before = buffers.size();
      ForEachPiece(*values[o.value]->request, o.offset, o.size, [&](MutableBytes piece, bool in_destination) {
        std::byte* into = piece.data();
        if (!in_destination && shared_heads) {
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
    int call_rc = -1;  // the batch call's own code; stays -1 if it was never made
    const int64_t rc = attempt([&]() -> int64_t {
      call_rc = how.kind == ObjectTransfer::kInPlace
                    ? client_.api()->batch_get_into_multi(client_.handle(), keys.data(), keys.size(), buffers.data(),
                                                          sizes.data(), pieces.data(), results.data())
                    : client_.api()->batch_get_into(client_.handle(), keys.data(), buffers.data(), sizes.data(),
                                                    keys.size(), results.data());
      if (call_rc != 0) return call_rc;
      return how.deadline != nullptr ? FirstRetryable(results) : *std::min_element(results.begin(), results.end());
    });
    for (auto [from, to] : head_copies) std::memcpy(to.data(), from, to.size());
    if (call_rc != 0) return fail_all(call.front(), call_rc == -1 ? rc : call_rc, "batch_get_into of " + what());
    // Failures are noted before the objects are taken, so that a value's
    // last object is taken only if none of it failed.
    for (size_t k = 0; k < call.size(); ++k) {
      const ObjectRead& o = objects[call[k]];
      ValueRead& v = *values[o.value];
      if (v.status.ok()) v.status = ObjectResult(client_, v, o, results[k]);
    }
    if (staged) {
      for (size_t k = 0; k < call.size(); ++k) {
        const ObjectRead& o = objects[call[k]];
        if (!values[o.value]->status.ok()) continue;
        TakeObject(*values[o.value], o, static_cast<const std::byte*>(buffers[k]));
        if (o.last) FinishValue(*values[o.value]);
      }
      continue;  // the slots go back before the next call takes its own
    }
    std::vector<size_t> arrived;
    for (size_t j : call) {
      if (values[objects[j].value]->status.ok()) arrived.push_back(j);
    }
    // Hashed while the next call transfers (Run waits for the previous
    // call's hashing first, so each value's pieces are hashed in order),
    // values side by side where `how` says so.
    std::vector<std::pair<size_t, size_t>> runs;  // [first, end) in `arrived`, one value each
    for (size_t k = 0; k < arrived.size(); ++k) {
      if (k > 0 && objects[arrived[k]].value == objects[arrived[k - 1]].value) {
        runs.back().second = k + 1;
      } else {
        runs.emplace_back(k, k + 1);
      }
    }
    hashing.Run([&, arrived = std::move(arrived), runs = std::move(runs)] {
      ParallelFor(runs.size(), how.hash_threads, [&](size_t r) {
        for (size_t k = runs[r].first; k < runs[r].second; ++k) {
          const ObjectRead& o = objects[arrived[k]];
          TakeObject(*values[o.value], o, nullptr);
          if (o.last) FinishValue(*values[o.value]);
        }
      });
    });
  }
  return 0;
}

}  // namespace mooncake_connector::mooncake
