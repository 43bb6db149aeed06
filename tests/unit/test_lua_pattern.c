/* test_lua_pattern.c — runtime/lua_pattern.c on a plain lua_State (no
 * runtime: the per-call step cap applies), so that under ASan every read
 * past a subject's or a pattern's end shows: seeded random differential
 * runs against Lua's own string library, the cap, the string metatable. */
#include "lua_pattern.h"

#include <lauxlib.h>
#include <lualib.h>

#include "unit.h"

static lua_State *L;

/* Runs code (which may return a string describing a failure); returns that
 * string (static copy) or NULL. */
static const char *run(const char *code) {
    static char out[1024];
    int top = lua_gettop(L);
    if (luaL_dostring(L, code) != LUA_OK) {
        snprintf(out, sizeof out, "lua: %s", lua_tostring(L, -1));
        lua_settop(L, top);
        return out;
    }
    const char *r = lua_gettop(L) > top ? lua_tostring(L, top + 1) : NULL;
    if (r)
        snprintf(out, sizeof out, "%s", r);
    lua_settop(L, top);
    return r ? out : NULL;
}

static const char *differential =
    "local seed = 7\n"
    "local function rand(n) seed = (seed * 1103515245 + 12345) % 2147483648\n"
    "  return seed // 65536 % n + 1 end\n"
    "local function pick(t) return t[rand(#t)] end\n"
    "local ATOMS = { '%', '(', ')', '[', ']', '^', '$', '*', '+', '-', '?', '.', '%a', '%b',\n"
    "  '%f', '%1', '%2', '%0', '%z', 'a', 'b', '[^', '%w', '()', '%b()', '%f[%w]', '[a-c]' }\n"
    "local CH = { 'a', 'b', '(', ')', '[', ']', '%', '\\0', '\\255', ' ', 'z' }\n"
    "local function gen(n, from) local t = {}\n"
    "  for i = 1, rand(n) - 1 do t[i] = pick(from) end return table.concat(t) end\n"
    "local function ser(ok, ...) local t = table.pack(...) local o = { tostring(ok) }\n"
    "  for i = 1, t.n do o[#o + 1] = (math.type(t[i]) or type(t[i])) .. ':' .. tostring(t[i]) end\n"
    "  return table.concat(o, '|') end\n"
    "local function all(f, ...) local args = table.pack(...)\n"
    "  return ser(pcall(function() local out, it = {}, f(table.unpack(args, 1, args.n))\n"
    "    for _ = 1, 50 do local r = table.pack(it()) if r[1] == nil then break end\n"
    "      out[#out + 1] = ser(true, table.unpack(r, 1, r.n)) end\n"
    "    return table.concat(out, ';') end)) end\n"
    "local REPS = { '%0', '%1', '%2x', '%%', '%', 5, { a = 'A' }, function(x) return x end }\n"
    "for _ = 1, 20000 do\n"
    "  local s, p, init, r = gen(12, CH), gen(8, ATOMS), rand(20) - 8, pick(REPS)\n"
    "  local cases = {\n"
    "    { ser(pcall(string.find, s, p, init)), ser(pcall(P.find, s, p, init)) },\n"
    "    { ser(pcall(string.find, s, p, init, true)), ser(pcall(P.find, s, p, init, true)) },\n"
    "    { ser(pcall(string.match, s, p, init)), ser(pcall(P.match, s, p, init)) },\n"
    "    { all(string.gmatch, s, p, init), all(P.gmatch, s, p, init) },\n"
    "    { ser(pcall(string.gsub, s, p, r, init)), ser(pcall(P.gsub, s, p, r, init)) },\n"
    "  }\n"
    "  for i, c in ipairs(cases) do\n"
    "    if c[1] ~= c[2] then return ('case %d %q %q: %s vs %s'):format(i, s, p, c[1], c[2]) end\n"
    "  end\n"
    "end\n";

int main(void) {
    L = luaL_newstate();
    luaL_openlibs(L);
    lua_newtable(L);
    chorus_lua_pattern_open(L);
    lua_getfield(L, -1, "pattern");
    lua_setglobal(L, "P");
    lua_pop(L, 1);

    CHECK_STR_EQ(run(differential), NULL);

    /* a long gsub result (past luaL_Buffer's first block) through a function */
    CHECK_STR_EQ(run("local s = ('ab'):rep(5000)\n"
                     "local a = string.gsub(s, '(a)(b)', function(x, y) return y .. x .. x end)\n"
                     "local b = P.gsub(s, '(a)(b)', function(x, y) return y .. x .. x end)\n"
                     "if a ~= b then return 'long gsub differs' end"),
                 NULL);

    /* no runtime: one call is capped, with a catchable error */
    CHECK_STR_EQ(run("local ok, err = pcall(P.find, ('a'):rep(2000), ('a*'):rep(12) .. 'b')\n"
                     "return tostring(ok) .. ' ' .. err"),
                 "false pattern too costly: more than 100000000 matching steps in one call");
    CHECK_STR_EQ(run("return select(2, pcall(P.match, ('a'):rep(300), ('a?'):rep(250)))"),
                 "pattern too complex");

    /* strings' methods are ours and have no dump; the string table keeps it */
    CHECK_STR_EQ(run("if ('x').find ~= P.find then return 'method find is not ours' end\n"
                     "if ('x').dump ~= nil then return 'dump reachable' end\n"
                     "if type(string.dump) ~= 'function' then return 'string.dump gone' end\n"
                     "if ('x'):upper() ~= 'X' then return 'upper gone' end"),
                 NULL);

    /* opening again (the core required by a second state user) keeps the
     * one methods table */
    CHECK_STR_EQ(run("methods_before = getmetatable('').__index"), NULL);
    lua_newtable(L);
    chorus_lua_pattern_open(L);
    lua_pop(L, 1);
    CHECK_STR_EQ(run("if getmetatable('').__index ~= methods_before then return 'replaced' end"),
                 NULL);

    lua_close(L);
    UNIT_MAIN_END();
}
