/* http_plain.c — plain HTTP/1.1 calls without libcurl, on a transport thread.
 *
 * Why: a call through curl 7.88 cost about 75,000 instructions on the
 * transport thread, more than nginx's whole fan-out request (63,000 for a
 * request and its two subrequests): its printf engine writes the request
 * line, the Host header and each header a byte at a time through a dynamic
 * buffer (about 30,000 per call), the URL is parsed and printed again, and
 * the connection cache, the socket callbacks and the timer callbacks add
 * the rest. This engine writes the request with one sendmsg, reads the
 * answer with recv into http_parser (Debian's libhttp-parser, the parser
 * Node used before llhttp) and keeps its connections in a list per thread.
 *
 * Which calls: http:// URLs without credentials, redirects not followed,
 * no proxy in the environment, a printable-ASCII URL without dot segments
 * ("/./", "/../": curl removes them), and no body on GET or HEAD. Anything
 * else (TLS, HTTP/2, redirects, proxies) goes through curl as before, with
 * the same callbacks and results: the request carries the same headers
 * curl would send (Host, Accept: * / *, Content-Length and curl's default
 * Content-Type for a body; a header given with an empty value removes
 * ours and is not sent, as with curl), and every failure gets curl's
 * error code, so the Lua side cannot tell which engine carried a call.
 *
 * Connections: a finished call whose response allows keep-alive leaves its
 * connection idle, in the thread's list (at most IDLE_KEEP, closed after
 * IDLE_MS); a call to the same host and port takes the most recently used.
 * Like curl, a call whose reused connection turns out closed before any
 * byte of the response arrived is sent again once on a new connection (the
 * server closed the idle connection as the request went out). An idle
 * connection stays in the epoll set for reading: the server's close wakes
 * it, and it closes.
 *
 * Each connection has one uv_timer: the call's deadline (connect and total)
 * while it carries one, IDLE_MS while idle. A connection is freed from
 * that timer's close callback, after the loop turn, so an epoll batch may
 * still name a connection closed earlier in it (closed is set: ignored).
 */
#include "http_plain.h"

#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* Idle connections a transport keeps, and for how long. */
#define IDLE_KEEP 256
#define IDLE_MS 60000
/* curl's connect timeout when the call sets none. */
#define CONNECT_DEFAULT_MS 300000L
/* Bytes read from a socket at once. */
#define READ_CHUNK 16384

enum conn_state { C_RESOLVING, C_CONNECTING, C_SENDING, C_RECEIVING, C_IDLE };

struct plain_conn {
    struct transport *t;
    struct plain_conn *prev, *next;   /* t->plain_all */
    struct plain_conn *iprev, *inext; /* t->plain_idle, while idle */
    enum conn_state state;
    int fd;        /* -1 until the socket is made */
    int polling;   /* the events the epoll set watches (0: not in it) */
    int closed;    /* closed: freed from the timer's close callback */
    int resolving; /* a getaddrinfo is out: the close waits for its answer */
    uv_timer_t timer;
    uv_getaddrinfo_t gai;
    struct addrinfo *ai, *ai_next; /* resolved addresses; the next to try */
    char *key;                     /* "host:port": who may reuse it */
    char *host;                    /* the URL's host (no brackets) */
    int port;
    int family;
    unsigned char addr[16]; /* connected to (network order) */
    int carried;            /* calls it carried to their end before this one */
    /* The call it carries (NULL while idle) and its progress. */
    struct chorus_http_call *call;
    char *head; /* request line and headers */
    size_t head_len;
    size_t sent;     /* of head_len + the body */
    size_t got;      /* response bytes received */
    int head_only;   /* a HEAD: the response has no body */
    int hstate;      /* 0: no header open, 1: in a name, 2: in a value */
    size_t value_at; /* where the open value starts in call->htext */
    int complete, keep_alive;
    http_parser parser;
};

static http_parser_settings settings;

/* ---- connections ------------------------------------------------------- */

static void watch(struct plain_conn *conn, int events) {
    if (events == conn->polling || conn->fd < 0)
        return;
    struct epoll_event ev = {.events = (uint32_t)events,
                             .data.u64 = PLAIN_EPOLL_TAG | (uint64_t)(uintptr_t)conn};
    int op = !events ? EPOLL_CTL_DEL : conn->polling ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    epoll_ctl(conn->t->epfd, op, conn->fd, &ev);
    conn->polling = events;
}

static void idle_unlink(struct plain_conn *conn) {
    struct transport *t = conn->t;
    if (conn->state != C_IDLE)
        return;
    if (conn->iprev)
        conn->iprev->inext = conn->inext;
    else
        t->plain_idle = conn->inext;
    if (conn->inext)
        conn->inext->iprev = conn->iprev;
    else
        t->plain_idle_tail = conn->iprev;
    conn->iprev = conn->inext = NULL;
    t->plain_nidle--;
    atomic_fetch_sub_explicit(&t->idle_socks, 1, memory_order_relaxed);
}

static void free_conn(uv_handle_t *handle) {
    struct plain_conn *conn = handle->data;
    if (conn->ai)
        uv_freeaddrinfo(conn->ai);
    free(conn->key);
    free(conn->host);
    free(conn);
}

/* Closes the connection (its call, if any, was detached before). */
static void conn_close(struct plain_conn *conn) {
    if (conn->closed)
        return;
    struct transport *t = conn->t;
    idle_unlink(conn);
    conn->closed = 1;
    if (conn->fd >= 0)
        close(conn->fd); /* leaves the epoll set with it */
    conn->fd = -1;
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        t->plain_all = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    free(conn->head);
    conn->head = NULL;
    uv_timer_stop(&conn->timer);
    if (conn->resolving)
        uv_cancel((uv_req_t *)&conn->gai); /* on_resolved closes the timer */
    else
        uv_close((uv_handle_t *)&conn->timer, free_conn);
}

static struct plain_conn *conn_new(struct transport *t, const char *key, const char *host,
                                   int port) {
    struct plain_conn *conn = calloc(1, sizeof *conn);
    if (!conn)
        return NULL;
    if (!(conn->key = strdup(key)) || !(conn->host = strdup(host)) ||
        uv_timer_init(t->uv, &conn->timer) != 0) {
        free(conn->key);
        free(conn->host);
        free(conn);
        return NULL;
    }
    if (t->inline_) /* the Lua thread's loop ends when its calls do, not its idle connections */
        uv_unref((uv_handle_t *)&conn->timer);
    conn->t = t;
    conn->fd = -1;
    conn->port = port;
    conn->timer.data = conn;
    conn->next = t->plain_all;
    if (t->plain_all)
        t->plain_all->prev = conn;
    t->plain_all = conn;
    return conn;
}

/* ---- the end of a call ------------------------------------------------- */

static void on_deadline(uv_timer_t *timer);
static void on_idle_timeout(uv_timer_t *timer) { conn_close(timer->data); }

static long elapsed_ms(const struct chorus_http_call *call) {
    return (long)((uv_hrtime() - call->start_ns) / 1000000u);
}

/* Ends the connection's call with code (curl's, so that finish() reports
 * it as curl's would be), and keeps the connection for the next call when
 * the response ended cleanly and allows it, else closes it. */
static void conn_end(struct plain_conn *conn, CURLcode code) {
    struct chorus_http_call *call = conn->call;
    struct transport *t = conn->t;
    conn->call = NULL;
    call->plain = NULL;
    call->code = code;
    call->end_ns = uv_hrtime();
    uv_timer_stop(&conn->timer);
    free(conn->head);
    conn->head = NULL;
    /* an answer that came before the whole request went out leaves the
     * connection out of step */
    int sent_all = conn->sent == conn->head_len + call->body_len;
    if (code == CURLE_OK && conn->keep_alive && sent_all && t->plain_nidle < IDLE_KEEP &&
        !t->stopping) {
        conn->carried++;
        conn->state = C_IDLE;
        conn->iprev = NULL;
        conn->inext = t->plain_idle;
        if (t->plain_idle)
            t->plain_idle->iprev = conn;
        else
            t->plain_idle_tail = conn;
        t->plain_idle = conn;
        t->plain_nidle++;
        atomic_fetch_add_explicit(&t->idle_socks, 1, memory_order_relaxed);
        watch(conn, EPOLLIN);
        uv_timer_start(&conn->timer, on_idle_timeout, IDLE_MS, 0);
    } else {
        conn_close(conn);
    }
    chorus_http_mq_push(call, M_DONE);
    chorus_http_call_unref(call); /* the transfer's */
}

/* Ends the call with a curl-worded message in errbuf. */
static void conn_fail(struct plain_conn *conn, CURLcode code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void conn_fail(struct plain_conn *conn, CURLcode code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(conn->call->errbuf, sizeof conn->call->errbuf, fmt, ap);
    va_end(ap);
    conn_end(conn, code);
}

/* Ends the call the way one of our checks stopped it (call->fail). */
static void conn_stopped(struct plain_conn *conn) { conn_end(conn, CURLE_WRITE_ERROR); }

static void stop_call(struct chorus_http_call *call, enum chorus_http_error why, const char *msg) {
    call->fail = why;
    snprintf(call->fail_msg, sizeof call->fail_msg, "%s", msg);
}

/* ---- the response ------------------------------------------------------ */

/* Closes the open header value: trailing blanks off, a NUL, counted. */
static int end_value(struct plain_conn *conn) {
    struct chorus_http_call *call = conn->call;
    while (call->htext_len > conn->value_at &&
           (call->htext[call->htext_len - 1] == ' ' || call->htext[call->htext_len - 1] == '\t'))
        call->htext_len--;
    if (chorus_http_htext_add(call, "", 1) != 0)
        return -1;
    call->nheaders++;
    conn->hstate = 0;
    return 0;
}

/* Counts n more header bytes of the response against the limit (curl
 * counts whole lines: the status line, each "name: value" and its CRLF). */
static int headers_too_large(struct plain_conn *conn, size_t n) {
    struct chorus_http_call *call = conn->call;
    call->header_bytes += n;
    if (call->header_bytes <= call->max_header_bytes)
        return 0;
    char msg[96];
    snprintf(msg, sizeof msg, "response headers exceed %zu bytes", call->max_header_bytes);
    stop_call(call, CHORUS_HTTP_TOO_LARGE, msg);
    return 1;
}

static int on_message_begin(http_parser *p) {
    struct plain_conn *conn = p->data;
    struct chorus_http_call *call = conn->call;
    call->htext_len = 0;
    call->nheaders = 0;
    call->header_bytes = 0;
    conn->hstate = 0;
    return 0;
}

static int on_status(http_parser *p, const char *at, size_t n) {
    (void)at;
    return headers_too_large(p->data, n + 15); /* "HTTP/1.1 200 " and CRLF */
}

static int on_header_field(http_parser *p, const char *at, size_t n) {
    struct plain_conn *conn = p->data;
    if (headers_too_large(conn, n + (conn->hstate == 1 ? 0 : 4)) ||
        (conn->hstate == 2 && end_value(conn) != 0))
        return 1;
    conn->hstate = 1;
    return chorus_http_htext_add(conn->call, at, n) != 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
    struct plain_conn *conn = p->data;
    if (headers_too_large(conn, n))
        return 1;
    if (conn->hstate == 1) {
        if (chorus_http_htext_add(conn->call, "", 1) != 0)
            return 1;
        conn->value_at = conn->call->htext_len;
        conn->hstate = 2;
    }
    return chorus_http_htext_add(conn->call, at, n) != 0;
}

static int on_headers_complete(http_parser *p) {
    struct plain_conn *conn = p->data;
    struct chorus_http_call *call = conn->call;
    if (headers_too_large(conn, 2) || (conn->hstate == 2 && end_value(conn) != 0))
        return -1;
    if (p->status_code < 100) { /* http_parser takes 1 to 3 digits; HTTP has 3 */
        char msg[64];
        snprintf(msg, sizeof msg, "malformed HTTP response: status %u", p->status_code);
        stop_call(call, CHORUS_HTTP_PROTOCOL, msg);
        return -1;
    }
    call->status = p->status_code;
    call->http_version = p->http_major * 10 + p->http_minor;
    if (p->status_code / 100 == 1)
        return 0; /* an interim response: the real one follows */
    /* a Content-Length past the limit, refused before the body (curl:
     * CURLOPT_MAXFILESIZE) */
    if (!conn->head_only && p->content_length != ULLONG_MAX &&
        p->content_length > (unsigned long long)call->max_body &&
        call->max_body < (size_t)INT64_MAX) {
        call->code = CURLE_FILESIZE_EXCEEDED;
        return -1;
    }
    return conn->head_only ? 1 : 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
    struct plain_conn *conn = p->data;
    struct chorus_http_call *call = conn->call;
    if (n > call->max_body - call->resp_len) {
        char msg[96];
        snprintf(msg, sizeof msg, "response body exceeds max_response_bytes (%zu bytes)",
                 call->max_body);
        stop_call(call, CHORUS_HTTP_TOO_LARGE, msg);
        return 1;
    }
    if (call->metered && call->denied_mem) {
        stop_call(call, CHORUS_HTTP_MEMORY, "response body exceeds the run's memory cap");
        return 1;
    }
    if (chorus_http_body_add(call, at, n) != 0) {
        stop_call(call, CHORUS_HTTP_PROTOCOL, "out of memory reading the response body");
        return 1;
    }
    return 0;
}

static int on_message_complete(http_parser *p) {
    struct plain_conn *conn = p->data;
    if (p->status_code / 100 == 1 && p->status_code != 101)
        return 0; /* interim: on_message_begin starts the real one */
    conn->complete = 1;
    conn->keep_alive = p->status_code != 101 && http_should_keep_alive(p);
    http_parser_pause(p, 1); /* what follows is no answer to this call */
    return 0;
}

/* ---- sending and receiving --------------------------------------------- */

static void conn_read(struct plain_conn *conn);
static void conn_connect(struct plain_conn *conn);

/* The reused connection was closed before any byte of the answer: the
 * server dropped it as the request went out. Like curl, send the call
 * again once, on a new connection to the same address. */
static int retry_fresh(struct plain_conn *conn) {
    struct chorus_http_call *call = conn->call;
    if (!conn->carried || conn->got || conn->t->stopping)
        return 0;
    struct plain_conn *fresh = conn_new(conn->t, conn->key, conn->host, conn->port);
    if (!fresh)
        return 0;
    fresh->family = conn->family;
    memcpy(fresh->addr, conn->addr, sizeof fresh->addr);
    fresh->head = conn->head;
    fresh->head_len = conn->head_len;
    fresh->head_only = conn->head_only;
    conn->head = NULL;
    conn->call = NULL;
    conn_close(conn);
    fresh->call = call;
    call->plain = fresh;
    http_parser_init(&fresh->parser, HTTP_RESPONSE);
    fresh->parser.data = fresh;
    call->htext_len = call->nheaders = 0;
    call->resp_len = 0;
    conn_connect(fresh); /* arms the deadline */
    return 1;
}

static void conn_send(struct plain_conn *conn) {
    struct chorus_http_call *call = conn->call;
    size_t total = conn->head_len + call->body_len;
    while (conn->sent < total) {
        struct iovec iov[2];
        int n = 0;
        if (conn->sent < conn->head_len)
            iov[n++] = (struct iovec){conn->head + conn->sent, conn->head_len - conn->sent};
        size_t body_off = conn->sent > conn->head_len ? conn->sent - conn->head_len : 0;
        if (call->body_len > body_off)
            iov[n++] = (struct iovec){call->body + body_off, call->body_len - body_off};
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(conn->fd, &msg, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn->state = C_SENDING;
            watch(conn, EPOLLIN | EPOLLOUT); /* an early answer is read meanwhile */
            return;
        }
        if (w < 0) {
            int e = errno;
            if (retry_fresh(conn))
                return;
            conn_fail(conn, CURLE_SEND_ERROR, "Send failure: %s", strerror(e));
            return;
        }
        conn->sent += (size_t)w;
    }
    conn->state = C_RECEIVING;
    watch(conn, EPOLLIN);
}

/* Room the call may fill before the Lua thread charges more (GRANT_SLACK):
 * 0 means a grant request went out and reading waits for it. */
static size_t read_room(struct plain_conn *conn) {
    struct chorus_http_call *call = conn->call;
    if (!call->metered)
        return READ_CHUNK;
    size_t limit = call->granted + GRANT_SLACK;
    if (call->resp_len < limit)
        return limit - call->resp_len < READ_CHUNK ? limit - call->resp_len : READ_CHUNK;
    /* ask for the next slack's worth (or what the Content-Length says is left) */
    size_t want = GRANT_SLACK;
    const http_parser *p = &conn->parser;
    if (!(p->flags & F_CHUNKED) && p->content_length > 0 && p->content_length < want)
        want = (size_t)p->content_length;
    call->want = call->resp_len + want - call->granted;
    call->paused = 1;
    watch(conn, 0);
    chorus_http_mq_push(call, M_GRANT);
    return 0;
}

/* Feeds n bytes (n == 0: the end of the stream) to the parser; ends the
 * call when the response is complete or broken. Returns 1 if it ended. */
static int conn_parse(struct plain_conn *conn, const char *buf, size_t n) {
    struct chorus_http_call *call = conn->call;
    size_t used = http_parser_execute(&conn->parser, &settings, buf, n);
    enum http_errno err = HTTP_PARSER_ERRNO(&conn->parser);
    if (call->fail != CHORUS_HTTP_OK) {
        conn_stopped(conn);
        return 1;
    }
    if (call->code == CURLE_FILESIZE_EXCEEDED) {
        conn_end(conn, CURLE_FILESIZE_EXCEEDED);
        return 1;
    }
    if (conn->complete) {
        if (used < n) /* bytes after the answer: the connection is out of step */
            conn->keep_alive = 0;
        conn_end(conn, CURLE_OK);
        return 1;
    }
    if (err != HPE_OK) {
        conn_fail(conn, CURLE_WEIRD_SERVER_REPLY, "malformed HTTP response: %s",
                  http_errno_description(err));
        return 1;
    }
    return 0;
}

static void conn_read(struct plain_conn *conn) {
    static _Thread_local char buf[READ_CHUNK];
    for (int round = 0; round < 4 && conn->call; round++) {
        size_t room = read_room(conn);
        if (!room)
            return;
        ssize_t r = recv(conn->fd, buf, room, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            if (retry_fresh(conn))
                return;
            if (!conn->got) {
                if (e)
                    conn_fail(conn, CURLE_RECV_ERROR, "Recv failure: %s", strerror(e));
                else
                    conn_fail(conn, CURLE_GOT_NOTHING, "Empty reply from server");
                return;
            }
            if (!e) { /* a body that ends with the stream ends here */
                http_parser_execute(&conn->parser, &settings, NULL, 0);
                if (conn->call->fail != CHORUS_HTTP_OK) {
                    conn_stopped(conn);
                    return;
                }
                if (conn->complete) {
                    conn->keep_alive = 0;
                    conn_end(conn, CURLE_OK);
                    return;
                }
            }
            if (e)
                conn_fail(conn, CURLE_RECV_ERROR, "Recv failure: %s", strerror(e));
            else
                conn_fail(conn, CURLE_PARTIAL_FILE,
                          "transfer closed with outstanding read data remaining");
            return;
        }
        conn->got += (size_t)r;
        if (conn_parse(conn, buf, (size_t)r) || (size_t)r < room)
            return;
    }
}

/* ---- connecting -------------------------------------------------------- */

/* The deadline of the call's current phase: connect (curl's 300 s unless
 * set) or total. */
static void arm_deadline(struct plain_conn *conn) {
    struct chorus_http_call *call = conn->call;
    long spent = elapsed_ms(call);
    long limit = -1;
    if (conn->state == C_RESOLVING || conn->state == C_CONNECTING)
        limit = call->connect_timeout_ms > 0 ? call->connect_timeout_ms : CONNECT_DEFAULT_MS;
    if (call->timeout_ms > 0 && (limit < 0 || call->timeout_ms < limit))
        limit = call->timeout_ms;
    if (limit < 0) {
        uv_timer_stop(&conn->timer);
        return;
    }
    uv_timer_start(&conn->timer, on_deadline, (uint64_t)(limit > spent ? limit - spent : 0), 0);
}

static void on_deadline(uv_timer_t *timer) {
    struct plain_conn *conn = timer->data;
    if (!conn->call)
        return;
    long spent = elapsed_ms(conn->call);
    if (conn->state == C_RESOLVING || conn->state == C_CONNECTING)
        conn_fail(conn, CURLE_OPERATION_TIMEDOUT, "Connection timed out after %ld milliseconds",
                  spent);
    else
        conn_fail(conn, CURLE_OPERATION_TIMEDOUT,
                  "Operation timed out after %ld milliseconds with %zu bytes received", spent,
                  conn->call->resp_len);
}

static void connected(struct plain_conn *conn) {
    arm_deadline(conn); /* the total deadline from here on */
    conn->state = C_SENDING;
    conn_send(conn);
}

/* Refuses the address for a restricted call; 1 when it did (and ended it). */
static int egress_refused(struct plain_conn *conn, int family, const unsigned char *a, int port,
                          CURLcode code) {
    struct chorus_http_call *call = conn->call;
    if (!call->restricted)
        return 0;
    const char *why = chorus_http_denied_addr(call->client, family, a, port);
    if (!why)
        return 0;
    char ip[INET6_ADDRSTRLEN] = "?", target[INET6_ADDRSTRLEN + 16];
    inet_ntop(family, a, ip, sizeof ip);
    snprintf(target, sizeof target, "%s port %d", ip, port);
    chorus_http_deny(call, target, why);
    conn_end(conn, code);
    return 1;
}

/* Opens a socket to the next resolved address (or the numeric one). */
static void conn_connect(struct plain_conn *conn) {
    struct sockaddr_storage ss;
    socklen_t len;
    if (conn->ai_next) {
        struct addrinfo *ai = conn->ai_next;
        conn->ai_next = ai->ai_next;
        conn->family = ai->ai_family;
        if (ai->ai_family == AF_INET)
            memcpy(conn->addr, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, 4);
        else
            memcpy(conn->addr, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, 16);
    }
    if (egress_refused(conn, conn->family, conn->addr, conn->port, CURLE_COULDNT_CONNECT))
        return;
    memset(&ss, 0, sizeof ss);
    if (conn->family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)conn->port);
        memcpy(&in->sin_addr, conn->addr, 4);
        len = sizeof *in;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)conn->port);
        memcpy(&in6->sin6_addr, conn->addr, 16);
        len = sizeof *in6;
    }
    conn->state = C_CONNECTING;
    arm_deadline(conn);
    if (conn->fd >= 0) { /* a failed address before this one */
        close(conn->fd);
        conn->polling = 0;
    }
    conn->fd = socket(conn->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (conn->fd < 0) {
        conn_fail(conn, CURLE_COULDNT_CONNECT, "socket: %s", strerror(errno));
        return;
    }
    chorus_http_sock_forget(conn->t, conn->fd);
    int one = 1;
    setsockopt(conn->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(conn->fd, (struct sockaddr *)&ss, len) == 0) {
        connected(conn);
    } else if (errno == EINPROGRESS) {
        watch(conn, EPOLLOUT);
    } else {
        int e = errno;
        if (conn->ai_next) {
            conn_connect(conn);
            return;
        }
        char ip[INET6_ADDRSTRLEN] = "?";
        inet_ntop(conn->family, conn->addr, ip, sizeof ip);
        conn_fail(conn, CURLE_COULDNT_CONNECT, "Failed to connect to %s port %d after %ld ms: %s",
                  ip, conn->port, elapsed_ms(conn->call), strerror(e));
    }
}

static void connect_done(struct plain_conn *conn) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(conn->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (!err) {
        connected(conn);
        return;
    }
    if (conn->ai_next) {
        conn_connect(conn);
        return;
    }
    char ip[INET6_ADDRSTRLEN] = "?";
    inet_ntop(conn->family, conn->addr, ip, sizeof ip);
    conn_fail(conn, CURLE_COULDNT_CONNECT, "Failed to connect to %s port %d after %ld ms: %s", ip,
              conn->port, elapsed_ms(conn->call), strerror(err));
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
    struct plain_conn *conn = req->data;
    conn->resolving = 0;
    if (conn->closed) { /* cancelled, timed out or shut down meanwhile */
        if (res)
            uv_freeaddrinfo(res);
        uv_close((uv_handle_t *)&conn->timer, free_conn);
        return;
    }
    conn->ai = res;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
        if (ai->ai_family == AF_INET || ai->ai_family == AF_INET6) {
            conn->ai_next = ai;
            break;
        }
    if (status != 0 || !conn->ai_next) {
        conn_fail(conn, CURLE_COULDNT_RESOLVE_HOST, "Could not resolve host: %s", conn->host);
        return;
    }
    conn_connect(conn);
}

/* ---- starting a call --------------------------------------------------- */

/* A URL this engine sends as curl would: printable ASCII, no dot segments. */
static int plain_url(const char *url, size_t len) {
    if (len < 8 || strncasecmp(url, "http://", 7) != 0)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] >= 0x7f)
            return 0;
    return 1;
}

static int has_dot_segment(const char *path, size_t n) {
    for (size_t i = 0; i + 1 < n; i++)
        if (path[i] == '/' && path[i + 1] == '.' &&
            (i + 2 == n || path[i + 2] == '/' || path[i + 2] == '?' ||
             (path[i + 2] == '.' && (i + 3 == n || path[i + 3] == '/' || path[i + 3] == '?'))))
            return 1;
    return 0;
}

/* The header line's name is name (case-insensitive)? */
static int header_is(const char *line, const char *name) {
    size_t n = strlen(name);
    return strncasecmp(line, name, n) == 0 && line[n] == ':';
}

/* A header line with nothing after its colon: curl's way to remove a header
 * of its own; not sent. */
static int header_empty(const char *line) {
    const char *colon = strchr(line, ':');
    if (!colon)
        return 1;
    for (const char *p = colon + 1; *p; p++)
        if (*p != ' ' && *p != '\t')
            return 0;
    return 1;
}

static int given(const struct curl_slist *h, const char *name) {
    for (; h; h = h->next)
        if (header_is(h->data, name))
            return 1;
    return 0;
}

/* The request line and headers, as curl 7.88 would write them. */
static char *build_head(const struct chorus_http_call *call, const char *target, size_t target_len,
                        const char *authority, size_t *out_len) {
    const struct curl_slist *h = call->headers;
    int body = call->body != NULL;
    char clen[48] = "";
    if (body && !given(h, "Content-Length"))
        snprintf(clen, sizeof clen, "Content-Length: %zu\r\n", call->body_len);
    const char *ctype = body && !given(h, "Content-Type")
                            ? "Content-Type: application/x-www-form-urlencoded\r\n"
                            : "";
    int host = !given(h, "Host"), accept = !given(h, "Accept");
    size_t n = strlen(call->method) + 1 + target_len + 11;
    if (host)
        n += 8 + strlen(authority);
    if (accept)
        n += 13;
    for (const struct curl_slist *l = h; l; l = l->next)
        if (!header_empty(l->data))
            n += strlen(l->data) + 2;
    n += strlen(clen) + strlen(ctype) + 2;
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    char *p = out;
#define PUT(s, len) (memcpy(p, (s), (len)), p += (len))
#define PUTS(s) PUT((s), strlen(s))
    PUTS(call->method);
    PUT(" ", 1);
    PUT(target, target_len);
    PUT(" HTTP/1.1\r\n", 11);
    if (host) {
        PUT("Host: ", 6);
        PUTS(authority);
        PUT("\r\n", 2);
    }
    if (accept)
        PUT("Accept: */*\r\n", 13);
    for (const struct curl_slist *l = h; l; l = l->next)
        if (!header_empty(l->data)) {
            PUTS(l->data);
            PUT("\r\n", 2);
        }
    PUTS(clen);
    PUTS(ctype);
    PUT("\r\n", 2);
#undef PUT
#undef PUTS
    *out_len = (size_t)(p - out);
    return out;
}

static struct plain_conn *idle_take(struct transport *t, const char *key) {
    for (struct plain_conn *c = t->plain_idle; c; c = c->inext)
        if (strcmp(c->key, key) == 0) {
            idle_unlink(c);
            uv_timer_stop(&c->timer);
            c->state = C_SENDING;
            return c;
        }
    return NULL;
}

static int host_allowed(const struct chorus_http_call *call, const char *host) {
    for (char **h = call->allow_hosts; *h; h++)
        if (strcasecmp(*h, host) == 0)
            return 1;
    return 0;
}

int chorus_plain_likely(const struct chorus_http_call *call) {
    if (call->follow_redirects || call->client->proxied || !plain_url(call->url, strlen(call->url)))
        return 0;
    return !(call->body && (strcmp(call->method, "GET") == 0 || strcmp(call->method, "HEAD") == 0));
}

int chorus_plain_start(struct chorus_http_call *call) {
    if (!chorus_plain_likely(call))
        return -1;
    struct transport *t = call->t;
    size_t len = strlen(call->url);
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(call->url, len, 0, &u) != 0 || !(u.field_set & (1 << UF_HOST)) ||
        (u.field_set & (1 << UF_USERINFO)))
        return -1;
    const char *hp = call->url + u.field_data[UF_HOST].off;
    size_t hl = u.field_data[UF_HOST].len;
    const char *path = (u.field_set & (1 << UF_PATH)) ? call->url + u.field_data[UF_PATH].off : "/";
    size_t pl = (u.field_set & (1 << UF_PATH)) ? u.field_data[UF_PATH].len : 1;
    if (!hl || hl >= 256 || memchr(hp, '%', hl) || has_dot_segment(path, pl))
        return -1;
    int port = (u.field_set & (1 << UF_PORT)) ? u.port : 80;
    char host[256], key[300], authority[300];
    memcpy(host, hp, hl);
    host[hl] = '\0';
    int v6 = memchr(host, ':', hl) != NULL;
    snprintf(key, sizeof key, "%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", port);
    if (port == 80)
        snprintf(authority, sizeof authority, "%s%s%s", v6 ? "[" : "", host, v6 ? "]" : "");
    else
        snprintf(authority, sizeof authority, "%s", key);
    /* the target: the path and the query, the fragment dropped */
    size_t tl;
    const char *target;
    char *joined = NULL;
    if (u.field_set & (1 << UF_QUERY)) {
        size_t ql = u.field_data[UF_QUERY].len;
        tl = pl + 1 + ql;
        if (!(joined = malloc(tl + 1)))
            return -1;
        memcpy(joined, path, pl);
        joined[pl] = '?';
        memcpy(joined + pl + 1, call->url + u.field_data[UF_QUERY].off, ql);
        target = joined;
    } else {
        target = path;
        tl = pl;
    }
    size_t head_len;
    char *head = build_head(call, target, tl, authority, &head_len);
    free(joined);
    if (!head)
        return -1;
    struct plain_conn *conn = idle_take(t, key);
    int fresh = conn == NULL;
    if (fresh && !(conn = conn_new(t, key, host, port))) {
        free(head);
        return -1;
    }
    atomic_fetch_add_explicit(&call->refs, 1, memory_order_relaxed); /* the transfer's */
    atomic_fetch_add_explicit(&call->client->plain_calls, 1, memory_order_relaxed);
    conn->call = call;
    call->plain = conn;
    conn->head = head;
    conn->head_len = head_len;
    conn->sent = conn->got = 0;
    conn->complete = conn->keep_alive = 0;
    conn->hstate = 0;
    conn->head_only = strcmp(call->method, "HEAD") == 0;
    http_parser_init(&conn->parser, HTTP_RESPONSE);
    conn->parser.data = conn;
    /* the checks curl's prerequest callback makes on a restricted call */
    if (call->restricted && call->allow_hosts && !host_allowed(call, host)) {
        chorus_http_deny(call, host, "a redirect to a host not in the workflow's allow_hosts");
        call->denied_as = CHORUS_HTTP_FORBIDDEN_HOST;
        conn_end(conn, CURLE_ABORTED_BY_CALLBACK);
        return 0;
    }
    if (!fresh) {
        if (egress_refused(conn, conn->family, conn->addr, conn->port, CURLE_ABORTED_BY_CALLBACK))
            return 0;
        conn->state = C_SENDING;
        arm_deadline(conn);
        conn_send(conn);
        return 0;
    }
    if (inet_pton(AF_INET, host, conn->addr) == 1) {
        conn->family = AF_INET;
    } else if (inet_pton(AF_INET6, host, conn->addr) == 1) {
        conn->family = AF_INET6;
    } else {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        char service[8];
        snprintf(service, sizeof service, "%d", port);
        conn->state = C_RESOLVING;
        conn->gai.data = conn;
        arm_deadline(conn);
        if (uv_getaddrinfo(t->uv, &conn->gai, on_resolved, host, service, &hints) != 0) {
            conn_fail(conn, CURLE_COULDNT_RESOLVE_HOST, "Could not resolve host: %s", host);
            return 0;
        }
        conn->resolving = 1;
        return 0;
    }
    conn_connect(conn);
    return 0;
}

/* ---- the transport's messages and events ------------------------------- */

void chorus_plain_cancel(struct chorus_http_call *call) {
    struct plain_conn *conn = call->plain;
    if (!conn)
        return;
    conn->call = NULL;
    call->plain = NULL;
    conn_close(conn);             /* the upstream sees the client leave */
    chorus_http_call_unref(call); /* the transfer's */
}

void chorus_plain_grant(struct chorus_http_call *call) {
    struct plain_conn *conn = call->plain;
    if (!conn || !call->paused)
        return;
    call->paused = 0;
    if (call->denied_mem) {
        stop_call(call, CHORUS_HTTP_MEMORY, "response body exceeds the run's memory cap");
        conn_stopped(conn);
        return;
    }
    watch(conn, EPOLLIN);
    conn_read(conn);
}

void chorus_plain_event(uint64_t data, uint32_t events) {
    struct plain_conn *conn = (struct plain_conn *)(uintptr_t)(data & ~PLAIN_EPOLL_TAG);
    if (conn->closed)
        return;
    switch (conn->state) {
    case C_IDLE: /* the server closed it, or sent what nobody asked for */
        conn_close(conn);
        return;
    case C_RESOLVING:
        return;
    case C_CONNECTING:
        connect_done(conn);
        return;
    case C_SENDING:
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
            conn_read(conn);
            if (conn->closed || !conn->call || conn->state != C_SENDING)
                return;
        }
        if (events & EPOLLOUT)
            conn_send(conn);
        return;
    case C_RECEIVING:
        conn_read(conn);
        return;
    }
}

void chorus_plain_shutdown(struct transport *t) {
    while (t->plain_all) {
        struct plain_conn *conn = t->plain_all;
        if (conn->call) {
            struct chorus_http_call *call = conn->call;
            conn->call = NULL;
            call->plain = NULL;
            chorus_http_call_unref(call); /* the transfer's; no DONE */
        }
        conn_close(conn);
    }
}

/* http_parser's callbacks are the same for every connection. */
__attribute__((constructor)) static void plain_init(void) {
    settings.on_message_begin = on_message_begin;
    settings.on_status = on_status;
    settings.on_header_field = on_header_field;
    settings.on_header_value = on_header_value;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
    /* our own limit (max_header_bytes) applies, not the parser's 80 KiB */
    http_parser_set_max_header_size(0x7fffffff);
}
