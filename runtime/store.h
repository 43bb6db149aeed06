/* store.h — the durable store: one LMDB environment in the data folder, with
 * the named databases listed atop lua/chorus/store.lua, written by group commit.
 *
 * Writes (put, del, del_prefix) are queued on the loop thread into the
 * pending batch. Once per loop turn (a uv_prepare handle) the pending batch,
 * if any and if no other batch is being written, is handed to the writer
 * thread, which applies it in one write transaction and commits it with
 * fsync. Meanwhile the loop goes on and the next batch fills up, so however
 * many runs write in a turn, they share one fsync. chorus_store_wait() tells
 * when everything queued so far is on disk.
 *
 * Reads (chorus_store_get, _scan, _count, _verify) each use a read-only
 * transaction of the last committed state (LMDB readers never wait for the
 * writer). A read does not see writes still queued; the callers
 * (lua/chorus/runs.lua, idempotency.lua) keep in-flight state in memory for
 * that reason. This header names no LMDB type: store_lmdb.h is the LMDB
 * side, for the store's own files and tests.
 *
 * Every value is stored behind an 8-byte checksum (XXH3-64 of the value,
 * seeded with the XXH3-64 of its key, little-endian), so a flipped byte or a
 * value under the wrong key is caught on read: every read checks and strips
 * it. The one exception is meta.schema_version, kept as plain
 * text so that any chorus can read which format a folder has.
 *
 * When a batch fails because the map is full (MDB_MAP_FULL), the map grows
 * (doubling, up to opts.max_size) and the same batch is written again; only
 * at max_size do its waiters hear of the failure ("the data folder is
 * full"). The map is resized on the loop thread while the writer thread is
 * idle and no read transaction is open: LMDB allows mdb_env_set_mapsize only
 * with no transaction active in the process.
 *
 * Invariants: at most one batch is with the writer thread; batches commit in
 * the order they were queued; a waiter is woken exactly once, with the outcome
 * of the first batch that holds every write queued before it waited.
 */
#ifndef CHORUS_STORE_H
#define CHORUS_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

enum chorus_store_db {
    STORE_RUNS,
    STORE_JOURNAL,
    STORE_IDEMPOTENCY,
    STORE_OUTBOX,
    STORE_DLQ,
    STORE_SCRIPTS,
    STORE_TIMERS,
    STORE_META,
    STORE_DELIVERIES,
    STORE_EVENTS,
    STORE_SCHEDULES,
    STORE_RUN_INDEX, /* the runs' secondary index (store_index.h) */
    STORE_RUN_ROWS,
    STORE_OUTBOX_LANES, /* the outbox by lane (the enqueuing workflow): fair delivery */
    STORE_NDB
};

/* 2: values carry a checksum. A version-1 folder is migrated on open.
 * 3: the runs' index (store_index.h). A version-2 folder opens as version 3
 * with the index empty; chorus.store builds it (meta.run_index says when it
 * is whole), and a chorus that does not keep the index refuses the folder
 * instead of writing runs it would leave out.
 * 4: the outbox's lanes (outbox_lanes: lane .. NUL .. outbox key). A
 * version-2 or 3 folder opens as version 4 with no lanes; chorus.store
 * builds them (meta.outbox_lanes says when they are whole), and a chorus
 * without lanes refuses the folder instead of writing entries the relay
 * would never find. */
#define CHORUS_STORE_SCHEMA "4"
#define CHORUS_STORE_CHECKSUM_LEN 8

/* The message of a batch that failed for want of room starts with this. */
#define CHORUS_STORE_FULL "store: the data folder is full"

struct chorus_store;

struct chorus_store_opts {
    int sync;        /* fsync each commit (default on) */
    size_t map_size; /* bytes; 0: 1 GiB */
    size_t max_size; /* bytes the map may grow to; 0 or below map_size: no growth */
};

/* Called on the loop thread when the batch a waiter waited for is on disk
 * (err NULL) or failed (err says why). */
typedef void (*chorus_store_done_fn)(void *data, const char *err);

struct chorus_store_stats {
    uint64_t commits;   /* write transactions committed */
    uint64_t ops;       /* writes applied */
    uint64_t moot;      /* writes left out: a later one of their batch undid them */
    uint64_t failures;  /* batches that failed */
    size_t pending_ops; /* queued, not yet with the writer */
    int writing;        /* a batch is with the writer now */
    uint64_t grows;     /* times the map grew */
    size_t map_size;    /* bytes mapped now */
    size_t max_size;    /* bytes it may grow to */
    int full;           /* the last batch failed for want of room */
};

/* Opens (creating) the environment in dir, which is created if missing.
 * NULL with a message in err when it cannot, e.g. a newer schema. */
struct chorus_store *chorus_store_open(uv_loop_t *loop, const char *dir,
                                       const struct chorus_store_opts *opts, char *err,
                                       size_t errlen);

/* Waits for the batch being written, commits what is queued on the calling
 * thread, closes the environment. The struct is freed once its handles are
 * closed (on a later loop turn). Waiters are dropped, never called. */
void chorus_store_close(struct chorus_store *st);

/* The index of a named database ("runs", "journal", ...), or -1. */
int chorus_store_db_index(const char *name);
const char *chorus_store_db_name(int db);

/* Queue writes for the next group commit. 0, or -1 when out of memory. */
int chorus_store_put(struct chorus_store *st, int db, const void *key, size_t klen, const void *val,
                     size_t vlen);
/* A del in runs also drops the run's index row and entries (store_index.h). */
int chorus_store_del(struct chorus_store *st, int db, const void *key, size_t klen);
int chorus_store_del_prefix(struct chorus_store *st, int db, const void *prefix, size_t plen);

/* Sets counter slot (0 to 65535; the caller numbers its counters) to value,
 * kept in meta under key (1 to 511 bytes; a slot keeps the key it was first
 * set with). Only the last value set before a batch is handed to the writer
 * is written, in that batch, as a decimal: a count changed with each write
 * costs one meta put per commit, not one per write. 0, or -1 when out of
 * memory or the slot or key is out of range. */
int chorus_store_counter(struct chorus_store *st, unsigned slot, const void *key, size_t klen,
                         long long value);

/* The number of the batch a write queued now goes into: it changes when
 * that batch is handed to the writer (once a loop turn, whoever commits),
 * so a caller can keep one row per batch, put again as it changes (the
 * writer applies only the last put of a key in a batch). */
uint64_t chorus_store_batch(const struct chorus_store *st);

/* Calls done once every write queued so far is durable. Returns a handle
 * for chorus_store_unwait, or NULL when nothing is outstanding (done is
 * not called then) or out of memory (*oom set). */
void *chorus_store_wait(struct chorus_store *st, chorus_store_done_fn done, void *data, int *oom);

/* Forgets a waiter that has not been called yet (its task was cancelled). */
void chorus_store_unwait(struct chorus_store *st, void *waiter);

/* ---- reads of the last committed state (store_read.c) ----
 * A record found is handed to each(data, key, klen, value, vlen): key and
 * value point into the database's map, valid only during the call (copy
 * what is kept); the value is the one stored, its checksum checked and
 * stripped. On failure a read returns -1 with the whole message in err
 * ("store: cannot read: ...", "store: corrupt record in database DB, key
 * 'K': checksum mismatch", "store: cannot read database DB: ..." when LMDB
 * finds its pages damaged): a bad record is never skipped silently. */
typedef void (*chorus_store_each_fn)(void *data, const void *key, size_t klen, const void *val,
                                     size_t vlen);

/* The value of key in db: 1 (each called once), 0 when absent, or -1. */
int chorus_store_get(struct chorus_store *st, int db, const void *key, size_t klen,
                     chorus_store_each_fn each, void *data, char *err, size_t errlen);

/* Which records a scan hands over, in key order: those at or after from
 * (else the first with prefix, else the first), while they start with
 * prefix and sort before to (exclusive), at most limit. NULL: no bound. */
struct chorus_store_range {
    const void *prefix, *from, *to;
    size_t plen, flen, tlen;
    size_t limit;
};

/* Calls each for every record of r in db; the number handed over, or -1. */
long chorus_store_scan(struct chorus_store *st, int db, const struct chorus_store_range *r,
                       chorus_store_each_fn each, void *data, char *err, size_t errlen);

/* Every read between chorus_store_pin and chorus_store_unpin (they nest)
 * sees one committed state: the same read transaction, held open until the
 * last unpin, so two reads cannot fall on either side of another process's
 * commit. Only within one synchronous call of the loop thread: a map
 * growth (a loop callback) drops the transaction. 0, or -1 with err. */
int chorus_store_pin(struct chorus_store *st, char *err, size_t errlen);
void chorus_store_unpin(struct chorus_store *st);

/* The number of records in db, or -1. */
long long chorus_store_count(struct chorus_store *st, int db, char *err, size_t errlen);

void chorus_store_stats(const struct chorus_store *st, struct chorus_store_stats *out);

/* "corrupt record in database DB, key 'KEY': WHY" into out; non-printable
 * key bytes as \xNN. */
void chorus_store_describe(char *out, size_t outlen, int db, const void *key, size_t klen,
                           const char *why);

/* Whether db holds JSON values (all but scripts, meta, run_index and run_rows). */
int chorus_store_db_is_json(int db);

/* Walks every named database of the last committed state but those whose
 * bit (1u << db) is set in skip, checking each value's checksum and, in the
 * JSON databases, that it is JSON. bad is called for each bad entry (key
 * NULL when a database cannot be walked at all: LMDB found its pages
 * damaged). counts[db] gets the entries seen (of a skipped one, LMDB's
 * count). Returns the number of bad entries, or -1 with err when no read
 * could begin. */
typedef void (*chorus_store_bad_fn)(void *data, int db, const void *key, size_t klen,
                                    const char *why);
long chorus_store_verify(struct chorus_store *st, long counts[STORE_NDB], unsigned skip,
                         chorus_store_bad_fn bad, void *data, char *err, size_t errlen);

#endif
