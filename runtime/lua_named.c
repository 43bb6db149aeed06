/* lua_named.c — process-wide objects by name (contract in lua_named.h).
 *
 * Invariant: the registry table owns the objects; dropping the table (reset)
 * lets the collector free them through their __gc. Besides the objects by
 * name it holds, under integer keys, how many there are (0) and its own name
 * (-1), for the limit's message.
 */
#include "lua_named.h"

int chorus_named_find(lua_State *L, const char *table, const char *name, const char *mt,
                      const luaL_Reg *methods) {
    if (luaL_newmetatable(L, mt)) {
        luaL_setfuncs(L, methods, 0);
        lua_pushvalue(L, -1);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    if (lua_getfield(L, LUA_REGISTRYINDEX, table) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushstring(L, table);
        lua_rawseti(L, -2, -1);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, table);
    }
    if (lua_getfield(L, -1, name) != LUA_TNIL) {
        lua_remove(L, -2);
        return 1;
    }
    lua_pop(L, 1);
    return 0;
}

void chorus_named_put(lua_State *L, const char *name) {
    lua_rawgeti(L, -2, 0);
    lua_Integer n = lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (n >= CHORUS_NAMED_MAX) {
        lua_rawgeti(L, -2, -1);
        luaL_error(L, "%s: at most %d exist in a process; '%s' was not made (names made per run?)",
                   lua_tostring(L, -1), CHORUS_NAMED_MAX, name);
    }
    lua_pushinteger(L, n + 1);
    lua_rawseti(L, -3, 0);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, name);
    lua_remove(L, -2);
}

void chorus_named_reset(lua_State *L, const char *table) {
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, table);
}
