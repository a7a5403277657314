// Standalone-client mode over the scripted Mooncake's dummy client: memory
// lent for streaming loads (SharedBlocks) is set up after a process's second
// streaming load, off the loads' path; reads into it go straight into it,
// with the same bytes, checks and errors as staged reads; every transfer's
// buffers lie in registered shared memory; blocks outlive the store.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/hash_internal.h"
#include "scripted_fixture.h"
#include "scripted_mooncake.h"
#include "store/mooncake/new_store_internal.h"

namespace mooncake_connector {
namespace {

using mooncake::SharedBlocks;
using testing::Bytes;
using testing::ExactRead;
using testing::ExpectExactBatchRead;
using testing::Scripted;

class SharedBlocksTest : public Scripted {
 protected:
  void OpenClient() { Open(std::chrono::milliseconds(500), /*chunk_size=*/2 << 20, /*dummy_client=*/true); }
  SharedBlocks& blocks() { return *mooncake::SharedBlocksOf(*store_); }
  // Two streaming loads of 8 MiB batches have ended: regions are made.
  void TwoStreamingLoads() {
    store_->Features().read_memory->StreamingLoadDone(8 << 20, 5 << 20);
    EXPECT_EQ(blocks().region_bytes(), 0u) << "a process that streams once pays nothing";
    store_->Features().read_memory->StreamingLoadDone(8 << 20, 5 << 20);
    blocks().WaitForGrowth();
  }
  int Calls(const std::string& op) {
    std::lock_guard lock(sm_.mu);
    return sm_.calls[op];
  }
};

TEST_F(SharedBlocksTest, LentAfterTheSecondStreamingLoadAndReadIntoDirectly) {
  OpenClient();
  std::vector<std::vector<std::byte>> values = PutMixedSizes("s", 0);
  ASSERT_FALSE(HasFailure());
  // Before: ordinary memory, staged reads.
  const int multi = Calls("native batch_get_into_multi");
  ExpectExactBatchRead(*store_, "s", values, [](size_t i) { return i % 2 == 0; }, /*lend=*/true);
  EXPECT_EQ(Calls("native batch_get_into_multi"), multi);
  TwoStreamingLoads();
  EXPECT_GE(blocks().region_bytes(), size_t{20} << 20);  // 2.5 batches
  // After: lent blocks of shared memory, read in one direct call.
  ExactRead one("s2", values[2].size(), true, store_.get());
  EXPECT_TRUE(blocks().Contains(one.rest.data(), one.rest.size()));
  ExpectExactBatchRead(*store_, "s", values, [](size_t i) { return i % 2 == 0; }, /*lend=*/true);
  EXPECT_EQ(Calls("native batch_get_into_multi"), multi + 1);
  // Memory of the caller's own is still read staged: a dummy client cannot
  // transfer into it.
  ExpectExactBatchRead(*store_, "s", values, [](size_t) { return true; });
  EXPECT_EQ(Calls("native batch_get_into_multi"), multi + 1);
  EXPECT_EQ(Calls("unregistered buffer"), 0);
}

TEST_F(SharedBlocksTest, DirectReadsOfDamagedValuesFailAsStagedReadsDo) {
  OpenClient();
  TwoStreamingLoads();
  const size_t n = (5 << 20) + 7;  // a header and three 2 MiB chunks
  auto v = Bytes(n, 3);
  auto read = [&](bool hashed) {
    ExactRead r("v", n, hashed, store_.get());
    EXPECT_TRUE(blocks().Contains(r.rest.data(), r.rest.size()));
    Result<uint64_t> got = store_->BatchGetInto({&r.request, 1})[0];
    return std::make_pair(got, r.hash);
  };
  ExpectDamageCaughtAsStaged("v", v, 3, read);
  // The blocks came back each time.
  ASSERT_TRUE(Put("v", v).ok());
  ExactRead good("v", n, true, store_.get());
  ASSERT_TRUE(store_->BatchGetInto({&good.request, 1})[0].ok());
  EXPECT_TRUE(good.Holds(v));
  EXPECT_GT(blocks().kept_bytes(), 0u);
  EXPECT_EQ(Calls("unregistered buffer"), 0);
}

TEST_F(SharedBlocksTest, ConcurrentLoadersReadTheirOwnValues) {
  OpenClient();
  std::vector<std::vector<std::byte>> values = PutMixedSizes("c", 1);
  ASSERT_FALSE(HasFailure());
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 6; ++round) {
        // Regions are made while others read (the first two rounds: staged).
        if (t == 0) store_->Features().read_memory->StreamingLoadDone(8 << 20, 5 << 20);
        const size_t i = static_cast<size_t>(t + round) % values.size();
        ExactRead r("c" + std::to_string(i), values[i].size(), round % 2 == 0, store_.get());
        Result<uint64_t> got = store_->BatchGetInto({&r.request, 1})[0];
        if (!got.ok() || !r.Holds(values[i])) wrong++;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(blocks().region_bytes(), 0u);
  EXPECT_EQ(Calls("unregistered buffer"), 0);
}

TEST_F(SharedBlocksTest, RegionsThatCannotBeHadLeaveReadsStaged) {
  OpenClient();  // the staging slots are a region of their own, made first
  std::vector<std::vector<std::byte>> values = PutMixedSizes("f", 2);
  ASSERT_FALSE(HasFailure());
  sm_.inject = [](const testing::ScriptedMooncake::Call& c) -> int64_t {
    return c.op == "alloc_transfer_buffer" ? mooncake::kErrNoAvailableHandle : 0;
  };
  TwoStreamingLoads();
  const int asked = Calls("alloc_transfer_buffer");
  EXPECT_EQ(blocks().region_bytes(), 0u);
  ExpectExactBatchRead(*store_, "f", values, [](size_t) { return true; }, /*lend=*/true);
  store_->Features().read_memory->StreamingLoadDone(8 << 20, 5 << 20);  // not asked again
  blocks().WaitForGrowth();
  EXPECT_EQ(Calls("alloc_transfer_buffer"), asked);
  EXPECT_EQ(Calls("unregistered buffer"), 0);
}

TEST_F(SharedBlocksTest, LentBlocksOutliveTheStore) {
  OpenClient();
  auto v = Bytes((3 << 20) + 5, 9);
  ASSERT_TRUE(Put("o", v).ok());
  TwoStreamingLoads();
  auto r = std::make_unique<ExactRead>("o", v.size(), true, store_.get());
  ASSERT_TRUE(store_->BatchGetInto({&r->request, 1})[0].ok());
  sm_.inject = nullptr;
  store_.reset();  // the store and its client go; the tensor stays
  EXPECT_TRUE(r->Holds(v));
  r.reset();  // given back after Close: its pages released
}

TEST_F(SharedBlocksTest, BlocksBeyondTheKeptBytesHaveTheirPagesReleased) {
  OpenClient();
  // Blocks of 200 MiB (a size class of 208): three given back keep two in
  // memory (kKeepBytes is 512 MiB), and the third is lent again.
  store_->Features().read_memory->StreamingLoadDone(300 << 20, 200 << 20);
  store_->Features().read_memory->StreamingLoadDone(300 << 20, 200 << 20);
  blocks().WaitForGrowth();
  ASSERT_GE(blocks().region_bytes(), size_t{3} * (208 << 20));
  std::vector<Buffer> lent;
  for (int i = 0; i < 3; ++i) {
    Result<Buffer> b = store_->AllocateForRead(200 << 20);
    ASSERT_TRUE(b.ok()) << b.status();
    ASSERT_TRUE(blocks().Contains(b->data(), b->size())) << i;
    b->data()[0] = std::byte{7};
    lent.push_back(*b);
  }
  lent.clear();
  EXPECT_EQ(blocks().kept_bytes(), size_t{2} * (208 << 20));
  std::vector<Buffer> again;
  for (int i = 0; i < 3; ++i) {
    Result<Buffer> b = store_->AllocateForRead(200 << 20);
    ASSERT_TRUE(b.ok() && blocks().Contains(b->data(), b->size())) << i;
    again.push_back(*b);
  }
  EXPECT_EQ(blocks().kept_bytes(), 0u);
  // One of them has its pages released: it reads as zeros.
  int zeroed = 0;
  for (const Buffer& b : again) zeroed += b.data()[0] == std::byte{0};
  EXPECT_EQ(zeroed, 1);
}

}  // namespace
}  // namespace mooncake_connector
