#include "store/mooncake/chunked_value_internal.h"

#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <string>
#include <vector>

namespace mooncake_connector::mooncake {
namespace {

using HeaderBytes = std::array<std::byte, kChunkHeaderSize>;

ConstBytes AsBytes(std::string_view s) {
  return ConstBytes(reinterpret_cast<const std::byte*>(s.data()), s.size());
}

void Put64(HeaderBytes& h, size_t at, uint64_t v) {
  for (int i = 0; i < 8; ++i) h[at + i] = std::byte((v >> (8 * i)) & 0xff);
}

// Parses `bytes` and expects DataLoss whose message contains `reason`.
void ExpectCorrupt(ConstBytes bytes, const std::string& reason) {
  Result<ChunkHeader> r = ParseChunkHeader(bytes);
  ASSERT_FALSE(r.ok()) << "expected '" << reason << "'";
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status();
  EXPECT_NE(std::string(r.status().message()).find(reason), std::string::npos) << r.status();
}

TEST(ChunkHeader, MakeComputesChunkCount) {
  EXPECT_EQ(MakeChunkHeader(0, 16, 1).num_chunks, 0u);
  EXPECT_EQ(MakeChunkHeader(1, 16, 1).num_chunks, 1u);
  EXPECT_EQ(MakeChunkHeader(16, 16, 1).num_chunks, 1u);
  EXPECT_EQ(MakeChunkHeader(17, 16, 1).num_chunks, 2u);
  EXPECT_EQ(MakeChunkHeader(64, 16, 1).num_chunks, 4u);
  EXPECT_EQ(MakeChunkHeader(65, 16, 1).num_chunks, 5u);
  ChunkHeader h = MakeChunkHeader(100, 16, 0xabc);
  EXPECT_EQ(h.total_size, 100u);
  EXPECT_EQ(h.chunk_size, 16u);
  EXPECT_EQ(h.num_chunks, 7u);
  EXPECT_EQ(h.generation, 0xabcu);
}

TEST(ChunkHeader, EncodeParseRoundTrip) {
  const uint64_t chunk = uint64_t{16} << 20;
  for (uint64_t total : {uint64_t{0}, uint64_t{1}, chunk - 1, chunk, chunk + 1, 3 * chunk,
                         3 * chunk + 1, uint64_t{1} << 40}) {
    ChunkHeader h = MakeChunkHeader(total, chunk, 0x0123456789abcdefULL);
    HeaderBytes bytes = h.Encode();
    EXPECT_EQ(std::memcmp(bytes.data(), kChunkMagic.data(), kChunkMagic.size()), 0);
    Result<ChunkHeader> back = ParseChunkHeader(bytes);
    ASSERT_TRUE(back.ok()) << total << ": " << back.status();
    EXPECT_EQ(back->total_size, total);
    EXPECT_EQ(back->chunk_size, chunk);
    EXPECT_EQ(back->num_chunks, h.num_chunks);
    EXPECT_EQ(back->generation, 0x0123456789abcdefULL);
    EXPECT_EQ(back->Encode(), bytes);
  }
}

TEST(ChunkHeader, EncodedLayoutIsLittleEndian) {
  HeaderBytes b = MakeChunkHeader(100, 16, 0x1122334455667788ULL).Encode();
  EXPECT_EQ(b[8], std::byte{1});  // version
  EXPECT_EQ(b[16], std::byte{100});
  EXPECT_EQ(b[24], std::byte{16});
  EXPECT_EQ(b[32], std::byte{7});
  EXPECT_EQ(b[40], std::byte{0x88});
  EXPECT_EQ(b[47], std::byte{0x11});
  for (size_t i = 48; i < kChunkHeaderSize; ++i) EXPECT_EQ(b[i], std::byte{0}) << i;
}

TEST(ChunkHeader, ChunkKeyFormat) {
  ChunkHeader h = MakeChunkHeader(100, 16, 0xdeadbeefULL);
  std::string k = h.ChunkKey("model/w", 5);
  EXPECT_EQ(k, std::string("model/w") + '\x1f' + "00000000deadbeef.5");
  EXPECT_NE(k.find(kChunkKeySeparator), std::string::npos);
  EXPECT_TRUE(IsChunkKey(k));
  EXPECT_EQ(h.ChunkKey("k", 0), std::string("k\x1f") + "00000000deadbeef.0");
  ChunkHeader big = MakeChunkHeader(1, 1, 0xffffffffffffffffULL);
  EXPECT_EQ(big.ChunkKey("k", 18446744073709551615ULL),
            std::string("k\x1f") + "ffffffffffffffff.18446744073709551615");
  EXPECT_NE(h.ChunkKey("k", 1), h.ChunkKey("k", 2));
  EXPECT_NE(h.ChunkKey("k", 1), MakeChunkHeader(100, 16, 1).ChunkKey("k", 1));
}

TEST(ChunkHeader, IsChunkKeyFalseForNormalKeys) {
  for (const char* key : {"", "k", "model/layer.0.weight", "a.1", "00000000deadbeef.5", "x_1f"}) {
    EXPECT_FALSE(IsChunkKey(key)) << key;
  }
}

TEST(ChunkHeader, NeedsChunking) {
  const uint64_t chunk = 4096;
  std::string plain = "plain value";
  EXPECT_TRUE(NeedsChunking(0, {}, chunk));  // empty
  EXPECT_FALSE(NeedsChunking(plain.size(), AsBytes(plain), chunk));
  EXPECT_FALSE(NeedsChunking(chunk - 1, AsBytes(plain), chunk));
  EXPECT_FALSE(NeedsChunking(chunk, AsBytes(plain), chunk));  // exactly one object
  EXPECT_TRUE(NeedsChunking(chunk + 1, AsBytes(plain), chunk));
  std::string magic_value = std::string(kChunkMagic) + "xyz";
  EXPECT_TRUE(NeedsChunking(magic_value.size(), AsBytes(magic_value), chunk));
  std::string just_magic(kChunkMagic);
  EXPECT_TRUE(NeedsChunking(just_magic.size(), AsBytes(just_magic), chunk));
  // A prefix of the magic is not the magic.
  std::string partial = just_magic.substr(0, 7);
  EXPECT_FALSE(NeedsChunking(partial.size(), AsBytes(partial), chunk));
}

TEST(ChunkHeader, LooksLikeChunkHeader) {
  HeaderBytes b = MakeChunkHeader(100, 16, 1).Encode();
  EXPECT_TRUE(LooksLikeChunkHeader(kChunkHeaderSize, b));
  EXPECT_TRUE(LooksLikeChunkHeader(kChunkHeaderSize, ConstBytes(b).first(8)));
  EXPECT_FALSE(LooksLikeChunkHeader(kChunkHeaderSize - 1, b));
  EXPECT_FALSE(LooksLikeChunkHeader(kChunkHeaderSize + 1, b));
  EXPECT_FALSE(LooksLikeChunkHeader(0, {}));
  EXPECT_FALSE(LooksLikeChunkHeader(kChunkHeaderSize, ConstBytes(b).first(7)));
  std::string other(kChunkHeaderSize, 'x');
  EXPECT_FALSE(LooksLikeChunkHeader(kChunkHeaderSize, AsBytes(other)));
}

TEST(ChunkHeader, RejectsWrongSize) {
  HeaderBytes b = MakeChunkHeader(100, 16, 1).Encode();
  ExpectCorrupt(ConstBytes(b).first(63), "size");
  ExpectCorrupt(ConstBytes(b).first(0), "size");
  std::vector<std::byte> longer(b.begin(), b.end());
  longer.push_back(std::byte{0});
  ExpectCorrupt(longer, "size");
}

TEST(ChunkHeader, RejectsBadMagic) {
  for (size_t i = 0; i < kChunkMagic.size(); ++i) {
    HeaderBytes b = MakeChunkHeader(100, 16, 1).Encode();
    b[i] ^= std::byte{0x20};
    ExpectCorrupt(b, "bad magic");
  }
}

TEST(ChunkHeader, RejectsWrongVersion) {
  HeaderBytes b = MakeChunkHeader(100, 16, 1).Encode();
  b[8] = std::byte{2};
  ExpectCorrupt(b, "unsupported version 2");
  b[8] = std::byte{0};
  ExpectCorrupt(b, "unsupported version 0");
  b[8] = std::byte{1};
  b[11] = std::byte{1};
  ExpectCorrupt(b, "unsupported version");
}

TEST(ChunkHeader, RejectsNonzeroReservedBytes) {
  for (size_t i : {size_t{12}, size_t{13}, size_t{15}, size_t{48}, size_t{55}, size_t{63}}) {
    HeaderBytes b = MakeChunkHeader(100, 16, 1).Encode();
    b[i] = std::byte{1};
    ExpectCorrupt(b, "reserved bytes are not zero");
  }
}

TEST(ChunkHeader, RejectsTotalTooLarge) {
  HeaderBytes b = MakeChunkHeader(0, 16, 1).Encode();
  Put64(b, 16, kMaxValueBytes + 1);
  Put64(b, 24, kMaxValueBytes + 1);
  Put64(b, 32, 1);
  ExpectCorrupt(b, "total size too large");
  Put64(b, 16, ~uint64_t{0});
  ExpectCorrupt(b, "total size too large");
  // The limit itself is accepted.
  HeaderBytes at_limit = MakeChunkHeader(kMaxValueBytes, kMaxValueBytes, 1).Encode();
  EXPECT_TRUE(ParseChunkHeader(at_limit).ok());
}

TEST(ChunkHeader, RejectsZeroChunkSize) {
  HeaderBytes b = MakeChunkHeader(100, 16, 1).Encode();
  Put64(b, 24, 0);
  ExpectCorrupt(b, "zero chunk size");
  // Zero total with zero chunk size describes an empty value: fine.
  HeaderBytes empty = MakeChunkHeader(0, 16, 1).Encode();
  Put64(empty, 24, 0);
  Result<ChunkHeader> r = ParseChunkHeader(empty);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->num_chunks, 0u);
}

TEST(ChunkHeader, RejectsChunkCountMismatch) {
  for (uint64_t n : {uint64_t{0}, uint64_t{6}, uint64_t{8}, uint64_t{100}}) {
    HeaderBytes b = MakeChunkHeader(100, 16, 1).Encode();
    Put64(b, 32, n);
    ExpectCorrupt(b, "chunk count does not match");
  }
  HeaderBytes empty = MakeChunkHeader(0, 16, 1).Encode();
  Put64(empty, 32, 1);
  ExpectCorrupt(empty, "chunk count does not match");
}

TEST(ChunkHeader, RejectsTooManyChunks) {
  // Consistent sizes, but more chunks than a reader accepts.
  HeaderBytes b = MakeChunkHeader(kMaxChunks + 1, 1, 1).Encode();
  ExpectCorrupt(b, "too many chunks");
  HeaderBytes bogus = MakeChunkHeader(100, 16, 1).Encode();
  Put64(bogus, 32, ~uint64_t{0});
  ExpectCorrupt(bogus, "too many chunks");
  // Exactly the limit is accepted.
  EXPECT_TRUE(ParseChunkHeader(MakeChunkHeader(kMaxChunks, 1, 1).Encode()).ok());
}

TEST(ChunkHeader, CorruptMessagesNameTheFormat) {
  HeaderBytes b = MakeChunkHeader(100, 16, 1).Encode();
  b[0] = std::byte{0};
  Result<ChunkHeader> r = ParseChunkHeader(b);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("chunked-value header"), std::string::npos);
}

}  // namespace
}  // namespace mooncake_connector::mooncake
