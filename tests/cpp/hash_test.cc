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

// Manifest format 4's checksum, computed here from xxhash alone: the bytes'
// XXH3 up to one piece, else the XXH3 of the pieces' XXH3s, 8 bytes LE each.
uint64_t PiecesByHand(const uint8_t* data, size_t size, size_t piece) {
  if (size <= piece) return XXH3_64bits(data, size);
  std::vector<uint8_t> digests;
  for (size_t at = 0; at < size; at += piece) {
    const uint64_t d = XXH3_64bits(data + at, std::min(piece, size - at));
    for (int i = 0; i < 8; ++i) digests.push_back(static_cast<uint8_t>(d >> (8 * i)));
  }
  return XXH3_64bits(digests.data(), digests.size());
}

TEST(Xxh3, PiecesAreTheHashOfThePiecesHashes) {
  const size_t piece = 64 << 10;
  const auto bytes = Pattern(3 * piece + 5);
  for (size_t size : {size_t{0}, size_t{1}, piece - 1, piece, piece + 1, 2 * piece, 2 * piece + 1, 3 * piece + 5}) {
    const ConstBytes some(reinterpret_cast<const std::byte*>(bytes.data()), size);
    const uint64_t expected = PiecesByHand(bytes.data(), size, piece);
    EXPECT_EQ(Xxh3Pieces(some, piece), expected) << size;
    if (size <= piece) EXPECT_EQ(expected, XXH3_64bits(bytes.data(), size)) << size;
    if (size > piece) EXPECT_NE(expected, XXH3_64bits(bytes.data(), size)) << size;
    EXPECT_EQ(Xxh3Pieces(some, 0), XXH3_64bits(bytes.data(), size)) << size;
    // Fed in blocks that do and do not line up with the pieces.
    for (size_t block : {size_t{1000}, piece / 2, piece, piece + 3, size_t{1} << 20}) {
      Xxh3Stream stream(piece);
      for (size_t at = 0; at < size; at += block) stream.Update(some.subspan(at, std::min(block, size - at)));
      EXPECT_EQ(stream.Digest(), expected) << size << " in blocks of " << block;
    }
    // From the pieces' digests, as a reader hashing pieces on several threads.
    std::vector<uint64_t> digests;
    for (size_t at = 0; at < size || at == 0; at += piece) {
      digests.push_back(Xxh3(some.subspan(at, std::min(piece, size - at))));
      if (size == 0) break;
    }
    EXPECT_EQ(Xxh3OfDigests(digests), expected) << size;
  }
}

// A head, then pieces: the checksum mooncake:// records of a value whose
// first bytes are hashed alone (a tensor value's safetensors header), by hand.
uint64_t HeadThenPiecesByHand(const uint8_t* data, size_t size, size_t head, size_t piece) {
  std::vector<std::pair<size_t, size_t>> pieces;  // (offset, length)
  size_t at = 0;
  if (head > 0) {
    pieces.push_back({0, std::min(head, size)});
    at = pieces.back().second;
  }
  while (at < size) {
    pieces.push_back({at, std::min(piece, size - at)});
    at += pieces.back().second;
  }
  if (pieces.empty()) pieces.push_back({0, 0});
  if (pieces.size() == 1) return XXH3_64bits(data, size);
  std::vector<uint8_t> digests;
  for (auto [offset, length] : pieces) {
    const uint64_t d = XXH3_64bits(data + offset, length);
    for (int i = 0; i < 8; ++i) digests.push_back(static_cast<uint8_t>(d >> (8 * i)));
  }
  return XXH3_64bits(digests.data(), digests.size());
}

TEST(Xxh3, AStreamWithAHeadHashesItAsAPieceOfItsOwn) {
  const size_t piece = 64 << 10;
  const auto bytes = Pattern(3 * piece + 5);
  for (size_t head : {size_t{1}, size_t{192}, piece - 1, piece, piece + 7}) {
    for (size_t size : {size_t{0}, size_t{1}, head - 1, head, head + 1, head + piece, head + piece + 1,
                        3 * piece + 5}) {
      if (size > bytes.size()) continue;
      const ConstBytes some(reinterpret_cast<const std::byte*>(bytes.data()), size);
      for (size_t p : {piece, size_t{0}}) {
        const uint64_t expected =
            HeadThenPiecesByHand(bytes.data(), size, head, p == 0 ? SIZE_MAX : p);
        if (size <= head) EXPECT_EQ(expected, XXH3_64bits(bytes.data(), size)) << size;
        for (size_t block : {size_t{1000}, head, piece + 3, size_t{1} << 20}) {
          Xxh3Stream stream(p, head);
          for (size_t at = 0; at < size; at += block) stream.Update(some.subspan(at, std::min(block, size - at)));
          EXPECT_EQ(stream.Digest(), expected) << "head " << head << " size " << size << " piece " << p
                                               << " blocks " << block;
        }
        // From the digests, as a save that has hashed the tensor's pieces.
        if (p == piece && size > head) {
          Xxh3PieceTasks tasks(piece);
          tasks.Add(some.subspan(head));
          for (size_t t = 0; t < tasks.tasks(); ++t) tasks.Hash(t);
          std::vector<uint64_t> digests{Xxh3(some.first(head))};
          for (uint64_t d : tasks.Digests(0)) digests.push_back(d);
          EXPECT_EQ(Xxh3OfDigests(digests), expected) << "head " << head << " size " << size;
        }
      }
    }
  }
}

}  // namespace
}  // namespace mooncake_connector
