// MooncakeStore (mooncake://) driven by a scripted in-process function table
// (scripted_mooncake.h): torn reads, transient codes, failed puts, evictions
// and races forced at exact points, without a cluster.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>

#include "core/hash_internal.h"
#include "mooncake_connector/connector.h"
#include "mooncake_connector/mooncake_store.h"
#include "scripted_mooncake.h"
#include "store_conformance.h"
#include "store/mooncake/chunked_value_internal.h"
#include "store/mooncake/retry_internal.h"
#include "store/mooncake/mooncake_store_internal.h"

namespace mooncake_connector {
namespace {

using mooncake::kErrNoAvailableHandle;
using mooncake::kErrObjectHasLease;
using mooncake::kErrReplicaNotReady;
using testing::ScriptedMooncake;

std::vector<std::byte> Bytes(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte((i * 131 + seed * 7 + (i >> 8)) & 0xff);
  return v;
}

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

class Scripted : public ::testing::Test {
 protected:
  // The hooks capture the test body's locals, which are gone by now; the
  // store's destructor still calls into the table (deferred removals).
  void TearDown() override {
    sm_.inject = nullptr;
    store_.reset();
  }

  void Open(std::chrono::milliseconds op_timeout = std::chrono::milliseconds(2000), uint64_t chunk_size = 4096) {
    api_ = sm_.api();
    MooncakeConfig c;
    c.master_address = "scripted:1";
    c.chunk_size = chunk_size;
    c.transfer_slots = 2;
    c.op_timeout = op_timeout;
    Result<std::shared_ptr<Store>> s = mooncake::NewMooncakeStore(c, &api_, &sm_);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *s;
  }
  Status Put(const std::string& k, const std::vector<std::byte>& v) { return store_->Put(k, v); }
  void ExpectValue(const std::string& k, const std::vector<std::byte>& v) {
    Result<Buffer> b = store_->Get(k);
    ASSERT_TRUE(b.ok()) << b.status();
    ASSERT_EQ(b->size(), v.size());
    if (!v.empty()) EXPECT_EQ(std::memcmp(b->data(), v.data(), v.size()), 0);
  }
  // The chunk objects of `k`, by name.
  std::vector<std::string> Chunks(const std::string& k) {
    std::vector<std::string> out;
    for (const std::string& o : sm_.Keys()) {
      if (o.starts_with(k + '\x1f') && !o.ends_with(".r")) out.push_back(o);
    }
    return out;
  }

  ScriptedMooncake sm_;
  mooncake::Api api_;
  std::shared_ptr<Store> store_;
};

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


// An exact request for `v` (head of 16 bytes) and where it reads to.
struct ExactRead {
  ExactRead(std::string k, size_t size, bool hashed)
      : key(std::move(k)), head(16), rest(size - 16), request{key, rest, head, hashed ? &hash : nullptr, true} {}
  bool Holds(const std::vector<std::byte>& v) const {
    return std::memcmp(head.data(), v.data(), 16) == 0 && std::memcmp(rest.data(), v.data() + 16, rest.size()) == 0;
  }
  std::string key;
  std::vector<std::byte> head, rest;
  uint64_t hash = 0;
  GetIntoRequest request;
};

// Reads values[i] (stored under prefix + i) back in one batch of exact
// requests, hashed where hashed(i), and checks the bytes and hashes.
void ExpectExactBatchRead(Store& store, const std::string& prefix, const std::vector<std::vector<std::byte>>& values,
                          bool (*hashed)(size_t)) {
  std::vector<std::unique_ptr<ExactRead>> reads;
  std::vector<GetIntoRequest> requests;
  for (size_t i = 0; i < values.size(); ++i) {
    reads.push_back(std::make_unique<ExactRead>(prefix + std::to_string(i), values[i].size(), hashed(i)));
    requests.push_back(reads.back()->request);
  }
  std::vector<Result<uint64_t>> got = store.BatchGetInto(requests);
  for (size_t i = 0; i < values.size(); ++i) {
    ASSERT_TRUE(got[i].ok()) << i << got[i].status();
    EXPECT_EQ(*got[i], values[i].size());
    EXPECT_TRUE(reads[i]->Holds(values[i])) << i;
    if (hashed(i)) EXPECT_EQ(reads[i]->hash, Xxh3(ConstBytes(values[i]).subspan(16))) << i;
  }
}

TEST_F(Scripted, DirectReadsTakeRawAndChunkedValuesInFewCalls) {
  Open(std::chrono::milliseconds(2000), /*chunk_size=*/2 << 20);
  // Raw objects (up to 2 MiB) and chunked values (a header and 2 MiB chunks).
  std::vector<size_t> sizes = {(1 << 20) + 3, (2 << 20) - 5, (5 << 20) + 7, (1 << 20) + 9, (4 << 20)};
  std::vector<std::vector<std::byte>> values;
  for (size_t i = 0; i < sizes.size(); ++i) {
    values.push_back(Bytes(sizes[i], static_cast<int>(i)));
    ASSERT_TRUE(Put("d" + std::to_string(i), values.back()).ok());
  }
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
  auto v = Bytes(n, 3);
  auto read = [&](bool hashed) {
    ExactRead r("v", n, hashed);
    Result<uint64_t> got = store_->BatchGetInto({&r.request, 1})[0];
    return std::make_pair(got, r.hash);
  };
  // A chunk of another size than its header says: the direct read leaves it
  // to the staged one, which names it.
  ASSERT_TRUE(Put("v", v).ok());
  std::vector<std::string> chunks = Chunks("v");
  ASSERT_EQ(chunks.size(), 257u);
  sm_.Plant(chunks[9], Bytes(4000, 1));
  for (bool hashed : {false, true}) {
    auto [got, hash] = read(hashed);
    ASSERT_EQ(got.status().code(), StatusCode::kDataLoss) << got.status();
    EXPECT_NE(got.status().ToString().find("4000 bytes"), std::string::npos) << got.status();
  }
  // Changed bytes of the right size: the store's checksum catches them when
  // the caller does not hash; a caller that hashes gets the hash of what was
  // read (not the stored value's) to compare with its own record.
  ASSERT_TRUE(Put("v", v).ok());
  chunks = Chunks("v");
  {
    std::lock_guard lock(sm_.mu);
    (*sm_.Find(chunks[100]))[5] ^= std::byte{1};
  }
  auto [unhashed, ignored] = read(false);
  ASSERT_EQ(unhashed.status().code(), StatusCode::kDataLoss) << unhashed.status();
  EXPECT_NE(unhashed.status().ToString().find("checksum"), std::string::npos) << unhashed.status();
  auto [hashed, hash] = read(true);
  ASSERT_TRUE(hashed.ok()) << hashed.status();
  EXPECT_NE(hash, Xxh3(ConstBytes(v).subspan(16)));
  // A missing chunk: DataLoss naming the key, as ever.
  ASSERT_TRUE(api_.remove(&sm_, chunks[3].c_str(), 1) == 0);
  auto [lost, unused] = read(true);
  ASSERT_EQ(lost.status().code(), StatusCode::kDataLoss) << lost.status();
  EXPECT_NE(lost.status().ToString().find("'v'"), std::string::npos) << lost.status();
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
  std::vector<size_t> sizes = {(1 << 20) + 3, (2 << 20) - 5, (5 << 20) + 7, (1 << 20) + 9, (4 << 20)};
  std::vector<std::vector<std::byte>> values;
  for (size_t i = 0; i < sizes.size(); ++i) {
    values.push_back(Bytes(sizes[i], static_cast<int>(i) + 20));
    ASSERT_TRUE(Put("l" + std::to_string(i), values.back()).ok());
  }
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
  // The 7 new raw objects in one gathered call; the overwrite (as chunks)
  // and the chunked value one each. Single puts only for the overwrite's
  // reservation and the two headers.
  EXPECT_EQ(sm_.calls["native batch_put_from_multi"] - multi, 3);
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

TEST_F(Scripted, BatchedChunkedFirstWritesFailAloneAndRaceAsPutOneDoes) {
  // "b": a chunk refused once for space: its chunks are removed and PutOne
  // writes it again. "c": another writer creates the key just before our
  // header lands: the upsert replaces it, as PutOne's commit does. "d":
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
  // s1 was refused in the batch (transiently, for good): PutOne retried it
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
