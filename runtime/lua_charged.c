/* lua_charged.c — string functions charged by the bytes they handle
 * (contract in lua_charged.h).
 *
 * Each is a C closure over the standard function (upvalue 1), which it calls
 * on the same stack after charging: the arguments, results and errors stay
 * Lua's. */
#include "lua_charged.h"
#include "scheduler.h"

#include <lauxlib.h>

static int call_standard(lua_State *L) { return lua_tocfunction(L, lua_upvalueindex(1))(L); }

/* Under 16 bytes there is nothing to charge: the short strings the server's
 * own code handles most (header names, log fields) skip the run lookup. */
static void charge_bytes(lua_State *L, size_t bytes) {
    if (bytes >= CHORUS_CHARGE_BYTES)
        chorus_run_charge(L, (lua_Integer)(bytes / CHORUS_CHARGE_BYTES));
}

/* string.upper, lower, reverse: the bytes of the string (a number argument
 * becomes a short string; anything else is the standard function's error) */
static int charged_whole(lua_State *L) {
    if (lua_type(L, 1) == LUA_TSTRING)
        charge_bytes(L, lua_rawlen(L, 1));
    return call_standard(L);
}

static int charged_rep(lua_State *L) {
    size_t len, lsep;
    luaL_checklstring(L, 1, &len);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &lsep);
    if (n > 0 && len + lsep == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    /* past the largest string the standard function raises "resulting
     * string too large": nothing to charge for */
    if (n > 0 && len + lsep >= len && (size_t)n <= (size_t)LUA_MAXINTEGER / (len + lsep))
        charge_bytes(L, (size_t)n * (len + lsep));
    return call_standard(L);
}

static int charged_format(lua_State *L) {
    size_t bytes = 0;
    for (int i = 1, top = lua_gettop(L); i <= top; i++)
        if (lua_type(L, i) == LUA_TSTRING)
            bytes += lua_rawlen(L, i);
    charge_bytes(L, bytes);
    return call_standard(L);
}

/* table.concat's result is known only once made: a loop of them is charged,
 * one call is bounded by the memory cap. So are string.pack's (a "c1000000"
 * pads a megabyte from nothing), utf8.char's (up to four bytes an
 * argument) and os.date's (a format of a thousand "%c" makes a thousand
 * dates; "*t" makes a table of a few fields, not charged). */
static int charged_result(lua_State *L) {
    int n = call_standard(L);
    if (n == 1 && lua_type(L, -1) == LUA_TSTRING)
        charge_bytes(L, lua_rawlen(L, -1));
    return n;
}

struct charged {
    const char *lib, *name;
    lua_CFunction f;
    const char *key; /* its name in core.charged (NULL: name) */
};

static const struct charged charged_funcs[] = {
    {"string", "upper", charged_whole, NULL},   {"string", "lower", charged_whole, NULL},
    {"string", "reverse", charged_whole, NULL}, {"string", "rep", charged_rep, NULL},
    {"string", "format", charged_format, NULL}, {"table", "concat", charged_result, NULL},
    {"string", "pack", charged_result, NULL},   {"utf8", "char", charged_result, "utf8_char"},
    {"os", "date", charged_result, "os_date"},
};

/* With the methods table of strings on top of L, or nil: sets name there. */
static void set_method(lua_State *L, const struct charged *c) {
    if (lua_istable(L, -2) && c->lib[0] == 's' && c->lib[1] == 't') {
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, c->name);
    }
}

void chorus_lua_charged_open(lua_State *L) {
    lua_newtable(L); /* core charged */
    /* strings' methods: chorus's own table (it has a metatable), or none */
    lua_pushliteral(L, "");
    int methods = 0;
    if (lua_getmetatable(L, -1)) {
        lua_getfield(L, -1, "__index");
        methods = lua_istable(L, -1) && lua_getmetatable(L, -1);
        if (methods)
            lua_pop(L, 1);
        lua_remove(L, -2); /* core charged "" index */
    } else {
        lua_pushnil(L);
    }
    lua_remove(L, -2); /* core charged index */
    if (!methods) {
        lua_pop(L, 1);
        lua_pushnil(L);
    }
    for (size_t i = 0; i < sizeof charged_funcs / sizeof *charged_funcs; i++) {
        const struct charged *c = &charged_funcs[i];
        int top = lua_gettop(L); /* core charged methods */
        lua_getglobal(L, c->lib);
        if (!lua_istable(L, -1) || lua_getfield(L, -1, c->name) != LUA_TFUNCTION ||
            lua_tocfunction(L, -1) == NULL) {
            lua_settop(L, top); /* not loaded (or not the C function): left alone */
            continue;
        }
        lua_remove(L, -2); /* core charged methods standard */
        lua_pushcclosure(L, c->f, 1);
        set_method(L, c);
        lua_setfield(L, -3, c->key ? c->key : c->name);
    }
    lua_pop(L, 1);
    lua_setfield(L, -2, "charged");
}
