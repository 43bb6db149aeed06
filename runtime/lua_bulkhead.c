/* lua_bulkhead.c — bulkheads (bulkhead.c) and the wait/notify primitive that
 * parks a task until another one hands it something.
 *
 *   core.bulkhead(name, max, queue) → the bulkhead of that name (created on
 *       first use): b:acquire(ticket) → "granted" | "queued" | "rejected",
 *       b:release() → the ticket now granted (0: none), b:cancel(ticket) → bool
 *   core.wait_token() → a fresh token
 *   core.wait(token) → parks the current task until core.notify(token, v);
 *       returns v. A cancelled waiter is forgotten.
 *   core.notify(token, v) → true when a task was waiting on token
 *   core.bulkheads_reset() forgets every bulkhead (chorus.testing.reset)
 *
 * Invariant: a waiter is on rt's list exactly while its task is parked in
 * core.wait; notify and cancellation each unlink it once.
 */
#include <lauxlib.h>
#include <stdint.h>
#include <stdlib.h>

#include "bulkhead.h"
#include "lua_bulkhead.h"
#include "lua_named.h"
#include "scheduler.h"

#define BULKHEAD_MT "chorus.bulkhead"
#define BULKHEADS "chorus.bulkheads"

struct waiter {
    uint64_t token;
    struct chorus_task *task;
    struct chorus_runtime *rt;
    struct waiter *next;
};

/* ---- wait / notify -------------------------------------------------------- */

static struct waiter **waiters_of(struct chorus_runtime *rt) {
    return (struct waiter **)&rt->waiters;
}

static void unlink_waiter(struct waiter *w) {
    struct waiter **link = waiters_of(w->rt);
    while (*link && *link != w)
        link = &(*link)->next;
    if (*link)
        *link = w->next;
}

static void cancel_wait(void *data) {
    unlink_waiter(data);
    free(data);
}

int chorus_lua_wait_token(lua_State *L) {
    struct chorus_runtime *rt = chorus_runtime_of(L);
    lua_pushinteger(L, (lua_Integer)++rt->next_token);
    return 1;
}

int chorus_lua_wait(lua_State *L) {
    uint64_t token = (uint64_t)luaL_checkinteger(L, 1);
    struct chorus_task *t = chorus_task_waitable(L, 0);
    struct waiter *w = malloc(sizeof *w);
    if (!w)
        return luaL_error(L, "out of memory");
    w->token = token;
    w->task = t;
    w->rt = t->run->rt;
    w->next = *waiters_of(w->rt);
    *waiters_of(w->rt) = w;
    chorus_task_park(t, cancel_wait, w);
    return lua_yield(L, 0);
}

int chorus_lua_notify(lua_State *L) {
    struct chorus_runtime *rt = chorus_runtime_of(L);
    uint64_t token = (uint64_t)luaL_checkinteger(L, 1);
    lua_settop(L, 2);
    for (struct waiter *w = *waiters_of(rt); w; w = w->next) {
        if (w->token != token)
            continue;
        unlink_waiter(w);
        lua_State *co = w->task->co;
        lua_xmove(L, co, 1);
        chorus_sched_background(rt, 1); /* the waiter is another task's business */
        chorus_task_wake(w->task, 1);
        chorus_sched_background(rt, 0);
        free(w);
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    return 1;
}

/* ---- bulkheads ------------------------------------------------------------ */

static struct chorus_bulkhead *check_bulkhead(lua_State *L) {
    return luaL_checkudata(L, 1, BULKHEAD_MT);
}

static int bulkhead_acquire(lua_State *L) {
    static const char *const names[] = {"granted", "queued", "rejected"};
    struct chorus_bulkhead *b = check_bulkhead(L);
    uint64_t ticket = (uint64_t)luaL_checkinteger(L, 2);
    lua_pushstring(L, names[chorus_bulkhead_acquire(b, ticket)]);
    return 1;
}

static int bulkhead_release(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)chorus_bulkhead_release(check_bulkhead(L)));
    return 1;
}

static int bulkhead_cancel(lua_State *L) {
    struct chorus_bulkhead *b = check_bulkhead(L);
    lua_pushboolean(L, chorus_bulkhead_cancel(b, (uint64_t)luaL_checkinteger(L, 2)));
    return 1;
}

static int bulkhead_gc(lua_State *L) {
    chorus_bulkhead_destroy(check_bulkhead(L));
    return 0;
}

int chorus_lua_bulkhead(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    int max = (int)luaL_checkinteger(L, 2);
    int queue = (int)luaL_optinteger(L, 3, 0);
    static const luaL_Reg methods[] = {{"acquire", bulkhead_acquire},
                                       {"release", bulkhead_release},
                                       {"cancel", bulkhead_cancel},
                                       {"__gc", bulkhead_gc},
                                       {NULL, NULL}};
    if (chorus_named_find(L, BULKHEADS, name, BULKHEAD_MT, methods))
        return 1;
    struct chorus_bulkhead *b = lua_newuserdatauv(L, sizeof *b, 0);
    if (chorus_bulkhead_init(b, max, queue) != 0)
        return luaL_error(L, "bulkhead '%s': max must be >= 1 and queue >= 0", name);
    luaL_setmetatable(L, BULKHEAD_MT);
    chorus_named_put(L, name);
    return 1;
}

int chorus_lua_bulkheads_reset(lua_State *L) {
    chorus_named_reset(L, BULKHEADS);
    return 0;
}
