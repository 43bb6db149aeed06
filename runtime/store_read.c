/* store_read.c — reads of the store's last committed state: get, scan and
 * count (contract in store.h). Each read is one read transaction, done
 * before the function returns.
 */
#include "store_lmdb.h"

#include <stdio.h>
#include <string.h>

/* The corrupt-record message of key in db into err. */
static void corrupt(char *err, size_t errlen, int db, const void *key, size_t klen) {
    char msg[400];
    chorus_store_describe(msg, sizeof msg, db, key, klen, "checksum mismatch");
    snprintf(err, errlen, "store: %s", msg);
}

static void cannot_read(char *err, size_t errlen, const char *why) {
    snprintf(err, errlen, "store: cannot read: %s", why);
}

int chorus_store_get(struct chorus_store *st, int db, const void *key, size_t klen,
                     chorus_store_each_fn each, void *data, char *err, size_t errlen) {
    const char *why;
    MDB_txn *txn = chorus_store_reader(st, &why);
    if (!txn) {
        cannot_read(err, errlen, why);
        return -1;
    }
    MDB_val k = {klen, (void *)key}, raw, val;
    int rc = mdb_get(txn, chorus_store_dbi(st, db), &k, &raw);
    if (rc == 0 && chorus_store_value(db, &k, &raw, &val) != 0) {
        chorus_store_reader_done(st);
        corrupt(err, errlen, db, key, klen);
        return -1;
    }
    if (rc == 0)
        each(data, key, klen, val.mv_data, val.mv_size);
    chorus_store_reader_done(st);
    if (rc != 0 && rc != MDB_NOTFOUND) {
        cannot_read(err, errlen, mdb_strerror(rc));
        return -1;
    }
    return rc == 0;
}

/* Whether k is past the range's end: outside its prefix, or at or past to. */
static int past_end(const MDB_val *k, const struct chorus_store_range *r) {
    if (r->prefix && (k->mv_size < r->plen || memcmp(k->mv_data, r->prefix, r->plen) != 0))
        return 1;
    if (r->to) {
        size_t m = k->mv_size < r->tlen ? k->mv_size : r->tlen;
        int cmp = memcmp(k->mv_data, r->to, m);
        if (cmp > 0 || (cmp == 0 && k->mv_size >= r->tlen))
            return 1;
    }
    return 0;
}

long chorus_store_scan(struct chorus_store *st, int db, const struct chorus_store_range *r,
                       chorus_store_each_fn each, void *data, char *err, size_t errlen) {
    const char *why;
    MDB_txn *txn = chorus_store_reader(st, &why);
    if (!txn) {
        cannot_read(err, errlen, why);
        return -1;
    }
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, chorus_store_dbi(st, db), &c);
    if (rc) {
        chorus_store_reader_done(st);
        cannot_read(err, errlen, mdb_strerror(rc));
        return -1;
    }
    MDB_val k = {0, NULL}, raw, v;
    if (r->from) {
        k.mv_size = r->flen;
        k.mv_data = (void *)r->from;
    } else if (r->prefix) {
        k.mv_size = r->plen;
        k.mv_data = (void *)r->prefix;
    }
    rc = mdb_cursor_get(c, &k, &raw, k.mv_data ? MDB_SET_RANGE : MDB_FIRST);
    long n = 0;
    int bad = 0;
    while (rc == 0 && (size_t)n < r->limit && !past_end(&k, r)) {
        if (chorus_store_value(db, &k, &raw, &v) != 0) {
            bad = 1;
            break;
        }
        each(data, k.mv_data, k.mv_size, v.mv_data, v.mv_size);
        n++;
        rc = mdb_cursor_get(c, &k, &raw, MDB_NEXT);
    }
    mdb_cursor_close(c);
    if (bad) /* the key is in the map: describe it before the reader lets go */
        corrupt(err, errlen, db, k.mv_data, k.mv_size);
    chorus_store_reader_done(st);
    if (bad)
        return -1;
    if (rc != 0 && rc != MDB_NOTFOUND) { /* LMDB found its pages damaged */
        snprintf(err, errlen, "store: cannot read database %s: %s", chorus_store_db_name(db),
                 mdb_strerror(rc));
        return -1;
    }
    return n;
}

long long chorus_store_count(struct chorus_store *st, int db, char *err, size_t errlen) {
    const char *why;
    MDB_txn *txn = chorus_store_reader(st, &why);
    if (!txn) {
        cannot_read(err, errlen, why);
        return -1;
    }
    MDB_stat ms;
    int rc = mdb_stat(txn, chorus_store_dbi(st, db), &ms);
    chorus_store_reader_done(st);
    if (rc) {
        cannot_read(err, errlen, mdb_strerror(rc));
        return -1;
    }
    return (long long)ms.ms_entries;
}
