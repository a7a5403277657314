#include <dlfcn.h>

#include <map>
#include <memory>
#include <mutex>

#include "store/mooncake/mooncake_api_internal.h"

namespace mooncake_connector::mooncake {
namespace {

template <typename Fn>
Status Resolve(void* lib, const char* name, Fn* out, const std::string& path) {
  dlerror();
  void* sym = dlsym(lib, name);
  if (sym == nullptr) {
    return InvalidArgument("Mooncake store library " + path + " lacks the symbol " + name +
                           " (is it libmooncake_store.so built with the C API?)");
  }
  *out = reinterpret_cast<Fn>(sym);
  return Status::Ok();
}

}  // namespace

Result<Api> LoadNativeMooncakeApi(const std::string& path) {
  // Tables are cached per path: the provider string must outlive every store.
  static std::mutex mutex;
  static auto* cache = new std::map<std::string, std::unique_ptr<std::pair<std::string, Api>>>();
  std::lock_guard lock(mutex);
  if (auto it = cache->find(path); it != cache->end()) return it->second->second;

  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* err = dlerror();
    return InvalidArgument("cannot load the Mooncake store library MOONCAKE_STORE_LIBRARY=" + path +
                           ": " + (err ? err : "unknown error"));
  }
  auto entry = std::make_unique<std::pair<std::string, Api>>("libmooncake_store.so at " + path, Api{});
  Api& api = entry->second;
  api.provider = entry->first.c_str();
  Status s;
  auto resolve = [&](const char* name, auto* fn) {
    if (s.ok()) s = Resolve(lib, name, fn, path);
  };
  resolve("mooncake_store_create", &api.create);
  resolve("mooncake_store_destroy", &api.destroy);
  resolve("mooncake_store_setup", &api.setup);
  resolve("mooncake_store_put_from", &api.put_from);
  resolve("mooncake_store_batch_put_from", &api.batch_put_from);
  resolve("mooncake_store_get_into", &api.get_into);
  resolve("mooncake_store_batch_get_into", &api.batch_get_into);
  resolve("mooncake_store_is_exist", &api.is_exist);
  resolve("mooncake_store_batch_is_exist", &api.batch_is_exist);
  resolve("mooncake_store_get_size", &api.get_size);
  resolve("mooncake_store_remove", &api.remove);
  resolve("mooncake_store_remove_by_regex", &api.remove_by_regex);
  resolve("mooncake_store_remove_all", &api.remove_all);
  resolve("mooncake_store_register_buffer", &api.register_buffer);
  resolve("mooncake_store_unregister_buffer", &api.unregister_buffer);
  if (!s.ok()) {
    dlclose(lib);
    return s;
  }
  // Beyond store_c.h: used when a build exports them.
  api.upsert_from = reinterpret_cast<decltype(api.upsert_from)>(dlsym(lib, "mooncake_store_upsert_from"));
  api.batch_upsert_from =
      reinterpret_cast<decltype(api.batch_upsert_from)>(dlsym(lib, "mooncake_store_batch_upsert_from"));
  api.batch_remove = reinterpret_cast<decltype(api.batch_remove)>(dlsym(lib, "mooncake_store_batch_remove"));
  Api result = api;
  (*cache)[path] = std::move(entry);
  return result;
}

}  // namespace mooncake_connector::mooncake
