// Removes in the mooncake:// store (docs/mooncake_layout.md, "Remove"): the
// key's object, its chunks of every generation, and the tombstone that stands
// in while readers hold leases.
#include "store/mooncake/mooncake_writer_internal.h"

namespace mooncake_connector::mooncake {

Status MooncakeWriter::Remove(std::string_view key) {
  MC_RETURN_IF_ERROR(ValidateKey(key));
  std::string k(key);
  client_.deferred().Flush();
  Deadline deadline = client_.NewDeadline();
  // The key is removed without being read first: a read would take a lease
  // that this very remove would then have to wait out. Its chunks are found
  // by pattern instead of through its header.
  int64_t rc = client_.api()->remove(client_.handle(), k.c_str(), /*force=*/0);
  const bool waited = IsTransientError(rc);
  if (waited) {
    // Readers hold a lease. Mark the key removed at once (an upsert ignores
    // leases; readers then see no value), and wait the leases out. A key read
    // without pause for all of op_timeout keeps its 64-byte tombstone until
    // it is written or removed again.
    if (client_.api()->upsert_from != nullptr) (void)WriteTombstone(k, deadline);
    rc = RetryTransient(deadline, [&] { return client_.api()->remove(client_.handle(), k.c_str(), /*force=*/0); });
    if (IsTransientError(rc) && client_.api()->upsert_from != nullptr) rc = 0;  // tombstoned
  }
  if (rc != 0 && rc != kErrObjectNotFound) return client_.Fail(rc, "remove '" + k + "'");
  client_.RemoveChunkObjects(k, std::nullopt, deadline);
  if (waited) {
    // A reader was active: its leases may still hold chunks the sweep had to
    // skip. Find them on the master and wait them out.
    Result<std::vector<std::string>> left = client_.AllKeys(k + kChunkKeySeparator);
    if (left.ok() && !left->empty()) (void)client_.RemoveKeys(*left, deadline, "'" + k + "'");
  }
  // A writer racing this remove may have committed a header whose chunks the
  // sweep just took (after the writer checked them): that header is marked
  // removed in place (the write lost the race), so readers do not keep
  // finding a header without its chunks.
  Result<Existing> now = client_.Inspect(k, deadline);
  if (now.ok() && now->header && !now->header->tombstone) {
    Result<bool> complete = client_.AllChunksExist(k, *now->header);
    if (complete.ok() && !*complete && client_.api()->upsert_from != nullptr) {
      (void)WriteTombstone(k, deadline);
      client_.api()->remove(client_.handle(), k.c_str(), /*force=*/0);  // once: our own read leased it
      client_.RemoveGeneration(k, *now->header, nullptr);
    }
  }
  if (rc == kErrObjectNotFound) return NotFound("key '" + k + "' not found");
  return Status::Ok();
}

Status MooncakeWriter::WriteTombstone(const std::string& key, Deadline& deadline) {
  return WriteHeader(key, MakeTombstone(1), /*upsert=*/true, client_.replicate(), deadline);
}

}  // namespace mooncake_connector::mooncake
