/* fuzz_lua.h — what the libFuzzer targets of tests/fuzz/ share: a Lua state
 * set up like ./chorus sets up its own (runtime/main.c: standard libraries,
 * chorus.core and the embedded lua/chorus modules as package.preload
 * loaders), protected calls that tell a harmless Lua error from a broken
 * invariant, and the switch for known, already reported bugs.
 *
 * Convention: harness Lua code raises an error whose message starts with
 * "INVARIANT: " when chorus broke a promise; fuzz_pcall() turns that into
 * abort(), which libFuzzer reports as a crash and saves the input of. Any
 * other Lua error is an outcome chorus is allowed to have.
 *
 * Lua coverage: libFuzzer only sees the C code it instrumented, so most of
 * what fuzz_request and fuzz_store_decode exercise (the lua/chorus modules)
 * would be invisible to it. fuzz_lua_coverage() adds a line hook that counts each
 * (module, line) executed in libFuzzer's extra counters; inside runs,
 * fuzz_cover() chains it with the scheduler's instruction-count hook, so run
 * limits still apply.
 *
 * Known bugs (found by these targets, reported, not fixed yet; listed in
 * tests/fuzz/crashes/README.md) are skipped so that `make fuzz` stays useful
 * for finding new ones; run a target with CHORUS_FUZZ_STRICT=1 in the
 * environment to have them crash again.
 */
#ifndef CHORUS_FUZZ_LUA_H
#define CHORUS_FUZZ_LUA_H

#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embedded.h"
#include "runtime.h"

#define FUZZ_INVARIANT "INVARIANT: "

/* 1 when CHORUS_FUZZ_STRICT=1: known bugs crash too. */
static inline int fuzz_strict(void) {
    static int strict = -1;
    if (strict < 0) {
        const char *v = getenv("CHORUS_FUZZ_STRICT");
        strict = v != NULL && strcmp(v, "1") == 0;
    }
    return strict;
}

/* Prints why and aborts: the input at hand broke an invariant. */
static inline void fuzz_fail(const char *target, const char *why) {
    fprintf(stderr, "\n%s: %s\n", target, why);
    fflush(stderr);
    abort();
}

/* A state like ./chorus's: `require "chorus.core"` and every lua/chorus
 * module work, from the binary, with no files on disk. */
static inline lua_State *fuzz_chorus_state(void) {
    lua_State *L = luaL_newstate();
    if (L == NULL)
        fuzz_fail("fuzz", "cannot create a Lua state");
    luaL_openlibs(L);
    chorus_embedded_preload(L);
    return L;
}

/* ---- Lua line coverage ------------------------------------------------------ */

#define FUZZ_LUA_COUNTERS (1 << 16)

/* libFuzzer treats this section as extra coverage counters (Linux). */
__attribute__((
    used,
    section("__libfuzzer_extra_counters"))) static uint8_t fuzz_lua_counters[FUZZ_LUA_COUNTERS];

static lua_Hook fuzz_chained_hook; /* the scheduler's count hook, if any */

/* Counts lines of the embedded lua/chorus modules (chunk names "@lua/...");
 * passes count events on to the hook it replaced. */
static inline void fuzz_line_hook(lua_State *L, lua_Debug *ar) {
    if (ar->event == LUA_HOOKLINE) {
        uint32_t h = 2166136261u;
        if (!lua_getinfo(L, "S", ar) || ar->source[0] != '@')
            return;
        for (const char *p = ar->source; *p; p++)
            h = (h ^ (unsigned char)*p) * 16777619u;
        h ^= (uint32_t)ar->currentline * 2654435761u;
        h %= FUZZ_LUA_COUNTERS;
        if (fuzz_lua_counters[h] < 255)
            fuzz_lua_counters[h]++;
    } else if (ar->event == LUA_HOOKCOUNT && fuzz_chained_hook != NULL) {
        fuzz_chained_hook(L, ar);
    }
}

/* fuzz_cover(): adds the line hook to the calling coroutine, keeping its
 * count hook (a run's task has the scheduler's). */
static inline int fuzz_cover(lua_State *L) {
    lua_Hook h = lua_gethook(L);
    int mask = lua_gethookmask(L);
    if (h != fuzz_line_hook) {
        if (mask & LUA_MASKCOUNT)
            fuzz_chained_hook = h;
        lua_sethook(L, fuzz_line_hook, mask | LUA_MASKLINE, lua_gethookcount(L));
    }
    return 0;
}

/* Line coverage for Lua code on the main thread, and fuzz_cover() for
 * code that runs in runs (call it first thing in the run's function). */
static inline void fuzz_lua_coverage(lua_State *L) {
    lua_sethook(L, fuzz_line_hook, LUA_MASKLINE, 0);
    lua_register(L, "fuzz_cover", fuzz_cover);
}

/* Runs harness setup code; any error there is a harness bug: abort. */
static inline void fuzz_setup(lua_State *L, const char *target, const char *code) {
    if (luaL_loadbufferx(L, code, strlen(code), target, "t") != LUA_OK ||
        lua_pcall(L, 0, 0, 0) != LUA_OK) {
        fprintf(stderr, "%s: harness setup failed: %s\n", target, lua_tostring(L, -1));
        abort();
    }
}

/* Calls the global function `fn` with the nargs values on the stack, in
 * protected mode, and pops everything. An "INVARIANT: ..." error aborts;
 * any other error is fine. Returns 1 when the call raised nothing. */
static inline int fuzz_pcall(lua_State *L, const char *target, const char *fn, int nargs) {
    int base = lua_gettop(L) - nargs;
    int ok;
    lua_getglobal(L, fn);
    lua_insert(L, base + 1);
    ok = lua_pcall(L, nargs, 0, 0) == LUA_OK;
    if (!ok && lua_type(L, -1) == LUA_TSTRING &&
        strncmp(lua_tostring(L, -1), FUZZ_INVARIANT, strlen(FUZZ_INVARIANT)) == 0)
        fuzz_fail(target, lua_tostring(L, -1));
    lua_settop(L, base);
    return ok;
}

#endif
