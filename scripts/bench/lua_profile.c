/* lua_profile.c — where a served request's Lua work goes, for
 * `LUA=1 scripts/bench_profile.sh` (a profiling tool, never linked into
 * chorus: built as a shared object and loaded with LD_PRELOAD).
 *
 * It interposes liblua's luaL_openlibs (the main state: a count hook on
 * every VM instruction), lua_resume (the same hook on every coroutine about
 * to run without one: the scheduler clears hooks when it pools a coroutine)
 * and lua_setallocf/lua_getallocf (a wrapper that charges each new or grown
 * heap block to the Lua line running, C functions called from Lua included).
 * Counts are exact, not sampled: every instruction walks the stack, so the
 * server runs some 50 times slower under it. Budgets still count (the
 * scheduler's own hook wins where it is set; those instructions are missed).
 *
 * Signals, acted on at the next hooked instruction: SIGRTMIN+3 zeroes the
 * counts (after a warm-up), SIGRTMIN+4 writes them to $LUA_PROFILE_OUT:
 * "fn SELF INCLUSIVE SOURCE:LINE" per function (VM instructions), "line N
 * SOURCE:LINE" per line, "alloc N BYTES SOURCE:LINE" per line. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <lua.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 32768 /* distinct functions and lines: far more than chorus has */
#define MAX_LEVELS 64

struct count {
    char *key;
    long self, incl, bytes, stamp;
};

static struct count funcs[SLOTS], lines[SLOTS], allocs[SLOTS];
static volatile sig_atomic_t want_reset, want_dump;
static long stamp;
static lua_Alloc real_alloc;
static lua_State *running; /* the state the last hooked instruction ran in */
static int in_alloc;

static struct count *slot(struct count *t, const char *key) {
    unsigned long h = 5381;
    for (const char *p = key; *p; p++)
        h = h * 33 + (unsigned char)*p;
    for (h &= SLOTS - 1; t[h].key && strcmp(t[h].key, key) != 0; h = (h + 1) & (SLOTS - 1))
        ;
    if (!t[h].key)
        t[h].key = strdup(key);
    return &t[h];
}

static void dump(void) {
    const char *path = getenv("LUA_PROFILE_OUT");
    FILE *f = fopen(path ? path : "lua_profile.txt", "w");
    if (!f)
        return;
    for (int i = 0; i < SLOTS; i++) {
        if (funcs[i].key && funcs[i].incl)
            fprintf(f, "fn %ld %ld %s\n", funcs[i].self, funcs[i].incl, funcs[i].key);
        if (lines[i].key && lines[i].self)
            fprintf(f, "line %ld %s\n", lines[i].self, lines[i].key);
        if (allocs[i].key && allocs[i].self)
            fprintf(f, "alloc %ld %ld %s\n", allocs[i].self, allocs[i].bytes, allocs[i].key);
    }
    fclose(f);
}

static void reset(void) {
    for (int i = 0; i < SLOTS; i++) {
        funcs[i].self = funcs[i].incl = lines[i].self = 0;
        allocs[i].self = allocs[i].bytes = 0;
    }
}

static void hook(lua_State *L, lua_Debug *unused) {
    (void)unused;
    running = L;
    if (want_reset) {
        want_reset = 0;
        reset();
    }
    if (want_dump) {
        want_dump = 0;
        dump();
    }
    stamp++;
    lua_Debug ar;
    char key[512];
    for (int level = 0; level < MAX_LEVELS && lua_getstack(L, level, &ar); level++) {
        lua_getinfo(L, level == 0 ? "Sl" : "S", &ar);
        snprintf(key, sizeof key, "%s:%d", ar.short_src, ar.linedefined);
        struct count *c = slot(funcs, key);
        if (level == 0) {
            c->self++;
            snprintf(key, sizeof key, "%s:%d", ar.short_src, ar.currentline);
            slot(lines, key)->self++;
        }
        if (c->stamp != stamp) { /* a recursive function counts once per instruction */
            c->stamp = stamp;
            c->incl++;
        }
    }
}

/* The line a block is made for: the running Lua function's, or for a C
 * function (lua_getinfo says line -1) the line of the Lua code calling it. */
static void charge(size_t bytes) {
    lua_Debug ar;
    char key[512];
    int level = 0;
    if (!running || !lua_getstack(running, 0, &ar))
        return;
    lua_getinfo(running, "Sl", &ar);
    while (ar.currentline < 0 && lua_getstack(running, ++level, &ar))
        lua_getinfo(running, "Sl", &ar);
    snprintf(key, sizeof key, "%s:%d", ar.short_src, ar.currentline);
    struct count *c = slot(allocs, key);
    c->self++;
    c->bytes += (long)bytes;
}

static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    size_t old = ptr ? osize : 0;
    if (nsize > old && !in_alloc) {
        in_alloc = 1;
        charge(nsize - old);
        in_alloc = 0;
    }
    return real_alloc(ud, ptr, osize, nsize);
}

static void on_signal(int sig) {
    if (sig == SIGRTMIN + 3)
        want_reset = 1;
    else
        want_dump = 1;
}

void luaL_openlibs(lua_State *L) {
    void (*real)(lua_State *) = (void (*)(lua_State *))dlsym(RTLD_NEXT, "luaL_openlibs");
    real(L);
    signal(SIGRTMIN + 3, on_signal);
    signal(SIGRTMIN + 4, on_signal);
    lua_sethook(L, hook, LUA_MASKCOUNT, 1);
}

int lua_resume(lua_State *L, lua_State *from, int narg, int *nres) {
    static int (*real)(lua_State *, lua_State *, int, int *);
    if (!real)
        real = (int (*)(lua_State *, lua_State *, int, int *))dlsym(RTLD_NEXT, "lua_resume");
    if (!lua_gethookmask(L))
        lua_sethook(L, hook, LUA_MASKCOUNT, 1);
    lua_State *was = running;
    running = L;
    int status = real(L, from, narg, nres);
    running = was;
    return status;
}

void lua_setallocf(lua_State *L, lua_Alloc f, void *ud) {
    static void (*real)(lua_State *, lua_Alloc, void *);
    if (!real)
        real = (void (*)(lua_State *, lua_Alloc, void *))dlsym(RTLD_NEXT, "lua_setallocf");
    if (f != counting_alloc)
        real_alloc = f;
    real(L, counting_alloc, ud);
}

/* chorus compares the allocator with its own: it sees the one it set. */
lua_Alloc lua_getallocf(lua_State *L, void **ud) {
    static lua_Alloc (*real)(lua_State *, void **);
    if (!real)
        real = (lua_Alloc(*)(lua_State *, void **))dlsym(RTLD_NEXT, "lua_getallocf");
    lua_Alloc f = real(L, ud);
    return f == counting_alloc ? real_alloc : f;
}
