// Symbol visibility for the shared library build.
#pragma once

#if defined(MC_BUILDING_SHARED)
#define MC_EXPORT __attribute__((visibility("default")))
#else
#define MC_EXPORT
#endif
