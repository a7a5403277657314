// The Python provider of the Mooncake Store C ABI table: each entry calls the
// same-named method of the wheel's mooncake.store.MooncakeDistributedStore,
// taking the GIL for the call, so the C++ store (and its threads) can use the
// wheel. Python exceptions become Mooncake's INTERNAL_ERROR (-1).
#include "mooncake_provider.h"

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <string>
#include <utility>

namespace nb = nanobind;

namespace mooncake_connector::python {
namespace {

using mooncake::Handle;
using mooncake::ReplicateConfig;

constexpr int kInternalError = -1;

struct PyStore {
  nb::object store;
  nb::object module;
  bool dummy = false;  // set up with setup_dummy: transfers need its shared memory
  std::string endpoint;  // this client's transport endpoint, once asked for
};

PyStore* Self(Handle h) { return static_cast<PyStore*>(h); }

bool Finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

nb::object Config(PyStore* s, const ReplicateConfig* c) {
  nb::object config = s->module.attr("ReplicateConfig")();
  if (c == nullptr) return config;
  config.attr("replica_num") = c->replica_num;
  config.attr("with_hard_pin") = c->with_hard_pin != 0;
  if (c->with_soft_pin) {
    if (nb::hasattr(config, "soft_pin_action")) {
      config.attr("soft_pin_action") = s->module.attr("SoftPinAction").attr("ENABLE");
    } else {
      config.attr("with_soft_pin") = true;
    }
  }
  return config;
}

nb::list Keys(const char** keys, size_t n) {
  nb::list out;
  for (size_t i = 0; i < n; ++i) out.append(nb::str(keys[i]));
  return out;
}

template <typename T>
nb::list Ints(const T* values, size_t n) {
  nb::list out;
  for (size_t i = 0; i < n; ++i) out.append(values[i]);
  return out;
}

nb::list Pointers(void** buffers, size_t n) {
  nb::list out;
  for (size_t i = 0; i < n; ++i) out.append(reinterpret_cast<uintptr_t>(buffers[i]));
  return out;
}

// The scatter/gather lists of the *_multi entries as the wheel takes them:
// per key, a list of addresses and a list of sizes.
std::pair<nb::list, nb::list> PieceLists(void* const* buffers, const size_t* sizes, const size_t* pieces,
                                         size_t n) {
  nb::list all_buffers, all_sizes;
  size_t at = 0;
  for (size_t i = 0; i < n; ++i) {
    nb::list b, s;
    for (size_t j = 0; j < pieces[i]; ++j, ++at) {
      b.append(reinterpret_cast<uintptr_t>(buffers[at]));
      s.append(sizes[at]);
    }
    all_buffers.append(b);
    all_sizes.append(s);
  }
  return {all_buffers, all_sizes};
}

// Runs `fn` with the GIL; a Python exception gives `on_error`.
template <typename R, typename Fn>
R WithGil(R on_error, Fn&& fn) {
  if (!Py_IsInitialized() || Finalizing()) return on_error;
  nb::gil_scoped_acquire gil;
  try {
    return fn();
  } catch (const nb::python_error& e) {
    PyErr_WriteUnraisable(nullptr);  // visible on stderr, never swallowed silently
    return on_error;
  } catch (const std::exception&) {
    return on_error;
  }
}

template <typename T>
void CopyResults(const nb::handle& list, T* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = nb::cast<T>(list[i]);
}

// put_from / upsert_from: the same arguments, another method.
int WriteFrom(Handle h, const char* method, const char* key, void* buffer, size_t size,
              const ReplicateConfig* c) {
  return WithGil(kInternalError, [&] {
    PyStore* s = Self(h);
    return nb::cast<int>(
        s->store.attr(method)(key, reinterpret_cast<uintptr_t>(buffer), size, Config(s, c)));
  });
}

// batch_put_from / batch_upsert_from.
int BatchWriteFrom(Handle h, const char* method, const char** keys, void** buffers,
                   const size_t* sizes, size_t n, const ReplicateConfig* c, int* results) {
  return WithGil(kInternalError, [&] {
    PyStore* s = Self(h);
    nb::object r = s->store.attr(method)(Keys(keys, n), Pointers(buffers, n), Ints(sizes, n), Config(s, c));
    CopyResults(r, results, n);
    return 0;
  });
}

Handle Create() {
  return WithGil<Handle>(nullptr, []() -> Handle {
    nb::object module = nb::module_::import_("mooncake.store");
    return new PyStore{module.attr("MooncakeDistributedStore")(), module};
  });
}

// Api::missing: the wheel's module cannot be imported.
const char* Missing() {
  static std::string text;
  if (!Py_IsInitialized() || Finalizing()) return nullptr;
  nb::gil_scoped_acquire gil;
  try {
    nb::module_::import_("mooncake.store");
    return nullptr;
  } catch (const nb::python_error& e) {
    if (!e.matches(PyExc_ImportError)) return nullptr;  // create() reports it
    text = std::string("the Mooncake wheel is not installed (") + e.what() +
           "): pip install 'mooncake-connector[mooncake]' (the extra pyproject.toml pins)";
    return text.c_str();
  }
}

void Destroy(Handle h) {
  PyStore* s = Self(h);
  // At interpreter exit the objects cannot be touched any more; leak them.
  if (!Py_IsInitialized() || Finalizing()) return;
  nb::gil_scoped_acquire gil;
  try {
    s->store.attr("close")();
  } catch (const nb::python_error&) {
  }
  delete s;
}

const mooncake::Api kApi = [] {
  mooncake::Api api;
  api.provider = "the mooncake.store Python wheel (MooncakeDistributedStore)";
  api.create = &Create;
  api.missing = &Missing;
  api.destroy = &Destroy;
  api.setup = [](Handle h, const char* local_hostname, const char* metadata_server, uint64_t segment,
                 uint64_t local_buffer, const char* protocol, const char* device,
                 const char* master) -> int {
    return WithGil(kInternalError, [&] {
      return nb::cast<int>(Self(h)->store.attr("setup")(local_hostname, metadata_server, segment,
                                                       local_buffer, protocol, device, master));
    });
  };
  api.setup_dummy = [](Handle h, uint64_t pool, uint64_t local_buffer, const char* address) -> int {
    return WithGil(kInternalError, [&] {
      int rc = nb::cast<int>(Self(h)->store.attr("setup_dummy")(pool, local_buffer, address));
      Self(h)->dummy = rc == 0;
      return rc;
    });
  };
  api.alloc_transfer_buffer = [](Handle h, size_t size) -> void* {
    if (!Self(h)->dummy) return nullptr;  // a full client can use any memory
    return WithGil<void*>(nullptr, [&] {
      auto p = nb::cast<uintptr_t>(Self(h)->store.attr("alloc_from_mem_pool")(size));
      return reinterpret_cast<void*>(p);
    });
  };
  api.put_from = [](Handle h, const char* key, void* buffer, size_t size,
                    const ReplicateConfig* c) -> int {
    return WriteFrom(h, "put_from", key, buffer, size, c);
  };
  api.batch_put_from = [](Handle h, const char** keys, void** buffers, const size_t* sizes, size_t n,
                          const ReplicateConfig* c, int* results) -> int {
    return BatchWriteFrom(h, "batch_put_from", keys, buffers, sizes, n, c, results);
  };
  api.upsert_from = [](Handle h, const char* key, void* buffer, size_t size,
                       const ReplicateConfig* c) -> int {
    return WriteFrom(h, "upsert_from", key, buffer, size, c);
  };
  api.batch_upsert_from = [](Handle h, const char** keys, void** buffers, const size_t* sizes,
                             size_t n, const ReplicateConfig* c, int* results) -> int {
    return BatchWriteFrom(h, "batch_upsert_from", keys, buffers, sizes, n, c, results);
  };
  api.batch_remove = [](Handle h, const char** keys, size_t n, int force, int* results) -> int {
    return WithGil(kInternalError, [&] {
      CopyResults(Self(h)->store.attr("batch_remove")(Keys(keys, n), force != 0), results, n);
      return 0;
    });
  };
  api.get_into = [](Handle h, const char* key, void* buffer, size_t size) -> int64_t {
    return WithGil<int64_t>(kInternalError, [&] {
      return nb::cast<int64_t>(
          Self(h)->store.attr("get_into")(key, reinterpret_cast<uintptr_t>(buffer), size));
    });
  };
  api.batch_get_into = [](Handle h, const char** keys, void** buffers, const size_t* sizes, size_t n,
                          int64_t* results) -> int {
    return WithGil(kInternalError, [&] {
      nb::object r = Self(h)->store.attr("batch_get_into")(Keys(keys, n), Pointers(buffers, n),
                                                           Ints(sizes, n));
      CopyResults(r, results, n);
      return 0;
    });
  };
  api.batch_get_into_multi = [](Handle h, const char** keys, size_t n, void* const* buffers,
                                const size_t* sizes, const size_t* pieces, int64_t* results) -> int {
    return WithGil(kInternalError, [&] {
      nb::object store = Self(h)->store;
      if (!nb::hasattr(store, "batch_get_into_multi_buffers")) return mooncake::kErrNotSupported;
      auto [all_buffers, all_sizes] = PieceLists(buffers, sizes, pieces, n);
      CopyResults(store.attr("batch_get_into_multi_buffers")(Keys(keys, n), all_buffers, all_sizes), results, n);
      return 0;
    });
  };
  api.batch_get_range_into = [](Handle h, const char** keys, size_t n, void* const* buffers,
                                const uint64_t* offsets, const size_t* sizes, int64_t* results) -> int {
    return WithGil(kInternalError, [&] {
      // The wheel's get_into_ranges: per buffer, per key, lists of
      // (destination offset, source offset, size); here one range each.
      nb::object store = Self(h)->store;
      if (!nb::hasattr(store, "get_into_ranges")) return mooncake::kErrNotSupported;
      nb::list ptrs, all_keys, dst_offsets, src_offsets, all_sizes;
      auto one = [](auto v) {
        nb::list inner, outer;
        inner.append(v);
        outer.append(inner);
        return outer;
      };
      for (size_t i = 0; i < n; ++i) {
        ptrs.append(reinterpret_cast<uintptr_t>(buffers[i]));
        nb::list key;
        key.append(nb::str(keys[i]));
        all_keys.append(key);
        dst_offsets.append(one(uint64_t{0}));
        src_offsets.append(one(offsets[i]));
        all_sizes.append(one(static_cast<uint64_t>(sizes[i])));
      }
      nb::object r = store.attr("get_into_ranges")(ptrs, all_keys, dst_offsets, src_offsets, all_sizes);
      size_t i = 0;
      for (nb::handle per_buffer : r) {
        if (i == n) break;
        results[i++] = nb::cast<int64_t>(per_buffer[0][0]);
      }
      for (; i < n; ++i) results[i] = mooncake::kErrInvalidParams;
      return 0;
    });
  };
  api.batch_put_from_multi = [](Handle h, const char** keys, size_t n, void* const* buffers,
                                const size_t* sizes, const size_t* pieces, const ReplicateConfig* c,
                                int* results) -> int {
    return WithGil(kInternalError, [&] {
      PyStore* s = Self(h);
      if (!nb::hasattr(s->store, "batch_put_from_multi_buffers")) return mooncake::kErrNotSupported;
      auto [all_buffers, all_sizes] = PieceLists(buffers, sizes, pieces, n);
      CopyResults(s->store.attr("batch_put_from_multi_buffers")(Keys(keys, n), all_buffers, all_sizes, Config(s, c)),
                  results, n);
      return 0;
    });
  };
  api.batch_local_replicas = [](Handle h, const char** keys, size_t n, const void** addresses,
                                uint64_t* sizes) -> int {
    return WithGil(kInternalError, [&] {
      PyStore* s = Self(h);
      if (s->dummy || !nb::hasattr(s->store, "batch_get_replica_desc")) return mooncake::kErrNotSupported;
      if (s->endpoint.empty()) s->endpoint = nb::cast<std::string>(s->store.attr("get_hostname")());
      nb::dict found = nb::cast<nb::dict>(s->store.attr("batch_get_replica_desc")(Keys(keys, n)));
      nb::object complete = s->module.attr("ReplicaStatus").attr("COMPLETE");
      for (size_t i = 0; i < n; ++i) {
        addresses[i] = nullptr;
        sizes[i] = 0;
        nb::str key(keys[i]);
        if (!found.contains(key)) continue;
        for (nb::handle replica : found[key]) {
          if (!nb::cast<bool>(replica.attr("is_memory_replica")()) || !replica.attr("status").equal(complete)) continue;
          nb::object where = replica.attr("get_memory_descriptor")().attr("buffer_descriptor");
          if (nb::cast<std::string>(where.attr("transport_endpoint")) != s->endpoint) continue;
          addresses[i] = reinterpret_cast<const void*>(nb::cast<uintptr_t>(where.attr("buffer_address")));
          sizes[i] = nb::cast<uint64_t>(where.attr("size"));
          break;
        }
      }
      return 0;
    });
  };
  api.is_exist = [](Handle h, const char* key) -> int {
    return WithGil(kInternalError, [&] { return nb::cast<int>(Self(h)->store.attr("is_exist")(key)); });
  };
  api.batch_is_exist = [](Handle h, const char** keys, size_t n, int* results) -> int {
    return WithGil(kInternalError, [&] {
      CopyResults(Self(h)->store.attr("batch_is_exist")(Keys(keys, n)), results, n);
      return 0;
    });
  };
  api.get_size = [](Handle h, const char* key) -> int64_t {
    return WithGil<int64_t>(kInternalError,
                            [&] { return nb::cast<int64_t>(Self(h)->store.attr("get_size")(key)); });
  };
  api.remove = [](Handle h, const char* key, int force) -> int {
    return WithGil(kInternalError,
                   [&] { return nb::cast<int>(Self(h)->store.attr("remove")(key, force != 0)); });
  };
  api.remove_by_regex = [](Handle h, const char* pattern, int force) -> int64_t {
    return WithGil<int64_t>(kInternalError, [&] {
      return nb::cast<int64_t>(Self(h)->store.attr("remove_by_regex")(pattern, force != 0));
    });
  };
  api.remove_all = [](Handle h, int force) -> int64_t {
    return WithGil<int64_t>(kInternalError,
                            [&] { return nb::cast<int64_t>(Self(h)->store.attr("remove_all")(force != 0)); });
  };
  api.register_buffer = [](Handle h, void* buffer, size_t size) -> int {
    return WithGil(kInternalError, [&] {
      return nb::cast<int>(
          Self(h)->store.attr("register_buffer")(reinterpret_cast<uintptr_t>(buffer), size));
    });
  };
  api.unregister_buffer = [](Handle h, void* buffer) -> int {
    return WithGil(kInternalError, [&] {
      return nb::cast<int>(Self(h)->store.attr("unregister_buffer")(reinterpret_cast<uintptr_t>(buffer)));
    });
  };
  return api;
}();

}  // namespace

const mooncake::Api* PythonMooncakeApi() { return &kApi; }

}  // namespace mooncake_connector::python
