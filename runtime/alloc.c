/* alloc.c — the Lua heap allocator: per-run accounting against each run's
 * memory cap, over a cache of small blocks (see alloc.h). */
#include "alloc.h"

#include <lauxlib.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler.h"

/* ---- the small-block cache -------------------------------------------------
 *
 * A served request makes a few hundred short-lived Lua objects; through
 * glibc each alloc/free pair cost a few hundred instructions and cache
 * misses (malloc_consolidate, unlink_chunk were a fifth of the profile).
 * Freed blocks of up to 1016 bytes are kept in per-class lists and handed
 * out again, like glibc's tcache without its 7-entry limit.
 *
 * The classes are glibc's own chunk sizes (a request of n bytes gets a
 * chunk of at least (n + 23) & ~15, and at least 32, usable to 8 bytes
 * less), so any block of a class, ours or one malloc'd before the runtime
 * existed, can serve any request of that class. chorus_alloc_cache_usable checks at start that
 * malloc really sizes chunks so, and leaves the cache off otherwise. Every
 * cached block is a plain malloc chunk, so whoever frees it after the
 * runtime is gone (lua_close) can free() it. Under AddressSanitizer the
 * cache is off, so use-after-free inside Lua stays visible. */

#if defined(__SANITIZE_ADDRESS__)
#define CACHE_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CACHE_SANITIZED 1
#endif
#endif

#define SMALL_MAX (CHORUS_ALLOC_CLASSES * 16 - 8)

static size_t size_class(size_t n) {
    size_t c = (n + 23) >> 4;
    return c < 2 ? 2 : c;
}

static size_t class_usable(size_t c) { return c * 16 - 8; }

static void *block_get(struct chorus_runtime *rt, size_t n) {
    size_t c = size_class(n);
    void *p = rt->cache[c];
    if (p) {
        void *next = *(void **)p;
        rt->cache[c] = next;
        rt->cached_bytes -= c * 16;
        /* The next block of the class is read (its link) when it is taken:
         * a block a collection freed long before is out of the cache by
         * then, and that read missed (most of chorus_alloc's time under
         * perf). Fetch it now, while this one is being filled. */
        if (next)
            __builtin_prefetch(next, 1);
        return p;
    }
    return malloc(class_usable(c));
}

static void block_put(struct chorus_runtime *rt, void *p, size_t n) {
    size_t c = size_class(n);
    if (rt->cached_bytes + c * 16 > CHORUS_ALLOC_CACHE_MAX) {
        free(p);
        return;
    }
    *(void **)p = rt->cache[c];
    rt->cache[c] = p;
    rt->cached_bytes += c * 16;
}

/* lua_Alloc semantics on the cache; falls through to malloc for large
 * blocks. */
static void *cached_alloc(struct chorus_runtime *rt, void *ptr, size_t osize, size_t nsize) {
    if (nsize == 0) {
        if (ptr == NULL)
            return NULL;
        if (osize <= SMALL_MAX)
            block_put(rt, ptr, osize);
        else
            free(ptr);
        return NULL;
    }
    if (ptr == NULL)
        return nsize <= SMALL_MAX ? block_get(rt, nsize) : malloc(nsize);
    if (osize <= SMALL_MAX && nsize <= SMALL_MAX && size_class(osize) == size_class(nsize))
        return ptr;
    if (osize > SMALL_MAX && nsize > SMALL_MAX)
        return realloc(ptr, nsize);
    void *p = nsize <= SMALL_MAX ? block_get(rt, nsize) : malloc(nsize);
    if (p == NULL)
        return NULL;
    memcpy(p, ptr, osize < nsize ? osize : nsize);
    if (osize <= SMALL_MAX)
        block_put(rt, ptr, osize);
    else
        free(ptr);
    return p;
}

static void owners_drop(struct chorus_runtime *rt);

void chorus_alloc_cache_drop(struct chorus_runtime *rt) {
    owners_drop(rt);
    for (size_t c = 0; c <= CHORUS_ALLOC_CLASSES; c++) {
        while (rt->cache[c]) {
            void *p = rt->cache[c];
            rt->cache[c] = *(void **)p;
            free(p);
        }
    }
    rt->cached_bytes = 0;
}

/* True when f is lauxlib's allocator (realloc/free) and malloc sizes small
 * chunks as size_class assumes: only then may the cache take its blocks. */
int chorus_alloc_cache_usable(lua_Alloc f) {
#ifdef CACHE_SANITIZED
    (void)f;
    return 0;
#else
    lua_State *probe = luaL_newstate();
    if (probe == NULL)
        return 0;
    void *ud;
    int ok = lua_getallocf(probe, &ud) == f;
    lua_close(probe);
    for (size_t n = 1; ok && n <= SMALL_MAX; n++) {
        void *p = malloc(n);
        ok = p != NULL && malloc_usable_size(p) >= class_usable(size_class(n));
        free(p);
    }
    return ok;
#endif
}

/* ---- owners of big blocks --------------------------------------------------
 *
 * An open-addressing table from block address to (account slot, generation),
 * with linear probing and backward-shift deletion (no tombstones). An
 * account slot is reused once its run is freed; its generation then moves
 * on, so blocks of the old run find no owner and give back to nobody. */

struct chorus_block_owner {
    uintptr_t block; /* 0: empty */
    unsigned slot, gen;
};

/* A run's account. Once its run has ended with blocks still alive, the
 * slot stays taken (run NULL, workflow set) until the last of them is
 * freed: their frees then give back to the workflow's account. */
struct chorus_account {
    struct chorus_run *run; /* NULL: free slot, or its run ended */
    unsigned gen;
    unsigned next_free;
    unsigned workflow; /* after its run ended: the workflow keeping its blocks */
    size_t live;       /* bytes of its tracked blocks alive */
};

static size_t owner_hash(uintptr_t block, size_t cap) {
    return (size_t)(((uint64_t)block >> 4) * 0x9E3779B97F4A7C15ull >> 17) & (cap - 1);
}

static struct chorus_block_owner *owner_find(struct chorus_runtime *rt, const void *p) {
    if (!rt->owners_len)
        return NULL;
    uintptr_t b = (uintptr_t)p;
    for (size_t i = owner_hash(b, rt->owners_cap);; i = (i + 1) & (rt->owners_cap - 1)) {
        if (rt->owners[i].block == b)
            return &rt->owners[i];
        if (rt->owners[i].block == 0)
            return NULL;
    }
}

static void owner_remove(struct chorus_runtime *rt, struct chorus_block_owner *e) {
    size_t cap = rt->owners_cap, hole = (size_t)(e - rt->owners);
    rt->owners[hole].block = 0;
    rt->owners_len--;
    for (size_t i = (hole + 1) & (cap - 1); rt->owners[i].block; i = (i + 1) & (cap - 1)) {
        size_t home = owner_hash(rt->owners[i].block, cap);
        /* move the entry back if the hole lies between its home and it */
        if (((i - home) & (cap - 1)) >= ((i - hole) & (cap - 1))) {
            rt->owners[hole] = rt->owners[i];
            rt->owners[i].block = 0;
            hole = i;
        }
    }
}

static void owner_put(struct chorus_block_owner *tab, size_t cap, struct chorus_block_owner e) {
    size_t i = owner_hash(e.block, cap);
    while (tab[i].block)
        i = (i + 1) & (cap - 1);
    tab[i] = e;
}

/* Records the block's owner (n bytes); without memory for it the block
 * goes untracked (given back to the current run, as small blocks are). */
static void owner_add(struct chorus_runtime *rt, void *p, size_t n, unsigned slot) {
    if ((rt->owners_len + 1) * 2 > rt->owners_cap) {
        size_t cap = rt->owners_cap ? rt->owners_cap * 2 : 256;
        struct chorus_block_owner *tab = calloc(cap, sizeof *tab);
        if (!tab)
            return;
        for (size_t i = 0; i < rt->owners_cap; i++)
            if (rt->owners[i].block)
                owner_put(tab, cap, rt->owners[i]);
        free(rt->owners);
        rt->owners = tab;
        rt->owners_cap = cap;
    }
    unsigned gen = slot ? rt->accounts[slot].gen : 0;
    owner_put(rt->owners, rt->owners_cap, (struct chorus_block_owner){(uintptr_t)p, slot, gen});
    rt->owners_len++;
    if (slot)
        rt->accounts[slot].live += n;
}

void chorus_alloc_account_open(struct chorus_runtime *rt, struct chorus_run *run) {
    run->account = 0;
    if (!rt->accounts_free) {
        if (rt->accounts_len == rt->accounts_cap) {
            unsigned cap = rt->accounts_cap ? rt->accounts_cap * 2 : 64;
            struct chorus_account *a = realloc(rt->accounts, cap * sizeof *a);
            if (!a)
                return;
            rt->accounts = a;
            rt->accounts_cap = cap;
            if (rt->accounts_len == 0)
                rt->accounts[rt->accounts_len++] = (struct chorus_account){NULL, 0, 0, 0, 0};
        }
        rt->accounts[rt->accounts_len] = (struct chorus_account){NULL, 0, 0, 0, 0};
        rt->accounts_free = rt->accounts_len++;
    }
    unsigned slot = rt->accounts_free;
    rt->accounts_free = rt->accounts[slot].next_free;
    rt->accounts[slot].run = run;
    rt->accounts[slot].workflow = 0;
    rt->accounts[slot].live = 0;
    run->account = slot;
}

/* Frees the slot: blocks still naming it (by the old generation) are
 * nobody's. */
static void slot_free(struct chorus_runtime *rt, unsigned slot) {
    struct chorus_account *a = &rt->accounts[slot];
    a->run = NULL;
    a->gen++;
    a->workflow = 0;
    a->live = 0;
    a->next_free = rt->accounts_free;
    rt->accounts_free = slot;
}

void chorus_alloc_account_close(struct chorus_runtime *rt, struct chorus_run *run) {
    unsigned slot = run->account;
    if (!slot)
        return;
    struct chorus_account *a = &rt->accounts[slot];
    run->account = 0;
    if (rt->charge_run == run)
        rt->charge_run = NULL;
    struct chorus_workflow_account *w = chorus_alloc_workflow(rt, run->workflow);
    if (a->live && w) { /* what outlives the run is its workflow's to keep */
        a->run = NULL;
        a->workflow = run->workflow;
        w->kept += a->live;
        return;
    }
    slot_free(rt, slot);
}

/* ---- workflow accounts ----------------------------------------------------- */

/* Between two collections the cap makes for a workflow that has not grown. */
#define COLLECT_EVERY_MS 1000

unsigned chorus_alloc_workflow_open(struct chorus_runtime *rt, const char *name) {
    if (rt->workflows_len == rt->workflows_cap) {
        unsigned cap = rt->workflows_cap ? rt->workflows_cap * 2 : 16;
        struct chorus_workflow_account *w = realloc(rt->workflows, cap * sizeof *w);
        if (!w)
            return 0;
        rt->workflows = w;
        rt->workflows_cap = cap;
        if (rt->workflows_len == 0)
            rt->workflows[rt->workflows_len++] = (struct chorus_workflow_account){0};
    }
    char *copy = strdup(name);
    if (!copy)
        return 0;
    rt->workflows[rt->workflows_len] = (struct chorus_workflow_account){.name = copy};
    return rt->workflows_len++;
}

int chorus_alloc_workflow_rename(struct chorus_runtime *rt, unsigned id, const char *name) {
    struct chorus_workflow_account *w = chorus_alloc_workflow(rt, id);
    char *copy = w ? strdup(name) : NULL;
    if (!copy)
        return 0;
    free(w->name);
    w->name = copy;
    return 1;
}

struct chorus_workflow_account *chorus_alloc_workflow(struct chorus_runtime *rt, unsigned id) {
    return id && id < rt->workflows_len ? &rt->workflows[id] : NULL;
}

int chorus_alloc_workflow_over(struct chorus_runtime *rt, lua_State *L, unsigned id, size_t cap) {
    struct chorus_workflow_account *w = chorus_alloc_workflow(rt, id);
    if (!w || !cap)
        return 0;
    if (w->kept <= cap) {
        w->collected = 0;
        return 0;
    }
    uint64_t now = uv_now(&rt->loop);
    if (w->kept > w->collected || now - w->collected_ms >= COLLECT_EVERY_MS) {
        lua_gc(L, LUA_GCCOLLECT);
        w = chorus_alloc_workflow(rt, id);
        w->collected = w->kept;
        w->collected_ms = now;
    }
    return w->kept > cap;
}

static void workflows_drop(struct chorus_runtime *rt) {
    for (unsigned i = 1; i < rt->workflows_len; i++)
        free(rt->workflows[i].name);
    free(rt->workflows);
    rt->workflows = NULL;
    rt->workflows_len = rt->workflows_cap = 0;
}

struct chorus_run *chorus_alloc_charge_to(struct chorus_runtime *rt, struct chorus_run *run) {
    struct chorus_run *prev = rt->charge_run;
    rt->charge_run = run;
    return prev;
}

/* The account a tracked block's bytes belong to: NULL when nobody's (made
 * outside any run, or its run ended keeping nothing for a workflow). */
static struct chorus_account *owner_account(struct chorus_runtime *rt,
                                            const struct chorus_block_owner *e) {
    if (!e->slot || rt->accounts[e->slot].gen != e->gen)
        return NULL;
    return &rt->accounts[e->slot];
}

/* A tracked block of a, n bytes, is freed or moved: its bytes leave a, and
 * the workflow keeping them when a's run has ended; such a slot is free
 * once its last block is. */
static void account_release(struct chorus_runtime *rt, struct chorus_account *a, size_t n) {
    a->live = a->live > n ? a->live - n : 0;
    if (a->run)
        return;
    struct chorus_workflow_account *w = chorus_alloc_workflow(rt, a->workflow);
    if (w)
        w->kept = w->kept > n ? w->kept - n : 0;
    if (!a->live)
        slot_free(rt, (unsigned)(a - rt->accounts));
}

static void give_back(struct chorus_run *run, size_t n) {
    if (run)
        run->mem = run->mem > n ? run->mem - n : 0;
}

static void owners_drop(struct chorus_runtime *rt) {
    free(rt->owners);
    rt->owners = NULL;
    rt->owners_cap = rt->owners_len = 0;
    free(rt->accounts);
    rt->accounts = NULL;
    rt->accounts_len = rt->accounts_cap = rt->accounts_free = 0;
    workflows_drop(rt);
}

void *chorus_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    struct chorus_runtime *rt = ud;
    size_t old = ptr ? osize : 0;
    struct chorus_run *forced = rt->charge_run;
    struct chorus_run *run = forced ? forced : chorus_charged_run(rt);
    /* who paid for the old bytes: the block's owner when it is tracked */
    struct chorus_block_owner *e = old > CHORUS_ALLOC_OWNED_MIN ? owner_find(rt, ptr) : NULL;
    struct chorus_account *acct = e ? owner_account(rt, e) : NULL;
    struct chorus_run *payer = e ? (acct ? acct->run : NULL) : run;
    /* what the charged run must be able to take: the growth of its own
     * block, the whole block when it takes it over from another payer */
    size_t charge = payer == run ? (nsize > old ? nsize - old : 0) : nsize;
    if (run && nsize > old && !forced) {
        if (run->killed == KILL_MEMORY)
            return NULL;
        if (run->limits.run_memory && run->mem + charge > run->limits.run_memory) {
            run->killed = KILL_MEMORY;
            return NULL;
        }
    }
    void *p = rt->cache_on ? cached_alloc(rt, ptr, old, nsize)
                           : rt->base_alloc(rt->base_alloc_ud, ptr, osize, nsize);
    if (!p && nsize > 0)
        return NULL;
    rt->lua_bytes += nsize;
    rt->lua_bytes -= old;
    if (payer == run) {
        if (run) {
            if (nsize > old)
                run->mem += nsize - old;
            else
                give_back(run, old - nsize);
        }
    } else {
        give_back(payer, old);
        if (run)
            run->mem += nsize;
    }
    if (e) {
        if (acct)
            account_release(rt, acct, old);
        owner_remove(rt, e);
    }
    /* a run without an account keeps small blocks' rule for all */
    if (nsize > CHORUS_ALLOC_OWNED_MIN && !(run && !run->account))
        owner_add(rt, p, nsize, run ? run->account : 0);
    return p;
}
