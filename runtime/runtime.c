/* runtime.c — creating, finding and closing the runtime of a lua_State.
 *
 * Invariant: while the runtime exists the state's allocator is chorus_alloc
 * (alloc.c) with the runtime as its ud; the runtime's __gc restores the
 * allocator it wrapped before freeing itself, because lua_close keeps
 * freeing after it.
 */
#include "runtime.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
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
    /* Only the runs nobody owns: an owned one (core.execute's child, newer
     * than its owner, so ahead of it on the list) goes with its owner's
     * run. Freeing the head whatever it was freed such a child first, and
     * then its owner's cancel freed it again (serve stopped by SIGTERM
     * with a workflow parked: a use after free). */
    for (;;) {
        struct chorus_run *run = rt->runs;
        while (run && run->owner)
            run = run->next;
        if (!run)
            break;
        chorus_run_free(run);
    }
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
    chorus_alloc_cache_drop(rt);
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
    /* the HTTP client reads how busy the loop is (its idle time) to choose
     * where a call runs (http_client.c, transport_pick) */
    uv_loop_configure(&rt->loop, UV_METRICS_IDLE_TIME);
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
    rt->limits.workflow_memory = CHORUS_DEFAULT_WORKFLOW_MEMORY;
    /* A private thread whose stack only the runtime touches, for packing
     * results while some other coroutine may be running. */
    rt->L = lua_newthread(L);
    lua_setiuservalue(L, -2, 1); /* the box keeps the thread alive */
    rt->base_alloc = lua_getallocf(L, &rt->base_alloc_ud);
    rt->cache_on = chorus_alloc_cache_usable(rt->base_alloc);
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
