// A shared library that exports the store_c.h functions (mooncake_store_*)
// over the scripted in-process Mooncake, so the native provider's dlopen path
// is tested against a library with real symbols. Built twice: with the
// optional upsert/batch_remove exports, and (MC_BASIC_C_ABI) without them.
#include "scripted_mooncake.h"

using mooncake_connector::mooncake::Api;
using mooncake_connector::mooncake::ReplicateConfig;
using mooncake_connector::testing::ScriptedMooncake;

namespace {
const Api& Table() {
  static ScriptedMooncake prototype;
  static const Api api = prototype.api();  // its entries do not depend on the instance
  return api;
}
}  // namespace

#define MC_EXPORT_C extern "C" __attribute__((visibility("default")))

MC_EXPORT_C void* mooncake_store_create() { return new ScriptedMooncake(); }
MC_EXPORT_C void mooncake_store_destroy(void* h) { delete static_cast<ScriptedMooncake*>(h); }
MC_EXPORT_C int mooncake_store_setup(void* h, const char* a, const char* b, uint64_t c, uint64_t d,
                                     const char* e, const char* f, const char* g) {
  return Table().setup(h, a, b, c, d, e, f, g);
}
MC_EXPORT_C int mooncake_store_put_from(void* h, const char* k, void* b, size_t n, const ReplicateConfig* c) {
  return Table().put_from(h, k, b, n, c);
}
MC_EXPORT_C int mooncake_store_batch_put_from(void* h, const char** k, void** b, const size_t* n, size_t count,
                                              const ReplicateConfig* c, int* out) {
  return Table().batch_put_from(h, k, b, n, count, c, out);
}
MC_EXPORT_C int64_t mooncake_store_get_into(void* h, const char* k, void* b, size_t n) {
  return Table().get_into(h, k, b, n);
}
MC_EXPORT_C int mooncake_store_batch_get_into(void* h, const char** k, void** b, const size_t* n, size_t count,
                                              int64_t* out) {
  return Table().batch_get_into(h, k, b, n, count, out);
}
MC_EXPORT_C int mooncake_store_is_exist(void* h, const char* k) { return Table().is_exist(h, k); }
MC_EXPORT_C int mooncake_store_batch_is_exist(void* h, const char** k, size_t count, int* out) {
  return Table().batch_is_exist(h, k, count, out);
}
MC_EXPORT_C int64_t mooncake_store_get_size(void* h, const char* k) { return Table().get_size(h, k); }
MC_EXPORT_C int mooncake_store_remove(void* h, const char* k, int force) { return Table().remove(h, k, force); }
MC_EXPORT_C int64_t mooncake_store_remove_by_regex(void* h, const char* p, int force) {
  return Table().remove_by_regex(h, p, force);
}
MC_EXPORT_C int64_t mooncake_store_remove_all(void* h, int force) { return Table().remove_all(h, force); }
MC_EXPORT_C int mooncake_store_register_buffer(void* h, void* b, size_t n) {
  return Table().register_buffer(h, b, n);
}
MC_EXPORT_C int mooncake_store_unregister_buffer(void* h, void* b) { return Table().unregister_buffer(h, b); }

#ifndef MC_BASIC_C_ABI
MC_EXPORT_C int mooncake_store_upsert_from(void* h, const char* k, void* b, size_t n, const ReplicateConfig* c) {
  return Table().upsert_from(h, k, b, n, c);
}
MC_EXPORT_C int mooncake_store_batch_upsert_from(void* h, const char** k, void** b, const size_t* n,
                                                 size_t count, const ReplicateConfig* c, int* out) {
  return Table().batch_upsert_from(h, k, b, n, count, c, out);
}
MC_EXPORT_C int mooncake_store_batch_remove(void* h, const char** k, size_t count, int force, int* out) {
  return Table().batch_remove(h, k, count, force, out);
}
#endif
