// The fixture of the tests that drive MooncakeStore (mooncake://) through
// the scripted Mooncake (scripted_mooncake.h): a store opened over it, and
// helpers to write values and check what reads give.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/hash_internal.h"
#include "mooncake_connector/mooncake_store.h"
#include "scripted_mooncake.h"
#include "store/mooncake/new_store_internal.h"

namespace mooncake_connector::testing {

// Bytes that differ by position and seed.
inline std::vector<std::byte> Bytes(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte((i * 131 + seed * 7 + (i >> 8)) & 0xff);
  return v;
}

class Scripted : public ::testing::Test {
 protected:
  // The hooks capture the test body's locals, which are gone by now; the
  // store's destructor still calls into the table (deferred removals).
  void TearDown() override {
    sm_.inject = nullptr;
    store_.reset();
  }

  // dummy_client: in standalone-client mode, over ScriptedMooncake::dummy_client.
  void Open(std::chrono::milliseconds op_timeout = std::chrono::milliseconds(2000), uint64_t chunk_size = 4096,
            bool dummy_client = false) {
    sm_.dummy_client = dummy_client;
    api_ = sm_.api();
    MooncakeConfig c;
    c.master_address = "scripted:1";
    if (dummy_client) c.client_address = "scripted-client:1";
    c.chunk_size = chunk_size;
    c.transfer_slots = 2;
    c.op_timeout = op_timeout;
    Result<std::shared_ptr<Store>> s = mooncake::NewMooncakeStore(c, &api_, &sm_);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *s;
  }
  Status Put(const std::string& k, const std::vector<std::byte>& v) { return store_->Put(k, v); }
  // One BatchPut of values[i] under keys[i], every one of which must succeed.
  void BatchPutAll(const std::vector<std::string>& keys, const std::vector<std::vector<std::byte>>& values) {
    std::vector<ConstBytes> parts(values.begin(), values.end());
    std::vector<PutRequest> requests;
    for (size_t i = 0; i < keys.size(); ++i) requests.push_back({keys[i], {&parts[i], 1}});
    std::vector<Status> got = store_->BatchPut(requests, WriteOptions{});
    for (size_t i = 0; i < keys.size(); ++i) ASSERT_TRUE(got[i].ok()) << keys[i] << got[i];
  }
  void ExpectValue(const std::string& k, const std::vector<std::byte>& v) {
    Result<Buffer> b = store_->Get(k);
    ASSERT_TRUE(b.ok()) << b.status();
    ASSERT_EQ(b->size(), v.size());
    if (!v.empty()) EXPECT_EQ(std::memcmp(b->data(), v.data(), v.size()), 0);
  }
  // Values of mixed sizes under `prefix` + index, for a store of 2 MiB
  // chunks: raw objects (up to 2 MiB) and chunked ones (a header and 2 MiB
  // chunks). Returns them in index order.
  std::vector<std::vector<std::byte>> PutMixedSizes(const std::string& prefix, int seed) {
    const std::vector<size_t> sizes = {(1 << 20) + 3, (2 << 20) - 5, (5 << 20) + 7, (1 << 20) + 9, (4 << 20)};
    std::vector<std::vector<std::byte>> values;
    for (size_t i = 0; i < sizes.size(); ++i) {
      values.push_back(Bytes(sizes[i], static_cast<int>(i) + seed));
      EXPECT_TRUE(Put(prefix + std::to_string(i), values.back()).ok()) << prefix << i;
    }
    return values;
  }
  // Damage to the chunked value `v` stored under `k` (in `chunks` chunks) is
  // reported as a staged read reports it, by read(hashed) (what a read of
  // the whole value returned, and the hash it gave): a chunk of another size
  // than its header says is DataLoss naming its size; changed bytes of the
  // right size are a checksum mismatch unless the caller hashes, and then
  // give the hash of what was read; a missing chunk is DataLoss naming the
  // key.
  void ExpectDamageCaughtAsStaged(const std::string& k, const std::vector<std::byte>& v, size_t chunks,
                                  const std::function<std::pair<Result<uint64_t>, uint64_t>(bool)>& read) {
    ASSERT_TRUE(Put(k, v).ok());
    std::vector<std::string> names = Chunks(k);
    ASSERT_EQ(names.size(), chunks);
    sm_.Plant(names[1], Bytes(4000, 1));
    for (bool hashed : {false, true}) {
      auto [got, hash] = read(hashed);
      ASSERT_EQ(got.status().code(), StatusCode::kDataLoss) << got.status();
      EXPECT_NE(got.status().ToString().find("4000 bytes"), std::string::npos) << got.status();
    }
    ASSERT_TRUE(Put(k, v).ok());
    names = Chunks(k);
    {
      std::lock_guard lock(sm_.mu);
      (*sm_.Find(names.back()))[5] ^= std::byte{1};
    }
    auto [unhashed, ignored] = read(false);
    ASSERT_EQ(unhashed.status().code(), StatusCode::kDataLoss) << unhashed.status();
    EXPECT_NE(unhashed.status().ToString().find("checksum"), std::string::npos) << unhashed.status();
    auto [hashed, hash] = read(true);
    ASSERT_TRUE(hashed.ok()) << hashed.status();
    EXPECT_NE(hash, Xxh3(ConstBytes(v).subspan(16)));
    ASSERT_EQ(api_.remove(&sm_, names[0].c_str(), 1), 0);
    auto [lost, unused] = read(true);
    ASSERT_EQ(lost.status().code(), StatusCode::kDataLoss) << lost.status();
    EXPECT_NE(lost.status().ToString().find("'" + k + "'"), std::string::npos) << lost.status();
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

// An exact request for `v` (head of 16 bytes) and where it reads to.
// A read of a value's first 16 bytes into `head` and the rest into `rest`:
// memory of its own, or lent by `lender` (Store::AllocateForRead).
struct ExactRead {
  ExactRead(std::string k, size_t size, bool hashed, Store* lender = nullptr)
      : key(std::move(k)),
        head(16),
        memory(lender != nullptr ? *lender->AllocateForRead(size - 16) : *Buffer::Allocate(size - 16)),
        rest(memory.data(), memory.size()),
        request{key, rest, head, hashed ? &hash : nullptr, true} {}
  bool Holds(const std::vector<std::byte>& v) const {
    return std::memcmp(head.data(), v.data(), 16) == 0 && std::memcmp(rest.data(), v.data() + 16, rest.size()) == 0;
  }
  std::string key;
  std::vector<std::byte> head;
  Buffer memory;
  MutableBytes rest;
  uint64_t hash = 0;
  GetIntoRequest request;
};

// Reads values[i] (stored under prefix + i) back in one batch of exact
// requests, hashed where hashed(i), and checks the bytes and hashes.
// With `lend`, into memory the store lends (Store::AllocateForRead).
inline void ExpectExactBatchRead(Store& store, const std::string& prefix, const std::vector<std::vector<std::byte>>& values,
                          bool (*hashed)(size_t), bool lend = false) {
  std::vector<std::unique_ptr<ExactRead>> reads;
  std::vector<GetIntoRequest> requests;
  for (size_t i = 0; i < values.size(); ++i) {
    reads.push_back(std::make_unique<ExactRead>(prefix + std::to_string(i), values[i].size(), hashed(i),
                                                lend ? &store : nullptr));
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

}  // namespace mooncake_connector::testing
