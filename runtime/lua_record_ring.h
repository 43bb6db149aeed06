/* lua_record_ring.h — core.record_ring: the last N finished run records,
 * as JSON text kept outside the Lua heap (see lua_record_ring.c). */
#ifndef CHORUS_LUA_RECORD_RING_H
#define CHORUS_LUA_RECORD_RING_H

#include <lua.h>

int chorus_lua_record_ring(lua_State *L);

/* Adds this binding's functions (core.record_ring) to the
 * chorus.core table at the top of L's stack (runtime/lua_bindings.c). */
void chorus_lua_record_ring_open(lua_State *L);

#endif
