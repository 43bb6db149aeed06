/* test_lua_json.c — runtime/lua_json.c: round trips, every error message,
 * depth limits, out-of-memory paths and a leak loop (run it under valgrind). */
#include "lua_json.h"

#include <cJSON.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

#include "unit.h"

static lua_State *L;

static const char *helpers =
    "function same(a, b)\n"
    "  if type(a) ~= type(b) then return false end\n"
    "  if type(a) == 'number' then return math.type(a) == math.type(b) and a == b end\n"
    "  if type(a) ~= 'table' then return a == b end\n"
    "  for k, v in pairs(a) do if not same(v, b[k]) then return false end end\n"
    "  for k in pairs(b) do if a[k] == nil then return false end end\n"
    "  return true\n"
    "end\n"
    "function rt(v) return json.decode(json.encode(v)) end\n"
    "function nest(n) local r = {}; local t = r; for _ = 2, n do t[1] = {}; t = t[1] end; return r "
    "end\n";

static lua_State *new_state(void) {
    lua_State *s = luaL_newstate();
    luaL_openlibs(s);
    chorus_json_open(s);
    lua_setglobal(s, "json");
    if (luaL_dostring(s, helpers) != LUA_OK)
        fprintf(stderr, "helpers: %s\n", lua_tostring(s, -1));
    return s;
}

/* Runs code; true when it raised nothing. */
static int lua_ok(const char *code) {
    int top = lua_gettop(L);
    if (luaL_dostring(L, code) != LUA_OK) {
        fprintf(stderr, "    lua: %s\n", lua_tostring(L, -1));
        lua_settop(L, top);
        return 0;
    }
    lua_settop(L, top);
    return 1;
}

/* Evaluates the Lua expression and encodes its value; the stack is kept. */
static char *encode_expr(const char *expr, char *err, size_t errlen) {
    int top = lua_gettop(L);
    char *out;
    lua_pushfstring(L, "return %s", expr);
    if (luaL_loadstring(L, lua_tostring(L, -1)) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
        snprintf(err, errlen, "lua: %s", lua_tostring(L, -1));
        lua_settop(L, top);
        return NULL;
    }
    out = chorus_json_encode(L, -1, err, errlen);
    if (lua_gettop(L) != top + 2)
        snprintf(err, errlen, "stack moved");
    lua_settop(L, top);
    return out;
}

#define RUNS(code) CHECK(lua_ok(code))

#define ENCODES(expr, want)                                                                        \
    do {                                                                                           \
        char err_[1024];                                                                           \
        char *s_ = encode_expr(expr, err_, sizeof err_);                                           \
        CHECK_STR_EQ(s_ ? s_ : err_, want);                                                        \
        free(s_);                                                                                  \
    } while (0)

#define ENCODE_FAILS(expr, want)                                                                   \
    do {                                                                                           \
        char err_[1024];                                                                           \
        char *s_ = encode_expr(expr, err_, sizeof err_);                                           \
        CHECK(s_ == NULL);                                                                         \
        CHECK_STR_EQ(s_ ? s_ : err_, want);                                                        \
        free(s_);                                                                                  \
    } while (0)

#define DECODE_FAILS_N(text, len, want)                                                            \
    do {                                                                                           \
        char err_[256] = "";                                                                       \
        int top_ = lua_gettop(L);                                                                  \
        CHECK_INT_EQ(chorus_json_decode(L, text, len, err_, sizeof err_), -1);                     \
        CHECK_STR_EQ(err_, want);                                                                  \
        CHECK_INT_EQ(lua_gettop(L), top_);                                                         \
    } while (0)

#define DECODE_FAILS(text, want) DECODE_FAILS_N(text, strlen(text), want)

/* Decodes text, which must be a JSON string, and compares its bytes. */
#define DECODES_STR(text, want)                                                                    \
    do {                                                                                           \
        char err_[256] = "";                                                                       \
        size_t n_ = 0;                                                                             \
        const char *got_;                                                                          \
        CHECK_INT_EQ(chorus_json_decode(L, text, strlen(text), err_, sizeof err_), 0);             \
        got_ = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n_) : err_;                  \
        CHECK_STR_EQ(got_, want);                                                                  \
        CHECK_INT_EQ(n_, strlen(want));                                                            \
        lua_pop(L, 1);                                                                             \
    } while (0)

/* Decodes text and encodes the result back, expecting the same text. */
#define ROUNDTRIP(text)                                                                            \
    do {                                                                                           \
        char err_[1024] = "";                                                                      \
        char *s_ = NULL;                                                                           \
        if (chorus_json_decode(L, text, strlen(text), err_, sizeof err_) == 0) {                   \
            s_ = chorus_json_encode(L, -1, err_, sizeof err_);                                     \
            lua_pop(L, 1);                                                                         \
        }                                                                                          \
        CHECK_STR_EQ(s_ ? s_ : err_, text);                                                        \
        free(s_);                                                                                  \
    } while (0)

static void test_scalars(void) {
    ENCODES("nil", "null");
    ENCODES("true", "true");
    ENCODES("false", "false");
    ENCODES("json.null", "null");
    ENCODES("42", "42");
    ENCODES("-7", "-7");
    ENCODES("1.5", "1.5");
    ENCODES("0.1", "0.1");
    ENCODES("0.1 + 0.2", "0.30000000000000004");
    ENCODES("1e300", "1e+300");
    ENCODES("2.0", "2");
    ENCODES("'hi'", "\"hi\"");
    RUNS("assert(math.type(json.decode('1')) == 'integer')");
    RUNS("assert(math.type(json.decode('1.5')) == 'float' and json.decode('1.5') == 1.5)");
    RUNS("assert(math.type(json.decode('1.0')) == 'integer' and json.decode('1.0') == 1)");
    RUNS("assert(math.type(json.decode('1e3')) == 'integer' and json.decode('1e3') == 1000)");
    RUNS("assert(math.type(json.decode('-0')) == 'integer')");
    RUNS("assert(not pcall(json.decode, '1e400'))"); /* out of range: see test_integers */
    RUNS("assert(json.decode('true') == true and json.decode('false') == false)");
    RUNS("assert(json.decode(' \\t\\r\\n\"s\" \\n') == 's')");
    RUNS("assert(json.decode('null') == json.null and json.is_null(json.decode('null')))");
    RUNS("assert(not json.is_null(nil) and not json.is_null(false) and not json.is_null({}))");
    RUNS("assert(not json.is_null() and type(json.null) == 'userdata')");
    RUNS("for _, x in ipairs{0.1, 1/3, 2^-1074, 1.7976931348623157e308, -2.5e-300, 123456.789,"
         " 0.1 + 0.2, 2^63, -2^70} do assert(same(rt(x), x), x) end");
    /* times kept to the microsecond take the short path; its text is what
     * %.15g..%.17g prints, and anything it cannot write exactly falls back */
    ENCODES("1763913526.123456", "1763913526.123456");
    ENCODES("-2.25", "-2.25");
    ENCODES("0.000123", "0.000123");
    ENCODES("123456789.000001", "123456789.000001");
    ENCODES("0.00005", "5e-05");
    ENCODES("-0.0", "-0");
    ENCODES("1e9 + 0.5", "1000000000.5");
    ENCODES("0.1234567", "0.1234567");
    ENCODES("-0.5", "-0.5");
    ENCODES("4294967295.999999", "4294967295.999999");
    ENCODES("8765601648.112009", "8765601648.11201"); /* past 2^32: printf's text */
    ENCODES("math.mininteger", "-9223372036854775808");
    ENCODES("math.maxinteger", "9223372036854775807");
    RUNS("for i = 1, 20000 do local x = (math.random(0, 2^33 * 1e6 // 1) / 1e6) * (i % 2 == 0 and "
         "-1 or 1);"
         " assert(rt(x) == x, x); assert(tonumber(json.encode(x)) == x, x);"
         " local y = x + math.random() / 1e7; assert(rt(y) == y, y);"
         " local g; for p = 15, 17 do g = ('%.' .. p .. 'g'):format(x); if tonumber(g) == x then "
         "break end end;"
         " assert(json.encode(x) == g, g) end");
    RUNS("assert(math.type(rt(2.0)) == 'integer')"); /* integral floats come back as integers */
    RUNS("assert(json.encode(true) == 'true' and json.encode(nil) == 'null')");
    RUNS("assert(not pcall(json.encode))");
}

static void test_integers(void) {
    ENCODES("math.maxinteger", "9223372036854775807");
    ENCODES("math.mininteger", "-9223372036854775808");
    ENCODES("(1 << 53) + 1", "9007199254740993");
    ENCODES("{n = -(1 << 53) - 1}", "{\"n\":-9007199254740993}");
    RUNS("local v = json.decode('9223372036854775807');"
         " assert(math.type(v) == 'integer' and v == math.maxinteger)");
    RUNS("assert(json.decode('-9223372036854775808') == math.mininteger)");
    RUNS("assert(json.decode('9007199254740993') == (1 << 53) + 1)");
    RUNS("local v = json.decode('9223372036854775808'); assert(math.type(v) == 'float' and v == "
         "2^63)");
    RUNS("local v = json.decode('-9223372036854775809'); assert(math.type(v) == 'float' and v == "
         "-2^63)");
    /* beyond a double: no JSON text could carry it back out */
    DECODE_FAILS("[1e400]", "number 1e400 is out of range");
    DECODE_FAILS("{\"x\": -1e999}", "number -1e999 is out of range");
    RUNS("local v = json.decode('[-9223372036854775809, 1e2, -2E+1]');"
         " assert(math.type(v[1]) == 'float' and v[2] == 100 and math.type(v[3]) == 'integer')");
    /* the literal cursor must skip strings, keys and escaped quotes */
    RUNS("local v = json.decode('[\"12\\\\\"34\", 9007199254740993, {\"7\": 9007199254740995,"
         " \"x\\\\\\\\\": -9007199254740997}, 2.5e0, [true, 12345678901234567]]');"
         " assert(v[1] == '12\"34' and v[2] == 9007199254740993 and v[3]['7'] == 9007199254740995);"
         " assert(v[3]['x\\\\'] == -9007199254740997 and v[4] == 2.5 and v[5][2] == "
         "12345678901234567)");
    RUNS(
        "for _, n in ipairs{math.maxinteger, math.mininteger, (1 << 53) + 1, -(1 << 53) - 1, 0, -1}"
        " do assert(same(rt(n), n), n) end");
}

static void test_containers(void) {
    ENCODES("{}", "{}");
    ENCODES("json.array({})", "[]");
    ENCODES("json.array()", "[]");
    ENCODES("{1, 2, 3}", "[1,2,3]");
    ENCODES("{1, 'a', true, json.null}", "[1,\"a\",true,null]");
    ENCODES("{a = {1, {b = 2}}}", "{\"a\":[1,{\"b\":2}]}");
    ENCODES("{[1.0] = 'x', [2] = 'y'}", "[\"x\",\"y\"]");
    ENCODES("{['a b'] = {}}", "{\"a b\":{}}");
    ENCODES("json.array({1, 2})", "[1,2]");
    ENCODES(
        "setmetatable({}, {__index = function() return 1 end, __len = function() return 3 end})",
        "{}");
    ROUNDTRIP("[]");
    ROUNDTRIP("{}");
    ROUNDTRIP("[[],{},[[]],{\"e\":[]}]");
    ROUNDTRIP("[1,[2,[3,{\"a\":[]}]]]");
    ROUNDTRIP("{\"a\":{\"b\":{\"c\":null}}}");
    ROUNDTRIP("[null,null,{\"k\":[null]}]");
    ROUNDTRIP("{\"1\":true}");
    RUNS("local t = json.decode('[]'); assert(getmetatable(t) ~= nil and #t == 0 and "
         "json.encode(t) == '[]')");
    RUNS("local t = json.decode('{}'); assert(getmetatable(t) == nil and next(t) == nil)");
    RUNS("local t = json.decode('[1,null,3]'); assert(#t == 3 and t[2] == json.null)");
    RUNS("local t = json.decode('{\"1\":true}'); assert(t['1'] == true and t[1] == nil)");
    RUNS("assert(json.decode('{\"a\":1,\"a\":2}').a == 2)");
    RUNS("local v = {name = 'x', list = {1, 2, {deep = {true, false, json.null}}}, empty = "
         "json.array(),"
         " obj = {}, n = -1.25, s = '\\u{e9}', big = math.maxinteger}; assert(same(rt(v), v))");
    RUNS("local v = json.decode('{\"a\":[1,{\"b\":[]}],\"c\":{\"d\":\"e\"},\"f\":null}');"
         " assert(same(json.decode(json.encode(v)), v) and json.encode(v.a[2].b) == '[]')");
    RUNS("local s = json.encode({a = 1, b = 2}); assert(s == '{\"a\":1,\"b\":2}' or s == "
         "'{\"b\":2,\"a\":1}')");
    RUNS("local t = {1}; assert(json.array(t) == t and json.encode(t) == '[1]')");
    RUNS("assert(not pcall(json.array, 5))");
    RUNS("local s = {1}; assert(json.encode({s, s, {x = s}}) == '[[1],[1],{\"x\":[1]}]')");
}

static void test_strings(void) {
    DECODES_STR("\"\\u00e9\"", "\xc3\xa9");
    DECODES_STR("\"\\u20AC\"", "\xe2\x82\xac");
    DECODES_STR("\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80");
    DECODES_STR("\"a\\n\\t\\r\\b\\f\\\"\\\\\\/z\"", "a\n\t\r\b\f\"\\/z");
    DECODES_STR("\"\xc3\xa9\xf0\x9f\x98\x80\"", "\xc3\xa9\xf0\x9f\x98\x80");
    DECODES_STR("\"\\\\u0000\"", "\\u0000"); /* an escaped backslash, not \u0000 */
    DECODES_STR("\"\"", "");
    ENCODES("'\\u{e9}'", "\"\xc3\xa9\"");
    ENCODES("'a\\nb\\1\"\\\\/'", "\"a\\nb\\u0001\\\"\\\\/\"");
    ENCODES("'\\xff\\xfe'", "\"\xff\xfe\""); /* invalid UTF-8 passes through */
    ENCODES("{['\\u{1F600}'] = '\\t'}", "{\"\xf0\x9f\x98\x80\":\"\\t\"}");
    RUNS("local s = 'x\\1\\31\\127y\\u{10FFFF}\\u{e9}'; assert(rt(s) == s)");
    /* \u0000 is a zero byte in a Lua string, and back */
    ENCODES("{a = 'x\\0y'}", "{\"a\":\"x\\u0000y\"}");
    ENCODES("{{['k\\0'] = 1}}", "[{\"k\\u0000\":1}]");
    RUNS("assert(json.decode('\"a\\\\u0000b\"') == 'a\\0b')");
    RUNS("local v = json.decode('[\"ok\", {\"k\\\\u0000\": 1}]'); assert(v[2]['k\\0'] == 1)");
    RUNS("local s = 'x\\0\\0y\\0'; assert(rt(s) == s and rt({[s] = s})[s] == s)");
    ROUNDTRIP("[\"\\u0000\",{\"\\u0000\":\"a\\u0000\"}]");
    DECODE_FAILS("\"\\ud800\"", "invalid JSON at offset 1: unpaired surrogate in a \\u escape "
                                "near '\\ud800\"'");
}

/* Every byte but zero, at every place of a string longer than two words
 * (the encoder looks for bytes to escape eight at a time), as a value and
 * as a key: encoded as cJSON prints it. Counted as one check per place. */
static void test_escapes_anywhere(void) {
    char s[21], want[256], err[128];
    for (int pos = 0; pos < 20; pos++) {
        int same = 1;
        for (int c = 1; c < 256; c++) {
            memset(s, 'a', 20);
            s[20] = '\0';
            s[pos] = (char)c;
            cJSON *j = cJSON_CreateString(s);
            char *quoted = j ? cJSON_PrintUnformatted(j) : NULL;
            snprintf(want, sizeof want, "{%s:1}", quoted ? quoted : "?");
            lua_pushlstring(L, s, 20);
            char *value = chorus_json_encode(L, -1, err, sizeof err);
            lua_createtable(L, 0, 1);
            lua_insert(L, -2);
            lua_pushinteger(L, 1);
            lua_rawset(L, -3);
            char *object = chorus_json_encode(L, -1, err, sizeof err);
            lua_pop(L, 1);
            same &= quoted && value && object && strcmp(value, quoted) == 0 &&
                    strcmp(object, want) == 0;
            free(value);
            free(object);
            cJSON_free(quoted);
            cJSON_Delete(j);
        }
        CHECK(same);
    }
}

static void test_encode_errors(void) {
    char err[1024], small[8];
    int top;
    ENCODE_FAILS("{items = {1, {cb = print}}}", "cannot encode a function at $.items[2].cb");
    ENCODE_FAILS("{x = 0/0}", "cannot encode NaN or infinity at $.x");
    ENCODE_FAILS("{x = math.huge}", "cannot encode NaN or infinity at $.x");
    ENCODE_FAILS("{x = {1, -math.huge}}", "cannot encode NaN or infinity at $.x[2]");
    ENCODE_FAILS("0/0", "cannot encode NaN or infinity at $");
    ENCODE_FAILS("{a = {1, x = 2}}", "table with mixed or non-string keys at $.a");
    ENCODE_FAILS("{a = {[true] = 1}}", "table with mixed or non-string keys at $.a");
    ENCODE_FAILS("{a = {[1.5] = 1}}", "table with mixed or non-string keys at $.a");
    /* string keys met first or not (hash order), the same error and path */
    ENCODE_FAILS("{a = {x = 1, [10] = 2}}", "table with mixed or non-string keys at $.a");
    ENCODE_FAILS("{a = {x = 1, y = 2, [true] = 3}}", "table with mixed or non-string keys at $.a");
    ENCODE_FAILS("{a = {b = {x = {}, [2.5] = 0}}}", "table with mixed or non-string keys at $.a.b");
    ENCODE_FAILS("{a = {[1] = 1, [3] = 3}}", "table with integer keys that are not 1..n at $.a");
    ENCODE_FAILS("{[0] = 'z'}", "table with integer keys that are not 1..n at $");
    ENCODE_FAILS("{{}, {[-1] = 1}}", "table with integer keys that are not 1..n at $[2]");
    ENCODE_FAILS("json.array({x = 1})", "array with string keys at $");
    ENCODE_FAILS("json.array({[2] = 1})", "table with integer keys that are not 1..n at $");
    ENCODE_FAILS("(function() local t = {a = {}}; t.a.b = t; return t end)()", "cycle at $.a.b");
    ENCODE_FAILS("(function() local t = {}; t[1] = t; return t end)()", "cycle at $[1]");
    ENCODE_FAILS("coroutine.create(print)", "cannot encode a thread at $");
    ENCODE_FAILS("{f = io.stdout}", "cannot encode a userdata at $.f");
    ENCODE_FAILS("{['a b'] = {f = print}}", "cannot encode a function at $[\"a b\"].f");
    ENCODE_FAILS("{['q\"\\\\'] = print}", "cannot encode a function at $[\"q\\\"\\\\\"]");
    ENCODE_FAILS("{['1x'] = {print}}", "cannot encode a function at $[\"1x\"][1]");
    ENCODE_FAILS("{_ok9 = {{}, {{x = print}}}}", "cannot encode a function at $._ok9[2][1].x");
    RUNS("local ok, e = pcall(json.encode, {f = print}); assert(not ok and e == 'cannot encode a "
         "function at $.f', e)");
    RUNS("local ok, e = pcall(json.encode, {a = {b = {}}}); assert(ok and e == "
         "'{\"a\":{\"b\":{}}}', e)");

    /* a light userdata that is not json.null; the C API keeps the stack */
    top = lua_gettop(L);
    lua_pushlightuserdata(L, &top);
    CHECK(chorus_json_encode(L, -1, err, sizeof err) == NULL);
    CHECK_STR_EQ(err, "cannot encode a userdata at $");
    CHECK_INT_EQ(lua_gettop(L), top + 1);
    CHECK(chorus_json_encode(L, top + 1, small, sizeof small) == NULL); /* cut, NUL-terminated */
    CHECK_STR_EQ(small, "cannot ");
    CHECK(chorus_json_encode(L, -1, NULL, 0) == NULL);
    lua_pop(L, 1);
}

static void test_decode_errors(void) {
    char *buf;
    char err[256];
    DECODE_FAILS("[1,2,}", "invalid JSON at offset 5: expected a value near '}'");
    DECODE_FAILS("", "invalid JSON at offset 0: unexpected end of input");
    DECODE_FAILS_N(NULL, 0, "invalid JSON at offset 0: unexpected end of input");
    DECODE_FAILS("{\"a\":1} x",
                 "invalid JSON at offset 8: unexpected text after the value near 'x'");
    DECODE_FAILS("{\"a\":1}{}",
                 "invalid JSON at offset 7: unexpected text after the value near '{}'");
    DECODE_FAILS("1-2", "invalid JSON at offset 1: unexpected text after the value near '-2'");
    DECODE_FAILS("{\"a\" 1}", "invalid JSON at offset 5: expected ':' after a key near '1}'");
    DECODE_FAILS("[1, 2", "invalid JSON at offset 5: unexpected end of input");
    DECODE_FAILS(
        "nul",
        "invalid JSON at offset 0: invalid literal (true, false or null expected) near 'nul'");
    DECODE_FAILS("{'a': 1}", "invalid JSON at offset 1: expected a string key near ''a': 1}'");
    DECODE_FAILS("[1, @abcdefghijklmnopqrstuvwxyz]",
                 "invalid JSON at offset 4: expected a value near '@abcdefghijklmno'");
    DECODE_FAILS("[1 \x7f\n]", "invalid JSON at offset 3: expected ',' or ']' near '??]'");
    DECODE_FAILS("[x\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9]",
                 "invalid JSON at offset 1: expected a value near "
                 "'x\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9'");
    DECODE_FAILS_N("[1]\0", 4,
                   "invalid JSON at offset 3: unexpected text after the value near '?'");
    RUNS("local ok, e = pcall(json.decode, '[1,'); assert(not ok and e == 'json.decode: invalid "
         "JSON at offset 3: unexpected end of input', e)");
    RUNS("local ok, e = pcall(json.decode, {}); assert(not ok)");

    /* text is text[0..len): no terminator needed, nothing read past it */
    buf = malloc(5);
    memcpy(buf, "[1,2]", 5);
    CHECK_INT_EQ(chorus_json_decode(L, buf, 5, err, sizeof err), 0);
    CHECK_INT_EQ(lua_rawlen(L, -1), 2);
    lua_pop(L, 1);
    CHECK_INT_EQ(chorus_json_decode(L, buf, 4, err, sizeof err), -1);
    CHECK_INT_EQ(chorus_json_decode(L, buf + 1, 1, err, sizeof err), 0);
    CHECK_INT_EQ(lua_tointeger(L, -1), 1);
    lua_pop(L, 1);
    memcpy(buf, "\"abcd", 5);
    CHECK_INT_EQ(chorus_json_decode(L, buf, 5, err, sizeof err), -1);
    memcpy(buf, "12345", 5);
    CHECK_INT_EQ(chorus_json_decode(L, buf, 5, err, sizeof err), 0);
    CHECK_INT_EQ(lua_tointeger(L, -1), 12345);
    lua_pop(L, 1);
    memcpy(buf, "[\"a\\\\", 5);
    CHECK_INT_EQ(chorus_json_decode(L, buf, 5, err, sizeof err), -1);
    memcpy(buf, "tru", 3);
    CHECK_INT_EQ(chorus_json_decode(L, buf, 3, err, sizeof err), -1);
    free(buf);
    CHECK_INT_EQ(chorus_json_decode(L, "[1]garbage", 3, err, sizeof err), 0);
    lua_pop(L, 1);
}

/* n openers of open, then body, then n closers of close. */
static char *nested_text(int n, const char *open, const char *body, const char *close) {
    size_t lo = strlen(open), lb = strlen(body), lc = strlen(close);
    char *s = malloc((size_t)n * (lo + lc) + lb + 1), *p = s;
    for (int i = 0; i < n; i++, p += lo)
        memcpy(p, open, lo);
    memcpy(p, body, lb);
    p += lb;
    for (int i = 0; i < n; i++, p += lc)
        memcpy(p, close, lc);
    *p = '\0';
    return s;
}

static void test_depth(void) {
    char err[1024], want[1024], *s, *out;
    int n;

    s = nested_text(200, "[", "", "]");
    ROUNDTRIP(s);
    free(s);
    s = nested_text(201, "[", "", "]");
    DECODE_FAILS(s, "nesting deeper than 200 at offset 200");
    free(s);
    s = nested_text(200, "{\"a\":", "1", "}");
    ROUNDTRIP(s);
    free(s);
    s = nested_text(201, "{\"a\":", "1", "}");
    DECODE_FAILS(s, "nesting deeper than 200 at offset 1000");
    free(s);
    s = nested_text(100000, "[", "", "");
    DECODE_FAILS(s, "nesting deeper than 200 at offset 200");
    free(s);
    s = nested_text(
        1, "[\"",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        "\"]");
    ROUNDTRIP(s); /* brackets inside strings do not nest */
    free(s);

    out = encode_expr("nest(200)", err, sizeof err);
    s = nested_text(200, "[", "", "]");
    s[199] = '{', s[200] = '}'; /* the innermost table is empty: an object */
    CHECK_STR_EQ(out ? out : err, s);
    free(s);
    free(out);
    n = snprintf(want, sizeof want, "nesting deeper than 200 at $");
    for (int i = 0; i < 200; i++)
        n += snprintf(want + n, sizeof want - (size_t)n, "[1]");
    ENCODE_FAILS("nest(201)", want);
    ENCODE_FAILS("nest(100000)", want);
    RUNS("local ok, e = pcall(json.encode, {a = nest(300)}); assert(not ok and e:find('^nesting "
         "deeper"
         " than 200 at %$%.a%[1%]'), e)");
}

static void test_without_open(void) {
    lua_State *s = luaL_newstate();
    char err[256];
    char *out;
    CHECK_INT_EQ(chorus_json_decode(s, "[[],{}]", 7, err, sizeof err), 0);
    out = chorus_json_encode(s, 1, err, sizeof err);
    CHECK_STR_EQ(out ? out : err, "[[],{}]");
    free(out);
    CHECK_INT_EQ(lua_gettop(s), 1);
    lua_close(s);
}

/* An allocator that fails once its budget of growing allocations is spent. */
struct budget {
    int armed;
    long left;
};

static void *budget_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    struct budget *b = ud;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    if (b->armed && (ptr == NULL || nsize > osize) && b->left-- <= 0)
        return NULL;
    return realloc(ptr, nsize);
}

static const char *oom_doc = "{\"items\":[1,2.5,\"three\",{\"four\":[null,true,false]},[[[["
                             "\"deep\"]]]]],\"n\":9007199254740993,"
                             "\"s\":\"\\u00e9\\ud83d\\ude00\",\"o\":{\"a\":{\"b\":{\"c\":[]}}}}";

/* Every allocation of decode, encode and json.encode fails in turn: each
 * call either succeeds or says "not enough memory", and nothing leaks. */
static void test_out_of_memory(void) {
    struct budget b = {0, 0};
    lua_State *s = lua_newstate(budget_alloc, &b);
    int decoded = 0, encoded = 0, lua_encoded = 0, sane = 1;
    char err[256];
    luaL_openlibs(s);
    chorus_json_open(s);
    lua_setglobal(s, "json");
    for (long k = 0; k < 100000 && !(decoded && encoded && lua_encoded); k++) {
        int top = lua_gettop(s);
        b.armed = 1;
        b.left = k;
        if (!decoded) {
            decoded = chorus_json_decode(s, oom_doc, strlen(oom_doc), err, sizeof err) == 0;
            if (decoded)
                lua_setglobal(s, "doc");
        } else if (!encoded) {
            char *out;
            lua_getglobal(s, "doc");
            out = chorus_json_encode(s, -1, err, sizeof err);
            encoded = out != NULL;
            free(out);
            lua_pop(s, 1);
        } else {
            lua_encoded = luaL_dostring(s, "return json.encode(doc)") == LUA_OK;
            lua_settop(s, top);
            err[0] = '\0';
            if (!lua_encoded)
                strcpy(err, "not enough memory");
        }
        b.armed = 0;
        if (!(decoded && encoded && lua_encoded) && strcmp(err, "not enough memory") != 0) {
            fprintf(stderr, "    at budget %ld: %s\n", k, err);
            sane = 0;
        }
        if (lua_gettop(s) != top)
            sane = 0;
    }
    CHECK(decoded && encoded && lua_encoded);
    CHECK(sane);
    lua_close(s);
}

/* An allocator that counts the bytes it holds and their peak. */
struct counter {
    size_t now, peak;
};

static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    struct counter *c = ud;
    size_t old = ptr != NULL ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        c->now -= old;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (p != NULL) {
        c->now += nsize - old;
        if (c->now > c->peak)
            c->peak = c->now;
    }
    return p;
}

/* cJSON's tree is allocated with the state's allocator (so a run's memory
 * cap covers it) and all given back: decoding [1,1,...] of 10,000 numbers
 * peaks at least a 64-byte node per number above the Lua array (16 bytes
 * a slot), and ends where it started once the value is collected. */
static void test_tree_allocator(void) {
    struct counter c = {0, 0};
    lua_State *s = lua_newstate(counting_alloc, &c);
    enum { N = 10000 };
    char *text = malloc(2 * N + 2), err[256];
    size_t before;
    text[0] = '[';
    for (int i = 0; i < N; i++)
        memcpy(text + 1 + 2 * i, i + 1 < N ? "1," : "1]", 2);
    lua_gc(s, LUA_GCCOLLECT);
    before = c.now;
    c.peak = c.now;
    CHECK_INT_EQ(chorus_json_decode(s, text, 2 * N + 1, err, sizeof err), 0);
    CHECK_INT_EQ(lua_rawlen(s, -1), N);
    CHECK(c.peak - before > (size_t)N * (64 + 16));
    lua_pop(s, 1);
    lua_gc(s, LUA_GCCOLLECT);
    lua_gc(s, LUA_GCCOLLECT);
    CHECK(c.now <= before + 1024); /* the array metatable, made on first use */
    free(text);
    lua_close(s);
    CHECK_INT_EQ(c.now, 0);
}

/* 10k decode/encode cycles, failing ones included, keep Lua memory flat;
 * valgrind checks the C side. */
static void test_no_leak(void) {
    const char *doc =
        "{\"a\":[1,2,{\"b\":[true,false,null,\"x\xc3\xa9\"]},[]],\"big\":9223372036854775807}";
    const char *bad = "{\"a\":[1,2,{\"b\":[true,false,null,\"x\\u00e9\"]},[]],\"big\":}";
    char err[256];
    int top = lua_gettop(L), failures = 0;
    int kb0, kb1;
    lua_gc(L, LUA_GCCOLLECT);
    kb0 = lua_gc(L, LUA_GCCOUNT);
    for (int i = 0; i < 10000; i++) {
        char *out;
        if (chorus_json_decode(L, doc, strlen(doc), err, sizeof err) != 0) {
            failures++;
            continue;
        }
        out = chorus_json_encode(L, -1, err, sizeof err);
        if (out == NULL || strlen(out) != strlen(doc))
            failures++;
        free(out);
        lua_pop(L, 1);
        if (chorus_json_decode(L, bad, strlen(bad), err, sizeof err) != -1)
            failures++;
        if (!lua_ok(
                "local t = {ok = {1, 2}, bad = {f = print}}; assert(not pcall(json.encode, t))"))
            failures++;
    }
    lua_gc(L, LUA_GCCOLLECT);
    kb1 = lua_gc(L, LUA_GCCOUNT);
    CHECK_INT_EQ(failures, 0);
    CHECK_INT_EQ(lua_gettop(L), top);
    CHECK(kb1 - kb0 < 16);
}

int main(void) {
    L = new_state();
    test_scalars();
    test_integers();
    test_containers();
    test_strings();
    test_escapes_anywhere();
    test_encode_errors();
    test_decode_errors();
    test_depth();
    test_without_open();
    test_out_of_memory();
    test_tree_allocator();
    test_no_leak();
    lua_close(L);
    return unit_summary();
}
