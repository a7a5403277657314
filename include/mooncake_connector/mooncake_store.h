// mooncake:// -- the real Mooncake Store behind the Store interface.
//
// Semantics on top of Mooncake's (docs/mooncake.md):
//  - Put overwrites (Mooncake's put keeps the old value of an existing key).
//  - Values of any size: a value above `chunk_size` is striped over several
//    objects (docs/mooncake_layout.md); single-object values written by other
//    Mooncake clients (SGLang, the raw wheel) read as they are.
//  - List asks the master's admin HTTP endpoint /get_all_keys.
//  - An unreachable master is Unavailable within `connect_timeout`.
//
// Providers of the Mooncake Store C ABI:
//  - native: `library` (MOONCAKE_STORE_LIBRARY) names a libmooncake_store.so,
//    opened with dlopen;
//  - Python: inside a Python process, the mooncake_connector package registers
//    the wheel's mooncake.store.MooncakeDistributedStore as the default.
// A set `library` wins; without it the registered default is used.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "mooncake_connector/export.h"
#include "mooncake_connector/status.h"
#include "mooncake_connector/store.h"
#include "mooncake_connector/url.h"

namespace mooncake_connector {

namespace mooncake {
struct Api;
}

enum class PinMode { kNone, kSoft, kHard };

struct MooncakeConfig {
  std::string master_address;   // host:port of mooncake_master (MOONCAKE_MASTER)
  std::string client_address;   // a running mooncake_client (MOONCAKE_CLIENT); standalone-client mode
  std::string protocol = "tcp";                 // MOONCAKE_PROTOCOL
  std::string device_name;                      // MOONCAKE_DEVICE
  std::string metadata_server = "P2PHANDSHAKE";  // MOONCAKE_TE_META_DATA_SERVER
  std::string local_hostname = "localhost";     // MOONCAKE_LOCAL_HOSTNAME
  uint64_t global_segment_size = uint64_t{4} << 30;  // MOONCAKE_GLOBAL_SEGMENT_SIZE; 0 = pure client
  uint64_t local_buffer_size = uint64_t{64} << 20;   // MOONCAKE_LOCAL_BUFFER_SIZE
  int replica_num = 1;                          // MOONCAKE_REPLICA_NUM
  PinMode pin = PinMode::kNone;                 // MOONCAKE_PIN: none | soft | hard
  int metrics_port = 9003;                      // MOONCAKE_MASTER_METRICS_PORT (admin HTTP)
  uint64_t chunk_size = uint64_t{16} << 20;     // MOONCAKE_CHUNK_SIZE: largest single object
  int transfer_slots = 4;                       // registered staging buffers of chunk_size each
  // MOONCAKE_READ_THREADS: values one batch read fetches side by side (their
  // transfers take turns; one copies while another transfers). 0 = automatic:
  // 2 in standalone-client mode (transfers are shared-memory copies), 1 over
  // a network (TCP transfers compete with a second reader for the CPU).
  int read_threads = 0;
  // MOONCAKE_DIRECT_TRANSFERS (1 | 0): reads of an expected size (model tensors)
  // go straight into their destination instead of through the staging slots,
  // where Mooncake allows it: a full client over TCP whose provider can
  // scatter one object into several buffers (the wheel's
  // batch_get_into_multi_buffers); in standalone-client mode, reads by
  // streaming loads (weight_iterator) into blocks of the client's shared
  // memory that this client lends as their tensors (set up after a
  // process's second streaming load). Elsewhere reads are staged as ever.
  bool direct_transfers = true;
  // MOONCAKE_LOCAL_READS (1 | 0): a direct read of an object held in the
  // segment this client contributes (global_segment_size > 0) copies it from
  // there itself, copy and checksum in one pass over the bytes, several
  // values side by side, instead of Mooncake copying it and the checksum
  // reading it again. The master's query grants read leases as a get does.
  bool local_reads = true;
  std::chrono::milliseconds connect_timeout{5000};  // MOONCAKE_CONNECT_TIMEOUT
  // MOONCAKE_OP_TIMEOUT: how long one operation retries Mooncake's transient
  // refusals (replica not ready, read lease held, lease expired) before it
  // fails. Covers Mooncake's default 10 s read lease, which a remove() of a
  // recently read key must wait out (removes never force).
  std::chrono::milliseconds op_timeout{12000};
  std::string library;                          // MOONCAKE_STORE_LIBRARY (native provider)
};

// Reads the configuration: environment variables first, then the URL
// (mooncake://host:port/... overrides MOONCAKE_MASTER), then `options` (query
// options and keyword arguments, named like the fields above: master, client,
// protocol, device, metadata_server, local_hostname, global_segment_size,
// local_buffer_size, replica_num, pin, metrics_port, chunk_size,
// transfer_slots, read_threads, direct_transfers, local_reads, connect_timeout, op_timeout, library). InvalidArgument for a bad value
// or unknown option, and when neither a master nor a client is configured (the
// message names MOONCAKE_MASTER and the command that starts a local instance).
// `getenv` defaults to the process environment.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
MC_EXPORT Result<MooncakeConfig> MooncakeConfigFrom(const Url& url,
                                                    const std::map<std::string, std::string>& options,
                                                    const EnvLookup& getenv = {});

// Connects to the store. Unavailable (naming the address) when the master or
// client cannot be reached within config.connect_timeout. Calls with the same
// configuration share one Mooncake client while any of them holds it.
MC_EXPORT Result<std::shared_ptr<Store>> OpenMooncakeStore(const MooncakeConfig& config);
// The same with an explicit provider table (which must outlive the store).
MC_EXPORT Result<std::shared_ptr<Store>> OpenMooncakeStore(const MooncakeConfig& config,
                                                           const mooncake::Api* api);

// Sets the provider used when config.library is empty (the Python binding
// calls this). The table must live until the process exits.
MC_EXPORT void SetDefaultMooncakeApi(const mooncake::Api* api);

}  // namespace mooncake_connector
