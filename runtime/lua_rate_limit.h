/* lua_rate_limit.h — core.rate_limit, the binding of rate_limit.c (contract
 * at the top of lua_rate_limit.c). */
#ifndef CHORUS_LUA_RATE_LIMIT_H
#define CHORUS_LUA_RATE_LIMIT_H

#include <lua.h>

int chorus_lua_rate_limit(lua_State *L);
int chorus_lua_rate_limits_reset(lua_State *L);

/* Adds this binding's functions (core.rate_limit, core.rate_limits_reset) to the
 * chorus.core table at the top of L's stack (runtime/lua_bindings.c). */
void chorus_lua_rate_limit_open(lua_State *L);

#endif
