#include <algorithm>
#include <cstdio>
#include <cstring>

#include "core/hash_internal.h"
#include "store/mooncake/chunked_value_internal.h"

namespace mooncake_connector::mooncake {
namespace {

void Put64(std::byte* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = std::byte((v >> (8 * i)) & 0xff);
}
void Put32(std::byte* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = std::byte((v >> (8 * i)) & 0xff);
}
uint64_t Get64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | std::to_integer<uint64_t>(p[i]);
  return v;
}
uint32_t Get32(const std::byte* p) { return static_cast<uint32_t>(Get64(p) & 0xffffffffu); }

bool StartsWithMagic(ConstBytes bytes) {
  return bytes.size() >= kChunkMagic.size() &&
         std::memcmp(bytes.data(), kChunkMagic.data(), kChunkMagic.size()) == 0;
}

bool AllZero(const std::byte* p, size_t n) {
  return std::all_of(p, p + n, [](std::byte b) { return b == std::byte{0}; });
}

constexpr uint32_t kTombstoneFlag = 1;
// Offsets of the fields versions differ in: the number of chunks (1, 2) or
// the value checksum's head (3); the checksums (2, 3).
constexpr size_t kChunksOrHeadAt = 32;
constexpr size_t kValueChecksumAt = 48;
constexpr size_t kHeaderChecksumAt = 56;

Status Corrupt(const std::string& why) { return DataLoss("invalid chunked-value header: " + why); }

std::string Suffix(uint64_t generation, const char* tail) {
  char buf[48];
  int n = std::snprintf(buf, sizeof buf, "%c%016llx.%s", kChunkKeySeparator,
                        static_cast<unsigned long long>(generation), tail);
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace

uint64_t ChunkHeader::ChunkLength(uint64_t index) const {
  uint64_t offset = index * chunk_size;
  return std::min(chunk_size, total_size - offset);
}

std::array<std::byte, kChunkHeaderSize> ChunkHeader::Encode() const {
  std::array<std::byte, kChunkHeaderSize> out{};
  std::memcpy(out.data(), kChunkMagic.data(), kChunkMagic.size());
  Put32(out.data() + 8, version);
  Put64(out.data() + 16, total_size);
  Put64(out.data() + 24, chunk_size);
  Put64(out.data() + kChunksOrHeadAt, version >= 3 ? checksum_head : num_chunks);
  Put64(out.data() + 40, generation);
  if (version == 1) return out;  // no flags, no checksums
  Put32(out.data() + 12, tombstone ? kTombstoneFlag : 0);
  Put64(out.data() + kValueChecksumAt, checksum);
  Put64(out.data() + kHeaderChecksumAt, Xxh3({out.data(), kHeaderChecksumAt}));
  return out;
}

std::string ChunkHeader::ChunkKey(std::string_view key, uint64_t index) const {
  return std::string(key) + Suffix(generation, std::to_string(index).c_str());
}

std::string ChunkHeader::ReservationKey(std::string_view key) const {
  return std::string(key) + Suffix(generation, "r");
}

void ChunkHeader::SetChecksum(uint64_t value_checksum, uint64_t head) {
  checksum = value_checksum;
  version = head >= total_size ? 2 : 3;
  checksum_head = version == 3 ? head : 0;
}

ChunkHeader MakeChunkHeader(uint64_t total_size, uint64_t chunk_size, uint64_t generation,
                            uint64_t checksum) {
  ChunkHeader h;
  h.total_size = total_size;
  h.chunk_size = chunk_size;
  h.num_chunks = total_size == 0 ? 0 : (total_size - 1) / chunk_size + 1;
  h.generation = generation;
  h.SetChecksum(checksum, total_size);
  return h;
}

ChunkHeader MakeTombstone(uint64_t generation) {
  ChunkHeader h = MakeChunkHeader(0, 0, generation, Xxh3({}));
  h.tombstone = true;
  return h;
}

bool NeedsChunking(uint64_t size, ConstBytes first_bytes, uint64_t chunk_size) {
  return size == 0 || size == kChunkHeaderSize || size > chunk_size || StartsWithMagic(first_bytes);
}

bool LooksLikeChunkHeader(uint64_t size, ConstBytes prefix) {
  return size == kChunkHeaderSize && StartsWithMagic(prefix);
}

Result<ChunkHeader> ParseChunkHeader(ConstBytes object) {
  if (object.size() != kChunkHeaderSize) return Corrupt("size is not 64 bytes");
  if (!StartsWithMagic(object)) return Corrupt("bad magic");
  const std::byte* p = object.data();
  ChunkHeader h;
  h.version = Get32(p + 8);
  if (h.version == 2 || h.version == 3) {
    if (Get64(p + kHeaderChecksumAt) != Xxh3({p, kHeaderChecksumAt})) {
      return Corrupt("header checksum mismatch (torn or corrupted)");
    }
    h.checksum = Get64(p + kValueChecksumAt);
    uint32_t flags = Get32(p + 12);
    if ((flags & ~kTombstoneFlag) != 0) return Corrupt("reserved bytes are not zero");
    h.tombstone = (flags & kTombstoneFlag) != 0;
  } else if (h.version == 1) {
    if (!AllZero(p + 12, 4) || !AllZero(p + 48, 16)) return Corrupt("reserved bytes are not zero");
  } else {
    return Corrupt("unsupported version " + std::to_string(h.version));
  }
  h.total_size = Get64(p + 16);
  h.chunk_size = Get64(p + 24);
  h.generation = Get64(p + 40);
  if (h.total_size > kMaxValueBytes) return Corrupt("total size too large");
  if (h.total_size > 0 && h.chunk_size < kMinChunkSize) return Corrupt("chunk size below 4 KiB");
  if (h.chunk_size > kMaxValueBytes) return Corrupt("chunk size too large");
  const uint64_t chunks = h.total_size == 0 ? 0 : (h.total_size - 1) / h.chunk_size + 1;
  if (h.version >= 3) {
    h.checksum_head = Get64(p + kChunksOrHeadAt);
    if (h.checksum_head > h.total_size) return Corrupt("checksum head longer than the value");
    h.num_chunks = chunks;
  } else {
    h.num_chunks = Get64(p + kChunksOrHeadAt);
    if (h.num_chunks <= kMaxChunks && h.num_chunks != chunks) return Corrupt("chunk count does not match the sizes");
  }
  if (h.num_chunks > kMaxChunks) return Corrupt("too many chunks");
  if (h.tombstone && h.total_size != 0) return Corrupt("a tombstone with a size");
  return h;
}

bool IsChunkKey(std::string_view key) {
  return key.find(kChunkKeySeparator) != std::string_view::npos;
}

std::string ChunkObjectsPattern(std::string_view key, std::optional<uint64_t> generation) {
  std::string out = "^";
  for (char c : key) {
    // Regex metacharacters are escaped; every other byte stands for itself.
    if (std::string_view("\\^$.|?*+()[]{}/").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  if (generation) {
    char gen[17];
    std::snprintf(gen, sizeof gen, "%016llx", static_cast<unsigned long long>(*generation));
    out += "\\x1f";
    out += gen;
    out += "\\.(r|[0-9]+)$";
  } else {
    out += "\\x1f[0-9a-f]{16}\\.(r|[0-9]+)$";
  }
  return out;
}

}  // namespace mooncake_connector::mooncake
