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

#include "lua_named.h"
#include "lua_rate_limit.h"

#include "lua_bindings.h"
#include "rate_limit.h"
#include "runtime.h"

#define BUCKET_MT "chorus.rate_limit"
#define BUCKETS "chorus.rate_limits"

static int bucket_reserve(lua_State *L) {
    struct chorus_bucket *b = luaL_checkudata(L, 1, BUCKET_MT);
    double max_wait = (double)luaL_optnumber(L, 2, 0);
    lua_pushnumber(L, chorus_bucket_reserve(b, chorus_runtime_now(chorus_runtime_of(L)), max_wait));
    return 1;
}

int chorus_lua_rate_limit(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    double rate = (double)luaL_checknumber(L, 2);
    double burst = (double)luaL_optnumber(L, 3, 1);
    static const luaL_Reg methods[] = {{"reserve", bucket_reserve}, {NULL, NULL}};
    if (chorus_named_find(L, BUCKETS, name, BUCKET_MT, methods))
        return 1;
    struct chorus_bucket *b = lua_newuserdatauv(L, sizeof *b, 0);
    if (chorus_bucket_init(b, rate, burst, chorus_runtime_now(chorus_runtime_of(L))) != 0)
        return luaL_error(L, "rate limit '%s': rate and burst must be positive", name);
    luaL_setmetatable(L, BUCKET_MT);
    chorus_named_put(L, name);
    return 1;
}

int chorus_lua_rate_limits_reset(lua_State *L) {
    chorus_named_reset(L, BUCKETS);
    return 0;
}

void chorus_lua_rate_limit_open(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"rate_limit", chorus_lua_rate_limit},
        {"rate_limits_reset", chorus_lua_rate_limits_reset},
        {NULL, NULL},
    };
    chorus_lua_register(L, funcs);
}
