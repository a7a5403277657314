#include "store/mooncake/shared_blocks_internal.h"

#include <sys/mman.h>

#include <algorithm>
#include <string>

#include "core/size_class_internal.h"

namespace mooncake_connector::mooncake {
namespace {

// Region sizes stay multiples of 2 MiB: the wheel rounds a region of huge
// pages up to one, and registration wants the size it allocated.
constexpr size_t kRegionStep = size_t{2} << 20;

size_t RoundUp(size_t n, size_t step) { return (n + step - 1) / step * step; }

}  // namespace

SharedBlocks::~SharedBlocks() {
  if (grower_.joinable()) grower_.join();  // Close() joined it already
}

Result<Buffer> SharedBlocks::Allocate(size_t size) {
  const size_t size_class = LargeSizeClass(std::max<size_t>(size, 1));
  std::byte* p = nullptr;
  {
    std::lock_guard lock(mu_);
    if (closed_) return Unavailable("the store is closed");
    for (auto it = kept_.begin(); it != kept_.end(); ++it) {
      if (it->second != size_class) continue;
      p = it->first;
      kept_bytes_ -= size_class;
      kept_.erase(it);
      break;
    }
    if (p == nullptr) {
      auto it = released_.find(size_class);
      if (it != released_.end()) {
        p = it->second;
        released_.erase(it);
      }
    }
    if (p == nullptr) p = Carve(size_class);
  }
  if (p == nullptr) return Unavailable("no shared memory free for " + std::to_string(size) + " bytes");
  std::shared_ptr<SharedBlocks> self = shared_from_this();
  auto owner = std::shared_ptr<void>(p, [self, size_class](void* q) { self->Give(static_cast<std::byte*>(q), size_class); });
  return Buffer::Wrap(p, size, std::move(owner));
}

std::byte* SharedBlocks::Carve(size_t size_class) {
  for (Region& r : regions_) {
    if (r.size - r.used < size_class) continue;
    std::byte* p = r.base + r.used;
    r.used += size_class;
    return p;
  }
  return nullptr;
}

void SharedBlocks::Grow(size_t bytes, size_t largest) {
  const size_t target = std::min(kMaxRegionBytes, RoundUp(std::max<size_t>(bytes, 1), kRegionStep));
  const size_t region_min = std::min(target, RoundUp(LargeSizeClass(std::max<size_t>(largest, 1)), kRegionStep));
  std::lock_guard grow_lock(grow_mu_);
  {
    std::lock_guard lock(mu_);
    if (closed_ || failed_ || target <= target_bytes_) return;
    target_bytes_ = target;
    region_min_ = std::max(region_min_, region_min);
    if (growing_) return;  // the thread under way reads the new target
    growing_ = true;
  }
  if (grower_.joinable()) grower_.join();  // finished: growing_ was false
  grower_ = std::thread([this] { GrowTo(); });
}

void SharedBlocks::GrowTo() {
  while (true) {
    size_t size;
    {
      std::lock_guard lock(mu_);
      size_t have = 0;
      for (const Region& r : regions_) have += r.size;
      if (closed_ || failed_ || have >= target_bytes_) {
        growing_ = false;
        return;
      }
      size = std::max(region_min_, std::min(kRegionBytes, RoundUp(target_bytes_ - have, kRegionStep)));
    }
    // Slow (the wheel populates the region): outside the lock, so loads go
    // on meanwhile with the regions there are.
    auto* base = static_cast<std::byte*>(api_->alloc_transfer_buffer(handle_, size));
    const bool ok = base != nullptr && api_->register_buffer(handle_, base, size) == 0;
    std::lock_guard lock(mu_);
    if (!ok) {
      failed_ = true;  // a region that cannot be freed is not asked for again
    } else {
      regions_.push_back({base, size, 0});
    }
  }
}

void SharedBlocks::Give(std::byte* p, size_t size_class) {
  std::vector<std::pair<std::byte*, size_t>> release;
  {
    std::lock_guard lock(mu_);
    if (closed_) {
      release.emplace_back(p, size_class);
    } else {
      kept_.emplace_back(p, size_class);
      kept_bytes_ += size_class;
      while (kept_bytes_ > kKeepBytes) {
        auto [q, n] = kept_.front();
        kept_.pop_front();
        kept_bytes_ -= n;
        release.emplace_back(q, n);
      }
    }
  }
  if (release.empty()) return;
  // Released before anyone can take the block again (pages released under
  // a new owner would zero its bytes).
  for (auto [q, n] : release) Release(q, n);
  std::lock_guard lock(mu_);
  if (closed_) return;
  for (auto [q, n] : release) released_.emplace(n, q);
}

void SharedBlocks::Release(std::byte* p, size_t size) {
  // The pages go from the memfd (for both processes). Where the kernel
  // refuses (huge pages not aligned to this block), they stay: harmless.
  madvise(p, size, MADV_REMOVE);
}

bool SharedBlocks::Contains(const void* p, size_t size) const {
  const auto* b = static_cast<const std::byte*>(p);
  std::lock_guard lock(mu_);
  return std::any_of(regions_.begin(), regions_.end(), [&](const Region& r) {
    return b >= r.base && b <= r.base + r.size && size <= static_cast<size_t>(r.base + r.size - b);
  });
}

void SharedBlocks::Close() {
  std::lock_guard grow_lock(grow_mu_);
  std::vector<std::pair<std::byte*, size_t>> release;
  {
    std::lock_guard lock(mu_);
    closed_ = true;
    release.assign(kept_.begin(), kept_.end());
    for (const Region& r : regions_) {  // never lent: populated by the wheel
      if (r.used < r.size) release.emplace_back(r.base + r.used, r.size - r.used);
    }
    kept_.clear();
    kept_bytes_ = 0;
    released_.clear();
  }
  for (auto [q, n] : release) Release(q, n);
  if (grower_.joinable()) grower_.join();  // before the client goes
}

void SharedBlocks::WaitForGrowth() {
  std::lock_guard grow_lock(grow_mu_);
  if (grower_.joinable()) grower_.join();
}

size_t SharedBlocks::region_bytes() const {
  std::lock_guard lock(mu_);
  size_t n = 0;
  for (const Region& r : regions_) n += r.size;
  return n;
}

size_t SharedBlocks::kept_bytes() const {
  std::lock_guard lock(mu_);
  return kept_bytes_;
}

}  // namespace mooncake_connector::mooncake
