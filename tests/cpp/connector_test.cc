#include "mooncake_connector/connector.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace mooncake_connector {
namespace {

std::unique_ptr<Connector> Open(std::string_view url, ConnectorOptions options = {}) {
  Result<std::unique_ptr<Connector>> c = Connector::Create(url, options);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

TEST(Connector, SetGetTensorAndStrings) {
  auto c = Open("memory://connector-basic/my-model");
  EXPECT_EQ(c->model_name(), "my-model");
  Tensor t = *Tensor::Allocate(DType::kF32, {2, 2});
  float values[4] = {1, 2, 3, 4};
  std::memcpy(t.data(), values, sizeof values);
  ASSERT_TRUE(c->Set("w", t.view()).ok());
  std::optional<Tensor> back = *c->Get("w");
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->shape(), (Shape{2, 2}));
  EXPECT_EQ(std::memcmp(back->data(), values, sizeof values), 0);

  ASSERT_TRUE(c->SetStr("cfg", "{\"hidden_size\": 1024} \xE2\x9C\x93").ok());
  EXPECT_EQ(**c->GetStr("cfg"), "{\"hidden_size\": 1024} \xE2\x9C\x93");
}

TEST(Connector, MissingKeysAreNullopt) {
  auto c = Open("memory://connector-missing");
  EXPECT_FALSE(c->Get("nope")->has_value());
  EXPECT_FALSE(c->GetStr("nope")->has_value());
  EXPECT_FALSE(*c->Exists("nope"));
  EXPECT_FALSE(*c->Remove("nope"));
}

TEST(Connector, SetOverwritesAndRemoveDeletes) {
  auto c = Open("memory://connector-overwrite");
  Tensor a = *Tensor::Allocate(DType::kI64, {3});
  Tensor b = *Tensor::Allocate(DType::kU8, {5, 1});
  ASSERT_TRUE(c->Set("k", a.view()).ok());
  ASSERT_TRUE(c->Set("k", b.view()).ok());
  EXPECT_EQ((*c->Get("k"))->shape(), (Shape{5, 1}));
  EXPECT_EQ((*c->Get("k"))->dtype(), DType::kU8);
  EXPECT_TRUE(*c->Remove("k"));
  EXPECT_FALSE(*c->Exists("k"));
}

TEST(Connector, WrongKindOfValueIsDataLoss) {
  auto c = Open("memory://connector-kinds");
  ASSERT_TRUE(c->SetStr("s", "text").ok());
  EXPECT_EQ(c->Get("s").status().code(), StatusCode::kDataLoss);
  Tensor t = *Tensor::Allocate(DType::kF32, {4});
  std::memset(t.data(), 0xff, t.nbytes());
  ASSERT_TRUE(c->Set("t", t.view()).ok());
  Status s = c->GetStr("t").status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_EQ(c->SetStr("bad", "\xff\xfe").code(), StatusCode::kInvalidArgument);
}

TEST(Connector, ListsByPrefix) {
  auto c = Open("memory://connector-list");
  for (const char* k : {"m/files/config.json", "m/keys/rank_0/w", "other"}) {
    ASSERT_TRUE(c->SetStr(k, "x").ok());
  }
  EXPECT_EQ(*c->List("m/"), (std::vector<std::string>{"m/files/config.json", "m/keys/rank_0/w"}));
  EXPECT_EQ(c->List("")->size(), 3u);
}

TEST(Connector, UnknownSchemeListsTheSupportedOnes) {
  Result<std::unique_ptr<Connector>> c = Connector::Create("s3://bucket/model");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("memory://"), std::string_view::npos) << c.status();
}

TEST(Connector, OptionsAreCheckedAndApplied) {
  Status unknown = Connector::Create("memory://opts?colour=red").status();
  EXPECT_EQ(unknown.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.message().find("colour"), std::string_view::npos);
  for (const char* device : {"tpu", "cuda:", "cuda:x", "cuda0", "cuda:12345", ""}) {
    EXPECT_EQ(Connector::Create("memory://", {.device = device}).status().code(),
              StatusCode::kInvalidArgument) << device;
  }
  for (const char* device : {"cpu", "cpu:0", "cuda", "cuda:0", "cuda:7"}) {
    EXPECT_TRUE(Connector::Create("memory://", {.device = device}).ok()) << device;
  }
  EXPECT_EQ(Connector::Create("memory://x?capacity=lots").status().code(), StatusCode::kInvalidArgument);

  // Keyword options override the URL's.
  auto c = Open("memory://connector-cap?capacity=1gb", {.options = {{"capacity", "100b"}}});
  Tensor big = *Tensor::Allocate(DType::kU8, {1000});
  EXPECT_EQ(c->Set("big", big.view()).code(), StatusCode::kResourceExhausted);
}

TEST(Connector, LocalDirLivesUntilClose) {
  auto c = Open("memory://connector-dir");
  std::string dir = *c->GetLocalDir();
  EXPECT_EQ(*c->GetLocalDir(), dir);
  ASSERT_TRUE(std::filesystem::is_directory(dir));
  std::ofstream(std::filesystem::path(dir) / "file.txt") << "x";
  ASSERT_TRUE(c->Close().ok());
  EXPECT_FALSE(std::filesystem::exists(dir));
  EXPECT_TRUE(c->Close().ok());
  EXPECT_EQ(c->Get("k").status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(c->GetLocalDir().status().code(), StatusCode::kFailedPrecondition);
}

TEST(Connector, ConcurrentCloseLetsOperationsUnderWayEnd) {
  // Writers and readers on other threads when the connector closes: each
  // call succeeds or fails with FailedPrecondition, and the store's last
  // user drops it (TSan: no race on it).
  for (int round = 0; round < 20; ++round) {
    auto c = Open("memory://connector-close-" + std::to_string(round));
    std::atomic<int> wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 200; ++i) {
          const std::string key = "k" + std::to_string(t);
          Status put = c->SetStr(key, "v" + std::to_string(i));
          Result<std::optional<std::string>> got = c->GetStr(key);
          for (const Status& s : {put, got.status()}) {
            if (!s.ok() && s.code() != StatusCode::kFailedPrecondition) wrong++;
          }
          if (got.ok() && *got != std::optional<std::string>("v" + std::to_string(i))) wrong++;
        }
      });
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200 * round));
    ASSERT_TRUE(c->Close().ok());
    for (std::thread& t : threads) t.join();
    EXPECT_EQ(wrong.load(), 0) << round;
    EXPECT_EQ(c->SetStr("after", "x").code(), StatusCode::kFailedPrecondition);
  }
}

TEST(Utf8, Validation) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain"));
  EXPECT_TRUE(IsValidUtf8("\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("\xC3"));          // truncated
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));      // overlong
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));  // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\x80"));
}

}  // namespace
}  // namespace mooncake_connector

namespace mooncake_connector {
namespace {

TEST(Connector, StringsAndTensorsNeverLookAlike) {
  auto c = Open("memory://connector-alike");
  Tensor zeros = *Tensor::Allocate(DType::kU8, {4});
  std::memset(zeros.data(), 0, 4);  // every byte of this value is ASCII
  ASSERT_TRUE(c->Set("t", zeros.view()).ok());
  EXPECT_EQ(c->GetStr("t").status().code(), StatusCode::kDataLoss);
  // The same bytes offered as text are refused.
  Buffer raw = *c->store().Get("t");
  std::string as_text(reinterpret_cast<const char*>(raw.data()), raw.size());
  EXPECT_EQ(c->SetStr("s", as_text).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mooncake_connector

namespace mooncake_connector {
namespace {

TEST(Connector, RawBytesRoundTrip) {
  auto c = Open("memory://connector-bytes");
  std::string raw("\x00\xff\x80 raw", 7);
  ASSERT_TRUE(c->SetBytes("f", std::as_bytes(std::span(raw.data(), raw.size()))).ok());
  std::optional<Buffer> back = *c->GetBytes("f");
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(back->data()), back->size()), raw);
  EXPECT_FALSE(c->GetBytes("missing")->has_value());
}

}  // namespace
}  // namespace mooncake_connector
