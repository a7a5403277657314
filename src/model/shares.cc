// PlanShares: who fetches what in a cooperative load (model.h).
#include <algorithm>
#include <map>
#include <numeric>

#include "mooncake_connector/model.h"

namespace mooncake_connector {

std::vector<ShareBatch> PlanShares(std::span<const ManifestTensor> tensors, int world, uint64_t batch_bytes) {
  world = std::max(world, 1);
  std::map<std::string_view, size_t> index;
  for (size_t i = 0; i < tensors.size(); ++i) index.emplace(tensors[i].name, i);
  auto canonical = [&](size_t i) {
    if (tensors[i].alias_of.empty()) return i;
    auto it = index.find(tensors[i].alias_of);
    return it == index.end() ? i : it->second;
  };
  std::vector<bool> planned(tensors.size(), false);
  std::vector<uint64_t> load(static_cast<size_t>(world), 0);
  std::vector<ShareBatch> batches;
  size_t next = 0;
  while (next < tensors.size()) {
    ShareBatch batch;
    uint64_t bytes = 0;
    while (next < tensors.size() && (batch.read.empty() || bytes < batch_bytes)) {
      size_t c = canonical(next);
      if (!planned[c]) {
        planned[c] = true;
        batch.read.push_back(c);
        bytes += tensors[c].nbytes;
      }
      ++next;
    }
    batch.end = next;
    std::sort(batch.read.begin(), batch.read.end());
    // Largest first, to the least loaded; ties to the lower index and rank.
    std::vector<size_t> by_size(batch.read.size());
    std::iota(by_size.begin(), by_size.end(), size_t{0});
    std::stable_sort(by_size.begin(), by_size.end(), [&](size_t a, size_t b) {
      return tensors[batch.read[a]].nbytes > tensors[batch.read[b]].nbytes;
    });
    batch.owner.assign(batch.read.size(), 0);
    for (size_t k : by_size) {
      size_t least = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
      batch.owner[k] = static_cast<int>(least);
      load[least] += tensors[batch.read[k]].nbytes;
    }
    batches.push_back(std::move(batch));
  }
  return batches;
}

}  // namespace mooncake_connector
