// How mooncake:// stores values it cannot keep as one raw object: the bytes
// go into immutable chunk objects named by a random generation, and a 64-byte
// header object under the key says where they are and what they hash to.
// Spec: docs/mooncake_layout.md.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "mooncake_connector/buffer.h"
#include "mooncake_connector/status.h"

namespace mooncake_connector::mooncake {

inline constexpr size_t kChunkHeaderSize = 64;
inline constexpr std::string_view kChunkMagic = "\x89MCCHNK\n";
// Version 2 adds the value's and the header's own checksums; version 3
// records the value's checksum in pieces (its head, then chunk-sized pieces)
// where version 2 had the number of chunks. Writers make version 3 only for
// a checksum in pieces, version 2 for one of the whole value (so earlier
// releases read those still); version 1 (no checksums) is read without
// verification.
inline constexpr uint32_t kChunkFormatVersion = 3;
// Bounds a reader accepts, so a hostile header cannot ask for absurd work:
// at most 2^20 chunks of at least 4 KiB each, at most 2^50 bytes in all.
inline constexpr uint64_t kMaxChunks = uint64_t{1} << 20;
inline constexpr uint64_t kMinChunkSize = 4096;
inline constexpr uint64_t kMaxValueBytes = uint64_t{1} << 50;
// Separates a key from its chunk suffix. Keys may not contain control
// characters (ValidateKey), so chunk keys never collide with user keys.
inline constexpr char kChunkKeySeparator = '\x1f';

struct ChunkHeader {
  uint32_t version = kChunkFormatVersion;
  uint64_t total_size = 0;
  uint64_t chunk_size = 0;
  uint64_t num_chunks = 0;  // recorded in version 1 and 2; derived in 3
  uint64_t generation = 0;  // random; names this write's chunk objects
  // The value's checksum (version 2 on): version 2, the XXH3-64 of the
  // value; version 3, the value in pieces (Xxh3Stream(checksum_piece(),
  // checksum_head)): its first checksum_head bytes, then pieces of
  // chunk_size bytes, so that a caller who hashed a tensor's data in the
  // chunk's pieces (a model save) need not hash it again.
  uint64_t checksum = 0;
  uint64_t checksum_head = 0;  // version 3; <= total_size
  // A removed key whose object a reader's lease kept from being removed
  // (version 2 or 3; written as 2): reads as absent. Its sizes are zero.
  bool tombstone = false;

  bool has_checksum() const { return version >= 2; }
  // Sets the value's checksum: of the whole value when `head` >= total_size
  // (a version-2 header), else in pieces after `head` bytes (version 3).
  void SetChecksum(uint64_t value_checksum, uint64_t head);
  // The piece size of `checksum` past its head (0: the whole value).
  uint64_t checksum_piece() const { return version >= 3 ? chunk_size : 0; }
  // Length of chunk `index` (the last one may be short).
  uint64_t ChunkLength(uint64_t index) const;
  // The encoding of `version` (1 only to write back a header as it was,
  // to restore it after a failed overwrite).
  std::array<std::byte, kChunkHeaderSize> Encode() const;
  // The object key of chunk `index`.
  std::string ChunkKey(std::string_view key, uint64_t index) const;
  // A 64-byte object of this generation that a writer stores and removes to
  // prove the space a header needs (never read).
  std::string ReservationKey(std::string_view key) const;
};

// A header for `total_size` bytes whose whole value hashes to `checksum`
// (version 2; SetChecksum for one in pieces), split into `chunk_size`
// pieces. REQUIRES: chunk_size > 0.
ChunkHeader MakeChunkHeader(uint64_t total_size, uint64_t chunk_size, uint64_t generation,
                            uint64_t checksum);

// The header that marks `key` removed (see ChunkHeader::tombstone).
ChunkHeader MakeTombstone(uint64_t generation);

// True when `value` must be stored as a header + chunks rather than as one
// raw object: it is empty (Mooncake does not keep empty objects), exactly
// header-sized (so a raw object is never rewritten in place by a header),
// larger than `chunk_size`, or starts with the magic (so raw values never look
// like headers).
bool NeedsChunking(uint64_t size, ConstBytes first_bytes, uint64_t chunk_size);

// True if an object of `size` bytes starting with `prefix` is a header.
bool LooksLikeChunkHeader(uint64_t size, ConstBytes prefix);

// Validates and decodes a header object (version 1, 2 or 3). DataLoss with
// the reason otherwise.
Result<ChunkHeader> ParseChunkHeader(ConstBytes object);

// True if `key` names a chunk or reservation object (hidden from List).
bool IsChunkKey(std::string_view key);

// An ECMAScript regular expression matching exactly the chunk and reservation
// objects of `key`: of every generation, or of one.
std::string ChunkObjectsPattern(std::string_view key,
                                std::optional<uint64_t> generation = std::nullopt);

}  // namespace mooncake_connector::mooncake
