/* mock_upstream.c — the HTTP upstream that tests and benchmarks talk to.
 *
 * `mock-upstream [--listen 127.0.0.1:PORT] [--max-seconds N]` serves any
 * method on any path on loopback and answers as the query string says:
 * delay=MS, status=CODE, seq=503,503,200, fault=reset|hang|slow_body,
 * body_bytes=N, retry_after=S, body=TEXT (JSON when it starts with '{'),
 * headers=N (N more response headers, X-Mock-1 .. X-Mock-N),
 * stream_bytes=N|endless (N filler bytes as fast as the client reads, with a
 * Content-Length, or chunked and never ending; chunked=1 leaves the length
 * out of a finite one too), idempotent=1, location=URL (a Location header:
 * with status=302, a redirect); otherwise it echoes
 * the request as JSON. GET /__stats reports what it saw (its log: path, body,
 * Idempotency-Key, signature, traceparent, tracestate), POST /__reset
 * forgets it. It prints `listening 127.0.0.1:PORT` once it accepts, and exits
 * 0 on SIGTERM/SIGINT or after --max-seconds, so a test never leaves it
 * behind.
 *
 * libmicrohttpd runs one thread per connection (poll, small stacks): a
 * delayed or hung request simply blocks its own thread in poll() on the
 * client socket and a shutdown pipe, which is how a client that leaves is
 * noticed at once (POLLRDHUP) without any timer machinery.
 *
 * Invariant: every request is settled exactly once. Either the handler
 * settles it (client left while we waited, fault=reset, shutdown, error) and
 * says so in `settled`, or MHD's completion callback counts it as completed
 * (fully sent) or aborted (client left before that). Completion events of
 * requests that began before a /__reset are not counted.
 */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BODY (16u << 20) /* request bodies beyond this are refused */
#define SLOW_CHUNK 10        /* fault=slow_body: bytes per tick */
#define SLOW_TICK_MS 100     /* fault=slow_body: time between ticks */
#define MAX_DELAY_MS 3600000L
#define MAX_STREAM (1LL << 40) /* stream_bytes= beyond this are refused */
#define MOCK_PAD "padding-padding-padding-padding-padding-padding-padding-padding"

/* Each connection has its own thread; 256 KiB covers MHD, cJSON and a deeply
 * nested request body, and 5,000 of them are only address space. Sanitizers
 * need far more stack per frame. */
#if defined(__SANITIZE_ADDRESS__)
#define STACK_SIZE (4u << 20)
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define STACK_SIZE (4u << 20)
#endif
#endif
#ifndef STACK_SIZE
#define STACK_SIZE (256u << 10)
#endif

/* ---- a small string-keyed hash map (counters and stored replies) ---- */

struct reply {
    unsigned status;
    char *body;
    size_t len;
    const char *ctype; /* a string literal */
};

struct entry {
    struct entry *next;
    long count;
    struct reply *reply; /* only in the idempotency-replay map */
    char key[];
};

struct map {
    struct entry **slots;
    size_t nslots, len;
};

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void reply_free(struct reply *r) {
    if (r == NULL)
        return;
    free(r->body);
    free(r);
}

static int map_grow(struct map *m) {
    size_t n = m->nslots ? m->nslots * 2 : 64;
    struct entry **slots = calloc(n, sizeof *slots);
    if (slots == NULL)
        return -1;
    for (size_t i = 0; i < m->nslots; i++) {
        struct entry *e = m->slots[i], *next;
        for (; e != NULL; e = next) {
            next = e->next;
            size_t j = hash_str(e->key) % n;
            e->next = slots[j];
            slots[j] = e;
        }
    }
    free(m->slots);
    m->slots = slots;
    m->nslots = n;
    return 0;
}

/* Returns the entry for key, creating it (count 0) when absent; NULL when
 * out of memory. */
static struct entry *map_get(struct map *m, const char *key) {
    if (m->len >= m->nslots && map_grow(m) != 0 && m->nslots == 0)
        return NULL;
    size_t i = hash_str(key) % m->nslots;
    for (struct entry *e = m->slots[i]; e != NULL; e = e->next)
        if (strcmp(e->key, key) == 0)
            return e;
    size_t klen = strlen(key);
    struct entry *e = calloc(1, sizeof *e + klen + 1);
    if (e == NULL)
        return NULL;
    memcpy(e->key, key, klen + 1);
    e->next = m->slots[i];
    m->slots[i] = e;
    m->len++;
    return e;
}

static void map_clear(struct map *m) {
    for (size_t i = 0; i < m->nslots; i++) {
        struct entry *e = m->slots[i], *next;
        for (; e != NULL; e = next) {
            next = e->next;
            reply_free(e->reply);
            free(e);
        }
    }
    free(m->slots);
    m->slots = NULL;
    m->nslots = m->len = 0;
}

/* Adds {key: count} for every entry to obj; returns -1 when out of memory. */
static int map_to_json(const struct map *m, cJSON *obj) {
    for (size_t i = 0; i < m->nslots; i++)
        for (struct entry *e = m->slots[i]; e != NULL; e = e->next)
            if (cJSON_AddNumberToObject(obj, e->key, (double)e->count) == NULL)
                return -1;
    return 0;
}

/* ---- the mock's state ---- */

struct mock {
    pthread_mutex_t lock; /* guards every field below it */
    unsigned long gen;    /* bumped by /__reset */
    long requests, completed, aborted, in_flight, max_in_flight;
    long connections, replayed;
    struct map by_path, seqs, effects, replies;
    cJSON *log; /* the last LOG_MAX requests: path, key, signature, body */

    atomic_int stopping;
    int wake[2]; /* readable once we shut down: wakes every waiting request */
    struct MHD_Daemon *daemon;
};

struct request {
    struct mock *m;
    char *path;
    char *body; /* always NUL-terminated once allocated */
    size_t len, cap;
    unsigned long gen;
    long n;      /* 1-based count of requests to this path */
    int control; /* /__stats or /__reset: not counted */
    int settled; /* the handler already accounted for its end */
};

enum wait_result { WAIT_OK, WAIT_GONE, WAIT_STOP };

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits ms milliseconds (forever if negative) unless the client closes its
 * end of fd first (WAIT_GONE) or the mock shuts down (WAIT_STOP). Only
 * POLLRDHUP is asked for, so a pipelined next request does not count as
 * leaving. */
static enum wait_result wait_for(struct mock *m, int fd, long ms) {
    long deadline = now_ms() + ms;
    for (;;) {
        long left = ms < 0 ? -1 : deadline - now_ms();
        if (ms >= 0 && left <= 0)
            return WAIT_OK;
        struct pollfd p[2] = {
            {.fd = fd, .events = POLLRDHUP},
            {.fd = m->wake[0], .events = POLLIN},
        };
        int rc = poll(p, 2, left > INT_MAX ? INT_MAX : (int)left);
        if (rc < 0 && errno != EINTR)
            return WAIT_GONE;
        if (rc <= 0)
            continue;
        if (p[1].revents)
            return WAIT_STOP;
        if (p[0].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))
            return WAIT_GONE;
    }
}

/* ---- query parameters ---- */

struct params {
    long delay_ms;
    unsigned status;
    const char *seq;
    const char *fault; /* NULL, "reset", "hang" or "slow_body" */
    const char *retry_after;
    const char *body;
    long body_bytes;
    long headers;           /* extra response headers */
    long long stream_bytes; /* >0: that many filler bytes; -1: endless; 0: off */
    int chunked;            /* stream without a Content-Length */
    int idempotent;
    const char *location; /* Location header to send */
    const char *bad;      /* name of the first malformed parameter */
};

static int parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static const char *arg(struct MHD_Connection *c, const char *name) {
    return MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
}

static void params_read(struct MHD_Connection *c, struct params *p) {
    const char *s;
    long v;
    *p = (struct params){.status = 200, .body_bytes = 1000};
    if ((s = arg(c, "delay")) && parse_long(s, 0, MAX_DELAY_MS, &p->delay_ms))
        p->bad = "delay";
    if ((s = arg(c, "status")) && !p->bad) {
        if (parse_long(s, 200, 599, &v) == 0)
            p->status = (unsigned)v;
        else
            p->bad = "status";
    }
    if ((s = arg(c, "body_bytes")) && !p->bad && parse_long(s, 0, MAX_BODY, &p->body_bytes))
        p->bad = "body_bytes";
    if ((s = arg(c, "headers")) && !p->bad && parse_long(s, 0, 200, &p->headers))
        p->bad = "headers";
    if ((s = arg(c, "stream_bytes")) && !p->bad) {
        char *end;
        errno = 0;
        long long n = strcmp(s, "endless") == 0 ? -1 : strtoll(s, &end, 10);
        if (n == 0 || (n > 0 && (errno != 0 || *end != '\0' || n > MAX_STREAM)) || n < -1)
            p->bad = "stream_bytes";
        else
            p->stream_bytes = n;
    }
    s = arg(c, "chunked");
    p->chunked = s != NULL && strcmp(s, "1") == 0;
    if ((s = arg(c, "fault")) && !p->bad) {
        if (strcmp(s, "reset") == 0 || strcmp(s, "hang") == 0 || strcmp(s, "slow_body") == 0)
            p->fault = s;
        else
            p->bad = "fault";
    }
    p->seq = arg(c, "seq");
    p->retry_after = arg(c, "retry_after");
    p->body = arg(c, "body");
    p->location = arg(c, "location");
    s = arg(c, "idempotent");
    p->idempotent = s != NULL && strcmp(s, "1") == 0;
}

/* The nth status of a "503,503,200" list, the last one repeating; 0 when the
 * list is malformed. */
static unsigned seq_status(const char *seq, long n) {
    char buf[16];
    long v = 0;
    const char *s = seq;
    for (long i = 1;; i++) {
        size_t len = strcspn(s, ",");
        if (len == 0 || len >= sizeof buf)
            return 0;
        memcpy(buf, s, len);
        buf[len] = '\0';
        if (parse_long(buf, 200, 599, &v) != 0)
            return 0;
        if (i >= n || s[len] == '\0')
            break;
        s += len + 1;
    }
    return (unsigned)v;
}

/* ---- the JSON echo ---- */

struct kv_ctx {
    cJSON *obj;
    int is_header; /* lowercase names, join repeats with ", " */
    int failed;
};

static enum MHD_Result kv_add(void *cls, enum MHD_ValueKind kind, const char *key,
                              const char *value) {
    struct kv_ctx *ctx = cls;
    char *name = strdup(key), *joined = NULL;
    cJSON *item = NULL;
    (void)kind;
    if (name == NULL)
        goto fail;
    if (value == NULL)
        value = ""; /* `?flag` has no value */
    if (ctx->is_header)
        for (char *s = name; *s; s++)
            *s = (char)tolower((unsigned char)*s);
    cJSON *old = cJSON_GetObjectItemCaseSensitive(ctx->obj, name);
    if (old != NULL && ctx->is_header) {
        if (asprintf(&joined, "%s, %s", old->valuestring, value) < 0) {
            joined = NULL;
            goto fail;
        }
        value = joined;
    }
    if ((item = cJSON_CreateString(value)) == NULL)
        goto fail;
    if (old != NULL) {
        if (!cJSON_ReplaceItemInObjectCaseSensitive(ctx->obj, name, item))
            goto fail;
    } else if (!cJSON_AddItemToObject(ctx->obj, name, item)) {
        goto fail;
    }
    free(joined);
    free(name);
    return MHD_YES;
fail:
    cJSON_Delete(item);
    free(joined);
    free(name);
    ctx->failed = 1;
    return MHD_NO;
}

static cJSON *values_json(struct MHD_Connection *c, enum MHD_ValueKind kind) {
    struct kv_ctx ctx = {.obj = cJSON_CreateObject(), .is_header = kind == MHD_HEADER_KIND};
    if (ctx.obj == NULL)
        return NULL;
    MHD_get_connection_values(c, kind, kv_add, &ctx);
    if (ctx.failed) {
        cJSON_Delete(ctx.obj);
        return NULL;
    }
    return ctx.obj;
}

/* Adds item (which may be NULL after a failed allocation) to obj, which then
 * owns it; returns -1 and frees item on failure. */
static int add_item(cJSON *obj, const char *name, cJSON *item) {
    if (item != NULL && cJSON_AddItemToObject(obj, name, item))
        return 0;
    cJSON_Delete(item);
    return -1;
}

/* Returns the echo document as a malloc'd string, NULL when out of memory. */
static char *echo_json(struct request *req, struct MHD_Connection *c, const char *method) {
    char *out = NULL;
    cJSON *root = cJSON_CreateObject(), *item;
    const char *body = req->body ? req->body : "";
    if (root == NULL)
        goto done;
    if (!cJSON_AddStringToObject(root, "method", method) ||
        !cJSON_AddStringToObject(root, "path", req->path))
        goto done;
    if (add_item(root, "query", values_json(c, MHD_GET_ARGUMENT_KIND)) != 0 ||
        add_item(root, "headers", values_json(c, MHD_HEADER_KIND)) != 0 ||
        !cJSON_AddStringToObject(root, "body", body))
        goto done;
    item = req->len ? cJSON_ParseWithLength(body, req->len) : NULL;
    if (add_item(root, "json", item ? item : cJSON_CreateNull()) != 0)
        goto done;
    if (!cJSON_AddNumberToObject(root, "n", (double)req->n))
        goto done;
    out = cJSON_PrintUnformatted(root);
done:
    cJSON_Delete(root);
    return out;
}

/* ---- counting ---- */

static void mock_lock(struct mock *m) { pthread_mutex_lock(&m->lock); }

static void mock_unlock(struct mock *m) { pthread_mutex_unlock(&m->lock); }

/* Counts an abort the handler noticed itself, then marks the request settled
 * so the completion callback does not count it again. */
static void settle_aborted(struct request *req) {
    struct mock *m = req->m;
    mock_lock(m);
    if (req->gen == m->gen)
        m->aborted++;
    mock_unlock(m);
    req->settled = 1;
}

/* Advances the counter of path+seq and returns this request's status. */
static unsigned seq_next(struct request *req, const char *seq) {
    struct mock *m = req->m;
    char *key;
    unsigned status = 0;
    if (asprintf(&key, "%s\n%s", req->path, seq) < 0)
        return 0;
    mock_lock(m);
    struct entry *e = map_get(&m->seqs, key);
    if (e != NULL)
        status = seq_status(seq, ++e->count);
    mock_unlock(m);
    free(key);
    return status;
}

static struct reply *reply_copy(const struct reply *r) {
    struct reply *c = malloc(sizeof *c);
    if (c == NULL)
        return NULL;
    *c = *r;
    if ((c->body = malloc(r->len + 1)) == NULL) {
        free(c);
        return NULL;
    }
    memcpy(c->body, r->body, r->len);
    c->body[r->len] = '\0';
    return c;
}

/* Counts the Idempotency-Key as an effect, or, with idempotent=1 and a key
 * already seen on this path, swaps r for the first reply (not an effect).
 * The first reply is stored when the request arrives, before any delay or
 * fault: a retry after a timeout or a reset finds it, as with a real server
 * that did the work but could not answer. */
static int idempotency_settle(struct request *req, const char *key, int idempotent,
                              struct reply *r) {
    struct mock *m = req->m;
    char *rkey = NULL;
    int rc = -1;
    if (idempotent && asprintf(&rkey, "%s\n%s", req->path, key) < 0)
        return -1;
    mock_lock(m);
    struct entry *stored = idempotent ? map_get(&m->replies, rkey) : NULL;
    if (idempotent && stored == NULL)
        goto done;
    if (stored != NULL && stored->reply != NULL) {
        struct reply *c = reply_copy(stored->reply);
        if (c == NULL)
            goto done;
        free(r->body);
        *r = *c;
        free(c);
        m->replayed++;
        rc = 0;
        goto done;
    }
    struct entry *e = map_get(&m->effects, key);
    if (e == NULL)
        goto done;
    e->count++;
    if (stored != NULL && (stored->reply = reply_copy(r)) == NULL)
        goto done;
    rc = 0;
done:
    mock_unlock(m);
    free(rkey);
    return rc;
}

/* ---- responses ---- */

struct slow {
    struct mock *m;
    int fd;
    char *text; /* NULL: filler bytes */
    size_t len;
};

static ssize_t slow_read(void *cls, uint64_t pos, char *buf, size_t max) {
    struct slow *s = cls;
    if (pos >= s->len)
        return MHD_CONTENT_READER_END_OF_STREAM;
    /* The first chunk goes out with the headers; each later one waits. */
    if (pos > 0 && wait_for(s->m, s->fd, SLOW_TICK_MS) != WAIT_OK)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = s->len - (size_t)pos;
    if (n > SLOW_CHUNK)
        n = SLOW_CHUNK;
    if (n > max)
        n = max;
    if (s->text != NULL)
        memcpy(buf, s->text + pos, n);
    else
        memset(buf, 'x', n);
    return (ssize_t)n;
}

static void slow_free(void *cls) {
    struct slow *s = cls;
    free(s->text);
    free(s);
}

/* stream_bytes=: filler as fast as MHD asks for it; cls is the total, or
 * NULL for an endless stream. MHD stops asking when the client leaves. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    const long long *total = cls;
    if (total != NULL && pos >= (uint64_t)*total)
        return MHD_CONTENT_READER_END_OF_STREAM;
    size_t n = max;
    if (total != NULL && (uint64_t)*total - pos < n)
        n = (size_t)((uint64_t)*total - pos);
    memset(buf, 'x', n);
    return (ssize_t)n;
}

/* Builds the response for r; takes r->body either way. */
static struct MHD_Response *response_new(struct mock *m, int fd, struct reply *r, int slow,
                                         const struct params *p) {
    struct MHD_Response *resp;
    if (p->stream_bytes != 0) {
        long long *total = NULL;
        if (p->stream_bytes > 0 && (total = malloc(sizeof *total)) == NULL)
            return NULL;
        if (total != NULL)
            *total = p->stream_bytes;
        uint64_t size = total != NULL && !p->chunked ? (uint64_t)*total : MHD_SIZE_UNKNOWN;
        resp = MHD_create_response_from_callback(size, 64 * 1024, stream_read, total, free);
        if (resp == NULL)
            free(total);
        return resp;
    }
    if (!slow) {
        resp = MHD_create_response_from_buffer(r->len, r->body, MHD_RESPMEM_MUST_FREE);
        if (resp == NULL)
            free(r->body);
        r->body = NULL;
        return resp;
    }
    struct slow *s = malloc(sizeof *s);
    if (s == NULL) {
        free(r->body);
        r->body = NULL;
        return NULL;
    }
    *s = (struct slow){.m = m, .fd = fd, .text = r->body, .len = r->len};
    r->body = NULL;
    resp = MHD_create_response_from_callback(s->len, 64, slow_read, s, slow_free);
    if (resp == NULL)
        slow_free(s);
    return resp;
}

static enum MHD_Result queue(struct MHD_Connection *c, struct MHD_Response *resp, unsigned status,
                             const char *ctype, const char *retry_after, long extra) {
    enum MHD_Result ret = MHD_NO;
    if (resp == NULL)
        return MHD_NO;
    if (MHD_add_response_header(resp, "Content-Type", ctype) != MHD_YES)
        goto done;
    if (retry_after != NULL && MHD_add_response_header(resp, "Retry-After", retry_after) != MHD_YES)
        goto done;
    for (long i = 1; i <= extra; i++) {
        char name[32], value[96];
        snprintf(name, sizeof name, "X-Mock-%ld", i);
        snprintf(value, sizeof value, "value %ld %.*s", i, (int)(i % 60), MOCK_PAD);
        if (MHD_add_response_header(resp, name, value) != MHD_YES)
            goto done;
    }
    ret = MHD_queue_response(c, status, resp);
done:
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result queue_text(struct MHD_Connection *c, unsigned status, const char *text) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    return queue(c, resp, status, "text/plain", NULL, 0);
}

/* Computes status and body from the query, before any delay or fault. */
static int reply_build(struct request *req, struct MHD_Connection *c, const char *method,
                       const struct params *p, struct reply *r) {
    *r = (struct reply){.status = p->status, .ctype = "application/json"};
    if (p->seq != NULL && (r->status = seq_next(req, p->seq)) == 0)
        return -1;
    if (p->stream_bytes != 0) { /* served by stream_read, nothing to build */
        r->ctype = "text/plain";
        r->body = NULL;
        r->len = 0;
        return 0;
    }
    if (p->body != NULL || (p->fault && strcmp(p->fault, "slow_body") == 0)) {
        /* a body= that looks like a JSON object is served as JSON */
        r->ctype = p->body && p->body[0] == '{' ? "application/json" : "text/plain";
        r->len = p->body ? strlen(p->body) : (size_t)p->body_bytes;
        if ((r->body = malloc(r->len + 1)) == NULL)
            return -1;
        if (p->body != NULL)
            memcpy(r->body, p->body, r->len);
        else
            memset(r->body, 'x', r->len);
        r->body[r->len] = '\0';
        return 0;
    }
    if ((r->body = echo_json(req, c, method)) == NULL)
        return -1;
    r->len = strlen(r->body);
    return 0;
}

/* ---- the request log ---- */

#define LOG_MAX 1000

/* Appends the request to the log that /__stats shows, in arrival order, so
 * a test can check the order of deliveries and what they carried. */
static void log_request(struct request *req, struct MHD_Connection *c, const char *key) {
    struct mock *m = req->m;
    const char *sig = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Chorus-Signature");
    const char *tp = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "traceparent");
    const char *ts = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "tracestate");
    cJSON *o = cJSON_CreateObject();
    if (o == NULL)
        return;
    if (!cJSON_AddStringToObject(o, "path", req->path) ||
        (key && !cJSON_AddStringToObject(o, "key", key)) ||
        (sig && !cJSON_AddStringToObject(o, "signature", sig)) ||
        (tp && !cJSON_AddStringToObject(o, "traceparent", tp)) ||
        (ts && !cJSON_AddStringToObject(o, "tracestate", ts)) ||
        !cJSON_AddStringToObject(o, "body", req->body ? req->body : "")) {
        cJSON_Delete(o);
        return;
    }
    mock_lock(m);
    if (cJSON_GetArraySize(m->log) >= LOG_MAX)
        cJSON_DeleteItemFromArray(m->log, 0);
    cJSON_AddItemToArray(m->log, o);
    mock_unlock(m);
}

/* The request body has been read: answer as the query string says. */
static enum MHD_Result request_finish(struct request *req, struct MHD_Connection *c,
                                      const char *method) {
    struct mock *m = req->m;
    struct params p;
    struct reply r = {0};
    char msg[96];
    params_read(c, &p);
    /* Walk the whole seq list once so a bad element is refused up front. */
    if (p.bad == NULL && p.seq != NULL && seq_status(p.seq, LONG_MAX) == 0)
        p.bad = "seq";
    if (p.bad != NULL) {
        snprintf(msg, sizeof msg, "mock-upstream: bad %s= parameter\n", p.bad);
        if (queue_text(c, 400, msg) == MHD_YES)
            return MHD_YES;
        goto fail;
    }
    const char *key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Idempotency-Key");
    log_request(req, c, key);
    if (reply_build(req, c, method, &p, &r) != 0)
        goto fail;
    if (key != NULL && idempotency_settle(req, key, p.idempotent, &r) != 0)
        goto fail;

    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (info == NULL)
        goto fail;
    int fd = info->connect_fd;
    int hang = p.fault && strcmp(p.fault, "hang") == 0;
    enum wait_result w = wait_for(m, fd, hang ? -1 : p.delay_ms);
    if (w == WAIT_GONE) {
        settle_aborted(req);
        goto gone;
    }
    if (w == WAIT_STOP)
        goto fail;
    /* MHD_NO makes MHD close the socket without a byte of response; the
     * client sees the connection end (curl: "Empty reply from server"). */
    if (p.fault && strcmp(p.fault, "reset") == 0)
        goto fail;
    int slow = p.fault && strcmp(p.fault, "slow_body") == 0;
    struct MHD_Response *resp = response_new(m, fd, &r, slow, &p);
    if (resp && p.location && MHD_add_response_header(resp, "Location", p.location) != MHD_YES) {
        MHD_destroy_response(resp);
        resp = NULL; /* queue() fails on NULL */
    }
    enum MHD_Result ret = queue(c, resp, r.status, r.ctype, p.retry_after, p.headers);
    if (ret != MHD_YES)
        req->settled = 1;
    return ret;
fail:
    req->settled = 1;
gone:
    free(r.body);
    return MHD_NO;
}

/* ---- control endpoints ---- */

static char *stats_json(struct mock *m) {
    char *out = NULL;
    cJSON *root = cJSON_CreateObject(), *by_path = NULL, *effects = NULL;
    if (root == NULL)
        return NULL;
    mock_lock(m);
    const struct {
        const char *name;
        long v;
    } nums[] = {
        {"requests", m->requests},
        {"completed", m->completed},
        {"aborted", m->aborted},
        {"in_flight", m->in_flight},
        {"max_in_flight", m->max_in_flight},
        {"connections", m->connections},
        {"replayed", m->replayed},
    };
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++)
        if (!cJSON_AddNumberToObject(root, nums[i].name, (double)nums[i].v))
            goto done;
    if ((by_path = cJSON_AddObjectToObject(root, "by_path")) == NULL ||
        map_to_json(&m->by_path, by_path) != 0)
        goto done;
    if ((effects = cJSON_AddObjectToObject(root, "effects")) == NULL ||
        map_to_json(&m->effects, effects) != 0)
        goto done;
    cJSON *log = cJSON_Duplicate(m->log, 1);
    if (log == NULL || !cJSON_AddItemToObject(root, "log", log)) {
        cJSON_Delete(log);
        goto done;
    }
    out = cJSON_PrintUnformatted(root);
done:
    mock_unlock(m);
    cJSON_Delete(root);
    return out;
}

static void mock_reset(struct mock *m) {
    mock_lock(m);
    m->gen++;
    m->requests = m->completed = m->aborted = 0;
    m->connections = m->replayed = 0;
    /* in_flight is a gauge, not a counter: requests still running end later
     * and decrement it. */
    m->max_in_flight = m->in_flight;
    map_clear(&m->by_path);
    map_clear(&m->seqs);
    map_clear(&m->effects);
    map_clear(&m->replies);
    while (cJSON_GetArraySize(m->log) > 0)
        cJSON_DeleteItemFromArray(m->log, 0);
    mock_unlock(m);
}

static enum MHD_Result control_respond(struct request *req, struct MHD_Connection *c,
                                       const char *method) {
    const char *want = strcmp(req->path, "/__stats") == 0 ? "GET" : "POST";
    char *body;
    if (strcmp(method, want) != 0)
        return queue_text(c, 405, "mock-upstream: method not allowed\n");
    if (strcmp(want, "POST") == 0) {
        mock_reset(req->m);
        body = strdup("{\"reset\":true}");
    } else {
        body = stats_json(req->m);
    }
    if (body == NULL)
        return MHD_NO;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL)
        free(body);
    return queue(c, resp, 200, "application/json", NULL, 0);
}

/* ---- MHD callbacks ---- */

static enum MHD_Result request_begin(struct mock *m, const char *url, void **con_cls) {
    struct request *req = calloc(1, sizeof *req);
    if (req == NULL || (req->path = strdup(url)) == NULL)
        goto fail;
    req->m = m;
    req->control = strcmp(url, "/__stats") == 0 || strcmp(url, "/__reset") == 0;
    if (!req->control) {
        mock_lock(m);
        struct entry *e = map_get(&m->by_path, url);
        if (e == NULL) {
            mock_unlock(m);
            goto fail;
        }
        req->n = ++e->count;
        req->gen = m->gen;
        m->requests++;
        if (++m->in_flight > m->max_in_flight)
            m->max_in_flight = m->in_flight;
        mock_unlock(m);
    }
    *con_cls = req;
    return MHD_YES;
fail:
    if (req != NULL)
        free(req->path);
    free(req);
    return MHD_NO;
}

static int body_append(struct request *req, const char *data, size_t n) {
    if (n > MAX_BODY - req->len)
        return -1;
    if (req->len + n + 1 > req->cap) {
        size_t cap = req->cap ? req->cap : 1024;
        while (cap < req->len + n + 1)
            cap *= 2;
        char *b = realloc(req->body, cap);
        if (b == NULL)
            return -1;
        req->body = b;
        req->cap = cap;
    }
    memcpy(req->body + req->len, data, n);
    req->len += n;
    req->body[req->len] = '\0';
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
    struct request *req = *con_cls;
    (void)version;
    if (req == NULL)
        return request_begin(cls, url, con_cls);
    if (*upload_data_size > 0) {
        if (body_append(req, upload_data, *upload_data_size) != 0) {
            req->settled = 1;
            return MHD_NO;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (req->control)
        return control_respond(req, c, method);
    return request_finish(req, c, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    struct mock *m = cls;
    struct request *req = *con_cls;
    (void)c;
    if (req == NULL)
        return;
    if (!req->control) {
        mock_lock(m);
        m->in_flight--;
        if (!req->settled && req->gen == m->gen) {
            if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
                m->completed++;
            else if (toe != MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN && !atomic_load(&m->stopping))
                m->aborted++;
        }
        mock_unlock(m);
    }
    free(req->body);
    free(req->path);
    free(req);
    *con_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode toe) {
    struct mock *m = cls;
    (void)c;
    (void)socket_ctx;
    if (toe != MHD_CONNECTION_NOTIFY_STARTED)
        return;
    mock_lock(m);
    m->connections++;
    mock_unlock(m);
}

/* ---- process ---- */

struct options {
    unsigned port;
    long max_seconds;
};

static int usage(const char *msg) {
    if (msg != NULL)
        fprintf(stderr, "mock-upstream: %s\n", msg);
    fprintf(stderr, "usage: mock-upstream [--listen 127.0.0.1:PORT] [--max-seconds N]\n");
    return -1;
}

static int parse_listen(const char *s, unsigned *port) {
    const char *colon = strrchr(s, ':');
    long v;
    if (colon == NULL)
        return usage("--listen wants HOST:PORT");
    size_t hlen = (size_t)(colon - s);
    if (!(hlen == 9 && strncmp(s, "127.0.0.1", 9) == 0) &&
        !(hlen == 9 && strncmp(s, "localhost", 9) == 0)) {
        fprintf(stderr,
                "mock-upstream: refusing to listen on %.*s: "
                "loopback only (127.0.0.1 or localhost)\n",
                (int)hlen, s);
        return -1;
    }
    if (parse_long(colon + 1, 0, 65535, &v) != 0)
        return usage("--listen: bad port");
    *port = (unsigned)v;
    return 0;
}

static int options_parse(int argc, char **argv, struct options *o) {
    *o = (struct options){.port = 0, .max_seconds = 600};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            return usage(NULL);
        if (i + 1 >= argc)
            return usage("missing value after an option");
        if (strcmp(a, "--listen") == 0) {
            if (parse_listen(argv[++i], &o->port) != 0)
                return -1;
        } else if (strcmp(a, "--max-seconds") == 0) {
            if (parse_long(argv[++i], 1, 86400 * 365, &o->max_seconds) != 0)
                return usage("--max-seconds wants a positive integer");
        } else {
            return usage("unknown option");
        }
    }
    return 0;
}

/* Many concurrent connections need many descriptors; take all we may. */
static rlim_t raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 1024;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max == RLIM_INFINITY ? 1048576 : rl.rlim_max;
        struct rlimit up = {.rlim_cur = want, .rlim_max = rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            rl.rlim_cur = want;
        else
            fprintf(stderr, "mock-upstream: cannot raise RLIMIT_NOFILE: %s\n", strerror(errno));
    }
    return rl.rlim_cur;
}

static int mock_start(struct mock *m, const struct options *o, rlim_t nofile) {
    struct sockaddr_in sa = {
        .sin_family = AF_INET,
        .sin_port = htons((uint16_t)o->port),
        .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
    };
    /* Leave room for stdio, the wake pipe, the listener and MHD's own. */
    unsigned limit = nofile > 64 ? (unsigned)(nofile > 1000000 ? 1000000 : nofile) - 32 : 16;
    m->daemon = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD, 0, NULL, NULL, on_request, m,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_LIMIT, limit,
        MHD_OPTION_CONNECTION_TIMEOUT, 0u, MHD_OPTION_THREAD_STACK_SIZE, (size_t)STACK_SIZE,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096u, MHD_OPTION_NOTIFY_COMPLETED, on_completed, m,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, m, MHD_OPTION_END);
    if (m->daemon == NULL) {
        fprintf(stderr, "mock-upstream: cannot listen on 127.0.0.1:%u: %s\n", o->port,
                strerror(errno));
        return -1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(m->daemon, MHD_DAEMON_INFO_BIND_PORT);
    if (info == NULL) {
        fprintf(stderr, "mock-upstream: cannot learn the bound port\n");
        return -1;
    }
    printf("listening 127.0.0.1:%u\n", (unsigned)info->port);
    fflush(stdout);
    return 0;
}

/* Sleeps until SIGTERM/SIGINT (blocked in every thread, so they queue for
 * us) or until max_seconds have passed. */
static void wait_for_end(const sigset_t *set, long max_seconds) {
    long deadline = now_ms() + max_seconds * 1000;
    for (;;) {
        long left = deadline - now_ms();
        if (left <= 0)
            return;
        struct timespec ts = {.tv_sec = left / 1000, .tv_nsec = (left % 1000) * 1000000};
        if (sigtimedwait(set, NULL, &ts) > 0)
            return;
    }
}

int main(int argc, char **argv) {
    struct options o;
    struct mock m = {.wake = {-1, -1}};
    sigset_t set;
    int rc = 1;
    if (options_parse(argc, argv, &o) != 0)
        return 2;
    rlim_t nofile = raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    /* Block before any thread exists so all of them inherit the mask. */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    if ((m.log = cJSON_CreateArray()) == NULL || pthread_mutex_init(&m.lock, NULL) != 0)
        return 1;
    atomic_init(&m.stopping, 0);
    if (pipe2(m.wake, O_CLOEXEC) != 0) {
        perror("mock-upstream: pipe");
        goto fail;
    }
    if (mock_start(&m, &o, nofile) != 0)
        goto fail;
    wait_for_end(&set, o.max_seconds);
    rc = 0;
fail:
    atomic_store(&m.stopping, 1);
    if (m.wake[1] >= 0 && write(m.wake[1], "x", 1) != 1)
        perror("mock-upstream: wake");
    if (m.daemon != NULL)
        MHD_stop_daemon(m.daemon);
    if (m.wake[0] >= 0)
        close(m.wake[0]);
    if (m.wake[1] >= 0)
        close(m.wake[1]);
    map_clear(&m.by_path);
    map_clear(&m.seqs);
    map_clear(&m.effects);
    map_clear(&m.replies);
    cJSON_Delete(m.log);
    pthread_mutex_destroy(&m.lock);
    return rc;
}
