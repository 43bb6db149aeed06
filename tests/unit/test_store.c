/* test_store.c — runtime/store.c against real LMDB files in a fresh
 * temporary folder: schema version, put/get/del/del_prefix through the group
 * commit, waiters (order, unwait, nothing outstanding), batches pipelined
 * behind the writer thread, failed batches, close flushing what is queued,
 * binary keys persisting across close/open in key order; checksums, verify
 * over bytes overwritten in data.mdb, the map growing up to max_size, the
 * migration of a version-1 folder and a zero-length data.mdb refused.
 */
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store_index.h"
#include "store_lmdb.h"
#include "unit.h"

static char root[64];
static uv_loop_t loop;

/* ---- helpers ------------------------------------------------------------- */

static void path_in_root(char *out, size_t n, const char *name) {
    snprintf(out, n, "%s/%s", root, name);
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static struct chorus_store *open_store(const char *dir, size_t map_size) {
    char err[256] = "";
    struct chorus_store_opts opts = {.sync = 1, .map_size = map_size};
    struct chorus_store *st = chorus_store_open(&loop, dir, &opts, err, sizeof err);
    if (!st)
        fprintf(stderr, "    open %s: %s\n", dir, err);
    return st;
}

/* Closes st and runs the loop until its handles are closed (and it is freed). */
static void close_store(struct chorus_store *st) {
    chorus_store_close(st);
    uv_run(&loop, UV_RUN_DEFAULT);
}

/* Runs the loop one turn at a time until *count reaches want (at most 2000
 * turns). 1 when it did. */
static int run_until(const int *count, int want) {
    for (int i = 0; i < 2000 && *count < want; i++)
        uv_run(&loop, UV_RUN_ONCE);
    return *count >= want;
}

/* chorus_store_get's and chorus_store_scan's record, copied into a struct seen. */
struct seen {
    int n;
    char keys[8][64];
    char *out; /* the last value, when not NULL */
    size_t outlen;
    long vlen;
};

static void copy_text(char *out, size_t outlen, const void *p, size_t len) {
    size_t c = len < outlen - 1 ? len : outlen - 1;
    memcpy(out, p, c);
    out[c] = 0;
}

static void on_record(void *data, const void *key, size_t klen, const void *val, size_t vlen) {
    struct seen *s = data;
    if (s->n < 8)
        copy_text(s->keys[s->n], sizeof s->keys[0], key, klen);
    s->n++;
    if (s->out && s->outlen)
        copy_text(s->out, s->outlen, val, vlen);
    s->vlen = (long)vlen;
}

/* The committed value of key in db into out (NUL-terminated when it fits);
 * its length, -1 when absent, -3 when corrupt, -2 on another error. */
static long get(struct chorus_store *st, int db, const void *key, size_t klen, char *out,
                size_t outlen) {
    char err[512] = "";
    struct seen s = {.out = out, .outlen = outlen};
    int found = chorus_store_get(st, db, key, klen, on_record, &s, err, sizeof err);
    if (found < 0) {
        if (strstr(err, "store: corrupt record") == err)
            return -3;
        fprintf(stderr, "    get: %s\n", err);
        return -2;
    }
    if (!found)
        return -1;
    CHECK_INT_EQ(s.n, 1);
    return s.vlen;
}

static long gets(struct chorus_store *st, int db, const char *key, char *out, size_t outlen) {
    return get(st, db, key, strlen(key), out, outlen);
}

static int has(struct chorus_store *st, int db, const char *key) {
    return gets(st, db, key, NULL, 0) >= 0;
}

/* Number of records in db (last committed state). */
static long count(struct chorus_store *st, int db) {
    char err[512];
    return (long)chorus_store_count(st, db, err, sizeof err);
}

static int put(struct chorus_store *st, int db, const char *key, const char *val) {
    return chorus_store_put(st, db, key, strlen(key), val, strlen(val));
}

static struct chorus_store_stats stats(const struct chorus_store *st) {
    struct chorus_store_stats s;
    chorus_store_stats(st, &s);
    return s;
}

/* The environment behind st (to hold its write lock from the test). */
static MDB_env *env_of(struct chorus_store *st) {
    const char *err = NULL;
    MDB_txn *txn = chorus_store_reader(st, &err);
    if (!txn)
        return NULL;
    MDB_env *env = mdb_txn_env(txn);
    chorus_store_reader_done(st);
    return env;
}

/* meta.schema_version of the folder, read or written with LMDB directly. */
static int raw_schema(const char *dir, const char *set, char *out, size_t outlen) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    int rc = mdb_env_create(&env);
    if (rc)
        return rc;
    mdb_env_set_maxdbs(env, STORE_NDB);
    if ((rc = mdb_env_open(env, dir, 0, 0600)) != 0) {
        mdb_env_close(env);
        return rc;
    }
    if ((rc = mdb_txn_begin(env, NULL, set ? 0 : MDB_RDONLY, &txn)) != 0) {
        mdb_env_close(env);
        return rc;
    }
    MDB_val k = {strlen("schema_version"), "schema_version"}, v;
    rc = mdb_dbi_open(txn, "meta", 0, &dbi);
    if (!rc && set) {
        v.mv_size = strlen(set);
        v.mv_data = (void *)set;
        rc = mdb_put(txn, dbi, &k, &v, 0);
    }
    if (!rc && out) {
        rc = mdb_get(txn, dbi, &k, &v);
        if (!rc)
            snprintf(out, outlen, "%.*s", (int)v.mv_size, (const char *)v.mv_data);
    }
    if (!rc && set)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    mdb_env_close(env);
    return rc;
}

/* A waiter's outcome, and what the committed state showed when it was called. */
struct rec {
    int called;
    int order; /* position among all calls of the test */
    int failed;
    char err[256];
    struct chorus_store *st; /* when set, look up see/unseen when called */
    const char *see, *unseen;
    int saw, saw_unseen;
    int *counter; /* incremented when called */
};

static int call_seq;

static void on_done(void *data, const char *err) {
    struct rec *r = data;
    r->called++;
    r->order = call_seq++;
    if (err) {
        r->failed = 1;
        snprintf(r->err, sizeof r->err, "%s", err);
    }
    if (r->st && r->see)
        r->saw = has(r->st, STORE_RUNS, r->see);
    if (r->st && r->unseen)
        r->saw_unseen = has(r->st, STORE_RUNS, r->unseen);
    if (r->counter)
        (*r->counter)++;
}

static void *wait_rec(struct chorus_store *st, struct rec *r) {
    int oom = -1;
    void *w = chorus_store_wait(st, on_done, r, &oom);
    CHECK_INT_EQ(oom, 0);
    return w;
}

/* Holds the write lock of an environment from another thread for a while,
 * so the store's writer thread blocks in the middle of a batch. */
struct holder {
    MDB_env *env;
    uv_sem_t locked;
    unsigned ms;
    int rc;
};

static void hold_main(void *arg) {
    struct holder *h = arg;
    MDB_txn *txn;
    h->rc = mdb_txn_begin(h->env, NULL, 0, &txn);
    uv_sem_post(&h->locked);
    if (h->rc)
        return;
    uv_sleep(h->ms);
    mdb_txn_abort(txn);
}

/* ---- tests ----------------------------------------------------------------- */

static void test_names(void) {
    CHECK_INT_EQ(chorus_store_db_index("runs"), STORE_RUNS);
    CHECK_INT_EQ(chorus_store_db_index("journal"), STORE_JOURNAL);
    CHECK_INT_EQ(chorus_store_db_index("idempotency"), STORE_IDEMPOTENCY);
    CHECK_INT_EQ(chorus_store_db_index("outbox"), STORE_OUTBOX);
    CHECK_INT_EQ(chorus_store_db_index("dlq"), STORE_DLQ);
    CHECK_INT_EQ(chorus_store_db_index("scripts"), STORE_SCRIPTS);
    CHECK_INT_EQ(chorus_store_db_index("timers"), STORE_TIMERS);
    CHECK_INT_EQ(chorus_store_db_index("meta"), STORE_META);
    CHECK_INT_EQ(chorus_store_db_index("nope"), -1);
    CHECK_INT_EQ(chorus_store_db_index(""), -1);
    for (int i = 0; i < STORE_NDB; i++)
        CHECK_INT_EQ(chorus_store_db_index(chorus_store_db_name(i)), i);
    CHECK_STR_EQ(chorus_store_db_name(STORE_DLQ), "dlq");
    CHECK_STR_EQ(chorus_store_db_name(STORE_NDB), "?");
    CHECK_STR_EQ(chorus_store_db_name(-1), "?");
}

/* 1. The folder and the schema version are created; reopening works; a newer
 * schema is refused and left alone. */
static void test_open_schema(void) {
    char dir[128], buf[64], err[256];
    struct stat sb;
    path_in_root(dir, sizeof dir, "schema");
    CHECK(stat(dir, &sb) != 0);

    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    CHECK(stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode));
    CHECK_INT_EQ(gets(st, STORE_META, "schema_version", buf, sizeof buf), 1);
    CHECK_STR_EQ(buf, CHORUS_STORE_SCHEMA);
    CHECK_STR_EQ(buf, "4");
    for (int i = 0; i < STORE_NDB; i++)
        CHECK_INT_EQ(count(st, i), i == STORE_META ? 1 : 0);
    struct chorus_store_stats s = stats(st);
    CHECK(s.commits == 0 && s.ops == 0 && s.failures == 0 && s.pending_ops == 0 && !s.writing);
    /* an idle store does not keep the loop alive */
    CHECK_INT_EQ(uv_loop_alive(&loop), 0);
    close_store(st);

    char data[160];
    snprintf(data, sizeof data, "%s/data.mdb", dir);
    CHECK(stat(data, &sb) == 0 && S_ISREG(sb.st_mode));

    /* reopening an existing folder */
    st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    buf[0] = 0;
    CHECK_INT_EQ(gets(st, STORE_META, "schema_version", buf, sizeof buf), 1);
    CHECK_STR_EQ(buf, "4");
    close_store(st);

    /* a folder written by a newer chorus */
    CHECK_INT_EQ(raw_schema(dir, "99", NULL, 0), 0);
    err[0] = 0;
    st = chorus_store_open(&loop, dir, NULL, err, sizeof err);
    CHECK(st == NULL);
    CHECK(strstr(err, "schema version") != NULL);
    CHECK(strstr(err, "99") != NULL);
    if (st)
        close_store(st);
    uv_run(&loop, UV_RUN_DEFAULT);
    buf[0] = 0;
    CHECK_INT_EQ(raw_schema(dir, NULL, buf, sizeof buf), 0);
    CHECK_STR_EQ(buf, "99"); /* refused, not overwritten */
    /* and refused again: nothing was left half open */
    err[0] = 0;
    st = chorus_store_open(&loop, dir, NULL, err, sizeof err);
    CHECK(st == NULL && strstr(err, "schema version") != NULL);
    if (st)
        close_store(st);

    /* a folder whose parent is missing is not created (one level only) */
    char deep[160];
    snprintf(deep, sizeof deep, "%s/missing/data", root);
    err[0] = 0;
    st = chorus_store_open(&loop, deep, NULL, err, sizeof err);
    CHECK(st == NULL);
    CHECK(strstr(err, "cannot create the data folder") != NULL);
    if (st)
        close_store(st);
    CHECK_INT_EQ(uv_loop_alive(&loop), 0);
}

/* 2. Writes are visible to readers once chorus_store_wait says they are
 * durable, and not before. */
static void test_put_get(void) {
    char dir[128], buf[64];
    path_in_root(dir, sizeof dir, "putget");
    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;

    CHECK_INT_EQ(put(st, STORE_RUNS, "k1", "v1"), 0);
    CHECK_INT_EQ(put(st, STORE_JOURNAL, "k1", "other db"), 0);
    CHECK_INT_EQ(chorus_store_put(st, STORE_OUTBOX, "empty", 5, "", 0), 0);
    struct chorus_store_stats s = stats(st);
    CHECK_INT_EQ(s.pending_ops, 3);
    CHECK_INT_EQ(s.writing, 0);
    CHECK_INT_EQ(uv_loop_alive(&loop), 1); /* queued writes keep the loop alive */
    /* a read does not see queued writes */
    CHECK(!has(st, STORE_RUNS, "k1"));

    struct rec r = {0};
    CHECK(wait_rec(st, &r) != NULL);
    CHECK_INT_EQ(r.called, 0); /* never synchronously */
    CHECK(run_until(&r.called, 1));
    CHECK_INT_EQ(r.called, 1);
    CHECK_INT_EQ(r.failed, 0);

    CHECK_INT_EQ(gets(st, STORE_RUNS, "k1", buf, sizeof buf), 2);
    CHECK_STR_EQ(buf, "v1");
    CHECK_INT_EQ(gets(st, STORE_JOURNAL, "k1", buf, sizeof buf), 8);
    CHECK_STR_EQ(buf, "other db");
    CHECK_INT_EQ(gets(st, STORE_OUTBOX, "empty", buf, sizeof buf), 0);
    CHECK(!has(st, STORE_RUNS, "k2"));
    CHECK(!has(st, STORE_DLQ, "k1"));
    s = stats(st);
    CHECK_INT_EQ(s.commits, 1);
    CHECK_INT_EQ(s.ops, 3);
    CHECK_INT_EQ(s.failures, 0);
    CHECK_INT_EQ(s.pending_ops, 0);
    CHECK_INT_EQ(s.writing, 0);

    /* overwrite; a reader held open keeps its snapshot until it is done */
    const char *err = NULL;
    MDB_txn *txn = chorus_store_reader(st, &err);
    CHECK(txn != NULL);
    CHECK_INT_EQ(put(st, STORE_RUNS, "k1", "v1, again"), 0);
    struct rec r2 = {0};
    CHECK(wait_rec(st, &r2) != NULL);
    CHECK(run_until(&r2.called, 1));
    CHECK_INT_EQ(r2.failed, 0);
    if (txn) {
        MDB_val k = {2, "k1"}, raw = {0, NULL}, v = {0, NULL};
        CHECK_INT_EQ(mdb_get(txn, chorus_store_dbi(st, STORE_RUNS), &k, &raw), 0);
        CHECK_INT_EQ(chorus_store_value(STORE_RUNS, &k, &raw, &v), 0);
        CHECK(v.mv_size == 2 && memcmp(v.mv_data, "v1", 2) == 0);
        chorus_store_reader_done(st);
    }
    CHECK_INT_EQ(gets(st, STORE_RUNS, "k1", buf, sizeof buf), 9);
    CHECK_STR_EQ(buf, "v1, again");
    CHECK_INT_EQ(stats(st).commits, 2);
    CHECK_INT_EQ(r.called, 1); /* the first waiter was not woken again */
    CHECK_INT_EQ(uv_loop_alive(&loop), 0);
    close_store(st);
}

/* 3. Many callers in one loop turn share one commit, and are woken in the
 * order they waited. */
#define CALLERS 200
static void test_group_commit(void) {
    char dir[128], key[16], val[32], buf[64];
    path_in_root(dir, sizeof dir, "group");
    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    static struct rec recs[CALLERS];
    memset(recs, 0, sizeof recs);
    int done = 0, queued = 1, handles = 1;
    call_seq = 0;
    for (int i = 0; i < CALLERS; i++) {
        snprintf(key, sizeof key, "g%03d", i);
        snprintf(val, sizeof val, "value %d", i);
        queued &= put(st, STORE_RUNS, key, val) == 0;
        recs[i].counter = &done;
        handles &= wait_rec(st, &recs[i]) != NULL;
    }
    CHECK(queued);
    CHECK(handles);
    CHECK_INT_EQ(stats(st).pending_ops, CALLERS);
    CHECK(run_until(&done, CALLERS));
    CHECK_INT_EQ(done, CALLERS);

    struct chorus_store_stats s = stats(st);
    CHECK(s.commits >= 1 && s.commits <= 2);
    CHECK_INT_EQ(s.commits, 1);
    CHECK_INT_EQ(s.ops, CALLERS);
    CHECK_INT_EQ(s.failures, 0);
    int in_order = 1, once = 1, ok = 1, readable = 1;
    for (int i = 0; i < CALLERS; i++) {
        in_order &= recs[i].order == i;
        once &= recs[i].called == 1;
        ok &= !recs[i].failed;
        snprintf(key, sizeof key, "g%03d", i);
        snprintf(val, sizeof val, "value %d", i);
        readable &= gets(st, STORE_RUNS, key, buf, sizeof buf) == (long)strlen(val) &&
                    strcmp(buf, val) == 0;
    }
    CHECK(in_order);
    CHECK(once);
    CHECK(ok);
    CHECK(readable);
    CHECK_INT_EQ(count(st, STORE_RUNS), CALLERS);
    close_store(st);
}

/* 3b. While a batch is with the writer, the next one fills up behind it: a
 * waiter is woken by the first batch holding every write queued before it
 * waited, not earlier. The writer is held in the middle of its batch by
 * taking LMDB's write lock from the test thread. */
static void test_pipelined(void) {
    char dir[128];
    path_in_root(dir, sizeof dir, "pipelined");
    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    MDB_env *env = env_of(st);
    CHECK(env != NULL);
    if (!env) {
        close_store(st);
        return;
    }
    MDB_txn *lock;
    CHECK_INT_EQ(mdb_txn_begin(env, NULL, 0, &lock), 0);

    call_seq = 0;
    struct rec a = {0}, b = {0}, c = {0};
    a.st = b.st = c.st = st;
    a.see = "A", a.unseen = "C";
    b.see = "A", b.unseen = "C";
    c.see = "C";
    CHECK_INT_EQ(put(st, STORE_RUNS, "A", "1"), 0);
    CHECK(wait_rec(st, &a) != NULL);
    uv_run(&loop, UV_RUN_NOWAIT); /* hands the batch over; the writer blocks */
    struct chorus_store_stats s = stats(st);
    CHECK_INT_EQ(s.writing, 1);
    CHECK_INT_EQ(s.pending_ops, 0);
    CHECK_INT_EQ(uv_loop_alive(&loop), 1); /* the batch being written keeps it alive */
    /* nothing queued, but a batch is being written: wait for that one */
    CHECK(wait_rec(st, &b) != NULL);
    CHECK_INT_EQ(put(st, STORE_RUNS, "C", "3"), 0);
    CHECK(wait_rec(st, &c) != NULL);
    s = stats(st);
    CHECK_INT_EQ(s.writing, 1);
    CHECK_INT_EQ(s.pending_ops, 1);
    for (int i = 0; i < 5; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(a.called == 0 && b.called == 0 && c.called == 0);
    CHECK_INT_EQ(stats(st).commits, 0);

    mdb_txn_abort(lock); /* let the writer go */
    CHECK(run_until(&c.called, 1));
    CHECK(a.called == 1 && b.called == 1 && c.called == 1);
    CHECK(a.order == 0 && b.order == 1 && c.order == 2);
    CHECK(!a.failed && !b.failed && !c.failed);
    /* a and b were woken by the first batch: A committed, C not yet */
    CHECK(a.saw && !a.saw_unseen);
    CHECK(b.saw && !b.saw_unseen);
    CHECK(c.saw);
    s = stats(st);
    CHECK_INT_EQ(s.commits, 2);
    CHECK_INT_EQ(s.ops, 2);
    CHECK(s.pending_ops == 0 && !s.writing);
    CHECK_INT_EQ(uv_loop_alive(&loop), 0);
    close_store(st);
}

/* 4. Nothing outstanding: NULL, and the callback is never called. */
static void test_wait_nothing(void) {
    char dir[128];
    path_in_root(dir, sizeof dir, "nothing");
    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    struct rec r = {0};
    int oom = -1;
    CHECK(chorus_store_wait(st, on_done, &r, &oom) == NULL);
    CHECK_INT_EQ(oom, 0);
    for (int i = 0; i < 5; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_INT_EQ(r.called, 0);

    /* after everything is durable, again nothing is outstanding */
    struct rec w = {0};
    CHECK_INT_EQ(put(st, STORE_TIMERS, "t", "1"), 0);
    CHECK(wait_rec(st, &w) != NULL);
    CHECK(run_until(&w.called, 1));
    oom = -1;
    CHECK(chorus_store_wait(st, on_done, &r, &oom) == NULL);
    CHECK_INT_EQ(oom, 0);
    for (int i = 0; i < 5; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_INT_EQ(r.called, 0);
    CHECK_INT_EQ(w.called, 1);
    close_store(st);
    CHECK_INT_EQ(r.called, 0);
}

/* Queues nothing more, waits for what is queued; 1 when it committed. */
static int commit(struct chorus_store *st) {
    struct rec r = {0};
    if (!wait_rec(st, &r))
        return 0;
    if (!run_until(&r.called, 1))
        return 0;
    if (r.failed)
        fprintf(stderr, "    commit failed: %s\n", r.err);
    return r.called == 1 && !r.failed;
}

/* 5. del and del_prefix. */
static void test_del(void) {
    char dir[128], key[16], buf[64];
    path_in_root(dir, sizeof dir, "del");
    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    const char *keys[] = {"a1", "a2", "a3", "ab", "b1", "`z", "a"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        CHECK_INT_EQ(put(st, STORE_RUNS, keys[i], "x"), 0);
        CHECK_INT_EQ(put(st, STORE_JOURNAL, keys[i], "y"), 0);
    }
    CHECK(commit(st));
    CHECK_INT_EQ(count(st, STORE_RUNS), 7);

    /* single deletes; a missing key is fine */
    CHECK_INT_EQ(chorus_store_del(st, STORE_RUNS, "a", 1), 0);
    CHECK_INT_EQ(chorus_store_del(st, STORE_RUNS, "nope", 4), 0);
    CHECK(commit(st));
    CHECK(!has(st, STORE_RUNS, "a"));
    CHECK(has(st, STORE_JOURNAL, "a")); /* another db: untouched */
    CHECK_INT_EQ(count(st, STORE_RUNS), 6);
    CHECK_INT_EQ(stats(st).failures, 0);

    /* prefix "a" removes a1 a2 a3 ab, not b1 nor `z; "x" matches nothing;
     * a prefix longer than a key does not match it */
    CHECK_INT_EQ(chorus_store_del_prefix(st, STORE_RUNS, "a", 1), 0);
    CHECK_INT_EQ(chorus_store_del_prefix(st, STORE_RUNS, "x", 1), 0);
    CHECK_INT_EQ(chorus_store_del_prefix(st, STORE_JOURNAL, "ab", 2), 0);
    CHECK_INT_EQ(chorus_store_del_prefix(st, STORE_JOURNAL, "a1x", 3), 0);
    CHECK_INT_EQ(chorus_store_del_prefix(st, STORE_JOURNAL, "zz", 2), 0); /* past the end */
    CHECK(commit(st));
    CHECK_INT_EQ(stats(st).failures, 0);
    CHECK_INT_EQ(count(st, STORE_RUNS), 2);
    CHECK(!has(st, STORE_RUNS, "a1") && !has(st, STORE_RUNS, "a2"));
    CHECK(!has(st, STORE_RUNS, "a3") && !has(st, STORE_RUNS, "ab"));
    CHECK(has(st, STORE_RUNS, "b1"));
    CHECK(has(st, STORE_RUNS, "`z"));
    CHECK_INT_EQ(count(st, STORE_JOURNAL), 6);
    CHECK(!has(st, STORE_JOURNAL, "ab"));
    CHECK(has(st, STORE_JOURNAL, "a") && has(st, STORE_JOURNAL, "a1"));

    /* ops of a batch apply in order */
    CHECK_INT_EQ(put(st, STORE_RUNS, "a9", "gone"), 0);
    CHECK_INT_EQ(chorus_store_del_prefix(st, STORE_RUNS, "a", 1), 0);
    CHECK_INT_EQ(put(st, STORE_RUNS, "a7", "kept"), 0);
    CHECK_INT_EQ(put(st, STORE_RUNS, "c", "x"), 0);
    CHECK_INT_EQ(chorus_store_del(st, STORE_RUNS, "c", 1), 0);
    CHECK(commit(st));
    CHECK(!has(st, STORE_RUNS, "a9"));
    CHECK_INT_EQ(gets(st, STORE_RUNS, "a7", buf, sizeof buf), 4);
    CHECK_STR_EQ(buf, "kept");
    CHECK(!has(st, STORE_RUNS, "c"));

    /* a prefix spanning many pages, between neighbours on both sides */
    int queued = 1;
    char big[200];
    memset(big, 'v', sizeof big - 1);
    big[sizeof big - 1] = 0;
    for (int i = 0; i < 3000; i++) {
        snprintf(key, sizeof key, "p%05d", i);
        queued &= put(st, STORE_OUTBOX, key, big) == 0;
    }
    CHECK_INT_EQ(put(st, STORE_OUTBOX, "o", "left"), 0);
    CHECK_INT_EQ(put(st, STORE_OUTBOX, "p", "prefix itself"), 0);
    CHECK_INT_EQ(put(st, STORE_OUTBOX, "q", "right"), 0);
    CHECK_INT_EQ(put(st, STORE_OUTBOX, "q0", "right"), 0);
    CHECK(queued);
    CHECK(commit(st));
    CHECK_INT_EQ(count(st, STORE_OUTBOX), 3004);
    CHECK_INT_EQ(chorus_store_del_prefix(st, STORE_OUTBOX, "p0", 2), 0);
    CHECK(commit(st));
    CHECK_INT_EQ(count(st, STORE_OUTBOX), 4);
    CHECK(has(st, STORE_OUTBOX, "o") && has(st, STORE_OUTBOX, "p"));
    CHECK(has(st, STORE_OUTBOX, "q") && has(st, STORE_OUTBOX, "q0"));
    CHECK_INT_EQ(chorus_store_del_prefix(st, STORE_OUTBOX, "p", 1), 0);
    CHECK(commit(st));
    CHECK_INT_EQ(count(st, STORE_OUTBOX), 3);
    CHECK(!has(st, STORE_OUTBOX, "p"));
    /* the whole db by a prefix every key has */
    for (int i = 0; i < 500; i++) {
        snprintf(key, sizeof key, "w%05d", i);
        CHECK_INT_EQ(chorus_store_put(st, STORE_DLQ, key, strlen(key), big, 150), 0);
    }
    CHECK(commit(st));
    CHECK_INT_EQ(count(st, STORE_DLQ), 500);
    CHECK_INT_EQ(chorus_store_del_prefix(st, STORE_DLQ, "w", 1), 0);
    CHECK(commit(st));
    CHECK_INT_EQ(count(st, STORE_DLQ), 0);
    CHECK_INT_EQ(stats(st).failures, 0);
    close_store(st);
}

/* 6. A waiter removed before its batch commits is never called; the others
 * are, in order, and the writes still commit. */
static void test_unwait(void) {
    char dir[128];
    path_in_root(dir, sizeof dir, "unwait");
    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    struct rec r[6];
    memset(r, 0, sizeof r);
    void *w[6];
    call_seq = 0;
    CHECK_INT_EQ(put(st, STORE_RUNS, "x", "1"), 0);
    for (int i = 1; i <= 4; i++)
        CHECK((w[i] = wait_rec(st, &r[i])) != NULL);
    chorus_store_unwait(st, w[2]);               /* the middle */
    chorus_store_unwait(st, w[4]);               /* the tail */
    CHECK((w[5] = wait_rec(st, &r[5])) != NULL); /* goes after the new tail */
    chorus_store_unwait(st, w[1]);               /* the head */
    CHECK(run_until(&r[5].called, 1));
    CHECK(r[1].called == 0 && r[2].called == 0 && r[4].called == 0);
    CHECK(r[3].called == 1 && r[5].called == 1);
    CHECK(r[3].order == 0 && r[5].order == 1);
    CHECK(has(st, STORE_RUNS, "x"));

    /* the only waiter of a batch removed: the batch commits all the same */
    struct rec only = {0};
    CHECK_INT_EQ(put(st, STORE_RUNS, "y", "2"), 0);
    void *h = wait_rec(st, &only);
    CHECK(h != NULL);
    chorus_store_unwait(st, h);
    for (int i = 0; i < 2000 && stats(st).commits < 2; i++)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_INT_EQ(stats(st).commits, 2);
    CHECK_INT_EQ(only.called, 0);
    CHECK(has(st, STORE_RUNS, "y"));
    /* the list is empty again and works */
    struct rec after = {0};
    CHECK_INT_EQ(put(st, STORE_RUNS, "z", "3"), 0);
    CHECK(wait_rec(st, &after) != NULL);
    CHECK(run_until(&after.called, 1));
    CHECK_INT_EQ(only.called, 0);

    /* removed while its batch is with the writer */
    MDB_env *env = env_of(st);
    MDB_txn *lock = NULL;
    CHECK(env != NULL && mdb_txn_begin(env, NULL, 0, &lock) == 0);
    struct rec gone = {0}, kept = {0};
    CHECK_INT_EQ(put(st, STORE_RUNS, "u", "4"), 0);
    void *hg = wait_rec(st, &gone);
    CHECK(wait_rec(st, &kept) != NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_INT_EQ(stats(st).writing, 1);
    chorus_store_unwait(st, hg);
    if (lock)
        mdb_txn_abort(lock);
    CHECK(run_until(&kept.called, 1));
    CHECK_INT_EQ(gone.called, 0);
    CHECK(has(st, STORE_RUNS, "u"));
    close_store(st);
    CHECK_INT_EQ(gone.called + only.called + r[1].called + r[2].called + r[4].called, 0);
}

/* 7. Close commits what is queued (its waiters are dropped, not called). */
static void test_close_flushes(void) {
    char dir[128], key[16], buf[64];
    path_in_root(dir, sizeof dir, "flush");
    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    int queued = 1;
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof key, "f%02d", i);
        queued &= put(st, STORE_IDEMPOTENCY, key, key) == 0;
    }
    CHECK(queued);
    struct rec r = {0};
    CHECK(wait_rec(st, &r) != NULL);
    CHECK_INT_EQ(stats(st).commits, 0);
    chorus_store_close(st); /* without a loop turn for the group commit */
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(r.called, 0);
    CHECK_INT_EQ(uv_loop_alive(&loop), 0);

    st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    CHECK_INT_EQ(count(st, STORE_IDEMPOTENCY), 50);
    int same = 1;
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof key, "f%02d", i);
        same &= gets(st, STORE_IDEMPOTENCY, key, buf, sizeof buf) == 3 && strcmp(buf, key) == 0;
    }
    CHECK(same);
    close_store(st);
}

/* 7b. Close while a batch is with the writer (held by another thread for a
 * moment): close waits for it, then commits what was queued behind it. */
static void test_close_while_writing(void) {
    char dir[128], buf[64];
    path_in_root(dir, sizeof dir, "closewriting");
    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    struct holder h = {.env = env_of(st), .ms = 150, .rc = -1};
    CHECK(h.env != NULL);
    uv_thread_t thread;
    CHECK_INT_EQ(uv_sem_init(&h.locked, 0), 0);
    CHECK_INT_EQ(uv_thread_create(&thread, hold_main, &h), 0);
    uv_sem_wait(&h.locked);
    CHECK_INT_EQ(h.rc, 0);

    struct rec a = {0}, b = {0};
    CHECK_INT_EQ(put(st, STORE_SCRIPTS, "A", "first"), 0);
    CHECK(wait_rec(st, &a) != NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_INT_EQ(stats(st).writing, 1);
    CHECK_INT_EQ(put(st, STORE_SCRIPTS, "B", "second"), 0);
    CHECK(wait_rec(st, &b) != NULL);
    chorus_store_close(st);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_thread_join(&thread);
    uv_sem_destroy(&h.locked);
    /* the queued batch's waiter is dropped; the one whose batch was with the
     * writer may be told it committed, but never twice nor of a failure */
    CHECK_INT_EQ(b.called, 0);
    CHECK(a.called <= 1 && !a.failed);

    st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    CHECK_INT_EQ(gets(st, STORE_SCRIPTS, "A", buf, sizeof buf), 5);
    CHECK_STR_EQ(buf, "first");
    CHECK_INT_EQ(gets(st, STORE_SCRIPTS, "B", buf, sizeof buf), 6);
    CHECK_STR_EQ(buf, "second");
    close_store(st);
}

/* A batch that fails is reported to its waiters, writes nothing (the batch
 * shares one transaction) and does not stop the next batches. */
static void test_failures(void) {
    char dir[128], buf[64];
    path_in_root(dir, sizeof dir, "failures");
    struct chorus_store *st = open_store(dir, 1 << 20); /* 1 MiB map */
    CHECK(st != NULL);
    if (!st)
        return;
    size_t big_len = 4 << 20;
    char *big = calloc(1, big_len);
    CHECK(big != NULL);
    if (!big) {
        close_store(st);
        return;
    }
    struct rec r1 = {0}, r2 = {0};
    call_seq = 0;
    CHECK_INT_EQ(put(st, STORE_RUNS, "ok", "1"), 0);
    CHECK(wait_rec(st, &r1) != NULL);
    CHECK_INT_EQ(chorus_store_put(st, STORE_JOURNAL, "huge", 4, big, big_len), 0);
    CHECK(wait_rec(st, &r2) != NULL);
    free(big);
    CHECK(run_until(&r2.called, 1));
    CHECK(r1.called == 1 && r2.called == 1);
    CHECK(r1.order == 0 && r2.order == 1);
    CHECK(r1.failed && r2.failed);
    CHECK(strstr(r2.err, "MDB_MAP_FULL") != NULL);
    CHECK(strncmp(r2.err, CHORUS_STORE_FULL, strlen(CHORUS_STORE_FULL)) == 0);
    CHECK(strstr(r2.err, "storage.max_size_mb") != NULL);
    CHECK_STR_EQ(r1.err, r2.err);
    struct chorus_store_stats s = stats(st);
    CHECK_INT_EQ(s.failures, 1);
    CHECK_INT_EQ(s.commits, 0);
    CHECK_INT_EQ(s.ops, 0);
    CHECK(!has(st, STORE_RUNS, "ok"));
    CHECK(!has(st, STORE_JOURNAL, "huge"));

    /* the next batch commits */
    CHECK_INT_EQ(put(st, STORE_RUNS, "after", "2"), 0);
    CHECK(commit(st));
    CHECK_INT_EQ(gets(st, STORE_RUNS, "after", buf, sizeof buf), 1);

    /* an empty key is refused by LMDB: the batch fails with a message */
    struct rec r3 = {0};
    CHECK_INT_EQ(chorus_store_put(st, STORE_RUNS, "", 0, "v", 1), 0);
    CHECK(wait_rec(st, &r3) != NULL);
    CHECK(run_until(&r3.called, 1));
    CHECK(r3.failed);
    CHECK(strstr(r3.err, "store: write to") != NULL);
    s = stats(st);
    CHECK_INT_EQ(s.failures, 2);
    CHECK_INT_EQ(s.commits, 1);
    close_store(st);
}

/* 8. Binary keys (with NUL bytes) and values persist across close/open and
 * scan in key order (bytewise, a prefix before its extensions). */
struct bkey {
    const char *k;
    size_t n;
};
static const struct bkey SORTED[] = {
    {"\0", 1},  {"\0\0", 2}, {"\0\1", 2}, {"\1", 1},   {"a", 1},
    {"a\0", 2}, {"a\0b", 3}, {"ab", 2},   {"\xff", 1}, {"\xff\0", 2},
};
#define NKEYS (sizeof SORTED / sizeof *SORTED)
#define BIGVAL 70000

static size_t value_of(size_t i, unsigned char *out) {
    size_t n = i == 6 ? BIGVAL : 5 + i;
    for (size_t j = 0; j < n; j++)
        out[j] = j % 3 == 1 ? 0 : (unsigned char)(i * 31 + j * 7);
    return n;
}

/* Scans db with a cursor; 1 when it holds exactly the keys of SORTED with
 * mask bit i set, in order, with their values. */
static int scan_matches(struct chorus_store *st, int db, unsigned mask) {
    static unsigned char want[BIGVAL];
    const char *err = NULL;
    MDB_txn *txn = chorus_store_reader(st, &err);
    if (!txn)
        return 0;
    MDB_cursor *c;
    if (mdb_cursor_open(txn, chorus_store_dbi(st, db), &c) != 0) {
        chorus_store_reader_done(st);
        return 0;
    }
    MDB_val k, raw, v;
    int ok = 1;
    size_t i = 0;
    for (int rc = mdb_cursor_get(c, &k, &raw, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &raw, MDB_NEXT)) {
        if (chorus_store_value(db, &k, &raw, &v) != 0) {
            fprintf(stderr, "    scan: a checksum does not match\n");
            ok = 0;
            break;
        }
        while (i < NKEYS && !(mask & (1u << i)))
            i++;
        if (i == NKEYS) {
            ok = 0;
            break;
        }
        size_t n = value_of(i, want);
        if (k.mv_size != SORTED[i].n || memcmp(k.mv_data, SORTED[i].k, k.mv_size) != 0 ||
            v.mv_size != n || memcmp(v.mv_data, want, n) != 0) {
            fprintf(stderr, "    scan: record %zu differs\n", i);
            ok = 0;
        }
        i++;
    }
    while (i < NKEYS && !(mask & (1u << i)))
        i++;
    ok &= i == NKEYS;
    mdb_cursor_close(c);
    chorus_store_reader_done(st);
    return ok;
}

static void test_binary_persistence(void) {
    static unsigned char val[BIGVAL];
    char dir[128];
    path_in_root(dir, sizeof dir, "binary");
    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    /* queued out of order */
    const size_t order[] = {7, 2, 9, 0, 4, 6, 1, 8, 3, 5};
    int queued = 1;
    for (size_t j = 0; j < NKEYS; j++) {
        size_t i = order[j];
        size_t n = value_of(i, val);
        queued &= chorus_store_put(st, STORE_SCRIPTS, SORTED[i].k, SORTED[i].n, val, n) == 0;
    }
    CHECK(queued);
    CHECK(commit(st));
    CHECK(scan_matches(st, STORE_SCRIPTS, (1u << NKEYS) - 1));
    /* "\0" and "\0\0" are different keys from each other and from "" */
    char buf[8];
    CHECK_INT_EQ(get(st, STORE_SCRIPTS, "\0", 1, buf, sizeof buf), 5);
    CHECK_INT_EQ(get(st, STORE_SCRIPTS, "\0\0", 2, buf, sizeof buf), 6);
    CHECK_INT_EQ(get(st, STORE_SCRIPTS, "a\0b", 3, NULL, 0), BIGVAL);
    CHECK_INT_EQ(get(st, STORE_SCRIPTS, "\0\0\0", 3, NULL, 0), -1);
    close_store(st);

    st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    CHECK(scan_matches(st, STORE_SCRIPTS, (1u << NKEYS) - 1));
    CHECK_INT_EQ(count(st, STORE_RUNS), 0);
    /* a binary prefix: "\0" takes the first three, "a\0" the two after "a" */
    CHECK_INT_EQ(chorus_store_del_prefix(st, STORE_SCRIPTS, "\0", 1), 0);
    CHECK_INT_EQ(chorus_store_del_prefix(st, STORE_SCRIPTS, "a\0", 2), 0);
    CHECK(commit(st));
    unsigned rest = ((1u << NKEYS) - 1) & ~(1u << 0 | 1u << 1 | 1u << 2 | 1u << 5 | 1u << 6);
    CHECK(scan_matches(st, STORE_SCRIPTS, rest));
    close_store(st);

    st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    CHECK(scan_matches(st, STORE_SCRIPTS, rest));
    CHECK_INT_EQ(count(st, STORE_SCRIPTS), 5);
    close_store(st);
}

/* ---- checksums, corruption, growth ------------------------------------------- */

static struct chorus_store *open_sized(const char *dir, size_t map_size, size_t max_size) {
    char err[256] = "";
    struct chorus_store_opts opts = {.sync = 1, .map_size = map_size, .max_size = max_size};
    struct chorus_store *st = chorus_store_open(&loop, dir, &opts, err, sizeof err);
    if (!st)
        fprintf(stderr, "    open %s: %s\n", dir, err);
    return st;
}

/* Overwrites the first occurrence of needle in dir/data.mdb with repl (same
 * length). 1 when it was found. */
static int overwrite_in_file(const char *dir, const char *needle, const char *repl) {
    char path[200];
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    FILE *f = fopen(path, "r+b");
    if (!f)
        return 0;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    char *buf = malloc((size_t)size);
    int found = 0;
    rewind(f);
    if (buf && fread(buf, 1, (size_t)size, f) == (size_t)size) {
        size_t n = strlen(needle);
        for (long i = 0; i + (long)n <= size && !found; i++)
            if (memcmp(buf + i, needle, n) == 0) {
                fseek(f, i, SEEK_SET);
                found = fwrite(repl, 1, n, f) == n;
            }
    }
    free(buf);
    fclose(f);
    return found;
}

struct bad_seen {
    int n;
    int db[8];
    char key[8][64];
    char why[8][64];
};

static void on_bad(void *data, int db, const void *key, size_t klen, const char *why) {
    struct bad_seen *b = data;
    if (b->n < 8) {
        b->db[b->n] = db;
        snprintf(b->key[b->n], sizeof b->key[0], "%.*s", key ? (int)klen : 0,
                 key ? (const char *)key : "");
        snprintf(b->why[b->n], sizeof b->why[0], "%s", why);
    }
    b->n++;
}

/* 9. Values are stored behind their checksum; a flipped byte, a value under
 * another key or a short value fails the check. */
static void test_checksums(void) {
    char dir[128];
    path_in_root(dir, sizeof dir, "checksums");
    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    CHECK_INT_EQ(put(st, STORE_RUNS, "run-1", "{\"marker\":\"AAAA\"}"), 0);
    CHECK_INT_EQ(put(st, STORE_RUNS, "run-2", "{\"marker\":\"AAAA\"}"), 0);
    CHECK(commit(st));
    const char *err = NULL;
    MDB_txn *txn = chorus_store_reader(st, &err);
    CHECK(txn != NULL);
    if (txn) {
        MDB_val k = {5, "run-1"}, k2 = {5, "run-2"}, raw, v;
        CHECK_INT_EQ(mdb_get(txn, chorus_store_dbi(st, STORE_RUNS), &k, &raw), 0);
        CHECK_INT_EQ((long)raw.mv_size, CHORUS_STORE_CHECKSUM_LEN + 17);
        CHECK_INT_EQ(chorus_store_value(STORE_RUNS, &k, &raw, &v), 0);
        CHECK(v.mv_size == 17 && memcmp(v.mv_data, "{\"marker\":\"AAAA\"}", 17) == 0);
        char copy[64];
        memcpy(copy, raw.mv_data, raw.mv_size);
        MDB_val c = {raw.mv_size, copy};
        copy[CHORUS_STORE_CHECKSUM_LEN + 3] ^= 1; /* a flipped bit in the value */
        CHECK_INT_EQ(chorus_store_value(STORE_RUNS, &k, &c, &v), -1);
        copy[CHORUS_STORE_CHECKSUM_LEN + 3] ^= 1;
        CHECK_INT_EQ(chorus_store_value(STORE_RUNS, &k, &c, &v), 0);
        copy[0] ^= 0x80; /* in the checksum itself */
        CHECK_INT_EQ(chorus_store_value(STORE_RUNS, &k, &c, &v), -1);
        copy[0] ^= 0x80;
        /* the same bytes under another key do not match */
        CHECK_INT_EQ(chorus_store_value(STORE_RUNS, &k2, &c, &v), -1);
        MDB_val shorter = {CHORUS_STORE_CHECKSUM_LEN - 1, copy};
        CHECK_INT_EQ(chorus_store_value(STORE_RUNS, &k, &shorter, &v), -1);
        chorus_store_reader_done(st);
    }
    char msg[300];
    chorus_store_describe(msg, sizeof msg, STORE_JOURNAL, "ab\0\1'", 5, "checksum mismatch");
    CHECK_STR_EQ(msg, "corrupt record in database journal, key 'ab\\x00\\x01\\x27': checksum "
                      "mismatch");
    close_store(st);
}

/* 10. verify counts every database's entries and names each bad one: a
 * checksum that does not match (bytes overwritten in data.mdb) and a value
 * that is not JSON where JSON belongs. */
static void test_verify(void) {
    char dir[128], err[256];
    path_in_root(dir, sizeof dir, "verify");
    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    CHECK_INT_EQ(put(st, STORE_RUNS, "good", "{\"marker\":\"GOOD\"}"), 0);
    CHECK_INT_EQ(put(st, STORE_RUNS, "victim", "{\"marker\":\"ZZZZ\"}"), 0);
    CHECK_INT_EQ(put(st, STORE_TIMERS, "t", "{\"deadline_at\":1}"), 0);
    CHECK_INT_EQ(put(st, STORE_SCRIPTS, "h", "return {} -- not JSON, and fine"), 0);
    CHECK(commit(st));
    long counts[STORE_NDB];
    struct bad_seen b = {0};
    CHECK_INT_EQ(chorus_store_verify(st, counts, 0, on_bad, &b, err, sizeof err), 0);
    CHECK_INT_EQ(b.n, 0);
    CHECK_INT_EQ(counts[STORE_RUNS], 2);
    CHECK_INT_EQ(counts[STORE_TIMERS], 1);
    CHECK_INT_EQ(counts[STORE_SCRIPTS], 1);
    CHECK_INT_EQ(counts[STORE_META], 1);
    CHECK_INT_EQ(counts[STORE_JOURNAL], 0);
    /* a value that is not JSON in a JSON database */
    CHECK_INT_EQ(put(st, STORE_OUTBOX, "o", "{half"), 0);
    CHECK(commit(st));
    CHECK_INT_EQ(chorus_store_verify(st, counts, 0, on_bad, &b, err, sizeof err), 1);
    CHECK(b.n == 1 && b.db[0] == STORE_OUTBOX);
    CHECK_STR_EQ(b.key[0], "o");
    CHECK_STR_EQ(b.why[0], "not JSON");
    CHECK_INT_EQ(chorus_store_del(st, STORE_OUTBOX, "o", 1), 0);
    CHECK(commit(st));
    close_store(st);

    /* bytes overwritten in the file, as a failing disk would */
    CHECK(overwrite_in_file(dir, "ZZZZ", "ZZZY"));
    st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    memset(&b, 0, sizeof b);
    CHECK_INT_EQ(chorus_store_verify(st, counts, 0, on_bad, &b, err, sizeof err), 1);
    CHECK(b.n == 1 && b.db[0] == STORE_RUNS);
    CHECK_STR_EQ(b.key[0], "victim");
    CHECK_STR_EQ(b.why[0], "checksum mismatch");
    CHECK_INT_EQ(counts[STORE_RUNS], 2);
    char buf[64];
    CHECK_INT_EQ(gets(st, STORE_RUNS, "victim", buf, sizeof buf), -3);
    CHECK_INT_EQ(gets(st, STORE_RUNS, "good", buf, sizeof buf), 17);
    close_store(st);
}

/* Scans r in db; the records seen into *s, the count (or -1, err set). */
static long scan(struct chorus_store *st, int db, struct chorus_store_range r, struct seen *s,
                 char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    if (!r.limit)
        r.limit = 1000;
    return chorus_store_scan(st, db, &r, on_record, s, err, errlen);
}

/* 10b. The reads of store.h: get of a present and an absent key, count,
 * scan by prefix, from (inclusive), to (exclusive) and limit, in key order;
 * a corrupt record is an error naming database and key, from get and from
 * a scan that reaches it, never skipped. */
static void test_reads(void) {
    char dir[128], err[512], buf[64];
    path_in_root(dir, sizeof dir, "reads");
    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    const char *keys[] = {"a:1", "a:2", "a:3", "b:1", "b:2"};
    for (int i = 0; i < 5; i++)
        CHECK_INT_EQ(put(st, STORE_RUNS, keys[i], "{\"v\":1}"), 0);
    CHECK(commit(st));

    struct seen s = {.out = buf, .outlen = sizeof buf};
    CHECK_INT_EQ(chorus_store_get(st, STORE_RUNS, "a:2", 3, on_record, &s, err, sizeof err), 1);
    CHECK_INT_EQ(s.n, 1);
    CHECK_STR_EQ(buf, "{\"v\":1}");
    CHECK_INT_EQ(chorus_store_get(st, STORE_RUNS, "a:9", 3, on_record, &s, err, sizeof err), 0);
    CHECK_INT_EQ(s.n, 1); /* not called for an absent key */
    CHECK_INT_EQ(chorus_store_count(st, STORE_RUNS, err, sizeof err), 5);
    CHECK_INT_EQ(chorus_store_count(st, STORE_JOURNAL, err, sizeof err), 0);

    CHECK_INT_EQ(scan(st, STORE_RUNS, (struct chorus_store_range){0}, &s, err, sizeof err), 5);
    CHECK(s.n == 5 && strcmp(s.keys[0], "a:1") == 0 && strcmp(s.keys[4], "b:2") == 0);
    struct chorus_store_range by_prefix = {.prefix = "a:", .plen = 2};
    CHECK_INT_EQ(scan(st, STORE_RUNS, by_prefix, &s, err, sizeof err), 3);
    CHECK(strcmp(s.keys[0], "a:1") == 0 && strcmp(s.keys[2], "a:3") == 0);
    struct chorus_store_range from_to = {.from = "a:2", .flen = 3, .to = "b:2", .tlen = 3};
    CHECK_INT_EQ(scan(st, STORE_RUNS, from_to, &s, err, sizeof err), 3);
    CHECK(strcmp(s.keys[0], "a:2") == 0 && strcmp(s.keys[2], "b:1") == 0);
    struct chorus_store_range to_prefix = {.to = "a:", .tlen = 2}; /* nothing sorts before "a:" */
    CHECK_INT_EQ(scan(st, STORE_RUNS, to_prefix, &s, err, sizeof err), 0);
    struct chorus_store_range limited = {.prefix = "b", .plen = 1, .limit = 1};
    CHECK_INT_EQ(scan(st, STORE_RUNS, limited, &s, err, sizeof err), 1);
    CHECK_STR_EQ(s.keys[0], "b:1");
    struct chorus_store_range none = {.prefix = "c", .plen = 1};
    CHECK_INT_EQ(scan(st, STORE_RUNS, none, &s, err, sizeof err), 0);
    CHECK_INT_EQ(scan(st, STORE_JOURNAL, (struct chorus_store_range){0}, &s, err, sizeof err), 0);

    CHECK_INT_EQ(put(st, STORE_RUNS, "a:2", "{\"marker\":\"QQQQ\"}"), 0);
    CHECK(commit(st));
    close_store(st);
    CHECK(overwrite_in_file(dir, "QQQQ", "QQQR"));
    st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    err[0] = 0;
    CHECK_INT_EQ(chorus_store_get(st, STORE_RUNS, "a:2", 3, on_record, &s, err, sizeof err), -1);
    CHECK_STR_EQ(err, "store: corrupt record in database runs, key 'a:2': checksum mismatch");
    err[0] = 0;
    CHECK_INT_EQ(scan(st, STORE_RUNS, by_prefix, &s, err, sizeof err), -1);
    CHECK_INT_EQ(s.n, 1); /* a:1 came before the bad one */
    CHECK_STR_EQ(err, "store: corrupt record in database runs, key 'a:2': checksum mismatch");
    /* the reads around it still work: the reader was let go */
    CHECK_INT_EQ(scan(st, STORE_RUNS, (struct chorus_store_range){.from = "a:3", .flen = 3}, &s,
                      err, sizeof err),
                 3);
    CHECK_INT_EQ(gets(st, STORE_RUNS, "b:2", buf, sizeof buf), 7);
    CHECK_INT_EQ(count(st, STORE_RUNS), 5);
    close_store(st);
}

/* 11. A full map grows (doubling) up to max_size and the batch that did not
 * fit commits; past max_size the batch fails with CHORUS_STORE_FULL and the
 * next one that fits commits. With max_size 0 the map never grows. */
static void test_growth(void) {
    char dir[128], buf[64];
    path_in_root(dir, sizeof dir, "growth");
    struct chorus_store *st = open_sized(dir, 1 << 20, 8 << 20);
    CHECK(st != NULL);
    if (!st)
        return;
    struct chorus_store_stats s = stats(st);
    CHECK_INT_EQ((long)s.map_size, 1 << 20);
    CHECK_INT_EQ((long)s.max_size, 8 << 20);
    size_t len = 3 << 20;
    char *big = calloc(1, 16 << 20);
    CHECK(big != NULL);
    if (!big) {
        close_store(st);
        return;
    }
    memset(big, 'x', 16 << 20);
    CHECK_INT_EQ(put(st, STORE_RUNS, "small", "{}"), 0);
    CHECK_INT_EQ(chorus_store_put(st, STORE_SCRIPTS, "three", 5, big, len), 0);
    CHECK(commit(st));
    s = stats(st);
    CHECK(s.grows >= 2);
    CHECK(s.map_size >= (size_t)4 << 20 && s.map_size <= (size_t)8 << 20);
    CHECK_INT_EQ(s.failures, 0);
    CHECK_INT_EQ(s.full, 0);
    CHECK_INT_EQ(gets(st, STORE_RUNS, "small", buf, sizeof buf), 2);
    CHECK_INT_EQ(get(st, STORE_SCRIPTS, "three", 5, NULL, 0), (long)len);

    /* more than max_size can hold */
    struct rec r = {0};
    CHECK_INT_EQ(chorus_store_put(st, STORE_SCRIPTS, "sixteen", 7, big, 16 << 20), 0);
    CHECK_INT_EQ(put(st, STORE_RUNS, "with-it", "{}"), 0);
    CHECK(wait_rec(st, &r) != NULL);
    CHECK(run_until(&r.called, 1));
    CHECK(r.failed);
    CHECK(strncmp(r.err, CHORUS_STORE_FULL, strlen(CHORUS_STORE_FULL)) == 0);
    CHECK(strstr(r.err, "8 MiB") != NULL);
    s = stats(st);
    CHECK_INT_EQ((long)s.map_size, 8 << 20);
    CHECK_INT_EQ(s.full, 1);
    CHECK_INT_EQ(s.failures, 1);
    CHECK(!has(st, STORE_RUNS, "with-it")); /* the batch is all or nothing */
    CHECK_INT_EQ(put(st, STORE_RUNS, "after", "{}"), 0);
    CHECK(commit(st));
    CHECK_INT_EQ(stats(st).full, 0);
    CHECK(has(st, STORE_RUNS, "after"));

    /* close applies what is queued, growing too: a fresh 1 MiB map */
    close_store(st);
    path_in_root(dir, sizeof dir, "growth-close");
    st = open_sized(dir, 1 << 20, 8 << 20);
    CHECK(st != NULL);
    if (st) {
        CHECK_INT_EQ(chorus_store_put(st, STORE_SCRIPTS, "two", 3, big, 2 << 20), 0);
        close_store(st);
    }
    st = open_sized(dir, 1 << 20, 8 << 20);
    CHECK(st != NULL);
    if (st) {
        CHECK_INT_EQ(get(st, STORE_SCRIPTS, "two", 3, NULL, 0), 2 << 20);
        CHECK(stats(st).map_size >= (size_t)2 << 20); /* opened at what the file holds */
        close_store(st);
    }
    free(big);
}

/* 12. A version-1 folder (values without checksums) is migrated on open: the
 * values read back the same and verify finds nothing wrong. */
static void test_migrate_v1(void) {
    char dir[128], buf[64], err[256];
    path_in_root(dir, sizeof dir, "v1");
    mkdir(dir, 0700);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta, runs;
    CHECK_INT_EQ(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, STORE_NDB);
    CHECK_INT_EQ(mdb_env_open(env, dir, 0, 0600), 0);
    CHECK_INT_EQ(mdb_txn_begin(env, NULL, 0, &txn), 0);
    CHECK_INT_EQ(mdb_dbi_open(txn, "meta", MDB_CREATE, &meta), 0);
    CHECK_INT_EQ(mdb_dbi_open(txn, "runs", MDB_CREATE, &runs), 0);
    MDB_val k = {strlen("schema_version"), "schema_version"}, v = {1, "1"};
    CHECK_INT_EQ(mdb_put(txn, meta, &k, &v, 0), 0);
    for (int i = 0; i < 50; i++) {
        char key[16], val[32];
        snprintf(key, sizeof key, "r%02d", i);
        snprintf(val, sizeof val, "{\"n\":%d}", i);
        MDB_val rk = {strlen(key), key}, rv = {strlen(val), val};
        CHECK_INT_EQ(mdb_put(txn, runs, &rk, &rv, 0), 0);
    }
    CHECK_INT_EQ(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    CHECK_INT_EQ(gets(st, STORE_META, "schema_version", buf, sizeof buf), 1);
    CHECK_STR_EQ(buf, "4");
    CHECK_INT_EQ(gets(st, STORE_RUNS, "r07", buf, sizeof buf), 7);
    CHECK_STR_EQ(buf, "{\"n\":7}");
    CHECK_INT_EQ(gets(st, STORE_RUNS, "r49", buf, sizeof buf), 8);
    long counts[STORE_NDB];
    struct bad_seen b = {0};
    CHECK_INT_EQ(chorus_store_verify(st, counts, 0, on_bad, &b, err, sizeof err), 0);
    CHECK_INT_EQ(counts[STORE_RUNS], 50);
    close_store(st);
    /* and reopens as version 2 */
    st = open_store(dir, 0);
    CHECK(st != NULL);
    if (st) {
        CHECK_INT_EQ(gets(st, STORE_RUNS, "r00", buf, sizeof buf), 7);
        close_store(st);
    }
}

/* 13. A zero-length data.mdb in an existing folder is refused, and left as
 * it is. */
static void test_empty_file(void) {
    char dir[128], path[200], err[256] = "";
    path_in_root(dir, sizeof dir, "empty");
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (f)
        fclose(f);
    struct chorus_store *st = chorus_store_open(&loop, dir, NULL, err, sizeof err);
    CHECK(st == NULL);
    CHECK(strstr(err, "is empty (0 bytes)") != NULL);
    CHECK(strstr(err, path) != NULL);
    if (st)
        close_store(st);
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && sb.st_size == 0);
}

/* Queues the index row of run id: time t, its keys (NULL-ended). */
static int index_run(struct chorus_store *st, const char *id, uint64_t t, const char *const *keys) {
    size_t klens[CHORUS_INDEX_MAX_KEYS];
    int n = 0;
    while (keys[n]) {
        klens[n] = strlen(keys[n]);
        n++;
    }
    char *row;
    size_t rowlen;
    if (chorus_store_index_row(t, keys, klens, n, id, strlen(id), &row, &rowlen) != 0)
        return -1;
    int rc = chorus_store_index_put(st, id, strlen(id), row, rowlen);
    free(row);
    return rc;
}

/* The ids key lists (newest first, from before, at most limit), joined by
 * spaces into out; the number listed, or -1 with the error printed. */
static int list_ids(struct chorus_store *st, const char *key, const char *also, const char *before,
                    size_t beforelen, uint64_t since, uint64_t until, size_t limit, char *out,
                    size_t outlen) {
    struct chorus_index_query q = {.key = key,
                                   .klen = strlen(key),
                                   .since = since,
                                   .until = until,
                                   .limit = limit,
                                   .before = before,
                                   .beforelen = beforelen};
    if (also) {
        q.also[0] = also;
        q.alsolen[0] = strlen(also);
        q.nalso = 1;
    }
    struct chorus_index_page page = {0};
    char err[256];
    out[0] = 0;
    if (chorus_store_index_list(st, &q, &page, err, sizeof err) != 0) {
        fprintf(stderr, "    index_list: %s\n", err);
        chorus_store_index_page_free(&page);
        return -1;
    }
    size_t used = 0;
    for (size_t i = 0; i < page.n; i++) {
        const struct chorus_index_hit *h = &page.hits[i];
        /* the summary is the id here */
        CHECK(h->sum_len == h->id_len &&
              memcmp(page.bytes + h->id_off, page.bytes + h->sum_off, h->id_len) == 0);
        used += (size_t)snprintf(out + used, outlen - used, "%s%.*s", i ? " " : "", (int)h->id_len,
                                 page.bytes + h->id_off);
    }
    int n = (int)page.n;
    chorus_store_index_page_free(&page);
    return n;
}

/* 18. The runs' index: a run under several keys, listed newest first, from
 * a bound, with since/until and an also-key; re-indexing moves the run (in
 * one batch too); deleting its record drops it; a corrupt record is named. */
static void test_run_index(void) {
    char dir[128], ids[512];
    path_in_root(dir, sizeof dir, "index");
    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    static const char *const ok_keys[] = {"a", "ok", "w:pay", NULL};
    static const char *const failed_keys[] = {"a", "failed", "w:pay", NULL};
    static const char *const other_keys[] = {"a", "failed", "w:mail", NULL};
    const char *names[] = {"r1", "r2", "r3", "r4", "r5"};
    for (int i = 0; i < 5; i++) {
        CHECK_INT_EQ(put(st, STORE_RUNS, names[i], "{}"), 0);
        CHECK_INT_EQ(index_run(st, names[i], 100 + (uint64_t)i / 2,
                               i == 4  ? other_keys
                               : i % 2 ? failed_keys
                                       : ok_keys),
                     0);
    }
    CHECK(commit(st));
    /* times 100 100 101 101 102: ties ordered by id, newest (largest) first */
    CHECK_INT_EQ(list_ids(st, "a", NULL, NULL, 0, 0, 0, 10, ids, sizeof ids), 5);
    CHECK_STR_EQ(ids, "r5 r4 r3 r2 r1");
    CHECK_INT_EQ(list_ids(st, "failed", NULL, NULL, 0, 0, 0, 10, ids, sizeof ids), 3);
    CHECK_STR_EQ(ids, "r5 r4 r2");
    CHECK_INT_EQ(list_ids(st, "failed", "w:pay", NULL, 0, 0, 0, 10, ids, sizeof ids), 2);
    CHECK_STR_EQ(ids, "r4 r2");
    CHECK_INT_EQ(list_ids(st, "a", NULL, NULL, 0, 101, 102, 10, ids, sizeof ids), 2);
    CHECK_STR_EQ(ids, "r4 r3");
    CHECK_INT_EQ(list_ids(st, "a", NULL, NULL, 0, 0, 0, 2, ids, sizeof ids), 2);
    CHECK_STR_EQ(ids, "r5 r4");
    /* from the time key of r4 (exclusive): the page after it */
    char bound[16] = {0, 0, 0, 0, 0, 0, 0, 101, 'r', '4'};
    CHECK_INT_EQ(list_ids(st, "a", NULL, bound, 10, 0, 0, 2, ids, sizeof ids), 2);
    CHECK_STR_EQ(ids, "r3 r2");
    /* a bound below every entry, and a key nobody has */
    char low[9] = {0, 0, 0, 0, 0, 0, 0, 1, 'x'};
    CHECK_INT_EQ(list_ids(st, "a", NULL, low, 9, 0, 0, 10, ids, sizeof ids), 0);
    CHECK_INT_EQ(list_ids(st, "nobody", NULL, NULL, 0, 0, 0, 10, ids, sizeof ids), 0);
    CHECK_INT_EQ(count(st, STORE_RUN_INDEX), 15);
    CHECK_INT_EQ(count(st, STORE_RUN_ROWS), 5);

    /* r1: ok → failed → ok → failed in one batch; r2: failed → ok */
    CHECK_INT_EQ(index_run(st, "r1", 100, failed_keys), 0);
    CHECK_INT_EQ(index_run(st, "r1", 100, ok_keys), 0);
    CHECK_INT_EQ(index_run(st, "r1", 100, failed_keys), 0);
    CHECK(commit(st));
    CHECK_INT_EQ(index_run(st, "r2", 100, ok_keys), 0);
    CHECK(commit(st));
    CHECK_INT_EQ(list_ids(st, "failed", NULL, NULL, 0, 0, 0, 10, ids, sizeof ids), 3);
    CHECK_STR_EQ(ids, "r5 r4 r1");
    CHECK_INT_EQ(list_ids(st, "ok", NULL, NULL, 0, 0, 0, 10, ids, sizeof ids), 2);
    CHECK_STR_EQ(ids, "r3 r2");
    CHECK_INT_EQ(count(st, STORE_RUN_INDEX), 15);

    /* deleting a record drops its row and entries, by key and by prefix */
    CHECK_INT_EQ(chorus_store_del(st, STORE_RUNS, "r4", 2), 0);
    CHECK(commit(st));
    CHECK_INT_EQ(list_ids(st, "a", NULL, NULL, 0, 0, 0, 10, ids, sizeof ids), 4);
    CHECK_STR_EQ(ids, "r5 r3 r2 r1");
    CHECK_INT_EQ(count(st, STORE_RUN_ROWS), 4);
    CHECK_INT_EQ(chorus_store_del_prefix(st, STORE_RUNS, "r", 1), 0);
    CHECK(commit(st));
    CHECK_INT_EQ(count(st, STORE_RUN_INDEX), 0);
    CHECK_INT_EQ(count(st, STORE_RUN_ROWS), 0);
    CHECK_INT_EQ(stats(st).failures, 0);

    /* a listed run whose record is corrupt is named, not skipped */
    CHECK_INT_EQ(put(st, STORE_RUNS, "r9", "{}"), 0);
    CHECK_INT_EQ(index_run(st, "r9", 200, ok_keys), 0);
    CHECK(commit(st));
    close_store(st);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi runs;
    CHECK_INT_EQ(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, STORE_NDB);
    CHECK_INT_EQ(mdb_env_open(env, dir, 0, 0600), 0);
    CHECK_INT_EQ(mdb_txn_begin(env, NULL, 0, &txn), 0);
    CHECK_INT_EQ(mdb_dbi_open(txn, "runs", 0, &runs), 0);
    MDB_val k = {2, "r9"}, v = {10, "0123456789"};
    CHECK_INT_EQ(mdb_put(txn, runs, &k, &v, 0), 0);
    CHECK_INT_EQ(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    struct chorus_index_query q = {.key = "a", .klen = 1, .limit = 10};
    struct chorus_index_page page = {0};
    char err[256] = "";
    CHECK_INT_EQ(chorus_store_index_list(st, &q, &page, err, sizeof err), -1);
    CHECK(strstr(err, "corrupt record in database runs, key 'r9'") != NULL);
    chorus_store_index_page_free(&page);
    close_store(st);
}

/* Writes a later op of their batch undoes are left out (store.c, "moot
 * writes"), and the batch leaves what it did with them: a run's journal
 * entries dropped with its journal, its first record and index row replaced
 * by the finished ones, its timer deleted; what committed before is still
 * deleted; a delete by prefix in runs still finds the run to drop its index. */
static void test_moot(void) {
    char dir[128], buf[64], ids[256];
    path_in_root(dir, sizeof dir, "moot");
    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    static const char *const running[] = {"a", "s:running", NULL};
    static const char *const done[] = {"a", "s:done", NULL};
    CHECK_INT_EQ(put(st, STORE_JOURNAL, "r0#1", "old"), 0);
    CHECK(commit(st));
    uint64_t ops0 = stats(st).ops;
    /* one batch: run r0 (journaled before) and r1 finish, r2 goes on */
    CHECK_INT_EQ(put(st, STORE_RUNS, "r1", "running"), 0);
    CHECK_INT_EQ(index_run(st, "r1", 5, running), 0);
    CHECK_INT_EQ(put(st, STORE_TIMERS, "r1", "{}"), 0);
    CHECK_INT_EQ(put(st, STORE_JOURNAL, "r1#1", "e1"), 0);
    CHECK_INT_EQ(put(st, STORE_JOURNAL, "r2#1", "e2"), 0);
    CHECK_INT_EQ(put(st, STORE_JOURNAL, "r0#2", "e0"), 0);
    CHECK_INT_EQ(put(st, STORE_JOURNAL, "r1#2", "e1"), 0);
    CHECK_INT_EQ(put(st, STORE_RUNS, "r1", "done"), 0);
    CHECK_INT_EQ(index_run(st, "r1", 5, done), 0);
    CHECK_INT_EQ(chorus_store_del(st, STORE_TIMERS, "r1", 2), 0);
    CHECK_INT_EQ(chorus_store_del_prefix(st, STORE_JOURNAL, "r1", 2), 0);
    CHECK_INT_EQ(chorus_store_del_prefix(st, STORE_JOURNAL, "r0", 2), 0);
    CHECK_INT_EQ(put(st, STORE_JOURNAL, "r1#9", "after"), 0); /* after the drop: kept */
    CHECK(commit(st));
    /* left out: the first record, its row, the timer, three journal entries */
    CHECK_INT_EQ(stats(st).moot, 6);
    CHECK_INT_EQ(stats(st).ops - ops0, 13 - 6);
    CHECK_INT_EQ(gets(st, STORE_RUNS, "r1", buf, sizeof buf), 4);
    CHECK_STR_EQ(buf, "done");
    CHECK(!has(st, STORE_TIMERS, "r1"));
    CHECK(!has(st, STORE_JOURNAL, "r0#1") && !has(st, STORE_JOURNAL, "r0#2"));
    CHECK(!has(st, STORE_JOURNAL, "r1#1") && !has(st, STORE_JOURNAL, "r1#2"));
    CHECK(has(st, STORE_JOURNAL, "r2#1") && has(st, STORE_JOURNAL, "r1#9"));
    CHECK_INT_EQ(list_ids(st, "s:done", NULL, NULL, 0, 0, 0, 10, ids, sizeof ids), 1);
    CHECK_INT_EQ(list_ids(st, "s:running", NULL, NULL, 0, 0, 0, 10, ids, sizeof ids), 0);
    CHECK_INT_EQ(list_ids(st, "a", NULL, NULL, 0, 0, 0, 10, ids, sizeof ids), 1);
    /* a status move across commits keeps the unchanged entries */
    CHECK_INT_EQ(index_run(st, "r1", 5, running), 0);
    CHECK(commit(st));
    CHECK_INT_EQ(list_ids(st, "a", NULL, NULL, 0, 0, 0, 10, ids, sizeof ids), 1);
    CHECK_INT_EQ(list_ids(st, "s:running", NULL, NULL, 0, 0, 0, 10, ids, sizeof ids), 1);
    CHECK_INT_EQ(list_ids(st, "s:done", NULL, NULL, 0, 0, 0, 10, ids, sizeof ids), 0);
    CHECK_INT_EQ(count(st, STORE_RUN_INDEX), 2);
    /* ... and a new start time moves every entry */
    CHECK_INT_EQ(index_run(st, "r1", 7, running), 0);
    CHECK(commit(st));
    CHECK_INT_EQ(count(st, STORE_RUN_INDEX), 2);
    char bound[9] = {0, 0, 0, 0, 0, 0, 0, 6, 0};
    CHECK_INT_EQ(list_ids(st, "a", NULL, bound, 9, 0, 0, 10, ids, sizeof ids), 0);
    /* a run written and deleted by prefix in one batch: record, row, entries gone */
    CHECK_INT_EQ(put(st, STORE_RUNS, "q1", "x"), 0);
    CHECK_INT_EQ(index_run(st, "q1", 9, done), 0);
    CHECK_INT_EQ(chorus_store_del_prefix(st, STORE_RUNS, "q", 1), 0);
    CHECK(commit(st));
    CHECK(!has(st, STORE_RUNS, "q1"));
    CHECK_INT_EQ(count(st, STORE_RUN_ROWS), 1);
    CHECK_INT_EQ(count(st, STORE_RUN_INDEX), 2);
    CHECK_INT_EQ(stats(st).failures, 0);
    close_store(st);
}

/* 21. A counter is written once per batch, its last value, in the batch of
 * the writes made with it; a counter set after a batch is handed over goes
 * with the next; close writes what is left. Bad slots and keys refused. */
static void test_counter(void) {
    char dir[128], buf[64];
    path_in_root(dir, sizeof dir, "counter");
    struct chorus_store *st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    uint64_t ops0 = stats(st).ops;
    for (int i = 1; i <= 100; i++) {
        CHECK_INT_EQ(put(st, STORE_RUNS, "c1", "x"), 0);
        CHECK_INT_EQ(chorus_store_counter(st, 3, "held\0a", 6, i), 0);
    }
    CHECK_INT_EQ(chorus_store_counter(st, 0, "held\0b", 6, -7), 0);
    CHECK(commit(st));
    /* the run's record once (the others moot), each counter once */
    CHECK_INT_EQ(stats(st).ops - ops0, 3);
    CHECK_INT_EQ(get(st, STORE_META, "held\0a", 6, buf, sizeof buf), 3);
    CHECK_STR_EQ(buf, "100");
    CHECK_INT_EQ(get(st, STORE_META, "held\0b", 6, buf, sizeof buf), 2);
    CHECK_STR_EQ(buf, "-7");
    /* unchanged since: not written again */
    ops0 = stats(st).ops;
    CHECK_INT_EQ(put(st, STORE_RUNS, "c2", "y"), 0);
    CHECK(commit(st));
    CHECK_INT_EQ(stats(st).ops - ops0, 1);
    /* the slot keeps its key */
    CHECK_INT_EQ(chorus_store_counter(st, 3, "other", 5, 5), 0);
    CHECK_INT_EQ(put(st, STORE_RUNS, "c3", "z"), 0);
    chorus_store_close(st); /* without a loop turn: close writes it */
    uv_run(&loop, UV_RUN_DEFAULT);
    st = open_store(dir, 0);
    CHECK(st != NULL);
    if (!st)
        return;
    CHECK_INT_EQ(get(st, STORE_META, "held\0a", 6, buf, sizeof buf), 1);
    CHECK_STR_EQ(buf, "5");
    CHECK(!has(st, STORE_META, "other"));
    CHECK_INT_EQ(chorus_store_counter(st, 65536, "k", 1, 1), -1);
    CHECK_INT_EQ(chorus_store_counter(st, 1, "", 0, 1), -1);
    close_store(st);
}

int main(void) {
    alarm(120); /* a hung loop fails the test instead of blocking the suite */
    snprintf(root, sizeof root, "/tmp/chorus-test-store-XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "uv_loop_init failed\n");
        return 1;
    }

    test_names();
    test_open_schema();
    test_put_get();
    test_group_commit();
    test_pipelined();
    test_wait_nothing();
    test_del();
    test_unwait();
    test_close_flushes();
    test_close_while_writing();
    test_failures();
    test_binary_persistence();
    test_checksums();
    test_verify();
    test_reads();
    test_growth();
    test_migrate_v1();
    test_empty_file();
    test_run_index();
    test_moot();
    test_counter();

    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
    CHECK_INT_EQ(nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS), 0);
    struct stat sb;
    CHECK(stat(root, &sb) != 0);
    return unit_summary();
}
