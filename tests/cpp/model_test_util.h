// Helpers shared by the model tests (model_test.cc, model_resume_test.cc,
// model_manifest_test.cc, model_directory_test.cc): per-test memory:// stores, filled tensors, and
// draining a reader.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mooncake_connector/connector.h"
#include "mooncake_connector/model.h"

namespace mooncake_connector::model_test {

// A store of its own per test: "memory://model-test-<test>-<n><path>".
inline std::string UniqueUrl(std::string_view path = "/org/model") {
  static std::atomic<int> counter{0};
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return "memory://model-test-" + std::string(info->name()) + "-" + std::to_string(counter++) +
         std::string(path);
}

inline std::unique_ptr<Connector> Open(const std::string& url) {
  Result<std::unique_ptr<Connector>> c = Connector::Create(url);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

// The connector of another model in the same store.
inline std::string SameStore(const std::string& url, std::string_view path) {
  size_t host_end = url.find('/', std::string_view("memory://").size());
  return url.substr(0, host_end) + std::string(path);
}

inline Tensor Filled(DType dtype, Shape shape, int seed) {
  Tensor t = *Tensor::Allocate(dtype, std::move(shape));
  for (uint64_t i = 0; i < t.nbytes(); ++i) t.data()[i] = static_cast<std::byte>((i * 31 + seed * 7 + 1) & 0xff);
  return t;
}

inline bool SameTensor(const Tensor& a, const TensorView& b) {
  return a.dtype() == b.dtype && a.shape() == b.shape && a.nbytes() == b.nbytes &&
         (a.nbytes() == 0 || std::memcmp(a.data(), b.data, a.nbytes()) == 0);
}

inline bool Contains(std::string_view text, std::string_view fragment) {
  return text.find(fragment) != std::string_view::npos;
}

#define EXPECT_STATUS(expr, code_, fragment)                                             \
  do {                                                                                   \
    ::mooncake_connector::Status st_ = (expr);                                           \
    EXPECT_EQ(st_.code(), ::mooncake_connector::StatusCode::code_) << st_;               \
    EXPECT_TRUE(Contains(st_.message(), fragment)) << st_ << " lacks '" << (fragment) << "'"; \
  } while (0)

// Drains a reader; fails the test on an error.
inline std::vector<NamedTensor> ReadAll(ModelReader& reader, size_t* batches = nullptr) {
  std::vector<NamedTensor> out;
  size_t n = 0;
  while (true) {
    Result<std::vector<NamedTensor>> batch = reader.NextBatch();
    EXPECT_TRUE(batch.ok()) << batch.status();
    if (!batch.ok() || batch->empty()) break;
    ++n;
    for (NamedTensor& t : *batch) out.push_back(std::move(t));
  }
  if (batches != nullptr) *batches = n;
  return out;
}

// The first error NextBatch gives while draining (OK if none).
inline Status DrainError(ModelReader& reader) {
  while (true) {
    Result<std::vector<NamedTensor>> batch = reader.NextBatch();
    if (!batch.ok()) return batch.status();
    if (batch->empty()) return Status::Ok();
  }
}

struct Sample {
  std::vector<Tensor> storage;
  std::vector<NamedTensorView> views;
};

// a (F32), a_tied (alias of a), b (BF16), c (0-d I64), d (U8), e (empty F16).
inline Sample MakeSample(int seed = 0) {
  Sample s;
  s.storage = {Filled(DType::kF32, {4, 8}, seed + 1), Filled(DType::kBF16, {3, 5}, seed + 2),
               Filled(DType::kI64, {}, seed + 3), Filled(DType::kU8, {100}, seed + 4),
               Filled(DType::kF16, {0, 3}, seed + 5)};
  s.views = {{"a", s.storage[0].view()},
             {"a_tied", s.storage[0].view()},
             {"b", s.storage[1].view()},
             {"c", s.storage[2].view()},
             {"d", s.storage[3].view()},
             {"e", s.storage[4].view()}};
  return s;
}

inline const TensorView* Find(const Sample& s, const std::string& name) {
  for (const NamedTensorView& v : s.views) {
    if (v.name == name) return &v.tensor;
  }
  return nullptr;
}

}  // namespace mooncake_connector::model_test
