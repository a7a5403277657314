// The Mooncake Store C ABI as a function table. A provider fills it and
// mooncake:// (MooncakeStore) is written once against it:
//   - a native libmooncake_store.so opened with dlopen (MOONCAKE_STORE_LIBRARY);
//   - in Python processes, the wheel's mooncake.store.MooncakeDistributedStore
//     (the mooncake_connector binding fills the table);
//   - any other provider a C++ program passes to OpenMooncakeStore.
//
// The required entries have the names, arguments and meaning of the functions
// of Mooncake's store_c.h (our own declarations). The optional entries are
// what Mooncake's client offers beyond store_c.h; null when a provider lacks
// them, and MooncakeStore then falls back as docs/mooncake.md describes.
//
// Return conventions (Mooncake's): int results are 0 on success and a negative
// Mooncake ErrorCode otherwise; int64 results are a size (>= 0) or a negative
// ErrorCode; is_exist is 1, 0, or negative on error. Entries may be called
// from several threads at once.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mooncake_connector::mooncake {

using Handle = void*;

// Layout of store_c.h's mooncake_replicate_config.
struct ReplicateConfig {
  size_t replica_num = 1;
  int with_soft_pin = 0;
  int with_hard_pin = 0;
  const char** preferred_segments = nullptr;
  size_t preferred_segments_count = 0;
};

struct Api {
  // Where the table came from, for messages: "libmooncake_store.so at ...".
  const char* provider = "";

  Handle (*create)() = nullptr;
  void (*destroy)(Handle) = nullptr;
  int (*setup)(Handle, const char* local_hostname, const char* metadata_server,
               uint64_t global_segment_size, uint64_t local_buffer_size, const char* protocol,
               const char* device_name, const char* master_server_addr) = nullptr;
  int (*put_from)(Handle, const char* key, void* buffer, size_t size,
                  const ReplicateConfig* config) = nullptr;
  int (*batch_put_from)(Handle, const char** keys, void** buffers, const size_t* sizes,
                        size_t count, const ReplicateConfig* config, int* results_out) = nullptr;
  int64_t (*get_into)(Handle, const char* key, void* buffer, size_t size) = nullptr;
  int (*batch_get_into)(Handle, const char** keys, void** buffers, const size_t* sizes,
                        size_t count, int64_t* results_out) = nullptr;
  int (*is_exist)(Handle, const char* key) = nullptr;
  int (*batch_is_exist)(Handle, const char** keys, size_t count, int* results_out) = nullptr;
  int64_t (*get_size)(Handle, const char* key) = nullptr;
  int (*remove)(Handle, const char* key, int force) = nullptr;
  int64_t (*remove_by_regex)(Handle, const char* pattern, int force) = nullptr;
  int64_t (*remove_all)(Handle, int force) = nullptr;
  int (*register_buffer)(Handle, void* buffer, size_t size) = nullptr;
  int (*unregister_buffer)(Handle, void* buffer) = nullptr;

  // Optional entries (null when the provider lacks them).
  // Why this provider cannot work at all (its library is not installed, and
  // how to install it), asked before anything else; null or "" when it can.
  const char* (*missing)() = nullptr;
  // Standalone-client mode: talk to a running mooncake_client at `address`.
  int (*setup_dummy)(Handle, uint64_t mem_pool_size, uint64_t local_buffer_size,
                     const char* address) = nullptr;
  // Memory that transfers must use (in standalone-client mode: shared memory
  // the client process can see), freed with the handle. Returns null when any
  // memory works for this handle.
  void* (*alloc_transfer_buffer)(Handle, size_t size) = nullptr;
  // Insert or update. Mooncake: an object of the same size is rewritten in
  // place (readers see "replica not ready" meanwhile; it cannot fail for lack
  // of space); another size drops the old object first, so a failed
  // allocation (-200) loses it.
  int (*upsert_from)(Handle, const char* key, void* buffer, size_t size,
                     const ReplicateConfig* config) = nullptr;
  int (*batch_upsert_from)(Handle, const char** keys, void** buffers, const size_t* sizes,
                           size_t count, const ReplicateConfig* config, int* results_out) = nullptr;
  // Reads each key's object into a scatter list: key i's buffers are the
  // next pieces[i] entries of buffers/sizes, whose sizes add up to exactly
  // the object's size (Mooncake refuses another total: -600 when smaller,
  // -800 when larger). One result per key: the size, or a negative
  // ErrorCode. Whole call: 0, or kErrNotSupported when the provider cannot.
  // With a full client over TCP the buffers need not be registered.
  int (*batch_get_into_multi)(Handle, const char** keys, size_t count, void* const* buffers,
                              const size_t* sizes, const size_t* pieces,
                              int64_t* results_out) = nullptr;
  // Reads a byte range of each key's object: bytes [offsets[i], offsets[i] +
  // sizes[i]) of key i into buffers[i], which must be registered memory (the
  // wheel's get_into_ranges refuses other memory with -600). One result per
  // key: the bytes read, or a negative ErrorCode (-704 when the key is gone,
  // -600 for a range past the object's end). Whole call: 0, or
  // kErrNotSupported when the provider cannot. Reads of a part of a value
  // (GetIntoRequest::partial) use it for the chunks the range only touches.
  int (*batch_get_range_into)(Handle, const char** keys, size_t count, void* const* buffers,
                              const uint64_t* offsets, const size_t* sizes, int64_t* results_out) = nullptr;
  // Puts each key's object from a gather list (the pieces as for
  // batch_get_into_multi, in order): put semantics, one result per key (0 or
  // a negative ErrorCode). Whole call: 0, or kErrNotSupported. With a full
  // client over TCP the buffers need not be registered.
  int (*batch_put_from_multi)(Handle, const char** keys, size_t count, void* const* buffers,
                              const size_t* sizes, const size_t* pieces, const ReplicateConfig* config,
                              int* results_out) = nullptr;
  // Where each key's object lies in this process's memory: for a key with a
  // complete memory replica in the segment this client contributes (its
  // transport endpoint is this client's own), that replica's address and
  // size; otherwise null and 0. A query as a get makes (read leases granted
  // as for a get); Mooncake's own reads memcpy from such a replica. Whole
  // call: 0, or kErrNotSupported when this handle cannot tell (a dummy
  // client: its replicas live in another process).
  int (*batch_local_replicas)(Handle, const char** keys, size_t count, const void** addresses_out,
                              uint64_t* sizes_out) = nullptr;
  // One result per key (0, or a negative ErrorCode such as -704 or -706).
  int (*batch_remove)(Handle, const char** keys, size_t count, int force,
                      int* results_out) = nullptr;
};

// Mooncake's error codes that mooncake:// treats specially.
inline constexpr int kErrBufferOverflow = -10;
inline constexpr int kErrNoAvailableHandle = -200;
inline constexpr int kErrInvalidParams = -600;
inline constexpr int kErrIllegalClient = -601;  // another client's write took over the key
inline constexpr int kErrReplicaNotReady = -703;
inline constexpr int kErrObjectNotFound = -704;
inline constexpr int kErrObjectAlreadyExists = -705;
inline constexpr int kErrObjectHasLease = -706;
inline constexpr int kErrLeaseExpired = -707;
inline constexpr int kErrReplicaBusy = -714;
inline constexpr int kErrTransferFail = -800;
inline constexpr int kErrNotSupported = -1012;

}  // namespace mooncake_connector::mooncake
