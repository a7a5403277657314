// XXH3-64 (xxHash, from Debian's libxxhash-dev, compiled in header-only mode
// so no library is linked) for integrity checks of stored bytes. Not a
// cryptographic hash: it detects torn, mixed and corrupted values, not forgery.
#pragma once

#include <cstdint>
#include <memory>

#include "mooncake_connector/buffer.h"

namespace mooncake_connector {

uint64_t Xxh3(ConstBytes bytes);

// Which build of XXH3 this CPU runs: "avx512", "avx2" or "sse2".
const char* Xxh3Build();

// The hash of a byte stream fed in order, piece by piece.
class Xxh3Stream {
 public:
  Xxh3Stream();
  ~Xxh3Stream();
  Xxh3Stream(const Xxh3Stream&) = delete;
  Xxh3Stream& operator=(const Xxh3Stream&) = delete;

  void Update(ConstBytes bytes);
  uint64_t Digest() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace mooncake_connector
