/* test_http_server.c — runtime/http_server.c without Lua: a server on
 * 127.0.0.1 with a C handler, driven by its own libuv loop, and clients on
 * plain sockets writing raw requests. Every wait is bounded (WAIT_MS) so a
 * broken server fails a check instead of hanging the test; no assertion is
 * about how long anything took.
 */
#include "http_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "unit.h"

#define WAIT_MS 10000

static uv_loop_t loop;
static uv_timer_t ticker; /* keeps the loop turning while a client waits */

/* What the handler saw, and the exchanges it left unanswered. */
struct handled {
    int calls;
    int defer; /* 1: keep the exchange instead of answering */
    struct chorus_exchange *kept[8];
    int nkept;
    char method[16], path[64], body[256];
    char header[64]; /* X-Test's value */
    int nargs;       /* query arguments */
};

static void find_header(void *cls, const char *key, const char *value) {
    struct handled *h = cls;
    if (strcasecmp(key, "X-Test") == 0)
        snprintf(h->header, sizeof h->header, "%s", value);
}

static void handler(struct chorus_exchange *ex, const struct chorus_request *req, void *data) {
    struct handled *h = data;
    h->calls++;
    snprintf(h->method, sizeof h->method, "%s", req->method);
    snprintf(h->path, sizeof h->path, "%s", req->path);
    snprintf(h->body, sizeof h->body, "%s", req->body);
    chorus_server_each(ex, 0, find_header, h);
    h->nargs = chorus_server_count(ex, 1);
    if (h->defer) {
        h->kept[h->nkept++] = ex;
        return;
    }
    char body[512];
    int n = snprintf(body, sizeof body, "%s %s [%s]", req->method, req->path, req->body);
    static const char *const headers[] = {"Content-Type", "text/plain", "X-Answer", "42"};
    chorus_server_respond(ex, 200, headers, 2, body, (size_t)n);
}

static void on_tick(uv_timer_t *t) { (void)t; }

static struct chorus_server *start(struct chorus_server_config *cfg, struct handled *h) {
    char err[256] = "";
    struct chorus_server *s = chorus_server_start(&loop, cfg, handler, h, err, sizeof err);
    if (!s)
        fprintf(stderr, "server did not start: %s\n", err);
    return s;
}

static struct chorus_server_config config(void) {
    struct chorus_server_config cfg = {
        .host = "127.0.0.1",
        .port = 0,
        .max_body = 64,
        .max_header = 16384,
        .max_connections = 16,
        .idle_timeout = 60,
        .client_timeout = 0,
    };
    return cfg;
}

static void stop(struct chorus_server *s) {
    chorus_server_close(s);
    uv_run(&loop, UV_RUN_NOWAIT); /* the handles' close callbacks free it */
}

/* A connected, non-blocking client socket, or -1. */
static int dial(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void say(int fd, const char *text) {
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t n = send(fd, text + off, len - off, MSG_NOSIGNAL);
        if (n <= 0) {
            if (n < 0 && errno == EAGAIN) {
                uv_run(&loop, UV_RUN_ONCE);
                continue;
            }
            return;
        }
        off += (size_t)n;
    }
}

/* A client's view of its connection so far. */
struct reply {
    char text[4096];
    size_t len;
    int closed; /* the server closed or reset the connection */
};

/* Reads what is there without waiting. */
static void take(int fd, struct reply *r) {
    for (;;) {
        ssize_t n = recv(fd, r->text + r->len, sizeof r->text - 1 - r->len, 0);
        if (n > 0) {
            r->len += (size_t)n;
            r->text[r->len] = '\0';
            if (r->len == sizeof r->text - 1)
                return;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            r->closed = 1;
        return;
    }
}

/* Runs the loop for up to ms, until the server closes the connection or,
 * with want_answer, a whole response (headers and the Content-Length's
 * body) has arrived. */
static void pump(int fd, struct reply *r, int want_answer, uint64_t ms) {
    uv_update_time(&loop);
    uint64_t until = uv_now(&loop) + ms;
    while (!r->closed && uv_now(&loop) < until) {
        uv_run(&loop, UV_RUN_ONCE);
        take(fd, r);
        const char *end = strstr(r->text, "\r\n\r\n");
        const char *cl = strcasestr(r->text, "Content-Length:");
        if (want_answer && end && cl &&
            r->len >= (size_t)(end + 4 - r->text) + strtoul(cl + 15, NULL, 10))
            return;
    }
}

/* Sends a whole request on a new connection and waits for the answer. */
static void ask(int port, const char *request, struct reply *r) {
    memset(r, 0, sizeof *r);
    int fd = dial(port);
    if (fd < 0) {
        r->closed = 1;
        return;
    }
    say(fd, request);
    pump(fd, r, 1, WAIT_MS);
    close(fd);
}

static int status_of(const struct reply *r) {
    int status = 0;
    return sscanf(r->text, "HTTP/1.1 %d", &status) == 1 ? status : 0;
}

static const char *body_of(const struct reply *r) {
    const char *end = strstr(r->text, "\r\n\r\n");
    return end ? end + 4 : "";
}

/* ---- requests ------------------------------------------------------------- */

static void test_request_reaches_handler(void) {
    struct handled h = {0};
    struct chorus_server_config cfg = config();
    struct chorus_server *s = start(&cfg, &h);
    CHECK(s != NULL);
    if (!s)
        return;
    CHECK(chorus_server_port(s) > 0);
    struct reply r;
    ask(chorus_server_port(s),
        "POST /echo?x=1&y=2 HTTP/1.1\r\nHost: t\r\nX-Test: yes\r\n"
        "Content-Length: 5\r\n\r\nabcde",
        &r);
    CHECK_INT_EQ(status_of(&r), 200);
    CHECK_STR_EQ(body_of(&r), "POST /echo [abcde]");
    CHECK(strcasestr(r.text, "\r\nX-Answer: 42\r\n") != NULL);
    CHECK(strcasestr(r.text, "\r\nContent-Type: text/plain\r\n") != NULL);
    CHECK_INT_EQ(h.calls, 1);
    CHECK_STR_EQ(h.path, "/echo");
    CHECK_STR_EQ(h.header, "yes");
    CHECK_INT_EQ(h.nargs, 2);

    /* a chunked body arrives whole, decoded */
    ask(chorus_server_port(s),
        "POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        &r);
    CHECK_INT_EQ(status_of(&r), 200);
    CHECK_STR_EQ(body_of(&r), "POST /c [abcde]");
    CHECK_INT_EQ(chorus_server_pending(s), 0);

    /* a kept-alive connection serves its requests one after the other */
    int fd = dial(chorus_server_port(s));
    say(fd, "GET /one HTTP/1.1\r\nHost: t\r\n\r\n");
    memset(&r, 0, sizeof r);
    pump(fd, &r, 1, WAIT_MS);
    CHECK_STR_EQ(body_of(&r), "GET /one []");
    say(fd, "GET /two HTTP/1.1\r\nHost: t\r\n\r\n");
    memset(&r, 0, sizeof r);
    pump(fd, &r, 1, WAIT_MS);
    CHECK_STR_EQ(body_of(&r), "GET /two []");
    CHECK(!r.closed);
    CHECK_INT_EQ(h.calls, 4);
    close(fd);
    stop(s);
}

/* Framing two readers could disagree on is refused before the handler
 * sees the request (request smuggling, RFC 9112 6.3). */
static void test_ambiguous_framing_is_refused(void) {
    struct handled h = {0};
    struct chorus_server_config cfg = config();
    struct chorus_server *s = start(&cfg, &h);
    if (!s)
        return;
    int port = chorus_server_port(s);
    struct reply r;
    ask(port, "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        &r);
    CHECK_INT_EQ(status_of(&r), 400);
    CHECK(strstr(body_of(&r), "different values") != NULL);
    CHECK(strcasestr(r.text, "\r\nConnection: close\r\n") != NULL);

    ask(port,
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nabcde\r\n0\r\n\r\n",
        &r);
    CHECK_INT_EQ(status_of(&r), 400);
    CHECK(strstr(body_of(&r), "both Transfer-Encoding and Content-Length") != NULL);

    ask(port, "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabcde", &r);
    CHECK_INT_EQ(status_of(&r), 400);
    CHECK(strstr(body_of(&r), "only Transfer-Encoding accepted is chunked") != NULL);
    CHECK_INT_EQ(h.calls, 0);

    /* the same length twice is not ambiguous */
    ask(port, "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nabcde",
        &r);
    CHECK_INT_EQ(status_of(&r), 200);
    CHECK_STR_EQ(body_of(&r), "POST / [abcde]");
    CHECK_INT_EQ(h.calls, 1);
    stop(s);
}

/* A body over max_body gets 413 and never reaches the handler; one of
 * exactly max_body does. */
static void test_body_limit(void) {
    struct handled h = {0};
    struct chorus_server_config cfg = config();
    cfg.max_body = 16;
    struct chorus_server *s = start(&cfg, &h);
    if (!s)
        return;
    int port = chorus_server_port(s);
    struct reply r;
    ask(port, "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 17\r\n\r\n0123456789abcdefg", &r);
    CHECK_INT_EQ(status_of(&r), 413);
    CHECK(strstr(body_of(&r), "\"status\":413") != NULL);
    ask(port,
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        "10\r\n0123456789abcdef\r\n1\r\ng\r\n0\r\n\r\n",
        &r);
    CHECK_INT_EQ(status_of(&r), 413);
    CHECK_INT_EQ(h.calls, 0);
    ask(port, "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 16\r\n\r\n0123456789abcdef", &r);
    CHECK_INT_EQ(status_of(&r), 200);
    CHECK_STR_EQ(body_of(&r), "POST / [0123456789abcdef]");
    CHECK_INT_EQ(h.calls, 1);
    stop(s);
}

/* ---- slow clients and the connection limit -------------------------------- */

/* A client that sends its headers a line at a time, never idle long enough
 * for the inactivity timeout, is cut once client_timeout passed since its
 * request began; a prompt client on the same server is served. */
static void test_slow_client_is_cut(void) {
    struct handled h = {0};
    struct chorus_server_config cfg = config();
    cfg.client_timeout = 1;
    struct chorus_server *s = start(&cfg, &h);
    if (!s)
        return;
    int fd = dial(chorus_server_port(s));
    CHECK(fd >= 0);
    struct reply slow = {0};
    say(fd, "GET / HTTP/1.1\r\nHost: t\r\n");
    uv_update_time(&loop);
    uint64_t until = uv_now(&loop) + WAIT_MS;
    while (!slow.closed && uv_now(&loop) < until) {
        pump(fd, &slow, 0, 200);
        if (send(fd, "X-Slow: 1\r\n", 11, MSG_NOSIGNAL) < 0)
            slow.closed = 1;
    }
    CHECK(slow.closed);
    CHECK_INT_EQ(slow.len, 0); /* cut, not answered */
    CHECK_INT_EQ(h.calls, 0);
    close(fd);
    struct reply r;
    ask(chorus_server_port(s), "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    CHECK_INT_EQ(status_of(&r), 200);
    stop(s);
}

/* With max_connections open, the next client waits unserved; when one
 * closes, it is served. */
static void test_max_connections(void) {
    struct handled h = {0};
    struct chorus_server_config cfg = config();
    cfg.max_connections = 2;
    struct chorus_server *s = start(&cfg, &h);
    if (!s)
        return;
    int port = chorus_server_port(s);
    int held[2];
    struct reply r = {0};
    for (int i = 0; i < 2; i++) {
        held[i] = dial(port);
        say(held[i], "GET /held HTTP/1.1\r\nHost: t\r\n"); /* headers not finished */
        pump(held[i], &r, 0, 100);
    }
    int third = dial(port);
    CHECK(third >= 0);
    say(third, "GET /third HTTP/1.1\r\nHost: t\r\n\r\n");
    struct reply waiting = {0};
    pump(third, &waiting, 1, 500);
    CHECK_INT_EQ(waiting.len, 0);
    CHECK_INT_EQ(h.calls, 0);
    close(held[0]);
    pump(third, &waiting, 1, WAIT_MS);
    CHECK_INT_EQ(status_of(&waiting), 200);
    CHECK_STR_EQ(body_of(&waiting), "GET /third []");
    close(third);
    close(held[1]);
    stop(s);
}

/* ---- pending answers, quiesce and close ----------------------------------- */

/* An answer given later (the connection suspended meanwhile) is sent;
 * after quiesce no new connection is accepted, but the pending exchange
 * still answers. */
static void test_quiesce_lets_pending_finish(void) {
    struct handled h = {.defer = 1};
    struct chorus_server_config cfg = config();
    struct chorus_server *s = start(&cfg, &h);
    if (!s)
        return;
    int port = chorus_server_port(s);
    int fd = dial(port);
    say(fd, "GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
    struct reply r = {0};
    uv_update_time(&loop);
    uint64_t until = uv_now(&loop) + WAIT_MS;
    while (h.calls == 0 && uv_now(&loop) < until)
        pump(fd, &r, 1, 50);
    CHECK_INT_EQ(h.calls, 1);
    CHECK_INT_EQ(chorus_server_pending(s), 1);
    CHECK_INT_EQ(r.len, 0);

    chorus_server_quiesce(s);
    int refused = dial(port);
    CHECK_INT_EQ(refused, -1);
    if (refused >= 0)
        close(refused);

    static const char *const headers[] = {"Content-Type", "text/plain"};
    CHECK_INT_EQ(chorus_server_respond(h.kept[0], 201, headers, 1, "done", 4), 0);
    CHECK_INT_EQ(chorus_server_pending(s), 0);
    pump(fd, &r, 1, WAIT_MS);
    CHECK_INT_EQ(status_of(&r), 201);
    CHECK_STR_EQ(body_of(&r), "done");
    close(fd);
    stop(s);
}

/* Closing the server answers what is still pending with 503. */
static void test_close_answers_pending(void) {
    struct handled h = {.defer = 1};
    struct chorus_server_config cfg = config();
    struct chorus_server *s = start(&cfg, &h);
    if (!s)
        return;
    int fd = dial(chorus_server_port(s));
    say(fd, "GET /never HTTP/1.1\r\nHost: t\r\n\r\n");
    struct reply r = {0};
    uv_update_time(&loop);
    uint64_t until = uv_now(&loop) + WAIT_MS;
    while (h.calls == 0 && uv_now(&loop) < until)
        pump(fd, &r, 1, 50);
    CHECK_INT_EQ(chorus_server_pending(s), 1);
    stop(s);
    /* the loop no longer serves it: read what close flushed */
    for (int i = 0; i < 100 && !r.closed; i++) {
        take(fd, &r);
        usleep(10000);
    }
    CHECK_INT_EQ(status_of(&r), 503);
    CHECK(strstr(body_of(&r), "shutting down") != NULL);
    close(fd);
}

/* A header value with CR/LF in it is dropped and reported, not sent. */
static void header_injection_handler(struct chorus_exchange *ex, const struct chorus_request *req,
                                     void *data) {
    (void)req;
    static const char *const headers[] = {"X-Bad", "a\r\nSet-Cookie: x=1", "X-Good", "1"};
    *(int *)data = chorus_server_respond(ex, 200, headers, 2, "ok", 2);
}

static void test_header_injection_dropped(void) {
    int rc = 1;
    struct chorus_server_config cfg = config();
    char err[256];
    struct chorus_server *s =
        chorus_server_start(&loop, &cfg, header_injection_handler, &rc, err, sizeof err);
    if (!s)
        return;
    struct reply r;
    ask(chorus_server_port(s), "GET / HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    CHECK_INT_EQ(rc, -1);
    CHECK_INT_EQ(status_of(&r), 200);
    CHECK(strcasestr(r.text, "Set-Cookie") == NULL);
    CHECK(strcasestr(r.text, "\r\nX-Good: 1\r\n") != NULL);
    stop(s);
}

/* ---- bad configuration ---------------------------------------------------- */

static void test_start_errors(void) {
    struct handled h = {0};
    char err[256] = "";
    struct chorus_server_config cfg = config();
    cfg.host = "localhost";
    CHECK(chorus_server_start(&loop, &cfg, handler, &h, err, sizeof err) == NULL);
    CHECK(strstr(err, "not a numeric IPv4 address") != NULL);

    cfg = config();
    struct chorus_server *s = start(&cfg, &h);
    if (!s)
        return;
    cfg.port = chorus_server_port(s);
    err[0] = '\0';
    CHECK(chorus_server_start(&loop, &cfg, handler, &h, err, sizeof err) == NULL);
    CHECK(strstr(err, "cannot listen on 127.0.0.1") != NULL);
    stop(s);
}

int main(void) {
    uv_loop_init(&loop);
    uv_timer_init(&loop, &ticker);
    uv_timer_start(&ticker, on_tick, 10, 10);
    test_request_reaches_handler();
    test_ambiguous_framing_is_refused();
    test_body_limit();
    test_slow_client_is_cut();
    test_max_connections();
    test_quiesce_lets_pending_finish();
    test_close_answers_pending();
    test_header_injection_dropped();
    test_start_errors();
    uv_close((uv_handle_t *)&ticker, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return unit_summary();
}
