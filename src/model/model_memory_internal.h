// What a Model remembers between its operations: shared by the copies of
// one Model::Open's result and by the readers they open, and gone with the
// last of them. Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "mooncake_connector/buffer.h"

namespace mooncake_connector {

struct ManifestPart;

class ModelMemory {
 public:
  // Complete manifest parts this model has read or written, by key. A model
  // that vanishes from the store afterwards (the master restarted, it was
  // evicted, another client removed it) is then reported as lost, naming
  // its tensors, rather than as never saved (Model::OpenReader). `text` is
  // the part as stored: reading the same text again takes the remembered
  // part instead of parsing it anew.
  void RememberManifest(const std::string& key, const ManifestPart& part, std::string text);
  std::shared_ptr<const ManifestPart> RecalledManifest(const std::string& key);
  // The remembered part of `key` if it was stored as exactly `text`.
  std::shared_ptr<const ManifestPart> RecalledManifest(const std::string& key, std::string_view text);
  // Forgets every remembered part whose key starts with `prefix`.
  void ForgetManifests(std::string_view prefix);

  // Values lent by the store (Store::BatchView) whose bytes `checked` a load
  // found to have XXH3 `checksum`. The same value (lent under the same
  // owner, held here weakly: once it is freed the entry matches nothing)
  // holds the same bytes, so a later load need not hash them again.
  void RememberChecked(const std::string& key, const Buffer& view, ConstBytes checked, uint64_t checksum);
  bool CheckedBefore(const std::string& key, const Buffer& view, ConstBytes checked, uint64_t checksum);

 private:
  std::mutex manifests_mutex_;
  struct RememberedManifest {
    std::shared_ptr<const ManifestPart> part;
    std::string text;
  };
  std::map<std::string, RememberedManifest, std::less<>> manifests_;
  std::mutex checked_mutex_;
  struct Checked {
    std::weak_ptr<void> owner;
    const std::byte* data = nullptr;
    size_t size = 0;
    uint64_t checksum = 0;
  };
  std::unordered_map<std::string, Checked> checked_;
};

}  // namespace mooncake_connector
