/* store_lmdb.h — the LMDB side of the store, for the store's own files
 * (store.c, store_read.c) and its unit tests. Everything else goes through
 * store.h, which names no LMDB type.
 */
#ifndef CHORUS_STORE_LMDB_H
#define CHORUS_STORE_LMDB_H

#include <lmdb.h>

#include "store.h"

/* A read transaction of the last committed state, valid until
 * chorus_store_reader_done; NULL when LMDB refuses (err set, owned by
 * LMDB). One reader at a time: it is reset between reads and renewed on
 * the next. */
MDB_txn *chorus_store_reader(struct chorus_store *st, const char **err);
void chorus_store_reader_done(struct chorus_store *st);
MDB_dbi chorus_store_dbi(const struct chorus_store *st, int db);

/* Checks the checksum of raw, the stored bytes of key in db, and points val
 * at the value behind it. 0, or -1 when they do not match (corrupt). */
int chorus_store_value(int db, const MDB_val *key, const MDB_val *raw, MDB_val *val);

#endif
