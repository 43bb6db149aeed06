/* lua_server.h — core.serve, the binding of http_server.c (contract at the top
 * of lua_server.c). */
#ifndef CHORUS_LUA_SERVER_H
#define CHORUS_LUA_SERVER_H

#include <lua.h>

/* core.serve(opts, handler) → server userdata; raises when it cannot listen. */
int chorus_lua_serve(lua_State *L);

/* Registers the server metatable and adds core.serve to the chorus.core
 * table at the top of L's stack (runtime/lua_bindings.c). */
void chorus_lua_server_open(lua_State *L);

#endif
