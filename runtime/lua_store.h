/* lua_store.h — core.store_open: the durable store as Lua userdata. */
#ifndef CHORUS_LUA_STORE_H
#define CHORUS_LUA_STORE_H

#include <lua.h>

int chorus_lua_store_new(lua_State *L);

/* Adds this binding's functions (core.store_open) to the
 * chorus.core table at the top of L's stack (runtime/lua_bindings.c). */
void chorus_lua_store_open(lua_State *L);

#endif
