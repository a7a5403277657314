#include "store/mooncake/key_write_locks_internal.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "core/hash_internal.h"

namespace mooncake_connector::mooncake {
namespace {

constexpr size_t kStripes = 256;

std::array<std::mutex, kStripes>& Stripes() {
  static std::array<std::mutex, kStripes> stripes;
  return stripes;
}

size_t StripeOf(std::string_view key) {
  return static_cast<size_t>(Xxh3({reinterpret_cast<const std::byte*>(key.data()), key.size()}) % kStripes);
}

}  // namespace

std::unique_lock<std::mutex> LockKeyForWrite(std::string_view key) {
  return std::unique_lock(Stripes()[StripeOf(key)]);
}

std::vector<std::unique_lock<std::mutex>> LockKeysForWrite(std::span<const char* const> keys) {
  std::vector<size_t> stripes;
  stripes.reserve(keys.size());
  for (const char* k : keys) stripes.push_back(StripeOf({k, std::strlen(k)}));
  std::sort(stripes.begin(), stripes.end());
  stripes.erase(std::unique(stripes.begin(), stripes.end()), stripes.end());
  std::vector<std::unique_lock<std::mutex>> locks;
  locks.reserve(stripes.size());
  for (size_t s : stripes) locks.emplace_back(Stripes()[s]);
  return locks;
}

}  // namespace mooncake_connector::mooncake
