#define XXH_INLINE_ALL
#include <xxhash.h>

#include "core/hash_internal.h"

#ifdef MC_XXH3_AVX2
#include "core/hash_builds_internal.h"
#endif

namespace mooncake_connector {
namespace {

// Debian builds for baseline x86-64, where xxhash picks SSE2; the AVX-512
// build (hash_avx512.cc) runs where the CPU and the kernel allow it, else the
// AVX2 one (hash_avx2.cc) where the CPU has that. All give the same hashes.
#ifdef MC_XXH3_AVX2
// __builtin_cpu_init: this runs among static constructors, maybe before
// libgcc's own has filled in what the CPU supports.
const bool kAvx2 = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") != 0;
}();
const bool kAvx512 = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") != 0;
}();
#else
constexpr bool kAvx2 = false;
constexpr bool kAvx512 = false;
#endif

}  // namespace

struct Xxh3Stream::State {
  XXH3_state_t state;
};

const char* Xxh3Build() { return kAvx512 ? "avx512" : kAvx2 ? "avx2" : "sse2"; }

uint64_t Xxh3(ConstBytes bytes) {
#ifdef MC_XXH3_AVX2
  if (kAvx512) return hash_avx512::Hash(bytes.data(), bytes.size());
  if (kAvx2) return hash_avx2::Hash(bytes.data(), bytes.size());
#endif
  return XXH3_64bits(bytes.data(), bytes.size());
}

Xxh3Stream::Xxh3Stream() : state_(std::make_unique<State>()) { XXH3_64bits_reset(&state_->state); }
Xxh3Stream::~Xxh3Stream() = default;

void Xxh3Stream::Update(ConstBytes bytes) {
#ifdef MC_XXH3_AVX2
  if (kAvx512) return hash_avx512::Update(&state_->state, bytes.data(), bytes.size());
  if (kAvx2) return hash_avx2::Update(&state_->state, bytes.data(), bytes.size());
#endif
  XXH3_64bits_update(&state_->state, bytes.data(), bytes.size());
}

uint64_t Xxh3Stream::Digest() const { return XXH3_64bits_digest(&state_->state); }

}  // namespace mooncake_connector
