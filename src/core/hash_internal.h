// XXH3-64 (xxHash, from Debian's libxxhash-dev, compiled in header-only mode
// so no library is linked) for integrity checks of stored bytes. Not a
// cryptographic hash: it detects torn, mixed and corrupted values, not forgery.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "mooncake_connector/buffer.h"

namespace mooncake_connector {

uint64_t Xxh3(ConstBytes bytes);

// The checksum of a tensor in pieces (manifest format 4): bytes no longer
// than `piece` hash to Xxh3(bytes); longer ones to the XXH3-64 of the
// XXH3-64s of their consecutive `piece`-byte pieces (the last one shorter),
// each written as 8 bytes little-endian. The pieces can be hashed on
// several threads. `piece` 0: Xxh3(bytes) whatever the size.
uint64_t Xxh3Pieces(ConstBytes bytes, uint64_t piece);
// The checksum from the pieces' digests, in order (a single piece's digest
// stands for itself).
uint64_t Xxh3OfDigests(std::span<const uint64_t> digests);

// The checksums (Xxh3Pieces) of several byte ranges as tasks, one per piece,
// that any threads may run: Add every range (the tasks of a range added
// earlier come first), run Hash(task) for each task in [0, tasks()), then
// take Digest(range).
class Xxh3PieceTasks {
 public:
  explicit Xxh3PieceTasks(uint64_t piece) : piece_(piece) {}
  size_t Add(ConstBytes bytes);  // returns the range's index
  size_t tasks() const { return tasks_.size(); }
  void Hash(size_t task);
  uint64_t Digest(size_t range) const;
  // The digests of a range's pieces, in order (one for a range no longer
  // than a piece).
  std::span<const uint64_t> Digests(size_t range) const;

 private:
  struct Task {
    const std::byte* data;
    size_t size;
  };
  uint64_t piece_;
  std::vector<Task> tasks_;
  std::vector<uint64_t> digests_;      // per task, once hashed
  std::vector<size_t> first_task_{0};  // per range, then the end
};

// Which build of XXH3 this CPU runs: "avx512", "avx2" or "sse2".
const char* Xxh3Build();

// The hash of a byte stream fed in order, in blocks of any size: Xxh3 of the
// bytes, or with `piece` > 0, Xxh3Pieces(bytes, piece). With `head` > 0 the
// first piece is the stream's first `head` bytes and the pieces of `piece`
// bytes follow it (piece 0: the rest is one piece), as mooncake:// records
// a value's checksum after its own head (docs/mooncake_layout.md); a stream
// of one piece still hashes as its bytes alone.
class Xxh3Stream {
 public:
  explicit Xxh3Stream(uint64_t piece = 0, uint64_t head = 0);
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
