/* lua_wait.c — the wait/notify primitive that parks a task until another
 * one hands it something (locks, bulkhead queues, the relay's free slot).
 *
 *   core.wait_token() → a fresh token
 *   core.wait(token) → parks the current task until core.notify(token, v);
 *       returns v. A cancelled waiter is forgotten.
 *   core.notify(token, v) → true when a task was waiting on token
 *
 * Invariant: a waiter is on rt's list exactly while its task is parked in
 * core.wait; notify and cancellation each unlink it once.
 */
#include <lauxlib.h>
#include <stdint.h>
#include <stdlib.h>

#include "lua_wait.h"

#include "lua_bindings.h"
#include "scheduler.h"

struct chorus_waiter {
    uint64_t token;
    struct chorus_task *task;
    struct chorus_runtime *rt;
    struct chorus_waiter *next;
};

static struct chorus_waiter **waiters_of(struct chorus_runtime *rt) { return &rt->waiters; }

static void unlink_waiter(struct chorus_waiter *w) {
    struct chorus_waiter **link = waiters_of(w->rt);
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
    struct chorus_waiter *w = malloc(sizeof *w);
    if (!w)
        return luaL_error(L, "out of memory");
    w->token = token;
    w->task = t;
    w->rt = t->run->rt;
    w->next = *waiters_of(w->rt);
    *waiters_of(w->rt) = w;
    chorus_task_park(t, cancel_wait, w);
    return chorus_task_yield(L, t);
}

int chorus_lua_notify(lua_State *L) {
    struct chorus_runtime *rt = chorus_runtime_of(L);
    uint64_t token = (uint64_t)luaL_checkinteger(L, 1);
    lua_settop(L, 2);
    for (struct chorus_waiter *w = *waiters_of(rt); w; w = w->next) {
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

void chorus_lua_wait_open(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"wait_token", chorus_lua_wait_token},
        {"wait", chorus_lua_wait},
        {"notify", chorus_lua_notify},
        {NULL, NULL},
    };
    chorus_lua_register(L, funcs);
}
