/* alloc.h — the Lua heap allocator of the runtime.
 *
 * chorus_alloc charges growth to the run whose task is executing and
 * refuses it past that run's cap, which Lua then raises as a memory error
 * inside the run; under it, freed small blocks are kept per size class and
 * handed out again (the cache), when malloc sizes chunks as glibc does.
 */
#ifndef CHORUS_ALLOC_H
#define CHORUS_ALLOC_H

#include <lua.h>

#include "runtime.h"

/* The lua_Alloc of a state with a runtime; ud is the runtime. */
void *chorus_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/* Whether f is lauxlib's allocator (realloc/free) over a malloc that sizes
 * small chunks as the cache assumes: only then may the cache be on. */
int chorus_alloc_cache_usable(lua_Alloc f);

/* Frees every cached block (the runtime is closing). */
void chorus_alloc_cache_drop(struct chorus_runtime *rt);

#endif
