// The mooncake:// Store: a MooncakeClient shared by a reader (the read path)
// and a writer (writes, commits, removes), and the calls that only look
// (exists, sizes, lists). The layout and the guarantees are in
// docs/mooncake_layout.md, which names the file of each step.
#include <algorithm>
#include <memory>

#include "store/mooncake/mooncake_client_internal.h"
#include "store/mooncake/mooncake_reader_internal.h"
#include "store/mooncake/mooncake_writer_internal.h"
#include "store/mooncake/new_store_internal.h"

namespace mooncake_connector::mooncake {
namespace {

class MooncakeStore final : public Store {
 public:
  MooncakeStore(MooncakeConfig config, const Api* api, Handle handle)
      : client_(std::move(config), api, handle), reader_(client_), writer_(client_) {}
  Status Init() { return client_.Init(); }

  std::string url() const override {
    const std::string& master = client_.config().master_address;
    return "mooncake://" + master;
  }
  // Values larger than a chunk are chunked, with a checksum in their header.
  // In standalone-client mode the reader lends the client's shared memory.
  StoreFeatures Features() const override {
    return {.checksums_values_above = client_.slot_size(),
            .chunk_bytes = client_.slot_size(),
            .read_memory = client_.shared() != nullptr ? &reader_ : nullptr};
  }
  std::vector<Status> BatchPut(std::span<const PutRequest> requests, const WriteOptions& options) override {
    return writer_.BatchPut(requests, options);
  }
  std::vector<Result<uint64_t>> BatchGetInto(std::span<const GetIntoRequest> requests) override {
    return reader_.BatchGetInto(requests);
  }
  Result<Buffer> Get(std::string_view key) override { return reader_.Get(key); }
  Status Remove(std::string_view key) override { return writer_.Remove(key); }
  std::vector<Result<bool>> BatchExists(std::span<const std::string_view> keys) override;
  Result<uint64_t> GetSize(std::string_view key) override;
  Result<std::vector<std::string>> List(std::string_view prefix) override;
  SharedBlocks* shared_blocks() const { return client_.shared(); }

 private:
  // Declared first: the reader and the writer work through it, and it goes
  // last.
  MooncakeClient client_;
  mutable MooncakeReader reader_;  // lent as read memory by Features()
  MooncakeWriter writer_;
};

}  // namespace

std::vector<Result<bool>> MooncakeStore::BatchExists(std::span<const std::string_view> keys) {
  std::vector<Result<bool>> out(keys.size(), Result<bool>(false));
  std::vector<std::string> owned;
  std::vector<size_t> index;
  for (size_t i = 0; i < keys.size(); ++i) {
    Status s = ValidateKey(keys[i]);
    if (!s.ok()) {
      out[i] = s;
      continue;
    }
    owned.emplace_back(keys[i]);
    index.push_back(i);
  }
  if (owned.empty()) return out;
  std::vector<const char*> c_keys = CStrings(owned);
  std::vector<int> results(owned.size(), 0);
  Deadline deadline = client_.NewDeadline();
  int call = -1;  // the batch call's own code; stays -1 if it was never made
  int64_t rc = RetryTransient(deadline, [&]() -> int64_t {
    call = client_.api()->batch_is_exist(client_.handle(), c_keys.data(), c_keys.size(), results.data());
    return call != 0 ? call : FirstRetryable(results);
  });
  if (call != 0) {
    for (size_t j = 0; j < owned.size(); ++j) out[index[j]] = client_.Fail(rc, "is_exist '" + owned[j] + "'");
    return out;
  }
  for (size_t j = 0; j < owned.size(); ++j) {
    int r = results[j];
    if (r == 1) {
      // A 64-byte object may be the tombstone of a removed key.
      Result<Existing> e = client_.Inspect(owned[j], deadline);
      if (!e.ok()) out[index[j]] = e.status();
      else out[index[j]] = e->exists && !(e->header && e->header->tombstone);
    } else if (r == 0 || r == kErrObjectNotFound) out[index[j]] = false;
    else out[index[j]] = client_.Fail(r, "is_exist '" + owned[j] + "'");
  }
  return out;
}

Result<uint64_t> MooncakeStore::GetSize(std::string_view key) {
  MC_RETURN_IF_ERROR(ValidateKey(key));
  std::string k(key);
  Deadline deadline = client_.NewDeadline();
  MC_ASSIGN_OR_RETURN(Existing e, client_.Inspect(k, deadline));
  if (!e.exists || (e.header && e.header->tombstone)) return NotFound("key '" + k + "' not found");
  return e.header ? e.header->total_size : e.object_size;
}

Result<std::vector<std::string>> MooncakeStore::List(std::string_view prefix) {
  MC_ASSIGN_OR_RETURN(std::vector<std::string> keys, client_.AllKeys(prefix));
  std::erase_if(keys, [](const std::string& k) { return IsChunkKey(k); });
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  return keys;
}

Result<std::shared_ptr<Store>> NewMooncakeStore(const MooncakeConfig& config, const Api* api,
                                                Handle handle) {
  auto store = std::make_shared<MooncakeStore>(config, api, handle);
  MC_RETURN_IF_ERROR(store->Init());
  return std::shared_ptr<Store>(std::move(store));
}


SharedBlocks* SharedBlocksOf(Store& store) { return static_cast<MooncakeStore&>(store).shared_blocks(); }

}  // namespace mooncake_connector::mooncake
