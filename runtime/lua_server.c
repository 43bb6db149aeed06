/* lua_server.c — core.serve: each inbound request becomes a run of a Lua
 * handler, and the handler's return value becomes the response.
 *
 *   local srv = core.serve({ host =, port =, max_body =, max_header =,
 *                            max_connections =, idle_timeout =, client_timeout = }, handler)
 * (idle_timeout: seconds a connection may stay silent; client_timeout,
 * default idle_timeout: seconds a request may take to arrive whole)
 *   handler(req) → { status = int, headers = { name = value }, body = string }
 *   req = { method, path, headers = { lowercase name = value }, query = {}, body,
 *           repeated = { lowercase name = true } (only when a header came twice) }
 *   srv:port(), srv:pending(), srv:quiesce(), srv:close()
 *
 * The handler runs as a run with the runtime's memory cap and no instruction
 * budget (it is trusted code; the workflows it starts get the configured
 * limits through core.execute); a handler that fails
 * or returns something else gets a 500 (the handler in lua/chorus/server.lua
 * never does: it turns every workflow outcome into a response itself).
 */
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua_bindings.h"
#include "http_server.h"
#include "lua_json.h"
#include "runtime.h"
#include "scheduler.h"

#define SERVER_MT "chorus.server"
/* A workflow's answer has at most 100 headers of its own (responses.lua's
 * MAX_HEADERS) plus the few chorus adds (Content-Type, X-Run-Id,
 * Idempotent-Replayed, ...): room for all of them. At 64, headers past the
 * 64th were dropped without a word. */
#define MAX_RESPONSE_HEADERS 128

struct lua_server {
    struct chorus_runtime *rt;
    struct chorus_server *server;
    int handler_ref;
};

static const char INTERNAL[] =
    "{\"type\":\"about:blank\",\"title\":\"Internal Server Error\",\"status\":500}";

/* A header seen twice is kept joined with ", " (RFC 9110 5.3) and its name
 * is listed in req.repeated, so the server can refuse a repeated header
 * that must be single (Idempotency-Key) rather than silently keep one.
 * The headers table is at -1, the request at -2. */
static void set_kv(void *cls, const char *key, const char *value) {
    lua_State *L = cls;
    size_t n = strlen(key);
    char small[128];
    char *lower = n < sizeof small ? small : malloc(n + 1);
    if (!lower)
        return;
    for (size_t i = 0; i <= n; i++)
        lower[i] = (char)(key[i] >= 'A' && key[i] <= 'Z' ? key[i] + 32 : key[i]);
    /* the name made a Lua string once, for the lookup and the store */
    lua_pushlstring(L, lower, n); /* headers name */
    if (lower != small)
        free(lower);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -3) == LUA_TSTRING) { /* headers name old */
        lua_pushliteral(L, ", ");
        lua_pushstring(L, value);
        lua_concat(L, 3); /* headers name joined */
        if (lua_getfield(L, -4, "repeated") != LUA_TTABLE) {
            lua_pop(L, 1);
            lua_newtable(L);
            lua_pushvalue(L, -1);
            lua_setfield(L, -6, "repeated");
        }
        lua_pushvalue(L, -3);
        lua_pushboolean(L, 1);
        lua_rawset(L, -3);
        lua_pop(L, 1);
    } else {
        lua_pop(L, 1);
        lua_pushstring(L, value);
    }
    lua_rawset(L, -3);
}

static void set_query(void *cls, const char *key, const char *value) {
    lua_State *L = cls;
    lua_pushstring(L, value);
    lua_setfield(L, -2, key);
}

static void push_request(lua_State *L, struct chorus_exchange *ex,
                         const struct chorus_request *req) {
    lua_createtable(L, 0, 5);
    lua_pushstring(L, req->method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, req->path);
    lua_setfield(L, -2, "path");
    lua_pushlstring(L, req->body, req->body_len);
    lua_setfield(L, -2, "body");
    lua_createtable(L, 0, chorus_server_count(ex, 0));
    chorus_server_each(ex, 0, set_kv, L);
    lua_setfield(L, -2, "headers");
    lua_createtable(L, 0, chorus_server_count(ex, 1));
    chorus_server_each(ex, 1, set_query, L);
    lua_setfield(L, -2, "query");
}

/* Sends the response table at the top of L (popped). */
static void respond_with(lua_State *L, struct chorus_exchange *ex) {
    const char *hdrs[2 * MAX_RESPONSE_HEADERS];
    size_t n = 0;
    int top = lua_gettop(L);
    if (!lua_istable(L, -1)) {
        static const char *const h[] = {"Content-Type", "application/problem+json"};
        chorus_server_respond(ex, 500, h, 1, INTERNAL, sizeof INTERNAL - 1);
        lua_settop(L, top - 1);
        return;
    }
    /* Never raise here (a C callback, no pcall above): a status that is
     * missing means 200, one that is not an integer in 100..599 means 500. */
    lua_getfield(L, top, "status");
    int isint = 0;
    lua_Integer code = lua_tointegerx(L, -1, &isint);
    unsigned status = lua_isnil(L, -1)                      ? 200
                      : isint && code >= 100 && code <= 599 ? (unsigned)code
                                                            : 500;
    lua_getfield(L, top, "headers");
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (n < MAX_RESPONSE_HEADERS && lua_next(L, -2)) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
                hdrs[2 * n] = lua_tostring(L, -2);
                hdrs[2 * n + 1] = lua_tostring(L, -1);
                n++;
            }
            lua_pop(L, 1); /* the strings stay alive in the headers table */
        }
    }
    lua_getfield(L, top, "body");
    size_t len = 0;
    const char *body = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : "";
    chorus_server_respond(ex, status, hdrs, n, body, len);
    lua_settop(L, top - 1);
}

static void on_run_done(struct chorus_run *run, void *data) {
    struct chorus_exchange *ex = data;
    lua_State *L = run->rt->L;
    int top = lua_gettop(L);
    int n = chorus_run_push_result(run, L);
    if (lua_toboolean(L, top + 1) && n >= 2) {
        lua_settop(L, top + 2);
        respond_with(L, ex);
    } else {
        /* The handler never fails on its own (lua/chorus/server.lua answers
         * every outcome); if its run still did, say why in the log. */
        const char *why = n >= 2 && lua_type(L, top + 2) == LUA_TSTRING ? lua_tostring(L, top + 2)
                          : n >= 2 && lua_type(L, top + 2) == LUA_TTABLE
                              ? "a limit or an error table"
                              : "no response";
        lua_createtable(L, 0, 4);
        lua_pushliteral(L, "error");
        lua_setfield(L, -2, "level");
        lua_pushliteral(L, "request handler run failed; answered 500");
        lua_setfield(L, -2, "msg");
        lua_pushstring(L, why);
        lua_setfield(L, -2, "error");
        if (run->traceback) {
            lua_pushstring(L, run->traceback);
            lua_setfield(L, -2, "traceback");
        }
        char *line = chorus_json_encode(L, -1, NULL, 0);
        if (line) {
            fprintf(stderr, "%s\n", line);
            free(line);
        }
        lua_settop(L, top);
        lua_pushnil(L);
        respond_with(L, ex);
    }
    lua_settop(L, top);
    chorus_run_free(run);
}

static void on_request(struct chorus_exchange *ex, const struct chorus_request *req, void *data) {
    struct lua_server *ls = data;
    struct chorus_runtime *rt = ls->rt;
    lua_State *L = rt->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ls->handler_ref);
    push_request(L, ex, req);
    /* The handler is chorus's own code: no budget (the workflow it starts
     * runs as a run of its own, under the configured limits). */
    struct chorus_limits limits = rt->limits;
    limits.run_instructions = 0;
    limits.run_cpu_ms = 0;
    if (!chorus_run_start(rt, L, 1, &limits, 1, on_run_done, ex)) {
        lua_pop(L, 2);
        static const char *const h[] = {"Content-Type", "application/problem+json"};
        chorus_server_respond(ex, 500, h, 1, INTERNAL, sizeof INTERNAL - 1);
    }
}

static struct lua_server *check_server(lua_State *L) {
    struct lua_server *ls = luaL_checkudata(L, 1, SERVER_MT);
    if (!ls->server)
        luaL_argerror(L, 1, "server is closed");
    return ls;
}

static int server_port(lua_State *L) {
    lua_pushinteger(L, chorus_server_port(check_server(L)->server));
    return 1;
}

static int server_pending(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)chorus_server_pending(check_server(L)->server));
    return 1;
}

static int server_quiesce(lua_State *L) {
    chorus_server_quiesce(check_server(L)->server);
    return 0;
}

/* Runs still answering requests of this server must not outlive it. A
 * request's run is owned by nobody, and freeing it frees only the runs it
 * owns, which are ahead of it on the list: next stays valid (scheduler.h). */
static void drop_request_runs(struct lua_server *ls) {
    struct chorus_run *run = ls->rt->runs, *next;
    for (; run; run = next) {
        next = run->next;
        if (run->on_done == on_run_done) {
            run->on_done = NULL;
            chorus_run_free(run);
        }
    }
}

static int server_close(lua_State *L) {
    struct lua_server *ls = luaL_checkudata(L, 1, SERVER_MT);
    if (ls->server) {
        drop_request_runs(ls);
        chorus_server_close(ls->server);
        ls->server = NULL;
        luaL_unref(L, LUA_REGISTRYINDEX, ls->handler_ref);
        ls->handler_ref = LUA_NOREF;
    }
    return 0;
}

static lua_Integer opt_field(lua_State *L, const char *name, lua_Integer def) {
    lua_getfield(L, 1, name);
    lua_Integer v = luaL_optinteger(L, -1, def);
    lua_pop(L, 1);
    if (v < 0)
        luaL_error(L, "core.serve: %s must not be negative", name);
    return v;
}

int chorus_lua_serve(lua_State *L) {
    struct chorus_runtime *rt = chorus_runtime_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_getfield(L, 1, "host");
    struct chorus_server_config cfg = {
        .host = luaL_optstring(L, -1, "127.0.0.1"),
        .port = (int)opt_field(L, "port", 8080),
        .max_body = (size_t)opt_field(L, "max_body", 1 << 20),
        .max_header = (size_t)opt_field(L, "max_header", 16 * 1024),
        .max_connections = (unsigned)opt_field(L, "max_connections", 10000),
        .idle_timeout = (unsigned)opt_field(L, "idle_timeout", 30),
    };
    cfg.client_timeout = (unsigned)opt_field(L, "client_timeout", cfg.idle_timeout);
    struct lua_server *ls = lua_newuserdatauv(L, sizeof *ls, 0);
    ls->rt = rt;
    ls->server = NULL;
    ls->handler_ref = LUA_NOREF;
    luaL_setmetatable(L, SERVER_MT);
    /* The handler first: starting the server runs MHD once, and a request
     * already waiting in the listen backlog (a client retrying while the
     * server restarts) is handed to on_request right then. With the ref
     * still unset that request's run called nil and got a 500. */
    lua_pushvalue(L, 2);
    ls->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    char err[256];
    ls->server = chorus_server_start(&rt->loop, &cfg, on_request, ls, err, sizeof err);
    if (!ls->server) {
        luaL_unref(L, LUA_REGISTRYINDEX, ls->handler_ref);
        ls->handler_ref = LUA_NOREF;
        return luaL_error(L, "%s", err);
    }
    return 1;
}

void chorus_lua_server_open(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"port", server_port},
        {"pending", server_pending},
        {"quiesce", server_quiesce},
        {"close", server_close},
        {"__gc", server_close},
        {"__close", server_close},
        {NULL, NULL},
    };
    if (luaL_newmetatable(L, SERVER_MT)) {
        luaL_setfuncs(L, methods, 0);
        lua_pushvalue(L, -1);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    static const luaL_Reg funcs[] = {{"serve", chorus_lua_serve}, {NULL, NULL}};
    chorus_lua_register(L, funcs);
}
