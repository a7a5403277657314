#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <vector>

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
  XXH3_state_t state;        // of the bytes (of the current piece)
  uint64_t piece = 0;        // 0: one stream of all the bytes
  uint64_t in_piece = 0;     // bytes fed to `state` since its reset
  uint64_t pieces_done = 0;  // pieces finished and fed to `digests`
  XXH3_state_t digests;      // of the finished pieces' digests
};

namespace {
void AppendDigest(XXH3_state_t* to, uint64_t digest) {
  unsigned char le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(digest >> (8 * i));
  XXH3_64bits_update(to, le, sizeof(le));
}
}  // namespace

const char* Xxh3Build() { return kAvx512 ? "avx512" : kAvx2 ? "avx2" : "sse2"; }

uint64_t Xxh3(ConstBytes bytes) {
#ifdef MC_XXH3_AVX2
  if (kAvx512) return hash_avx512::Hash(bytes.data(), bytes.size());
  if (kAvx2) return hash_avx2::Hash(bytes.data(), bytes.size());
#endif
  return XXH3_64bits(bytes.data(), bytes.size());
}

uint64_t Xxh3OfDigests(std::span<const uint64_t> digests) {
  if (digests.size() == 1) return digests[0];
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  for (uint64_t d : digests) AppendDigest(&state, d);
  return XXH3_64bits_digest(&state);
}

uint64_t Xxh3Pieces(ConstBytes bytes, uint64_t piece) {
  if (piece == 0 || bytes.size() <= piece) return Xxh3(bytes);
  std::vector<uint64_t> digests;
  digests.reserve(static_cast<size_t>((bytes.size() + piece - 1) / piece));
  for (uint64_t at = 0; at < bytes.size(); at += piece) {
    digests.push_back(Xxh3(bytes.subspan(static_cast<size_t>(at), static_cast<size_t>(std::min<uint64_t>(piece, bytes.size() - at)))));
  }
  return Xxh3OfDigests(digests);
}

Xxh3Stream::Xxh3Stream(uint64_t piece) : state_(std::make_unique<State>()) {
  XXH3_64bits_reset(&state_->state);
  XXH3_64bits_reset(&state_->digests);
  state_->piece = piece;
}
Xxh3Stream::~Xxh3Stream() = default;

namespace {
void Feed(XXH3_state_t* state, ConstBytes bytes) {
#ifdef MC_XXH3_AVX2
  if (kAvx512) return hash_avx512::Update(state, bytes.data(), bytes.size());
  if (kAvx2) return hash_avx2::Update(state, bytes.data(), bytes.size());
#endif
  XXH3_64bits_update(state, bytes.data(), bytes.size());
}
}  // namespace

void Xxh3Stream::Update(ConstBytes bytes) {
  State& s = *state_;
  if (s.piece == 0) return Feed(&s.state, bytes);
  while (!bytes.empty()) {
    // A full piece is finished only once more bytes come: if none do, the
    // stream was one piece long and hashes as the bytes alone.
    if (s.in_piece == s.piece) {
      AppendDigest(&s.digests, XXH3_64bits_digest(&s.state));
      ++s.pieces_done;
      XXH3_64bits_reset(&s.state);
      s.in_piece = 0;
    }
    const size_t n = static_cast<size_t>(std::min<uint64_t>(bytes.size(), s.piece - s.in_piece));
    Feed(&s.state, bytes.first(n));
    s.in_piece += n;
    bytes = bytes.subspan(n);
  }
}

uint64_t Xxh3Stream::Digest() const {
  const State& s = *state_;
  const uint64_t last = XXH3_64bits_digest(&s.state);
  if (s.pieces_done == 0) return last;
  XXH3_state_t digests = s.digests;
  AppendDigest(&digests, last);
  return XXH3_64bits_digest(&digests);
}

}  // namespace mooncake_connector
