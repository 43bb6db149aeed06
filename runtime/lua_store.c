/* lua_store.c — the durable store (store.c) as Lua userdata.
 *
 *   core.store_open(dir, { sync = true, map_size_mb = 1024, max_size_mb = 8192 })
 *       → store (the map starts at map_size_mb and grows up to max_size_mb)
 *   store:put(db, key, value) / :del(db, key) / :del_prefix(db, prefix)
 *       queue writes for the next group commit (db: "runs", "journal", ...)
 *   store:put_json(db, key, value [, max]) → bytes: queues value as JSON
 *       (core.json's encoding, raising its message), encoded straight into
 *       the batch: no Lua string made and collected per record; returns
 *       the bytes queued, or nil and the encoded size when that is over
 *       max (nothing queued: a run's record cap, chorus.journal)
 *   store:counter(slot, key, n) sets counter slot (0 to 65535, numbered by
 *       the caller) to the integer n, kept in meta under key: only the last
 *       n set before a group commit is written, with it (store.h)
 *   store:commit() → parks the task until every write queued so far is on
 *       disk; raises when the batch failed
 *   store:get(db, key) → value or nil (last committed state)
 *   store:scan(db, { prefix =, from =, to =, limit = }) → { {key, value}, ... }
 *       in key order; from inclusive, to exclusive
 *     get and scan raise "store: corrupt record in database DB, key 'K': ..."
 *     when a value's checksum does not match, and scan raises when LMDB
 *     reports its pages damaged: a bad record is never skipped silently
 *   store:verify() → { counts = { runs = n, ... }, bad = { {db =, key =,
 *       why =, message =}, ... } }: every value's checksum and JSON
 *   store:count(db) → number of records (last committed state)
 *   store:index(id, t, { key, ... }, summary) queues the index row of run id
 *       (store_index.h): t (µs, an integer), the index keys it is under
 *       (at most 16, 1 to 511 bytes each), its summary (a string)
 *   store:index_list(key, { also = { key, ... }, before =, since =, until =,
 *       limit = }) → { {id, t, summary}, ... }: the runs under key newest
 *       first, each also under every key of also (at most 4), with a time
 *       key (t .. id) below before, since <= t < until; raises naming a
 *       corrupt row or run record
 *   store:lock([wait_seconds]) → true, or nil and why: takes serve.lock in
 *       the folder (serve_lock.c) so that one server at a time runs the
 *       relay and the recovery; close lets go of it
 *   store:stats() → { commits =, ops =, moot =, failures =, pending_ops =, writing =,
 *       full =, grows =, map_size =, max_size = }
 *   store:close()
 *
 * Invariant: a commit waiter is either on the store's list or has woken its
 * task, never both: the task's cancel function takes it off the list.
 */
#include "lua_store.h"

#include "lua_bindings.h"
#include "lua_json.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler.h"
#include "serve_lock.h"
#include "store.h"
#include "store_index.h"

#define STORE_MT "chorus.store"

/* storage.max_size_mb when unset: room to grow well past the 1 GiB first
 * map, yet a cap before a runaway fills the disk. */
#define DEFAULT_MAX_MB 8192

struct lstore {
    struct chorus_store *st;
    int lock_fd;  /* serve.lock, held while this process serves; -1 */
    int guest_fd; /* guest-NAME.lock, held while this process writes as a guest; -1 */
    char guest[65];
    char dir[4096];
};

struct commit_wait {
    struct chorus_store *st;
    struct chorus_task *task;
    void *handle;
};

static struct chorus_store *check_store(lua_State *L) {
    struct lstore *ls = luaL_checkudata(L, 1, STORE_MT);
    if (!ls->st)
        luaL_error(L, "the store is closed");
    return ls->st;
}

static int check_db(lua_State *L, int idx) {
    const char *name = luaL_checkstring(L, idx);
    int db = chorus_store_db_index(name);
    if (db < 0)
        luaL_error(L, "store: no database named '%s'", name);
    return db;
}

/* A key at idx: LMDB's default key limit is 511 bytes, and an empty key is
 * never one of ours. */
static const char *check_key(lua_State *L, int idx, size_t *len) {
    const char *k = luaL_checklstring(L, idx, len);
    if (*len == 0 || *len > 511)
        luaL_error(L, "store: keys are 1 to 511 bytes");
    return k;
}

static int store_put(lua_State *L) {
    struct chorus_store *st = check_store(L);
    int db = check_db(L, 2);
    size_t klen, vlen;
    const char *k = check_key(L, 3, &klen);
    const char *v = luaL_checklstring(L, 4, &vlen);
    if (chorus_store_put(st, db, k, klen, v, vlen) != 0)
        return luaL_error(L, "store: out of memory");
    return 0;
}

static int store_put_json(lua_State *L) {
    struct chorus_store *st = check_store(L);
    int db = check_db(L, 2);
    size_t klen;
    const char *k = check_key(L, 3, &klen);
    luaL_checkany(L, 4);
    lua_Integer max = luaL_optinteger(L, 5, -1);
    char err[1024];
    char *v = chorus_json_encode(L, 4, err, sizeof err);
    if (!v) {
        lua_pushstring(L, err);
        return lua_error(L);
    }
    size_t vlen = strlen(v);
    if (max >= 0 && vlen > (size_t)max) {
        free(v);
        lua_pushnil(L);
        lua_pushinteger(L, (lua_Integer)vlen);
        return 2;
    }
    int rc = chorus_store_put(st, db, k, klen, v, vlen);
    free(v);
    if (rc != 0)
        return luaL_error(L, "store: out of memory");
    lua_pushinteger(L, (lua_Integer)vlen);
    return 1;
}

static int store_counter(lua_State *L) {
    struct chorus_store *st = check_store(L);
    lua_Integer slot = luaL_checkinteger(L, 2);
    size_t klen;
    const char *k = check_key(L, 3, &klen);
    lua_Integer value = luaL_checkinteger(L, 4);
    luaL_argcheck(L, slot >= 0 && slot <= 65535, 2, "slots are 0 to 65535");
    if (chorus_store_counter(st, (unsigned)slot, k, klen, (long long)value) != 0)
        return luaL_error(L, "store: out of memory");
    return 0;
}

static int store_batch(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)chorus_store_batch(check_store(L)));
    return 1;
}

static int store_del_kind(lua_State *L, int prefix) {
    struct chorus_store *st = check_store(L);
    int db = check_db(L, 2);
    size_t klen;
    const char *k = check_key(L, 3, &klen);
    int rc = prefix ? chorus_store_del_prefix(st, db, k, klen) : chorus_store_del(st, db, k, klen);
    if (rc != 0)
        return luaL_error(L, "store: out of memory");
    return 0;
}

static int store_del(lua_State *L) { return store_del_kind(L, 0); }
static int store_del_prefix(lua_State *L) { return store_del_kind(L, 1); }

static void commit_done(void *data, const char *err) {
    struct commit_wait *w = data;
    lua_State *co = w->task->co;
    if (err) {
        lua_pushnil(co);
        lua_pushstring(co, err);
    } else {
        lua_pushboolean(co, 1);
        lua_pushnil(co);
    }
    chorus_task_wake(w->task, 2);
    free(w);
}

static void commit_cancel(void *data) {
    struct commit_wait *w = data;
    chorus_store_unwait(w->st, w->handle);
    free(w);
}

static int commit_resumed(lua_State *L, int status, lua_KContext ctx) {
    (void)status;
    (void)ctx;
    if (!lua_toboolean(L, -2))
        return lua_error(L);
    return 0;
}

static int store_commit(lua_State *L) {
    struct chorus_store *st = check_store(L);
    struct chorus_task *t = chorus_task_waitable(L, 0);
    struct commit_wait *w = malloc(sizeof *w);
    if (!w)
        return luaL_error(L, "store: out of memory");
    int oom;
    w->st = st;
    w->task = t;
    w->handle = chorus_store_wait(st, commit_done, w, &oom);
    if (!w->handle) {
        free(w);
        if (oom)
            return luaL_error(L, "store: out of memory");
        return 0; /* nothing outstanding: already durable */
    }
    chorus_task_park(t, commit_cancel, w);
    return lua_yieldk(L, 0, 0, commit_resumed);
}

/* chorus_store_get's record: pushed as the value. */
static void push_value(void *data, const void *key, size_t klen, const void *val, size_t vlen) {
    (void)key;
    (void)klen;
    lua_pushlstring(data, val, vlen);
}

static int store_get(lua_State *L) {
    struct chorus_store *st = check_store(L);
    int db = check_db(L, 2);
    size_t klen;
    const char *k = luaL_checklstring(L, 3, &klen);
    char err[512];
    int found = chorus_store_get(st, db, k, klen, push_value, L, err, sizeof err);
    if (found < 0)
        return luaL_error(L, "%s", err);
    if (!found)
        lua_pushnil(L);
    return 1;
}

static const char *opt_string_field(lua_State *L, int idx, const char *name, size_t *len) {
    lua_getfield(L, idx, name);
    const char *s = lua_isnil(L, -1) ? NULL : luaL_checklstring(L, -1, len);
    lua_pop(L, 1); /* the string stays anchored in the options table */
    return s;
}

/* chorus_store_scan's records: { key, value } appended to the list at -1. */
struct scan_list {
    lua_State *L;
    lua_Integer n;
};

static void push_record(void *data, const void *key, size_t klen, const void *val, size_t vlen) {
    struct scan_list *list = data;
    lua_State *L = list->L;
    lua_createtable(L, 2, 0);
    lua_pushlstring(L, key, klen);
    lua_rawseti(L, -2, 1);
    lua_pushlstring(L, val, vlen);
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, -2, ++list->n);
}

static int store_scan(lua_State *L) {
    struct chorus_store *st = check_store(L);
    int db = check_db(L, 2);
    struct chorus_store_range r = {.limit = 1000};
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        r.prefix = opt_string_field(L, 3, "prefix", &r.plen);
        r.from = opt_string_field(L, 3, "from", &r.flen);
        r.to = opt_string_field(L, 3, "to", &r.tlen);
        lua_getfield(L, 3, "limit");
        lua_Integer limit = luaL_optinteger(L, -1, 1000);
        r.limit = limit > 0 ? (size_t)limit : 0;
        lua_pop(L, 1);
    }
    lua_newtable(L);
    struct scan_list list = {L, 0};
    char err[512];
    if (chorus_store_scan(st, db, &r, push_record, &list, err, sizeof err) < 0)
        return luaL_error(L, "%s", err);
    return 1;
}

/* st:snapshot(fn): fn's results; every read of st inside fn sees one
 * committed state (chorus_store_pin). fn cannot yield (lua_pcall): the
 * loop must not run while the read transaction is held. */
static int store_snapshot(lua_State *L) {
    struct lstore *ls = luaL_checkudata(L, 1, STORE_MT);
    struct chorus_store *st = check_store(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    char err[512];
    if (chorus_store_pin(st, err, sizeof err) < 0)
        return luaL_error(L, "%s", err);
    lua_settop(L, 2);
    int rc = lua_pcall(L, 0, LUA_MULTRET, 0);
    if (ls->st == st) /* (fn may have closed the store) */
        chorus_store_unpin(st);
    if (rc != LUA_OK)
        return lua_error(L);
    return lua_gettop(L) - 1;
}

static int store_index(lua_State *L) {
    struct chorus_store *st = check_store(L);
    size_t idlen, slen;
    const char *id = check_key(L, 2, &idlen);
    lua_Integer t = luaL_checkinteger(L, 3);
    luaL_checktype(L, 4, LUA_TTABLE);
    const char *summary = luaL_checklstring(L, 5, &slen);
    luaL_argcheck(L, t >= 0, 3, "a time in µs since the epoch");
    int n = (int)luaL_len(L, 4);
    luaL_argcheck(L, n <= CHORUS_INDEX_MAX_KEYS, 4, "at most 16 index keys");
    const char *keys[CHORUS_INDEX_MAX_KEYS];
    size_t klens[CHORUS_INDEX_MAX_KEYS];
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 4, i + 1);
        keys[i] = luaL_checklstring(L, -1, &klens[i]);
        luaL_argcheck(L, klens[i] > 0 && klens[i] <= 511, 4, "index keys are 1 to 511 bytes");
        lua_pop(L, 1); /* the string stays anchored in the table */
    }
    char *row;
    size_t rowlen;
    if (chorus_store_index_row((uint64_t)t, keys, klens, n, summary, slen, &row, &rowlen) != 0)
        return luaL_error(L, "store: out of memory");
    int rc = chorus_store_index_put(st, id, idlen, row, rowlen);
    free(row);
    if (rc != 0)
        return luaL_error(L, "store: out of memory");
    return 0;
}

static uint64_t opt_time_field(lua_State *L, int idx, const char *name) {
    lua_getfield(L, idx, name);
    lua_Integer v = luaL_optinteger(L, -1, 0);
    lua_pop(L, 1);
    return v > 0 ? (uint64_t)v : 0;
}

/* Pushes the page's rows: { {id, t, summary}, ... }. */
static int push_page(lua_State *L) {
    const struct chorus_index_page *p = lua_touserdata(L, 1);
    lua_createtable(L, (int)p->n, 0);
    for (size_t i = 0; i < p->n; i++) {
        const struct chorus_index_hit *h = &p->hits[i];
        lua_createtable(L, 3, 0);
        lua_pushlstring(L, p->bytes + h->id_off, h->id_len);
        lua_rawseti(L, -2, 1);
        lua_pushinteger(L, (lua_Integer)h->t);
        lua_rawseti(L, -2, 2);
        lua_pushlstring(L, p->bytes + h->sum_off, h->sum_len);
        lua_rawseti(L, -2, 3);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static int store_index_list(lua_State *L) {
    struct chorus_store *st = check_store(L);
    struct chorus_index_query q = {0};
    q.key = luaL_checklstring(L, 2, &q.klen);
    q.limit = 100;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        q.before = opt_string_field(L, 3, "before", &q.beforelen);
        q.since = opt_time_field(L, 3, "since");
        q.until = opt_time_field(L, 3, "until");
        lua_getfield(L, 3, "limit");
        lua_Integer limit = luaL_optinteger(L, -1, 100);
        lua_pop(L, 1);
        q.limit = limit > 0 ? (size_t)limit : 0;
        lua_getfield(L, 3, "also");
        if (!lua_isnil(L, -1)) {
            luaL_checktype(L, -1, LUA_TTABLE);
            int n = (int)luaL_len(L, -1);
            if (n > CHORUS_INDEX_MAX_ALSO)
                return luaL_error(L, "store: at most 4 also keys");
            for (int i = 0; i < n; i++) {
                lua_rawgeti(L, -1, i + 1);
                q.also[i] = luaL_checklstring(L, -1, &q.alsolen[i]);
                lua_pop(L, 1);
            }
            q.nalso = n;
        }
        lua_pop(L, 1);
    }
    if (q.klen == 0 || q.klen > 511)
        return luaL_error(L, "store: keys are 1 to 511 bytes");
    struct chorus_index_page page = {0};
    char err[400];
    if (chorus_store_index_list(st, &q, &page, err, sizeof err) != 0) {
        chorus_store_index_page_free(&page);
        return luaL_error(L, "store: %s", err);
    }
    lua_pushcfunction(L, push_page);
    lua_pushlightuserdata(L, &page);
    int rc = lua_pcall(L, 1, 1, 0);
    chorus_store_index_page_free(&page);
    if (rc != LUA_OK)
        return lua_error(L);
    return 1;
}

static int store_count(lua_State *L) {
    struct chorus_store *st = check_store(L);
    int db = check_db(L, 2);
    char err[512];
    long long n = chorus_store_count(st, db, err, sizeof err);
    if (n < 0)
        return luaL_error(L, "%s", err);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

static int store_stats(lua_State *L) {
    struct chorus_store *st = check_store(L);
    struct chorus_store_stats s;
    chorus_store_stats(st, &s);
    lua_createtable(L, 0, 9);
    lua_pushboolean(L, s.full);
    lua_setfield(L, -2, "full");
    lua_pushinteger(L, (lua_Integer)s.grows);
    lua_setfield(L, -2, "grows");
    lua_pushinteger(L, (lua_Integer)s.map_size);
    lua_setfield(L, -2, "map_size");
    lua_pushinteger(L, (lua_Integer)s.max_size);
    lua_setfield(L, -2, "max_size");
    lua_pushinteger(L, (lua_Integer)s.commits);
    lua_setfield(L, -2, "commits");
    lua_pushinteger(L, (lua_Integer)s.ops);
    lua_setfield(L, -2, "ops");
    lua_pushinteger(L, (lua_Integer)s.moot);
    lua_setfield(L, -2, "moot");
    lua_pushinteger(L, (lua_Integer)s.failures);
    lua_setfield(L, -2, "failures");
    lua_pushinteger(L, (lua_Integer)s.pending_ops);
    lua_setfield(L, -2, "pending_ops");
    lua_pushboolean(L, s.writing);
    lua_setfield(L, -2, "writing");
    return 1;
}

/* verify's bad entries go into a C list first: the Lua table is built
 * after the read transaction is done, so a Lua error cannot leave it open. */
struct bad_entry {
    int db;
    size_t klen;
    char *key; /* NULL: the database could not be walked */
    char why[64];
    struct bad_entry *next;
};

struct bad_list {
    struct bad_entry *head, **tail;
    int oom;
};

static void on_bad(void *data, int db, const void *key, size_t klen, const char *why) {
    struct bad_list *l = data;
    struct bad_entry *e = calloc(1, sizeof *e);
    if (!e || (key && !(e->key = malloc(klen ? klen : 1)))) {
        free(e);
        l->oom = 1;
        return;
    }
    e->db = db;
    e->klen = klen;
    if (key && klen)
        memcpy(e->key, key, klen);
    snprintf(e->why, sizeof e->why, "%s", why);
    *l->tail = e;
    l->tail = &e->next;
}

static void free_bad(struct bad_list *l) {
    while (l->head) {
        struct bad_entry *e = l->head;
        l->head = e->next;
        free(e->key);
        free(e);
    }
}

static int push_verify(lua_State *L) {
    struct bad_list *l = lua_touserdata(L, 1);
    const long *counts = lua_touserdata(L, 2);
    lua_createtable(L, 0, 2);
    lua_createtable(L, 0, STORE_NDB);
    for (int db = 0; db < STORE_NDB; db++) {
        lua_pushinteger(L, counts[db]);
        lua_setfield(L, -2, chorus_store_db_name(db));
    }
    lua_setfield(L, -2, "counts");
    lua_newtable(L);
    int n = 0;
    for (struct bad_entry *e = l->head; e; e = e->next) {
        char msg[400];
        lua_createtable(L, 0, 4);
        lua_pushstring(L, chorus_store_db_name(e->db));
        lua_setfield(L, -2, "db");
        if (e->key) {
            lua_pushlstring(L, e->key, e->klen);
            lua_setfield(L, -2, "key");
            chorus_store_describe(msg, sizeof msg, e->db, e->key, e->klen, e->why);
        } else {
            snprintf(msg, sizeof msg, "database %s cannot be read: %s", chorus_store_db_name(e->db),
                     e->why);
        }
        lua_pushstring(L, e->why);
        lua_setfield(L, -2, "why");
        lua_pushstring(L, msg);
        lua_setfield(L, -2, "message");
        lua_rawseti(L, -2, ++n);
    }
    lua_setfield(L, -2, "bad");
    return 1;
}

/* store:verify([skip]): skip lists databases to leave unread. */
static int store_verify(lua_State *L) {
    struct chorus_store *st = check_store(L);
    unsigned skip = 0;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        for (lua_Integer i = 1, n = luaL_len(L, 2); i <= n; i++) {
            lua_geti(L, 2, i);
            int db = chorus_store_db_index(luaL_checkstring(L, -1));
            if (db < 0)
                return luaL_error(L, "store:verify: no database '%s'", lua_tostring(L, -1));
            skip |= 1u << db;
            lua_pop(L, 1);
        }
    }
    struct bad_list l = {NULL, &l.head, 0};
    long counts[STORE_NDB];
    char err[300];
    long nbad = chorus_store_verify(st, counts, skip, on_bad, &l, err, sizeof err);
    if (nbad < 0 || l.oom) {
        free_bad(&l);
        return nbad < 0 ? luaL_error(L, "%s", err) : luaL_error(L, "store: out of memory");
    }
    lua_pushcfunction(L, push_verify);
    lua_pushlightuserdata(L, &l);
    lua_pushlightuserdata(L, counts);
    int rc = lua_pcall(L, 2, 1, 0);
    free_bad(&l);
    if (rc != LUA_OK)
        return lua_error(L);
    return 1;
}

static int store_lock(lua_State *L) {
    struct lstore *ls = luaL_checkudata(L, 1, STORE_MT);
    if (ls->lock_fd < 0) {
        char err[4400];
        ls->lock_fd = chorus_serve_lock(ls->dir, luaL_optnumber(L, 2, 0), err, sizeof err);
        if (ls->lock_fd < 0) {
            luaL_pushfail(L);
            lua_pushstring(L, err);
            return 2;
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* st:hold_guest(name): takes the guest lock NAME (serve_lock.h) until the
 * store closes or the process dies; true, or fail and why. */
static int store_hold_guest(lua_State *L) {
    struct lstore *ls = luaL_checkudata(L, 1, STORE_MT);
    const char *name = luaL_checkstring(L, 2);
    luaL_argcheck(L, ls->guest_fd < 0, 1, "holds a guest lock already");
    char err[4400];
    int fd = chorus_guest_lock(ls->dir, name, err, sizeof err);
    if (fd < 0) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    ls->guest_fd = fd;
    snprintf(ls->guest, sizeof ls->guest, "%s", name);
    lua_pushboolean(L, 1);
    return 1;
}

/* st:guest_alive(name): whether a live process holds the guest lock NAME
 * (nil for a name no guest could have). */
static int store_guest_alive(lua_State *L) {
    struct lstore *ls = luaL_checkudata(L, 1, STORE_MT);
    int alive = chorus_guest_alive(ls->dir, luaL_checkstring(L, 2));
    if (alive < 0)
        lua_pushnil(L);
    else
        lua_pushboolean(L, alive);
    return 1;
}

static int store_close(lua_State *L) {
    struct lstore *ls = luaL_checkudata(L, 1, STORE_MT);
    chorus_serve_unlock(ls->lock_fd);
    ls->lock_fd = -1;
    chorus_guest_unlock(ls->dir, ls->guest, ls->guest_fd);
    ls->guest_fd = -1;
    if (ls->st) {
        chorus_store_close(ls->st);
        ls->st = NULL;
    }
    return 0;
}

int chorus_lua_store_new(lua_State *L) {
    struct chorus_runtime *rt = chorus_runtime_of(L);
    const char *dir = luaL_checkstring(L, 1);
    struct chorus_store_opts opts = {
        .sync = 1, .map_size = 0, .max_size = (size_t)DEFAULT_MAX_MB << 20};
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "sync");
        if (!lua_isnil(L, -1))
            opts.sync = lua_toboolean(L, -1);
        lua_getfield(L, 2, "map_size_mb");
        lua_Integer mb = luaL_optinteger(L, -1, 1024);
        if (mb < 1 || mb > (1 << 24))
            return luaL_error(L, "store: map_size_mb must be between 1 and 16777216");
        opts.map_size = (size_t)mb << 20;
        lua_getfield(L, 2, "max_size_mb");
        lua_Integer max = luaL_optinteger(L, -1, mb > DEFAULT_MAX_MB ? mb : DEFAULT_MAX_MB);
        if (max < 1 || max > (1 << 24))
            return luaL_error(L, "store: max_size_mb must be between 1 and 16777216");
        opts.max_size = (size_t)max << 20;
        lua_pop(L, 3);
    }
    struct lstore *ls = lua_newuserdatauv(L, sizeof *ls, 0);
    ls->st = NULL;
    ls->lock_fd = -1;
    ls->guest_fd = -1;
    ls->guest[0] = 0;
    snprintf(ls->dir, sizeof ls->dir, "%s", dir);
    if (luaL_newmetatable(L, STORE_MT)) {
        static const luaL_Reg methods[] = {
            {"put", store_put},
            {"put_json", store_put_json},
            {"del", store_del},
            {"del_prefix", store_del_prefix},
            {"get", store_get},
            {"scan", store_scan},
            {"snapshot", store_snapshot},
            {"commit", store_commit},
            {"stats", store_stats},
            {"close", store_close},
            {"__gc", store_close},
            {"count", store_count},
            {"lock", store_lock},
            {"hold_guest", store_hold_guest},
            {"guest_alive", store_guest_alive},
            {"verify", store_verify},
            {"counter", store_counter},
            {"batch", store_batch},
            {NULL, NULL},
        };
        luaL_setfuncs(L, methods, 0);
        static const luaL_Reg index_methods[] = {
            {"index", store_index},
            {"index_list", store_index_list},
            {NULL, NULL},
        };
        luaL_setfuncs(L, index_methods, 0);
        lua_pushvalue(L, -1);
        lua_setfield(L, -2, "__index");
    }
    lua_setmetatable(L, -2);
    char err[512];
    ls->st = chorus_store_open(&rt->loop, dir, &opts, err, sizeof err);
    if (!ls->st)
        return luaL_error(L, "%s", err);
    return 1;
}

void chorus_lua_store_open(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"store_open", chorus_lua_store_new},
        {NULL, NULL},
    };
    chorus_lua_register(L, funcs);
}
