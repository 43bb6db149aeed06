/* lua_bulkhead.h — core.bulkhead (contract at the top of lua_bulkhead.c). */
#ifndef CHORUS_LUA_BULKHEAD_H
#define CHORUS_LUA_BULKHEAD_H

#include <lua.h>

int chorus_lua_bulkhead(lua_State *L);
int chorus_lua_bulkheads_reset(lua_State *L);

/* Adds core.bulkhead and core.bulkheads_reset to the chorus.core table at
 * the top of L's stack (runtime/lua_bindings.c). */
void chorus_lua_bulkhead_open(lua_State *L);

#endif
