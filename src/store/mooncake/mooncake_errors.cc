#include "store/mooncake/mooncake_api_internal.h"

namespace mooncake_connector::mooncake {

Status FromMooncakeError(int64_t code, const std::string& what) {
  std::string msg = what + " failed with Mooncake error " + std::to_string(code);
  switch (code) {
    case kErrObjectNotFound: return NotFound(what + ": key not found");
    case kErrObjectAlreadyExists: return AlreadyExists(msg + " (object already exists)");
    case kErrObjectHasLease:
      return Unavailable(msg + " (object is leased by a recent read; retry after the lease TTL)");
    case kErrInvalidParams: return InvalidArgument(msg + " (invalid parameters)");
    case kErrNoAvailableHandle:
      return ResourceExhausted(msg + " (no space left in the store's segments, or no segment mounted: after "
                                     "a master restart, storage processes take a few seconds to mount theirs again)");
    case kErrReplicaNotReady: return Unavailable(msg + " (replica not ready yet)");
    case kErrLeaseExpired: return Aborted(msg + " (lease expired during the transfer; retry)");
    case kErrReplicaBusy: return Unavailable(msg + " (replica busy)");
    case kErrIllegalClient: return Aborted(msg + " (another client's write took over the key)");
  }
  // Transfer (-8xx) and RPC (-9xx) failures: the peer or master is unreachable.
  if (code <= -800 && code > -1000) return Unavailable(msg + " (transfer or RPC failure)");
  return Internal(msg);
}

bool IsTransientError(int64_t code) {
  // -601: an upsert preempted by another client's upsert of the same key.
  return code == kErrReplicaNotReady || code == kErrObjectHasLease || code == kErrLeaseExpired ||
         code == kErrReplicaBusy || code == kErrIllegalClient;
}

}  // namespace mooncake_connector::mooncake
