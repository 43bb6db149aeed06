/* lua_named.h — process-wide objects by name (breakers, bulkheads, retry
 * budgets, rate limits): one registry table per kind, an object created on
 * first use and shared by every run after. */
#ifndef CHORUS_LUA_NAMED_H
#define CHORUS_LUA_NAMED_H

#include <lauxlib.h>

/* Registers metatable `mt` with `methods` (and __index) the first time.
 * Then pushes the object `name` of registry table `table` and returns 1; or,
 * when there is none yet, pushes that table and returns 0: the caller pushes
 * the new object and calls chorus_named_put. */
int chorus_named_find(lua_State *L, const char *table, const char *name, const char *mt,
                      const luaL_Reg *methods);

/* At most this many objects of one kind: names come from the config and
 * from scripts (a script's breaker.new), and each object lives as long as
 * the process, outside any run's memory cap. */
#define CHORUS_NAMED_MAX 10000

/* With the table at -2 and a new object at -1: stores the object under name
 * and leaves only it on the stack (the table is removed). Raises when the
 * kind already has CHORUS_NAMED_MAX objects. */
void chorus_named_put(lua_State *L, const char *name);

/* Forgets every object of registry table `table` (chorus.testing.reset). */
void chorus_named_reset(lua_State *L, const char *table);

#endif
