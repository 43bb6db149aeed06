/* lua_bindings.h — how the C bindings join the chorus.core table.
 *
 * Each binding file (lua_breaker.c, lua_http.c, ...) has an open function
 * that adds its Lua functions to the table at the top of the stack, as
 * Lua's own luaopen_* functions do; lua_bindings.c lists them all, as
 * Lua's linit.c lists the standard libraries. lua_core.c keeps only runs,
 * tasks and timers.
 */
#ifndef CHORUS_LUA_BINDINGS_H
#define CHORUS_LUA_BINDINGS_H

#include <lauxlib.h>

/* Adds funcs to the table at the top of L's stack, each with the runtime
 * as upvalue 1, as core's own functions have it. A name the table already
 * has raises an error (a Lua error at luaopen_chorus_core). */
void chorus_lua_register(lua_State *L, const luaL_Reg *funcs);

/* Every binding's open function, in order, into the chorus.core table at
 * the top of L's stack. */
void chorus_lua_bindings_open(lua_State *L);

#endif
