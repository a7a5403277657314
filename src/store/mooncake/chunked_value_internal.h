// How mooncake:// stores values that one Mooncake object cannot hold: a value
// larger than the chunk size is striped over chunk objects, and a small header
// object under the key says where they are. Spec: docs/mooncake_layout.md.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "mooncake_connector/buffer.h"
#include "mooncake_connector/status.h"

namespace mooncake_connector::mooncake {

inline constexpr size_t kChunkHeaderSize = 64;
inline constexpr std::string_view kChunkMagic = "\x89MCCHNK\n";
inline constexpr uint32_t kChunkFormatVersion = 1;
// Bounds a reader accepts, so a corrupt header cannot ask for absurd work.
inline constexpr uint64_t kMaxChunks = uint64_t{1} << 20;
inline constexpr uint64_t kMaxValueBytes = uint64_t{1} << 50;
// Separates a key from its chunk suffix. Keys may not contain control
// characters (ValidateKey), so chunk keys never collide with user keys.
inline constexpr char kChunkKeySeparator = '\x1f';

struct ChunkHeader {
  uint64_t total_size = 0;
  uint64_t chunk_size = 0;
  uint64_t num_chunks = 0;
  uint64_t generation = 0;  // random; names this write's chunk objects

  std::array<std::byte, kChunkHeaderSize> Encode() const;
  // The object key of chunk `index`.
  std::string ChunkKey(std::string_view key, uint64_t index) const;
};

// A header for `total_size` bytes split into `chunk_size` pieces.
// REQUIRES: chunk_size > 0.
ChunkHeader MakeChunkHeader(uint64_t total_size, uint64_t chunk_size, uint64_t generation);

// True when `value` must be stored as a header + chunks rather than as one
// raw object: it is empty (Mooncake does not keep empty objects), larger than
// `chunk_size`, or starts with the magic (so raw values never look like
// headers).
bool NeedsChunking(uint64_t size, ConstBytes first_bytes, uint64_t chunk_size);

// True if an object of `size` bytes starting with `prefix` is a header.
bool LooksLikeChunkHeader(uint64_t size, ConstBytes prefix);

// Validates and decodes a header object. DataLoss with the reason otherwise.
Result<ChunkHeader> ParseChunkHeader(ConstBytes object);

// True if `key` names a chunk object (hidden from List).
bool IsChunkKey(std::string_view key);

}  // namespace mooncake_connector::mooncake
