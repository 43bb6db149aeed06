/* fuzz_json.c — libFuzzer target for the JSON ⇄ Lua bridge (runtime/lua_json.c).
 *
 * Every request body, stored record and journal entry of chorus goes through
 * chorus_json_decode, and every response and record through
 * chorus_json_encode; both are hand-written C around cJSON (a strict RFC 8259
 * scan before cJSON, a string and number cursor beside cJSON's tree, cJSON
 * hooks through the Lua allocator, error paths with truncated messages), so
 * memory errors there would be reachable from the network. Any text the
 * scan passes but cJSON refuses shows up as an undocumented error.
 *
 * Two modes, chosen by the first byte:
 *   - JSON text (anything not starting with 0xFF): decode it with the C API
 *     (the error buffer is exactly as long as the input asks, to catch a
 *     write past errlen); if that succeeds, encode the value, decode that
 *     text again and check the round trip: the second decode succeeds, the
 *     two Lua values are equal (types, integer/float subtypes, the array
 *     metatable), re-encoding gives a text of the same length (key order is
 *     Lua's traversal order, so only the length is comparable), the encoded
 *     text has no whitespace outside strings, and the stack is balanced;
 *   - 0xFF then a small program that builds an arbitrary Lua value (floats
 *     from raw bits, strings with NUL bytes, tables with mixed keys, the
 *     array metatable, cycles, functions, userdata) to reach every encode
 *     error path; whatever encode accepts must decode and round-trip too.
 * Error messages must start as lua_json.h documents.
 *
 * Known bug skipped unless CHORUS_FUZZ_STRICT=1 (see fuzz_lua.h; input in
 * tests/fuzz/crashes/fuzz_json/below-int64-min.json): an integer literal
 * just below -2^63 (-9223372036854775809) decodes to the float -2^63 (as
 * lua_json.h and test_lua_json.c want), which encodes as
 * "-9.223372036854776e+18", which decodes to the integer -2^63: the encoding
 * of decode(x) is not a fixed point. (The other input there, 1e400, decoded
 * to an infinite float that encode refused; since e9b22df it is a decode
 * error, "number 1e400 is out of range", and checked like any other.)
 */
#include <math.h>
#include <stdint.h>

#include "fuzz_lua.h"
#include "lua_json.h"

#define TARGET "fuzz_json"
#define ERRLEN 512
#define MAX_SLOTS 48

static lua_State *L;
static unsigned long inputs;

/* same(a, b): deep equality of decoded values, subtypes and array
 * metatables included. */
static const char helpers[] =
    "function same(a, b)\n"
    "  if type(a) ~= type(b) then return false end\n"
    "  if type(a) == 'number' then return math.type(a) == math.type(b) and a == b end\n"
    "  if type(a) ~= 'table' then return a == b end\n"
    "  if getmetatable(a) ~= getmetatable(b) then return false end\n"
    "  for k, v in pairs(a) do if not same(v, b[k]) then return false end end\n"
    "  for k in pairs(b) do if a[k] == nil then return false end end\n"
    "  return true\n"
    "end\n"
    "-- same, but the float -2^63 equals the integer -2^63 (the known bug)\n"
    "function same_known(a, b)\n"
    "  if type(a) == 'number' and type(b) == 'number' and a == math.mininteger\n"
    "     and b == math.mininteger then return true end\n"
    "  if type(a) ~= 'table' or type(b) ~= 'table' then return same(a, b) end\n"
    "  if getmetatable(a) ~= getmetatable(b) then return false end\n"
    "  for k, v in pairs(a) do if not same_known(v, b[k]) then return false end end\n"
    "  for k in pairs(b) do if a[k] == nil then return false end end\n"
    "  return true\n"
    "end\n";

static const char *const decode_errors[] = {
    "invalid JSON at offset ",
    "nesting deeper than 200 at offset ",
    "not enough memory",
    "stack overflow",
    "number ", /* "number 1e400 is out of range" */
    NULL,
};

static const char *const encode_errors[] = {
    "cannot encode a ",
    "cannot encode NaN or infinity at ",
    "table with mixed or non-string keys at ",
    "table with integer keys that are not 1..n at ",
    "array with string keys at ",
    "cycle at ",
    "nesting deeper than 200 at ",
    "not enough memory",
    "stack overflow",
    NULL,
};

static void new_state(void) {
    if (L != NULL)
        lua_close(L);
    L = luaL_newstate();
    if (L == NULL)
        fuzz_fail(TARGET, "cannot create a Lua state");
    luaL_openlibs(L);
    chorus_json_open(L);
    lua_setglobal(L, "json");
    fuzz_setup(L, TARGET, helpers);
}

/* err (errlen bytes) must be NUL-terminated and start like one of the
 * documented messages (as far as errlen let it). */
static void check_error(const char *err, size_t errlen, const char *const *known,
                        const char *what) {
    size_t n = strnlen(err, errlen);
    char msg[ERRLEN + 64];
    if (n == errlen)
        fuzz_fail(TARGET, "error message not NUL-terminated within errlen");
    for (const char *const *k = known; *k; k++) {
        size_t m = strlen(*k);
        if (strncmp(err, *k, n < m ? n : m) == 0)
            return;
    }
    snprintf(msg, sizeof msg, "undocumented %s error: %s", what, err);
    fuzz_fail(TARGET, msg);
}

static void check_top(int want, const char *where) {
    char msg[128];
    if (lua_gettop(L) != want) {
        snprintf(msg, sizeof msg, "Lua stack unbalanced after %s: %d, expected %d", where,
                 lua_gettop(L), want);
        fuzz_fail(TARGET, msg);
    }
}

/* Calls the Lua helper fn on the values at a and b (or a alone). */
static int helper(const char *fn, int a, int b) {
    int r;
    lua_getglobal(L, fn);
    lua_pushvalue(L, a);
    if (b != 0)
        lua_pushvalue(L, b);
    if (lua_pcall(L, b != 0 ? 2 : 1, 1, 0) != LUA_OK)
        fuzz_fail(TARGET, lua_tostring(L, -1));
    r = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return r;
}

/* No whitespace outside strings: the encoding is compact. */
static void check_compact(const char *s) {
    int in_string = 0;
    for (; *s; s++) {
        if (in_string) {
            if (*s == '\\' && s[1] != '\0')
                s++;
            else if (*s == '"')
                in_string = 0;
        } else if (*s == '"') {
            in_string = 1;
        } else if (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') {
            fuzz_fail(TARGET, "encoded JSON has whitespace outside strings");
        }
    }
}

/* The value at the top is one encode accepted as text e1: it must decode,
 * equal its decoding once normalised, and re-encode to the same length.
 * Pops nothing. */
static void round_trip(const char *e1) {
    char err[ERRLEN];
    int top = lua_gettop(L);
    char *e2, *e3;
    check_compact(e1);
    if (chorus_json_decode(L, e1, strlen(e1), err, sizeof err) != 0) {
        char msg[ERRLEN + 128];
        snprintf(msg, sizeof msg, "decode(encode(v)) failed: %s; text %.200s", err, e1);
        fuzz_fail(TARGET, msg);
    }
    e2 = chorus_json_encode(L, -1, err, sizeof err);
    if (e2 == NULL)
        fuzz_fail(TARGET, "encode(decode(encode(v))) failed");
    if (chorus_json_decode(L, e2, strlen(e2), err, sizeof err) != 0)
        fuzz_fail(TARGET, "decode(encode(decode(encode(v)))) failed");
    if (!helper("same", top + 1, top + 2))
        fuzz_fail(TARGET, "decode(encode(x)) differs from x");
    e3 = chorus_json_encode(L, -1, err, sizeof err);
    if (e3 == NULL || strlen(e3) != strlen(e2))
        fuzz_fail(TARGET, "re-encoding an equal value changed the text's length");
    free(e2);
    free(e3);
    lua_settop(L, top);
}

static void fuzz_text(const uint8_t *data, size_t size) {
    int top = lua_gettop(L);
    size_t errlen = 1 + size % 80; /* short buffers test the truncation */
    char *err = malloc(errlen), big[ERRLEN];
    char *e1;
    if (err == NULL)
        return;
    if (chorus_json_decode(L, (const char *)data, size, err, errlen) != 0) {
        check_top(top, "a failed decode");
        check_error(err, errlen, decode_errors, "decode");
        free(err);
        return;
    }
    free(err);
    check_top(top + 1, "a decode");
    e1 = chorus_json_encode(L, -1, big, sizeof big);
    check_top(top + 1, "an encode");
    if (e1 == NULL) {
        char msg[ERRLEN + 64];
        snprintf(msg, sizeof msg, "encode(decode(x)) failed: %s", big);
        fuzz_fail(TARGET, msg);
    }
    round_trip(e1);
    /* the value decode gave and the one its encoding gives are equal */
    if (chorus_json_decode(L, e1, strlen(e1), big, sizeof big) != 0 ||
        !helper(fuzz_strict() ? "same" : "same_known", top + 1, top + 2))
        fuzz_fail(TARGET, "decode(encode(decode(x))) differs from decode(x)");
    free(e1);
    lua_settop(L, top);
}

/* ---- the value builder ---------------------------------------------------- */

struct reader {
    const uint8_t *p, *end;
};

static int next_byte(struct reader *r) { return r->p < r->end ? *r->p++ : -1; }

static uint64_t next_u64(struct reader *r) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | (uint64_t)(r->p < r->end ? *r->p++ : 0);
    return v;
}

static int is_bad_key(int idx) {
    if (lua_isnil(L, idx))
        return 1;
    if (lua_type(L, idx) == LUA_TNUMBER && !lua_isinteger(L, idx)) {
        lua_Number x = lua_tonumber(L, idx);
        return isnan(x);
    }
    return 0;
}

static int dummy_function(lua_State *s) {
    (void)s;
    return 0;
}

/* Builds values on the stack from the program in r; returns how many. */
static int build(struct reader *r) {
    static int light;
    int base = lua_gettop(L), op;
    lua_checkstack(L, MAX_SLOTS + 8);
    while ((op = next_byte(r)) >= 0) {
        int n = lua_gettop(L) - base;
        if (n >= MAX_SLOTS)
            break;
        switch (op % 14) {
        case 0:
            lua_pushinteger(L, (lua_Integer)next_u64(r));
            break;
        case 1: {
            uint64_t bits = next_u64(r);
            double x;
            memcpy(&x, &bits, sizeof x);
            lua_pushnumber(L, x);
            break;
        }
        case 2: {
            int len = next_byte(r);
            size_t avail = (size_t)(r->end - r->p);
            size_t k = len < 0 ? 0 : (size_t)len < avail ? (size_t)len : avail;
            lua_pushlstring(L, (const char *)r->p, k);
            r->p += k;
            break;
        }
        case 3:
            lua_newtable(L);
            break;
        case 4: /* t[k] = v, t k v on top; pops k and v */
            if (n >= 3 && lua_istable(L, -3) && !is_bad_key(-2))
                lua_rawset(L, -3);
            break;
        case 5:
            if (n >= 1 && lua_istable(L, -1)) {
                luaL_getmetatable(L, CHORUS_JSON_ARRAY_MT);
                lua_setmetatable(L, -2);
            }
            break;
        case 6:
            lua_getglobal(L, "json");
            lua_getfield(L, -1, "null");
            lua_remove(L, -2);
            break;
        case 7:
            lua_pushboolean(L, next_byte(r) & 1);
            break;
        case 8:
            lua_pushnil(L);
            break;
        case 9: /* a copy of an earlier slot: shared tables and cycles */
            if (n >= 1) {
                int b = next_byte(r);
                lua_pushvalue(L, base + 1 + (b < 0 ? 0 : b) % n);
            }
            break;
        case 10: /* t[#t + 1] = v, t v on top; pops v */
            if (n >= 2 && lua_istable(L, -2))
                lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
            break;
        case 11:
            lua_pushcfunction(L, dummy_function);
            break;
        case 12:
            lua_pushlightuserdata(L, &light);
            break;
        case 13:
            if (n >= 1)
                lua_pop(L, 1);
            break;
        }
    }
    return lua_gettop(L) - base;
}

static void fuzz_builder(const uint8_t *data, size_t size) {
    struct reader r = {data, data + size};
    int top = lua_gettop(L), n;
    size_t errlen;
    char *err, *e1;
    if (size < 1)
        return;
    errlen = 1 + data[0] % 200;
    r.p++;
    n = build(&r);
    if (n == 0) {
        lua_settop(L, top);
        return;
    }
    err = malloc(errlen);
    if (err == NULL) {
        lua_settop(L, top);
        return;
    }
    e1 = chorus_json_encode(L, top + 1, err, errlen);
    check_top(top + n, "an encode");
    if (e1 == NULL) {
        check_error(err, errlen, encode_errors, "encode");
    } else {
        lua_pushvalue(L, top + 1);
        round_trip(e1);
        free(e1);
    }
    free(err);
    /* the Lua-level json.encode on the same value: an error or a string */
    lua_getglobal(L, "json");
    lua_getfield(L, -1, "encode");
    lua_pushvalue(L, top + 1);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) != LUA_TSTRING)
        fuzz_fail(TARGET, "json.encode returned something other than a string");
    lua_settop(L, top);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* a fresh state now and then, a full collection more often: memory
     * stays flat however long the fuzzer runs */
    if (L == NULL || inputs % 100000 == 0)
        new_state();
    if (++inputs % 1000 == 0)
        lua_gc(L, LUA_GCCOLLECT, 0);
    if (size > 0 && data[0] == 0xFF)
        fuzz_builder(data + 1, size - 1);
    else
        fuzz_text(data, size);
    check_top(0, "an input");
    return 0;
}
