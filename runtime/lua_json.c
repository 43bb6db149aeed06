/* lua_json.c — JSON ⇄ Lua values on cJSON (contract in lua_json.h).
 *
 * Invariant: any Lua call may raise (out of memory, stack overflow, our own
 * encode errors), so all Lua work runs inside lua_pcall, and every cJSON node
 * is reachable from a root owned by the C caller of that pcall: a node is
 * linked into its parent before anything that can raise, and the caller frees
 * the whole tree after the pcall, whatever its outcome.
 *
 * Decoding takes three passes over the text:
 *   1. strict_scan checks it against RFC 8259's grammar and the depth limit,
 *      naming the byte offset of the first fault. cJSON alone is lenient
 *      (leading zeros, "2.", raw control characters in strings, \u escapes
 *      with bad hex digits read as \u0000, form feeds as whitespace, bytes
 *      after a NUL ignored), so nothing it would mishandle reaches it;
 *   2. cJSON parses the checked text into its tree, which it allocates
 *      through the Lua state's allocator (json_malloc below), so the tree
 *      counts against the current run's memory cap like the Lua heap does;
 *   3. the tree is walked into Lua values. cJSON reads every number as a
 *      double and keeps strings NUL-terminated (it would cut "a\u0000b"), so
 *      numbers and strings are read from the text itself: they appear in the
 *      tree's pre-order in the same order as in the text, and a cursor that
 *      skips everything else (whitespace, punctuation, true/false/null, none
 *      of which holds a quote, digit or '-') finds each one's literal.
 */
#include "lua_json.h"
#include "lua_charged.h"
#include "scheduler.h"

#include <cJSON.h>
#include <errno.h>
#include <lauxlib.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NEAR_LEN 16

/* Its address is json.null; it is never written. */
static const char null_sentinel = 0;
#define NULL_SENTINEL ((void *)&null_sentinel)

static int set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Copies the error object of a failed pcall into err and pops it. */
static void take_error(lua_State *L, char *err, size_t errlen) {
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "unknown error";
    set_err(err, errlen, "%s", msg);
    lua_pop(L, 1);
}

/* Pushes the array metatable, creating it on first use in this state. */
static void push_array_mt(lua_State *L) { luaL_newmetatable(L, CHORUS_JSON_ARRAY_MT); }

/* ---- cJSON's allocations ------------------------------------------------
 *
 * cJSON's tree is about 40 times the size of its text (a node is 64 bytes,
 * "1," is two), so with plain malloc a run could hold far more than its
 * memory cap while decoding. cJSON's hooks are process-wide and chorus uses
 * cJSON nowhere else: while a decode parses or frees its tree, the hooks
 * allocate through that Lua state's allocator (chorus_alloc in a runtime,
 * which charges the current run and refuses past its cap, marking the run
 * killed for memory as for any Lua allocation). A header keeps each block's
 * size, which lua_Alloc needs to free it. Outside a decode (nobody, today)
 * the hooks fall back to malloc. */

struct json_alloc {
    lua_Alloc f;
    void *ud;
    int failed; /* an allocation was refused: cJSON's NULL means memory */
};

static _Thread_local struct json_alloc *json_alloc_current;

#define HOOK_HEADER sizeof(max_align_t)

static void *json_malloc(size_t n) {
    struct json_alloc *a = json_alloc_current;
    char *p;
    if (n > SIZE_MAX - HOOK_HEADER)
        return NULL;
    n += HOOK_HEADER;
    p = a != NULL ? a->f(a->ud, NULL, 0, n) : malloc(n);
    if (p == NULL) {
        if (a != NULL)
            a->failed = 1;
        return NULL;
    }
    memcpy(p, &n, sizeof n);
    return p + HOOK_HEADER;
}

static void json_free(void *ptr) {
    struct json_alloc *a = json_alloc_current;
    char *p = ptr;
    size_t n;
    if (p == NULL)
        return;
    p -= HOOK_HEADER;
    memcpy(&n, p, sizeof n);
    if (a != NULL)
        a->f(a->ud, p, n, 0);
    else
        free(p);
}

static void install_hooks(void) {
    cJSON_Hooks hooks = {json_malloc, json_free};
    cJSON_InitHooks(&hooks);
}

/* ---- the strict scan ----------------------------------------------------- */

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static const char *skip_space(const char *p, const char *end) {
    while (p < end && is_space(*p))
        p++;
    return p;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The byte the escape \c stands for, or 0 when \c is not one of JSON's
 * one-letter escapes (\u is not one either). */
static char simple_escape(char c) {
    switch (c) {
    case '"':
    case '\\':
    case '/':
        return c;
    case 'b':
        return '\b';
    case 'f':
        return '\f';
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 't':
        return '\t';
    default:
        return 0;
    }
}

/* The code unit of the escape \uXXXX at p (p[0] is the backslash), or -1
 * when the four hex digits are not there. */
static long hex4(const char *p, const char *end) {
    long v = 0;
    if (end - p < 6 || p[0] != '\\' || p[1] != 'u')
        return -1;
    for (int i = 2; i < 6; i++) {
        int h = hex_digit(p[i]);
        if (h < 0)
            return -1;
        v = v << 4 | h;
    }
    return v;
}

static int is_high_surrogate(long u) { return u >= 0xD800 && u <= 0xDBFF; }
static int is_low_surrogate(long u) { return u >= 0xDC00 && u <= 0xDFFF; }

/* Each scan_* checks one token starting at *pp. On success it returns NULL
 * with *pp just past the token; on a fault, what is wrong, with *pp at the
 * offending byte (end for a token cut short). */

/* Bytes from 0x80 up are taken as they are: Lua strings are bytes, and the
 * encoder writes them back unchanged (lua_json.h). */
static const char *scan_string(const char **pp, const char *end) {
    const char *p = *pp + 1;
    const char *why = NULL;
    for (;;) {
        if (p == end) {
            why = "unexpected end of input in a string";
            break;
        }
        if (*p == '"') {
            p++;
            break;
        }
        if ((unsigned char)*p < 0x20) {
            why = "control character in a string (it must be escaped)";
            break;
        }
        if (*p != '\\') {
            p++;
            continue;
        }
        if (end - p < 2) {
            p = end;
            why = "unexpected end of input in a string";
            break;
        }
        if (p[1] != 'u') {
            if (simple_escape(p[1]) == 0) {
                why = "invalid escape in a string";
                break;
            }
            p += 2;
            continue;
        }
        long u = hex4(p, end);
        if (u < 0) {
            why = "invalid \\u escape (four hex digits expected)";
            break;
        }
        if (is_low_surrogate(u)) {
            why = "unpaired surrogate in a \\u escape";
            break;
        }
        if (!is_high_surrogate(u)) {
            p += 6;
            continue;
        }
        if (end - p >= 8 && p[6] == '\\' && p[7] == 'u' && hex4(p + 6, end) < 0) {
            p += 6;
            why = "invalid \\u escape (four hex digits expected)";
            break;
        }
        if (!is_low_surrogate(hex4(p + 6, end))) {
            why = "unpaired surrogate in a \\u escape";
            break;
        }
        p += 12;
    }
    *pp = p;
    return why;
}

static const char *scan_digits(const char **pp, const char *end, const char *why) {
    const char *p = *pp;
    if (p == end || !is_digit(*p))
        return why;
    while (p < end && is_digit(*p))
        p++;
    *pp = p;
    return NULL;
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static const char *scan_number(const char **pp, const char *end) {
    const char *why;
    if (**pp == '-')
        (*pp)++;
    if (*pp < end && **pp == '0') {
        if (*pp + 1 < end && is_digit((*pp)[1]))
            return "leading zero in a number";
        (*pp)++;
    } else if ((why = scan_digits(pp, end, "digit expected after '-'")) != NULL) {
        return why;
    }
    if (*pp < end && **pp == '.') {
        (*pp)++;
        if ((why = scan_digits(pp, end, "digit expected after the decimal point")) != NULL)
            return why;
    }
    if (*pp < end && (**pp == 'e' || **pp == 'E')) {
        (*pp)++;
        if (*pp < end && (**pp == '+' || **pp == '-'))
            (*pp)++;
        if ((why = scan_digits(pp, end, "digit expected in the exponent")) != NULL)
            return why;
    }
    return NULL;
}

static const char *scan_word(const char **pp, const char *end, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(end - *pp) < n || memcmp(*pp, word, n) != 0)
        return "invalid literal (true, false or null expected)";
    *pp += n;
    return NULL;
}

/* "invalid JSON at offset N: WHY near 'TEXT'", TEXT the bytes from N
 * (control bytes shown as '?'); at the end of the text, no TEXT. */
static int syntax_error(const char *text, size_t len, size_t off, const char *why, char *err,
                        size_t errlen) {
    char near[NEAR_LEN + 1];
    size_t n;
    if (off >= len)
        return set_err(err, errlen, "invalid JSON at offset %zu: %s", len, why);
    n = len - off;
    if (n > NEAR_LEN) { /* do not cut a UTF-8 sequence */
        n = NEAR_LEN;
        while (n > 1 && ((unsigned char)text[off + n] & 0xC0) == 0x80)
            n--;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)text[off + i];
        near[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    near[n] = '\0';
    return set_err(err, errlen, "invalid JSON at offset %zu: %s near '%s'", off, why, near);
}

enum scan_state { WANT_VALUE, WANT_KEY, AFTER_VALUE };

/* Checks that text[0..len) is one RFC 8259 JSON text: a value with only
 * space, \t, \n and \r around it, nesting at most CHORUS_JSON_MAX_DEPTH. */
static int strict_scan(const char *text, size_t len, char *err, size_t errlen) {
    const char *p = text, *end = text + len, *why = NULL;
    char open[CHORUS_JSON_MAX_DEPTH]; /* the '[' or '{' of each enclosing container */
    int depth = 0;
    enum scan_state state = WANT_VALUE;
    while (why == NULL) {
        p = skip_space(p, end);
        if (state == AFTER_VALUE && depth == 0) {
            if (p == end)
                return 0;
            why = "unexpected text after the value";
            break;
        }
        if (p == end) {
            why = "unexpected end of input";
            break;
        }
        if (state == WANT_KEY) {
            if (*p != '"') {
                why = "expected a string key";
            } else if ((why = scan_string(&p, end)) == NULL) {
                p = skip_space(p, end);
                if (p == end)
                    why = "unexpected end of input";
                else if (*p != ':')
                    why = "expected ':' after a key";
                else
                    p++, state = WANT_VALUE;
            }
            continue;
        }
        if (state == AFTER_VALUE) {
            char close = open[depth - 1] == '[' ? ']' : '}';
            if (*p == close) {
                p++, depth--;
            } else if (*p == ',') {
                p++, state = open[depth - 1] == '[' ? WANT_VALUE : WANT_KEY;
            } else {
                why = close == ']' ? "expected ',' or ']'" : "expected ',' or '}'";
            }
            continue;
        }
        switch (*p) { /* WANT_VALUE */
        case '[':
        case '{':
            if (depth == CHORUS_JSON_MAX_DEPTH)
                return set_err(err, errlen, "nesting deeper than %d at offset %zu",
                               CHORUS_JSON_MAX_DEPTH, (size_t)(p - text));
            open[depth++] = *p;
            p = skip_space(p + 1, end);
            if (p < end && *p == (open[depth - 1] == '[' ? ']' : '}'))
                p++, depth--, state = AFTER_VALUE;
            else
                state = open[depth - 1] == '[' ? WANT_VALUE : WANT_KEY;
            continue;
        case '"':
            why = scan_string(&p, end);
            break;
        case 't':
            why = scan_word(&p, end, "true");
            break;
        case 'f':
            why = scan_word(&p, end, "false");
            break;
        case 'n':
            why = scan_word(&p, end, "null");
            break;
        default:
            if (*p == '-' || is_digit(*p))
                why = scan_number(&p, end);
            else
                why = "expected a value";
        }
        state = AFTER_VALUE;
    }
    return syntax_error(text, len, (size_t)(p - text), why, err, errlen);
}

/* ---- the tree into Lua values ------------------------------------------- */

struct dec {
    const cJSON *root;
    const char *cur, *end; /* the literal cursor over the checked text */
    int arraymt;           /* stack index of the array metatable */
};

/* Moves the cursor to the next string (quote) or number literal. The text
 * was checked and the tree is its parse, so the literal is there; were it
 * not, that would be a bug here, and the decode fails rather than guess. */
static const char *next_literal(lua_State *L, struct dec *d, int quote) {
    const char *p = d->cur;
    while (p < d->end && *p != '"' && *p != '-' && !is_digit(*p))
        p++;
    if (p == d->end || (*p == '"') != quote)
        luaL_error(L, "internal error: the literal cursor lost its place");
    return p;
}

/* Writes code point cp (at most 0x10FFFF) as UTF-8; returns the length. */
static int utf8_put(char *out, unsigned long cp) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Pushes the next string literal of the text, its escapes decoded (\u0000
 * gives a zero byte). The scan checked every escape and surrogate pair. */
static void dec_string(lua_State *L, struct dec *d) {
    const char *p = next_literal(L, d, 1) + 1, *run = p;
    luaL_Buffer b;
    while (p < d->end && *p != '"' && *p != '\\')
        p++;
    if (p == d->end || *p == '"') { /* no escape: the common case */
        lua_pushlstring(L, run, (size_t)(p - run));
        d->cur = p < d->end ? p + 1 : p;
        return;
    }
    luaL_buffinit(L, &b);
    while (p < d->end && *p != '"') {
        char utf8[4];
        if (*p != '\\') {
            p++;
            continue;
        }
        luaL_addlstring(&b, run, (size_t)(p - run));
        if (p[1] == 'u') {
            unsigned long cp = (unsigned long)hex4(p, d->end);
            p += 6;
            if (is_high_surrogate((long)cp)) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + ((unsigned long)hex4(p, d->end) - 0xDC00);
                p += 6;
            }
            luaL_addlstring(&b, utf8, (size_t)utf8_put(utf8, cp));
        } else {
            luaL_addchar(&b, simple_escape(p[1]));
            p += 2;
        }
        run = p;
    }
    luaL_addlstring(&b, run, (size_t)(p - run));
    luaL_pushresult(&b);
    d->cur = p < d->end ? p + 1 : p;
}

/* The literal of the next number in the text; its length. */
static size_t next_number(lua_State *L, struct dec *d, const char **tok) {
    const char *p = next_literal(L, d, 0);
    *tok = p;
    while (p < d->end &&
           (is_digit(*p) || *p == '-' || *p == '+' || *p == '.' || *p == 'e' || *p == 'E'))
        p++;
    d->cur = p;
    return (size_t)(p - *tok);
}

/* Reads tok[0..n), the literal of cJSON's reading x. Returns 1 with *out set
 * when it is a plain integer literal within int64, -1 when it is one beyond
 * int64 (a float, even if x is integral), 0 when it is not one. A literal
 * that disagrees with x would be a cursor bug; then it is ignored. */
static int exact_integer(const char *tok, size_t n, double x, lua_Integer *out) {
    char buf[32], *endp;
    long long v;
    if (n == 0 || n >= sizeof buf)
        return 0;
    memcpy(buf, tok, n);
    buf[n] = '\0';
    if (strpbrk(buf, ".eE+") != NULL)
        return 0;
    errno = 0;
    v = strtoll(buf, &endp, 10);
    if (*endp != '\0' || (double)v != x)
        return 0;
    if (errno == ERANGE)
        return -1;
    *out = (lua_Integer)v;
    return 1;
}

static void dec_number(lua_State *L, struct dec *d, const cJSON *item) {
    double x = item->valuedouble;
    const char *tok;
    size_t n = next_number(L, d, &tok);
    lua_Integer i;
    /* 1e400 reads as infinity, which no JSON text can carry back out: a
     * value decoded here must encode again (run records, the journal). */
    if (!isfinite(x)) {
        char lit[41];
        size_t k = n < sizeof lit - 1 ? n : sizeof lit - 1;
        memcpy(lit, tok, k);
        lit[k] = '\0';
        luaL_error(L, "number %s is out of range", lit);
    }
    switch (exact_integer(tok, n, x, &i)) {
    case 1:
        lua_pushinteger(L, i);
        return;
    case -1:
        lua_pushnumber(L, x);
        return;
    }
    if (x == floor(x) && lua_numbertointeger(x, &i))
        lua_pushinteger(L, i);
    else
        lua_pushnumber(L, x);
}

static void dec_value(lua_State *L, struct dec *d, const cJSON *item);

static void dec_array(lua_State *L, struct dec *d, const cJSON *item) {
    lua_Integer i = 0;
    lua_createtable(L, cJSON_GetArraySize(item), 0);
    for (const cJSON *c = item->child; c != NULL; c = c->next) {
        dec_value(L, d, c);
        lua_rawseti(L, -2, ++i);
    }
    lua_pushvalue(L, d->arraymt);
    lua_setmetatable(L, -2);
}

static void dec_object(lua_State *L, struct dec *d, const cJSON *item) {
    lua_createtable(L, 0, cJSON_GetArraySize(item));
    for (const cJSON *c = item->child; c != NULL; c = c->next) {
        dec_string(L, d); /* the key, c->string, but from the text */
        dec_value(L, d, c);
        lua_rawset(L, -3); /* a repeated key: the last one wins */
    }
}

static void dec_value(lua_State *L, struct dec *d, const cJSON *item) {
    luaL_checkstack(L, 4, "json.decode");
    switch (item->type & 0xFF) {
    case cJSON_False:
        lua_pushboolean(L, 0);
        break;
    case cJSON_True:
        lua_pushboolean(L, 1);
        break;
    case cJSON_NULL:
        lua_pushlightuserdata(L, NULL_SENTINEL);
        break;
    case cJSON_Number:
        dec_number(L, d, item);
        break;
    case cJSON_String:
        dec_string(L, d);
        break;
    case cJSON_Array:
        dec_array(L, d, item);
        break;
    case cJSON_Object:
        dec_object(L, d, item);
        break;
    default:
        luaL_error(L, "unexpected cJSON item type %d", item->type);
    }
}

/* lua_pcall'd: 1 = struct dec. Returns the value. */
static int dec_protected(lua_State *L) {
    struct dec *d = lua_touserdata(L, 1);
    push_array_mt(L);
    d->arraymt = lua_gettop(L);
    dec_value(L, d, d->root);
    return 1;
}

static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;

int chorus_json_decode(lua_State *L, const char *text, size_t len, char *err, size_t errlen) {
    struct json_alloc alloc = {0};
    struct json_alloc *outer = json_alloc_current;
    const char *parse_end = NULL;
    struct dec d = {0};
    int status;
    if (text == NULL) {
        text = "";
        len = 0;
    }
    if (strict_scan(text, len, err, errlen) != 0)
        return -1;
    pthread_once(&hooks_once, install_hooks);
    alloc.f = lua_getallocf(L, &alloc.ud);
    json_alloc_current = &alloc;
    d.root = cJSON_ParseWithLengthOpts(text, len, &parse_end, 0);
    json_alloc_current = outer;
    if (d.root == NULL) {
        if (alloc.failed)
            return set_err(err, errlen, "not enough memory");
        /* the scan passed what cJSON refused: a disagreement, not the text's fault alone */
        return syntax_error(text, len, parse_end ? (size_t)(parse_end - text) : 0,
                            "refused by cJSON", err, errlen);
    }
    d.cur = text;
    d.end = text + len;
    if (!lua_checkstack(L, 3)) {
        status = -1;
        set_err(err, errlen, "stack overflow");
    } else {
        lua_pushcfunction(L, dec_protected);
        lua_pushlightuserdata(L, &d);
        status = lua_pcall(L, 1, 1, 0);
        if (status != LUA_OK)
            take_error(L, err, errlen);
    }
    json_alloc_current = &alloc;
    cJSON_Delete((cJSON *)d.root);
    json_alloc_current = outer;
    return status == LUA_OK ? 0 : -1;
}

/* ---- encode ------------------------------------------------------------ */

/* Encoding writes straight into one growing buffer: building a cJSON tree
 * first cost a node and a key copy per value, and was a fifth of a served
 * request's instructions. The text is what cJSON_PrintUnformatted printed
 * (same escapes, same key order), so decode(encode(v)) and the tests keep
 * their meaning; decoding still goes through cJSON. */

/* One step of the path from the root: a key (stack index of the key string,
 * alive while its table is being traversed) or a 1-based array index. */
struct step {
    int key;
    lua_Integer index;
};

struct enc {
    char *buf; /* malloc'd, owned by chorus_json_encode's frame */
    size_t len, cap;
    int arraymt; /* stack index of the array metatable, or of nil */
    int depth;   /* tables enclosing the current value */
    const void *tables[CHORUS_JSON_MAX_DEPTH];
    struct step path[CHORUS_JSON_MAX_DEPTH];
};

enum table_kind { KIND_OBJECT, KIND_ARRAY };

/* The buffer is outside the Lua heap, yet what it holds becomes a string
 * of the run: as it grows it counts against the run's memory cap (a table
 * that holds one table twice, forty levels deep, encoded to terabytes in
 * one C call, past the cap and any hook) and its bytes are charged to the
 * run's budget as the charged string functions' are (lua_charged.h). */
static void enc_charge(lua_State *L, size_t grow, size_t cap) {
    struct chorus_runtime *rt = chorus_runtime_of(L);
    struct chorus_run *run = chorus_charged_run(rt);
    if (!run)
        return;
    if (run->limits.run_memory && run->mem + cap > run->limits.run_memory)
        chorus_run_stop(L, run, KILL_MEMORY);
    chorus_run_charge(L, (lua_Integer)(grow / CHORUS_CHARGE_BYTES));
}

/* Room for n more bytes; raises when memory runs out (the buffer stays
 * owned by the caller of the pcall, which frees it). */
static char *enc_reserve(lua_State *L, struct enc *e, size_t n) {
    if (e->cap - e->len < n) {
        size_t cap = e->cap ? e->cap : 1024; /* a run record fits: no regrowth */
        while (cap - e->len < n)
            cap *= 2;
        enc_charge(L, cap - e->cap, cap);
        char *p = realloc(e->buf, cap);
        if (p == NULL)
            luaL_error(L, "not enough memory");
        e->buf = p;
        e->cap = cap;
    }
    return e->buf + e->len;
}

static void enc_put(lua_State *L, struct enc *e, const char *s, size_t n) {
    memcpy(enc_reserve(L, e, n), s, n);
    e->len += n;
}

static void enc_char(lua_State *L, struct enc *e, char c) {
    *enc_reserve(L, e, 1) = c;
    e->len++;
}

static int is_identifier(const char *s, size_t len) {
    if (len == 0 || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9')))
            return 0;
    }
    return 1;
}

static void add_step(lua_State *L, luaL_Buffer *b, const struct step *s) {
    char num[32];
    size_t len;
    const char *k;
    if (s->key == 0) {
        snprintf(num, sizeof num, "[" LUA_INTEGER_FMT "]", (LUAI_UACINT)s->index);
        luaL_addstring(b, num);
        return;
    }
    k = lua_tolstring(L, s->key, &len);
    if (is_identifier(k, len)) {
        luaL_addchar(b, '.');
        luaL_addlstring(b, k, len);
        return;
    }
    luaL_addstring(b, "[\"");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)k[i];
        if (c == '"' || c == '\\')
            luaL_addchar(b, '\\');
        luaL_addchar(b, c < 0x20 || c == 0x7f ? '?' : (char)c);
    }
    luaL_addstring(b, "\"]");
}

/* Raises "WHAT at PATH" for the current value. */
static int enc_fail(lua_State *L, const struct enc *e, const char *what) {
    luaL_Buffer b;
    luaL_checkstack(L, 4, "json.encode");
    luaL_buffinit(L, &b);
    luaL_addstring(&b, what);
    luaL_addstring(&b, " at $");
    for (int i = 0; i < e->depth; i++)
        add_step(L, &b, &e->path[i]);
    luaL_pushresult(&b);
    return lua_error(L);
}

/* Shortest of %.15g..%.17g that reads back as exactly x, with '.' as the
 * decimal point whatever the locale. */
static void format_float(char *buf, size_t size, double x) {
    const char *point = localeconv()->decimal_point;
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, x);
        if (strtod(buf, NULL) == x)
            break;
    }
    if (point[0] != '.' && point[0] != '\0' && point[1] == '\0') {
        char *p = strchr(buf, point[0]);
        if (p != NULL)
            *p = '.';
    }
}

/* Writes v in decimal (what LUA_INTEGER_FMT prints, without printf's cost);
 * returns the length. */
static int format_integer(char *buf, long long v) {
    char tmp[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    int len = 0;
    if (v < 0)
        buf[len++] = '-';
    while (n)
        buf[len++] = tmp[--n];
    buf[len] = '\0';
    return len;
}

/* Writes x as INT[.FRAC] with at most 6 decimals when that reads back as
 * exactly x, else returns 0. Times in run records are such numbers, and
 * printf's float path was most of encoding them. Exact because v and 1e6
 * are exact doubles and IEEE division rounds correctly: v / 1e6 is the
 * double strtod makes of the decimal v·10⁻⁶. The range keeps the text what
 * %.15g..%.17g would print (no exponent, no -0). */
static int format_micro(char *buf, double x) {
    double ax = fabs(x);
    /* Below 2^32 a double's spacing is under 1e-6, so x has one such
     * decimal and it is the one %.15g..%.17g prints; above, two decimals
     * can read back as x and printf picks the shorter. */
    if (!(ax >= 1e-4 && ax < 4294967296.0))
        return 0;
    long long v = llround(ax * 1e6);
    if ((double)v / 1e6 != ax)
        return 0;
    int n = format_integer(buf, x < 0 ? -(v / 1000000) : v / 1000000);
    if (x < 0 && v / 1000000 == 0) { /* -0.5: the sign is not in the integer part */
        memmove(buf + 1, buf, (size_t)n + 1);
        buf[0] = '-';
        n++;
    }
    long long frac = v % 1000000;
    if (frac != 0) {
        char digits[7];
        int w = 6;
        for (int i = 5; i >= 0; i--, frac /= 10)
            digits[i] = (char)('0' + frac % 10);
        while (digits[w - 1] == '0')
            w--;
        buf[n++] = '.';
        memcpy(buf + n, digits, (size_t)w);
        n += w;
    }
    buf[n] = '\0';
    return n;
}

static void enc_number(lua_State *L, struct enc *e, int idx) {
    char buf[40];
    int n;
    if (lua_isinteger(L, idx)) {
        n = format_integer(buf, (long long)lua_tointeger(L, idx));
    } else {
        double x = (double)lua_tonumber(L, idx);
        if (!isfinite(x))
            enc_fail(L, e, "cannot encode NaN or infinity");
        n = format_micro(buf, x);
        if (n == 0) {
            format_float(buf, sizeof buf, x);
            n = (int)strlen(buf);
        }
    }
    enc_put(L, e, buf, (size_t)n);
}

/* The bytes a string's escape adds for each byte: 1 for \" \\ \b \f \n \r
 * \t, 5 for the other control bytes (\u00xx), 0 for the rest. */
/* clang-format off */
static const unsigned char escape_extra[256] = {
    5, 5, 5, 5, 5, 5, 5, 5, /* 0x00-0x07 */
    1, 1, 1, 5, 1, 1, 5, 5, /* \b \t \n 0x0b \f \r 0x0e 0x0f */
    5, 5, 5, 5, 5, 5, 5, 5, /* 0x10-0x17 */
    5, 5, 5, 5, 5, 5, 5, 5, /* 0x18-0x1f */
    ['"'] = 1, ['\\'] = 1};
/* clang-format on */

/* The length of the prefix of u that needs no escape. Eight bytes at a
 * time while none of them is a control byte, '"' or '\\' (each test is
 * exact about whether the word holds such a byte, not which), then byte by
 * byte: strcspn with the 34 bytes to look for took glibc's slow generic
 * path, and a byte at a time was half of the quoting's instructions. */
static size_t plain_prefix(const unsigned char *u, size_t len) {
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, u + i, 8);
        uint64_t quote = w ^ (ones * '"'), backslash = w ^ (ones * '\\');
        uint64_t found = ((w - ones * 0x20) & ~w) | ((quote - ones) & ~quote) |
                         ((backslash - ones) & ~backslash);
        if (found & highs)
            break;
    }
    while (i < len && !escape_extra[u[i]])
        i++;
    return i;
}

/* A JSON string as cJSON prints it: \" \\ \b \f \n \r \t, other control
 * bytes as \u00xx (a zero byte as \u0000, which decodes back to it),
 * everything else (UTF-8 included) as it is. before, after: a byte written
 * just before and after it (an object's ',' and ':'), or 0: one reserve for
 * the three. */
static void enc_quoted(lua_State *L, struct enc *e, const char *s, size_t len, char before,
                       char after) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t first = plain_prefix(u, len);
    size_t extra = 0;
    for (size_t i = first; i < len; i++)
        extra += escape_extra[u[i]];
    char *p = enc_reserve(L, e, len + extra + 4);
    if (before)
        *p++ = before;
    *p++ = '"';
    if (extra == 0) {
        memcpy(p, s, len);
        p += len;
    } else {
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)s[i];
            char esc = c == '"'    ? '"'
                       : c == '\\' ? '\\'
                       : c == '\b' ? 'b'
                       : c == '\f' ? 'f'
                       : c == '\n' ? 'n'
                       : c == '\r' ? 'r'
                       : c == '\t' ? 't'
                                   : 0;
            if (esc) {
                *p++ = '\\';
                *p++ = esc;
            } else if (c < 0x20) {
                memcpy(p, "\\u00", 4);
                p[4] = hex[c >> 4];
                p[5] = hex[c & 15];
                p += 6;
            } else {
                *p++ = (char)c;
            }
        }
    }
    *p++ = '"';
    if (after)
        *p++ = after;
    e->len = (size_t)(p - e->buf);
}

static void enc_string(lua_State *L, struct enc *e, int idx) {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    enc_quoted(L, e, s, len, 0, 0);
}

static int has_array_mt(lua_State *L, const struct enc *e, int idx) {
    int r = 0;
    if (lua_getmetatable(L, idx)) {
        r = lua_rawequal(L, -1, e->arraymt);
        lua_pop(L, 1);
    }
    return r;
}

/* Classifies the table at idx, raising when it is neither an array nor an
 * object; *n is the array length. */
static enum table_kind table_kind(lua_State *L, const struct enc *e, int idx, lua_Integer *n) {
    lua_Integer count = 0, nstrings = 0, max = 0;
    int outside = 0; /* an integer key < 1 */
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        count++;
        if (lua_type(L, -1) == LUA_TSTRING) {
            nstrings++;
        } else if (lua_isinteger(L, -1)) {
            lua_Integer k = lua_tointeger(L, -1);
            if (k < 1)
                outside = 1;
            else if (k > max)
                max = k;
        } else {
            enc_fail(L, e, "table with mixed or non-string keys");
        }
    }
    *n = count;
    if (nstrings > 0 && nstrings < count)
        enc_fail(L, e, "table with mixed or non-string keys");
    if (nstrings > 0 && has_array_mt(L, e, idx))
        enc_fail(L, e, "array with string keys");
    if (nstrings > 0)
        return KIND_OBJECT;
    if (outside || max != count) /* distinct keys in 1..max, count of them: exactly 1..n */
        enc_fail(L, e, "table with integer keys that are not 1..n");
    return count > 0 || has_array_mt(L, e, idx) ? KIND_ARRAY : KIND_OBJECT;
}

static void enc_value(lua_State *L, struct enc *e, int idx);

static void enc_array_items(lua_State *L, struct enc *e, int idx, lua_Integer n) {
    enc_char(L, e, '[');
    for (lua_Integer i = 1; i <= n; i++) {
        if (i > 1)
            enc_char(L, e, ',');
        lua_rawgeti(L, idx, i);
        e->path[e->depth - 1] = (struct step){0, i};
        enc_value(L, e, lua_gettop(L));
        lua_pop(L, 1);
    }
    enc_char(L, e, ']');
}

/* The items of an object, in one pass over its keys: a key that is not a
 * string fails the table as table_kind would have (at the table's path).
 * pushed: its first key and value are on the stack already (enc_table's
 * look at the first key), else none. */
static void enc_object_items(lua_State *L, struct enc *e, int idx, int pushed) {
    char sep = '{';
    if (!pushed)
        lua_pushnil(L);
    while (pushed || lua_next(L, idx)) {
        size_t len;
        pushed = 0;
        if (lua_type(L, -2) != LUA_TSTRING) {
            e->depth--;
            enc_fail(L, e, "table with mixed or non-string keys");
        }
        const char *k = lua_tolstring(L, -2, &len);
        e->path[e->depth - 1] = (struct step){lua_gettop(L) - 1, 0};
        enc_quoted(L, e, k, len, sep, ':');
        sep = ',';
        enc_value(L, e, lua_gettop(L));
        lua_pop(L, 1);
    }
    if (sep == '{') /* no item */
        enc_char(L, e, '{');
    enc_char(L, e, '}');
}

static void enc_table(lua_State *L, struct enc *e, int idx) {
    char what[64];
    const void *self = lua_topointer(L, idx);
    lua_Integer n = 0;
    for (int i = 0; i < e->depth; i++)
        if (e->tables[i] == self)
            enc_fail(L, e, "cycle");
    if (e->depth == CHORUS_JSON_MAX_DEPTH) {
        snprintf(what, sizeof what, "nesting deeper than %d", CHORUS_JSON_MAX_DEPTH);
        enc_fail(L, e, what);
    }
    luaL_checkstack(L, 4, "json.encode");
    /* A table whose first key is a string is encoded as an object in one
     * pass (the census of table_kind walked every key a second time, each
     * step of lua_next a hash lookup); others get the census. */
    enum table_kind kind;
    int top = lua_gettop(L);
    lua_pushnil(L);
    /* an object's first key and value stay on the stack for its items */
    int pushed = lua_next(L, idx) && lua_type(L, -2) == LUA_TSTRING && !has_array_mt(L, e, idx);
    if (pushed) {
        kind = KIND_OBJECT;
    } else {
        lua_settop(L, top);
        kind = table_kind(L, e, idx, &n);
    }
    e->tables[e->depth++] = self;
    if (kind == KIND_ARRAY)
        enc_array_items(L, e, idx, n);
    else
        enc_object_items(L, e, idx, pushed);
    e->depth--;
}

static void enc_value(lua_State *L, struct enc *e, int idx) {
    char what[64];
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        enc_put(L, e, "null", 4);
        return;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            enc_put(L, e, "true", 4);
        else
            enc_put(L, e, "false", 5);
        return;
    case LUA_TNUMBER:
        enc_number(L, e, idx);
        return;
    case LUA_TSTRING:
        enc_string(L, e, idx);
        return;
    case LUA_TTABLE:
        enc_table(L, e, idx);
        return;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL_SENTINEL) {
            enc_put(L, e, "null", 4);
            return;
        }
        break;
    }
    snprintf(what, sizeof what, "cannot encode a %s", luaL_typename(L, idx));
    enc_fail(L, e, what);
}

/* lua_pcall'd: 1 = struct enc, 2 = the value. Fills e->buf, NUL-ended. */
static int enc_protected(lua_State *L) {
    struct enc *e = lua_touserdata(L, 1);
    luaL_getmetatable(L, CHORUS_JSON_ARRAY_MT);
    e->arraymt = lua_gettop(L);
    enc_value(L, e, 2);
    enc_char(L, e, '\0');
    return 0;
}

char *chorus_json_encode(lua_State *L, int idx, char *err, size_t errlen) {
    struct enc e;
    idx = lua_absindex(L, idx);
    e.buf = NULL;
    e.len = e.cap = 0;
    e.depth = 0;
    if (!lua_checkstack(L, 3)) {
        set_err(err, errlen, "stack overflow");
        return NULL;
    }
    lua_pushcfunction(L, enc_protected);
    lua_pushlightuserdata(L, &e);
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        take_error(L, err, errlen);
        free(e.buf);
        return NULL;
    }
    return e.buf;
}

/* ---- the Lua library ----------------------------------------------------- */

/* lua_pcall'd so that a failing push cannot leak the string. */
static int push_cstring(lua_State *L) {
    lua_pushstring(L, lua_touserdata(L, 1));
    return 1;
}

static int json_encode(lua_State *L) {
    char err[1024];
    char *s;
    int status;
    luaL_checkany(L, 1);
    s = chorus_json_encode(L, 1, err, sizeof err);
    if (s == NULL) {
        lua_pushstring(L, err);
        return lua_error(L);
    }
    lua_pushcfunction(L, push_cstring);
    lua_pushlightuserdata(L, s);
    status = lua_pcall(L, 1, 1, 0);
    free(s);
    if (status != LUA_OK)
        return lua_error(L);
    return 1;
}

static int json_decode(lua_State *L) {
    char err[256];
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    if (chorus_json_decode(L, s, len, err, sizeof err) != 0) {
        lua_pushfstring(L, "json.decode: %s", err);
        return lua_error(L);
    }
    return 1;
}

static int json_array(lua_State *L) {
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    push_array_mt(L);
    lua_setmetatable(L, 1);
    return 1;
}

static int json_is_null(lua_State *L) {
    lua_pushboolean(L,
                    lua_type(L, 1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, 1) == NULL_SENTINEL);
    return 1;
}

static const luaL_Reg json_funcs[] = {
    {"encode", json_encode},
    {"decode", json_decode},
    {"array", json_array},
    {"is_null", json_is_null},
    {NULL, NULL},
};

int chorus_json_open(lua_State *L) {
    push_array_mt(L);
    lua_pop(L, 1);
    luaL_newlib(L, json_funcs);
    lua_pushlightuserdata(L, NULL_SENTINEL);
    lua_setfield(L, -2, "null");
    return 1;
}
