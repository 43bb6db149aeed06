/* alloc.c — the Lua heap allocator: per-run accounting against each run's
 * memory cap, over a cache of small blocks (see alloc.h). */
#include "alloc.h"

#include <lauxlib.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler.h"

/* ---- the small-block cache -------------------------------------------------
 *
 * A served request makes a few hundred short-lived Lua objects; through
 * glibc each alloc/free pair cost a few hundred instructions and cache
 * misses (malloc_consolidate, unlink_chunk were a fifth of the profile).
 * Freed blocks of up to 1016 bytes are kept in per-class lists and handed
 * out again, like glibc's tcache without its 7-entry limit.
 *
 * The classes are glibc's own chunk sizes (a request of n bytes gets a
 * chunk of at least (n + 23) & ~15, and at least 32, usable to 8 bytes
 * less), so any block of a class, ours or one malloc'd before the runtime
 * existed, can serve any request of that class. chorus_alloc_cache_usable checks at start that
 * malloc really sizes chunks so, and leaves the cache off otherwise. Every
 * cached block is a plain malloc chunk, so whoever frees it after the
 * runtime is gone (lua_close) can free() it. Under AddressSanitizer the
 * cache is off, so use-after-free inside Lua stays visible. */

#if defined(__SANITIZE_ADDRESS__)
#define CACHE_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CACHE_SANITIZED 1
#endif
#endif

#define SMALL_MAX (CHORUS_ALLOC_CLASSES * 16 - 8)

static size_t size_class(size_t n) {
    size_t c = (n + 23) >> 4;
    return c < 2 ? 2 : c;
}

static size_t class_usable(size_t c) { return c * 16 - 8; }

static void *block_get(struct chorus_runtime *rt, size_t n) {
    size_t c = size_class(n);
    void *p = rt->cache[c];
    if (p) {
        rt->cache[c] = *(void **)p;
        rt->cached_bytes -= c * 16;
        return p;
    }
    return malloc(class_usable(c));
}

static void block_put(struct chorus_runtime *rt, void *p, size_t n) {
    size_t c = size_class(n);
    if (rt->cached_bytes + c * 16 > CHORUS_ALLOC_CACHE_MAX) {
        free(p);
        return;
    }
    *(void **)p = rt->cache[c];
    rt->cache[c] = p;
    rt->cached_bytes += c * 16;
}

/* lua_Alloc semantics on the cache; falls through to malloc for large
 * blocks. */
static void *cached_alloc(struct chorus_runtime *rt, void *ptr, size_t osize, size_t nsize) {
    if (nsize == 0) {
        if (ptr == NULL)
            return NULL;
        if (osize <= SMALL_MAX)
            block_put(rt, ptr, osize);
        else
            free(ptr);
        return NULL;
    }
    if (ptr == NULL)
        return nsize <= SMALL_MAX ? block_get(rt, nsize) : malloc(nsize);
    if (osize <= SMALL_MAX && nsize <= SMALL_MAX && size_class(osize) == size_class(nsize))
        return ptr;
    if (osize > SMALL_MAX && nsize > SMALL_MAX)
        return realloc(ptr, nsize);
    void *p = nsize <= SMALL_MAX ? block_get(rt, nsize) : malloc(nsize);
    if (p == NULL)
        return NULL;
    memcpy(p, ptr, osize < nsize ? osize : nsize);
    if (osize <= SMALL_MAX)
        block_put(rt, ptr, osize);
    else
        free(ptr);
    return p;
}

void chorus_alloc_cache_drop(struct chorus_runtime *rt) {
    for (size_t c = 0; c <= CHORUS_ALLOC_CLASSES; c++) {
        while (rt->cache[c]) {
            void *p = rt->cache[c];
            rt->cache[c] = *(void **)p;
            free(p);
        }
    }
    rt->cached_bytes = 0;
}

/* True when f is lauxlib's allocator (realloc/free) and malloc sizes small
 * chunks as size_class assumes: only then may the cache take its blocks. */
int chorus_alloc_cache_usable(lua_Alloc f) {
#ifdef CACHE_SANITIZED
    (void)f;
    return 0;
#else
    lua_State *probe = luaL_newstate();
    if (probe == NULL)
        return 0;
    void *ud;
    int ok = lua_getallocf(probe, &ud) == f;
    lua_close(probe);
    for (size_t n = 1; ok && n <= SMALL_MAX; n++) {
        void *p = malloc(n);
        ok = p != NULL && malloc_usable_size(p) >= class_usable(size_class(n));
        free(p);
    }
    return ok;
#endif
}

void *chorus_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    struct chorus_runtime *rt = ud;
    size_t old = ptr ? osize : 0;
    struct chorus_run *run = rt->current ? rt->current->run : NULL;
    if (run && nsize > old) {
        size_t grow = nsize - old;
        if (run->killed == KILL_MEMORY)
            return NULL;
        if (run->limits.run_memory && run->mem + grow > run->limits.run_memory) {
            run->killed = KILL_MEMORY;
            return NULL;
        }
    }
    void *p = rt->cache_on ? cached_alloc(rt, ptr, old, nsize)
                           : rt->base_alloc(rt->base_alloc_ud, ptr, osize, nsize);
    if (!p && nsize > 0)
        return NULL;
    rt->lua_bytes += nsize;
    rt->lua_bytes -= old;
    if (run) {
        if (nsize > old)
            run->mem += nsize - old;
        else
            run->mem = run->mem > old - nsize ? run->mem - (old - nsize) : 0;
    }
    return p;
}
