// MooncakeStore (mooncake://) driven by a scripted in-process function table
// (scripted_mooncake.h): torn reads, transient codes, failed puts, evictions
// and races forced at exact points, without a cluster.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/hash_internal.h"
#include "mooncake_connector/connector.h"
#include "mooncake_connector/mooncake_store.h"
#include "scripted_fixture.h"
#include "scripted_mooncake.h"
#include "store_conformance.h"
#include "store/mooncake/chunked_value_internal.h"
#include "store/mooncake/retry_internal.h"
#include "store/mooncake/new_store_internal.h"

namespace mooncake_connector {
namespace {

using mooncake::kErrNoAvailableHandle;
using mooncake::kErrObjectHasLease;
using mooncake::kErrReplicaNotReady;
using testing::Bytes;
using testing::Scripted;
using testing::ScriptedMooncake;

// The conformance suite over the scripted Mooncake: tiny chunks (values are
// striped over many), two slots, and one or two reads at a time.
std::shared_ptr<Store> ScriptedStore(int read_threads) {
  static auto* sm = new ScriptedMooncake();  // outlives every store (leaked)
  static auto* api = new mooncake::Api(sm->api());
  MooncakeConfig c;
  c.master_address = "scripted:1";
  c.chunk_size = 64 << 10;
  c.transfer_slots = 4;
  c.read_threads = read_threads;
  Result<std::shared_ptr<Store>> s = mooncake::NewMooncakeStore(c, api, sm);
  return s.ok() ? *s : nullptr;
}

using testing::StoreConformance;
using testing::StoreFactory;
INSTANTIATE_TEST_SUITE_P(
    Scripted, StoreConformance,
    ::testing::Values(StoreFactory{"OneReader", [] { return ScriptedStore(1); }, /*lists=*/false},
                      StoreFactory{"TwoReaders", [] { return ScriptedStore(2); }, /*lists=*/false}),
    [](const auto& info) { return info.param.name; });


TEST_F(Scripted, RawAndChunkedValuesRoundTripAndOverwrite) {
  Open();
  for (size_t n : {size_t{1}, size_t{63}, size_t{64}, size_t{65}, size_t{4096}, size_t{4097}, size_t{50000}, size_t{0}}) {
    auto v = Bytes(n, static_cast<int>(n));
    ASSERT_TRUE(Put("k", v).ok()) << n;
    ExpectValue("k", v);
  }
  ASSERT_TRUE(store_->Remove("k").ok());
  EXPECT_TRUE(sm_.Keys().empty());
}

TEST_F(Scripted, TornHeaderIsReadAgain) {
  Open();
  auto v = Bytes(10000, 1);
  ASSERT_TRUE(Put("k", v).ok());
  int torn = 0;
  sm_.inject = [&](const ScriptedMooncake::Call& c) -> int64_t {
    if (c.op == "get_into" && c.key == "k" && torn++ == 0) {
      std::lock_guard lock(sm_.mu);
      (*sm_.Find("k"))[30] ^= std::byte{0xff};  // as a concurrent in-place rewrite would
    } else if (c.op == "get_into" && c.key == "k" && torn == 2) {
      std::lock_guard lock(sm_.mu);
      (*sm_.Find("k"))[30] ^= std::byte{0xff};  // the rewrite completes
    }
    return 0;
  };
  ExpectValue("k", v);
  EXPECT_GE(torn, 2);
}

TEST_F(Scripted, PersistentlyCorruptHeaderIsDataLoss) {
  Open();
  ASSERT_TRUE(Put("k", Bytes(10000, 1)).ok());
  {
    std::lock_guard lock(sm_.mu);
    (*sm_.Find("k"))[20] ^= std::byte{1};
  }
  Result<Buffer> b = store_->Get("k");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kDataLoss) << b.status();
}

TEST_F(Scripted, TransientCodesAreRetriedNotSurfaced) {
  Open();
  auto v = Bytes(9000, 2);
  std::atomic<int> refusals = 0;
  sm_.inject = [&](const ScriptedMooncake::Call& c) -> int64_t {
    if ((c.op == "get_into" || c.op == "put_from" || c.op == "upsert_from") && refusals < 6) {
      ++refusals;
      return kErrReplicaNotReady;
    }
    if (c.op == "remove" && refusals < 9) {
      ++refusals;
      return kErrObjectHasLease;
    }
    return 0;
  };
  ASSERT_TRUE(Put("k", v).ok());
  ExpectValue("k", v);
  ASSERT_TRUE(Put("k", Bytes(100, 3)).ok());
  ExpectValue("k", Bytes(100, 3));
  EXPECT_TRUE(store_->Remove("k").ok());
  EXPECT_EQ(refusals.load(), 9);
}

TEST_F(Scripted, TransientCodesPastTheDeadlineNameTheCode) {
  Open(std::chrono::milliseconds(150));
  ASSERT_TRUE(Put("k", Bytes(10, 1)).ok());
  sm_.inject = [&](const ScriptedMooncake::Call& c) -> int64_t {
    return c.op == "get_into" ? kErrReplicaNotReady : 0;
  };
  auto start = std::chrono::steady_clock::now();
  Result<Buffer> b = store_->Get("k");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(b.status().ToString().find("-703"), std::string::npos) << b.status();
  EXPECT_NE(b.status().ToString().find("op_timeout"), std::string::npos) << b.status();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

TEST_F(Scripted, FailedOverwriteKeepsTheOldValue) {
  Open();
  auto old = Bytes(9000, 4);  // chunked
  ASSERT_TRUE(Put("k", old).ok());
  sm_.capacity = 0;  // nothing more fits
  for (size_t n : {size_t{10}, size_t{9000}, size_t{20000}}) {
    Status s = Put("k", Bytes(n, 5));
    EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s;
    ExpectValue("k", old);
  }
}

TEST_F(Scripted, OverwriteOfRawValueOnFullPoolKeepsIt) {
  Open();
  auto old = Bytes(100, 6);
  ASSERT_TRUE(Put("k", old).ok());
  sm_.capacity = 0;
  for (size_t n : {size_t{10}, size_t{100}, size_t{20000}}) {
    EXPECT_EQ(Put("k", Bytes(n, 7)).code(), StatusCode::kResourceExhausted);
    ExpectValue("k", old);
  }
}

TEST_F(Scripted, SpaceTakenBetweenReservationAndCommitIsRetried) {
  Open();
  ASSERT_TRUE(Put("k", Bytes(100, 1)).ok());
  int upserts = 0;
  sm_.inject = [&](const ScriptedMooncake::Call& c) -> int64_t {
    if (c.op == "upsert_from" && c.key == "k" && upserts++ == 0) {
      // Another writer took the freed bytes: Mooncake drops the old object.
      std::lock_guard lock(sm_.mu);
      return kErrNoAvailableHandle;
    }
    return 0;
  };
  auto v = Bytes(5000, 2);
  ASSERT_TRUE(Put("k", v).ok());
  ExpectValue("k", v);
  EXPECT_EQ(upserts, 2);
}

TEST_F(Scripted, EvictedChunkIsDataLossNamingTheKey) {
  Open();
  ASSERT_TRUE(Put("w", Bytes(20000, 1)).ok());
  std::vector<std::string> chunks = Chunks("w");
  ASSERT_EQ(chunks.size(), 5u);
  {
    std::lock_guard lock(sm_.mu);
    std::vector<std::byte>* c = sm_.Find(chunks[2]);
    ASSERT_NE(c, nullptr);
  }
  ASSERT_TRUE(api_.remove(&sm_, chunks[2].c_str(), 1) == 0);
  Result<Buffer> b = store_->Get("w");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(b.status().ToString().find("'w'"), std::string::npos);
}

TEST_F(Scripted, ReplacedChunkBytesFailTheChecksum) {
  Open();
  ASSERT_TRUE(Put("w", Bytes(20000, 1)).ok());
  std::vector<std::string> chunks = Chunks("w");
  {
    std::lock_guard lock(sm_.mu);
    (*sm_.Find(chunks[1]))[7] ^= std::byte{0x10};
  }
  Result<Buffer> b = store_->Get("w");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(b.status().ToString().find("checksum"), std::string::npos) << b.status();
}

TEST_F(Scripted, OverwriteBetweenHeaderAndChunksRestartsTheRead) {
  Open();
  auto a = Bytes(20000, 1), b = Bytes(30000, 2);
  ASSERT_TRUE(Put("k", a).ok());
  MooncakeConfig c;
  c.master_address = "scripted:1";
  c.chunk_size = 4096;
  Result<std::shared_ptr<Store>> writer = mooncake::NewMooncakeStore(c, &api_, &sm_);
  ASSERT_TRUE(writer.ok());
  std::atomic<bool> overwritten = false;
  sm_.inject = [&](const ScriptedMooncake::Call& call) -> int64_t {
    if (call.op == "get_into" && call.key.starts_with("k\x1f") && !overwritten.exchange(true)) {
      // Lands after the reader saw the old header; the old chunks go (no
      // leases in this test), so the reader finds one missing.
      EXPECT_TRUE((*writer)->Put("k", b).ok());
    }
    return 0;
  };
  ExpectValue("k", b);
  EXPECT_TRUE(overwritten.load());
}

TEST_F(Scripted, LeasedChunksAreRemovedWhenTheLeaseEnds) {
  sm_.lease = std::chrono::milliseconds(100);
  Open();
  ASSERT_TRUE(Put("k", Bytes(20000, 1)).ok());
  ExpectValue("k", Bytes(20000, 1));  // leases header and chunks
  ASSERT_TRUE(Put("k", Bytes(30, 2)).ok());
  EXPECT_GE(Chunks("k").size(), 5u);  // the old ones wait for their leases
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_TRUE(Put("other", Bytes(10, 3)).ok());  // a later write retries them
  EXPECT_EQ(Chunks("k").size(), 1u);
  ASSERT_TRUE(store_->Remove("k").ok());
  EXPECT_TRUE(Chunks("k").empty());
}

TEST_F(Scripted, RemoveOfAKeyReadWithoutPauseLeavesATombstone) {
  sm_.lease = std::chrono::milliseconds(100000);
  Open(std::chrono::milliseconds(100));
  ASSERT_TRUE(Put("hot", Bytes(20000, 1)).ok());
  ExpectValue("hot", Bytes(20000, 1));
  ASSERT_TRUE(store_->Remove("hot").ok());
  Result<Buffer> b = store_->Get("hot");
  EXPECT_EQ(b.status().code(), StatusCode::kNotFound) << b.status();
  EXPECT_FALSE(*store_->Exists("hot"));
  EXPECT_EQ(store_->GetSize("hot").status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(Put("hot", Bytes(10, 2)).ok());  // written again over its tombstone
  ExpectValue("hot", Bytes(10, 2));
}

TEST_F(Scripted, WithoutExtensionsOverwriteFallsBackToRemoveAndPut) {
  sm_.with_extensions = false;
  Open();
  for (size_t n : {size_t{100}, size_t{20000}, size_t{7}, size_t{9000}}) {
    ASSERT_TRUE(Put("k", Bytes(n, 1)).ok()) << n;
    ExpectValue("k", Bytes(n, 1));
  }
  ASSERT_TRUE(store_->Remove("k").ok());
  EXPECT_TRUE(sm_.Keys().empty());
}

TEST_F(Scripted, HeaderClaimingAMillionChunksCostsFewCalls) {
  Open();
  auto h = mooncake::MakeChunkHeader(uint64_t{1} << 32, 4096, 0x55, 0).Encode();
  sm_.Plant("huge", std::vector<std::byte>(h.begin(), h.end()));
  sm_.calls.clear();
  EXPECT_EQ(store_->Get("huge").status().code(), StatusCode::kDataLoss);
  ASSERT_TRUE(Put("huge", Bytes(10, 1)).ok());
  ASSERT_TRUE(store_->Remove("huge").ok());
  int total = 0;
  for (auto& [op, n] : sm_.calls) total += n;
  EXPECT_LT(total, 100);
}

// Threads writing, reading and removing shared keys; every value is tagged
// with its key and writer, so any read can be checked to be one whole write.
TEST_F(Scripted, ConcurrentWritersReadersRemoversSeeWholeValues) {
  sm_.lease = std::chrono::milliseconds(5);
  Open();
  std::atomic<int> wrong = 0, errors = 0;
  auto value = [](int key, int writer, int seq) {
    size_t n = static_cast<size_t>((seq * 977 + writer * 31) % 15000 + 1);
    auto v = Bytes(n, writer * 1000 + seq);
    std::memcpy(v.data(), &key, std::min(n, sizeof key));
    return v;
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        int key = i % 3;
        std::string k = "s" + std::to_string(key);
        if (t < 2) {
          if (!Put(k, value(key, t, i)).ok()) ++errors;
        } else if (t == 2 && i % 10 == 0) {
          Status s = store_->Remove(k);
          if (!s.ok() && s.code() != StatusCode::kNotFound) ++errors;
        } else {
          Result<Buffer> b = store_->Get(k);
          if (!b.ok()) {
            if (b.status().code() != StatusCode::kNotFound) ++errors;
            continue;
          }
          bool ok = false;
          for (int w = 0; w < 2 && !ok; ++w) {
            for (int seq = 0; seq < 300 && !ok; ++seq) {
              auto v = value(key, w, seq);
              ok = v.size() == b->size() && (v.empty() || std::memcmp(v.data(), b->data(), v.size()) == 0);
            }
          }
          if (!ok) ++wrong;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(errors.load(), 0);
}

}  // namespace
}  // namespace mooncake_connector

namespace mooncake_connector {
namespace {

// The native provider against libraries that export store_c.h's functions
// (over the scripted Mooncake): the optional entries are picked up when
// exported, and overwrite/remove work with and without them.
TEST(ScriptedNativeLibrary, OptionalEntriesAreUsedWhenExported) {
  for (const char* path : {MC_SCRIPTED_STORE_FULL, MC_SCRIPTED_STORE_BASIC}) {
    const bool full = std::string(path) == MC_SCRIPTED_STORE_FULL;
    Result<mooncake::Api> api = mooncake::LoadNativeMooncakeApi(path);
    ASSERT_TRUE(api.ok()) << api.status();
    EXPECT_EQ(api->upsert_from != nullptr, full) << path;
    EXPECT_EQ(api->batch_upsert_from != nullptr, full) << path;
    EXPECT_EQ(api->batch_remove != nullptr, full) << path;
    static std::vector<std::unique_ptr<mooncake::Api>> tables;  // outlive the stores
    tables.push_back(std::make_unique<mooncake::Api>(*api));
    MooncakeConfig c;
    c.master_address = "scripted:1";
    c.chunk_size = 4096;
    Result<std::shared_ptr<Store>> store =
        mooncake::NewMooncakeStore(c, tables.back().get(), tables.back()->create());
    ASSERT_TRUE(store.ok()) << store.status();
    for (size_t n : {size_t{100}, size_t{20000}, size_t{7}}) {
      auto v = Bytes(n, static_cast<int>(n));
      ASSERT_TRUE((*store)->Put("k", v).ok()) << path << " " << n;
      Result<Buffer> b = (*store)->Get("k");
      ASSERT_TRUE(b.ok()) << b.status();
      ASSERT_EQ(b->size(), n);
      EXPECT_EQ(std::memcmp(b->data(), v.data(), n), 0);
    }
    EXPECT_TRUE((*store)->Remove("k").ok());
    EXPECT_EQ((*store)->Get("k").status().code(), StatusCode::kNotFound);
  }
}

}  // namespace
}  // namespace mooncake_connector

namespace mooncake_connector {
namespace {

TEST_F(Scripted, FailedInPlaceCommitPutsTheOldHeaderBack) {
  Open(std::chrono::milliseconds(200));
  auto old = Bytes(9000, 1);
  ASSERT_TRUE(Put("k", old).ok());
  sm_.inject = [&](const ScriptedMooncake::Call& c) -> int64_t {
    if (c.op == "upsert_from" && c.key == "k") {
      // A transfer failing mid-upsert: Mooncake revokes it and erases the key.
      std::lock_guard lock(sm_.mu);
      sm_.EraseLocked("k");
      return -800;
    }
    return 0;
  };
  Status s = Put("k", Bytes(20000, 2));
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s;
  sm_.inject = nullptr;
  ExpectValue("k", old);
}

}  // namespace
}  // namespace mooncake_connector

namespace mooncake_connector {
namespace {

TEST_F(Scripted, BatchGetIntoReadsManyKeysWithFewCalls) {
  Open();  // 2 slots of 4096 bytes
  std::vector<std::vector<std::byte>> small;
  for (int i = 0; i < 20; ++i) {
    small.push_back(Bytes(100, i));
    ASSERT_TRUE(Put("s" + std::to_string(i), small.back()).ok());
  }
  auto big = Bytes(10000, 99);  // chunked: a header and three chunks
  ASSERT_TRUE(Put("big", big).ok());
  auto raw300 = Bytes(300, 5);
  ASSERT_TRUE(Put("raw300", raw300).ok());

  std::vector<std::vector<std::byte>> dest(20, std::vector<std::byte>(100));
  std::vector<std::byte> big_head(16), big_rest(10000 - 16), tiny(200), none(16);
  std::vector<GetIntoRequest> requests;
  std::vector<std::string> keys;
  for (int i = 0; i < 20; ++i) keys.push_back("s" + std::to_string(i));
  for (int i = 0; i < 20; ++i) requests.push_back({keys[i], dest[i]});
  requests.push_back({"big", big_rest, big_head});
  requests.push_back({"missing", none});
  requests.push_back({"", none});
  requests.push_back({"raw300", tiny});
  int gets_before = sm_.calls["native get_into"], batches_before = sm_.calls["native batch_get_into"];
  std::vector<Result<uint64_t>> got = store_->BatchGetInto(requests);
  ASSERT_EQ(got.size(), 24u);
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(got[i].ok()) << i << got[i].status();
    EXPECT_EQ(*got[i], 100u);
    EXPECT_EQ(dest[i], small[i]) << i;
  }
  ASSERT_TRUE(got[20].ok()) << got[20].status();
  EXPECT_EQ(std::memcmp(big_head.data(), big.data(), 16), 0);
  EXPECT_EQ(std::memcmp(big_rest.data(), big.data() + 16, big.size() - 16), 0);
  EXPECT_EQ(got[21].status().code(), StatusCode::kNotFound);
  EXPECT_EQ(got[22].status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(got[23].status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(got[23].status().message().find("300"), std::string_view::npos) << got[23].status();
  // The 20 small values in one native call (plus the second pass's and the
  // chunks'); single gets only for the large value's header (large requests
  // are read one by one), the missing key and the value too large for its
  // destination.
  EXPECT_LE(sm_.calls["native get_into"] - gets_before, 3);
  EXPECT_LE(sm_.calls["native batch_get_into"] - batches_before, 4);
}


// A read of bytes [3 * 4096 + 10, 5 * 4096 - 10) of a ten-chunk value.
struct PartialRead {
  std::vector<std::byte> dest = std::vector<std::byte>(2 * 4096 - 20);
  GetIntoRequest r{"ten", dest};
  PartialRead() {
    r.partial = true;
    r.offset = 3 * 4096 + 10;  // inside chunks 3 and 4
  }
};

TEST_F(Scripted, APartialReadFetchesOnlyTheBytesItsRangeTouches) {
  Open();  // chunks of 4096 bytes
  auto value = Bytes(40960, 7);  // a header and ten chunks
  ASSERT_TRUE(Put("ten", value).ok());
  PartialRead p;
  int gets = sm_.calls["get_into"];
  uint64_t read = sm_.bytes_read;
  Result<uint64_t> got = store_->BatchGetInto({&p.r, 1})[0];
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, value.size());
  EXPECT_EQ(std::memcmp(p.dest.data(), value.data() + p.r.offset, p.dest.size()), 0);
  EXPECT_EQ(sm_.calls["get_into"] - gets, 3) << "the header and two chunks";
  EXPECT_EQ(sm_.calls["native batch_get_range_into"], 2) << "both chunks are edges of the range";
  EXPECT_EQ(sm_.bytes_read - read, mooncake::kChunkHeaderSize + p.dest.size()) << "the header and the range";
}

TEST_F(Scripted, WithoutRangedReadsAPartialReadFetchesTheChunksItTouchesWhole) {
  sm_.with_extensions = false;
  Open();
  auto value = Bytes(40960, 7);
  ASSERT_TRUE(Put("ten", value).ok());
  PartialRead p;
  uint64_t read = sm_.bytes_read;
  Result<uint64_t> got = store_->BatchGetInto({&p.r, 1})[0];
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(std::memcmp(p.dest.data(), value.data() + p.r.offset, p.dest.size()), 0);
  EXPECT_EQ(sm_.bytes_read - read, mooncake::kChunkHeaderSize + 2 * 4096);
}

TEST_F(Scripted, AFailedRangedReadIsReadWholeAndSaysWhatIsWrong) {
  Open();
  auto value = Bytes(40960, 7);
  ASSERT_TRUE(Put("ten", value).ok());
  // Chunk 4 is shorter than its header says: the ranged read of it fails,
  // the whole read names it.
  std::string chunk4;
  for (const std::string& k : sm_.Keys()) {
    if (k.size() > 2 && k.substr(k.size() - 2) == ".4") chunk4 = k;
  }
  ASSERT_FALSE(chunk4.empty());
  {
    std::lock_guard lock(sm_.mu);
    sm_.Find(chunk4)->resize(100);
  }
  PartialRead p;
  Result<uint64_t> got = store_->BatchGetInto({&p.r, 1})[0];
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kDataLoss) << got.status();
  EXPECT_NE(got.status().message().find("chunk 4"), std::string::npos) << got.status();
}

TEST_F(Scripted, ValuesWrittenInLargerChunksReadWholeAndInPart) {
  // A writer with twice this reader's chunk_size: its chunks do not fit a
  // staging slot and are read straight into registered memory.
  Open(std::chrono::milliseconds(2000), /*chunk_size=*/8192);
  auto value = Bytes(5 * 8192 + 100, 3);
  ASSERT_TRUE(Put("wide", value).ok());
  Open(std::chrono::milliseconds(2000), /*chunk_size=*/4096);
  ExpectValue("wide", value);
  std::vector<std::byte> dest(8192 + 17);
  GetIntoRequest r{"wide", dest};
  r.partial = true;
  r.offset = 8192 + 5;
  Result<uint64_t> got = store_->BatchGetInto({&r, 1})[0];
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, value.size());
  EXPECT_EQ(std::memcmp(dest.data(), value.data() + r.offset, dest.size()), 0);
}

TEST_F(Scripted, ValuesLargerThanAChunkAreTheOnesStoredWithAChecksum) {
  // What a model save asks before hashing each value a second time.
  Open(std::chrono::milliseconds(2000), /*chunk_size=*/2 << 20);
  EXPECT_FALSE(store_->RecordsValueChecksum(2 << 20));
  EXPECT_TRUE(store_->RecordsValueChecksum((2 << 20) + 1));
  auto memory = Connector::Create("memory://records-checksums");
  ASSERT_TRUE(memory.ok());
  EXPECT_FALSE((*memory)->store().RecordsValueChecksum(uint64_t{1} << 40));
}

TEST_F(Scripted, AGivenValueChecksumIsTheOneStored) {
  // A caller that has the value's XXH3 already (a model save) saves the
  // store a pass over it; the header records it, and reads check it.
  Open();
  auto v = Bytes(20000, 8);
  ConstBytes whole(v);
  PutRequest right{"right", {&whole, 1}, Xxh3(whole)};
  PutRequest wrong{"wrong", {&whole, 1}, Xxh3(whole) ^ 1};
  ASSERT_TRUE(store_->BatchPut(std::vector<PutRequest>{right, wrong}, {})[0].ok());
  ExpectValue("right", v);
  Result<Buffer> b = store_->Get("wrong");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kDataLoss) << b.status();
}

TEST_F(Scripted, ConcurrentBatchWritersReadersRemoversSeeWholeValues) {
  // The batched paths (one native call for many small keys) under the
  // conformance suite's attack, here with read leases and under TSan.
  sm_.lease = std::chrono::milliseconds(5);
  Open();
  std::vector<std::string> keys;
  for (int k = 0; k < 6; ++k) keys.push_back("b" + std::to_string(k));
  testing::BatchAttackResult r = testing::ConcurrentBatchAttack(*store_, keys, 150);
  EXPECT_EQ(r.wrong, 0);
  EXPECT_EQ(r.errors, 0);
  EXPECT_GT(r.reads, 0);
}

TEST_F(Scripted, BatchPutWritesNewSmallValuesWithFewCalls) {
  Open();  // 2 slots of 4096 bytes: small = at most 1024 bytes
  auto old = Bytes(100, 7);
  ASSERT_TRUE(Put("s3", old).ok());  // an overwrite among first writes
  std::vector<std::vector<std::byte>> values;
  std::vector<std::string> keys;
  for (int i = 0; i < 20; ++i) {
    values.push_back(Bytes(100 + i, 40 + i));
    keys.push_back("s" + std::to_string(i));
  }
  values.push_back(Bytes(10000, 3));  // large: chunked, one by one
  keys.push_back("big");
  values.push_back({});  // empty: chunked
  keys.push_back("empty");
  std::vector<ConstBytes> parts;
  for (const auto& v : values) parts.emplace_back(v);
  std::vector<PutRequest> requests;
  for (size_t i = 0; i < keys.size(); ++i) requests.push_back({keys[i], {&parts[i], 1}});
  requests.push_back({"", {&parts[0], 1}});
  int singles = sm_.calls["native put_from"], batches = sm_.calls["native batch_put_from"];
  std::vector<Status> got = store_->BatchPut(requests, WriteOptions{});
  ASSERT_EQ(got.size(), keys.size() + 1);
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_TRUE(got[i].ok()) << keys[i] << got[i];
    ExpectValue(keys[i], values[i]);
  }
  EXPECT_EQ(got.back().code(), StatusCode::kInvalidArgument);
  // 19 new small values in one batch put; the overwrite and the large and
  // empty values take their own calls (chunks in batches, headers single).
  EXPECT_LE(sm_.calls["native put_from"] - singles, 2);
  EXPECT_LE(sm_.calls["native batch_put_from"] - batches, 8);
}

TEST_F(Scripted, ABatchOfOverwritesAndFirstWritesLeavesOnlyTheNewValues) {
  // Every kind of write in one batch (4096-byte chunks): over a raw value of
  // the same and of another size, over a chunked value with a smaller and a
  // larger one, and first writes of a raw, a chunked, an empty and a
  // header-sized value. Each key then reads as its new value, and the store
  // holds nothing else: no reservation, no chunk of a replaced generation.
  Open();
  ASSERT_TRUE(Put("raw_same", Bytes(100, 1)).ok());
  ASSERT_TRUE(Put("raw_to_big", Bytes(200, 2)).ok());
  ASSERT_TRUE(Put("big_to_smaller", Bytes(10000, 3)).ok());
  ASSERT_TRUE(Put("big_to_small", Bytes(9000, 4)).ok());
  const std::vector<std::string> keys = {"raw_same", "raw_to_big", "big_to_smaller", "big_to_small",
                                         "new_raw",  "new_big",    "new_empty",      "new_64"};
  const std::vector<std::vector<std::byte>> values = {Bytes(100, 11), Bytes(9000, 12), Bytes(6000, 13),
                                                      Bytes(50, 14),  Bytes(300, 15),  Bytes(10000, 16),
                                                      {},             Bytes(64, 17)};
  BatchPutAll(keys, values);
  for (size_t i = 0; i < keys.size(); ++i) ExpectValue(keys[i], values[i]);
  // Objects: a header and its chunks for each value written in chunks (every
  // overwrite, and the large, empty and 64-byte first writes); the new raw
  // value alone.
  const size_t objects = (1 + 1) + (1 + 3) + (1 + 2) + (1 + 1) + 1 + (1 + 3) + 1 + (1 + 1);
  EXPECT_EQ(sm_.Keys().size(), objects) << ::testing::PrintToString(sm_.Keys());
}

TEST_F(Scripted, OverwritesOfChunkedValuesShareCalls) {
  // Six chunked values (three 4096-byte chunks each) overwritten in one
  // batch: what the keys hold is read in one call (no get_size, no single
  // get_into), the headers go in place by one batch upsert, and the replaced
  // generations' chunks go in one removal call.
  Open();
  std::vector<std::string> keys;
  std::vector<std::vector<std::byte>> values;
  for (int i = 0; i < 6; ++i) {
    keys.push_back("v" + std::to_string(i));
    ASSERT_TRUE(Put(keys.back(), Bytes(10000, i)).ok());
    values.push_back(Bytes(10000 + i, 20 + i));
  }
  std::map<std::string, int> before = sm_.calls;
  BatchPutAll(keys, values);
  std::map<std::string, int> after = sm_.calls;
  EXPECT_EQ(after["get_size"] - before["get_size"], 0);
  EXPECT_EQ(after["native get_into"] - before["native get_into"], 0);
  EXPECT_EQ(after["native batch_get_into"] - before["native batch_get_into"], 2);  // the look, the settle check
  EXPECT_EQ(after["native upsert_from"] - before["native upsert_from"], 0);
  EXPECT_EQ(after["native batch_upsert_from"] - before["native batch_upsert_from"], 1);
  EXPECT_EQ(after["native batch_remove"] - before["native batch_remove"], 1);
  for (size_t i = 0; i < keys.size(); ++i) ExpectValue(keys[i], values[i]);
  EXPECT_EQ(sm_.Keys().size(), 6u * 4) << "each header and its three chunks, nothing of the old generations";
}

TEST_F(Scripted, BatchPutFallsBackWhenTheBatchCallIsRefused) {
  Open(std::chrono::milliseconds(300));
  sm_.inject = [](const ScriptedMooncake::Call& c) -> int64_t {
    return c.op == "put_from" && c.key == "s1" ? mooncake::kErrReplicaNotReady : 0;
  };
  std::vector<std::vector<std::byte>> values = {Bytes(50, 1), Bytes(60, 2), Bytes(70, 3)};
  std::vector<ConstBytes> parts(values.begin(), values.end());
  std::vector<std::string> keys = {"s0", "s1", "s2"};
  std::vector<PutRequest> requests;
  for (size_t i = 0; i < 3; ++i) requests.push_back({keys[i], {&parts[i], 1}});
  std::vector<Status> got = store_->BatchPut(requests, WriteOptions{});
  // s1 was refused in the batch (transiently, for good): written alone, it was retried
  // until the deadline and reports the code; the others are in.
  EXPECT_TRUE(got[0].ok()) << got[0];
  EXPECT_FALSE(got[1].ok());
  EXPECT_TRUE(got[2].ok()) << got[2];
  sm_.inject = nullptr;
  ExpectValue("s0", values[0]);
  ExpectValue("s2", values[2]);
  EXPECT_FALSE(sm_.Has("s1"));
}

}  // namespace
}  // namespace mooncake_connector

namespace mooncake_connector {
namespace {

TEST_F(Scripted, AMasterThatDoesNotAnswerFailsABatchInOneTimeout) {
  // The master gone: every call waits out Mooncake's RPC timeout, then -900.
  // A batch of large values (read one by one) must not wait once per key,
  // and a slow failure is not tried again.
  Open(std::chrono::milliseconds(20000));
  std::vector<std::vector<std::byte>> values;
  std::vector<std::string> keys;
  for (int i = 0; i < 6; ++i) {
    keys.push_back("big" + std::to_string(i));
    values.push_back(Bytes(3000, i));  // over a quarter slot: read one by one
    ASSERT_TRUE(Put(keys.back(), values.back()).ok());
  }
  std::atomic<int> attempts{0};
  sm_.inject = [&](const ScriptedMooncake::Call& c) -> int64_t {
    if (c.op != "get_into") return 0;
    ++attempts;
    std::this_thread::sleep_for(std::chrono::milliseconds(1100));
    return -900;
  };
  std::vector<std::vector<std::byte>> dest(6, std::vector<std::byte>(3000));
  std::vector<GetIntoRequest> requests;
  for (int i = 0; i < 6; ++i) requests.push_back({keys[i], dest[i]});
  auto start = std::chrono::steady_clock::now();
  std::vector<Result<uint64_t>> got = store_->BatchGetInto(requests);
  auto took = std::chrono::steady_clock::now() - start;
  for (const auto& r : got) {
    EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status();
    EXPECT_NE(r.status().message().find("scripted:1"), std::string_view::npos) << r.status();
  }
  EXPECT_EQ(attempts.load(), 1);  // read_threads is 1 over a network
  EXPECT_LT(took, std::chrono::milliseconds(1100 + mooncake::NetworkHealth::kHold.count()));

  // Once the hold is over, calls go to Mooncake again: back, it answers.
  sm_.inject = nullptr;
  std::this_thread::sleep_for(mooncake::NetworkHealth::kHold);
  ExpectValue("big0", values[0]);

  // A failure that comes fast (a hiccup, a storage process the master has not
  // dropped yet) is tried again and trips nothing.
  attempts = 0;
  sm_.inject = [&](const ScriptedMooncake::Call& c) -> int64_t {
    if (c.op != "get_into") return 0;
    return ++attempts <= 2 ? -900 : 0;
  };
  ExpectValue("big1", values[1]);
  EXPECT_EQ(attempts.load(), 3);
}

}  // namespace
}  // namespace mooncake_connector
