#include "model_memory_internal.h"

#include <algorithm>

#include "mooncake_connector/model.h"

namespace mooncake_connector {

void ModelMemory::RememberManifest(const std::string& key, const ManifestPart& part, std::string text) {
  auto copy = std::make_shared<const ManifestPart>(part);
  std::lock_guard lock(manifests_mutex_);
  manifests_[key] = {std::move(copy), std::move(text)};
}

std::shared_ptr<const ManifestPart> ModelMemory::RecalledManifest(const std::string& key) {
  std::lock_guard lock(manifests_mutex_);
  auto it = manifests_.find(key);
  return it == manifests_.end() ? nullptr : it->second.part;
}

std::shared_ptr<const ManifestPart> ModelMemory::RecalledManifest(const std::string& key, std::string_view text) {
  std::lock_guard lock(manifests_mutex_);
  auto it = manifests_.find(key);
  return it == manifests_.end() || it->second.text != text ? nullptr : it->second.part;
}

void ModelMemory::ForgetManifests(std::string_view prefix) {
  std::lock_guard lock(manifests_mutex_);
  auto it = manifests_.lower_bound(prefix);
  while (it != manifests_.end() && std::string_view(it->first).starts_with(prefix)) it = manifests_.erase(it);
}

void ModelMemory::RememberChecked(const std::string& key, const Buffer& view, ConstBytes checked,
                                uint64_t checksum) {
  if (view.owner() == nullptr) return;
  std::lock_guard lock(checked_mutex_);
  // Bounded: entries of freed values go first, then all.
  constexpr size_t kMaxEntries = size_t{1} << 20;
  if (checked_.size() >= kMaxEntries) std::erase_if(checked_, [](const auto& e) { return e.second.owner.expired(); });
  if (checked_.size() >= kMaxEntries) checked_.clear();
  checked_[key] = {view.owner(), checked.data(), checked.size(), checksum};
}

bool ModelMemory::CheckedBefore(const std::string& key, const Buffer& view, ConstBytes checked, uint64_t checksum) {
  if (view.owner() == nullptr) return false;
  std::lock_guard lock(checked_mutex_);
  auto it = checked_.find(key);
  if (it == checked_.end()) return false;
  const Checked& c = it->second;
  return c.owner.lock() == view.owner() && c.data == checked.data() && c.size == checked.size() &&
         c.checksum == checksum;
}

}  // namespace mooncake_connector
