/* lua_record_ring.c — the finished run records `chorus serve` keeps in
 * memory for GET /runs/ID: the last N, as JSON text, outside the Lua heap,
 * each in the share of the workflow its run is charged to.
 *
 *   local ring = core.record_ring(capacity [, max_bytes [, share, share_bytes]])
 *   ring:put(id, text [, workflow, status [, owner]]) → kept
 *                       -- a new id is the newest record of its owner's
 *                       -- share (owner: the workflow by default); a known
 *                       -- id gets its text (and facts) replaced, keeping
 *                       -- its age while its owner stays; then records make
 *                       -- room (make_room); false, and nothing kept under
 *                       -- that id, when the text alone passes its share
 *   ring:get(id) → text or nil
 *   ring:facts(id) → workflow, status (nil when the id or they are not kept)
 *   ring:held(owner) → how many records and bytes owner's share holds
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
 * Why shares: with one age order for every workflow, one workflow's many
 * runs or large results pushed every other workflow's records out, and
 * their GET /runs/ID answered 404 soon after the run ended. A share holds
 * at most `share` records and `share_bytes` bytes (0: no cap of its own);
 * past either, its own oldest records go. Past the ring's capacity or
 * max_bytes, the record that goes is the ring's oldest, unless the share
 * of the record just put holds as much as the oldest one's share (by what
 * the bound counts: records or bytes), which then gives up its own oldest
 * instead: a workflow loses records to another only when it holds more
 * of the ring than that one does. Each choice is O(1); each record goes
 * once, so a put costs amortized O(1).
 *
 * Invariants: every slot with an id is in exactly one bucket chain, the
 * one its id hashes to, in the ring's age list and in its share's; a share
 * exists while it holds a record; unused slots are on the free list.
 */
#include "lua_record_ring.h"

#include "lua_bindings.h"

#include <lauxlib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RING_MT "chorus.record_ring"
#define MAX_CAPACITY 10000000

struct share; /* the records of one owner (a workflow) */

struct slot {
    char *id; /* NULL: unused, on the free list (by chain) */
    size_t id_len;
    char *text; /* text '\0', then its facts when kept: workflow '\0' status '\0' */
    size_t text_len;
    size_t facts_len, workflow_len;   /* facts_len 0: none kept */
    uint64_t hash;                    /* the id's, kept: not hashed again to unlink it */
    struct slot *chain;               /* next slot in the same bucket */
    struct slot *older, *newer;       /* the ring's age order */
    struct slot *sh_older, *sh_newer; /* its share's */
    struct share *share;
};

struct share {
    char *name;
    size_t name_len;
    uint64_t hash; /* the name's */
    size_t count, bytes;
    struct slot *oldest, *newest;
    struct share *chain; /* next share in the same bucket */
};

struct ring {
    struct slot *slots; /* cap + 1: a new record comes in before others make room */
    size_t cap, count;
    struct slot *free;
    struct slot *oldest, *newest;
    struct slot **buckets; /* by id */
    struct share **shares; /* by owner */
    size_t nbuckets;       /* a power of two, for both */
    size_t bytes;
    size_t max_bytes;                /* 0: none */
    size_t share_count, share_bytes; /* one share's caps; 0: none */
};

static uint64_t hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* The slot of id (n bytes, hashing to h); NULL when the ring has none. */
static struct slot *find(struct ring *r, const char *id, size_t n, uint64_t h) {
    for (struct slot *s = r->buckets[h & (r->nbuckets - 1)]; s; s = s->chain)
        if (s->id_len == n && memcmp(s->id, id, n) == 0)
            return s;
    return NULL;
}

static char *copy(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static struct share *find_share(struct ring *r, const char *name, size_t n, uint64_t h) {
    for (struct share *sh = r->shares[h & (r->nbuckets - 1)]; sh; sh = sh->chain)
        if (sh->name_len == n && memcmp(sh->name, name, n) == 0)
            return sh;
    return NULL;
}

/* owner's share, made (empty) when it has none; NULL when malloc failed. */
static struct share *share_of(struct ring *r, const char *name, size_t n) {
    uint64_t h = hash(name, n);
    struct share *sh = find_share(r, name, n, h);
    if (sh)
        return sh;
    sh = calloc(1, sizeof *sh);
    if (!sh || !(sh->name = copy(name, n))) {
        free(sh);
        return NULL;
    }
    sh->name_len = n;
    sh->hash = h;
    struct share **head = &r->shares[h & (r->nbuckets - 1)];
    sh->chain = *head;
    *head = sh;
    return sh;
}

static void drop_share(struct ring *r, struct share *sh) {
    struct share **link = &r->shares[sh->hash & (r->nbuckets - 1)];
    while (*link != sh)
        link = &(*link)->chain;
    *link = sh->chain;
    free(sh->name);
    free(sh);
}

static size_t cost(const struct slot *s) { return s->id_len + s->text_len + s->facts_len; }

/* Takes s out of the ring: its bucket, both age lists, the counts; an
 * emptied share goes too. The slot returns to the free list. */
static void forget(struct ring *r, struct slot *s) {
    struct slot **link = &r->buckets[s->hash & (r->nbuckets - 1)];
    while (*link != s)
        link = &(*link)->chain;
    *link = s->chain;
    *(s->older ? &s->older->newer : &r->oldest) = s->newer;
    *(s->newer ? &s->newer->older : &r->newest) = s->older;
    struct share *sh = s->share;
    *(s->sh_older ? &s->sh_older->sh_newer : &sh->oldest) = s->sh_newer;
    *(s->sh_newer ? &s->sh_newer->sh_older : &sh->newest) = s->sh_older;
    r->bytes -= cost(s);
    r->count--;
    sh->bytes -= cost(s);
    if (--sh->count == 0)
        drop_share(r, sh);
    free(s->id);
    free(s->text);
    memset(s, 0, sizeof *s);
    s->chain = r->free;
    r->free = s;
}

/* Puts slot s (taken from the free list, its id and text set) in the ring
 * as the newest record of the ring and of share sh. */
static void insert(struct ring *r, struct slot *s, struct share *sh) {
    struct slot **head = &r->buckets[s->hash & (r->nbuckets - 1)];
    s->chain = *head;
    *head = s;
    s->older = r->newest;
    *(r->newest ? &r->newest->newer : &r->oldest) = s;
    r->newest = s;
    s->share = sh;
    s->sh_older = sh->newest;
    *(sh->newest ? &sh->newest->sh_newer : &sh->oldest) = s;
    sh->newest = s;
    r->bytes += cost(s);
    r->count++;
    sh->bytes += cost(s);
    sh->count++;
}

static int over_share(const struct ring *r, const struct share *sh) {
    return (r->share_count && sh->count > r->share_count) ||
           (r->share_bytes && sh->bytes > r->share_bytes);
}

/* The record that goes for the ring's bounds, never keep: the ring's
 * oldest, or keep's share's own oldest when that share holds at least as
 * much (records when by_count, else bytes) as the oldest one's share. */
static struct slot *victim(struct ring *r, const struct slot *keep, int by_count) {
    struct slot *old = r->oldest == keep ? keep->newer : r->oldest;
    const struct share *mine = keep->share;
    struct slot *own = mine->oldest == keep ? keep->sh_newer : mine->oldest;
    if (own && (by_count ? mine->count >= old->share->count : mine->bytes >= old->share->bytes))
        return own;
    return old;
}

/* Drops records but keep (the one just put) until keep's share and then
 * the ring are within their bounds: a record holds what its run returned
 * or raised, up to the run's memory cap, so ten thousand of them were
 * gigabytes of the server's memory. keep alone fits both (ring_put), so
 * there is always another record to drop while one is passed. Those dropped
 * are read from the store (runs.lua, Service:lookup). */
static void make_room(struct ring *r, struct slot *keep) {
    struct share *sh = keep->share;
    while (over_share(r, sh))
        forget(r, sh->oldest == keep ? keep->sh_newer : sh->oldest);
    for (;;) {
        int by_count = r->count > r->cap;
        if (!by_count && !(r->max_bytes && r->bytes > r->max_bytes))
            return;
        forget(r, victim(r, keep, by_count));
    }
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

static struct ring *check_ring(lua_State *L) {
    struct ring *r = luaL_checkudata(L, 1, RING_MT);
    if (!r->slots)
        luaL_error(L, "record ring is closed");
    return r;
}

/* The most bytes one record may take: its share's, else the ring's (0: any). */
static size_t record_limit(const struct ring *r) {
    if (r->share_bytes && (!r->max_bytes || r->share_bytes < r->max_bytes))
        return r->share_bytes;
    return r->max_bytes;
}

/* s takes text t (owned from here) and its facts' lengths (entry_of). */
static void set_text(struct slot *s, char *t, size_t len, size_t flen, size_t wlen) {
    s->text = t;
    s->text_len = len;
    s->facts_len = flen;
    s->workflow_len = wlen;
}

static int ring_put(lua_State *L) {
    struct ring *r = check_ring(L);
    size_t n, len, flen, wlen, on;
    const char *id = luaL_checklstring(L, 2, &n);
    const char *owner = luaL_optlstring(L, 6, NULL, &on);
    char *t = entry_of(L, &len, &flen, &wlen);
    if (!t)
        return luaL_error(L, "out of memory keeping a run record");
    if (!owner) { /* the workflow, when given */
        owner = flen ? t + len + 1 : "";
        on = wlen;
    }
    uint64_t h = hash(id, n);
    struct slot *s = find(r, id, n, h);
    size_t limit = record_limit(r);
    if (s && ((limit && n + len + flen > limit) || s->share->name_len != on ||
              memcmp(s->share->name, owner, on) != 0)) {
        forget(r, s); /* too big (the stale text goes too) or moving to another share */
        s = NULL;
    }
    if (limit && n + len + flen > limit) {
        free(t);
        lua_pushboolean(L, 0);
        return 1;
    }
    if (s) { /* the same owner's: replaced where it is */
        size_t was = cost(s);
        free(s->text);
        set_text(s, t, len, flen, wlen);
        r->bytes += cost(s) - was;
        s->share->bytes += cost(s) - was;
    } else {
        char *i = copy(id, n);
        struct share *sh = i ? share_of(r, owner, on) : NULL;
        if (!sh) {
            free(i);
            free(t);
            return luaL_error(L, "out of memory keeping a run record");
        }
        s = r->free;
        r->free = s->chain;
        *s = (struct slot){.id = i, .id_len = n, .hash = h};
        set_text(s, t, len, flen, wlen);
        insert(r, s, sh);
    }
    make_room(r, s);
    lua_pushboolean(L, 1);
    return 1;
}

static int ring_get(lua_State *L) {
    struct ring *r = check_ring(L);
    size_t n;
    const char *id = luaL_checklstring(L, 2, &n);
    struct slot *s = find(r, id, n, hash(id, n));
    if (!s)
        return 0;
    lua_pushlstring(L, s->text, s->text_len);
    return 1;
}

static int ring_facts(lua_State *L) {
    struct ring *r = check_ring(L);
    size_t n;
    const char *id = luaL_checklstring(L, 2, &n);
    struct slot *s = find(r, id, n, hash(id, n));
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

static int ring_held(lua_State *L) {
    struct ring *r = check_ring(L);
    size_t n;
    const char *owner = luaL_checklstring(L, 2, &n);
    struct share *sh = find_share(r, owner, n, hash(owner, n));
    lua_pushinteger(L, sh ? (lua_Integer)sh->count : 0);
    lua_pushinteger(L, sh ? (lua_Integer)sh->bytes : 0);
    return 2;
}

static void free_ring(struct ring *r) {
    if (r->slots)
        for (size_t i = 0; i <= r->cap; i++) {
            free(r->slots[i].id);
            free(r->slots[i].text);
        }
    if (r->shares)
        for (size_t i = 0; i < r->nbuckets; i++)
            for (struct share *sh = r->shares[i], *next; sh; sh = next) {
                next = sh->chain;
                free(sh->name);
                free(sh);
            }
    free(r->slots);
    free(r->buckets);
    free(r->shares);
    r->slots = NULL;
    r->buckets = NULL;
    r->shares = NULL;
}

static int ring_gc(lua_State *L) {
    free_ring(luaL_checkudata(L, 1, RING_MT));
    return 0;
}

static size_t opt_size(lua_State *L, int arg, const char *what) {
    lua_Integer v = luaL_optinteger(L, arg, 0);
    luaL_argcheck(L, v >= 0, arg, what);
    return (size_t)v;
}

int chorus_lua_record_ring(lua_State *L) {
    lua_Integer cap = luaL_checkinteger(L, 1);
    luaL_argcheck(L, cap >= 1 && cap <= MAX_CAPACITY, 1, "capacity must be 1 to 10,000,000");
    size_t max_bytes = opt_size(L, 2, "max_bytes must be 0 (none) or more");
    size_t share = opt_size(L, 3, "share must be 0 (none) or more");
    size_t share_bytes = opt_size(L, 4, "share_bytes must be 0 (none) or more");
    struct ring *r = lua_newuserdatauv(L, sizeof *r, 0);
    memset(r, 0, sizeof *r);
    if (luaL_newmetatable(L, RING_MT)) {
        static const luaL_Reg methods[] = {{"put", ring_put},     {"get", ring_get},
                                           {"facts", ring_facts}, {"bytes", ring_bytes},
                                           {"held", ring_held},   {NULL, NULL}};
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, ring_len);
        lua_setfield(L, -2, "__len");
        lua_pushcfunction(L, ring_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    r->cap = (size_t)cap;
    r->max_bytes = max_bytes;
    r->share_count = share;
    r->share_bytes = share_bytes;
    r->nbuckets = 16;
    while (r->nbuckets < r->cap)
        r->nbuckets *= 2;
    r->slots = calloc(r->cap + 1, sizeof *r->slots);
    r->buckets = calloc(r->nbuckets, sizeof *r->buckets);
    r->shares = calloc(r->nbuckets, sizeof *r->shares);
    if (!r->slots || !r->buckets || !r->shares) {
        free_ring(r);
        return luaL_error(L, "out of memory for a record ring of %d", (int)cap);
    }
    for (size_t i = r->cap + 1; i-- > 0;) {
        r->slots[i].chain = r->free;
        r->free = &r->slots[i];
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
