/* store_index.c — the runs' secondary index (contract in store_index.h).
 *
 * A row, behind the store's checksum:
 *   t (8 bytes big-endian) | nkeys (1 byte) | nkeys × (len: 2 bytes
 *   big-endian, key bytes) | summary (the rest)
 */
#include "store_index.h"

#include "store_lmdb.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_KEY 511
#define TKEY_ROOM (8 + MAX_KEY)

static void put_be64(unsigned char *out, uint64_t v) {
    for (int i = 7; i >= 0; i--, v >>= 8)
        out[i] = (unsigned char)v;
}

static uint64_t get_be64(const unsigned char *in) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | in[i];
    return v;
}

int chorus_store_index_row(uint64_t t, const char *const *keys, const size_t *klens, int nkeys,
                           const void *summary, size_t slen, char **out, size_t *outlen) {
    if (nkeys < 0 || nkeys > CHORUS_INDEX_MAX_KEYS)
        return -1;
    size_t need = 9 + slen;
    for (int i = 0; i < nkeys; i++) {
        if (klens[i] == 0 || klens[i] > MAX_KEY)
            return -1;
        need += 2 + klens[i];
    }
    unsigned char *row = malloc(need);
    if (!row)
        return -1;
    put_be64(row, t);
    row[8] = (unsigned char)nkeys;
    size_t off = 9;
    for (int i = 0; i < nkeys; i++) {
        row[off] = (unsigned char)(klens[i] >> 8);
        row[off + 1] = (unsigned char)klens[i];
        memcpy(row + off + 2, keys[i], klens[i]);
        off += 2 + klens[i];
    }
    if (slen)
        memcpy(row + off, summary, slen);
    *out = (char *)row;
    *outlen = need;
    return 0;
}

/* A row taken apart; the pointers point into it. */
struct row {
    uint64_t t;
    int nkeys;
    const unsigned char *key[CHORUS_INDEX_MAX_KEYS];
    size_t klen[CHORUS_INDEX_MAX_KEYS];
    const unsigned char *summary;
    size_t slen;
};

/* 0, or -1 when the bytes are not a row. */
static int parse_row(const unsigned char *p, size_t len, struct row *r) {
    if (len < 9 || p[8] > CHORUS_INDEX_MAX_KEYS)
        return -1;
    r->t = get_be64(p);
    r->nkeys = p[8];
    size_t off = 9;
    for (int i = 0; i < r->nkeys; i++) {
        if (len - off < 2)
            return -1;
        size_t kl = (size_t)p[off] << 8 | p[off + 1];
        if (kl == 0 || kl > MAX_KEY || len - off - 2 < kl)
            return -1;
        r->key[i] = p + off + 2;
        r->klen[i] = kl;
        off += 2 + kl;
    }
    r->summary = p + off;
    r->slen = len - off;
    return 0;
}

/* t .. id into buf (TKEY_ROOM bytes); its length, or 0 when id is too long
 * for a duplicate (LMDB keeps those as keys: MAX_KEY bytes at most). */
static size_t time_key(unsigned char *buf, uint64_t t, const MDB_val *id) {
    if (id->mv_size == 0 || id->mv_size > MAX_KEY - 8)
        return 0;
    put_be64(buf, t);
    memcpy(buf + 8, id->mv_data, id->mv_size);
    return 8 + id->mv_size;
}

/* The index of key k (klen bytes) among r's keys, or -1. */
static int key_at(const struct row *r, const unsigned char *k, size_t klen) {
    for (int i = 0; i < r->nkeys; i++)
        if (r->klen[i] == klen && memcmp(r->key[i], k, klen) == 0)
            return i;
    return -1;
}

/* Deletes the index entries of the row stored for id, if any; *had says
 * whether there was one. keep (may be NULL): the row about to replace it;
 * an entry both rows have at the same time key stays as it is (a status
 * change moves the run under its status keys only: the entries under
 * "every run" and its workflow are not deleted and put back, which would
 * dirty their pages in every commit). *kept: bit i set when keep's key i
 * was kept. The row is copied first: a delete changes the pages it points
 * into. */
static int drop_entries(MDB_txn *txn, MDB_dbi index, MDB_dbi rows, const MDB_val *id, int *had,
                        const struct row *keep, unsigned *kept) {
    MDB_val raw;
    *had = 0;
    if (kept)
        *kept = 0;
    int rc = mdb_get(txn, rows, (MDB_val *)id, &raw);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return rc;
    *had = 1;
    if (raw.mv_size < CHORUS_STORE_CHECKSUM_LEN)
        return 0; /* nothing to read: the row is overwritten or dropped */
    size_t len = raw.mv_size - CHORUS_STORE_CHECKSUM_LEN;
    unsigned char *copy = malloc(len ? len : 1);
    if (!copy)
        return ENOMEM;
    memcpy(copy, (const char *)raw.mv_data + CHORUS_STORE_CHECKSUM_LEN, len);
    struct row r;
    unsigned char tk[TKEY_ROOM];
    size_t tlen = time_key(tk, 0, id);
    if (parse_row(copy, len, &r) == 0 && tlen) {
        put_be64(tk, r.t);
        int same_t = keep && keep->t == r.t;
        for (int i = 0; i < r.nkeys && !rc; i++) {
            int j = same_t ? key_at(keep, r.key[i], r.klen[i]) : -1;
            if (j >= 0) {
                *kept |= 1u << j;
                continue;
            }
            MDB_val k = {r.klen[i], (void *)r.key[i]}, v = {tlen, tk};
            rc = mdb_del(txn, index, &k, &v);
            if (rc == MDB_NOTFOUND)
                rc = 0;
        }
    }
    free(copy);
    return rc;
}

int chorus_store_index_apply(MDB_txn *txn, MDB_dbi index, MDB_dbi rows, const MDB_val *id,
                             const MDB_val *raw) {
    struct row r;
    if (raw->mv_size < CHORUS_STORE_CHECKSUM_LEN ||
        parse_row((const unsigned char *)raw->mv_data + CHORUS_STORE_CHECKSUM_LEN,
                  raw->mv_size - CHORUS_STORE_CHECKSUM_LEN, &r) != 0)
        return EINVAL; /* chorus_store_index_row made it: cannot happen */
    int had;
    unsigned kept;
    int rc = drop_entries(txn, index, rows, id, &had, &r, &kept);
    if (rc)
        return rc;
    unsigned char tk[TKEY_ROOM];
    size_t tlen = time_key(tk, r.t, id);
    /* an id too long for an entry: the run keeps its row, unlisted, rather
     * than fail the whole batch */
    for (int i = 0; tlen && i < r.nkeys && !rc; i++) {
        if (kept & (1u << i))
            continue;
        MDB_val k = {r.klen[i], (void *)r.key[i]}, v = {tlen, tk};
        rc = mdb_put(txn, index, &k, &v, MDB_NODUPDATA);
        if (rc == MDB_KEYEXIST)
            rc = 0;
    }
    if (!rc)
        rc = mdb_put(txn, rows, (MDB_val *)id, (MDB_val *)raw, 0);
    return rc;
}

int chorus_store_index_drop(MDB_txn *txn, MDB_dbi index, MDB_dbi rows, const MDB_val *id) {
    int had;
    int rc = drop_entries(txn, index, rows, id, &had, NULL, NULL);
    if (!rc && had) {
        rc = mdb_del(txn, rows, (MDB_val *)id, NULL);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    return rc;
}

/* ---- reads ------------------------------------------------------------------- */

void chorus_store_index_page_free(struct chorus_index_page *page) {
    free(page->hits);
    free(page->bytes);
    memset(page, 0, sizeof *page);
}

static int page_add(struct chorus_index_page *p, uint64_t t, const void *id, size_t idlen,
                    const void *sum, size_t slen) {
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        struct chorus_index_hit *h = realloc(p->hits, cap * sizeof *h);
        if (!h)
            return -1;
        p->hits = h;
        p->cap = cap;
    }
    if (p->room - p->used < idlen + slen) {
        size_t room = p->room ? p->room : 8192;
        while (room - p->used < idlen + slen)
            room *= 2;
        char *b = realloc(p->bytes, room);
        if (!b)
            return -1;
        p->bytes = b;
        p->room = room;
    }
    struct chorus_index_hit *h = &p->hits[p->n++];
    h->t = t;
    h->id_off = p->used;
    h->id_len = idlen;
    memcpy(p->bytes + p->used, id, idlen);
    p->used += idlen;
    h->sum_off = p->used;
    h->sum_len = slen;
    if (slen)
        memcpy(p->bytes + p->used, sum, slen);
    p->used += slen;
    return 0;
}

static int row_has(const struct row *r, const void *key, size_t klen) {
    for (int i = 0; i < r->nkeys; i++)
        if (r->klen[i] == klen && memcmp(r->key[i], key, klen) == 0)
            return 1;
    return 0;
}

/* The walk's first position: the newest duplicate of q->key below both
 * bounds. 0, MDB_NOTFOUND (nothing below them) or an LMDB error. */
static int first(MDB_cursor *c, const struct chorus_index_query *q, MDB_val *k, MDB_val *v) {
    unsigned char until[8];
    MDB_val bound = {0, NULL};
    if (q->until) {
        put_be64(until, q->until);
        bound.mv_size = 8;
        bound.mv_data = until;
    }
    if (q->before) {
        size_t m = q->beforelen < bound.mv_size ? q->beforelen : bound.mv_size;
        int cmp = bound.mv_data ? memcmp(q->before, bound.mv_data, m) : -1;
        if (!bound.mv_data || cmp < 0 || (cmp == 0 && q->beforelen < bound.mv_size)) {
            bound.mv_size = q->beforelen;
            bound.mv_data = (void *)q->before;
        }
    }
    k->mv_size = q->klen;
    k->mv_data = (void *)q->key;
    int rc = mdb_cursor_get(c, k, v, MDB_SET_KEY);
    if (rc)
        return rc;
    if (!bound.mv_data)
        return mdb_cursor_get(c, k, v, MDB_LAST_DUP);
    *v = bound;
    rc = mdb_cursor_get(c, k, v, MDB_GET_BOTH_RANGE);
    if (rc == MDB_NOTFOUND) /* every duplicate is below the bound */
        return mdb_cursor_get(c, k, v, MDB_LAST_DUP);
    if (rc)
        return rc;
    return mdb_cursor_get(c, k, v, MDB_PREV_DUP); /* the one found is at or above it */
}

/* Checks one candidate (time key tv) and adds it to the page when it
 * passes. 0, or -1 with err. */
static int consider(MDB_txn *txn, MDB_dbi rows, MDB_dbi runs, const struct chorus_index_query *q,
                    const MDB_val *tv, struct chorus_index_page *page, char *err, size_t errlen) {
    MDB_val id = {tv->mv_size - 8, (char *)tv->mv_data + 8}, raw, val;
    int rc = mdb_get(txn, rows, &id, &raw);
    if (rc == MDB_NOTFOUND)
        return 0; /* cannot happen: entries and row change together */
    struct row r;
    if (!rc && (chorus_store_value(STORE_RUN_ROWS, &id, &raw, &val) != 0 ||
                parse_row(val.mv_data, val.mv_size, &r) != 0)) {
        chorus_store_describe(err, errlen, STORE_RUN_ROWS, id.mv_data, id.mv_size,
                              "checksum mismatch");
        return -1;
    }
    if (rc) {
        snprintf(err, errlen, "cannot read database run_rows: %s", mdb_strerror(rc));
        return -1;
    }
    for (int i = 0; i < q->nalso; i++)
        if (!row_has(&r, q->also[i], q->alsolen[i]))
            return 0;
    MDB_val rec, recval;
    rc = mdb_get(txn, runs, &id, &rec);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (!rc && chorus_store_value(STORE_RUNS, &id, &rec, &recval) != 0) {
        chorus_store_describe(err, errlen, STORE_RUNS, id.mv_data, id.mv_size, "checksum mismatch");
        return -1;
    }
    if (rc) {
        snprintf(err, errlen, "cannot read database runs: %s", mdb_strerror(rc));
        return -1;
    }
    if (page_add(page, r.t, id.mv_data, id.mv_size, r.summary, r.slen) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

int chorus_store_index_list(struct chorus_store *st, const struct chorus_index_query *q,
                            struct chorus_index_page *page, char *err, size_t errlen) {
    const char *why = NULL;
    MDB_txn *txn = chorus_store_reader(st, &why);
    if (!txn) {
        snprintf(err, errlen, "cannot read: %s", why);
        return -1;
    }
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, chorus_store_dbi(st, STORE_RUN_INDEX), &c);
    if (rc) {
        chorus_store_reader_done(st);
        snprintf(err, errlen, "cannot read database run_index: %s", mdb_strerror(rc));
        return -1;
    }
    MDB_dbi rows = chorus_store_dbi(st, STORE_RUN_ROWS), runs = chorus_store_dbi(st, STORE_RUNS);
    MDB_val k, v;
    int failed = 0;
    rc = q->klen ? first(c, q, &k, &v) : MDB_NOTFOUND;
    while (!rc && page->n < q->limit) {
        if (v.mv_size <= 8 || get_be64(v.mv_data) < q->since)
            break; /* older than since: so is every one after it */
        if (consider(txn, rows, runs, q, &v, page, err, errlen) != 0) {
            failed = 1;
            break;
        }
        rc = mdb_cursor_get(c, &k, &v, MDB_PREV_DUP);
    }
    mdb_cursor_close(c);
    chorus_store_reader_done(st);
    if (failed)
        return -1;
    if (rc && rc != MDB_NOTFOUND) {
        snprintf(err, errlen, "cannot read database run_index: %s", mdb_strerror(rc));
        return -1;
    }
    return 0;
}
