/* lua_bulkhead.c — bulkheads (bulkhead.c) as Lua userdata. Waiting for a
 * slot uses core.wait/notify (lua_wait.c).
 *
 *   core.bulkhead(name, max, queue) → the bulkhead of that name (created on
 *       first use): b:acquire(ticket) → "granted" | "queued" | "rejected",
 *       b:release() → the ticket now granted (0: none), b:cancel(ticket) → bool
 *   core.bulkheads_reset() forgets every bulkhead (chorus.testing.reset)
 */
#include <lauxlib.h>
#include <stdint.h>
#include <stdlib.h>

#include "bulkhead.h"
#include "lua_bulkhead.h"

#include "lua_bindings.h"
#include "lua_named.h"
#include "scheduler.h"

#define BULKHEAD_MT "chorus.bulkhead"
#define BULKHEADS "chorus.bulkheads"

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

void chorus_lua_bulkhead_open(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"bulkhead", chorus_lua_bulkhead},
        {"bulkheads_reset", chorus_lua_bulkheads_reset},
        {NULL, NULL},
    };
    chorus_lua_register(L, funcs);
}
