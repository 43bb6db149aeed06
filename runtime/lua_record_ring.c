/* lua_record_ring.c — the finished run records `chorus serve` keeps in
 * memory for GET /runs/ID: the last N, as JSON text, outside the Lua heap.
 *
 *   local ring = core.record_ring(capacity [, max_bytes])
 *   ring:put(id, text [, workflow, status])
 *                       -- a new id takes the oldest one's place when full;
 *                       -- a known id gets its text (and facts) replaced;
 *                       -- past max_bytes the oldest others are dropped
 *   ring:get(id) → text or nil
 *   ring:facts(id) → workflow, status (nil when the id or they are not kept)
 *   #ring → how many records; ring:bytes() → their ids', texts' and facts' bytes
 *
 * Why in C: kept in the Lua heap, ten thousand records were old objects
 * that only a major collection frees, and each major collection marked and
 * swept all of them at once: the serve benchmark's p99 (README, Benchmarks:
 * "Why the collector is tuned").
 *
 * The facts are what GET and DELETE /runs/ID decide by (who may read or
 * cancel the run) on a server without a data folder: read from the text,
 * a record up to limits.run_record_bytes was decoded whole for each request.
 *
 * Invariant: every slot with an id is in exactly one bucket chain, the one
 * its id hashes to; slots are reused in insertion order.
 */
#include "lua_record_ring.h"

#include "lua_bindings.h"

#include <lauxlib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RING_MT "chorus.record_ring"
#define MAX_CAPACITY 10000000

struct slot {
    char *id; /* NULL: empty */
    size_t id_len;
    char *text; /* text '\0', then its facts when kept: workflow '\0' status '\0' */
    size_t text_len;
    size_t facts_len, workflow_len; /* facts_len 0: none kept */
    struct slot *chain;             /* next slot in the same bucket */
};

struct ring {
    struct slot *slots;
    size_t cap, count, next; /* next: the slot the next new id takes */
    struct slot **buckets;
    size_t nbuckets; /* a power of two */
    size_t bytes;
    size_t max_bytes; /* 0: none */
};

static uint64_t hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static struct slot **bucket_of(struct ring *r, const char *id, size_t n) {
    return &r->buckets[hash(id, n) & (r->nbuckets - 1)];
}

static struct slot *find(struct ring *r, const char *id, size_t n) {
    for (struct slot *s = *bucket_of(r, id, n); s; s = s->chain)
        if (s->id_len == n && memcmp(s->id, id, n) == 0)
            return s;
    return NULL;
}

static void forget(struct ring *r, struct slot *s) {
    struct slot **link = bucket_of(r, s->id, s->id_len);
    while (*link != s)
        link = &(*link)->chain;
    *link = s->chain;
    r->bytes -= s->id_len + s->text_len + s->facts_len;
    r->count--;
    free(s->id);
    free(s->text);
    memset(s, 0, sizeof *s);
}

static char *copy(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static struct ring *check_ring(lua_State *L) {
    struct ring *r = luaL_checkudata(L, 1, RING_MT);
    if (!r->slots)
        luaL_error(L, "record ring is closed");
    return r;
}

/* Past max_bytes, drops the oldest records but keep (the one just put):
 * a record holds what its run returned or raised, up to the run's memory
 * cap, so ten thousand of them were gigabytes of the server's memory that
 * one workflow's results could fill. Those dropped are read from the store
 * (runs.lua, Service:lookup). */
static void trim(struct ring *r, const struct slot *keep) {
    for (size_t i = r->next, n = 0; r->bytes > r->max_bytes && n < r->cap;
         i = (i + 1) % r->cap, n++)
        if (r->slots[i].id && &r->slots[i] != keep)
            forget(r, &r->slots[i]);
}

/* The text (argument 3) in one buffer with its facts after it, text '\0'
 * workflow '\0' status '\0' (arguments 4 and 5, when given); NULL when
 * malloc failed. *flen: the facts' bytes (0: none), *wlen: the workflow's. */
static char *entry_of(lua_State *L, size_t *len, size_t *flen, size_t *wlen) {
    const char *text = luaL_checklstring(L, 3, len);
    const char *w = NULL, *st = NULL;
    size_t sl = 0;
    *wlen = 0;
    if (!lua_isnoneornil(L, 4)) {
        w = luaL_checklstring(L, 4, wlen);
        st = luaL_checklstring(L, 5, &sl);
    }
    *flen = w ? *wlen + sl + 2 : 0;
    char *p = malloc(*len + 1 + *flen);
    if (!p)
        return NULL;
    memcpy(p, text, *len);
    p[*len] = '\0';
    if (w) {
        char *f = p + *len + 1;
        memcpy(f, w, *wlen);
        f[*wlen] = '\0';
        memcpy(f + *wlen + 1, st, sl);
        f[*wlen + 1 + sl] = '\0';
    }
    return p;
}

static int ring_put(lua_State *L) {
    struct ring *r = check_ring(L);
    size_t n, len, flen, wlen;
    const char *id = luaL_checklstring(L, 2, &n);
    char *t = entry_of(L, &len, &flen, &wlen);
    if (!t)
        return luaL_error(L, "out of memory keeping a run record");
    struct slot *s = find(r, id, n);
    if (s) {
        r->bytes += len + flen - s->text_len - s->facts_len;
        free(s->text);
        s->text = t;
        s->text_len = len;
        s->facts_len = flen;
        s->workflow_len = wlen;
        if (r->max_bytes)
            trim(r, s);
        return 0;
    }
    char *i = copy(id, n);
    if (!i) {
        free(t);
        return luaL_error(L, "out of memory keeping a run record");
    }
    s = &r->slots[r->next];
    if (s->id)
        forget(r, s);
    r->next = (r->next + 1) % r->cap;
    *s = (struct slot){
        .id = i, .id_len = n, .text = t, .text_len = len, .facts_len = flen, .workflow_len = wlen};
    struct slot **head = bucket_of(r, i, n);
    s->chain = *head;
    *head = s;
    r->bytes += n + len + flen;
    r->count++;
    if (r->max_bytes)
        trim(r, s);
    return 0;
}

static int ring_get(lua_State *L) {
    struct ring *r = check_ring(L);
    size_t n;
    const char *id = luaL_checklstring(L, 2, &n);
    struct slot *s = find(r, id, n);
    if (!s)
        return 0;
    lua_pushlstring(L, s->text, s->text_len);
    return 1;
}

static int ring_facts(lua_State *L) {
    struct ring *r = check_ring(L);
    size_t n;
    const char *id = luaL_checklstring(L, 2, &n);
    struct slot *s = find(r, id, n);
    if (!s || !s->facts_len)
        return 0;
    const char *f = s->text + s->text_len + 1;
    lua_pushlstring(L, f, s->workflow_len);
    lua_pushlstring(L, f + s->workflow_len + 1, s->facts_len - s->workflow_len - 2);
    return 2;
}

static int ring_len(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)check_ring(L)->count);
    return 1;
}

static int ring_bytes(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)check_ring(L)->bytes);
    return 1;
}

static void free_ring(struct ring *r) {
    if (r->slots)
        for (size_t i = 0; i < r->cap; i++) {
            free(r->slots[i].id);
            free(r->slots[i].text);
        }
    free(r->slots);
    free(r->buckets);
    r->slots = NULL;
    r->buckets = NULL;
}

static int ring_gc(lua_State *L) {
    free_ring(luaL_checkudata(L, 1, RING_MT));
    return 0;
}

int chorus_lua_record_ring(lua_State *L) {
    lua_Integer cap = luaL_checkinteger(L, 1);
    luaL_argcheck(L, cap >= 1 && cap <= MAX_CAPACITY, 1, "capacity must be 1 to 10,000,000");
    lua_Integer max_bytes = luaL_optinteger(L, 2, 0);
    luaL_argcheck(L, max_bytes >= 0, 2, "max_bytes must be 0 (none) or more");
    struct ring *r = lua_newuserdatauv(L, sizeof *r, 0);
    memset(r, 0, sizeof *r);
    if (luaL_newmetatable(L, RING_MT)) {
        static const luaL_Reg methods[] = {{"put", ring_put},
                                           {"get", ring_get},
                                           {"facts", ring_facts},
                                           {"bytes", ring_bytes},
                                           {NULL, NULL}};
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, ring_len);
        lua_setfield(L, -2, "__len");
        lua_pushcfunction(L, ring_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    r->cap = (size_t)cap;
    r->max_bytes = (size_t)max_bytes;
    r->nbuckets = 16;
    while (r->nbuckets < r->cap)
        r->nbuckets *= 2;
    r->slots = calloc(r->cap, sizeof *r->slots);
    r->buckets = calloc(r->nbuckets, sizeof *r->buckets);
    if (!r->slots || !r->buckets) {
        free_ring(r);
        return luaL_error(L, "out of memory for a record ring of %d", (int)cap);
    }
    return 1;
}

void chorus_lua_record_ring_open(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"record_ring", chorus_lua_record_ring},
        {NULL, NULL},
    };
    chorus_lua_register(L, funcs);
}
