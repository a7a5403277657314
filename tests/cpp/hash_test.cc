// Xxh3 and Xxh3Stream give xxhash's XXH3-64 whichever build of it runs (the
// AVX-512 or AVX2 one where the CPU has it): checked against xxhash compiled
// here for baseline x86-64 (SSE2) and against published values.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "core/hash_internal.h"

namespace mooncake_connector {
namespace {

std::vector<uint8_t> Pattern(size_t size) {
  std::vector<uint8_t> bytes(size);
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (auto& b : bytes) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b = static_cast<uint8_t>(x);
  }
  return bytes;
}

TEST(Xxh3, PublishedValues) {
  RecordProperty("build", Xxh3Build());
  std::printf("XXH3 build on this CPU: %s\n", Xxh3Build());
  EXPECT_EQ(Xxh3({}), 0x2D06800538D394C2ull);  // XXH3_64bits of no bytes
  Xxh3Stream empty;
  EXPECT_EQ(empty.Digest(), 0x2D06800538D394C2ull);
}

TEST(Xxh3, SameAsTheBaselineBuildAtEverySizeClass) {
  // Sizes around each of XXH3's code paths (<=16, <=128, <=240, long input,
  // stripes, blocks of 1 KiB, and the streaming buffer of 256 bytes).
  const auto bytes = Pattern(3 << 20);
  for (size_t size : {0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 255, 256, 257, 1023, 1024, 1025, 4096, 65537,
                      (1 << 20) + 7, 3 << 20}) {
    const uint64_t expected = XXH3_64bits(bytes.data(), size);
    EXPECT_EQ(Xxh3({reinterpret_cast<const std::byte*>(bytes.data()), size}), expected) << size;
  }
}

TEST(Xxh3, StreamOfPiecesIsTheHashOfTheWhole) {
  const auto bytes = Pattern((2 << 20) + 333);
  const ConstBytes all(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size());
  const uint64_t expected = XXH3_64bits(bytes.data(), bytes.size());
  for (size_t piece : {1, 7, 64, 255, 256, 4097, 1 << 20}) {
    Xxh3Stream stream;
    for (size_t at = 0; at < all.size(); at += piece) stream.Update(all.subspan(at, std::min(piece, all.size() - at)));
    EXPECT_EQ(stream.Digest(), expected) << piece;
  }
}

}  // namespace
}  // namespace mooncake_connector
