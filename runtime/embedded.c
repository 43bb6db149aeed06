/* embedded.c — package.preload loaders for the Lua modules compiled into
 * the binary (contract in embedded.h). */
#include "embedded.h"

#include <lauxlib.h>
#include <string.h>

#include "runtime.h"

static int load_embedded(lua_State *L) {
    const struct chorus_embedded *m = lua_touserdata(L, lua_upvalueindex(1));
    if (luaL_loadbufferx(L, m->source, m->len, m->chunkname, "t") != LUA_OK)
        return lua_error(L);
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);
    return 1;
}

void chorus_embedded_preload(lua_State *L) {
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_chorus_core);
    lua_setfield(L, -2, "chorus.core");
    for (const struct chorus_embedded *m = chorus_embedded_lua; m->name; m++) {
        lua_pushlightuserdata(L, (void *)m);
        lua_pushcclosure(L, load_embedded, 1);
        lua_setfield(L, -2, m->name);
    }
    lua_pop(L, 1);
}

int chorus_lua_ui_file(lua_State *L) {
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    for (const struct chorus_embedded_file *f = chorus_embedded_ui; f->name; f++) {
        if (strlen(f->name) == len && memcmp(f->name, name, len) == 0) {
            lua_pushlstring(L, f->data, f->len);
            return 1;
        }
    }
    lua_pushnil(L);
    return 1;
}
