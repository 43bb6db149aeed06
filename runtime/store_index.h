/* store_index.h — the runs' secondary index, kept by the store (store.c) in
 * the same write transaction as the run records, and read without a scan.
 *
 * Two named databases hold it:
 *   run_index  MDB_DUPSORT: index key → one duplicate per run, its time
 *              key: the run's start time (µs since the epoch, 8 bytes
 *              big-endian) followed by the run id. The duplicates of a key
 *              are in time order, so the newest runs are its last ones.
 *   run_rows   run id → the run's row: its time, the index keys it is under
 *              and its summary (bytes the caller chose: chorus keeps a small
 *              JSON object), behind the store's checksum like every value.
 *
 * The store knows nothing of what the keys mean: the caller (chorus.store)
 * names them ("every run", the status, the workflow, ...). Indexing a run
 * again (chorus_store_index_put) replaces its entries: the old ones, read from
 * its row inside the write transaction, go, so a status change moves the run
 * from one key to another even when both writes land in one batch. Deleting
 * the run's record from the runs database (chorus_store_del) drops its row
 * and entries in the same transaction.
 *
 * Reads (chorus_store_index_list) walk one key's duplicates newest first,
 * from an exclusive bound, keep the runs whose row also lists every key of
 * `also`, and check each listed run's record in the runs database against
 * its checksum: a corrupt record is reported, never skipped.
 */
#ifndef CHORUS_STORE_INDEX_H
#define CHORUS_STORE_INDEX_H

#include <lmdb.h>
#include <stddef.h>
#include <stdint.h>

struct chorus_store;

#define CHORUS_INDEX_MAX_KEYS 16
#define CHORUS_INDEX_MAX_ALSO 4

/* Packs a run's row (without the checksum, which the store adds): t, the
 * index keys and the summary, into a malloc'd buffer (*out, *outlen; the
 * caller frees it). 0, or -1 when out of memory or a key is empty or over
 * 511 bytes, or there are more than CHORUS_INDEX_MAX_KEYS keys. */
int chorus_store_index_row(uint64_t t, const char *const *keys, const size_t *klens, int nkeys,
                           const void *summary, size_t slen, char **out, size_t *outlen);

/* Queues the row (from chorus_store_index_row) of run id for the next group
 * commit. 0, or -1 when out of memory. */
int chorus_store_index_put(struct chorus_store *st, const void *id, size_t idlen, const void *row,
                           size_t rowlen);

/* Inside the store's write transaction (store.c): applies a queued row
 * (raw: checksum then row), or drops the row and entries of run id. 0 or an
 * LMDB error. */
int chorus_store_index_apply(MDB_txn *txn, MDB_dbi index, MDB_dbi rows, const MDB_val *id,
                             const MDB_val *raw);
int chorus_store_index_drop(MDB_txn *txn, MDB_dbi index, MDB_dbi rows, const MDB_val *id);

struct chorus_index_query {
    const void *key; /* the index key walked */
    size_t klen;
    const void *also[CHORUS_INDEX_MAX_ALSO]; /* keys a listed run's row must also have */
    size_t alsolen[CHORUS_INDEX_MAX_ALSO];
    int nalso;
    const void *before; /* exclusive bound on the time key (t .. id); NULL: none */
    size_t beforelen;
    uint64_t since; /* runs with t >= since; 0: no bound */
    uint64_t until; /* runs with t < until; 0: no bound */
    size_t limit;   /* at most this many rows */
};

/* One listed run: offsets into the page's bytes. */
struct chorus_index_hit {
    uint64_t t;
    size_t id_off, id_len, sum_off, sum_len;
};

struct chorus_index_page {
    struct chorus_index_hit *hits;
    size_t n, cap;
    char *bytes;
    size_t used, room;
};

/* Lists the runs of q newest first into page (zeroed by the caller; free it
 * with chorus_store_index_page_free whatever the outcome). 0, or -1 with
 * err: the read failed, a row or a listed run's record is corrupt
 * ("corrupt record in database runs, key '...': checksum mismatch"), or out
 * of memory. */
int chorus_store_index_list(struct chorus_store *st, const struct chorus_index_query *q,
                            struct chorus_index_page *page, char *err, size_t errlen);
void chorus_store_index_page_free(struct chorus_index_page *page);

#endif
