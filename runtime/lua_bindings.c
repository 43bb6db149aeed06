/* lua_bindings.c — the list of C bindings that make up chorus.core (see
 * lua_bindings.h). */
#include "lua_bindings.h"

#include "lua_breaker.h"
#include "lua_bulkhead.h"
#include "lua_charged.h"
#include "lua_crypto.h"
#include "lua_events.h"
#include "lua_http.h"
#include "lua_json.h"
#include "lua_systemd.h"
#include "lua_pattern.h"
#include "lua_rate_limit.h"
#include "lua_record_ring.h"
#include "lua_retry.h"
#include "lua_server.h"
#include "lua_store.h"
#include "lua_wait.h"
#include "runtime.h"

void chorus_lua_register(lua_State *L, const luaL_Reg *funcs) {
    /* two bindings giving core the same name: the later would silently
     * replace the earlier (core.notify once did) */
    for (const luaL_Reg *f = funcs; f->name != NULL; f++) {
        if (lua_getfield(L, -1, f->name) != LUA_TNIL)
            luaL_error(L, "chorus.core.%s is registered twice", f->name);
        lua_pop(L, 1);
    }
    lua_pushlightuserdata(L, chorus_runtime_of(L));
    luaL_setfuncs(L, funcs, 1);
}

void chorus_lua_bindings_open(lua_State *L) {
    chorus_lua_breaker_open(L);
    chorus_lua_retry_open(L);
    chorus_lua_wait_open(L);
    chorus_lua_bulkhead_open(L);
    chorus_lua_rate_limit_open(L);
    chorus_lua_http_open(L);
    chorus_lua_server_open(L);
    chorus_lua_events_open(L);
    chorus_lua_store_open(L);
    chorus_lua_crypto_open(L);
    chorus_lua_systemd_open(L);
    chorus_lua_record_ring_open(L);
    chorus_lua_pattern_open(L);
    chorus_lua_charged_open(L); /* after: into the string methods pattern made */
    chorus_json_open(L);
    lua_setfield(L, -2, "json");
}
