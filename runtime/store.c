/* store.c — LMDB environment with group commit on a writer thread (contract
 * in store.h). */
#include "store_lmdb.h"

#include "store_index.h"

#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

static const char *const DB_NAMES[STORE_NDB] = {
    "runs", "journal",    "idempotency", "outbox",    "dlq",       "scripts",  "timers",
    "meta", "deliveries", "events",      "schedules", "run_index", "run_rows", "outbox_lanes",
};

/* OP_INDEX: a run's index row (store_index.h), key the run id. */
enum op_kind { OP_PUT, OP_DEL, OP_DEL_PREFIX, OP_INDEX };

struct op {
    unsigned char kind, db;
    unsigned char moot;     /* a later op of the batch makes it moot: not applied */
    size_t off, klen, vlen; /* key then value, at off in the batch's bytes */
};

struct batch {
    uint64_t seq;
    struct op *ops;
    size_t nops, cap;
    size_t nmoot; /* ops left out as moot (mark_moot) */
    char *bytes;
    size_t used, room;
};

struct waiter {
    uint64_t seq; /* durable once this batch has committed */
    chorus_store_done_fn done;
    void *data;
    struct waiter *next;
};

/* A counter kept in meta, written once per batch (chorus_store_counter). */
struct counter {
    char *key; /* NULL: slot unused */
    size_t klen;
    long long value;
    int dirty;
};

struct chorus_store {
    MDB_env *env;
    MDB_dbi dbi[STORE_NDB];
    MDB_txn *reader; /* reset between reads, renewed on the next */
    int reader_live;
    int pinned; /* chorus_store_pin's depth: the reader stays live */
    uv_loop_t *loop;
    uv_prepare_t prepare; /* hands the pending batch over, once a turn */
    uv_async_t async;     /* the writer thread says its batch is done */
    int handles_open;
    struct batch *pending, *writing, *spare;
    uint64_t next_seq;
    struct waiter *waiters, *waiters_tail; /* by seq */
    /* shared with the writer thread, under mu */
    uv_thread_t thread;
    uv_mutex_t mu;
    uv_cond_t cond;
    struct batch *submitted; /* for the writer */
    struct batch *finished;  /* from the writer */
    char finished_err[256];
    int finished_full; /* the finished batch failed with MDB_MAP_FULL */
    int quit;
    struct chorus_store_stats stats;
    size_t map_size, max_size; /* bytes: mapped now, may grow to */
    struct counter *counters;  /* by slot */
    size_t ncounters;
};

int chorus_store_db_index(const char *name) {
    for (int i = 0; i < STORE_NDB; i++)
        if (strcmp(name, DB_NAMES[i]) == 0)
            return i;
    return -1;
}

const char *chorus_store_db_name(int db) { return db >= 0 && db < STORE_NDB ? DB_NAMES[db] : "?"; }

MDB_dbi chorus_store_dbi(const struct chorus_store *st, int db) { return st->dbi[db]; }

int chorus_store_db_is_json(int db) {
    return db != STORE_SCRIPTS && db != STORE_META && db != STORE_RUN_INDEX && db != STORE_RUN_ROWS;
}

/* ---- checksums ----------------------------------------------------------- */

#define SCHEMA_KEY "schema_version"

/* meta.schema_version is the one value kept without a checksum. */
static int is_schema_key(int db, const void *key, size_t klen) {
    return db == STORE_META && klen == strlen(SCHEMA_KEY) && memcmp(key, SCHEMA_KEY, klen) == 0;
}

/* The key seeds the hash: a value moved under another key does not match. */
static uint64_t checksum(const void *key, size_t klen, const void *val, size_t vlen) {
    return XXH3_64bits_withSeed(val, vlen, XXH3_64bits(key, klen));
}

static void put_le64(unsigned char *out, uint64_t v) {
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char *in) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | in[i];
    return v;
}

int chorus_store_value(int db, const MDB_val *key, const MDB_val *raw, MDB_val *val) {
    if (is_schema_key(db, key->mv_data, key->mv_size)) {
        *val = *raw;
        return 0;
    }
    if (raw->mv_size < CHORUS_STORE_CHECKSUM_LEN)
        return -1;
    val->mv_data = (char *)raw->mv_data + CHORUS_STORE_CHECKSUM_LEN;
    val->mv_size = raw->mv_size - CHORUS_STORE_CHECKSUM_LEN;
    uint64_t want = get_le64(raw->mv_data);
    return checksum(key->mv_data, key->mv_size, val->mv_data, val->mv_size) == want ? 0 : -1;
}

void chorus_store_describe(char *out, size_t outlen, int db, const void *key, size_t klen,
                           const char *why) {
    char shown[200];
    size_t n = 0;
    const unsigned char *k = key;
    for (size_t i = 0; i < klen && n + 5 < sizeof shown; i++) {
        if (k[i] >= 0x20 && k[i] < 0x7f && k[i] != '\\' && k[i] != '\'')
            shown[n++] = (char)k[i];
        else
            n += (size_t)snprintf(shown + n, sizeof shown - n, "\\x%02x", k[i]);
    }
    shown[n] = 0;
    snprintf(out, outlen, "corrupt record in database %s, key '%s%s': %s", chorus_store_db_name(db),
             shown, n + 5 >= sizeof shown ? "..." : "", why);
}

/* ---- batches ------------------------------------------------------------- */

static struct batch *batch_new(uint64_t seq) {
    struct batch *b = calloc(1, sizeof *b);
    if (b)
        b->seq = seq;
    return b;
}

static void batch_free(struct batch *b) {
    if (!b)
        return;
    free(b->ops);
    free(b->bytes);
    free(b);
}

static int batch_add(struct batch *b, int kind, int db, const void *key, size_t klen,
                     const void *val, size_t vlen) {
    if (b->nops == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        struct op *ops = realloc(b->ops, cap * sizeof *ops);
        if (!ops)
            return -1;
        b->ops = ops;
        b->cap = cap;
    }
    /* a put's value goes behind its checksum */
    size_t head = (kind == OP_PUT || kind == OP_INDEX) && !is_schema_key(db, key, klen)
                      ? CHORUS_STORE_CHECKSUM_LEN
                      : 0;
    size_t need = klen + head + vlen;
    if (b->room - b->used < need) {
        size_t room = b->room ? b->room : 4096;
        while (room - b->used < need)
            room *= 2;
        char *bytes = realloc(b->bytes, room);
        if (!bytes)
            return -1;
        b->bytes = bytes;
        b->room = room;
    }
    struct op *o = &b->ops[b->nops++];
    o->kind = (unsigned char)kind;
    o->db = (unsigned char)db;
    o->moot = 0;
    o->off = b->used;
    o->klen = klen;
    o->vlen = head + vlen;
    memcpy(b->bytes + b->used, key, klen);
    if (head)
        put_le64((unsigned char *)b->bytes + b->used + klen, checksum(key, klen, val, vlen));
    if (vlen)
        memcpy(b->bytes + b->used + klen + head, val, vlen);
    b->used += need;
    return 0;
}

/* Drops the index of the run whose key (in the map) is id; a copy of the key
 * is used, as the drop writes to other pages. 0 or an LMDB error. */
static int drop_run_index(struct chorus_store *st, MDB_txn *txn, const MDB_val *id) {
    char key[512];
    if (id->mv_size > sizeof key)
        return 0;
    memcpy(key, id->mv_data, id->mv_size);
    MDB_val k = {id->mv_size, key};
    return chorus_store_index_drop(txn, st->dbi[STORE_RUN_INDEX], st->dbi[STORE_RUN_ROWS], &k);
}

/* ---- moot writes ------------------------------------------------------------ */

/* A write a later op of the same batch undoes is never applied: the batch is
 * one transaction, so what it leaves is the same, and the pages the write
 * would have dirtied (and the commit then writes and syncs) stay clean. A
 * run that finishes within one group-commit window so writes its record
 * once: its journal entries go with the drop of its journal, its first
 * record and index row with the finished ones, its timer with its delete.
 * The rules, each keeping the transaction's outcome:
 *   put K       moot when a later put or delete of K follows, or a later
 *               delete by prefix covers K (not in runs: deleting a run by
 *               prefix finds its record to drop its index);
 *   index row   moot when a later row of the same run follows (the later
 *               one replaces the entries of the committed row either way);
 *   deletes     always applied: they also remove what committed before. */

enum { SEEN_WRITE, SEEN_ROW, SEEN_PREFIX };

struct seen {
    size_t *slot; /* op index + 1; 0: empty */
    size_t mask;
};

static uint64_t seen_hash(int tag, int db, const void *key, size_t klen) {
    return XXH3_64bits_withSeed(key, klen, (uint64_t)(tag * STORE_NDB + db + 1));
}

/* The op index of an entry (tag, db, key) in the table, or -1. */
static long seen_find(const struct seen *t, const struct batch *b, const unsigned char *tags,
                      int tag, int db, const void *key, size_t klen) {
    for (size_t i = seen_hash(tag, db, key, klen) & t->mask; t->slot[i]; i = (i + 1) & t->mask) {
        const struct op *o = &b->ops[t->slot[i] - 1];
        if (tags[t->slot[i] - 1] == tag && o->db == db && o->klen == klen &&
            memcmp(b->bytes + o->off, key, klen) == 0)
            return (long)(t->slot[i] - 1);
    }
    return -1;
}

static void seen_add(struct seen *t, unsigned char *tags, int tag, size_t op, int db,
                     const void *key, size_t klen) {
    size_t i = seen_hash(tag, db, key, klen) & t->mask;
    while (t->slot[i])
        i = (i + 1) & t->mask;
    t->slot[i] = op + 1;
    tags[op] = (unsigned char)tag;
}

/* Marks the moot ops of b (see above), walking it from its end. Without the
 * memory to do so, every op is applied: the same outcome, more pages. */
static void mark_moot(struct batch *b) {
    b->nmoot = 0;
    if (b->nops < 2)
        return;
    size_t cap = 4;
    while (cap < b->nops * 2)
        cap <<= 1;
    struct seen t = {calloc(cap, sizeof(size_t)), cap - 1};
    unsigned char *tags = malloc(b->nops);
    if (!t.slot || !tags) {
        free(t.slot);
        free(tags);
        return;
    }
    /* the prefix lengths deleted by prefix, per database: few (run ids) */
    struct {
        unsigned char db;
        size_t len;
    } lens[8];
    int nlens = 0;
    for (size_t n = b->nops; n-- > 0;) {
        struct op *o = &b->ops[n];
        const char *key = b->bytes + o->off;
        if (o->kind == OP_PUT) {
            int moot = seen_find(&t, b, tags, SEEN_WRITE, o->db, key, o->klen) >= 0;
            for (int l = 0; !moot && l < nlens; l++)
                moot = lens[l].db == o->db && lens[l].len <= o->klen &&
                       seen_find(&t, b, tags, SEEN_PREFIX, o->db, key, lens[l].len) >= 0;
            o->moot = (unsigned char)moot;
            b->nmoot += (size_t)moot;
            if (!moot)
                seen_add(&t, tags, SEEN_WRITE, n, o->db, key, o->klen);
        } else if (o->kind == OP_DEL) {
            if (seen_find(&t, b, tags, SEEN_WRITE, o->db, key, o->klen) < 0)
                seen_add(&t, tags, SEEN_WRITE, n, o->db, key, o->klen);
        } else if (o->kind == OP_INDEX) {
            o->moot = seen_find(&t, b, tags, SEEN_ROW, o->db, key, o->klen) >= 0;
            b->nmoot += o->moot;
            if (!o->moot)
                seen_add(&t, tags, SEEN_ROW, n, o->db, key, o->klen);
        } else if (o->db != STORE_RUNS &&
                   seen_find(&t, b, tags, SEEN_PREFIX, o->db, key, o->klen) < 0) {
            int known = 0;
            for (int l = 0; l < nlens; l++)
                known |= lens[l].db == o->db && lens[l].len == o->klen;
            if (!known && nlens == (int)(sizeof lens / sizeof lens[0]))
                continue; /* not looked for: the puts under it are applied */
            if (!known) {
                lens[nlens].db = o->db;
                lens[nlens++].len = o->klen;
            }
            seen_add(&t, tags, SEEN_PREFIX, n, o->db, key, o->klen);
        }
    }
    free(t.slot);
    free(tags);
}

/* Deletes every record of db whose key starts with prefix (and, in the
 * runs, their index entries). */
static int del_prefix(struct chorus_store *st, MDB_txn *txn, MDB_dbi dbi, int db,
                      const MDB_val *prefix) {
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, dbi, &c);
    if (rc)
        return rc;
    MDB_val ck = *prefix, cv;
    int got = mdb_cursor_get(c, &ck, &cv, MDB_SET_RANGE);
    while (!got && ck.mv_size >= prefix->mv_size &&
           memcmp(ck.mv_data, prefix->mv_data, prefix->mv_size) == 0) {
        if (db == STORE_RUNS && (rc = drop_run_index(st, txn, &ck)))
            break;
        if ((rc = mdb_cursor_del(c, 0)))
            break;
        /* after a delete, NEXT lands on the record that followed */
        got = mdb_cursor_get(c, &ck, &cv, MDB_NEXT);
    }
    if (!rc && got && got != MDB_NOTFOUND)
        rc = got;
    mdb_cursor_close(c);
    return rc;
}

/* Applies b in one write transaction and commits it. 0, or the LMDB error
 * with err (MDB_MAP_FULL: the caller may grow the map and try again). */
static int batch_apply(struct chorus_store *st, struct batch *b, char *err, size_t errlen) {
    MDB_txn *txn;
    int rc = mdb_txn_begin(st->env, NULL, 0, &txn);
    if (rc) {
        snprintf(err, errlen, "store: cannot begin a write: %s", mdb_strerror(rc));
        return rc;
    }
    mark_moot(b);
    size_t i = 0;
    for (; i < b->nops && !rc; i++) {
        struct op *o = &b->ops[i];
        if (o->moot)
            continue;
        MDB_val k = {o->klen, b->bytes + o->off};
        MDB_dbi dbi = st->dbi[o->db];
        MDB_dbi index = st->dbi[STORE_RUN_INDEX], rows = st->dbi[STORE_RUN_ROWS];
        if (o->kind == OP_PUT) {
            MDB_val v = {o->vlen, b->bytes + o->off + o->klen};
            rc = mdb_put(txn, dbi, &k, &v, 0);
        } else if (o->kind == OP_INDEX) {
            MDB_val v = {o->vlen, b->bytes + o->off + o->klen};
            rc = chorus_store_index_apply(txn, index, rows, &k, &v);
        } else if (o->kind == OP_DEL) {
            rc = mdb_del(txn, dbi, &k, NULL);
            if (rc == MDB_NOTFOUND)
                rc = 0;
            if (!rc && o->db == STORE_RUNS) /* a run's index goes with its record */
                rc = chorus_store_index_drop(txn, index, rows, &k);
        } else {
            rc = del_prefix(st, txn, dbi, o->db, &k);
        }
    }
    /* the loop stepped past the op that failed: ops[i - 1] */
    if (rc) {
        if (rc == MDB_MAP_FULL)
            snprintf(err, errlen,
                     CHORUS_STORE_FULL " (%zu MiB, storage.max_size_mb) writing to %s: %s",
                     st->map_size >> 20, DB_NAMES[b->ops[i - 1].db], mdb_strerror(rc));
        else
            snprintf(err, errlen, "store: write to %s failed: %s", DB_NAMES[b->ops[i - 1].db],
                     mdb_strerror(rc));
        mdb_txn_abort(txn);
        return rc;
    }
    if ((rc = mdb_txn_commit(txn))) {
        if (rc == MDB_MAP_FULL)
            snprintf(err, errlen, CHORUS_STORE_FULL " (%zu MiB, storage.max_size_mb): %s",
                     st->map_size >> 20, mdb_strerror(rc));
        else
            snprintf(err, errlen, "store: commit failed: %s", mdb_strerror(rc));
        return rc;
    }
    return 0;
}

/* Doubles the map, up to max_size. Only with no transaction open in this
 * process (LMDB's rule for mdb_env_set_mapsize): the caller is the loop
 * thread with the writer thread idle, or close() after the writer stopped.
 * The cached read transaction is dropped first, whatever its state. 1 when
 * the map grew. */
static int grow(struct chorus_store *st) {
    if (st->map_size >= st->max_size)
        return 0;
    size_t next = st->map_size * 2 > st->max_size ? st->max_size : st->map_size * 2;
    if (st->reader) {
        mdb_txn_abort(st->reader);
        st->reader = NULL;
        st->reader_live = 0;
    }
    if (mdb_env_set_mapsize(st->env, next) != 0)
        return 0;
    st->map_size = next;
    st->stats.grows++;
    return 1;
}

/* batch_apply, growing the map while it is full. Only where grow() may run. */
static int batch_apply_growing(struct chorus_store *st, struct batch *b, char *err, size_t errlen) {
    int rc;
    while ((rc = batch_apply(st, b, err, errlen)) == MDB_MAP_FULL && grow(st))
        err[0] = 0;
    return rc;
}

/* ---- writer thread ----------------------------------------------------------- */

static void writer_main(void *arg) {
    struct chorus_store *st = arg;
    uv_mutex_lock(&st->mu);
    for (;;) {
        while (!st->submitted && !st->quit)
            uv_cond_wait(&st->cond, &st->mu);
        if (!st->submitted)
            break;
        struct batch *b = st->submitted;
        st->submitted = NULL;
        uv_mutex_unlock(&st->mu);
        char err[256] = "";
        int rc = batch_apply(st, b, err, sizeof err);
        uv_mutex_lock(&st->mu);
        st->finished = b;
        st->finished_full = rc == MDB_MAP_FULL;
        memcpy(st->finished_err, err, sizeof err);
        uv_async_send(&st->async);
    }
    uv_mutex_unlock(&st->mu);
}

/* Puts the counters set since the last batch into the pending one. A
 * counter that does not fit (out of memory) stays dirty for the next. */
static void flush_counters(struct chorus_store *st) {
    for (size_t i = 0; i < st->ncounters; i++) {
        struct counter *c = &st->counters[i];
        if (!c->dirty)
            continue;
        char text[24];
        int n = snprintf(text, sizeof text, "%lld", c->value);
        if (batch_add(st->pending, OP_PUT, STORE_META, c->key, c->klen, text, (size_t)n) == 0)
            c->dirty = 0;
    }
}

static void submit(struct chorus_store *st) {
    if (st->writing || !st->pending->nops)
        return;
    flush_counters(st);
    if (!st->pending->nops)
        return;
    struct batch *next = st->spare ? st->spare : batch_new(0);
    if (!next)
        return; /* try again next turn */
    st->spare = NULL;
    next->seq = ++st->next_seq;
    st->writing = st->pending;
    st->pending = next;
    uv_ref((uv_handle_t *)&st->async);
    uv_unref((uv_handle_t *)&st->prepare);
    uv_mutex_lock(&st->mu);
    st->submitted = st->writing;
    uv_cond_signal(&st->cond);
    uv_mutex_unlock(&st->mu);
}

/* Wakes the waiters of every batch up to seq, in order. */
static void wake_upto(struct chorus_store *st, uint64_t seq, const char *err) {
    while (st->waiters && st->waiters->seq <= seq) {
        struct waiter *w = st->waiters;
        st->waiters = w->next;
        if (!st->waiters)
            st->waiters_tail = NULL;
        w->done(w->data, err);
        free(w);
    }
}

static void finish(struct chorus_store *st, struct batch *b, const char *err) {
    st->writing = NULL;
    st->stats.full = strncmp(err, CHORUS_STORE_FULL, strlen(CHORUS_STORE_FULL)) == 0;
    if (err[0])
        st->stats.failures++;
    else {
        st->stats.commits++;
        st->stats.ops += b->nops - b->nmoot;
        st->stats.moot += b->nmoot;
    }
    uint64_t seq = b->seq;
    b->nops = b->used = b->nmoot = 0;
    if (!st->spare)
        st->spare = b;
    else
        batch_free(b);
    wake_upto(st, seq, err[0] ? err : NULL);
}

static void on_async(uv_async_t *h) {
    struct chorus_store *st = h->data;
    uv_mutex_lock(&st->mu);
    struct batch *b = st->finished;
    char err[256];
    memcpy(err, st->finished_err, sizeof err);
    int full = st->finished_full;
    st->finished = NULL;
    /* The map is full: the writer thread is idle (it handed b back) and no
     * read is open on this, the only reading thread, so the map may grow
     * here. The same batch goes back to the writer; its waiters wait on. */
    if (full && grow(st)) {
        st->submitted = b;
        uv_cond_signal(&st->cond);
        uv_mutex_unlock(&st->mu);
        return;
    }
    uv_mutex_unlock(&st->mu);
    if (!b)
        return;
    uv_unref((uv_handle_t *)&st->async);
    finish(st, b, err);
    submit(st);
    if (st->pending->nops)
        uv_ref((uv_handle_t *)&st->prepare);
}

static void on_prepare(uv_prepare_t *h) { submit(h->data); }

/* ---- open / close --------------------------------------------------------- */

/* Puts a checksum in front of every value of a version-1 folder (all but
 * meta.schema_version), in txn. 0 or an LMDB error. */
static int migrate_v1(struct chorus_store *st, MDB_txn *txn) {
    int rc = 0;
    char *buf = NULL;
    size_t room = 0;
    for (int db = 0; db < STORE_NDB && !rc; db++) {
        MDB_cursor *c;
        if ((rc = mdb_cursor_open(txn, st->dbi[db], &c)))
            break;
        MDB_val k, v;
        int got = mdb_cursor_get(c, &k, &v, MDB_FIRST);
        while (!got && !rc) {
            if (!is_schema_key(db, k.mv_data, k.mv_size)) {
                /* k and v point into the map, which the put changes: copy
                 * both (key first), put, and find the key again */
                size_t need = k.mv_size + CHORUS_STORE_CHECKSUM_LEN + v.mv_size;
                if (need > room) {
                    char *nb = realloc(buf, need);
                    if (!nb) {
                        rc = ENOMEM;
                        break;
                    }
                    buf = nb;
                    room = need;
                }
                memcpy(buf, k.mv_data, k.mv_size);
                put_le64((unsigned char *)buf + k.mv_size,
                         checksum(k.mv_data, k.mv_size, v.mv_data, v.mv_size));
                memcpy(buf + k.mv_size + CHORUS_STORE_CHECKSUM_LEN, v.mv_data, v.mv_size);
                MDB_val nk = {k.mv_size, buf}, nv = {need - k.mv_size, buf + k.mv_size};
                rc = mdb_put(txn, st->dbi[db], &nk, &nv, 0);
                if (!rc)
                    rc = mdb_cursor_get(c, &nk, &v, MDB_SET_KEY);
            }
            if (!rc)
                got = mdb_cursor_get(c, &k, &v, MDB_NEXT);
        }
        if (!rc && got != MDB_NOTFOUND)
            rc = got;
        mdb_cursor_close(c);
    }
    free(buf);
    return rc;
}

/* Opens the named databases and checks (or writes) the schema version,
 * migrating a version-1 folder. 0, an LMDB error with err, or -1 with err
 * when the folder is refused. */
static int open_dbs_once(struct chorus_store *st, char *err, size_t errlen) {
    MDB_txn *txn = NULL;
    int rc = mdb_txn_begin(st->env, NULL, 0, &txn);
    for (int i = 0; i < STORE_NDB && !rc; i++)
        rc = mdb_dbi_open(txn, DB_NAMES[i], MDB_CREATE | (i == STORE_RUN_INDEX ? MDB_DUPSORT : 0),
                          &st->dbi[i]);
    if (rc) {
        snprintf(err, errlen, "store: cannot open its databases: %s", mdb_strerror(rc));
        if (txn)
            mdb_txn_abort(txn);
        return rc;
    }
    MDB_val k = {strlen(SCHEMA_KEY), SCHEMA_KEY}, v;
    rc = mdb_get(txn, st->dbi[STORE_META], &k, &v);
    if (!rc && v.mv_size == 1 && memcmp(v.mv_data, "1", 1) == 0) {
        if ((rc = migrate_v1(st, txn))) {
            snprintf(err, errlen, "store: cannot add checksums to a version-1 data folder: %s",
                     mdb_strerror(rc));
            mdb_txn_abort(txn);
            return rc;
        }
        rc = MDB_NOTFOUND; /* now write the new version */
    } else if (!rc && v.mv_size == 1 &&
               (memcmp(v.mv_data, "2", 1) == 0 || memcmp(v.mv_data, "3", 1) == 0)) {
        rc = MDB_NOTFOUND; /* the same records; chorus.store builds the runs' index, the outbox's
                              lanes */
    }
    if (rc == MDB_NOTFOUND) {
        v.mv_data = CHORUS_STORE_SCHEMA;
        v.mv_size = strlen(CHORUS_STORE_SCHEMA);
        rc = mdb_put(txn, st->dbi[STORE_META], &k, &v, 0);
    } else if (!rc && (v.mv_size != strlen(CHORUS_STORE_SCHEMA) ||
                       memcmp(v.mv_data, CHORUS_STORE_SCHEMA, v.mv_size) != 0)) {
        snprintf(err, errlen,
                 "store: the data folder has schema version %.*s; this chorus reads version %s",
                 (int)(v.mv_size < 20 ? v.mv_size : 20), (const char *)v.mv_data,
                 CHORUS_STORE_SCHEMA);
        mdb_txn_abort(txn);
        return -1;
    }
    if (rc) {
        snprintf(err, errlen, "store: cannot write its schema version: %s", mdb_strerror(rc));
        mdb_txn_abort(txn);
        return rc;
    }
    if ((rc = mdb_txn_commit(txn))) {
        snprintf(err, errlen, "store: cannot write its schema version: %s", mdb_strerror(rc));
        return rc;
    }
    return 0;
}

/* open_dbs_once, growing the map while a migration does not fit. */
static int open_dbs(struct chorus_store *st, char *err, size_t errlen) {
    int rc;
    while ((rc = open_dbs_once(st, err, errlen)) == MDB_MAP_FULL && grow(st))
        err[0] = 0;
    return rc ? -1 : 0;
}

/* A data.mdb of zero bytes would be taken by LMDB for a new, empty store:
 * the records of an existing folder lost without a word. It is refused. */
static int refuse_empty_file(const char *dir, char *err, size_t errlen) {
    char path[4200];
    struct stat sb;
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size == 0) {
        snprintf(err, errlen,
                 "store: %s is empty (0 bytes): the data folder is damaged; restore it from a "
                 "backup, or move the folder away to start with an empty one",
                 path);
        return -1;
    }
    return 0;
}

struct chorus_store *chorus_store_open(uv_loop_t *loop, const char *dir,
                                       const struct chorus_store_opts *opts, char *err,
                                       size_t errlen) {
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "store: cannot create the data folder %s: %s", dir, strerror(errno));
        return NULL;
    }
    if (refuse_empty_file(dir, err, errlen) != 0)
        return NULL;
    struct chorus_store *st = calloc(1, sizeof *st);
    if (!st || !(st->pending = batch_new(1))) {
        free(st);
        snprintf(err, errlen, "store: out of memory");
        return NULL;
    }
    st->next_seq = 1;
    st->loop = loop;
    st->map_size = opts && opts->map_size ? opts->map_size : (size_t)1 << 30;
    st->max_size = opts && opts->max_size > st->map_size ? opts->max_size : st->map_size;
    int rc = mdb_env_create(&st->env);
    if (!rc)
        rc = mdb_env_set_maxdbs(st->env, STORE_NDB);
    if (!rc)
        rc = mdb_env_set_mapsize(st->env, st->map_size);
    if (!rc)
        rc = mdb_env_set_maxreaders(st->env, 126);
    unsigned flags = MDB_NOTLS | (opts && !opts->sync ? MDB_NOSYNC : 0);
    if (!rc)
        rc = mdb_env_open(st->env, dir, flags, 0600);
    if (rc) {
        snprintf(err, errlen, "store: cannot open %s: %s", dir, mdb_strerror(rc));
        if (st->env)
            mdb_env_close(st->env);
        batch_free(st->pending);
        free(st);
        return NULL;
    }
    /* LMDB raises the map to what the file already holds */
    MDB_envinfo info;
    if (mdb_env_info(st->env, &info) == 0 && info.me_mapsize > st->map_size)
        st->map_size = info.me_mapsize;
    if (st->max_size < st->map_size)
        st->max_size = st->map_size;
    if (open_dbs(st, err, errlen) != 0) {
        mdb_env_close(st->env);
        batch_free(st->pending);
        free(st);
        return NULL;
    }
    uv_mutex_init(&st->mu);
    uv_cond_init(&st->cond);
    uv_prepare_init(loop, &st->prepare);
    uv_async_init(loop, &st->async, on_async);
    st->prepare.data = st->async.data = st;
    uv_prepare_start(&st->prepare, on_prepare);
    uv_unref((uv_handle_t *)&st->prepare);
    uv_unref((uv_handle_t *)&st->async);
    st->handles_open = 2;
    if (uv_thread_create(&st->thread, writer_main, st) != 0) {
        snprintf(err, errlen, "store: cannot start the writer thread");
        st->quit = 1;
        chorus_store_close(st);
        return NULL;
    }
    return st;
}

static void on_closed(uv_handle_t *h) {
    struct chorus_store *st = h->data;
    if (--st->handles_open == 0)
        free(st);
}

void chorus_store_close(struct chorus_store *st) {
    if (!st->quit) {
        uv_mutex_lock(&st->mu);
        st->quit = 1;
        uv_cond_signal(&st->cond);
        uv_mutex_unlock(&st->mu);
        uv_thread_join(&st->thread);
    }
    /* the writer has finished whatever it had; commit the rest here. No
     * waiter is called from here on: their tasks are being torn down. */
    while (st->waiters) {
        struct waiter *w = st->waiters;
        st->waiters = w->next;
        free(w);
    }
    st->waiters_tail = NULL;
    char err[256] = "";
    if (st->finished) {
        struct batch *b = st->finished;
        st->finished = NULL;
        if (st->finished_full && batch_apply_growing(st, b, err, sizeof err) == 0)
            st->finished_err[0] = 0;
        finish(st, b, st->finished_err);
    }
    flush_counters(st);
    if (st->pending->nops && batch_apply_growing(st, st->pending, err, sizeof err) != 0)
        fprintf(stderr, "chorus: %s\n", err);
    for (size_t i = 0; i < st->ncounters; i++)
        free(st->counters[i].key);
    free(st->counters);
    if (st->reader)
        mdb_txn_abort(st->reader);
    mdb_env_close(st->env);
    batch_free(st->pending);
    batch_free(st->spare);
    batch_free(st->writing);
    uv_mutex_destroy(&st->mu);
    uv_cond_destroy(&st->cond);
    uv_close((uv_handle_t *)&st->prepare, on_closed);
    uv_close((uv_handle_t *)&st->async, on_closed);
}

/* ---- writes ------------------------------------------------------------------ */

static int queue(struct chorus_store *st, int kind, int db, const void *key, size_t klen,
                 const void *val, size_t vlen) {
    if (batch_add(st->pending, kind, db, key, klen, val, vlen) != 0)
        return -1;
    if (!st->writing)
        uv_ref((uv_handle_t *)&st->prepare);
    return 0;
}

int chorus_store_put(struct chorus_store *st, int db, const void *key, size_t klen, const void *val,
                     size_t vlen) {
    return queue(st, OP_PUT, db, key, klen, val, vlen);
}

int chorus_store_index_put(struct chorus_store *st, const void *id, size_t idlen, const void *row,
                           size_t rowlen) {
    return queue(st, OP_INDEX, STORE_RUN_ROWS, id, idlen, row, rowlen);
}

int chorus_store_counter(struct chorus_store *st, unsigned slot, const void *key, size_t klen,
                         long long value) {
    if (slot > 65535 || klen == 0 || klen > 511)
        return -1;
    if (slot >= st->ncounters) {
        size_t n = slot + 16;
        struct counter *all = realloc(st->counters, n * sizeof *all);
        if (!all)
            return -1;
        memset(all + st->ncounters, 0, (n - st->ncounters) * sizeof *all);
        st->counters = all;
        st->ncounters = n;
    }
    struct counter *c = &st->counters[slot];
    if (!c->key) {
        if (!(c->key = malloc(klen)))
            return -1;
        memcpy(c->key, key, klen);
        c->klen = klen;
    }
    c->value = value;
    c->dirty = 1;
    return 0;
}

uint64_t chorus_store_batch(const struct chorus_store *st) { return st->pending->seq; }

int chorus_store_del(struct chorus_store *st, int db, const void *key, size_t klen) {
    return queue(st, OP_DEL, db, key, klen, NULL, 0);
}

int chorus_store_del_prefix(struct chorus_store *st, int db, const void *prefix, size_t plen) {
    return queue(st, OP_DEL_PREFIX, db, prefix, plen, NULL, 0);
}

void *chorus_store_wait(struct chorus_store *st, chorus_store_done_fn done, void *data, int *oom) {
    *oom = 0;
    uint64_t seq;
    if (st->pending->nops)
        seq = st->pending->seq;
    else if (st->writing)
        seq = st->writing->seq;
    else
        return NULL;
    struct waiter *w = malloc(sizeof *w);
    if (!w) {
        *oom = 1;
        return NULL;
    }
    w->seq = seq;
    w->done = done;
    w->data = data;
    w->next = NULL;
    if (st->waiters_tail)
        st->waiters_tail->next = w;
    else
        st->waiters = w;
    st->waiters_tail = w;
    return w;
}

void chorus_store_unwait(struct chorus_store *st, void *waiter) {
    struct waiter **link = &st->waiters, *prev = NULL;
    while (*link && *link != waiter) {
        prev = *link;
        link = &(*link)->next;
    }
    if (!*link)
        return;
    *link = ((struct waiter *)waiter)->next;
    if (st->waiters_tail == waiter)
        st->waiters_tail = prev;
    free(waiter);
}

/* ---- reads -------------------------------------------------------------------- */

MDB_txn *chorus_store_reader(struct chorus_store *st, const char **err) {
    if (st->pinned && st->reader_live)
        return st->reader;
    int rc;
    if (!st->reader)
        rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, &st->reader);
    else
        rc = mdb_txn_renew(st->reader);
    if (rc) {
        if (st->reader) {
            mdb_txn_abort(st->reader);
            st->reader = NULL;
        }
        *err = mdb_strerror(rc);
        return NULL;
    }
    st->reader_live = 1;
    return st->reader;
}

void chorus_store_reader_done(struct chorus_store *st) {
    if (st->reader_live && !st->pinned) {
        mdb_txn_reset(st->reader);
        st->reader_live = 0;
    }
}

int chorus_store_pin(struct chorus_store *st, char *err, size_t errlen) {
    const char *why;
    if (!chorus_store_reader(st, &why)) {
        snprintf(err, errlen, "store: cannot read: %s", why);
        return -1;
    }
    st->pinned++;
    return 0;
}

void chorus_store_unpin(struct chorus_store *st) {
    if (st->pinned > 0 && --st->pinned == 0)
        chorus_store_reader_done(st);
}

void chorus_store_stats(const struct chorus_store *st, struct chorus_store_stats *out) {
    *out = st->stats;
    out->pending_ops = st->pending->nops;
    out->writing = st->writing != NULL;
    out->map_size = st->map_size;
    out->max_size = st->max_size;
}

/* ---- verify ---------------------------------------------------------------- */

/* Whether v is one JSON text (cJSON, with nothing but blanks after it). */
static int is_json(const MDB_val *v) {
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(v->mv_data, v->mv_size, &end, 0);
    if (!j)
        return 0;
    cJSON_Delete(j);
    const char *stop = (const char *)v->mv_data + v->mv_size;
    while (end && end < stop && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
        end++;
    return end == stop;
}

long chorus_store_verify(struct chorus_store *st, long counts[STORE_NDB], unsigned skip,
                         chorus_store_bad_fn bad, void *data, char *err, size_t errlen) {
    const char *why = NULL;
    MDB_txn *txn = chorus_store_reader(st, &why);
    if (!txn) {
        snprintf(err, errlen, "store: cannot read: %s", why);
        return -1;
    }
    long nbad = 0;
    for (int db = 0; db < STORE_NDB; db++) {
        counts[db] = 0;
        if (skip & (1u << db)) { /* counted from LMDB's own statistics, not read */
            MDB_stat ms;
            if (mdb_stat(txn, st->dbi[db], &ms) == 0)
                counts[db] = (long)ms.ms_entries;
            continue;
        }
        MDB_cursor *c;
        int rc = mdb_cursor_open(txn, st->dbi[db], &c);
        if (rc) {
            bad(data, db, NULL, 0, mdb_strerror(rc));
            nbad++;
            continue;
        }
        MDB_val k, raw, v;
        for (rc = mdb_cursor_get(c, &k, &raw, MDB_FIRST); rc == 0;
             rc = mdb_cursor_get(c, &k, &raw, MDB_NEXT)) {
            counts[db]++;
            const char *fault = NULL;
            if (db == STORE_RUN_INDEX) /* entries, not values: a time key and a run id */
                fault = raw.mv_size > 8 ? NULL : "not an index entry";
            else if (chorus_store_value(db, &k, &raw, &v) != 0)
                fault = "checksum mismatch";
            else if (is_schema_key(db, k.mv_data, k.mv_size))
                fault = v.mv_size == strlen(CHORUS_STORE_SCHEMA) &&
                                memcmp(v.mv_data, CHORUS_STORE_SCHEMA, v.mv_size) == 0
                            ? NULL
                            : "not this chorus's schema version";
            else if (chorus_store_db_is_json(db) && !is_json(&v))
                fault = "not JSON";
            if (fault) {
                bad(data, db, k.mv_data, k.mv_size, fault);
                nbad++;
            }
        }
        if (rc != MDB_NOTFOUND) { /* LMDB's own check of its pages failed */
            bad(data, db, NULL, 0, mdb_strerror(rc));
            nbad++;
        }
        mdb_cursor_close(c);
    }
    chorus_store_reader_done(st);
    return nbad;
}
