#include <cstdio>
#include <cstring>

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

Status Corrupt(const std::string& why) { return DataLoss("invalid chunked-value header: " + why); }

}  // namespace

std::array<std::byte, kChunkHeaderSize> ChunkHeader::Encode() const {
  std::array<std::byte, kChunkHeaderSize> out{};
  std::memcpy(out.data(), kChunkMagic.data(), kChunkMagic.size());
  Put32(out.data() + 8, kChunkFormatVersion);
  Put32(out.data() + 12, 0);
  Put64(out.data() + 16, total_size);
  Put64(out.data() + 24, chunk_size);
  Put64(out.data() + 32, num_chunks);
  Put64(out.data() + 40, generation);
  return out;  // bytes 48..63 stay zero (reserved)
}

std::string ChunkHeader::ChunkKey(std::string_view key, uint64_t index) const {
  char suffix[64];
  int n = std::snprintf(suffix, sizeof suffix, "%c%016llx.%llu", kChunkKeySeparator,
                        static_cast<unsigned long long>(generation),
                        static_cast<unsigned long long>(index));
  std::string out(key);
  out.append(suffix, static_cast<size_t>(n));
  return out;
}

ChunkHeader MakeChunkHeader(uint64_t total_size, uint64_t chunk_size, uint64_t generation) {
  ChunkHeader h;
  h.total_size = total_size;
  h.chunk_size = chunk_size;
  h.num_chunks = total_size == 0 ? 0 : (total_size - 1) / chunk_size + 1;
  h.generation = generation;
  return h;
}

bool NeedsChunking(uint64_t size, ConstBytes first_bytes, uint64_t chunk_size) {
  return size == 0 || size > chunk_size || StartsWithMagic(first_bytes);
}

bool LooksLikeChunkHeader(uint64_t size, ConstBytes prefix) {
  return size == kChunkHeaderSize && StartsWithMagic(prefix);
}

Result<ChunkHeader> ParseChunkHeader(ConstBytes object) {
  if (object.size() != kChunkHeaderSize) return Corrupt("size is not 64 bytes");
  if (!StartsWithMagic(object)) return Corrupt("bad magic");
  const std::byte* p = object.data();
  if (Get32(p + 8) != kChunkFormatVersion) {
    return Corrupt("unsupported version " + std::to_string(Get32(p + 8)));
  }
  for (size_t i = 12; i < 16; ++i) {
    if (p[i] != std::byte{0}) return Corrupt("reserved bytes are not zero");
  }
  for (size_t i = 48; i < kChunkHeaderSize; ++i) {
    if (p[i] != std::byte{0}) return Corrupt("reserved bytes are not zero");
  }
  ChunkHeader h;
  h.total_size = Get64(p + 16);
  h.chunk_size = Get64(p + 24);
  h.num_chunks = Get64(p + 32);
  h.generation = Get64(p + 40);
  if (h.total_size > kMaxValueBytes) return Corrupt("total size too large");
  if (h.total_size > 0 && h.chunk_size == 0) return Corrupt("zero chunk size");
  if (h.num_chunks > kMaxChunks) return Corrupt("too many chunks");
  uint64_t expected = h.total_size == 0 ? 0 : (h.total_size - 1) / h.chunk_size + 1;
  if (h.num_chunks != expected) return Corrupt("chunk count does not match the sizes");
  return h;
}

bool IsChunkKey(std::string_view key) {
  return key.find(kChunkKeySeparator) != std::string_view::npos;
}

}  // namespace mooncake_connector::mooncake
