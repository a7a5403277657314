// Cooperative loads (model.h): PlanShares, who fetches what; and reading and
// checking the pieces of split tensors.
#include <algorithm>
#include <map>
#include <numeric>

#include "core/parallel_internal.h"
#include "model/model_reader_internal.h"
#include "mooncake_connector/model.h"

namespace mooncake_connector {
namespace {

// The loaders, least loaded first (ties: the lower rank).
std::vector<int> ByLoad(const std::vector<uint64_t>& load) {
  std::vector<int> order(load.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return load[a] < load[b]; });
  return order;
}

}  // namespace

std::vector<ShareBatch> PlanShares(std::span<const ManifestTensor> tensors, int world, uint64_t batch_bytes,
                                   bool split, uint64_t min_piece_bytes) {
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
    std::vector<size_t> read;
    uint64_t bytes = 0;
    while (next < tensors.size() && (read.empty() || bytes < batch_bytes)) {
      size_t c = canonical(next);
      if (!planned[c]) {
        planned[c] = true;
        read.push_back(c);
        bytes += tensors[c].nbytes;
      }
      ++next;
    }
    batch.end = next;
    std::sort(read.begin(), read.end());
    const uint64_t share = (bytes + static_cast<uint64_t>(world) - 1) / static_cast<uint64_t>(world);
    std::vector<size_t> whole;
    for (size_t i : read) {
      const ManifestTensor& t = tensors[i];
      const uint64_t rows = t.shape.empty() ? 0 : static_cast<uint64_t>(std::max<int64_t>(t.shape[0], 0));
      const uint64_t k = std::min({static_cast<uint64_t>(world), rows,
                                   min_piece_bytes > 0 ? t.nbytes / min_piece_bytes : t.nbytes});
      if (!split || k < 2 || t.nbytes <= share || t.nbytes % rows != 0) {
        whole.push_back(i);
        continue;
      }
      // Split by rows, a piece to each of the least loaded.
      const uint64_t row_bytes = t.nbytes / rows;
      std::vector<int> order = ByLoad(load);
      for (uint64_t j = 0; j < k; ++j) {
        const uint64_t first = j * rows / k, last = (j + 1) * rows / k;
        SharePiece p{i, first * row_bytes, (last - first) * row_bytes, order[j], false};
        load[static_cast<size_t>(p.owner)] += p.size;
        batch.pieces.push_back(p);
      }
    }
    // Whole tensors: the largest first, to the least loaded.
    std::vector<size_t> by_size = whole;
    std::stable_sort(by_size.begin(), by_size.end(),
                     [&](size_t a, size_t b) { return tensors[a].nbytes > tensors[b].nbytes; });
    for (size_t i : by_size) {
      int least = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
      load[static_cast<size_t>(least)] += tensors[i].nbytes;
      batch.pieces.push_back(SharePiece{i, 0, tensors[i].nbytes, least, true});
    }
    std::sort(batch.pieces.begin(), batch.pieces.end(), [](const SharePiece& a, const SharePiece& b) {
      return a.index != b.index ? a.index < b.index : a.offset < b.offset;
    });
    batches.push_back(std::move(batch));
  }
  return batches;
}

Result<std::vector<ShareBatch>> ModelReaderImpl::PlanShares(int world, uint64_t batch_bytes, bool split,
                                                       std::optional<uint64_t> min_piece_bytes) {
  if (!has_manifest_) return FailedPrecondition("a cooperative load needs a manifest");
  if (!min_piece_bytes) {
    MC_ASSIGN_OR_RETURN(Connector::InUse in_use, model_.Use());
    min_piece_bytes = model_.connector().store().Features().chunk_bytes;
  }
  return mooncake_connector::PlanShares(tensors_, world, batch_bytes, split, *min_piece_bytes);
}

std::vector<Status> ModelReaderImpl::ReadPieces(std::span<const TensorPiece> pieces) {
  const size_t n = pieces.size();
  std::vector<std::string> keys(n), expected(n), heads(n);
  std::vector<GetIntoRequest> requests(n);
  std::vector<Status> out(n);
  for (size_t j = 0; j < n; ++j) {
    const TensorPiece& p = pieces[j];
    if (p.index >= tensors_.size() || p.offset > tensors_[p.index].nbytes ||
        p.destination.size() > tensors_[p.index].nbytes - p.offset) {
      out[j] = InvalidArgument("piece " + std::to_string(j) + " is not within a stored tensor of " +
                               (p.index < tensors_.size() ? Describe(p.index) : "this rank"));
      continue;
    }
    keys[j] = model_.TensorKey(rank_, tensors_[p.index].name);
    Result<std::string> header = ExpectedHeader(p.index);
    if (!header.ok()) {
      out[j] = header.status();
      continue;
    }
    expected[j] = std::move(*header);
    GetIntoRequest r{keys[j], p.destination};
    r.partial = true;
    r.offset = expected[j].size() + p.offset;
    if (p.offset == 0) {  // the piece that starts the tensor also reads its header
      heads[j].assign(expected[j].size(), '\0');
      r.head = MutableBytes(reinterpret_cast<std::byte*>(heads[j].data()), heads[j].size());
      r.offset = 0;
    }
    requests[j] = r;
  }
  std::vector<Result<uint64_t>> got = model_.connector().store().BatchGetInto(requests);
  for (size_t j = 0; j < n; ++j) {
    if (!out[j].ok()) continue;
    const size_t item = pieces[j].index;
    const std::string which = Describe(item);
    const Result<uint64_t>& r = got[j];
    if (!r.ok()) {
      out[j] = ReadFailure(which, r.status());
    } else if (*r != expected[j].size() + tensors_[item].nbytes || (!heads[j].empty() && heads[j] != expected[j])) {
      out[j] = CheckRead(item, /*as_listed=*/false, {});
    }
  }
  SayIfChanged(out);
  return out;
}

Status ModelReaderImpl::CheckAssembled(size_t index, ConstBytes data) {
  if (index >= tensors_.size() || data.size() != tensors_[index].nbytes) {
    return InvalidArgument("the assembled bytes are not those of a stored tensor of this rank");
  }
  std::vector<Status> result{CheckRead(index, /*as_listed=*/true, data)};
  // A large tensor's checksum pieces are hashed on several threads.
  if (result[0].ok() && options_.verify) result[0] = CheckChecksums({&index, 1}, {&data, 1}, CopyThreads())[0];
  SayIfChanged(result);  // another save's bytes, not damage
  return result[0];
}

}  // namespace mooncake_connector
