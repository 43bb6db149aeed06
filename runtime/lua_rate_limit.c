/* lua_rate_limit.c — token buckets (rate_limit.c) for Lua, one per name for
 * the whole process, on the runtime's clock (virtual under chorus.testing).
 *
 *   core.rate_limit(name, rate, burst) → the bucket of that name (created on
 *       first use, full): b:reserve(max_wait) → 0 (go now), a wait in seconds
 *       (sleep that long: the token is already yours), or -1 (over max_wait,
 *       nothing reserved)
 *   core.rate_limits_reset() forgets every bucket (chorus.testing.reset)
 */
#include <lauxlib.h>
#include <time.h>

#include "lua_rate_limit.h"
#include "rate_limit.h"
#include "runtime.h"

#define BUCKET_MT "chorus.rate_limit"
#define BUCKETS "chorus.rate_limits"

static double runtime_now(lua_State *L) {
    struct chorus_runtime *rt = chorus_runtime_of(L);
    if (rt && rt->virtual_clock)
        return rt->vnow;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int bucket_reserve(lua_State *L) {
    struct chorus_bucket *b = luaL_checkudata(L, 1, BUCKET_MT);
    double max_wait = (double)luaL_optnumber(L, 2, 0);
    lua_pushnumber(L, chorus_bucket_reserve(b, runtime_now(L), max_wait));
    return 1;
}

int chorus_lua_rate_limit(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    double rate = (double)luaL_checknumber(L, 2);
    double burst = (double)luaL_optnumber(L, 3, 1);
    if (luaL_newmetatable(L, BUCKET_MT)) {
        static const luaL_Reg methods[] = {{"reserve", bucket_reserve}, {NULL, NULL}};
        luaL_setfuncs(L, methods, 0);
        lua_pushvalue(L, -1);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    if (lua_getfield(L, LUA_REGISTRYINDEX, BUCKETS) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, BUCKETS);
    }
    if (lua_getfield(L, -1, name) != LUA_TNIL)
        return 1;
    lua_pop(L, 1);
    struct chorus_bucket *b = lua_newuserdatauv(L, sizeof *b, 0);
    if (chorus_bucket_init(b, rate, burst, runtime_now(L)) != 0)
        return luaL_error(L, "rate limit '%s': rate and burst must be positive", name);
    luaL_setmetatable(L, BUCKET_MT);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, name);
    return 1;
}

int chorus_lua_rate_limits_reset(lua_State *L) {
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, BUCKETS);
    return 0;
}
