/* http_server.c — libmicrohttpd in external epoll mode on the libuv loop.
 *
 * MHD's epoll fd becomes readable when any of its sockets has work; we then
 * call MHD_run and re-arm one timer from MHD_get_timeout. A request whose
 * answer is not ready is suspended; chorus_server_respond resumes it and
 * kicks MHD_run from a prepare handle, which runs after the runs that
 * answered (idle phase) and before the loop polls again: answers go out
 * before the next batch of events is read, not a loop turn later.
 *
 * Invariant: an exchange lives from MHD's first access-handler call until
 * its completion callback; while it waits for an answer it is suspended, and
 * MHD never completes a suspended connection, so the handler's pointer stays
 * valid until it answers.
 */
#include "http_server.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

enum exchange_state { EX_READING, EX_WAITING, EX_ANSWERED };

/* One client connection, from accept to close (MHD_OPTION_NOTIFY_CONNECTION).
 * MHD's own timeout is one of inactivity: a client sending a header line a
 * second is never closed, and max_connections of them lock every client
 * out. So a request must arrive whole within client_timeout of its start
 * (the accept, or the end of the connection's previous request); the
 * reaper shuts down the socket of one that has not. */
struct conn_track {
    struct MHD_Connection *conn;
    uint64_t since; /* loop ms the current request began */
    int busy;       /* it has arrived whole: the handler or the response own it */
    int cut;        /* shut down by the reaper */
    struct conn_track *prev, *next;
};

struct chorus_exchange {
    struct chorus_server *server;
    struct MHD_Connection *conn;
    enum exchange_state state;
    char *body;
    size_t len, cap;
    int too_large;
    int suspended;
    struct conn_track *track; /* its connection's, or NULL */
    unsigned status;
    struct MHD_Response *response;
    struct chorus_exchange *prev, *next; /* pending list */
};

struct chorus_server {
    uv_loop_t *loop;
    struct MHD_Daemon *daemon;
    uv_poll_t poll;
    uv_timer_t timer;
    uv_prepare_t kick; /* answers to send: runs before the loop polls again */
    uv_timer_t reaper; /* closes connections whose request is late */
    uint64_t client_timeout_ms;
    struct conn_track *conns;
    chorus_server_handler handler;
    void *data;
    size_t max_body;
    size_t max_header; /* bytes of request line, and of header lines */
    int port;
    int handles_open;
    struct chorus_exchange *pending;
    size_t npending;
};

static void drive(struct chorus_server *s);

/* ---- loop integration ----------------------------------------------------- */

static void on_poll(uv_poll_t *poll, int status, int events) {
    (void)status;
    (void)events;
    drive(poll->data);
}

static void on_timer(uv_timer_t *timer) { drive(timer->data); }

static void on_kick(uv_prepare_t *prepare) {
    uv_prepare_stop(prepare);
    drive(prepare->data);
}

static void drive(struct chorus_server *s) {
    if (!s->daemon)
        return;
    MHD_run(s->daemon);
    MHD_UNSIGNED_LONG_LONG ms;
    if (MHD_get_timeout(s->daemon, &ms) == MHD_YES)
        uv_timer_start(&s->timer, on_timer, ms, 0);
    else
        uv_timer_stop(&s->timer);
}

/* ---- slow clients -------------------------------------------------------- */

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    struct chorus_server *s = cls;
    struct conn_track *t = *socket_context;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        t = calloc(1, sizeof *t);
        if (!t)
            return; /* untracked: only MHD's inactivity timeout applies */
        t->conn = conn;
        t->since = uv_now(s->loop);
        t->next = s->conns;
        if (s->conns)
            s->conns->prev = t;
        s->conns = t;
        *socket_context = t;
    } else if (t) {
        if (t->prev)
            t->prev->next = t->next;
        else
            s->conns = t->next;
        if (t->next)
            t->next->prev = t->prev;
        free(t);
        *socket_context = NULL;
    }
    if (toe == MHD_CONNECTION_NOTIFY_CLOSED && !uv_is_active((uv_handle_t *)&s->kick))
        /* At max_connections MHD takes the listen socket out of its epoll
         * set, and puts it back at the start of a later MHD_run, not the
         * one that closed the connection: without a run soon, clients
         * waiting in the backlog stayed there until some other event. */
        uv_prepare_start(&s->kick, on_kick);
}

static struct conn_track *track_of(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info ? info->socket_context : NULL;
}

/* Shuts down the socket of every connection whose request began more than
 * client_timeout ago and has not arrived whole: MHD then reads the end of
 * the stream and closes the connection (there is no request to answer). */
static void on_reap(uv_timer_t *timer) {
    struct chorus_server *s = timer->data;
    uint64_t now = uv_now(s->loop);
    for (struct conn_track *t = s->conns; t; t = t->next) {
        if (t->busy || t->cut || now - t->since < s->client_timeout_ms)
            continue;
        const union MHD_ConnectionInfo *info =
            MHD_get_connection_info(t->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (info) {
            shutdown(info->connect_fd, SHUT_RDWR);
            t->cut = 1;
        }
    }
}

/* ---- pending list --------------------------------------------------------- */

static void pending_add(struct chorus_exchange *ex) {
    struct chorus_server *s = ex->server;
    ex->next = s->pending;
    if (s->pending)
        s->pending->prev = ex;
    s->pending = ex;
    s->npending++;
}

static void pending_remove(struct chorus_exchange *ex) {
    struct chorus_server *s = ex->server;
    if (ex->prev)
        ex->prev->next = ex->next;
    else
        s->pending = ex->next;
    if (ex->next)
        ex->next->prev = ex->prev;
    ex->prev = ex->next = NULL;
    s->npending--;
}

/* ---- request handling ----------------------------------------------------- */

static int append_body(struct chorus_exchange *ex, const char *data, size_t n) {
    if (ex->too_large || ex->len + n > ex->server->max_body) {
        ex->too_large = 1;
        return 0;
    }
    if (ex->len + n + 1 > ex->cap) {
        size_t cap = ex->cap ? ex->cap : 1024;
        while (cap < ex->len + n + 1)
            cap *= 2;
        char *p = realloc(ex->body, cap);
        if (!p)
            return -1;
        ex->body = p;
        ex->cap = cap;
    }
    memcpy(ex->body + ex->len, data, n);
    ex->len += n;
    ex->body[ex->len] = '\0';
    return 0;
}

static enum MHD_Result queue_answer(struct chorus_exchange *ex) {
    enum MHD_Result r = MHD_queue_response(ex->conn, ex->status, ex->response);
    MHD_destroy_response(ex->response);
    ex->response = NULL;
    return r;
}

static const char TOO_LARGE[] =
    "{\"type\":\"about:blank\",\"title\":\"Payload Too Large\",\"status\":413,"
    "\"detail\":\"request body exceeds the configured limit\"}";

/* ---- request framing ------------------------------------------------------ */

/* What the headers say about where the body ends. */
struct framing {
    const char *length;  /* the first Content-Length */
    int lengths_differ;  /* another Content-Length with another value */
    int chunked;         /* a Transfer-Encoding */
    int not_chunked;     /* a Transfer-Encoding other than "chunked" */
    size_t header_bytes; /* "Key: value\r\n" of every header line */
};

static enum MHD_Result scan_framing(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value) {
    (void)kind;
    struct framing *f = cls;
    value = value ? value : "";
    f->header_bytes += strlen(key) + strlen(value) + 4;
    if (strcasecmp(key, "Content-Length") == 0) {
        if (f->length && strcmp(f->length, value) != 0)
            f->lengths_differ = 1;
        if (!f->length)
            f->length = value;
    } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
        f->chunked = 1;
        if (strcasecmp(value, "chunked") != 0)
            f->not_chunked = 1;
    }
    return MHD_YES;
}

/* Why the request's body framing is ambiguous, or NULL. A front proxy that
 * reads another Content-Length than MHD, or the Content-Length where MHD
 * reads chunks, would take the rest of the body for a second request
 * (request smuggling): such requests are refused before their body is read
 * (RFC 9112 6.3). */
static const char *ambiguous_framing(struct MHD_Connection *conn, size_t *header_bytes) {
    struct framing f = {0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, scan_framing, &f);
    *header_bytes = f.header_bytes;
    if (f.lengths_differ)
        return "the request has Content-Length headers with different values";
    if (f.chunked && f.length)
        return "the request has both Transfer-Encoding and Content-Length";
    if (f.not_chunked) /* MHD would wait for a body it cannot delimit */
        return "the only Transfer-Encoding accepted is chunked";
    return NULL;
}

/* ---- oversized requests ---------------------------------------------------
 *
 * libmicrohttpd 0.9.75 answers a request line or headers that overflow its
 * per-connection memory itself, with an HTML body. Its pool is made a
 * quarter (at least 4 KiB) larger than max_header_bytes, so that a request
 * up to there reaches chorus first and is refused as problem+json like every
 * other error; only one past that margin still gets libmicrohttpd's HTML.
 * The margin is small because libmicrohttpd zeroes the whole pool after each
 * request and every connection keeps it: twice the limit cost 16 KiB more
 * memory per connection and a 32 KiB memset per request. */
static size_t mhd_pool_size(size_t max_header) {
    size_t margin = max_header / 4 > 4096 ? max_header / 4 : 4096;
    return max_header > SIZE_MAX - margin ? max_header : max_header + margin;
}

static enum MHD_Result count_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value) {
    (void)kind;
    *(size_t *)cls += strlen(key) + (value ? strlen(value) + 1 : 0) + 1;
    return MHD_YES;
}

/* The query's length as parsed ("?k=v&..."); the raw form is not kept. */
static size_t query_bytes(struct MHD_Connection *conn) {
    size_t n = 0;
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, count_arg, &n);
    return n;
}

static enum MHD_Result refuse_oversized(struct chorus_exchange *ex, int target) {
    char body[256];
    int n =
        snprintf(body, sizeof body,
                 "{\"type\":\"about:blank\",\"title\":\"%s\",\"status\":%d,"
                 "\"detail\":\"the request %s exceeds max_header_bytes (%zu bytes)\"}",
                 target ? "URI Too Long" : "Request Header Fields Too Large", target ? 414 : 431,
                 target ? "target" : "header fields", ex->server->max_header);
    static const char *const h[] = {"Content-Type", "application/problem+json", "Connection",
                                    "close"};
    if (ex->track)
        ex->track->busy = 1;
    chorus_server_respond(ex, target ? 414 : 431, h, 2, body, (size_t)n);
    return queue_answer(ex);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **req_cls) {
    (void)version;
    struct chorus_server *s = cls;
    struct chorus_exchange *ex = *req_cls;
    if (!ex) {
        ex = calloc(1, sizeof *ex);
        if (!ex)
            return MHD_NO;
        ex->server = s;
        ex->conn = conn;
        ex->track = track_of(conn);
        *req_cls = ex;
        size_t header_bytes;
        const char *why = ambiguous_framing(conn, &header_bytes);
        size_t target = strlen(url) + query_bytes(conn);
        if (target > s->max_header || header_bytes > s->max_header)
            return refuse_oversized(ex, target > s->max_header);
        if (why) {
            char body[256];
            int n = snprintf(body, sizeof body,
                             "{\"type\":\"about:blank\",\"title\":\"Bad Request\","
                             "\"status\":400,\"detail\":\"%s\"}",
                             why);
            static const char *const h[] = {"Content-Type", "application/problem+json",
                                            "Connection", "close"};
            if (ex->track)
                ex->track->busy = 1;
            chorus_server_respond(ex, 400, h, 2, body, (size_t)n);
            return queue_answer(ex);
        }
        return MHD_YES;
    }
    if (ex->state == EX_ANSWERED)
        return queue_answer(ex);
    if (*upload_size) {
        if (append_body(ex, upload, *upload_size) != 0)
            return MHD_NO;
        *upload_size = 0;
        return MHD_YES;
    }
    if (ex->track) /* arrived whole: no longer the client's to delay */
        ex->track->busy = 1;
    if (ex->too_large) {
        static const char *const h[] = {"Content-Type", "application/problem+json"};
        chorus_server_respond(ex, 413, h, 1, TOO_LARGE, sizeof TOO_LARGE - 1);
        return queue_answer(ex);
    }
    ex->state = EX_WAITING;
    pending_add(ex);
    struct chorus_request req = {method, url, ex->body ? ex->body : "", ex->len};
    s->handler(ex, &req, s->data);
    if (ex->state == EX_ANSWERED)
        return queue_answer(ex);
    MHD_suspend_connection(conn);
    ex->suspended = 1;
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode code) {
    (void)cls;
    (void)conn;
    (void)code;
    struct chorus_exchange *ex = *req_cls;
    if (!ex)
        return;
    if (ex->state == EX_WAITING)
        pending_remove(ex); /* only at daemon stop */
    if (ex->track) {        /* the connection's next request begins now */
        ex->track->busy = 0;
        ex->track->since = uv_now(ex->server->loop);
    }
    if (ex->response)
        MHD_destroy_response(ex->response);
    free(ex->body);
    free(ex);
    *req_cls = NULL;
}

int chorus_server_respond(struct chorus_exchange *ex, unsigned status, const char *const *headers,
                          size_t n, const char *body, size_t body_len) {
    struct chorus_server *s = ex->server;
    if (ex->state == EX_WAITING)
        pending_remove(ex);
    ex->state = EX_ANSWERED;
    ex->status = status;
    ex->response = MHD_create_response_from_buffer(body_len, (void *)body, MHD_RESPMEM_MUST_COPY);
    int rc = 0;
    for (size_t i = 0; ex->response && i < n; i++)
        if (MHD_add_response_header(ex->response, headers[2 * i], headers[2 * i + 1]) != MHD_YES)
            rc = -1; /* a header MHD refuses (e.g. CR/LF in it) is dropped */
    if (!ex->response) {
        ex->status = 500;
        ex->response = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        rc = -1;
    }
    if (ex->suspended) {
        ex->suspended = 0;
        MHD_resume_connection(ex->conn);
        if (!uv_is_active((uv_handle_t *)&s->kick))
            uv_prepare_start(&s->kick, on_kick);
    }
    return rc;
}

struct each_ctx {
    chorus_server_kv_fn fn;
    void *cls;
};

static enum MHD_Result each_value(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value) {
    (void)kind;
    struct each_ctx *ctx = cls;
    ctx->fn(ctx->cls, key, value ? value : "");
    return MHD_YES;
}

int chorus_server_count(struct chorus_exchange *ex, int kind) {
    int n = MHD_get_connection_values(ex->conn, kind == 0 ? MHD_HEADER_KIND : MHD_GET_ARGUMENT_KIND,
                                      NULL, NULL);
    return n > 0 ? n : 0; /* -1 when MHD has no connection to read */
}

void chorus_server_each(struct chorus_exchange *ex, int kind, chorus_server_kv_fn fn, void *cls) {
    struct each_ctx ctx = {fn, cls};
    MHD_get_connection_values(ex->conn, kind == 0 ? MHD_HEADER_KIND : MHD_GET_ARGUMENT_KIND,
                              each_value, &ctx);
}

/* ---- lifecycle ------------------------------------------------------------ */

struct chorus_server *chorus_server_start(uv_loop_t *loop, const struct chorus_server_config *cfg,
                                          chorus_server_handler handler, void *data, char *err,
                                          size_t errlen) {
    struct chorus_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->loop = loop;
    s->handler = handler;
    s->data = data;
    s->max_body = cfg->max_body;
    s->max_header = cfg->max_header;
    s->client_timeout_ms = (uint64_t)cfg->client_timeout * 1000;
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)cfg->port);
    if (inet_pton(AF_INET, cfg->host, &addr.sin_addr) != 1) {
        snprintf(err, errlen, "listen address '%s' is not a numeric IPv4 address", cfg->host);
        goto fail;
    }
    s->daemon = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO, 0, NULL, NULL, on_request, s,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)cfg->max_connections, MHD_OPTION_CONNECTION_TIMEOUT, cfg->idle_timeout,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, mhd_pool_size(cfg->max_header),
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION, on_connection,
        s, MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096, MHD_OPTION_END);
    if (!s->daemon) {
        snprintf(err, errlen, "cannot listen on %s:%d (address in use or not permitted)", cfg->host,
                 cfg->port);
        goto fail;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : cfg->port;
    info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    uv_poll_init(loop, &s->poll, info->epoll_fd);
    uv_timer_init(loop, &s->timer);
    uv_prepare_init(loop, &s->kick);
    uv_timer_init(loop, &s->reaper);
    s->poll.data = s->timer.data = s->kick.data = s->reaper.data = s;
    s->handles_open = 4;
    uv_poll_start(&s->poll, UV_READABLE, on_poll);
    if (s->client_timeout_ms) {
        /* a late request is cut within a quarter of the timeout (at most 1 s) */
        uint64_t every = s->client_timeout_ms / 4;
        every = every < 100 ? 100 : every > 1000 ? 1000 : every;
        uv_timer_start(&s->reaper, on_reap, every, every);
        uv_unref((uv_handle_t *)&s->reaper);
    }
    drive(s);
    return s;
fail:
    free(s);
    return NULL;
}

int chorus_server_port(const struct chorus_server *server) { return server->port; }

size_t chorus_server_pending(const struct chorus_server *server) { return server->npending; }

void chorus_server_quiesce(struct chorus_server *server) {
    if (!server->daemon)
        return;
    MHD_socket fd = MHD_quiesce_daemon(server->daemon);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

static void on_handle_closed(uv_handle_t *h) {
    struct chorus_server *s = h->data;
    if (--s->handles_open == 0)
        free(s);
}

static const char SHUTTING_DOWN[] =
    "{\"type\":\"about:blank\",\"title\":\"Service Unavailable\",\"status\":503,"
    "\"detail\":\"the server is shutting down\"}";

void chorus_server_close(struct chorus_server *s) {
    static const char *const h[] = {"Content-Type", "application/problem+json"};
    while (s->pending)
        chorus_server_respond(s->pending, 503, h, 1, SHUTTING_DOWN, sizeof SHUTTING_DOWN - 1);
    if (s->daemon) {
        MHD_run(s->daemon);
        MHD_stop_daemon(s->daemon);
        s->daemon = NULL;
    }
    uv_close((uv_handle_t *)&s->poll, on_handle_closed);
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->kick, on_handle_closed);
    uv_close((uv_handle_t *)&s->reaper, on_handle_closed);
}
