/* lua_pattern.c — Lua 5.4 patterns whose every step is charged to a budget
 * (lua_pattern.h has the contract).
 *
 * The matcher is a backtracking one with the same shape as lstrlib's, on
 * purpose: the same recursion points make the same patterns "too complex",
 * the same scan order gives the same captures. Items that only advance
 * (single characters, %b, %f, back-references) loop inside match() instead
 * of recursing; repetitions, optional items and captures recurse.
 *
 * Subject and pattern are Lua strings, which always have a '\0' after their
 * last byte: the matcher reads that byte where Lua's does (a frontier at the
 * subject's end sees '\0'; a pattern item at its end sees no suffix).
 */
#include "lua_pattern.h"

#include <lauxlib.h>
#include <stddef.h>
#include <string.h>

#include "runtime.h"
#include "scheduler.h"

#define MAX_CAPTURES 32      /* LUA_MAXCAPTURES */
#define MAX_DEPTH 200        /* lstrlib's MAXCCALLS: nested match() calls */
#define MAX_INDEX_CHAIN 2000 /* lvm.c's MAXTAGLOOP: tables on an __index chain */
#define ESC '%'
#define CAP_OPEN (-1)     /* capture started, not closed yet */
#define CAP_POSITION (-2) /* a () capture: its position is its value */
#define PREPAID 4096      /* steps charged to a run ahead of their use */

/* ---- the meter ------------------------------------------------------------
 *
 * Counting a step is one subtraction and one branch (STEP). Steps are paid
 * ahead in blocks: a block is charged to the run before it is used and what
 * is left is refunded on return, so an error or a kill escaping from the
 * middle of a match (a gsub callback that raises, a memory error) can never
 * leave steps uncharged; it overcharges a block at most. */

struct meter {
    struct chorus_run *run; /* charged; NULL: the per-call cap applies */
    long fuel;              /* paid steps not used yet; < 0: owed */
    long left;              /* without a run: steps left of the cap */
};

static void meter_start(lua_State *L, struct meter *m) {
    struct chorus_runtime *rt = chorus_runtime_of(L);
    struct chorus_run *run = chorus_charged_run(rt);
    m->fuel = 0;
    m->left = CHORUS_PATTERN_MAX_STEPS;
    m->run = NULL;
    if (run && run->killed != KILL_NONE)
        chorus_run_stop(L, run, run->killed);
    if (run && run->limits.run_instructions > 0)
        m->run = run;
}

/* Called when fuel went below zero: charges what is owed and pays the next
 * block, or stops the run / raises at the end of the budget. */
static void refuel(lua_State *L, struct meter *m) {
    long owed = -m->fuel;
    struct chorus_run *run = m->run;
    long avail = run ? run->limits.run_instructions - run->instructions : m->left;
    m->fuel = 0;
    if (run && (owed > avail || run->killed != KILL_NONE)) {
        run->instructions += owed;
        chorus_run_stop(L, run, KILL_BUDGET);
    }
    if (!run && owed > avail)
        luaL_error(L, "pattern too costly: more than %d matching steps in one call",
                   (int)CHORUS_PATTERN_MAX_STEPS);
    long grant = avail - owed < PREPAID ? avail - owed : PREPAID;
    if (run)
        run->instructions += owed + grant;
    else
        m->left -= owed + grant;
    m->fuel = grant;
}

/* On a normal return: the unused prepaid steps go back. */
static void meter_end(struct meter *m) {
    if (m->run && m->fuel > 0)
        m->run->instructions -= m->fuel;
    m->fuel = 0;
}

static void charge(lua_State *L, struct meter *m, long n) {
    if ((m->fuel -= n) < 0)
        refuel(L, m);
}

/* ---- character classes (C locale) ------------------------------------------ */

static int is_lower(int c) { return c >= 'a' && c <= 'z'; }
static int is_upper(int c) { return c >= 'A' && c <= 'Z'; }
static int is_alpha(int c) { return is_lower(c) || is_upper(c); }
static int is_digit(int c) { return c >= '0' && c <= '9'; }
static int is_alnum(int c) { return is_alpha(c) || is_digit(c); }
static int is_graph(int c) { return c > ' ' && c < 127; }

/* Does c belong to class %cl? A letter that names no class, and any other
 * character, stands for itself (%. is a dot). */
static int in_class(int c, int cl) {
    int yes;
    switch (cl | 0x20) { /* lower case; no other character maps to a letter */
    case 'a':
        yes = is_alpha(c);
        break;
    case 'c':
        yes = c < ' ' || c == 127;
        break;
    case 'd':
        yes = is_digit(c);
        break;
    case 'g':
        yes = is_graph(c);
        break;
    case 'l':
        yes = is_lower(c);
        break;
    case 'p':
        yes = is_graph(c) && !is_alnum(c);
        break;
    case 's':
        yes = c == ' ' || (c >= '\t' && c <= '\r');
        break;
    case 'u':
        yes = is_upper(c);
        break;
    case 'w':
        yes = is_alnum(c);
        break;
    case 'x':
        yes = is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
        break;
    case 'z': /* deprecated in Lua 5.2 but still there in 5.4 */
        yes = c == '\0';
        break;
    default:
        return cl == c;
    }
    return is_upper(cl) ? !yes : yes; /* %A is the complement of %a */
}

/* Does c belong to the set that opens at set ('[') and closes at close
 * (its ']')? Members: %class, a-z ranges, single characters. */
static int in_set(int c, const char *set, const char *close) {
    const char *p = set + 1;
    int member = 1; /* what finding c means: 0 in a [^...] set */
    if (*p == '^') {
        member = 0;
        p++;
    }
    for (; p < close; p++) {
        int first = (unsigned char)*p;
        if (first == ESC) {
            p++;
            if (in_class(c, (unsigned char)*p))
                return member;
        } else if (p[1] == '-' && p + 2 < close) {
            p += 2;
            if (first <= c && c <= (unsigned char)*p)
                return member;
        } else if (first == c) {
            return member;
        }
    }
    return !member;
}

/* ---- the matcher ---------------------------------------------------------- */

struct capture {
    const char *at;
    ptrdiff_t len; /* or CAP_OPEN, CAP_POSITION */
};

struct matcher {
    lua_State *L;
    const char *src, *src_end;
    const char *pat_end;
    int depth; /* nested match() calls left */
    int level; /* captures started */
    struct meter meter;
    struct capture cap[MAX_CAPTURES];
};

#define STEP(ms, n)                                                                                \
    do {                                                                                           \
        if (((ms)->meter.fuel -= (n)) < 0)                                                         \
            refuel((ms)->L, &(ms)->meter);                                                         \
    } while (0)

static void matcher_init(struct matcher *ms, lua_State *L, const char *s, size_t ls, const char *p,
                         size_t lp) {
    ms->L = L;
    ms->src = s;
    ms->src_end = s + ls;
    ms->pat_end = p + lp;
    meter_start(L, &ms->meter);
}

/* Before each attempt at a new subject position. */
static void matcher_reset(struct matcher *ms) {
    ms->level = 0;
    ms->depth = MAX_DEPTH;
}

/* Where the pattern item at p ends (its suffix, if any, starts there). */
static const char *item_end(struct matcher *ms, const char *p) {
    char first = *p++;
    if (first == ESC) {
        if (p == ms->pat_end)
            luaL_error(ms->L, "malformed pattern (ends with '%%')");
        return p + 1;
    }
    if (first == '[') {
        if (*p == '^')
            p++;
        do { /* the first character is a member even when it is ']' */
            if (p == ms->pat_end)
                luaL_error(ms->L, "malformed pattern (missing ']')");
            char c = *p++;
            if (c == ESC && p < ms->pat_end)
                p++; /* %] is a member, not the end */
        } while (*p != ']');
        return p + 1;
    }
    return p;
}

/* Does the subject byte at s match the item [p, ep)? Not past the end. */
static int item_matches(const struct matcher *ms, const char *s, const char *p, const char *ep) {
    if (s >= ms->src_end)
        return 0;
    int c = (unsigned char)*s;
    switch (*p) {
    case '.':
        return 1;
    case ESC:
        return in_class(c, (unsigned char)p[1]);
    case '[':
        return in_set(c, p, ep - 1);
    default:
        return (unsigned char)*p == c;
    }
}

/* Steps one test of the item [p, ep) costs: one, and one more per 16 bytes
 * of a long set (scanned at each test). */
static long item_cost(const char *p, const char *ep) { return 1 + ((ep - p) >> 4); }

static const char *match(struct matcher *ms, const char *s, const char *p);

/* item* / item+: takes as many as match, then gives them back one at a
 * time until the rest of the pattern matches. */
static const char *repeat_greedy(struct matcher *ms, const char *s, const char *p, const char *ep) {
    long cost = item_cost(p, ep);
    ptrdiff_t n = 0;
    while (item_matches(ms, s + n, p, ep)) {
        STEP(ms, cost);
        n++;
    }
    for (; n >= 0; n--) {
        const char *end = match(ms, s + n, ep + 1);
        if (end)
            return end;
    }
    return NULL;
}

/* item-: tries the rest of the pattern first, then one more item. */
static const char *repeat_lazy(struct matcher *ms, const char *s, const char *p, const char *ep) {
    long cost = item_cost(p, ep);
    for (;;) {
        const char *end = match(ms, s, ep + 1);
        if (end)
            return end;
        STEP(ms, cost);
        if (!item_matches(ms, s, p, ep))
            return NULL;
        s++;
    }
}

static const char *capture_open(struct matcher *ms, const char *s, const char *p, ptrdiff_t kind) {
    int i = ms->level;
    if (i >= MAX_CAPTURES)
        luaL_error(ms->L, "too many captures");
    ms->cap[i].at = s;
    ms->cap[i].len = kind;
    ms->level = i + 1;
    const char *end = match(ms, s, p);
    if (!end)
        ms->level--;
    return end;
}

static const char *capture_close(struct matcher *ms, const char *s, const char *p) {
    int i = ms->level - 1;
    while (i >= 0 && ms->cap[i].len != CAP_OPEN)
        i--;
    if (i < 0)
        luaL_error(ms->L, "invalid pattern capture");
    ms->cap[i].len = s - ms->cap[i].at;
    const char *end = match(ms, s, p);
    if (!end)
        ms->cap[i].len = CAP_OPEN;
    return end;
}

/* %bxy at p (pointing at x): from an x at s to its balancing y. */
static const char *balanced(struct matcher *ms, const char *s, const char *p) {
    if (p >= ms->pat_end - 1)
        luaL_error(ms->L, "malformed pattern (missing arguments to '%%b')");
    if (*s != *p)
        return NULL;
    char open = p[0], close = p[1];
    long depth = 1;
    while (++s < ms->src_end) {
        STEP(ms, 1);
        if (*s == close) {
            if (--depth == 0)
                return s + 1;
        } else if (*s == open) {
            depth++;
        }
    }
    return NULL;
}

/* %1-%9 (digit d): the text of that closed capture again, at s. */
static const char *backref(struct matcher *ms, const char *s, int d) {
    int i = d - '1';
    if (i < 0 || i >= ms->level || ms->cap[i].len == CAP_OPEN)
        luaL_error(ms->L, "invalid capture index %%%d", i + 1);
    if (ms->cap[i].len == CAP_POSITION)
        return NULL; /* a position is no text: never matches (as in Lua) */
    size_t len = (size_t)ms->cap[i].len;
    STEP(ms, (long)(len >> 4));
    if ((size_t)(ms->src_end - s) >= len && memcmp(ms->cap[i].at, s, len) == 0)
        return s + len;
    return NULL;
}

/* Matches the pattern from p against the subject from s; returns the end of
 * the match or NULL. Each pass of the loop takes one pattern item. */
static const char *match(struct matcher *ms, const char *s, const char *p) {
    if (ms->depth-- == 0)
        luaL_error(ms->L, "pattern too complex");
    while (p != ms->pat_end) {
        STEP(ms, 1);
        if (*p == '(') {
            if (p[1] == ')')
                s = capture_open(ms, s, p + 2, CAP_POSITION);
            else
                s = capture_open(ms, s, p + 1, CAP_OPEN);
            break;
        }
        if (*p == ')') {
            s = capture_close(ms, s, p + 1);
            break;
        }
        if (*p == '$' && p + 1 == ms->pat_end) { /* elsewhere '$' is itself */
            if (s != ms->src_end)
                s = NULL;
            break;
        }
        if (*p == ESC && p[1] == 'b') {
            s = balanced(ms, s, p + 2);
            if (!s)
                break;
            p += 4;
            continue;
        }
        if (*p == ESC && p[1] == 'f') {
            p += 2;
            if (*p != '[')
                luaL_error(ms->L, "missing '[' after '%%f' in pattern");
            const char *ep = item_end(ms, p);
            STEP(ms, item_cost(p, ep));
            int before = s == ms->src ? '\0' : (unsigned char)s[-1];
            int here = (unsigned char)*s; /* '\0' at the subject's end */
            if (in_set(before, p, ep - 1) || !in_set(here, p, ep - 1)) {
                s = NULL;
                break;
            }
            p = ep;
            continue;
        }
        if (*p == ESC && p[1] >= '0' && p[1] <= '9') {
            s = backref(ms, s, (unsigned char)p[1]);
            if (!s)
                break;
            p += 2;
            continue;
        }
        /* a single-character item and its optional suffix */
        const char *ep = item_end(ms, p);
        if (ep - p > 16)
            STEP(ms, item_cost(p, ep) - 1);
        if (!item_matches(ms, s, p, ep)) {
            if (*ep == '*' || *ep == '?' || *ep == '-') { /* zero of them will do */
                p = ep + 1;
                continue;
            }
            s = NULL;
            break;
        }
        if (*ep == '?') {
            const char *end = match(ms, s + 1, ep + 1);
            if (end) {
                s = end;
                break;
            }
            p = ep + 1;
            continue;
        }
        if (*ep == '+') {
            s = repeat_greedy(ms, s + 1, p, ep);
            break;
        }
        if (*ep == '*') {
            s = repeat_greedy(ms, s, p, ep);
            break;
        }
        if (*ep == '-') {
            s = repeat_lazy(ms, s, p, ep);
            break;
        }
        s++;
        p = ep;
    }
    ms->depth++;
    return s;
}

/* ---- captures to Lua ------------------------------------------------------- */

/* Capture i of the match [s, e): its text in *text and its length, or
 * CAP_POSITION with the position pushed on the stack. With no captures,
 * capture 0 is the whole match. */
static ptrdiff_t capture_get(struct matcher *ms, int i, const char *s, const char *e,
                             const char **text) {
    if (i >= ms->level) {
        if (i != 0)
            luaL_error(ms->L, "invalid capture index %%%d", i + 1);
        *text = s;
        return e - s;
    }
    ptrdiff_t len = ms->cap[i].len;
    *text = ms->cap[i].at;
    if (len == CAP_OPEN)
        luaL_error(ms->L, "unfinished capture");
    if (len == CAP_POSITION)
        lua_pushinteger(ms->L, (ms->cap[i].at - ms->src) + 1);
    return len;
}

static void capture_push(struct matcher *ms, int i, const char *s, const char *e) {
    const char *text;
    ptrdiff_t len = capture_get(ms, i, s, e, &text);
    if (len != CAP_POSITION)
        lua_pushlstring(ms->L, text, (size_t)len);
}

/* Pushes every capture (the whole match [s, e) when there are none and s is
 * given); returns how many. */
static int captures_push(struct matcher *ms, const char *s, const char *e) {
    int n = ms->level == 0 && s ? 1 : ms->level;
    luaL_checkstack(ms->L, n, "too many captures");
    for (int i = 0; i < n; i++)
        capture_push(ms, i, s, e);
    return n;
}

/* ---- find and match -------------------------------------------------------- */

/* A 1-based, possibly negative start position as an offset (may be past
 * the end: the caller checks). */
static size_t start_offset(lua_Integer pos, size_t len) {
    if (pos > 0)
        return (size_t)pos - 1;
    if (pos == 0 || pos < -(lua_Integer)len)
        return 0;
    return len - (size_t)(-pos);
}

static int has_specials(const char *p, size_t lp) {
    for (size_t i = 0; i < lp; i++) {
        switch (p[i]) {
        case '^':
        case '$':
        case '*':
        case '+':
        case '?':
        case '.':
        case '(':
        case '[':
        case '%':
        case '-':
            return 1;
        default:
            break;
        }
    }
    return 0;
}

static int find_or_match(lua_State *L, int find) {
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
    if (init > ls) {
        luaL_pushfail(L);
        return 1;
    }
    if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
        /* glibc's memmem is linear in the subject (two-way search) */
        struct meter m;
        meter_start(L, &m);
        charge(L, &m, 1 + (long)((ls - init + lp) >> 4));
        meter_end(&m);
        const char *at = lp == 0 ? s + init : memmem(s + init, ls - init, p, lp);
        if (at) {
            lua_pushinteger(L, (at - s) + 1);
            lua_pushinteger(L, (at - s) + (lua_Integer)lp);
            return 2;
        }
        luaL_pushfail(L);
        return 1;
    }
    struct matcher ms;
    const char *from = s + init;
    int anchored = *p == '^';
    if (anchored) {
        p++;
        lp--;
    }
    matcher_init(&ms, L, s, ls, p, lp);
    do {
        matcher_reset(&ms);
        const char *end = match(&ms, from, p);
        if (end) {
            meter_end(&ms.meter);
            if (!find)
                return captures_push(&ms, from, end);
            lua_pushinteger(L, (from - s) + 1);
            lua_pushinteger(L, end - s);
            return 2 + captures_push(&ms, NULL, NULL);
        }
    } while (from++ < ms.src_end && !anchored);
    meter_end(&ms.meter);
    luaL_pushfail(L);
    return 1;
}

static int pattern_find(lua_State *L) { return find_or_match(L, 1); }

static int pattern_match(lua_State *L) { return find_or_match(L, 0); }

/* ---- gmatch ---------------------------------------------------------------- */

struct gmatch_state {
    size_t next;    /* offset where the next search starts */
    ptrdiff_t last; /* end offset of the last match, -1 before the first */
};

/* The iterator: upvalues subject, pattern, state. */
static int gmatch_next(lua_State *L) {
    size_t ls, lp;
    const char *s = lua_tolstring(L, lua_upvalueindex(1), &ls);
    const char *p = lua_tolstring(L, lua_upvalueindex(2), &lp);
    struct gmatch_state *st = lua_touserdata(L, lua_upvalueindex(3));
    struct matcher ms;
    matcher_init(&ms, L, s, ls, p, lp);
    for (const char *from = s + st->next; from <= ms.src_end; from++) {
        matcher_reset(&ms);
        const char *end = match(&ms, from, p);
        /* an empty match right where the last one ended is skipped */
        if (end && end - s != st->last) {
            st->next = (size_t)(end - s);
            st->last = end - s;
            meter_end(&ms.meter);
            return captures_push(&ms, from, end);
        }
    }
    st->next = ls + 1; /* exhausted: later calls find nothing at once */
    meter_end(&ms.meter);
    return 0;
}

static int pattern_gmatch(lua_State *L) {
    size_t ls;
    luaL_checklstring(L, 1, &ls);
    luaL_checkstring(L, 2);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
    lua_settop(L, 2); /* the strings live on as upvalues */
    struct gmatch_state *st = lua_newuserdatauv(L, sizeof *st, 0);
    st->next = init > ls ? ls + 1 : init;
    st->last = -1;
    lua_pushcclosure(L, gmatch_next, 3);
    return 1;
}

/* ---- gsub ------------------------------------------------------------------ */

/* Appends the replacement string (argument 3) for the match [s, e): %0 is
 * the match, %1-%9 captures, %% a '%'. */
static void add_template(struct matcher *ms, luaL_Buffer *b, const char *s, const char *e) {
    lua_State *L = ms->L;
    size_t len;
    const char *r = lua_tolstring(L, 3, &len);
    STEP(ms, 1 + (long)(len >> 4));
    const char *pct;
    while ((pct = memchr(r, ESC, len)) != NULL) {
        luaL_addlstring(b, r, (size_t)(pct - r));
        char d = pct[1]; /* the string's '\0' when '%' ends it */
        if (d == ESC) {
            luaL_addchar(b, ESC);
        } else if (d == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else if (d >= '1' && d <= '9') {
            const char *text;
            ptrdiff_t n = capture_get(ms, d - '1', s, e, &text);
            if (n == CAP_POSITION)
                luaL_addvalue(b); /* the pushed position, as a string */
            else
                luaL_addlstring(b, text, (size_t)n);
        } else {
            luaL_error(L, "invalid use of '%c' in replacement string", ESC);
        }
        len -= (size_t)(pct + 2 - r);
        r = pct + 2;
    }
    luaL_addlstring(b, r, len);
}

/* Replaces the key on top of the stack with tbl[key] as lua_gettable finds
 * it, but walking the __index chain here, a step per table on it:
 * lua_gettable walks up to 2,000 tables (each the __index of the next) per
 * lookup inside this one C call, and a million matches through such a
 * chain held the server's thread 17 s with one step counted each. */
static void table_get(struct matcher *ms, int tbl) {
    lua_State *L = ms->L;
    lua_pushvalue(L, tbl); /* key t */
    for (int hops = 0;; hops++) {
        STEP(ms, 1);
        if (hops == MAX_INDEX_CHAIN)
            luaL_error(L, "'__index' chain too long; possible loop");
        lua_pushvalue(L, -2);
        if (lua_rawget(L, -2) != LUA_TNIL)
            break; /* key t v */
        lua_pop(L, 1);
        if (luaL_getmetafield(L, -1, "__index") == LUA_TNIL) {
            lua_pushnil(L);
            break; /* key t nil */
        }
        if (lua_isfunction(L, -1)) { /* key t h: h(t, key) */
            lua_insert(L, -2);
            lua_pushvalue(L, -3);
            lua_call(L, 2, 1);
            lua_pushnil(L);
            lua_insert(L, -2);
            break; /* key nil v */
        }
        lua_remove(L, -2);         /* key h */
        if (!lua_istable(L, -1)) { /* a string, a userdata: its own metatable's */
            lua_pushvalue(L, -2);
            lua_gettable(L, -2);
            break; /* key h v */
        }
    }
    lua_replace(L, -3);
    lua_pop(L, 1);
}

/* Appends the replacement for the match [s, e) given by argument 3 of type
 * kind; returns 0 when the match was kept as it is (nil or false). */
static int add_replacement(struct matcher *ms, luaL_Buffer *b, const char *s, const char *e,
                           int kind) {
    lua_State *L = ms->L;
    if (kind == LUA_TFUNCTION) {
        lua_pushvalue(L, 3);
        int n = captures_push(ms, s, e);
        lua_call(L, n, 1);
    } else if (kind == LUA_TTABLE) {
        capture_push(ms, 0, s, e);
        table_get(ms, 3);
    } else {
        add_template(ms, b, s, e);
        return 1;
    }
    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
        return 0;
    }
    if (!lua_isstring(L, -1))
        return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    luaL_addvalue(b);
    return 1;
}

static int pattern_gsub(lua_State *L) {
    size_t ls, lp;
    const char *src = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    int kind = lua_type(L, 3);
    lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
    luaL_argexpected(L,
                     kind == LUA_TNUMBER || kind == LUA_TSTRING || kind == LUA_TFUNCTION ||
                         kind == LUA_TTABLE,
                     3, "string/function/table");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    int anchored = *p == '^';
    if (anchored) {
        p++;
        lp--;
    }
    struct matcher ms;
    matcher_init(&ms, L, src, ls, p, lp);
    const char *last = NULL; /* end of the last match */
    lua_Integer n = 0;
    int changed = 0;
    while (n < max) {
        matcher_reset(&ms);
        const char *end = match(&ms, src, p);
        if (end && end != last) {
            n++;
            changed |= add_replacement(&ms, &b, src, end, kind);
            src = last = end;
        } else if (src < ms.src_end) {
            luaL_addchar(&b, *src++);
        } else {
            break;
        }
        if (anchored)
            break;
    }
    meter_end(&ms.meter);
    if (!changed) {
        lua_pushvalue(L, 1);
    } else {
        luaL_addlstring(&b, src, (size_t)(ms.src_end - src));
        luaL_pushresult(&b);
    }
    lua_pushinteger(L, n);
    return 2;
}

/* ---- registration ------------------------------------------------------------ */

static const luaL_Reg pattern_funcs[] = {
    {"find", pattern_find},
    {"match", pattern_match},
    {"gmatch", pattern_gmatch},
    {"gsub", pattern_gsub},
    {NULL, NULL},
};

/* __index of the methods table for names it lacks: the string table's, so
 * functions added there later are found; never dump. Upvalue: string. */
static int methods_fallback(lua_State *L) {
    if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "dump") == 0)
        return 0;
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    return 1;
}

void chorus_lua_pattern_open(lua_State *L) {
    lua_newtable(L);
    luaL_setfuncs(L, pattern_funcs, 0);
    lua_setfield(L, -2, "pattern");

    lua_pushliteral(L, "");
    if (!lua_getmetatable(L, -1)) { /* no string library loaded */
        lua_pop(L, 1);
        return;
    }
    lua_getfield(L, -1, "__index");     /* "" mt index */
    int ours = lua_getmetatable(L, -1); /* our methods table has one */
    if (ours || !lua_istable(L, -1)) {
        lua_pop(L, 3 + ours);
        return;
    }
    lua_newtable(L); /* "" mt index methods */
    lua_pushnil(L);
    while (lua_next(L, -3)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    luaL_setfuncs(L, pattern_funcs, 0);
    lua_createtable(L, 0, 1); /* "" mt index methods fallback_mt */
    lua_pushvalue(L, -3);
    lua_pushcclosure(L, methods_fallback, 1);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    lua_setfield(L, -3, "__index"); /* "" mt index */
    lua_pop(L, 3);
}
