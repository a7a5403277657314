// XXH3 compiled for AVX2, chosen at run time by hash.cc when the CPU has it
// (about 1.6x the baseline SSE2 code on data from memory, 3x from cache).
//
// This file is compiled with -mavx2. It must include nothing but xxhash.h and
// plain C declarations: xxhash's functions, which XXH_INLINE_ALL makes static,
// are safe, but an inline function of a shared header (the C++ library's,
// say) compiled here could be the copy the linker keeps for the whole program,
// and then run on a CPU without AVX2.
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <xxhash.h>

#include "core/hash_builds_internal.h"

#define MC_XXH3_BUILD hash_avx2
#include "core/hash_build.inc"
