#include "store_conformance.h"

#include "core/hash_internal.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

namespace mooncake_connector::testing {
namespace {

ConstBytes AsBytes(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

std::string ReadAll(Store& store, std::string_view key) {
  Result<Buffer> b = store.Get(key);
  EXPECT_TRUE(b.ok()) << b.status();
  if (!b.ok()) return "";
  return std::string(reinterpret_cast<const char*>(b->data()), b->size());
}

}  // namespace

void StoreConformance::SetUp() {
  store_ = GetParam().make();
  ASSERT_NE(store_, nullptr);
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  prefix_ = std::string("conformance/") + info->name() + "/";
  std::replace(prefix_.begin(), prefix_.end(), '/', '_');
  prefix_ += "/";
  if (!GetParam().lists) return;  // a fresh prefix per test; nothing to clean
  Result<std::vector<std::string>> stale = store_->List(prefix_);
  ASSERT_TRUE(stale.ok()) << stale.status();
  for (const std::string& k : *stale) ASSERT_TRUE(store_->Remove(k).ok());
}

TEST_P(StoreConformance, PutThenGetReturnsTheBytes) {
  ASSERT_TRUE(store_->Put(Key("a"), AsBytes("hello")).ok());
  EXPECT_EQ(ReadAll(*store_, Key("a")), "hello");
  Result<uint64_t> size = store_->GetSize(Key("a"));
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, 5u);
}

TEST_P(StoreConformance, PutJoinsScatterParts) {
  ConstBytes parts[] = {AsBytes("head"), AsBytes(""), AsBytes("-body")};
  ASSERT_TRUE(store_->Put(Key("s"), parts).ok());
  EXPECT_EQ(ReadAll(*store_, Key("s")), "head-body");
}

TEST_P(StoreConformance, PutOverwrites) {
  ASSERT_TRUE(store_->Put(Key("o"), AsBytes("first value")).ok());
  ASSERT_TRUE(store_->Put(Key("o"), AsBytes("2nd")).ok());
  EXPECT_EQ(ReadAll(*store_, Key("o")), "2nd");
}

TEST_P(StoreConformance, EmptyValue) {
  ASSERT_TRUE(store_->Put(Key("e"), ConstBytes()).ok());
  EXPECT_EQ(*store_->Exists(Key("e")), true);
  EXPECT_EQ(ReadAll(*store_, Key("e")), "");
}

TEST_P(StoreConformance, MissingKeyIsNotFound) {
  EXPECT_EQ(store_->Get(Key("missing")).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->GetSize(Key("missing")).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->Remove(Key("missing")).code(), StatusCode::kNotFound);
  std::byte buf[4];
  EXPECT_EQ(store_->GetInto(Key("missing"), buf).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(*store_->Exists(Key("missing")), false);
}

TEST_P(StoreConformance, EmptyKeyIsInvalid) {
  EXPECT_EQ(store_->Put("", AsBytes("x")).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Get("").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Exists("").status().code(), StatusCode::kInvalidArgument);
}

TEST_P(StoreConformance, GetIntoSmallBufferIsInvalidAndNamesTheSize) {
  ASSERT_TRUE(store_->Put(Key("big"), AsBytes("0123456789")).ok());
  std::byte small[4];
  Result<uint64_t> r = store_->GetInto(Key("big"), small);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("10"), std::string_view::npos) << r.status();
  EXPECT_EQ(ReadAll(*store_, Key("big")), "0123456789");
}

TEST_P(StoreConformance, GetIntoLargerBufferWritesThePrefix) {
  ASSERT_TRUE(store_->Put(Key("v"), AsBytes("abc")).ok());
  std::vector<std::byte> buf(16, std::byte{0x7f});
  Result<uint64_t> r = store_->GetInto(Key("v"), buf);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, 3u);
  EXPECT_EQ(std::memcmp(buf.data(), "abc", 3), 0);
  EXPECT_EQ(buf[3], std::byte{0x7f});
}

TEST_P(StoreConformance, GetIntoWithHeadScattersTheValue) {
  // Small values and values spanning several chunks (mooncake:// chunks above
  // its chunk_size), head boundaries inside and at the end of the value.
  for (size_t size : {size_t{10}, size_t{5} << 20}) {
    std::string value(size, '\0');
    for (size_t i = 0; i < size; ++i) value[i] = static_cast<char>('a' + (i * 7 + i / 251) % 26);
    std::string key = Key("scatter" + std::to_string(size));
    ASSERT_TRUE(store_->Put(key, AsBytes(value)).ok());
    for (size_t head_size : {size_t{1}, size_t{3}, size}) {
      std::vector<std::byte> head(head_size), rest(size - head_size + 5, std::byte{0x7f});
      GetIntoRequest r{key, rest, head};
      Result<uint64_t> got = store_->BatchGetInto({&r, 1})[0];
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(*got, size);
      EXPECT_EQ(std::memcmp(head.data(), value.data(), head_size), 0) << head_size;
      EXPECT_EQ(std::memcmp(rest.data(), value.data() + head_size, size - head_size), 0) << head_size;
      EXPECT_EQ(rest[size - head_size], std::byte{0x7f});
    }
    // The rest does not fit, or the value is shorter than the head.
    std::vector<std::byte> head(4), rest(size - 5);
    GetIntoRequest small{key, rest, head};
    Result<uint64_t> got = store_->BatchGetInto({&small, 1})[0];
    EXPECT_EQ(got.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(got.status().message().find(std::to_string(size)), std::string_view::npos);
    std::vector<std::byte> long_head(size + 1), none;
    GetIntoRequest shorter{key, none, long_head};
    EXPECT_EQ(store_->BatchGetInto({&shorter, 1})[0].status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(ReadAll(*store_, key), value);
  }
}

TEST_P(StoreConformance, RemoveDeletes) {
  ASSERT_TRUE(store_->Put(Key("r"), AsBytes("x")).ok());
  ASSERT_TRUE(store_->Remove(Key("r")).ok());
  EXPECT_EQ(*store_->Exists(Key("r")), false);
  EXPECT_EQ(store_->Get(Key("r")).status().code(), StatusCode::kNotFound);
}

TEST_P(StoreConformance, ListFiltersByPrefixAndSorts) {
  if (CannotList()) GTEST_SKIP() << GetParam().name << " cannot list";
  for (const char* k : {"b/2", "a/1", "b/1", "c"}) ASSERT_TRUE(store_->Put(Key(k), AsBytes(k)).ok());
  Result<std::vector<std::string>> all = store_->List(prefix_);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(*all, (std::vector<std::string>{Key("a/1"), Key("b/1"), Key("b/2"), Key("c")}));
  Result<std::vector<std::string>> b = store_->List(Key("b/"));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, (std::vector<std::string>{Key("b/1"), Key("b/2")}));
  EXPECT_TRUE(store_->List(Key("zzz"))->empty());
}

TEST_P(StoreConformance, BatchResultsArePerRequestAndInOrder) {
  std::string ka = Key("ba"), kb = Key("bb"), kc = Key("bc");
  ConstBytes va[] = {AsBytes("A")}, vc[] = {AsBytes("CCC")};
  PutRequest puts[] = {{ka, va}, {"", va}, {kc, vc}};
  std::vector<Status> put_status = store_->BatchPut(puts, WriteOptions{});
  ASSERT_EQ(put_status.size(), 3u);
  EXPECT_TRUE(put_status[0].ok());
  EXPECT_EQ(put_status[1].code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(put_status[2].ok());

  std::byte a[8], b[8], c[8];
  GetIntoRequest gets[] = {{ka, a}, {kb, b}, {kc, c}};
  std::vector<Result<uint64_t>> got = store_->BatchGetInto(gets);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(*got[0], 1u);
  EXPECT_EQ(got[1].status().code(), StatusCode::kNotFound);
  EXPECT_EQ(*got[2], 3u);
  EXPECT_EQ(std::memcmp(c, "CCC", 3), 0);

  std::string_view keys[] = {ka, kb, kc};
  std::vector<Result<bool>> exist = store_->BatchExists(keys);
  EXPECT_EQ(*exist[0], true);
  EXPECT_EQ(*exist[1], false);
  EXPECT_EQ(*exist[2], true);
}

TEST_P(StoreConformance, AKeyTwiceInOneBatchIsDoneInRequestOrder) {
  // Puts: the later request wins, whatever the sizes (one small enough to be
  // batched, one chunked on mooncake://). Gets and exists: each answered.
  std::string k = Key("twice"), other = Key("other");
  std::string big(5u << 20, 'b');
  for (int round = 0; round < 2; ++round) {
    ConstBytes first[] = {AsBytes(round == 0 ? std::string_view("first") : std::string_view(big))};
    ConstBytes second[] = {AsBytes(round == 0 ? std::string_view(big) : std::string_view("second"))};
    ConstBytes x[] = {AsBytes("x")};
    PutRequest puts[] = {{k, first}, {other, x}, {k, second}};
    for (const Status& st : store_->BatchPut(puts, WriteOptions{})) ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(ReadAll(*store_, k), round == 0 ? big : "second") << round;
  }
  // Each request its own destination: requests of one batch may be served
  // in parallel, so destinations that overlap have no defined order.
  std::vector<std::byte> a(16), b(16), c(16), d(16), head(2);
  GetIntoRequest gets[] = {{k, a}, {other, b}, {k, c, head}, {k, d}};
  std::vector<Result<uint64_t>> got = store_->BatchGetInto(gets);
  for (const auto& r : got) ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*got[0], 6u);
  EXPECT_EQ(*got[2], 6u);
  EXPECT_EQ(std::memcmp(a.data(), "second", 6), 0);
  EXPECT_EQ(std::memcmp(b.data(), "x", 1), 0);
  EXPECT_EQ(std::memcmp(head.data(), "se", 2), 0);
  EXPECT_EQ(std::memcmp(c.data(), "cond", 4), 0);
  EXPECT_EQ(std::memcmp(d.data(), "second", 6), 0);
  std::string_view keys[] = {k, other, k};
  for (const Result<bool>& e : store_->BatchExists(keys)) EXPECT_TRUE(e.ok() && *e);
}

TEST_P(StoreConformance, GetIntoHashesTheBytesItWrote) {
  // Small values (batched), values spanning chunks (read one by one, two at a
  // time), heads of several lengths; one batch call for all of them.
  std::vector<std::string> keys, values;
  for (size_t size : {size_t{0}, size_t{10}, size_t{3000}, size_t{5} << 20, size_t{33} << 20}) {
    std::string value(size, '\0');
    for (size_t i = 0; i < size; ++i) value[i] = static_cast<char>((i * 131 + i / 4093) & 0xff);
    keys.push_back(Key("hash" + std::to_string(size)));
    values.push_back(value);
    ASSERT_TRUE(store_->Put(keys.back(), AsBytes(value)).ok());
  }
  std::vector<GetIntoRequest> requests;
  std::vector<std::vector<std::byte>> heads, rests;
  std::vector<uint64_t> hashes;
  std::vector<std::string> expected;
  for (size_t head_size : {size_t{0}, size_t{3}}) {
    for (size_t v = 0; v < values.size(); ++v) {
      if (values[v].size() < head_size) continue;
      heads.emplace_back(head_size);
      rests.emplace_back(values[v].size() - head_size + 7);
      expected.push_back(values[v].substr(head_size));
    }
  }
  hashes.assign(expected.size(), 0);
  size_t at = 0;
  for (size_t head_size : {size_t{0}, size_t{3}}) {
    for (size_t v = 0; v < values.size(); ++v) {
      if (values[v].size() < head_size) continue;
      requests.push_back(GetIntoRequest{keys[v], rests[at], heads[at], &hashes[at]});
      ++at;
    }
  }
  // Whole, and in pieces of 1 MiB (a model manifest's checksums, version 4):
  // values of a piece or less hash the same either way.
  for (uint64_t piece : {uint64_t{0}, uint64_t{1} << 20}) {
    for (GetIntoRequest& r : requests) r.data_xxh3_piece = piece;
    for (auto& rest : rests) std::fill(rest.begin(), rest.end(), std::byte{0});
    std::vector<Result<uint64_t>> got = store_->BatchGetInto(requests);
    for (size_t i = 0; i < requests.size(); ++i) {
      ASSERT_TRUE(got[i].ok()) << i << ": " << got[i].status();
      EXPECT_EQ(hashes[i], Xxh3Pieces(AsBytes(expected[i]), piece))
          << "request " << i << " of " << expected[i].size() << " bytes, pieces of " << piece;
      EXPECT_EQ(std::memcmp(rests[i].data(), expected[i].data(), expected[i].size()), 0) << i;
    }
  }
}

TEST_P(StoreConformance, PartialReadsDeliverTheRangeAskedFor) {
  // Ranges of a small value and of values spanning chunks (mooncake://:
  // several chunks; a range inside one chunk, across chunk edges, at the
  // end), with and without a head and a hash, in one batch with whole reads.
  std::vector<std::string> keys, values;
  for (size_t size : {size_t{10}, size_t{5} << 20, size_t{33} << 20}) {
    std::string value(size, '\0');
    for (size_t i = 0; i < size; ++i) value[i] = static_cast<char>((i * 131 + i / 4093) & 0xff);
    keys.push_back(Key("range" + std::to_string(size)));
    values.push_back(value);
    ASSERT_TRUE(store_->Put(keys.back(), AsBytes(value)).ok());
  }
  struct Case {
    size_t value;
    uint64_t offset, head, size;
  };
  std::vector<Case> cases = {{0, 0, 0, 10}, {0, 3, 0, 4}, {0, 8, 1, 1}, {0, 10, 0, 0}, {1, 1, 0, 4096},
                             {1, (5u << 20) - 7, 2, 5}, {1, 123456, 5, 3u << 20}, {2, 0, 0, 33u << 20},
                             {2, (16u << 20) - 100, 0, 200}, {2, (1u << 20) + 3, 11, 31u << 20},
                             {2, (33u << 20) - 1, 0, 1}};
  std::vector<std::vector<std::byte>> heads, dests;
  std::vector<uint64_t> hashes(cases.size() + 1, 0);
  for (const Case& c : cases) {
    heads.emplace_back(c.head);
    dests.emplace_back(c.size + 9, std::byte{0x5a});
  }
  std::vector<GetIntoRequest> requests;
  for (size_t i = 0; i < cases.size(); ++i) {
    GetIntoRequest r{keys[cases[i].value], std::span(dests[i]).first(cases[i].size), heads[i],
                     i % 2 == 0 ? &hashes[i] : nullptr};
    r.partial = true;
    r.offset = cases[i].offset;
    requests.push_back(r);
  }
  std::vector<std::byte> whole(values[1].size());
  requests.push_back(GetIntoRequest{keys[1], whole, {}, &hashes.back()});
  std::vector<Result<uint64_t>> got = store_->BatchGetInto(requests);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const std::string& value = values[c.value];
    ASSERT_TRUE(got[i].ok()) << i << ": " << got[i].status();
    EXPECT_EQ(*got[i], value.size()) << i;
    if (c.head > 0) EXPECT_EQ(std::memcmp(heads[i].data(), value.data() + c.offset, c.head), 0) << i;
    std::string_view data(value.data() + c.offset + c.head, c.size);
    EXPECT_EQ(std::memcmp(dests[i].data(), data.data(), c.size), 0) << i;
    EXPECT_EQ(dests[i][c.size], std::byte{0x5a}) << i << ": wrote past the range";
    if (i % 2 == 0) EXPECT_EQ(hashes[i], Xxh3(AsBytes(data))) << i;
  }
  ASSERT_TRUE(got.back().ok()) << got.back().status();
  EXPECT_EQ(hashes.back(), Xxh3(AsBytes(values[1])));
  // A range past the end of the value.
  std::vector<std::byte> past(8);
  GetIntoRequest beyond{keys[1], past};
  beyond.partial = true;
  beyond.offset = values[1].size() - 4;
  Result<uint64_t> refused = store_->BatchGetInto({&beyond, 1})[0];
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << refused.status();
  EXPECT_NE(refused.status().message().find(std::to_string(values[1].size())), std::string_view::npos);
}

TEST_P(StoreConformance, LargeValueRoundTrips) {
  std::vector<uint8_t> big(32u << 20);
  std::iota(big.begin(), big.end(), 0);
  ASSERT_TRUE(store_->Put(Key("large"), std::as_bytes(std::span(big))).ok());
  Result<Buffer> got = store_->Get(Key("large"));
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), big.size());
  EXPECT_EQ(std::memcmp(got->data(), big.data(), big.size()), 0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(got->data()) % kBufferAlignment, 0u);
}

TEST_P(StoreConformance, ConcurrentWritersAndReaders) {
  if (CannotList()) GTEST_SKIP() << GetParam().name << " cannot list";
  constexpr int kThreads = 4, kRounds = 200;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        std::string key = Key("t" + std::to_string(t) + "/" + std::to_string(i % 10));
        std::string value = std::to_string(t) + ":" + std::to_string(i);
        if (!store_->Put(key, AsBytes(value)).ok()) ++failures;
        Result<Buffer> got = store_->Get(key);
        if (!got.ok() || std::string_view(reinterpret_cast<const char*>(got->data()), got->size()) != value) {
          ++failures;  // each thread owns its keys, so it reads its own write
        }
        // Everyone also lists the shared prefix while others write.
        if (!store_->List(prefix_).ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(store_->List(prefix_)->size(), static_cast<size_t>(kThreads * 10));
}

}  // namespace mooncake_connector::testing

namespace mooncake_connector::testing {

TEST_P(StoreConformance, ControlCharactersInKeysAreInvalid) {
  for (std::string bad : {std::string("a\nb"), std::string("a\x1f" "b"), std::string("\x7f"),
                          std::string("nul\0x", 5)}) {
    EXPECT_EQ(store_->Put(Key(bad), AsBytes("x")).code(), StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(store_->Put(Key("ünïcode ok"), AsBytes("x")).ok());
}

TEST_P(StoreConformance, EmptyAndOverlongKeysAreInvalid) {
  std::string overlong(kMaxKeyBytes + 1, 'k');
  for (const std::string& bad : {std::string(), overlong}) {
    EXPECT_EQ(store_->Put(bad, AsBytes("x")).code(), StatusCode::kInvalidArgument) << bad.size();
    EXPECT_EQ(store_->Get(bad).status().code(), StatusCode::kInvalidArgument) << bad.size();
    EXPECT_EQ(store_->Exists(bad).status().code(), StatusCode::kInvalidArgument) << bad.size();
  }
}

}  // namespace mooncake_connector::testing

namespace mooncake_connector::testing {
namespace {

// A value that names its key, writer and sequence number, with a body that
// follows from them: a read can prove it is one whole write of that key.
std::vector<std::byte> Tagged(uint32_t key, uint32_t writer, uint32_t seq) {
  size_t n = (seq % 7 == 0) ? 5000 + seq : 12 + (seq * 37 + writer * 11) % 1000;
  std::vector<std::byte> v(n);
  uint32_t head[3] = {key, writer, seq};
  std::memcpy(v.data(), head, sizeof head);
  for (size_t i = sizeof head; i < n; ++i) v[i] = std::byte((i * 131 + writer * 7 + seq * 13 + key) & 0xff);
  return v;
}

// What a value that is not a whole write of `key` holds, for the failure
// message: its size, its tag, and how much of the write it names it matches.
std::string DescribeWrongValue(uint32_t key, ConstBytes got) {
  std::string out = "key #" + std::to_string(key) + ": a " + std::to_string(got.size()) + "-byte value";
  if (got.size() < 12) return out;
  uint32_t head[3];
  std::memcpy(head, got.data(), sizeof head);
  out += " tagged key #" + std::to_string(head[0]) + " writer " + std::to_string(head[1]) + " seq " +
         std::to_string(head[2]);
  if (head[1] < 2 && head[2] < 100000) {
    std::vector<std::byte> w = Tagged(head[0], head[1], head[2]);
    size_t same = 0;
    while (same < std::min(w.size(), got.size()) && w[same] == got[same]) ++same;
    out += "; that write has " + std::to_string(w.size()) + " bytes, the first " + std::to_string(same) +
           " match";
  }
  return out;
}

bool IsTaggedValueOf(uint32_t key, ConstBytes got) {
  if (got.size() < 12) return false;
  uint32_t head[3];
  std::memcpy(head, got.data(), sizeof head);
  if (head[0] != key) return false;
  std::vector<std::byte> expected = Tagged(key, head[1], head[2]);
  return expected.size() == got.size() && std::memcmp(expected.data(), got.data(), got.size()) == 0;
}

}  // namespace

BatchAttackResult ConcurrentBatchAttack(Store& store, const std::vector<std::string>& keys, int rounds) {
  const uint32_t n = static_cast<uint32_t>(keys.size());
  std::atomic<int> wrong{0}, errors{0}, reads{0};
  auto put_round = [&](uint32_t writer, uint32_t seq) {
    std::vector<std::vector<std::byte>> values;
    for (uint32_t k = 0; k < n; ++k) values.push_back(Tagged(k, writer, seq));
    std::vector<ConstBytes> parts(values.begin(), values.end());
    std::vector<PutRequest> requests;
    for (uint32_t k = 0; k < n; ++k) requests.push_back({keys[k], {&parts[k], 1}});
    for (const Status& s : store.BatchPut(requests, WriteOptions{})) {
      if (!s.ok()) ++errors;
    }
  };
  put_round(0, 0);  // readers that run first find values, not only misses
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < 5; ++t) {
    threads.emplace_back([&, t] {
      for (uint32_t i = 0; i < static_cast<uint32_t>(rounds); ++i) {
        if (t < 2) {
          put_round(t, i);
        } else if (t == 2) {
          if (i % 8 != 7) continue;
          Status s = store.Remove(keys[i % n]);
          if (!s.ok() && s.code() != StatusCode::kNotFound) ++errors;
        } else {
          std::vector<std::vector<std::byte>> dest(n, std::vector<std::byte>(6000));
          std::vector<GetIntoRequest> requests;
          for (uint32_t k = 0; k < n; ++k) requests.push_back({keys[k], dest[k]});
          std::vector<Result<uint64_t>> got = store.BatchGetInto(requests);
          for (uint32_t k = 0; k < n; ++k) {
            if (!got[k].ok()) {
              if (got[k].status().code() != StatusCode::kNotFound) ++errors;
              continue;
            }
            ++reads;
            ConstBytes value = ConstBytes(dest[k]).first(*got[k]);
            if (!IsTaggedValueOf(k, value)) {
              if (++wrong == 1) ADD_FAILURE() << DescribeWrongValue(k, value);
            }
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  return {reads.load(), wrong.load(), errors.load()};
}

TEST_P(StoreConformance, ConcurrentBatchCallsOnSharedKeysReturnWholeValues) {
  // Batched puts and gets of shared keys (mostly small values, which
  // mooncake:// moves with one native call) against each other and removes.
  // Against the real Mooncake this found threads of one client ending each
  // other's writes of a key (docs/mooncake_layout.md, guarantee 6): rare
  // reads of zeros or of older values' bytes, mostly under machine load.
  std::vector<std::string> keys;
  for (int k = 0; k < 6; ++k) keys.push_back(Key("shared" + std::to_string(k)));
  BatchAttackResult r = ConcurrentBatchAttack(*store_, keys, 40);
  EXPECT_EQ(r.wrong, 0);
  EXPECT_EQ(r.errors, 0);
  EXPECT_GT(r.reads, 0);
}

}  // namespace mooncake_connector::testing

namespace mooncake_connector::testing {
namespace {

// Byte i of version v of a large value: the first 8 bytes name the version.
std::string LargeVersion(uint64_t version, size_t size) {
  std::string value(size, '\0');
  std::memcpy(value.data(), &version, sizeof version);
  for (size_t i = sizeof version; i < size; ++i) value[i] = static_cast<char>((version * 131 + i / 4093 + i) & 0xff);
  return value;
}

}  // namespace

TEST_P(StoreConformance, ConcurrentLargeBatchReadsAreWholeValuesHashedOrNot) {
  // One batch of several large values (over 8 MiB in all, each over 4 MiB:
  // memory:// copies such a batch in pieces on several threads when the
  // caller does not hash it) read against writers overwriting the same keys
  // with other versions: every read is one whole version, with and without
  // the hash, exact or not (mooncake:// reads exact ones straight into
  // place), whose hash is that of the bytes delivered (exact ones in pieces
  // of 1 MiB, hashed piece by piece on several threads by memory://).
  constexpr size_t kSize = (size_t{9} << 20) / 2 + 12345;  // 4.5 MiB and a bit
  constexpr int kKeys = 3, kWrites = 6, kReads = 6;
  std::vector<std::string> keys;
  for (int k = 0; k < kKeys; ++k) {
    keys.push_back(Key("large" + std::to_string(k)));
    ASSERT_TRUE(store_->Put(keys.back(), AsBytes(LargeVersion(k, kSize))).ok());
  }
  std::atomic<int> wrong{0}, errors{0}, reads{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      for (int i = 0; i < kWrites; ++i) {
        for (int k = 0; k < kKeys; ++k) {
          uint64_t version = 1000 * (w + 1) + 10 * i + k;
          if (!store_->Put(keys[k], AsBytes(LargeVersion(version, kSize))).ok()) ++errors;
        }
      }
    });
  }
  for (int reader = 0; reader < 4; ++reader) {
    threads.emplace_back([&, reader] {
      const bool hashed = (reader & 1) != 0, exact = (reader & 2) != 0;
      constexpr uint64_t kPiece = uint64_t{1} << 20;
      std::vector<std::vector<std::byte>> heads(kKeys, std::vector<std::byte>(16)),
          rests(kKeys, std::vector<std::byte>(kSize - 16));
      std::vector<uint64_t> hashes(kKeys, 0);
      for (int i = 0; i < kReads; ++i) {
        std::vector<GetIntoRequest> requests;
        for (int k = 0; k < kKeys; ++k) {
          requests.push_back(GetIntoRequest{keys[k], rests[k], heads[k], hashed ? &hashes[k] : nullptr, exact});
          requests.back().data_xxh3_piece = exact ? kPiece : 0;
        }
        std::vector<Result<uint64_t>> got = store_->BatchGetInto(requests);
        for (int k = 0; k < kKeys; ++k) {
          if (!got[k].ok() || *got[k] != kSize) {
            ++errors;
            continue;
          }
          ++reads;
          uint64_t version = 0;
          std::memcpy(&version, heads[k].data(), sizeof version);
          std::string expected = LargeVersion(version, kSize);
          if (std::memcmp(heads[k].data(), expected.data(), 16) != 0 ||
              std::memcmp(rests[k].data(), expected.data() + 16, kSize - 16) != 0) {
            ++wrong;
          } else if (hashed && hashes[k] != Xxh3Pieces(ConstBytes(rests[k].data(), rests[k].size()),
                                                       exact ? kPiece : 0)) {
            ++wrong;
          }
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(reads.load(), 4 * kReads * kKeys);
}

TEST_P(StoreConformance, ConcurrentLargeBatchWritesAndRemovesLeaveWholeValues) {
  // Batches of new large values (mooncake:// puts those whose keys are free
  // in one gathered call, straight from the caller's parts) by two writers
  // at once, on the same keys, with a remover making keys free again and
  // readers (exact or not) reading them: every read is one whole version
  // written to that very key, or NotFound.
  constexpr size_t kSize = (size_t{3} << 19) + 777;  // 1.5 MiB and a bit: one raw object
  constexpr int kKeys = 3, kRounds = 6;
  std::vector<std::string> keys;
  for (int k = 0; k < kKeys; ++k) keys.push_back(Key("fresh-large" + std::to_string(k)));
  auto version_of = [](int k, int writer, int round) { return uint64_t(1000000) * (k + 1) + 1000 * (writer + 1) + round; };
  for (int k = 0; k < kKeys; ++k) {  // readers that run first find values
    ASSERT_TRUE(store_->Put(keys[k], AsBytes(LargeVersion(version_of(k, 2, 0), kSize))).ok());
  }
  std::atomic<int> wrong{0}, errors{0}, reads{0}, rounds_written{0}, writers_left{2};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      for (int i = 0; i < kRounds; ++i) {
        std::vector<std::string> values;
        for (int k = 0; k < kKeys; ++k) values.push_back(LargeVersion(version_of(k, w, i), kSize));
        std::vector<std::array<ConstBytes, 2>> parts;
        for (const std::string& v : values) parts.push_back({AsBytes(v).first(64), AsBytes(v).subspan(64)});
        std::vector<PutRequest> requests;
        for (int k = 0; k < kKeys; ++k) requests.push_back({keys[k], parts[k]});
        for (const Status& st : store_->BatchPut(requests, WriteOptions{})) {
          if (!st.ok()) ++errors;
        }
        ++rounds_written;
      }
      --writers_left;
    });
  }
  threads.emplace_back([&] {  // a key made free again after each round written
    for (int i = 0; i < kRounds; ++i) {
      while (rounds_written.load() <= i && writers_left.load() > 0) std::this_thread::yield();
      Status st = store_->Remove(keys[i % kKeys]);
      if (!st.ok() && st.code() != StatusCode::kNotFound) ++errors;
    }
  });
  for (int reader = 0; reader < 2; ++reader) {
    threads.emplace_back([&, reader] {
      std::vector<std::vector<std::byte>> heads(kKeys, std::vector<std::byte>(16)),
          rests(kKeys, std::vector<std::byte>(kSize - 16));
      // At least kRounds reads, and on until the writers are done.
      for (int i = 0; i < kRounds || writers_left.load() > 0; ++i) {
        std::vector<GetIntoRequest> requests;
        for (int k = 0; k < kKeys; ++k) requests.push_back(GetIntoRequest{keys[k], rests[k], heads[k], nullptr, reader == 1});
        std::vector<Result<uint64_t>> got = store_->BatchGetInto(requests);
        for (int k = 0; k < kKeys; ++k) {
          if (!got[k].ok()) {
            if (got[k].status().code() != StatusCode::kNotFound) ++errors;
            continue;
          }
          ++reads;
          uint64_t version = 0;
          std::memcpy(&version, heads[k].data(), sizeof version);
          std::string expected = LargeVersion(version, kSize);
          if (*got[k] != kSize || version / 1000000 != static_cast<uint64_t>(k + 1) ||
              std::memcmp(heads[k].data(), expected.data(), 16) != 0 ||
              std::memcmp(rests[k].data(), expected.data() + 16, kSize - 16) != 0) {
            ++wrong;
          }
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(errors.load(), 0);
  EXPECT_GT(reads.load(), 0);
  // Once the writers are done, each key holds one of their versions, whole.
  for (int k = 0; k < kKeys; ++k) {
    std::vector<std::byte> value(kSize);
    Result<uint64_t> got = store_->GetInto(keys[k], value);
    if (!got.ok() && got.status().code() == StatusCode::kNotFound) continue;  // removed last
    ASSERT_TRUE(got.ok()) << got.status();
    uint64_t version = 0;
    std::memcpy(&version, value.data(), sizeof version);
    EXPECT_EQ(version / 1000000, static_cast<uint64_t>(k + 1));
    EXPECT_EQ(std::memcmp(value.data(), LargeVersion(version, kSize).data(), kSize), 0);
  }
}

TEST_P(StoreConformance, ExactReadsAreReadsOfAKnownSize) {
  // Reads that say the value's size (model tensors): the bytes and the hash
  // of a matching value; a longer value refused as too large for the buffer,
  // a shorter one read with its own size, as without `exact`.
  constexpr size_t kSize = (size_t{3} << 20) + 4321;
  const std::string key = Key("exact");
  const std::string value = LargeVersion(7, kSize);
  ASSERT_TRUE(store_->Put(key, AsBytes(value)).ok());
  for (bool hashed : {false, true}) {
    std::vector<std::byte> head(24), rest(kSize - 24);
    uint64_t hash = 0;
    GetIntoRequest r{key, rest, head, hashed ? &hash : nullptr, /*exact=*/true};
    std::vector<Result<uint64_t>> got = store_->BatchGetInto({&r, 1});
    ASSERT_TRUE(got[0].ok()) << got[0].status();
    EXPECT_EQ(*got[0], kSize);
    EXPECT_EQ(std::memcmp(head.data(), value.data(), head.size()), 0);
    EXPECT_EQ(std::memcmp(rest.data(), value.data() + head.size(), rest.size()), 0);
    if (hashed) EXPECT_EQ(hash, Xxh3(ConstBytes(rest.data(), rest.size())));

    std::vector<std::byte> small(kSize - 24 - 4096);
    GetIntoRequest too_small{key, small, head, hashed ? &hash : nullptr, /*exact=*/true};
    got = store_->BatchGetInto({&too_small, 1});
    EXPECT_EQ(got[0].status().code(), StatusCode::kInvalidArgument) << got[0].status();

    std::vector<std::byte> large(kSize - 24 + 4096);
    GetIntoRequest too_large{key, large, head, hashed ? &hash : nullptr, /*exact=*/true};
    got = store_->BatchGetInto({&too_large, 1});
    ASSERT_TRUE(got[0].ok()) << got[0].status();
    EXPECT_EQ(*got[0], kSize);
    EXPECT_EQ(std::memcmp(large.data(), value.data() + head.size(), kSize - head.size()), 0);
    if (hashed) EXPECT_EQ(hash, Xxh3(ConstBytes(large.data(), kSize - head.size())));
  }
  ASSERT_TRUE(store_->Remove(key).ok());
}

TEST_P(StoreConformance, FeaturesKeepWhatTheyPromise) {
  const StoreFeatures f = store_->Features();
  // lends_values: BatchView lends the stored bytes; otherwise Unimplemented.
  ASSERT_TRUE(store_->Put(Key("lent"), AsBytes("lent bytes")).ok());
  const std::string lent = Key("lent");
  std::string_view keys[] = {lent};
  std::vector<Result<Buffer>> views = store_->BatchView(keys);
  if (f.lends_values) {
    ASSERT_TRUE(views[0].ok()) << views[0].status();
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(views[0]->data()), views[0]->size()), "lent bytes");
  } else {
    EXPECT_EQ(views[0].status().code(), StatusCode::kUnimplemented) << views[0].status();
  }
  // checksums_values_above: a value above it written with a wrong
  // value_xxh3 records that checksum, and reads of it fail; at or below
  // it, the given checksum is not kept and reads succeed.
  const uint64_t above = f.checksums_values_above;
  if (above < (uint64_t{64} << 20)) {
    std::vector<std::byte> big(above + 1, std::byte{5});
    ConstBytes whole(big);
    const std::string key = Key("checked");
    PutRequest wrong{key, {&whole, 1}, Xxh3(whole) ^ 1};
    ASSERT_TRUE(store_->BatchPut({&wrong, 1}, {})[0].ok());
    EXPECT_EQ(store_->Get(key).status().code(), StatusCode::kDataLoss);
    EXPECT_TRUE(store_->RecordsValueChecksum(above + 1));
    // value_xxh3_later in its place: asked for once (a write that does not
    // fail), on the calling thread, and what it returns is what reads check
    // against.
    for (const bool right : {true, false}) {
      const std::string later_key = Key(right ? "later-right" : "later-wrong");
      int calls = 0;
      const std::thread::id caller = std::this_thread::get_id();
      PutRequest later{later_key, {&whole, 1}};
      later.value_xxh3_later = [&] {
        ++calls;
        EXPECT_EQ(std::this_thread::get_id(), caller);
        return right ? Xxh3(whole) : Xxh3(whole) ^ 1;
      };
      ASSERT_TRUE(store_->BatchPut({&later, 1}, {})[0].ok());
      EXPECT_EQ(calls, 1);
      Result<Buffer> got = store_->Get(later_key);
      if (right) {
        ASSERT_TRUE(got.ok()) << got.status();
        EXPECT_EQ(got->size(), big.size());
      } else {
        EXPECT_EQ(got.status().code(), StatusCode::kDataLoss);
      }
    }
  }
  {
    const uint64_t size = std::min(above, uint64_t{1} << 20);
    EXPECT_FALSE(store_->RecordsValueChecksum(size));
    std::vector<std::byte> small(size, std::byte{6});
    ConstBytes whole(small);
    const std::string key = Key("unchecked");
    PutRequest wrong{key, {&whole, 1}, Xxh3(whole) ^ 1};
    ASSERT_TRUE(store_->BatchPut({&wrong, 1}, {})[0].ok());
    Result<Buffer> b = store_->Get(key);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(b->size(), size);
  }
  // chunk_bytes: a value larger than a chunk still reads back whole.
  if (f.chunk_bytes > 0 && f.chunk_bytes < (uint64_t{32} << 20)) {
    std::vector<std::byte> v(2 * f.chunk_bytes + 3);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::byte>(i * 7);
    ASSERT_TRUE(store_->Put(Key("chunks"), ConstBytes(v)).ok());
    Result<Buffer> b = store_->Get(Key("chunks"));
    ASSERT_TRUE(b.ok()) << b.status();
    ASSERT_EQ(b->size(), v.size());
    EXPECT_EQ(std::memcmp(b->data(), v.data(), v.size()), 0);
  }
  // read_memory: what it lends (or ordinary memory without it) holds what an
  // exact read puts there, across two streaming loads' ends (when slow
  // memory is set up) too.
  for (int load = 0; load < 3; ++load) {
    std::vector<std::byte> v((size_t{3} << 20) + 40);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::byte>(i * 13 + load);
    const std::string key = Key("lent-memory");
    ASSERT_TRUE(store_->Put(key, ConstBytes(v)).ok());
    std::vector<std::byte> head(40);
    Result<Buffer> memory = store_->AllocateForRead(v.size() - head.size());
    ASSERT_TRUE(memory.ok()) << memory.status();
    uint64_t hash = 0;
    GetIntoRequest r{key, memory->bytes(), head, &hash, /*exact=*/true};
    std::vector<Result<uint64_t>> got = store_->BatchGetInto({&r, 1});
    ASSERT_TRUE(got[0].ok()) << got[0].status();
    EXPECT_EQ(std::memcmp(head.data(), v.data(), head.size()), 0);
    EXPECT_EQ(std::memcmp(memory->data(), v.data() + head.size(), memory->size()), 0);
    EXPECT_EQ(hash, Xxh3(memory->bytes()));
    if (f.read_memory != nullptr) f.read_memory->StreamingLoadDone(v.size(), v.size());
  }
}

}  // namespace mooncake_connector::testing
