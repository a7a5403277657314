#include "mooncake_connector/value_format.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

namespace mooncake_connector {
namespace {

// A value made of a raw JSON header (length prefix added) and data bytes.
Buffer MakeValue(std::string_view json, std::string_view data, uint64_t declared_len = UINT64_MAX) {
  uint64_t len = declared_len == UINT64_MAX ? json.size() : declared_len;
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  bytes += json;
  bytes += data;
  Buffer b = *Buffer::Allocate(bytes.size());
  std::memcpy(b.data(), bytes.data(), bytes.size());
  return b;
}

std::string Join(const EncodedTensor& e) {
  std::string out = e.header;
  out.append(reinterpret_cast<const char*>(e.data.data()), e.data.size());
  return out;
}

TEST(ValueFormat, EncodeDecodeRoundTripsEveryDType) {
  for (DType d : kAllDTypes) {
    for (const Shape& shape : {Shape{}, Shape{0}, Shape{7}, Shape{2, 3, 4}}) {
      Tensor t = *Tensor::Allocate(d, shape);
      for (uint64_t i = 0; i < t.nbytes(); ++i) {
        t.data()[i] = d == DType::kBool ? std::byte(i % 2) : std::byte(i * 37 + 11);
      }
      EncodedTensor e = *EncodeTensor(t.view());
      EXPECT_EQ(e.header.size() % kDataAlignment, 0u) << "data must start 64-aligned";
      std::string blob = Join(e);
      Buffer b = *Buffer::Allocate(blob.size());
      std::memcpy(b.data(), blob.data(), blob.size());
      Result<Tensor> back = DecodeTensor(b);
      ASSERT_TRUE(back.ok()) << back.status();
      EXPECT_EQ(back->dtype(), d);
      EXPECT_EQ(back->shape(), shape);
      ASSERT_EQ(back->nbytes(), t.nbytes());
      EXPECT_EQ(std::memcmp(back->data(), t.data(), t.nbytes()), 0);
      // Zero-copy: the decoded tensor lives inside the value's buffer.
      EXPECT_EQ(back->data(), b.data() + e.header.size());
    }
  }
}

// Decided against the safetensors rules (docs/value_format.md, 10-13).
TEST(ValueFormat, RejectsWhatSafetensorsDoesNotAllow) {
  auto expect_corrupt = [](const Buffer& v, const std::string& why) {
    Result<Tensor> r = DecodeTensor(v);
    ASSERT_FALSE(r.ok()) << why;
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(std::string(r.status().message()).find(why), std::string::npos) << r.status();
  };
  const std::string one = R"({"tensor_bytes":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  ASSERT_TRUE(DecodeTensor(MakeValue(one + "   ", "x")).ok());
  expect_corrupt(MakeValue(one + std::string(3, '\0'), "x"), "padded with bytes other than spaces");
  expect_corrupt(MakeValue(one + "\n", "x"), "padded with bytes other than spaces");
  expect_corrupt(MakeValue(R"({"tensor_bytes":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                           R"("tensor_bytes":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x"),
                 "names a tensor twice");
  const std::string flag = R"({"tensor_bytes":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})";
  ASSERT_TRUE(DecodeTensor(MakeValue(flag, std::string("\x01\x00\x01", 3))).ok());
  expect_corrupt(MakeValue(flag, std::string("\x01\x02\x00", 3)), "neither 0 nor 1");
  std::string dims;
  for (size_t i = 0; i <= kMaxRank; ++i) dims += i ? ",1" : "1";
  expect_corrupt(MakeValue(R"({"tensor_bytes":{"dtype":"U8","shape":[)" + dims +
                           R"(],"data_offsets":[0,1]}})", "x"), "dimensions");
}

TEST(ValueFormat, HeaderIsSafetensorsJson) {
  Tensor t = *Tensor::Allocate(DType::kBF16, {2, 2});
  EncodedTensor e = *EncodeTensor(t.view());
  std::string json = e.header.substr(8);
  EXPECT_EQ(json.rfind(R"({"tensor_bytes":{"data_offsets":[0,8],"dtype":"BF16","shape":[2,2]}})", 0), 0u)
      << json;
  EXPECT_EQ(json.find_first_not_of(' ', json.find("}}") + 2), std::string::npos);
}

TEST(ValueFormat, ReadsUnalignedForeignValuesByCopying) {
  // safetensors pads to 8 bytes; this header is deliberately unpadded.
  std::string json = R"({"tensor_bytes":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  float v[2] = {1.5f, -2.0f};
  Buffer b = MakeValue(json, std::string_view(reinterpret_cast<char*>(v), 8));
  Result<Tensor> t = DecodeTensor(b);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(reinterpret_cast<float*>(t->data())[1], -2.0f);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data()) % 4, 0u);
}

TEST(ValueFormat, AcceptsMetadataAndOtherTensors) {
  std::string json = R"({"__metadata__":{"format":"pt"},"other":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                     R"("tensor_bytes":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}})";
  Result<Tensor> t = DecodeTensor(MakeValue(json, "abc"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(static_cast<char>(t->data()[0]), 'c');
}

struct Hostile {
  const char* name;
  std::string json;
  std::string data;
  uint64_t declared_len;
  const char* expect_in_message;
};

class HostileValue : public ::testing::TestWithParam<Hostile> {};

TEST_P(HostileValue, IsDataLossWithAReason) {
  const Hostile& h = GetParam();
  Result<Tensor> t = DecodeTensor(MakeValue(h.json, h.data, h.declared_len));
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(t.status().message().find(h.expect_in_message), std::string_view::npos) << t.status();
}

const std::string kGood = R"({"tensor_bytes":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";

INSTANTIATE_TEST_SUITE_P(
    All, HostileValue,
    ::testing::Values(
        Hostile{"HugeHeaderLength", kGood, "abcd", 200'000'000, "exceeds the limit"},
        Hostile{"HeaderPastEnd", kGood, "abcd", 1000, "runs past the end"},
        Hostile{"NotJson", "{not json}", "", UINT64_MAX, "not valid JSON"},
        Hostile{"NoBrace", "[1,2]", "", UINT64_MAX, "does not start with '{'"},
        Hostile{"Empty", "", "", UINT64_MAX, "does not start"},
        Hostile{"UnknownDType", R"({"tensor_bytes":{"dtype":"F4","shape":[4],"data_offsets":[0,4]}})", "abcd",
                UINT64_MAX, "unknown dtype"},
        Hostile{"ShapeMismatch", R"({"tensor_bytes":{"dtype":"F32","shape":[4],"data_offsets":[0,4]}})", "abcd",
                UINT64_MAX, "does not equal its byte range"},
        Hostile{"Truncated", kGood, "ab", UINT64_MAX, "truncated"},
        Hostile{"TrailingBytes", kGood, "abcdef", UINT64_MAX, "trailing"},
        Hostile{"Reversed", R"({"tensor_bytes":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", "abcd",
                UINT64_MAX, "reversed"},
        Hostile{"Hole", R"({"tensor_bytes":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})", "abcd",
                UINT64_MAX, "does not start where"},
        Hostile{"Overlap",
                R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"tensor_bytes":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
                "abcd", UINT64_MAX, "does not start where"},
        Hostile{"NegativeDim", R"({"tensor_bytes":{"dtype":"U8","shape":[-4],"data_offsets":[0,4]}})", "abcd",
                UINT64_MAX, "non-negative integer"},
        Hostile{"FloatDim", R"({"tensor_bytes":{"dtype":"U8","shape":[4.0],"data_offsets":[0,4]}})", "abcd",
                UINT64_MAX, "non-negative integer"},
        Hostile{"HugeOffset",
                R"({"tensor_bytes":{"dtype":"U8","shape":[4],"data_offsets":[18446744073709551612,0]}})", "abcd",
                UINT64_MAX, "reversed"},
        Hostile{"OffsetPastData", R"({"tensor_bytes":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})", "abcd",
                UINT64_MAX, "ends at byte 8"},
        Hostile{"MissingTensor", R"({"x":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", "abcd", UINT64_MAX,
                "no tensor named 'tensor_bytes'"},
        Hostile{"MissingField", R"({"tensor_bytes":{"dtype":"U8","shape":[4]}})", "abcd", UINT64_MAX,
                "lacks dtype"},
        Hostile{"BadMetadata", R"({"__metadata__":{"a":1},"tensor_bytes":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})",
                "abcd", UINT64_MAX, "must be strings"},
        Hostile{"DeepNesting", std::string("{\"a\":") + std::string(100000, '[') , "", UINT64_MAX, "nests too deeply"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(ValueFormat, ShortValues) {
  for (size_t n = 0; n < 8; ++n) {
    Buffer b = *Buffer::Allocate(n);
    std::memset(b.data(), 0, n);
    EXPECT_EQ(DecodeTensor(b).status().code(), StatusCode::kDataLoss);
  }
}

}  // namespace
}  // namespace mooncake_connector
