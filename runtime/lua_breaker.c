/* lua_breaker.c — core.breaker: the circuit breaker engine (breaker.c) for
 * Lua, one per name for the whole process, on the runtime's clock (virtual
 * under chorus.testing). lua/chorus/breaker.lua builds chorus.breaker on it.
 *
 *   core.breaker(name, { window =, window_seconds =, min_calls =, failure_rate =,
 *                        slow_call_rate =, slow_call_duration =, open_for =,
 *                        half_open_calls = }) → breaker (the existing one for name)
 *   b:acquire() → bool   b:record(failed, duration)   b:release()   b:state() → string
 *   core.breakers() → { name = state, ... }    core.breakers_reset()
 *
 * Invariant: the registry table BREAKERS owns every breaker userdata; the
 * engine object is freed by the userdata's __gc.
 */
#include <lauxlib.h>

#include "breaker.h"
#include "lua_breaker.h"

#include "lua_bindings.h"
#include "lua_named.h"
#include "runtime.h"

#define BREAKER_MT "chorus.breaker"
#define BREAKERS "chorus.breakers"

struct lua_breaker {
    struct chorus_breaker *b;
};

/* The runtime's clock (virtual under chorus.testing), for the engine. */
static double runtime_now(void *ud) { return chorus_runtime_now(ud); }

static struct lua_breaker *check_breaker(lua_State *L) {
    struct lua_breaker *lb = luaL_checkudata(L, 1, BREAKER_MT);
    if (!lb->b)
        luaL_argerror(L, 1, "breaker is closed");
    return lb;
}

static int opt_int(lua_State *L, const char *name, int def) {
    lua_getfield(L, 2, name);
    lua_Integer v = luaL_optinteger(L, -1, def);
    lua_pop(L, 1);
    return (int)v;
}

static double opt_num(lua_State *L, const char *name, double def) {
    lua_getfield(L, 2, name);
    double v = (double)luaL_optnumber(L, -1, def);
    lua_pop(L, 1);
    return v;
}

static void read_config(lua_State *L, struct chorus_breaker_config *c) {
    *c = chorus_breaker_config_default();
    if (lua_isnoneornil(L, 2))
        return;
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "window_seconds");
    int by_time = !lua_isnil(L, -1);
    lua_pop(L, 1);
    c->window_type = by_time ? CHORUS_BREAKER_TIME : CHORUS_BREAKER_COUNT;
    c->window = by_time ? opt_int(L, "window_seconds", 60) : opt_int(L, "window", c->window);
    c->min_calls = opt_int(L, "min_calls", c->min_calls);
    c->failure_rate = opt_num(L, "failure_rate", c->failure_rate);
    c->slow_call_rate = opt_num(L, "slow_call_rate", c->slow_call_rate);
    c->slow_call_duration = opt_num(L, "slow_call_duration", c->slow_call_duration);
    c->open_for = opt_num(L, "open_for", c->open_for);
    c->half_open_calls = opt_int(L, "half_open_calls", c->half_open_calls);
}

static int breaker_gc(lua_State *L) {
    struct lua_breaker *lb = luaL_checkudata(L, 1, BREAKER_MT);
    chorus_breaker_free(lb->b);
    lb->b = NULL;
    return 0;
}

static int breaker_acquire(lua_State *L);
static int breaker_record(lua_State *L);
static int breaker_release(lua_State *L);
static int breaker_state(lua_State *L);

static const luaL_Reg breaker_methods[] = {
    {"acquire", breaker_acquire}, {"record", breaker_record}, {"release", breaker_release},
    {"state", breaker_state},     {"__gc", breaker_gc},       {NULL, NULL},
};

int chorus_lua_breaker_check(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    struct chorus_breaker_config cfg;
    read_config(L, &cfg);
    char err[200];
    if (chorus_breaker_config_check(&cfg, err, sizeof err) != 0)
        return luaL_error(L, "breaker '%s': %s", name, err);
    lua_pushboolean(L, 1);
    return 1;
}

int chorus_lua_breaker(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    if (chorus_named_find(L, BREAKERS, name, BREAKER_MT, breaker_methods))
        return 1;
    struct chorus_breaker_config cfg;
    read_config(L, &cfg);
    char err[200];
    if (chorus_breaker_config_check(&cfg, err, sizeof err) != 0)
        return luaL_error(L, "breaker '%s': %s", name, err);
    struct chorus_clock clock = {runtime_now, chorus_runtime_of(L)};
    struct lua_breaker *lb = lua_newuserdatauv(L, sizeof *lb, 0);
    lb->b = NULL;
    luaL_setmetatable(L, BREAKER_MT);
    lb->b = chorus_breaker_new(&cfg, &clock);
    if (!lb->b)
        return luaL_error(L, "out of memory creating breaker '%s'", name);
    chorus_named_put(L, name);
    return 1;
}

static int breaker_acquire(lua_State *L) {
    lua_pushboolean(L, chorus_breaker_acquire(check_breaker(L)->b));
    return 1;
}

static int breaker_record(lua_State *L) {
    struct lua_breaker *lb = check_breaker(L);
    chorus_breaker_record(lb->b, lua_toboolean(L, 2), (double)luaL_checknumber(L, 3));
    return 0;
}

static int breaker_release(lua_State *L) {
    chorus_breaker_release(check_breaker(L)->b);
    return 0;
}

static int breaker_state(lua_State *L) {
    lua_pushstring(L, chorus_breaker_state_name(chorus_breaker_state(check_breaker(L)->b)));
    return 1;
}

int chorus_lua_breakers(lua_State *L) {
    lua_newtable(L);
    if (lua_getfield(L, LUA_REGISTRYINDEX, BREAKERS) == LUA_TNIL) {
        lua_pop(L, 1);
        return 1;
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING) { /* the table's count and name (lua_named.c) */
            lua_pop(L, 1);
            continue;
        }
        struct lua_breaker *lb = luaL_checkudata(L, -1, BREAKER_MT);
        lua_pushvalue(L, -2);
        lua_pushstring(L, chorus_breaker_state_name(chorus_breaker_state(lb->b)));
        lua_settable(L, -6);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 1;
}

int chorus_lua_breakers_reset(lua_State *L) {
    chorus_named_reset(L, BREAKERS);
    return 0;
}

void chorus_lua_breaker_open(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"breaker", chorus_lua_breaker},
        {"breaker_check", chorus_lua_breaker_check},
        {"breakers", chorus_lua_breakers},
        {"breakers_reset", chorus_lua_breakers_reset},
        {NULL, NULL},
    };
    chorus_lua_register(L, funcs);
}
