/* lua_http.c — core.http: one outbound call per yield (contract in lua_http.h).
 *
 * Invariant: the task that started a call is parked until the call's done
 * callback wakes it or the task is cancelled, which cancels the call; so the
 * task pointer the callback gets is always alive.
 */
#include "lua_http.h"

#include "lua_bindings.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "alloc.h"
#include "http_client.h"
#include "scheduler.h"

#define MAX_HEADERS 256
#define MAX_ALLOW_HOSTS 256

size_t chorus_lua_http_active(struct chorus_runtime *rt) { return chorus_http_active(rt->http); }

/* Whether header i repeats the name of one before it (names compared
 * without case). Only for the usual few headers: a long list takes the
 * table lookup instead, whose cost does not grow with the list. */
enum { FEW_HEADERS = 32 };
static int repeats_earlier(const struct chorus_http_response *res, size_t i, size_t n) {
    for (size_t j = 0; j < i; j++) {
        const char *other = res->headers[j].name;
        if (strlen(other) == n && strncasecmp(other, res->headers[i].name, n) == 0)
            return 1;
    }
    return 0;
}

static void push_headers(lua_State *co, const struct chorus_http_response *res) {
    lua_createtable(co, 0, (int)res->nheaders);
    char lower[128];
    int few = res->nheaders <= FEW_HEADERS;
    for (size_t i = 0; i < res->nheaders; i++) {
        const char *name = res->headers[i].name;
        size_t n = strlen(name);
        if (n <= sizeof lower) { /* the usual: lowered on the C stack, no buffer on the Lua one */
            for (size_t j = 0; j < n; j++)
                lower[j] = (char)(name[j] >= 'A' && name[j] <= 'Z' ? name[j] + 32 : name[j]);
            lua_pushlstring(co, lower, n);
        } else {
            luaL_Buffer b;
            luaL_buffinit(co, &b);
            for (const char *p = name; *p; p++)
                luaL_addchar(&b, (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p));
            luaL_pushresult(&b);
        }
        /* a name seen once (nearly every one) is set without looking it up
         * in the table first */
        if (few && !repeats_earlier(res, i, n)) {
            lua_pushstring(co, res->headers[i].value);
        } else {
            lua_pushvalue(co, -1);
            if (lua_rawget(co, -3) == LUA_TSTRING) { /* repeated: join with ", " */
                lua_pushliteral(co, ", ");
                lua_pushstring(co, res->headers[i].value);
                lua_concat(co, 3);
            } else {
                lua_pop(co, 1);
                lua_pushstring(co, res->headers[i].value);
            }
        }
        lua_rawset(co, -3);
    }
}

static const char *error_kind(enum chorus_http_error e) {
    switch (e) {
    case CHORUS_HTTP_TIMEOUT:
        return "timeout";
    case CHORUS_HTTP_CONNECT:
        return "connect";
    case CHORUS_HTTP_TLS:
        return "tls";
    case CHORUS_HTTP_RESET:
        return "reset";
    case CHORUS_HTTP_TOO_LARGE:
        return "too_large";
    case CHORUS_HTTP_MEMORY:
        return "memory";
    case CHORUS_HTTP_DENIED:
        return "egress_denied";
    case CHORUS_HTTP_FORBIDDEN_HOST:
        return "forbidden_host";
    default:
        return "protocol";
    }
}

static void on_done(const struct chorus_http_response *res, void *data) {
    struct chorus_task *t = data;
    lua_State *co = t->co;
    luaL_checkstack(co, 8, "http result");
    if (res->error == CHORUS_HTTP_OK) {
        /* No task runs here: the result's Lua values are charged to the
         * call's run, without a cap check, since the body was charged as
         * it arrived (the client gives that back after this callback). */
        struct chorus_runtime *rt = t->run->rt;
        struct chorus_run *was = chorus_alloc_charge_to(rt, t->run);
        lua_pushinteger(co, res->status);
        push_headers(co, res);
        lua_pushlstring(co, res->body, res->body_len);
        chorus_alloc_charge_to(rt, was);
    } else {
        lua_pushnil(co);
        lua_pushstring(co, error_kind(res->error));
        lua_pushstring(co, res->message);
    }
    lua_pushnumber(co, res->duration);
    chorus_task_wake(t, 4);
}

static void cancel_call(void *data) { chorus_http_cancel(data); }

/* The body counts against the run's memory cap as it arrives (the client
 * asks on this thread, before its transport holds more than 16 KiB past
 * what was charged): a body that would take the run past its cap ends the
 * run (kind "memory"), as the Lua allocator would. */
static int charge_body(void *data, long long delta) {
    struct chorus_task *t = data;
    struct chorus_run *run = t->run;
    if (delta < 0) {
        size_t give = (size_t)-delta;
        run->mem = run->mem > give ? run->mem - give : 0;
        return 0;
    }
    size_t cap = run->limits.run_memory;
    if (run->killed == KILL_MEMORY ||
        (cap && (size_t)delta > cap - (run->mem < cap ? run->mem : cap))) {
        run->killed = KILL_MEMORY;
        return -1;
    }
    run->mem += (size_t)delta;
    return 0;
}

static int has_crlf(const char *s) { return strpbrk(s, "\r\n") != NULL; }

/* Writes "Name: value" lines for the table at idx into buf (chorus_http_start
 * copies them), a line that does not fit into a Lua string left on the stack
 * (alive until the call returns); stores pointers to them in lines. Returns
 * the count. Most requests fit: no Lua string per header and call. */
static int collect_headers(lua_State *L, int idx, const char **lines, char *buf, size_t cap) {
    int n = 0;
    size_t used = 0;
    if (lua_isnil(L, idx))
        return 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        luaL_checkstack(L, 3, "too many headers");
        if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
            luaL_argerror(L, 1, "headers must map names to strings");
        size_t nlen, vlen;
        const char *name = lua_tolstring(L, -2, &nlen), *value = lua_tolstring(L, -1, &vlen);
        if (has_crlf(name) || has_crlf(value) || strchr(name, ':') || !*name)
            luaL_argerror(L, 1, "header names and values must not contain CR, LF or ':'");
        if (n == MAX_HEADERS)
            luaL_argerror(L, 1, "too many headers");
        if (nlen + vlen + 3 <= cap - used) {
            char *line = buf + used;
            memcpy(line, name, nlen);
            memcpy(line + nlen, ": ", 2);
            memcpy(line + nlen + 2, value, vlen + 1);
            used += nlen + vlen + 3;
            lines[n++] = line;
            lua_pop(L, 1);
        } else {
            lines[n++] = lua_pushfstring(L, "%s: %s", name, value);
            lua_insert(L, -3); /* keep the line below the key */
            lua_pop(L, 1);
        }
    }
    return n;
}

/* The options core.http takes, with the Lua type each must have. */
enum http_opt {
    OPT_METHOD,
    OPT_URL,
    OPT_HEADERS,
    OPT_BODY,
    OPT_CONNECT_TIMEOUT,
    OPT_TIMEOUT,
    OPT_TLS_VERIFY,
    OPT_FOLLOW_REDIRECTS,
    OPT_RESTRICTED,
    OPT_MAX_RESPONSE_BYTES,
    OPT_ALLOW_HOSTS,
    OPT_COUNT
};

static const struct {
    const char *name;
    int type;
} http_opts[OPT_COUNT] = {
    [OPT_METHOD] = {"method", LUA_TSTRING},
    [OPT_URL] = {"url", LUA_TSTRING},
    [OPT_HEADERS] = {"headers", LUA_TTABLE},
    [OPT_BODY] = {"body", LUA_TSTRING},
    [OPT_CONNECT_TIMEOUT] = {"connect_timeout", LUA_TNUMBER},
    [OPT_TIMEOUT] = {"timeout", LUA_TNUMBER},
    [OPT_TLS_VERIFY] = {"tls_verify", LUA_TBOOLEAN},
    [OPT_FOLLOW_REDIRECTS] = {"follow_redirects", LUA_TBOOLEAN},
    [OPT_RESTRICTED] = {"restricted", LUA_TBOOLEAN},
    [OPT_MAX_RESPONSE_BYTES] = {"max_response_bytes", LUA_TNUMBER},
    [OPT_ALLOW_HOSTS] = {"allow_hosts", LUA_TTABLE},
};

/* Stack slot of option i once read_options has run. */
#define SLOT(i) (2 + (int)(i))

/* Moves each option of the table at 1 into its slot (SLOT(i); nil when
 * absent), in one pass over the table: the upvalue maps each option name to
 * its index. Refuses a key that is not an option, or an option of the
 * wrong type, naming it (a misspelt "timout" would otherwise silently mean
 * no timeout). */
static void read_options(lua_State *L) {
    lua_settop(L, SLOT(OPT_COUNT) - 1);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        lua_pushvalue(L, -2);
        lua_rawget(L, lua_upvalueindex(2));
        int isnum = 0;
        lua_Integer i = lua_tointegerx(L, -1, &isnum);
        lua_pop(L, 1);
        if (!isnum)
            luaL_argerror(L, 1,
                          lua_pushfstring(L, "unknown option '%s'", luaL_tolstring(L, -2, NULL)));
        if (lua_type(L, -1) != http_opts[i].type)
            luaL_argerror(L, 1,
                          lua_pushfstring(L, "option '%s' must be a %s, got %s", http_opts[i].name,
                                          lua_typename(L, http_opts[i].type),
                                          luaL_typename(L, -1)));
        lua_replace(L, SLOT(i)); /* pops the value; the key stays for lua_next */
    }
}

/* max_response_bytes: a positive integer, or nil for the default. */
static size_t max_body_opt(lua_State *L) {
    int idx = SLOT(OPT_MAX_RESPONSE_BYTES);
    if (lua_isnil(L, idx))
        return CHORUS_HTTP_DEFAULT_MAX_BODY;
    int isint = 0;
    lua_Integer n = lua_tointegerx(L, idx, &isint);
    luaL_argcheck(L, isint && n > 0 && n <= ((lua_Integer)1 << 50), 1,
                  "max_response_bytes must be an integer between 1 and 2^50");
    return (size_t)n;
}

static long timeout_opt(lua_State *L, enum http_opt i) {
    int idx = SLOT(i);
    lua_Number s = lua_isnil(L, idx) ? 0 : lua_tonumber(L, idx);
    if (!(s >= 0 && s < 1e7))
        luaL_argerror(
            L, 1, lua_pushfstring(L, "%s must be seconds between 0 and 1e7", http_opts[i].name));
    return (long)(s * 1000.0 + 0.5);
}

static int flag_opt(lua_State *L, enum http_opt i, int dflt) {
    int idx = SLOT(i);
    return lua_isnil(L, idx) ? dflt : lua_toboolean(L, idx);
}

/* The workflow's allow_hosts, a set of host names, into hosts (pointers to
 * the table's keys, alive while the table is on the stack). */
static const char **allow_hosts_opt(lua_State *L, const char **hosts) {
    int idx = SLOT(OPT_ALLOW_HOSTS);
    if (lua_isnil(L, idx))
        return NULL;
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING || n == MAX_ALLOW_HOSTS)
            luaL_argerror(L, 1, "allow_hosts: at most 256 host names");
        hosts[n++] = lua_tostring(L, -1); /* alive: a key of the table */
    }
    hosts[n] = NULL;
    return hosts;
}

int chorus_lua_http_request(lua_State *L) {
    struct chorus_task *t = chorus_task_waitable(L, 1);
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkstack(L, OPT_COUNT + 8, "http options");
    read_options(L);
    struct chorus_http_request req = {0};
    req.method = lua_tostring(L, SLOT(OPT_METHOD)); /* strings or nil: read_options checked */
    req.url = lua_tostring(L, SLOT(OPT_URL));
    if (!req.method || !req.url)
        return luaL_argerror(L, 1, "method and url are required");
    req.body = lua_tolstring(L, SLOT(OPT_BODY), &req.body_len);
    req.connect_timeout_ms = timeout_opt(L, OPT_CONNECT_TIMEOUT);
    req.timeout_ms = timeout_opt(L, OPT_TIMEOUT);
    req.insecure = !flag_opt(L, OPT_TLS_VERIFY, 1);
    req.follow_redirects = flag_opt(L, OPT_FOLLOW_REDIRECTS, 0);
    req.restricted = flag_opt(L, OPT_RESTRICTED, 0);
    req.max_body = max_body_opt(L);
    req.charge = charge_body;
    const char *hosts[MAX_ALLOW_HOSTS + 1];
    req.allow_hosts = allow_hosts_opt(L, hosts);
    const char *lines[MAX_HEADERS + 1];
    char buf[4096];
    int n = collect_headers(L, SLOT(OPT_HEADERS), lines, buf, sizeof buf);
    lines[n] = NULL;
    req.headers = lines;
    char err[256];
    struct chorus_http_call *call =
        chorus_http_start(t->run->rt->http, &req, on_done, t, err, sizeof err);
    if (!call) {
        if (t->run->killed == KILL_MEMORY) /* the body's copy refused: the run's cap */
            chorus_run_stop(L, t->run, KILL_MEMORY);
        return luaL_error(L, "http: %s", err);
    }
    chorus_task_park(t, cancel_call, call);
    return chorus_task_yield(L, t);
}

/* core.egress({ allow = { "127.0.0.1", "10.0.0.0/8", ... }, self = "ip:port" }):
 * the policy of restricted calls (restricted = true), replacing the previous one. */
int chorus_lua_http_egress(lua_State *L) {
    struct chorus_runtime *rt = chorus_runtime_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_getfield(L, 1, "allow");
    int n = lua_isnil(L, -1) ? 0 : (luaL_checktype(L, -1, LUA_TTABLE), (int)lua_rawlen(L, -1));
    const char **allow = lua_newuserdatauv(L, ((size_t)n + 1) * sizeof *allow, 0);
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 2, i + 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "egress.allow[%d] must be a string", i + 1);
        allow[i] = lua_tostring(L, -1); /* alive: an element of the list */
        lua_pop(L, 1);
    }
    allow[n] = NULL;
    lua_getfield(L, 1, "self");
    const char *self = luaL_optstring(L, -1, NULL);
    char err[256];
    if (chorus_http_set_egress(rt->http, allow, self, err, sizeof err) != 0)
        return luaL_error(L, "egress: %s", err);
    return 0;
}

/* core.egress_check(ip, port): why a restricted call may not reach ip:port,
 * or nil. core.egress_parse(entry): whether entry is an address or network. */
int chorus_lua_http_egress_check(lua_State *L) {
    struct chorus_runtime *rt = chorus_runtime_of(L);
    const char *why =
        chorus_http_egress_denied(rt->http, luaL_checkstring(L, 1), (int)luaL_checkinteger(L, 2));
    if (!why)
        return 0;
    lua_pushstring(L, why);
    return 1;
}

int chorus_lua_http_egress_parse(lua_State *L) {
    lua_pushboolean(L, chorus_http_egress_parse(luaL_checkstring(L, 1)) == 0);
    return 1;
}

void chorus_lua_http_open(lua_State *L) {
    /* core.http's upvalues: the runtime (as every binding's) and the map
     * from option name to index that read_options looks keys up in */
    lua_pushlightuserdata(L, chorus_runtime_of(L));
    lua_createtable(L, 0, OPT_COUNT);
    for (int i = 0; i < OPT_COUNT; i++) {
        lua_pushinteger(L, i);
        lua_setfield(L, -2, http_opts[i].name);
    }
    lua_pushcclosure(L, chorus_lua_http_request, 2);
    lua_setfield(L, -2, "http");
    static const luaL_Reg funcs[] = {
        {"egress", chorus_lua_http_egress},
        {"egress_check", chorus_lua_http_egress_check},
        {"egress_parse", chorus_lua_http_egress_parse},
        {NULL, NULL},
    };
    chorus_lua_register(L, funcs);
}
