/* lua_events.c — signals and folder watches that start Lua runs (contract in
 * lua_events.h).
 *
 * Invariant: every handle made here is on rt->events until it is closed, so
 * chorus_events_close can close them all before the loop closes.
 */
#include "lua_events.h"

#include "lua_bindings.h"

#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler.h"

struct event {
    union {
        uv_handle_t handle;
        uv_signal_t signal;
        uv_fs_event_t fs;
    } h;
    struct chorus_runtime *rt;
    int fn_ref;
    struct event *next;
};

static void free_event(uv_handle_t *h) { free(h->data); }

void chorus_events_close(struct chorus_runtime *rt) {
    struct event *e = rt->events, *next;
    for (; e; e = next) {
        next = e->next;
        luaL_unref(rt->L, LUA_REGISTRYINDEX, e->fn_ref);
        int signum = e->h.handle.type == UV_SIGNAL ? e->h.signal.signum : 0;
        uv_close(&e->h.handle, free_event);
        /* The process is stopping: a second SIGTERM or SIGINT (timeout(1)
         * forwards one to the process and another to its group) must not
         * kill it by the default action while it closes its data folder. */
        if (signum == SIGTERM || signum == SIGINT)
            signal(signum, SIG_IGN);
    }
    rt->events = NULL;
}

/* A handler that raised is said on stderr: dropped silently, a reload wait
 * that failed left the file watch dead with nothing in the log. Only a
 * string or an error table's raw message is read: no metamethod runs here,
 * outside any protected call. */
static void free_detached(struct chorus_run *run, void *data) {
    (void)data;
    if (!run->ok) {
        lua_State *L = run->rt->L;
        int top = lua_gettop(L);
        chorus_run_push_result(run, L); /* false, error */
        if (lua_type(L, -1) == LUA_TTABLE) {
            lua_pushliteral(L, "message");
            lua_rawget(L, -2);
        }
        const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(not a string)";
        fprintf(stderr, "chorus: a signal or folder watch handler failed: %s\n", msg);
        lua_settop(L, top);
    }
    chorus_run_free(run);
}

/* Starts a detached run of the event's function with one string argument.
 * The run has no memory cap and no instruction budget: the functions are
 * chorus's own (server.lua's drain on SIGTERM, reloads), and the configured
 * per-run limits are for workflows. Under them a tiny memory cap killed the
 * drain and the server never exited. */
static void fire(struct event *e, const char *arg) {
    lua_State *L = e->rt->L;
    static const struct chorus_limits unlimited = {0, 0, 0, 0};
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->fn_ref);
    lua_pushstring(L, arg ? arg : "");
    if (!chorus_run_start(e->rt, L, 1, &unlimited, 1, free_detached, NULL)) {
        lua_pop(L, 2);
        fprintf(stderr, "chorus: out of memory: the handler of %s did not run\n", arg ? arg : "");
    }
}

static void on_signal(uv_signal_t *h, int signum) {
    fire(h->data, signum == SIGHUP ? "SIGHUP" : signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void on_fs(uv_fs_event_t *h, const char *filename, int events, int status) {
    (void)events;
    if (status == 0)
        fire(h->data, filename);
}

static struct event *new_event(lua_State *L, int fn_index) {
    struct chorus_runtime *rt = chorus_runtime_of(L);
    luaL_checktype(L, fn_index, LUA_TFUNCTION);
    struct event *e = calloc(1, sizeof *e);
    if (!e)
        luaL_error(L, "out of memory");
    e->rt = rt;
    e->h.handle.data = e;
    return e;
}

static void keep(lua_State *L, struct event *e, int fn_index) {
    lua_pushvalue(L, fn_index);
    e->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    e->next = e->rt->events;
    e->rt->events = e;
}

int chorus_lua_on_signal(lua_State *L) {
    static const char *const names[] = {"SIGHUP", "SIGTERM", "SIGINT", NULL};
    static const int nums[] = {SIGHUP, SIGTERM, SIGINT};
    int which = luaL_checkoption(L, 1, NULL, names);
    struct event *e = new_event(L, 2);
    uv_signal_init(&e->rt->loop, &e->h.signal);
    e->h.handle.data = e;
    uv_signal_start(&e->h.signal, on_signal, nums[which]);
    keep(L, e, 2);
    return 0;
}

int chorus_lua_watch(lua_State *L) {
    const char *dir = luaL_checkstring(L, 1);
    struct event *e = new_event(L, 2);
    uv_fs_event_init(&e->rt->loop, &e->h.fs);
    e->h.handle.data = e;
    int rc = uv_fs_event_start(&e->h.fs, on_fs, dir, 0);
    if (rc != 0) {
        uv_close(&e->h.handle, free_event);
        lua_pushnil(L);
        lua_pushfstring(L, "cannot watch %s: %s", dir, uv_strerror(rc));
        return 2;
    }
    keep(L, e, 2);
    lua_pushboolean(L, 1);
    return 1;
}

int chorus_lua_scandir(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    DIR *d = opendir(path);
    if (!d) {
        lua_pushnil(L);
        lua_pushfstring(L, "cannot list %s: %s", path, strerror(errno));
        return 2;
    }
    lua_newtable(L);
    int i = 0;
    struct dirent *ent;
    while ((ent = readdir(d))) {
        if (ent->d_name[0] == '.')
            continue;
        lua_createtable(L, 0, 2);
        lua_pushstring(L, ent->d_name);
        lua_setfield(L, -2, "name");
        lua_pushboolean(L, ent->d_type == DT_DIR);
        lua_setfield(L, -2, "dir");
        lua_rawseti(L, -2, ++i);
    }
    closedir(d);
    return 1;
}

void chorus_lua_events_open(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"on_signal", chorus_lua_on_signal},
        {"watch", chorus_lua_watch},
        {"scandir", chorus_lua_scandir},
        {NULL, NULL},
    };
    chorus_lua_register(L, funcs);
}
