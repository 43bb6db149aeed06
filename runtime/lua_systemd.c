/* lua_systemd.c — core.sd_notify and core.sd_watchdog_interval (see lua_systemd.h). */
#include "lua_systemd.h"

#include <lauxlib.h>
#include <stdint.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "lua_bindings.h"

int chorus_lua_systemd_notify(lua_State *L) {
    const char *state = luaL_checkstring(L, 1);
    int r = sd_notify(0, state);
    if (r < 0) {
        luaL_pushfail(L);
        lua_pushfstring(L, "cannot notify systemd at NOTIFY_SOCKET: %s", strerror(-r));
        return 2;
    }
    lua_pushboolean(L, r > 0);
    return 1;
}

int chorus_lua_systemd_watchdog(lua_State *L) {
    uint64_t usec = 0;
    int r = sd_watchdog_enabled(0, &usec);
    if (r < 0) {
        luaL_pushfail(L);
        lua_pushfstring(L, "WATCHDOG_USEC or WATCHDOG_PID is malformed: %s", strerror(-r));
        return 2;
    }
    if (r == 0 || usec == 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_pushnumber(L, (lua_Number)usec / 2e6);
    return 1;
}

void chorus_lua_systemd_open(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"sd_notify", chorus_lua_systemd_notify},
        {"sd_watchdog_interval", chorus_lua_systemd_watchdog},
        {NULL, NULL},
    };
    chorus_lua_register(L, funcs);
}
