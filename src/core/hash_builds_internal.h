// XXH3 built for AVX2 (hash_avx2.cc) and for AVX-512 (hash_avx512.cc), for
// hash.cc's run-time dispatch. Plain C types only: this header is included by
// files compiled with -mavx2 and -mavx512f.
#pragma once

#include <stddef.h>

namespace mooncake_connector::hash_avx2 {
// XXH3_64bits.
unsigned long long Hash(const void* data, size_t size);
// XXH3_64bits_update on an XXH3_state_t.
void Update(void* state, const void* data, size_t size);
}  // namespace mooncake_connector::hash_avx2

namespace mooncake_connector::hash_avx512 {
unsigned long long Hash(const void* data, size_t size);
void Update(void* state, const void* data, size_t size);
}  // namespace mooncake_connector::hash_avx512
