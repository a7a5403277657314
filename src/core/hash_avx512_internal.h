// The AVX-512 build of XXH3 (hash_avx512.cc), for hash.cc's run-time dispatch.
// Plain C types only: this header is included by a file compiled with -mavx512f.
#pragma once

#include <stddef.h>

namespace mooncake_connector::hash_avx512 {

// XXH3_64bits.
unsigned long long Hash(const void* data, size_t size);
// XXH3_64bits_update on an XXH3_state_t.
void Update(void* state, const void* data, size_t size);

}  // namespace mooncake_connector::hash_avx512
