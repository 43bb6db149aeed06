/* lua_breaker.h — core.breaker, the binding of breaker.c (contract at the
 * top of lua_breaker.c). */
#ifndef CHORUS_LUA_BREAKER_H
#define CHORUS_LUA_BREAKER_H

#include <lua.h>

int chorus_lua_breaker(lua_State *L);
/* core.breaker_check(name, opts) → true, or raises what core.breaker would:
 * checks options without creating (or finding) a breaker. */
int chorus_lua_breaker_check(lua_State *L);
int chorus_lua_breakers(lua_State *L);
int chorus_lua_breakers_reset(lua_State *L);

/* Adds this binding's functions (core.breaker, core.breaker_check, core.breakers,
 * core.breakers_reset) to the chorus.core table at the top of L's stack (runtime/lua_bindings.c).
 */
void chorus_lua_breaker_open(lua_State *L);

#endif
