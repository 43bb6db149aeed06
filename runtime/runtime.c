/* runtime.c — creating, finding and closing the runtime of a lua_State, and
 * the accounting allocator.
 *
 * Invariant: while the runtime exists the state's allocator is chorus_alloc
 * with the runtime as its ud; the runtime's __gc restores the allocator it
 * wrapped before freeing itself, because lua_close keeps freeing after it.
 */
#include "runtime.h"

#include <lauxlib.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http_client.h"
#include "lua_events.h"
#include "clock.h"
#include "vclock.h"
#include "scheduler.h"
#include "watchdog.h"

#define RUNTIME_KEY "chorus.runtime"

struct chorus_runtime *chorus_runtime_of(lua_State *L) {
    void *ud = NULL;
    if (lua_getallocf(L, &ud) != chorus_alloc)
        return NULL;
    return ud;
}

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
 * existed, can serve any request of that class. is_lauxlib_alloc checks at start that
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

static void cache_drop(struct chorus_runtime *rt) {
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
static int is_lauxlib_alloc(lua_Alloc f) {
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

double chorus_runtime_now(const struct chorus_runtime *rt) {
    if (rt && rt->virtual_clock)
        return rt->vnow;
    return chorus_clock_monotonic();
}

void chorus_runtime_run_until(struct chorus_runtime *rt, const int *done) {
    while (!*done) {
        if (!rt->vtimers) {
            if (!uv_run(&rt->loop, UV_RUN_ONCE) && !rt->vtimers && !rt->ready_head)
                return;
            continue;
        }
        /* Virtual sleepers: let real work progress without blocking, and
         * jump the clock only when nothing else can happen first. */
        uv_run(&rt->loop, UV_RUN_NOWAIT);
        if (!*done && !rt->ready_head && chorus_http_active(rt->http) == 0)
            chorus_vclock_fire(rt);
    }
}

static void runtime_close(struct chorus_runtime *rt) {
    if (rt->watchdog_on)
        chorus_watchdog_stop(rt->watchdog);
    rt->watchdog_on = 0;
    while (rt->runs)
        chorus_run_free(rt->runs);
    chorus_events_close(rt);
    if (rt->http)
        chorus_http_client_close(rt->http);
    uv_close((uv_handle_t *)&rt->idle, NULL);
    /* Let the close callbacks of every handle run, then close the loop. */
    uv_run(&rt->loop, UV_RUN_DEFAULT);
    uv_loop_close(&rt->loop);
    chorus_http_global_cleanup();
}

static int runtime_gc(lua_State *L) {
    struct chorus_runtime **box = luaL_checkudata(L, 1, RUNTIME_KEY);
    struct chorus_runtime *rt = *box;
    if (!rt)
        return 0;
    *box = NULL;
    runtime_close(rt);
    lua_setallocf(L, rt->base_alloc, rt->base_alloc_ud);
    cache_drop(rt);
    free(rt);
    return 0;
}

/* Creates the runtime of L and anchors it in the registry. Raises on error. */
static struct chorus_runtime *runtime_create(lua_State *L) {
    struct chorus_runtime **box = lua_newuserdatauv(L, sizeof *box, 1);
    *box = NULL;
    luaL_newmetatable(L, RUNTIME_KEY);
    lua_pushcfunction(L, runtime_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    struct chorus_runtime *rt = calloc(1, sizeof *rt);
    if (!rt)
        luaL_error(L, "out of memory creating the runtime");
    if (uv_loop_init(&rt->loop) != 0) {
        free(rt);
        luaL_error(L, "cannot create the event loop");
    }
    if (chorus_http_global_init() != 0 || !(rt->http = chorus_http_client_new(&rt->loop))) {
        uv_loop_close(&rt->loop);
        free(rt);
        luaL_error(L, "cannot initialize libcurl");
    }
    uv_idle_init(&rt->loop, &rt->idle);
    rt->idle.data = rt;
    rt->watchdog_on = chorus_watchdog_start(&rt->watchdog) == 0;
    rt->limits.run_memory = CHORUS_DEFAULT_RUN_MEMORY;
    rt->limits.run_instructions = CHORUS_DEFAULT_RUN_INSTRUCTIONS;
    rt->limits.run_cpu_ms = CHORUS_DEFAULT_RUN_CPU_MS;
    /* A private thread whose stack only the runtime touches, for packing
     * results while some other coroutine may be running. */
    rt->L = lua_newthread(L);
    lua_setiuservalue(L, -2, 1); /* the box keeps the thread alive */
    rt->base_alloc = lua_getallocf(L, &rt->base_alloc_ud);
    rt->cache_on = is_lauxlib_alloc(rt->base_alloc);
    rt->lua_bytes = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
    lua_setallocf(L, chorus_alloc, rt);
    /* Runs make many short-lived tables (requests, responses, headers):
     * generational collection spends less time on them than incremental.
     * A minor collection after the heap grows 40% rather than Lua's 20%:
     * a request's objects live as long as its upstream calls, and at 20%
     * many were promoted to old ones that only a major collection frees
     * (README, Benchmarks: "Why the collector is tuned"). */
    lua_gc(L, LUA_GCGEN, 40, 0);
    *box = rt;
    lua_setfield(L, LUA_REGISTRYINDEX, RUNTIME_KEY ".anchor");
    return rt;
}

struct chorus_runtime *chorus_runtime_attach(lua_State *L) {
    struct chorus_runtime *rt = chorus_runtime_of(L);
    return rt ? rt : runtime_create(L);
}
