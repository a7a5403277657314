#define XXH_INLINE_ALL
#include <xxhash.h>

#include "core/hash_internal.h"

namespace mooncake_connector {

struct Xxh3Stream::State {
  XXH3_state_t state;
};

uint64_t Xxh3(ConstBytes bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

Xxh3Stream::Xxh3Stream() : state_(std::make_unique<State>()) { XXH3_64bits_reset(&state_->state); }
Xxh3Stream::~Xxh3Stream() = default;

void Xxh3Stream::Update(ConstBytes bytes) {
  XXH3_64bits_update(&state_->state, bytes.data(), bytes.size());
}

uint64_t Xxh3Stream::Digest() const { return XXH3_64bits_digest(&state_->state); }

}  // namespace mooncake_connector
