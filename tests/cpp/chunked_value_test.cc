#include "store/mooncake/chunked_value_internal.h"

#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <regex>
#include <string>
#include <tuple>
#include <vector>

#include "core/hash_internal.h"
#include "mooncake_connector/store.h"

namespace mooncake_connector::mooncake {
namespace {

using HeaderBytes = std::array<std::byte, kChunkHeaderSize>;
constexpr uint64_t kChunk = 4096;

ConstBytes AsBytes(std::string_view s) {
  return ConstBytes(reinterpret_cast<const std::byte*>(s.data()), s.size());
}

void Put64(HeaderBytes& h, size_t at, uint64_t v) {
  for (int i = 0; i < 8; ++i) h[at + i] = std::byte((v >> (8 * i)) & 0xff);
}

// A version-2 header as the release before version 3 wrote it (the number of
// chunks where version 3 has the checksum's head).
HeaderBytes V2(uint64_t total, uint64_t chunk, uint64_t generation, uint64_t checksum) {
  ChunkHeader h = MakeChunkHeader(total, chunk, generation, checksum);
  h.version = 2;
  return h.Encode();
}

// Recomputes a version-2 or -3 header's own checksum after a test edited a field,
// so that the field's own validation is what is tested.
HeaderBytes Reseal(HeaderBytes b) {
  Put64(b, 56, Xxh3({b.data(), 56}));
  return b;
}

// A version-1 header as earlier releases wrote it (no checksums), built
// byte by byte.
HeaderBytes V1(uint64_t total, uint64_t chunk, uint64_t generation) {
  HeaderBytes b{};
  std::memcpy(b.data(), kChunkMagic.data(), kChunkMagic.size());
  b[8] = std::byte{1};
  Put64(b, 16, total);
  Put64(b, 24, chunk);
  Put64(b, 32, total == 0 ? 0 : (total - 1) / chunk + 1);
  Put64(b, 40, generation);
  return b;
}

// Parses `bytes` and expects DataLoss whose message contains `reason`.
void ExpectCorrupt(ConstBytes bytes, const std::string& reason) {
  Result<ChunkHeader> r = ParseChunkHeader(bytes);
  ASSERT_FALSE(r.ok()) << "expected '" << reason << "'";
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status();
  EXPECT_NE(std::string(r.status().message()).find(reason), std::string::npos) << r.status();
}

TEST(ChunkHeader, MakeComputesChunkCount) {
  EXPECT_EQ(MakeChunkHeader(0, 16, 1, 0).num_chunks, 0u);
  EXPECT_EQ(MakeChunkHeader(1, 16, 1, 0).num_chunks, 1u);
  EXPECT_EQ(MakeChunkHeader(16, 16, 1, 0).num_chunks, 1u);
  EXPECT_EQ(MakeChunkHeader(17, 16, 1, 0).num_chunks, 2u);
  EXPECT_EQ(MakeChunkHeader(65, 16, 1, 0).num_chunks, 5u);
  ChunkHeader h = MakeChunkHeader(100, 16, 0xabc, 7);
  EXPECT_EQ(h.num_chunks, 7u);
  EXPECT_EQ(h.ChunkLength(0), 16u);
  EXPECT_EQ(h.ChunkLength(6), 4u);
  EXPECT_EQ(h.checksum, 7u);
}

TEST(ChunkHeader, EncodeParseRoundTrip) {
  const uint64_t chunk = uint64_t{16} << 20;
  for (uint32_t version : {3u, 2u}) {
    for (uint64_t total : {uint64_t{0}, uint64_t{1}, chunk - 1, chunk, chunk + 1, 3 * chunk,
                           uint64_t{1} << 40}) {
      ChunkHeader h = MakeChunkHeader(total, chunk, 0x0123456789abcdefULL, 0xfeedULL + total);
      h.version = version;
      if (version == 3) h.checksum_head = total / 3;
      HeaderBytes bytes = h.Encode();
      Result<ChunkHeader> back = ParseChunkHeader(bytes);
      ASSERT_TRUE(back.ok()) << total << ": " << back.status();
      EXPECT_EQ(back->version, version);
      EXPECT_TRUE(back->has_checksum());
      EXPECT_EQ(back->total_size, total);
      EXPECT_EQ(back->chunk_size, chunk);
      EXPECT_EQ(back->num_chunks, h.num_chunks);
      EXPECT_EQ(back->generation, 0x0123456789abcdefULL);
      EXPECT_EQ(back->checksum, 0xfeedULL + total);
      EXPECT_EQ(back->checksum_head, version == 3 ? total / 3 : 0);
      EXPECT_EQ(back->checksum_piece(), version == 3 ? chunk : 0);
      EXPECT_EQ(back->Encode(), bytes);
    }
  }
}

TEST(ChunkHeader, EncodedLayoutIsLittleEndian) {
  ChunkHeader h = MakeChunkHeader(100 * kChunk, kChunk, 0x1122334455667788ULL, 0);
  h.SetChecksum(0xa1, 0x1234);
  HeaderBytes b = h.Encode();
  EXPECT_EQ(b[8], std::byte{3});  // version
  EXPECT_EQ(b[17], std::byte{0x40});  // 100 * 4096 = 0x64000
  EXPECT_EQ(b[18], std::byte{0x06});
  EXPECT_EQ(b[25], std::byte{0x10});
  EXPECT_EQ(b[32], std::byte{0x34});  // the checksum's head
  EXPECT_EQ(b[33], std::byte{0x12});
  EXPECT_EQ(b[40], std::byte{0x88});
  EXPECT_EQ(b[47], std::byte{0x11});
  EXPECT_EQ(b[48], std::byte{0xa1});
  uint64_t self = 0;
  for (int i = 7; i >= 0; --i) self = (self << 8) | std::to_integer<uint64_t>(b[56 + i]);
  EXPECT_EQ(self, Xxh3({b.data(), 56}));
  HeaderBytes v2 = MakeChunkHeader(100 * kChunk, kChunk, 0x1122334455667788ULL, 0xa1).Encode();
  EXPECT_EQ(v2, V2(100 * kChunk, kChunk, 0x1122334455667788ULL, 0xa1));
  EXPECT_EQ(v2[8], std::byte{2});
  EXPECT_EQ(v2[32], std::byte{100});  // the number of chunks
  EXPECT_EQ(v2[33], std::byte{0});
}

TEST(ChunkHeader, ReadsVersion1) {
  Result<ChunkHeader> r = ParseChunkHeader(V1(100 * kChunk, kChunk, 9));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version, 1u);
  EXPECT_FALSE(r->has_checksum());
  EXPECT_EQ(r->num_chunks, 100u);
  EXPECT_EQ(r->Encode(), V1(100 * kChunk, kChunk, 9));  // written back as it was
  HeaderBytes bad = V1(100, kChunk, 9);
  bad[50] = std::byte{1};
  ExpectCorrupt(bad, "reserved bytes are not zero");
}

TEST(ChunkHeader, DetectsTornOrEditedHeaders) {
  HeaderBytes a = MakeChunkHeader(100 * kChunk, kChunk, 1, 11).Encode();
  HeaderBytes b = MakeChunkHeader(7 * kChunk, kChunk, 2, 22).Encode();
  for (size_t cut = 9; cut < kChunkHeaderSize; cut += 3) {
    HeaderBytes torn = a;
    std::memcpy(torn.data() + cut, b.data() + cut, kChunkHeaderSize - cut);
    if (torn == b) continue;
    ExpectCorrupt(torn, "header checksum mismatch");
  }
}

TEST(ChunkHeader, ChunkAndReservationKeys) {
  ChunkHeader h = MakeChunkHeader(100, 16, 0xdeadbeefULL, 0);
  std::string k = h.ChunkKey("model/w", 5);
  EXPECT_EQ(k, std::string("model/w") + '\x1f' + "00000000deadbeef.5");
  EXPECT_TRUE(IsChunkKey(k));
  EXPECT_EQ(h.ReservationKey("k"), std::string("k\x1f") + "00000000deadbeef.r");
  EXPECT_TRUE(IsChunkKey(h.ReservationKey("k")));
  EXPECT_NE(h.ChunkKey("k", 1), MakeChunkHeader(100, 16, 1, 0).ChunkKey("k", 1));
}

TEST(ChunkHeader, IsChunkKeyFalseForNormalKeys) {
  for (const char* key : {"", "k", "model/layer.0.weight", "a.1", "00000000deadbeef.5", "x_1f"}) {
    EXPECT_FALSE(IsChunkKey(key)) << key;
  }
}

TEST(ChunkHeader, PatternMatchesExactlyTheKeysObjects) {
  for (std::string key : {"k", "a.b", "m/(x)+[y]*?{2}|^$\\", "ü space-key"}) {
    std::regex re(ChunkObjectsPattern(key), std::regex::ECMAScript);
    ChunkHeader h = MakeChunkHeader(100, 16, 0x1234, 0);
    EXPECT_TRUE(std::regex_search(h.ChunkKey(key, 0), re)) << key;
    EXPECT_TRUE(std::regex_search(h.ChunkKey(key, 17), re)) << key;
    EXPECT_TRUE(std::regex_search(h.ReservationKey(key), re)) << key;
    EXPECT_FALSE(std::regex_search(key, re)) << key;
    EXPECT_FALSE(std::regex_search(h.ChunkKey(key + "x", 0), re)) << key;
    EXPECT_FALSE(std::regex_search(h.ChunkKey("x" + key, 0), re)) << key;
    EXPECT_FALSE(std::regex_search(key + "\x1f" + "zz", re)) << key;
  }
}

TEST(ChunkHeader, NeedsChunking) {
  std::string plain = "plain value";
  EXPECT_TRUE(NeedsChunking(0, {}, kChunk));  // empty
  EXPECT_FALSE(NeedsChunking(plain.size(), AsBytes(plain), kChunk));
  EXPECT_FALSE(NeedsChunking(kChunk, AsBytes(plain), kChunk));  // exactly one object
  EXPECT_TRUE(NeedsChunking(kChunk + 1, AsBytes(plain), kChunk));
  EXPECT_TRUE(NeedsChunking(kChunkHeaderSize, AsBytes(plain), kChunk));  // header-sized
  EXPECT_FALSE(NeedsChunking(kChunkHeaderSize - 1, AsBytes(plain), kChunk));
  EXPECT_FALSE(NeedsChunking(kChunkHeaderSize + 1, AsBytes(plain), kChunk));
  std::string magic_value = std::string(kChunkMagic) + "xyz";
  EXPECT_TRUE(NeedsChunking(magic_value.size(), AsBytes(magic_value), kChunk));
  std::string partial(kChunkMagic.substr(0, 7));
  EXPECT_FALSE(NeedsChunking(partial.size(), AsBytes(partial), kChunk));
}

TEST(ChunkHeader, LooksLikeChunkHeader) {
  HeaderBytes b = MakeChunkHeader(100, 16, 1, 0).Encode();
  EXPECT_TRUE(LooksLikeChunkHeader(kChunkHeaderSize, b));
  EXPECT_FALSE(LooksLikeChunkHeader(kChunkHeaderSize - 1, b));
  EXPECT_FALSE(LooksLikeChunkHeader(kChunkHeaderSize + 1, b));
  EXPECT_FALSE(LooksLikeChunkHeader(0, {}));
  EXPECT_FALSE(LooksLikeChunkHeader(kChunkHeaderSize, ConstBytes(b).first(7)));
}

TEST(ChunkHeader, RejectsWrongSizeAndMagic) {
  HeaderBytes b = MakeChunkHeader(100, kChunk, 1, 0).Encode();
  ExpectCorrupt(ConstBytes(b).first(63), "size");
  std::vector<std::byte> longer(b.begin(), b.end());
  longer.push_back(std::byte{0});
  ExpectCorrupt(longer, "size");
  for (size_t i = 0; i < kChunkMagic.size(); ++i) {
    HeaderBytes m = b;
    m[i] ^= std::byte{0x20};
    ExpectCorrupt(m, "bad magic");
  }
}

TEST(ChunkHeader, RejectsUnknownVersions) {
  HeaderBytes b = MakeChunkHeader(100, kChunk, 1, 0).Encode();
  for (uint8_t v : {0, 4, 255}) {
    b[8] = std::byte{v};
    ExpectCorrupt(Reseal(b), "unsupported version " + std::to_string(v));
  }
}

TEST(ChunkHeader, RejectsUnknownFlags) {
  for (auto [at, value] : {std::pair{12, 2}, std::pair{13, 1}, std::pair{15, 0x80}}) {
    HeaderBytes b = MakeChunkHeader(100, kChunk, 1, 0).Encode();
    b[at] = std::byte(value);
    ExpectCorrupt(Reseal(b), "reserved bytes are not zero");
  }
}

TEST(ChunkHeader, TombstoneRoundTripsAndHasNoSize) {
  HeaderBytes b = MakeTombstone(5).Encode();
  EXPECT_EQ(b[12], std::byte{1});
  Result<ChunkHeader> t = ParseChunkHeader(b);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->tombstone);
  EXPECT_EQ(t->total_size, 0u);
  EXPECT_EQ(t->num_chunks, 0u);
  EXPECT_FALSE(ParseChunkHeader(MakeChunkHeader(0, 0, 5, 0).Encode())->tombstone);
  HeaderBytes sized = MakeChunkHeader(100, kChunk, 1, 0).Encode();
  sized[12] = std::byte{1};
  ExpectCorrupt(Reseal(sized), "a tombstone with a size");
}

TEST(ChunkHeader, RejectsAbsurdSizes) {
  HeaderBytes b = MakeChunkHeader(0, kChunk, 1, 0).Encode();
  Put64(b, 16, kMaxValueBytes + 1);
  Put64(b, 24, kMaxValueBytes + 1);
  Put64(b, 32, 1);
  ExpectCorrupt(Reseal(b), "total size too large");
  HeaderBytes small = MakeChunkHeader(100, kChunk, 1, 0).Encode();
  Put64(small, 24, kMinChunkSize - 1);
  ExpectCorrupt(Reseal(small), "chunk size below 4 KiB");
  Put64(small, 24, 0);
  ExpectCorrupt(Reseal(small), "chunk size below 4 KiB");
  EXPECT_TRUE(ParseChunkHeader(MakeChunkHeader(kMaxValueBytes, kMaxValueBytes, 1, 0).Encode()).ok());
}

TEST(ChunkHeader, RejectsChunkCountMismatch) {
  for (uint64_t n : {uint64_t{0}, uint64_t{6}, uint64_t{8}, uint64_t{100}}) {
    HeaderBytes b = V2(7 * kChunk, kChunk, 1, 0);
    Put64(b, 32, n);
    ExpectCorrupt(Reseal(b), "chunk count does not match");
  }
}

TEST(ChunkHeader, AChecksumOfTheWholeValueMakesVersion2AndOneInPiecesVersion3) {
  // Version 2 where it says all (earlier releases read it), 3 only for pieces.
  for (auto [total, head, version] : {std::tuple{uint64_t{0}, uint64_t{0}, 2u}, std::tuple{7 * kChunk, 7 * kChunk, 2u},
                                      std::tuple{7 * kChunk, PutRequest::kWholeValue, 2u},
                                      std::tuple{7 * kChunk, uint64_t{0}, 3u}, std::tuple{7 * kChunk, uint64_t{200}, 3u},
                                      std::tuple{uint64_t{100}, uint64_t{99}, 3u}}) {
    ChunkHeader h = MakeChunkHeader(total, kChunk, 1, 0);
    h.SetChecksum(0x5eed, head);
    Result<ChunkHeader> back = ParseChunkHeader(h.Encode());
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->version, version) << total << " " << head;
    EXPECT_EQ(back->checksum, 0x5eedu);
    EXPECT_EQ(back->checksum_head, version == 3 ? head : 0) << total << " " << head;
    EXPECT_EQ(back->checksum_piece(), version == 3 ? kChunk : 0);
  }
  EXPECT_EQ(MakeTombstone(5).version, 2u);
}

TEST(ChunkHeader, RejectsAChecksumHeadLongerThanTheValue) {
  ChunkHeader h = MakeChunkHeader(7 * kChunk, kChunk, 1, 0);
  h.SetChecksum(0, 1);
  HeaderBytes b = h.Encode();
  for (uint64_t head : {uint64_t{0}, uint64_t{1}, 7 * kChunk}) {
    Put64(b, 32, head);
    Result<ChunkHeader> r = ParseChunkHeader(Reseal(b));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->checksum_head, head);
  }
  for (uint64_t head : {7 * kChunk + 1, ~uint64_t{0}}) {
    Put64(b, 32, head);
    ExpectCorrupt(Reseal(b), "checksum head longer than the value");
  }
}

TEST(ChunkHeader, RejectsTooManyChunks) {
  ExpectCorrupt(MakeChunkHeader((kMaxChunks + 1) * kChunk, kChunk, 1, 0).Encode(), "too many chunks");
  HeaderBytes bogus = V2(100, kChunk, 1, 0);
  Put64(bogus, 32, ~uint64_t{0});
  ExpectCorrupt(Reseal(bogus), "too many chunks");
  EXPECT_TRUE(ParseChunkHeader(MakeChunkHeader(kMaxChunks * kChunk, kChunk, 1, 0).Encode()).ok());
}

}  // namespace
}  // namespace mooncake_connector::mooncake
