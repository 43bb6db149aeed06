/* lua_retry.c — the retry engine (retry.c) for lua/chorus/retry.lua.
 *
 *   core.retry_policy(t) → the policy table normalized (attempts, backoff,
 *       base, cap, max_elapsed filled with defaults), or raises naming the
 *       bad field
 *   core.retry_next(policy, retry, elapsed, retry_after, prev_delay, seed)
 *       → wait (seconds, or -1 to give up), prev_delay, seed
 *   core.retry_delay(policy, retry, prev_delay, seed) → delay, seed: the
 *       backoff alone (no attempts, elapsed or Retry-After), for the outbox,
 *       which keeps its own count of attempts and honours a Retry-After whole
 *   core.retry_after(value, now_epoch) → seconds, or nil when unparseable
 *   core.retry_budget(name, ratio, min_per_second, window) → the budget of
 *       that name (created on first use): b:on_call(), b:try_withdraw() → bool
 *
 * Invariant: the PRNG state lives in the caller (seed in, seed out), so a
 * run's jitter is reproducible and no state is shared between runs.
 */
#include <lauxlib.h>
#include <stdint.h>

#include "lua_named.h"
#include "lua_retry.h"

#include "lua_bindings.h"
#include "retry.h"
#include "runtime.h"

#define BUDGET_MT "chorus.retry_budget"
#define BUDGETS "chorus.retry_budgets"

static int budget_on_call(lua_State *L) {
    struct chorus_retry_budget *b = luaL_checkudata(L, 1, BUDGET_MT);
    chorus_retry_budget_on_call(b, chorus_runtime_now(chorus_runtime_of(L)));
    return 0;
}

static int budget_try_withdraw(lua_State *L) {
    struct chorus_retry_budget *b = luaL_checkudata(L, 1, BUDGET_MT);
    lua_pushboolean(L,
                    chorus_retry_budget_try_withdraw(b, chorus_runtime_now(chorus_runtime_of(L))));
    return 1;
}

int chorus_lua_retry_budget(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    double ratio = (double)luaL_checknumber(L, 2);
    double min_per_second = (double)luaL_optnumber(L, 3, 10);
    double window = (double)luaL_optnumber(L, 4, 10);
    static const luaL_Reg methods[] = {
        {"on_call", budget_on_call}, {"try_withdraw", budget_try_withdraw}, {NULL, NULL}};
    if (chorus_named_find(L, BUDGETS, name, BUDGET_MT, methods))
        return 1;
    struct chorus_retry_budget *b = lua_newuserdatauv(L, sizeof *b, 0);
    if (chorus_retry_budget_init(b, ratio, min_per_second, window) != 0)
        return luaL_error(L, "retry budget: ratio, min_per_second and window must be "
                             "non-negative numbers (window > 0)");
    luaL_setmetatable(L, BUDGET_MT);
    chorus_named_put(L, name);
    return 1;
}

/* Forgets every budget (chorus.testing.reset). */
int chorus_lua_retry_budgets_reset(lua_State *L) {
    chorus_named_reset(L, BUDGETS);
    return 0;
}

static void read_policy(lua_State *L, int idx, struct chorus_retry_policy *p) {
    *p = chorus_retry_policy_default();
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_getfield(L, idx, "attempts");
    p->attempts = (int)luaL_optinteger(L, -1, p->attempts);
    lua_getfield(L, idx, "backoff");
    const char *name = luaL_optstring(L, -1, NULL);
    if (name && chorus_backoff_parse(name, &p->backoff) != 0)
        luaL_error(L,
                   "retry.policy: backoff must be \"exponential\", \"full_jitter\", "
                   "\"decorrelated_jitter\" or \"equal_jitter\" (got \"%s\")",
                   name);
    lua_getfield(L, idx, "base");
    p->base = (double)luaL_optnumber(L, -1, p->base);
    lua_getfield(L, idx, "cap");
    p->cap = (double)luaL_optnumber(L, -1, p->cap);
    lua_getfield(L, idx, "max_elapsed");
    p->max_elapsed = (double)luaL_optnumber(L, -1, p->max_elapsed);
    lua_pop(L, 5);
    char err[200];
    if (chorus_retry_policy_check(p, err, sizeof err) != 0)
        luaL_error(L, "retry.policy: %s", err);
}

int chorus_lua_retry_policy(lua_State *L) {
    struct chorus_retry_policy p;
    read_policy(L, 1, &p);
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, p.attempts);
    lua_setfield(L, -2, "attempts");
    lua_pushstring(L, chorus_backoff_name(p.backoff));
    lua_setfield(L, -2, "backoff");
    lua_pushnumber(L, p.base);
    lua_setfield(L, -2, "base");
    lua_pushnumber(L, p.cap);
    lua_setfield(L, -2, "cap");
    lua_pushnumber(L, p.max_elapsed);
    lua_setfield(L, -2, "max_elapsed");
    return 1;
}

int chorus_lua_retry_next(lua_State *L) {
    struct chorus_retry_policy p;
    read_policy(L, 1, &p);
    int retry = (int)luaL_checkinteger(L, 2);
    double elapsed = (double)luaL_checknumber(L, 3);
    double retry_after = (double)luaL_optnumber(L, 4, -1);
    double prev = (double)luaL_optnumber(L, 5, 0);
    uint64_t seed = (uint64_t)luaL_optinteger(L, 6, 0);
    double wait = chorus_retry_next(&p, retry, elapsed, retry_after, &prev, &seed);
    lua_pushnumber(L, wait);
    lua_pushnumber(L, prev);
    lua_pushinteger(L, (lua_Integer)seed);
    return 3;
}

int chorus_lua_retry_delay(lua_State *L) {
    struct chorus_retry_policy p;
    read_policy(L, 1, &p);
    int retry = (int)luaL_checkinteger(L, 2);
    double prev = (double)luaL_optnumber(L, 3, 0);
    uint64_t seed = (uint64_t)luaL_optinteger(L, 4, 0);
    lua_pushnumber(L, chorus_retry_delay(&p, retry, prev, &seed));
    lua_pushinteger(L, (lua_Integer)seed);
    return 2;
}

int chorus_lua_retryable_status(lua_State *L) {
    lua_Integer status = luaL_checkinteger(L, 1);
    lua_pushboolean(L, chorus_retry_status_retryable((long)status));
    return 1;
}

int chorus_lua_retry_after(lua_State *L) {
    const char *value = luaL_checkstring(L, 1);
    double seconds;
    if (chorus_retry_after_parse(value, (double)luaL_checknumber(L, 2), &seconds) != 0)
        return 0;
    lua_pushnumber(L, seconds);
    return 1;
}

void chorus_lua_retry_open(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"retry_policy", chorus_lua_retry_policy},
        {"retry_next", chorus_lua_retry_next},
        {"retry_delay", chorus_lua_retry_delay},
        {"retry_after", chorus_lua_retry_after},
        {"retryable_status", chorus_lua_retryable_status},
        {"retry_budget", chorus_lua_retry_budget},
        {"retry_budgets_reset", chorus_lua_retry_budgets_reset},
        {NULL, NULL},
    };
    chorus_lua_register(L, funcs);
}
