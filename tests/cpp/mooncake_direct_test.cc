// Direct transfers over the scripted Mooncake: reads straight into the
// caller's memory (and local reads out of this client's own segment), writes
// straight from it, batched first writes; their call counts, and that every
// failure or race ends as the staged path's would.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <sys/mman.h>

#include "core/hash_internal.h"
#include "mooncake_connector/mooncake_store.h"
#include "scripted_fixture.h"
#include "scripted_mooncake.h"

namespace mooncake_connector {
namespace {

using testing::Bytes;
using testing::ExactRead;
using testing::ExpectExactBatchRead;
using testing::Scripted;
using testing::ScriptedMooncake;

TEST_F(Scripted, DirectReadsTakeRawAndChunkedValuesInFewCalls) {
  Open(std::chrono::milliseconds(2000), /*chunk_size=*/2 << 20);
  // Raw objects (up to 2 MiB) and chunked values (a header and 2 MiB chunks).
  std::vector<std::vector<std::byte>> values = PutMixedSizes("d", 0);
  ASSERT_FALSE(HasFailure());
  int gets = sm_.calls["native get_into"], batches = sm_.calls["native batch_get_into"],
      multi = sm_.calls["native batch_get_into_multi"];
  ExpectExactBatchRead(*store_, "d", values, [](size_t i) { return i % 2 == 0; });
  // The two headers in one staged batch; every object in direct calls of at
  // most 64 MiB (one here); nothing read one by one.
  EXPECT_EQ(sm_.calls["native get_into"] - gets, 0);
  EXPECT_EQ(sm_.calls["native batch_get_into"] - batches, 1);
  EXPECT_EQ(sm_.calls["native batch_get_into_multi"] - multi, 1);
}

TEST_F(Scripted, DirectReadsOfDamagedValuesFailAsStagedReadsDo) {
  Open(std::chrono::milliseconds(500));  // 4 KiB chunks: values of 1 MiB+ are chunked
  const size_t n = (1 << 20) + 100;
  ExpectDamageCaughtAsStaged("v", Bytes(n, 3), 257, [&](bool hashed) {
    ExactRead r("v", n, hashed);
    Result<uint64_t> got = store_->BatchGetInto({&r.request, 1})[0];
    return std::make_pair(got, r.hash);
  });
}

TEST_F(Scripted, DirectReadsFallBackWhenTheProviderCannot) {
  // A provider whose scatter call is refused as a whole (an older wheel):
  // reads are staged from then on, with the same results.
  Open(std::chrono::milliseconds(2000), /*chunk_size=*/2 << 20);
  api_.batch_get_into_multi = [](mooncake::Handle, const char**, size_t, void* const*, const size_t*,
                                 const size_t*, int64_t*) { return mooncake::kErrNotSupported; };
  auto v = Bytes((1 << 20) + 1, 4), w = Bytes((3 << 20) + 1, 5);
  ASSERT_TRUE(Put("a", v).ok());
  ASSERT_TRUE(Put("b", w).ok());
  for (int round = 0; round < 2; ++round) {
    ExactRead a("a", v.size(), true), b("b", w.size(), false);
    std::vector<GetIntoRequest> requests = {a.request, b.request};
    std::vector<Result<uint64_t>> got = store_->BatchGetInto(requests);
    ASSERT_TRUE(got[0].ok() && got[1].ok()) << got[0].status() << got[1].status();
    EXPECT_TRUE(a.Holds(v));
    EXPECT_TRUE(b.Holds(w));
    EXPECT_EQ(a.hash, Xxh3(ConstBytes(v).subspan(16)));
  }
}

TEST_F(Scripted, LocalReplicasAreCopiedByTheReaderInOnePass) {
  // Every object is in this client's own segment: the reader copies raw
  // objects and chunks from there itself (checksums on the way); only the
  // headers go through a staged batch, and Mooncake transfers only the raw
  // value nothing checks (d0: not hashed by the caller, no checksum of its
  // own), as a replica changed under the copy would go unnoticed there.
  sm_.local_replica = [](const std::string&, const std::vector<std::byte>& bytes) { return bytes.data(); };
  Open(std::chrono::milliseconds(2000), /*chunk_size=*/2 << 20);
  std::vector<std::vector<std::byte>> values = PutMixedSizes("l", 20);
  ASSERT_FALSE(HasFailure());
  int multi = sm_.calls["native batch_get_into_multi"], local = sm_.calls["native batch_local_replicas"],
      gets = sm_.calls["native get_into"];
  ExpectExactBatchRead(*store_, "l", values, [](size_t i) { return i % 2 == 1; });
  EXPECT_EQ(sm_.calls["native batch_local_replicas"] - local, 1);
  EXPECT_EQ(sm_.calls["native batch_get_into_multi"] - multi, 1);
  EXPECT_EQ(sm_.calls["native get_into"] - gets, 0);
}

TEST_F(Scripted, LocalReplicasThatCannotBeTrustedAreTransferred) {
  // Addresses the master gives for this client's endpoint are checked: one
  // outside this process's readable memory (a stale endpoint) is not read
  // from but transferred by Mooncake. A copy whose bytes are not the stored
  // value's (the replica changed under the reader) fails the value's
  // checksum and is read again; a caller that hashes gets the hash of what
  // was read, to compare with its own record, as from a transfer.
  // Mapped but unreadable for the test's length, so nothing else can be
  // mapped there meanwhile.
  void* gone = mmap(nullptr, 8 << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(gone, MAP_FAILED);
  struct Unmap {
    void* p;
    ~Unmap() { munmap(p, 8 << 20); }
  } unmap{gone};
  std::map<std::string, std::vector<std::byte>> impostors;  // what a chunk's replica holds instead
  sm_.local_replica = [&](const std::string& key, const std::vector<std::byte>& bytes) -> const void* {
    if (key == "unmapped") return gone;
    if (key.rfind("torn", 0) == 0 && key != "torn") {  // the chunks of "torn", not its header
      std::vector<std::byte>& impostor = impostors[key];
      if (impostor.empty()) {
        impostor = bytes;
        impostor[7] ^= std::byte{1};
      }
      return impostor.data();
    }
    return bytes.data();
  };
  Open(std::chrono::milliseconds(2000), /*chunk_size=*/2 << 20);
  auto raw = Bytes(3 << 19, 7), chunked = Bytes((2 << 20) + 100, 8);
  ASSERT_TRUE(Put("unmapped", raw).ok());
  ASSERT_TRUE(Put("torn", chunked).ok());
  ASSERT_EQ(Chunks("torn").size(), 2u);
  for (bool hashed : {false, true}) {
    // "unmapped" is asked about only when hashed (else nothing checks it).
    ExactRead a("unmapped", raw.size(), hashed), b("torn", chunked.size(), hashed);
    int multi = sm_.calls["native batch_get_into_multi"], local = sm_.calls["native batch_local_replicas"];
    std::vector<GetIntoRequest> requests = {a.request, b.request};
    std::vector<Result<uint64_t>> got = store_->BatchGetInto(requests);
    ASSERT_TRUE(got[0].ok() && got[1].ok()) << got[0].status() << got[1].status();
    EXPECT_EQ(sm_.calls["native batch_local_replicas"] - local, 1) << hashed;
    EXPECT_EQ(sm_.calls["native batch_get_into_multi"] - multi, 1) << hashed;  // "unmapped" alone
    EXPECT_TRUE(a.Holds(raw)) << hashed;
    if (!hashed) {
      EXPECT_TRUE(b.Holds(chunked));
      continue;
    }
    EXPECT_EQ(a.hash, Xxh3(ConstBytes(raw).subspan(16)));
    EXPECT_NE(b.hash, Xxh3(ConstBytes(chunked).subspan(16)));
    EXPECT_EQ(b.hash, Xxh3(ConstBytes(b.rest)));
  }
}

TEST_F(Scripted, DirectWritesPutLargeValuesFromTheCallersMemory) {
  Open(std::chrono::milliseconds(2000), /*chunk_size=*/2 << 20);
  // A raw object (1.5 MiB) and a chunked value (5 MiB), each given as a
  // header and a payload: their objects are gathered by Mooncake, not copied
  // into slots; only the chunked value's 64-byte header goes through one.
  for (int round = 0; round < 2; ++round) {  // a first write, then an overwrite
    auto raw = Bytes((3 << 19) + 11, 1 + round), chunked = Bytes((5 << 20) + 13, 3 + round);
    int multi = sm_.calls["native batch_put_from_multi"], puts = sm_.calls["native put_from"];
    for (const auto* v : {&raw, &chunked}) {
      std::array<ConstBytes, 2> parts = {ConstBytes(*v).first(100), ConstBytes(*v).subspan(100)};
      ASSERT_TRUE(store_->Put(v == &raw ? "raw" : "chunked", parts).ok());
    }
    ExpectValue("raw", raw);
    ExpectValue("chunked", chunked);
    // One gathered call each: the raw object, then all three chunks (an
    // overwrite writes the raw value as chunks too). Plain puts only for the
    // 64-byte reservation an overwrite of a raw value takes.
    EXPECT_EQ(sm_.calls["native batch_put_from_multi"] - multi, 2) << round;
    EXPECT_EQ(sm_.calls["native put_from"] - puts, round) << round;
  }
}

TEST_F(Scripted, BatchPutWritesNewLargeValuesInGatheredCalls) {
  Open(std::chrono::milliseconds(2000), /*chunk_size=*/2 << 20);
  auto old = Bytes((5 << 18) + 1, 9);
  ASSERT_TRUE(Put("L3", old).ok());  // an overwrite among first writes
  std::vector<std::vector<std::byte>> values;
  std::vector<std::string> keys;
  for (int i = 0; i < 8; ++i) {  // 1.25 MiB each: raw objects, written directly
    values.push_back(Bytes((5 << 18) + i, 20 + i));
    keys.push_back("L" + std::to_string(i));
  }
  values.push_back(Bytes((5 << 20) + 3, 2));  // chunked
  keys.push_back("chunked");
  std::vector<std::array<ConstBytes, 2>> parts;  // each as a header and a payload
  for (const auto& v : values) parts.push_back({ConstBytes(v).first(64), ConstBytes(v).subspan(64)});
  std::vector<PutRequest> requests;
  for (size_t i = 0; i < keys.size(); ++i) requests.push_back({keys[i], parts[i]});
  const int multi = sm_.calls["native batch_put_from_multi"], singles = sm_.calls["native put_from"];
  std::vector<Status> got = store_->BatchPut(requests, WriteOptions{});
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_TRUE(got[i].ok()) << keys[i] << got[i];
    ExpectValue(keys[i], values[i]);
  }
  // The 7 new raw objects in one gathered call; the chunks of the overwrite
  // and of the chunked value share another. Single puts only for the
  // overwrite's reservation and the two headers.
  EXPECT_EQ(sm_.calls["native batch_put_from_multi"] - multi, 2);
  EXPECT_LE(sm_.calls["native put_from"] - singles, 3);
}

TEST_F(Scripted, AFailedKeyOfAGatheredCallFailsAloneAndIsNotStored) {
  Open(std::chrono::milliseconds(300), /*chunk_size=*/2 << 20);
  sm_.inject = [](const ScriptedMooncake::Call& call) -> int64_t {
    return call.op == "put_from" && call.key == "L1" ? mooncake::kErrNoAvailableHandle : 0;
  };
  std::vector<std::vector<std::byte>> values = {Bytes(3 << 19, 1), Bytes(3 << 19, 2), Bytes(3 << 19, 3)};
  std::vector<ConstBytes> parts(values.begin(), values.end());
  std::vector<PutRequest> requests = {{"L0", {&parts[0], 1}}, {"L1", {&parts[1], 1}}, {"L2", {&parts[2], 1}}};
  std::vector<Status> got = store_->BatchPut(requests, WriteOptions{});
  ASSERT_TRUE(got[0].ok() && got[2].ok()) << got[0] << got[2];
  EXPECT_EQ(got[1].code(), StatusCode::kResourceExhausted) << got[1];
  ExpectValue("L0", values[0]);
  ExpectValue("L2", values[2]);
  Result<bool> exists = store_->Exists("L1");
  ASSERT_TRUE(exists.ok()) << exists.status();
  EXPECT_FALSE(*exists);
}

TEST_F(Scripted, FirstWritesOfChunkedValuesShareCalls) {
  // Four new values of three 2 MiB chunks and a new raw one: every chunk in
  // one gathered call, the four headers in one batch upsert, one read of
  // them and one existence check of the chunks; no per-value round trips.
  Open(std::chrono::milliseconds(2000), /*chunk_size=*/2 << 20);
  std::vector<std::vector<std::byte>> values;
  for (int i = 0; i < 4; ++i) values.push_back(Bytes((5 << 20) + 11 * i, 40 + i));
  values.push_back(Bytes(3 << 19, 44));
  std::vector<ConstBytes> parts(values.begin(), values.end());
  std::vector<std::string> keys = {"c0", "c1", "c2", "c3", "raw"};
  std::vector<PutRequest> requests;
  for (size_t i = 0; i < keys.size(); ++i) requests.push_back({keys[i], {&parts[i], 1}});
  std::map<std::string, int> before = sm_.calls;
  std::vector<Status> got = store_->BatchPut(requests, WriteOptions{});
  for (size_t i = 0; i < keys.size(); ++i) ASSERT_TRUE(got[i].ok()) << keys[i] << got[i];
  std::map<std::string, int> after = sm_.calls;
  EXPECT_EQ(after["native batch_put_from_multi"] - before["native batch_put_from_multi"], 2);  // raw, chunks
  EXPECT_EQ(after["upsert_from"] - before["upsert_from"], 4);                                  // headers
  EXPECT_EQ(after["native batch_get_into"] - before["native batch_get_into"], 1);              // settle
  EXPECT_EQ(after["get_size"] - before["get_size"], 0);                                        // no Inspect
  EXPECT_EQ(after["native get_into"] - before["native get_into"], 0);
  EXPECT_EQ(sm_.Keys().size(), 4u * 4 + 1);  // headers, their chunks and the raw object: nothing else
  for (size_t i = 0; i < keys.size(); ++i) ExpectValue(keys[i], values[i]);
}

TEST_F(Scripted, BatchedChunkedFirstWritesFailAloneAndRaceAsASinglePutDoes) {
  // "b": a chunk refused once for space: its chunks are removed and it is
  // written again alone. "c": another writer creates the key just before our
  // header lands: the upsert replaces it, as a single put's commit does. "d":
  // a chunk refused every time: only "d" fails, leaving nothing behind.
  Open(std::chrono::milliseconds(300), /*chunk_size=*/2 << 20);
  int b_refusals = 0;
  bool c_raced = false;
  sm_.inject = [&](const ScriptedMooncake::Call& call) -> int64_t {
    if (call.op == "put_from" && call.key.starts_with("b\x1f") && b_refusals++ == 0) {
      return mooncake::kErrNoAvailableHandle;
    }
    if (call.op == "put_from" && call.key.starts_with("d\x1f")) return mooncake::kErrNoAvailableHandle;
    if (call.op == "upsert_from" && call.key == "c" && !c_raced) {
      c_raced = true;
      sm_.Plant("c", Bytes(1000, 9));
    }
    return 0;
  };
  std::vector<std::vector<std::byte>> values;
  for (int i = 0; i < 4; ++i) values.push_back(Bytes((3 << 20) + i, 50 + i));
  std::vector<ConstBytes> parts(values.begin(), values.end());
  std::vector<std::string> keys = {"a", "b", "c", "d"};
  std::vector<PutRequest> requests;
  for (size_t i = 0; i < keys.size(); ++i) requests.push_back({keys[i], {&parts[i], 1}});
  std::vector<Status> got = store_->BatchPut(requests, WriteOptions{});
  for (size_t i = 0; i < 3; ++i) ASSERT_TRUE(got[i].ok()) << keys[i] << got[i];
  EXPECT_EQ(got[3].code(), StatusCode::kResourceExhausted) << got[3];
  EXPECT_TRUE(c_raced);
  EXPECT_GE(b_refusals, 2);
  for (size_t i = 0; i < 3; ++i) ExpectValue(keys[i], values[i]);
  sm_.inject = nullptr;
  // Three values of two chunks, each under one generation; nothing of "d".
  std::vector<std::string> stored = sm_.Keys();
  EXPECT_EQ(stored.size(), 3u * 3) << ::testing::PrintToString(stored);
  for (const std::string& k : stored) EXPECT_FALSE(k.starts_with("d")) << k;
}

TEST_F(Scripted, FailedDirectWriteKeepsTheOldValue) {
  Open(std::chrono::milliseconds(500), /*chunk_size=*/2 << 20);
  auto old = Bytes(3 << 20, 4);
  ASSERT_TRUE(Put("k", old).ok());
  sm_.inject = [](const ScriptedMooncake::Call& call) -> int64_t {
    return call.op == "put_from" && call.key.starts_with("k\x1f") ? mooncake::kErrNoAvailableHandle : 0;
  };
  for (size_t n : {size_t{3} << 20, size_t{7} << 20}) {
    Status s = Put("k", Bytes(n, 5));
    EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s;
    ExpectValue("k", old);
  }
}

TEST_F(Scripted, DirectWritesFallBackWhenTheProviderCannot) {
  Open(std::chrono::milliseconds(2000), /*chunk_size=*/2 << 20);
  api_.batch_put_from_multi = [](mooncake::Handle, const char**, size_t, void* const*, const size_t*,
                                 const size_t*, const mooncake::ReplicateConfig*, int*) {
    return mooncake::kErrNotSupported;
  };
  for (size_t n : {(size_t{3} << 19) + 1, (size_t{5} << 20) + 1}) {
    auto v = Bytes(n, 6);
    ASSERT_TRUE(Put("f" + std::to_string(n), v).ok());
    ExpectValue("f" + std::to_string(n), v);
  }
}

}  // namespace
}  // namespace mooncake_connector
