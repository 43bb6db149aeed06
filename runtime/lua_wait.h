/* lua_wait.h — core.wait_token, core.wait and core.notify (contract at the
 * top of lua_wait.c). */
#ifndef CHORUS_LUA_WAIT_H
#define CHORUS_LUA_WAIT_H

#include <lua.h>

int chorus_lua_wait_token(lua_State *L);
int chorus_lua_wait(lua_State *L);
int chorus_lua_notify(lua_State *L);

/* Adds them to the chorus.core table at the top of L's stack
 * (runtime/lua_bindings.c). */
void chorus_lua_wait_open(lua_State *L);

#endif
