/* lua_events.h — process events for Lua: signals, changes in a folder, and
 * listing a folder. Each event starts a detached run of the Lua callback.
 *
 *   core.on_signal("SIGHUP" | "SIGTERM" | "SIGINT", fn)
 *   core.watch(dir, fn)        fn(filename) on any change of an entry of dir
 *   core.scandir(dir)          → { { name =, dir = bool }, ... } or nil, err
 */
#ifndef CHORUS_LUA_EVENTS_H
#define CHORUS_LUA_EVENTS_H

#include <lua.h>

#include "runtime.h"

int chorus_lua_on_signal(lua_State *L);
int chorus_lua_watch(lua_State *L);
int chorus_lua_scandir(lua_State *L);

/* Closes every signal and watch handle of rt (at runtime close). */
void chorus_events_close(struct chorus_runtime *rt);

/* Adds this binding's functions (core.on_signal, core.watch, core.scandir) to the
 * chorus.core table at the top of L's stack (runtime/lua_bindings.c). */
void chorus_lua_events_open(lua_State *L);

#endif
