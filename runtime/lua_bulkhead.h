/* lua_bulkhead.h — core.bulkhead and core.wait/notify (contract at the top
 * of lua_bulkhead.c). */
#ifndef CHORUS_LUA_BULKHEAD_H
#define CHORUS_LUA_BULKHEAD_H

#include <lua.h>

int chorus_lua_bulkhead(lua_State *L);
int chorus_lua_bulkheads_reset(lua_State *L);
int chorus_lua_wait_token(lua_State *L);
int chorus_lua_wait(lua_State *L);
int chorus_lua_notify(lua_State *L);

#endif
