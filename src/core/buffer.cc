#include "mooncake_connector/buffer.h"

#include <sys/mman.h>

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "core/pages_internal.h"
#include "core/size_class_internal.h"

namespace mooncake_connector {
namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

// Large buffers freed lately, kept with their pages in memory for the next
// allocation of the same size class. A loader that drops each batch of
// tensors once used (SGLang's weight_iterator consumer) then fills memory it
// touched before instead of pages the kernel hands out one fault at a time
// (1-2.5 GiB/s per core, slower than the reads themselves); glibc maps and
// unmaps blocks this large afresh every time. At most kKeepBytes are kept,
// the oldest unmapped first. Off under AddressSanitizer, which must see each
// buffer freed.
class LargeBlocks {
 public:
  static constexpr size_t kMin = size_t{1} << 20;
  static constexpr size_t kKeepBytes = size_t{512} << 20;

  static LargeBlocks& Get() {
    static LargeBlocks* blocks = new LargeBlocks;  // never destroyed: safe at exit
    return *blocks;
  }

  void* Take(size_t size_class) {
    {
      std::lock_guard lock(mu_);
      for (auto it = kept_.begin(); it != kept_.end(); ++it) {
        if (it->second != size_class) continue;
        void* p = it->first;
        kept_.erase(it);
        kept_bytes_ -= size_class;
        return p;
      }
    }
    return MapFresh(size_class);
  }

  // New memory for a block. Blocks of 2 MiB or more are placed on 2 MiB
  // boundaries and advised to use transparent huge pages (AdviseHugePages):
  // one page fault per 2 MiB instead of 512, so filling fresh memory runs at
  // 10.9 instead of 2.0 GiB/s here (micro_bench BM_CopyIntoHugePages /
  // BM_CopyIntoFresh). Elsewhere the block is ordinary memory.
  static void* MapFresh(size_t size) {
    if (!HugePagesWanted() || size < kHugePage) return Map(size);
    auto* p = static_cast<std::byte*>(Map(size + kHugePage));
    if (p == nullptr) return nullptr;
    const auto address = reinterpret_cast<uintptr_t>(p);
    const size_t head = (kHugePage - address % kHugePage) % kHugePage;
    if (head > 0) munmap(p, head);
    munmap(p + head + size, kHugePage - head);
    AdviseHugePages(p + head, size);
    return p + head;
  }

  static void* Map(size_t size) {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }

  void Give(void* p, size_t size_class) {
    if (size_class > kKeepBytes) {  // never kept: keep the others
      munmap(p, size_class);
      return;
    }
    std::vector<std::pair<void*, size_t>> evicted;
    {
      std::lock_guard lock(mu_);
      kept_.emplace_back(p, size_class);
      kept_bytes_ += size_class;
      while (kept_bytes_ > kKeepBytes) {
        evicted.push_back(kept_.front());
        kept_bytes_ -= kept_.front().second;
        kept_.pop_front();
      }
    }
    for (auto [q, n] : evicted) munmap(q, n);
  }

 private:
  std::mutex mu_;
  std::deque<std::pair<void*, size_t>> kept_;  // oldest first
  size_t kept_bytes_ = 0;
};

}  // namespace

Result<Buffer> Buffer::Allocate(size_t size) {
  if (!kSanitized && size >= LargeBlocks::kMin) {
    const size_t size_class = LargeSizeClass(size);
    void* p = LargeBlocks::Get().Take(size_class);
    if (p == nullptr) return ResourceExhausted("cannot allocate " + std::to_string(size) + " bytes");
    Buffer b;
    b.owner_ = std::shared_ptr<void>(p, [size_class](void* q) { LargeBlocks::Get().Give(q, size_class); });
    b.data_ = static_cast<std::byte*>(p);
    b.size_ = size;
    return b;
  }
  // aligned_alloc wants a size that is a multiple of the alignment; a zero
  // size still gets a real (unique, aligned) pointer.
  size_t rounded = (size + kBufferAlignment - 1) / kBufferAlignment * kBufferAlignment;
  if (rounded < size) return ResourceExhausted("buffer size overflows");
  if (rounded == 0) rounded = kBufferAlignment;
  void* p = std::aligned_alloc(kBufferAlignment, rounded);
  if (p == nullptr) {
    return ResourceExhausted("cannot allocate " + std::to_string(size) + " bytes");
  }
  Buffer b;
  b.owner_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  b.data_ = static_cast<std::byte*>(p);
  b.size_ = size;
  return b;
}

Buffer Buffer::Wrap(std::byte* data, size_t size, std::shared_ptr<void> owner) {
  Buffer b;
  b.owner_ = std::move(owner);
  b.data_ = data;
  b.size_ = size;
  return b;
}

Buffer Buffer::Slice(size_t offset, size_t size) const {
  assert(offset <= size_ && size <= size_ - offset);
  return Wrap(data_ + offset, size, owner_);
}

}  // namespace mooncake_connector
