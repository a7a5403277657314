// XXH3 compiled for AVX-512, chosen at run time by hash.cc when the CPU has it
// (on a lent 16-core Xeon host, one thread hashing 1.87 GB from memory: 7.0
// GB/s against the AVX2 build's 6.4). Compiled with -mavx512f; what it may
// include is as in hash_avx2.cc.
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX512
#include <xxhash.h>

#include "core/hash_builds_internal.h"

#define MC_XXH3_BUILD hash_avx512
#include "core/hash_build.inc"
