// libFuzzer target: the mooncake:// read path (header, then chunks) over
// hostile stored objects. The input's first 64 bytes are planted as the
// object under the key (the whole input when shorter); the rest is cut into
// chunk objects of the generation the header names, by the lengths the header
// claims, each lengthened or shortened by a control byte. A read must never
// crash or write past a buffer, and what it returns must have the size the
// header states, also for a read of that exact size (direct reads). Stored through the scripted in-process Mooncake
// (tests/cpp/scripted_mooncake.h).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "scripted_mooncake.h"
#include "store/mooncake/chunked_value_internal.h"
#include "store/mooncake/new_store_internal.h"

using namespace mooncake_connector;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto* bytes = reinterpret_cast<const std::byte*>(data);
  size_t head = std::min<size_t>(size, mooncake::kChunkHeaderSize);
  testing::ScriptedMooncake sm;
  sm.Plant("k", std::vector<std::byte>(bytes, bytes + head));
  Result<mooncake::ChunkHeader> h = mooncake::ParseChunkHeader({bytes, head});
  if (h.ok() && h->total_size > (uint64_t{64} << 20)) return 0;  // not worth allocating
  size_t at = head;
  for (uint64_t i = 0; h.ok() && i < h->num_chunks && i < 64 && at < size; ++i) {
    int delta = static_cast<int>(data[at++] % 5) - 2;  // -2 .. +2 bytes
    size_t want = static_cast<size_t>(h->ChunkLength(i));
    size_t n = std::min(size - at, static_cast<size_t>(std::max<int64_t>(0, static_cast<int64_t>(want) + delta)));
    sm.Plant(h->ChunkKey("k", i), std::vector<std::byte>(bytes + at, bytes + at + n));
    at += n;
  }
  mooncake::Api api = sm.api();
  MooncakeConfig config;
  config.master_address = "scripted:1";
  config.chunk_size = 4096;
  config.transfer_slots = 2;
  config.op_timeout = std::chrono::milliseconds(2);  // a planted header without chunks fails fast
  Result<std::shared_ptr<Store>> store = mooncake::NewMooncakeStore(config, &api, &sm);
  if (!store.ok()) __builtin_trap();
  Result<Buffer> value = (*store)->Get("k");
  if (value.ok() && h.ok() && !h->tombstone && value->size() != h->total_size) __builtin_trap();
  // A read of the size the header states (as a model load makes), which may
  // go straight into place (direct reads): the same guarantees.
  if (h.ok() && h->total_size >= 16 && h->total_size <= (uint64_t{4} << 20)) {
    std::vector<std::byte> head_bytes(16), rest(static_cast<size_t>(h->total_size) - 16);
    uint64_t hash = 0;
    GetIntoRequest r{"k", rest, head_bytes, size % 2 == 0 ? &hash : nullptr, /*exact=*/true};
    Result<uint64_t> got = (*store)->BatchGetInto({&r, 1})[0];
    if (got.ok() && !h->tombstone && *got != h->total_size) __builtin_trap();
  }
  return 0;
}
