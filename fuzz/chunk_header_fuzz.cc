// libFuzzer target: ParseChunkHeader never crashes on hostile bytes, and a
// header it accepts re-encodes to exactly the input.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "store/mooncake/chunked_value_internal.h"

using namespace mooncake_connector;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ConstBytes bytes(reinterpret_cast<const std::byte*>(data), size);
  Result<mooncake::ChunkHeader> header = mooncake::ParseChunkHeader(bytes);
  if (header.ok()) {
    auto encoded = header->Encode();
    if (size != encoded.size() || std::memcmp(encoded.data(), data, size) != 0) __builtin_trap();
    // What it accepts is self-consistent.
    if (header->num_chunks > mooncake::kMaxChunks) __builtin_trap();
    if (header->total_size > 0 &&
        (header->chunk_size == 0 ||
         header->num_chunks != (header->total_size - 1) / header->chunk_size + 1)) {
      __builtin_trap();
    }
    // A checksum's head lies within the value, and only version 3 has one.
    if (header->checksum_head > header->total_size) __builtin_trap();
    if (header->version < 3 && header->checksum_head != 0) __builtin_trap();
    (void)header->ChunkKey("k", header->num_chunks);
  }
  (void)mooncake::LooksLikeChunkHeader(size, bytes);
  return 0;
}
