/* main.c — the chorus executable: a Lua 5.4 state with the core and the
 * embedded lua/chorus modules, handing the command line to chorus.cli.
 *
 * The command line's grammar (lua/chorus/cli_args.lua, on lua-argparse from
 * the system Lua path) and the commands (lua/chorus/cli.lua) are Lua; this
 * file only builds the state and turns an unexpected Lua error into exit
 * status 1.
 */
#include <lauxlib.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>

#include "embedded.h"
#include "runtime.h"

/* Many concurrent outbound calls need many descriptors. */
static void raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int run_cli(lua_State *L) {
    int argc = (int)lua_tointeger(L, 1);
    char **argv = lua_touserdata(L, 2);
    chorus_embedded_preload(L);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "chorus.cli");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "main");
    lua_createtable(L, argc, 0);
    for (int i = 1; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    lua_call(L, 1, 1);
    return 1;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    lua_State *L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "chorus: cannot create the Lua state (out of memory)\n");
        return 1;
    }
    luaL_openlibs(L);
    lua_pushcfunction(L, run_cli);
    lua_pushinteger(L, argc);
    lua_pushlightuserdata(L, argv);
    int status = 1;
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        fprintf(stderr, "chorus: internal error: %s\n", lua_tostring(L, -1));
    } else {
        status = (int)lua_tointeger(L, -1);
    }
    lua_close(L);
    return status;
}
