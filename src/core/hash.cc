#define XXH_INLINE_ALL
#include <xxhash.h>

#include "core/hash_internal.h"

#ifdef MC_XXH3_AVX2
#include "core/hash_avx2_internal.h"
#endif

namespace mooncake_connector {
namespace {

// Debian builds for baseline x86-64, where xxhash picks SSE2; the AVX2 build
// (hash_avx2.cc) runs where the CPU has it. Both give the same hashes.
#ifdef MC_XXH3_AVX2
// __builtin_cpu_init: this runs among static constructors, maybe before
// libgcc's own has filled in what the CPU supports.
const bool kAvx2 = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") != 0;
}();
#else
constexpr bool kAvx2 = false;
#endif

}  // namespace

struct Xxh3Stream::State {
  XXH3_state_t state;
};

uint64_t Xxh3(ConstBytes bytes) {
#ifdef MC_XXH3_AVX2
  if (kAvx2) return hash_avx2::Hash(bytes.data(), bytes.size());
#endif
  return XXH3_64bits(bytes.data(), bytes.size());
}

Xxh3Stream::Xxh3Stream() : state_(std::make_unique<State>()) { XXH3_64bits_reset(&state_->state); }
Xxh3Stream::~Xxh3Stream() = default;

void Xxh3Stream::Update(ConstBytes bytes) {
#ifdef MC_XXH3_AVX2
  if (kAvx2) return hash_avx2::Update(&state_->state, bytes.data(), bytes.size());
#endif
  XXH3_64bits_update(&state_->state, bytes.data(), bytes.size());
}

uint64_t Xxh3Stream::Digest() const { return XXH3_64bits_digest(&state_->state); }

}  // namespace mooncake_connector
