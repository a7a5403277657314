#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "mooncake_connector/mooncake_store.h"
#include "store/mooncake/mooncake_api_internal.h"
#include "store/mooncake/new_store_internal.h"
#include "store/mooncake/network_internal.h"

// Connecting: provider choice, reachability probes, client setup, and the
// per-process sharing of clients. The store itself is in mooncake_store.cc.
namespace mooncake_connector {
namespace {

using mooncake::Api;
using mooncake::Handle;

std::atomic<const Api*> g_default_api{nullptr};

}  // namespace

void SetDefaultMooncakeApi(const mooncake::Api* api) { g_default_api.store(api); }

Result<std::shared_ptr<Store>> OpenMooncakeStore(const MooncakeConfig& config) {
  if (!config.library.empty()) {
    // The table is cached by LoadNativeMooncakeApi; keep a stable copy.
    MC_ASSIGN_OR_RETURN(Api api, mooncake::LoadNativeMooncakeApi(config.library));
    static std::mutex mutex;
    static auto* tables = new std::vector<std::unique_ptr<Api>>();
    std::lock_guard lock(mutex);
    tables->push_back(std::make_unique<Api>(api));
    return OpenMooncakeStore(config, tables->back().get());
  }
  const Api* api = g_default_api.load();
  if (api == nullptr) {
    return FailedPrecondition(
        "no Mooncake Store provider: set MOONCAKE_STORE_LIBRARY to a libmooncake_store.so, or use "
        "the Python package with the mooncake-transfer-engine wheel installed");
  }
  return OpenMooncakeStore(config, api);
}

namespace {

// Everything that distinguishes one client from another, as a map key.
std::string ClientIdentity(const MooncakeConfig& c, const Api* api) {
  return std::to_string(reinterpret_cast<uintptr_t>(api)) + '\n' + c.master_address + '\n' +
         c.client_address + '\n' + c.protocol + '\n' + c.device_name + '\n' + c.metadata_server +
         '\n' + c.local_hostname + '\n' + std::to_string(c.global_segment_size) + '\n' +
         std::to_string(c.local_buffer_size) + '\n' + std::to_string(c.replica_num) + '\n' +
         std::to_string(static_cast<int>(c.pin)) + '\n' + std::to_string(c.metrics_port) + '\n' +
         std::to_string(c.chunk_size) + '\n' + std::to_string(c.transfer_slots) + '\n' + std::to_string(c.read_threads) + '\n' +
         std::to_string(c.connect_timeout.count()) + '\n' + std::to_string(c.op_timeout.count()) + '\n' +
         std::to_string(c.direct_transfers) + std::to_string(c.local_reads);
}

Result<std::shared_ptr<Store>> ConnectNewClient(const MooncakeConfig& config, const Api* api) {
  const bool client_mode = !config.client_address.empty();
  if (client_mode && api->setup_dummy == nullptr) {
    return Unimplemented(std::string("MOONCAKE_CLIENT (standalone-client mode) needs the Python "
                                     "provider; ") + api->provider + " has no setup_dummy");
  }
  // A provider that cannot work at all (its library is not installed) says
  // so before any address is tried.
  if (const char* why = api->missing != nullptr ? api->missing() : nullptr; why != nullptr && *why != '\0') {
    return FailedPrecondition(why);
  }
  // Mooncake's setup blocks for a long time on an unreachable peer; a probe
  // bounds the wait and names the address.
  if (client_mode) {
    MC_RETURN_IF_ERROR(mooncake::ProbeTcp(config.client_address, config.connect_timeout,
                                          "mooncake_client (MOONCAKE_CLIENT)"));
  } else {
    MC_RETURN_IF_ERROR(mooncake::ProbeTcp(
        config.master_address, config.connect_timeout,
        "Mooncake master (MOONCAKE_MASTER; start one with `mooncake-connector standalone`)"));
    if (config.metadata_server.starts_with("http://")) {
      std::string rest = config.metadata_server.substr(7);
      MC_RETURN_IF_ERROR(mooncake::ProbeTcp(rest.substr(0, rest.find('/')), config.connect_timeout,
                                            "metadata server (MOONCAKE_TE_META_DATA_SERVER)"));
    }
  }
  Handle handle = api->create();
  if (handle == nullptr) {
    return Unavailable(std::string("could not create a Mooncake client with ") + api->provider);
  }
  int rc;
  if (client_mode) {
    uint64_t pool = config.chunk_size * static_cast<uint64_t>(config.transfer_slots) + (uint64_t{1} << 20);
    rc = api->setup_dummy(handle, pool, config.local_buffer_size, config.client_address.c_str());
  } else {
    rc = api->setup(handle, config.local_hostname.c_str(), config.metadata_server.c_str(),
                    config.global_segment_size, config.local_buffer_size, config.protocol.c_str(),
                    config.device_name.c_str(), config.master_address.c_str());
  }
  if (rc != 0) {
    api->destroy(handle);
    std::string where = client_mode ? "mooncake_client at " + config.client_address
                                    : "master at " + config.master_address;
    return Unavailable("Mooncake setup against the " + where + " failed with code " + std::to_string(rc) +
                       " (protocol " + config.protocol + ", metadata " + config.metadata_server + ")");
  }
  return mooncake::NewMooncakeStore(config, api, handle);
}

}  // namespace

Result<std::shared_ptr<Store>> OpenMooncakeStore(const MooncakeConfig& config, const Api* api) {
  // Connectors with the same configuration share one Mooncake client (and
  // its segment): setting up a client takes a while and holds memory.
  static std::mutex mutex;
  static auto* open = new std::map<std::string, std::weak_ptr<Store>>();
  std::string identity = ClientIdentity(config, api);
  std::lock_guard lock(mutex);
  if (auto it = open->find(identity); it != open->end()) {
    if (std::shared_ptr<Store> existing = it->second.lock()) return existing;
  }
  MC_ASSIGN_OR_RETURN(std::shared_ptr<Store> store, ConnectNewClient(config, api));
  (*open)[identity] = store;
  return store;
}

}  // namespace mooncake_connector
