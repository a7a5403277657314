#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>

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
  uint64_t head = 0;         // > 0: the first piece's length
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

size_t Xxh3PieceTasks::Add(ConstBytes bytes) {
  const size_t step = piece_ == 0 ? std::max<size_t>(bytes.size(), 1) : static_cast<size_t>(piece_);
  size_t at = 0;
  do {
    const size_t n = std::min(step, bytes.size() - at);
    tasks_.push_back({bytes.data() + at, n});
    at += n;
  } while (at < bytes.size());
  digests_.resize(tasks_.size());
  first_task_.push_back(tasks_.size());
  return first_task_.size() - 2;
}

void Xxh3PieceTasks::Hash(size_t task) { digests_[task] = Xxh3({tasks_[task].data, tasks_[task].size}); }

std::span<const uint64_t> Xxh3PieceTasks::Digests(size_t range) const {
  return std::span(digests_).subspan(first_task_[range], first_task_[range + 1] - first_task_[range]);
}

uint64_t Xxh3PieceTasks::Digest(size_t range) const { return Xxh3OfDigests(Digests(range)); }

uint64_t Xxh3Pieces(ConstBytes bytes, uint64_t piece) {
  if (piece == 0 || bytes.size() <= piece) return Xxh3(bytes);
  Xxh3PieceTasks pieces(piece);
  pieces.Add(bytes);
  for (size_t t = 0; t < pieces.tasks(); ++t) pieces.Hash(t);
  return pieces.Digest(0);
}

Xxh3Stream::Xxh3Stream(uint64_t piece, uint64_t head) : state_(std::make_unique<State>()) {
  XXH3_64bits_reset(&state_->state);
  XXH3_64bits_reset(&state_->digests);
  state_->piece = piece;
  state_->head = head;
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
  if (s.piece == 0 && (s.head == 0 || s.pieces_done > 0)) return Feed(&s.state, bytes);
  while (!bytes.empty()) {
    // The length of the piece being fed: the head first (if any), then
    // `piece` bytes each (piece 0: all the rest).
    const uint64_t limit = s.pieces_done == 0 && s.head > 0 ? s.head : s.piece == 0 ? UINT64_MAX : s.piece;
    // A full piece is finished only once more bytes come: if none do, the
    // stream was one piece long and hashes as the bytes alone.
    if (s.in_piece == limit) {
      AppendDigest(&s.digests, XXH3_64bits_digest(&s.state));
      ++s.pieces_done;
      XXH3_64bits_reset(&s.state);
      s.in_piece = 0;
      continue;
    }
    const size_t n = static_cast<size_t>(std::min<uint64_t>(bytes.size(), limit - s.in_piece));
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
