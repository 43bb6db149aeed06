/* test_http_client.c — the HTTP engine (runtime/http_client.c) without Lua,
 * against the real mock upstream (build/mock-upstream) on loopback.
 */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "http_client.h"
#include "unit.h"

struct outcome {
    int done;
    enum chorus_http_error error;
    long status;
    char body[4096];
    char content_type[128];
    size_t nheaders, nmock; /* all, and the mock's X-Mock-N ones */
    char mock_150[128];     /* X-Mock-150's value */
    double duration;
    size_t body_len;
    char message[128];
    long long charged, allow; /* the charge callback's account and its cap */
    int refused;
};

static void on_done(const struct chorus_http_response *res, void *data) {
    struct outcome *o = data;
    o->done = 1;
    o->error = res->error;
    o->status = res->status;
    o->duration = res->duration;
    o->body_len = res->body_len;
    snprintf(o->message, sizeof o->message, "%s", res->message ? res->message : "");
    if (res->body)
        snprintf(o->body, sizeof o->body, "%s", res->body);
    for (size_t i = 0; i < res->nheaders; i++)
        if (strcasecmp(res->headers[i].name, "content-type") == 0)
            snprintf(o->content_type, sizeof o->content_type, "%s", res->headers[i].value);
    o->nheaders = res->nheaders;
    for (size_t i = 0; i < res->nheaders; i++) {
        o->nmock += strncasecmp(res->headers[i].name, "x-mock-", 7) == 0;
        if (strcasecmp(res->headers[i].name, "x-mock-150") == 0)
            snprintf(o->mock_150, sizeof o->mock_150, "%s", res->headers[i].value);
    }
}

static pid_t mock_pid;
static char mock_url[64];

/* Starts build/mock-upstream and reads its port from the first line. */
static int start_mock(void) {
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    mock_pid = fork();
    if (mock_pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        execl("build/mock-upstream", "mock-upstream", "--max-seconds", "60", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    char line[128] = {0};
    if (!f || !fgets(line, sizeof line, f))
        return -1;
    int port = 0;
    if (sscanf(line, "listening 127.0.0.1:%d", &port) != 1)
        return -1;
    snprintf(mock_url, sizeof mock_url, "http://127.0.0.1:%d", port);
    return 0;
}

static void stop_mock(void) {
    kill(mock_pid, SIGTERM);
    waitpid(mock_pid, NULL, 0);
}

static void run_until(uv_loop_t *loop, struct outcome *o, int n) {
    for (;;) {
        int all = 1;
        for (int i = 0; i < n; i++)
            all &= o[i].done;
        if (all || !uv_run(loop, UV_RUN_ONCE))
            return;
    }
}

/* One request; follow_redirects (via_curl) sends it through curl, which
 * follows them (the plain engine, runtime/http_plain.c, follows none). */
static struct chorus_http_call *start_via(struct chorus_http_client *c, const char *method,
                                          const char *url, const char *const *headers,
                                          const char *body, long timeout_ms, int via_curl,
                                          struct outcome *o) {
    char err[128];
    struct chorus_http_request req = {.method = method,
                                      .url = url,
                                      .headers = headers,
                                      .body = body,
                                      .body_len = body ? strlen(body) : 0,
                                      .connect_timeout_ms = 1000,
                                      .timeout_ms = timeout_ms,
                                      .follow_redirects = via_curl};
    return chorus_http_start(c, &req, on_done, o, err, sizeof err);
}

static struct chorus_http_call *start(struct chorus_http_client *c, const char *method,
                                      const char *path, const char *body, long timeout_ms,
                                      struct outcome *o) {
    char url[256];
    snprintf(url, sizeof url, "%s%s", mock_url, path);
    const char *headers[] = {"X-Test: yes", "Content-Type: application/json", NULL};
    return start_via(c, method, url, headers, body, timeout_ms, 0, o);
}

static void test_get_and_post(struct chorus_http_client *c, uv_loop_t *loop) {
    struct outcome o[2] = {0};
    CHECK(start(c, "GET", "/hello?status=201", NULL, 5000, &o[0]) != NULL);
    CHECK(start(c, "POST", "/echo", "{\"a\":1}", 5000, &o[1]) != NULL);
    run_until(loop, o, 2);
    CHECK_INT_EQ(o[0].error, CHORUS_HTTP_OK);
    CHECK_INT_EQ(o[0].status, 201);
    CHECK(strstr(o[0].content_type, "application/json") != NULL);
    CHECK(strstr(o[0].body, "\"path\":\"/hello\"") != NULL);
    /* measured to the nanosecond, not with the loop's cached millisecond
     * clock (which made a call answered within the millisecond last 0 s):
     * whole milliseconds both times has a chance of one in a million */
    double ms0 = o[0].duration * 1000, ms1 = o[1].duration * 1000;
    CHECK(fabs(ms0 - round(ms0)) > 1e-6 || fabs(ms1 - round(ms1)) > 1e-6);
    CHECK_INT_EQ(o[1].status, 200);
    CHECK(strstr(o[1].body, "\"method\":\"POST\"") != NULL);
    CHECK(strstr(o[1].body, "\"x-test\":\"yes\"") != NULL);
    CHECK_INT_EQ(chorus_http_active(c), 0);
}

static void test_failures(struct chorus_http_client *c, uv_loop_t *loop) {
    struct outcome o[3] = {0};
    CHECK(start(c, "GET", "/hang?fault=hang", NULL, 200, &o[0]) != NULL);
    CHECK(start(c, "GET", "/reset?fault=reset", NULL, 5000, &o[1]) != NULL);
    char err[128];
    struct chorus_http_request refused = {.method = "GET",
                                          .url = "http://127.0.0.1:9/",
                                          .connect_timeout_ms = 1000,
                                          .timeout_ms = 1000};
    CHECK(chorus_http_start(c, &refused, on_done, &o[2], err, sizeof err) != NULL);
    run_until(loop, o, 3);
    CHECK_INT_EQ(o[0].error, CHORUS_HTTP_TIMEOUT);
    CHECK(o[0].duration >= 0.15 && o[0].duration < 1.0);
    CHECK_INT_EQ(o[1].error, CHORUS_HTTP_RESET);
    CHECK_INT_EQ(o[2].error, CHORUS_HTTP_CONNECT);
}

/* Every response header arrives, trimmed, however many (the engine keeps
 * them in one buffer that grows past its first 512 bytes). */
static void test_many_headers(struct chorus_http_client *c, uv_loop_t *loop) {
    struct outcome o[2] = {0};
    CHECK(start(c, "GET", "/h?headers=150", NULL, 5000, &o[0]) != NULL);
    CHECK(start(c, "GET", "/h", NULL, 5000, &o[1]) != NULL);
    run_until(loop, o, 2);
    CHECK_INT_EQ(o[0].status, 200);
    CHECK_INT_EQ(o[0].nmock, 150);
    CHECK(o[0].nheaders > 150); /* Content-Type, Content-Length, ... too */
    CHECK_STR_EQ(o[0].mock_150, "value 150 padding-padding-padding-paddin"); /* 150 % 60 */
    CHECK(strstr(o[0].content_type, "application/json") != NULL);
    CHECK_INT_EQ(o[1].status, 200);
    CHECK_INT_EQ(o[1].nmock, 0);
    CHECK(o[1].nheaders >= 2);
}

/* One call after another reuses the same pooled easy handle: each gets its
 * own method and body, nothing of the call before (a POST's body, a
 * custom method, HEAD's no-body) sticks. */
static void test_methods_in_turn(struct chorus_http_client *c, uv_loop_t *loop) {
    /* method, body sent, and what the mock's echo must then say (NULL: HEAD,
     * no body comes back) */
    static const struct {
        const char *method, *body, *method_echo, *body_echo;
    } calls[] = {
        {"POST", "{\"a\":1}", "\"method\":\"POST\"", "\"body\":\"{\\\"a\\\":1}\""},
        {"DELETE", NULL, "\"method\":\"DELETE\"", "\"body\":\"\""},
        {"PUT", "{\"b\":2}", "\"method\":\"PUT\"", "\"body\":\"{\\\"b\\\":2}\""},
        {"HEAD", NULL, NULL, NULL},
        {"GET", NULL, "\"method\":\"GET\"", "\"body\":\"\""},
        {"PATCH", NULL, "\"method\":\"PATCH\"", "\"body\":\"\""},
        {"GET", NULL, "\"method\":\"GET\"", "\"body\":\"\""},
    };
    for (size_t i = 0; i < sizeof calls / sizeof *calls; i++) {
        struct outcome o = {0};
        CHECK(start(c, calls[i].method, "/turn", calls[i].body, 5000, &o) != NULL);
        run_until(loop, &o, 1);
        CHECK_INT_EQ(o.status, 200);
        if (!calls[i].method_echo) {
            CHECK_STR_EQ(o.body, "");
            continue;
        }
        CHECK(strstr(o.body, calls[i].method_echo) != NULL);
        CHECK(strstr(o.body, calls[i].body_echo) != NULL);
    }
}

static struct chorus_http_call *start_limited(struct chorus_http_client *c, const char *path,
                                              size_t max_body, size_t max_header_bytes,
                                              struct outcome *o);

/* Calls one after another on the same kept handle, each with its own
 * timeout and response limit: a handle sets only the options that differ
 * from its last call's, and none of the last call's sticks. */
static void test_options_in_turn(struct chorus_http_client *c, uv_loop_t *loop) {
    struct outcome o = {0};
    /* a short timeout, then a longer one that a slower answer needs */
    CHECK(start(c, "GET", "/t?fault=hang", NULL, 200, &o) != NULL);
    run_until(loop, &o, 1);
    CHECK_INT_EQ(o.error, CHORUS_HTTP_TIMEOUT);
    memset(&o, 0, sizeof o);
    CHECK(start(c, "GET", "/t?delay=400", NULL, 5000, &o) != NULL);
    run_until(loop, &o, 1);
    CHECK_INT_EQ(o.error, CHORUS_HTTP_OK);
    /* and the short one again */
    memset(&o, 0, sizeof o);
    CHECK(start(c, "GET", "/t?fault=hang", NULL, 200, &o) != NULL);
    run_until(loop, &o, 1);
    CHECK_INT_EQ(o.error, CHORUS_HTTP_TIMEOUT);
    CHECK(o.duration < 1.0);
    /* a response limit, then the default, then the limit again */
    size_t limits[] = {1000, 0, 1000};
    for (int i = 0; i < 3; i++) {
        memset(&o, 0, sizeof o);
        CHECK(start_limited(c, "/l?stream_bytes=5000", limits[i], 0, &o) != NULL);
        run_until(loop, &o, 1);
        CHECK_INT_EQ(o.error, limits[i] ? CHORUS_HTTP_TOO_LARGE : CHORUS_HTTP_OK);
    }
}

static void test_bad_method(struct chorus_http_client *c) {
    struct outcome o = {0};
    char err[128] = {0};
    struct chorus_http_request req = {.method = "get me", .url = "http://127.0.0.1:9/"};
    CHECK(chorus_http_start(c, &req, on_done, &o, err, sizeof err) == NULL);
    CHECK(strstr(err, "invalid HTTP method") != NULL);
}

static void test_many_concurrent(struct chorus_http_client *c, uv_loop_t *loop) {
    enum { N = 200 };
    static struct outcome o[N];
    memset(o, 0, sizeof o);
    uint64_t t0 = uv_now(loop);
    for (int i = 0; i < N; i++)
        start(c, "GET", "/many?delay=100", NULL, 5000, &o[i]);
    run_until(loop, o, N);
    uv_update_time(loop);
    int ok = 0;
    for (int i = 0; i < N; i++)
        ok += o[i].status == 200;
    CHECK_INT_EQ(ok, N);
    /* concurrent, not one after another (which would take 20 s) */
    CHECK(uv_now(loop) - t0 < 5000);
}

static void test_cancel(struct chorus_http_client *c, uv_loop_t *loop) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "curl -s -X POST %s/__reset >/dev/null", mock_url);
    CHECK_INT_EQ(system(cmd), 0);
    struct outcome o = {0};
    struct chorus_http_call *call = start(c, "GET", "/cancel?delay=2000", NULL, 5000, &o);
    CHECK(call != NULL);
    /* let the request reach the mock, then abandon it */
    for (int i = 0; i < 5; i++)
        uv_run(loop, UV_RUN_NOWAIT);
    usleep(100 * 1000);
    uv_run(loop, UV_RUN_NOWAIT);
    chorus_http_cancel(call);
    CHECK_INT_EQ(chorus_http_active(c), 0);
    CHECK_INT_EQ(o.done, 0);
    usleep(200 * 1000);
    snprintf(cmd, sizeof cmd, "curl -s %s/__stats", mock_url);
    FILE *p = popen(cmd, "r");
    char stats[4096] = {0};
    if (p) {
        size_t n = fread(stats, 1, sizeof stats - 1, p);
        stats[n] = '\0';
        pclose(p);
    }
    CHECK(strstr(stats, "\"aborted\":1") != NULL);
}

/* GET /__stats's "connections": how many connections the mock accepted. */
static long mock_connections(void) {
    char cmd[256], stats[4096] = {0};
    snprintf(cmd, sizeof cmd, "curl -s %s/__stats", mock_url);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t n = fread(stats, 1, sizeof stats - 1, p);
    stats[n] = '\0';
    pclose(p);
    const char *at = strstr(stats, "\"connections\":");
    return at ? strtol(at + strlen("\"connections\":"), NULL, 10) : -1;
}

/* Calls one after another share one keep-alive connection, and an idle
 * client does not keep the loop alive (`chorus run` ends when its run does).
 * When the upstream goes away and comes back, the next call opens a new
 * connection. */
/* A charge callback that allows o->allow bytes in all. */
static int charge(void *data, long long delta) {
    struct outcome *o = data;
    if (delta > 0 && o->charged + delta > o->allow) {
        o->refused = 1;
        return -1;
    }
    o->charged += delta;
    return 0;
}

static struct chorus_http_call *start_limited(struct chorus_http_client *c, const char *path,
                                              size_t max_body, size_t max_header_bytes,
                                              struct outcome *o) {
    char url[256], err[128];
    snprintf(url, sizeof url, "%s%s", mock_url, path);
    struct chorus_http_request req = {.method = "GET",
                                      .url = url,
                                      .connect_timeout_ms = 1000,
                                      .timeout_ms = 20000,
                                      .max_body = max_body,
                                      .max_header_bytes = max_header_bytes,
                                      .charge = o->allow ? charge : NULL};
    return chorus_http_start(c, &req, on_done, o, err, sizeof err);
}

/* The copies of a request's URL count while its call is in flight (ours,
 * curl's and the request line: three times its length): a URL of megabytes
 * sent by many calls at once held hundreds of MB outside the run's cap. */
static void test_url_charged(struct chorus_http_client *c, uv_loop_t *loop) {
    static char path[100 * 1024];
    memcpy(path, "/ok?pad=", 8);
    memset(path + 8, 'a', sizeof path - 9);
    path[sizeof path - 1] = '\0';
    char *url = malloc(strlen(mock_url) + sizeof path);
    CHECK(url != NULL);
    sprintf(url, "%s%s", mock_url, path);
    struct outcome o[2] = {0};
    o[0].allow = 200 * 1024; /* under three copies */
    o[1].allow = 400 * 1024;
    char err[128];
    for (int i = 0; i < 2; i++) {
        struct chorus_http_request req = {.method = "GET",
                                          .url = url,
                                          .connect_timeout_ms = 1000,
                                          .timeout_ms = 20000,
                                          .charge = charge};
        struct chorus_http_call *call = chorus_http_start(c, &req, on_done, &o[i], err, sizeof err);
        if (i == 0) {
            CHECK(call == NULL);
            CHECK_STR_EQ(err, "the request's body, headers and URL pass the memory cap");
            CHECK_INT_EQ(o[0].charged, 0);
            o[0].done = 1;
        } else {
            CHECK(call != NULL);
            CHECK(o[1].charged >= 3 * (long long)strlen(url));
        }
    }
    run_until(loop, o, 2);
    CHECK_INT_EQ(o[1].charged, 0); /* given back when the call ended */
    free(url);
}

/* Response limits: a Content-Length past max_body is refused before the
 * body, a chunked or endless body is stopped once it passes it (the default
 * 16 MiB when the request sets none), headers past max_header_bytes end the
 * call, the charge callback can stop a body (and gets back all it was
 * told of), and a body within every limit arrives whole. */
static void test_response_limits(struct chorus_http_client *c, uv_loop_t *loop) {
    struct outcome o[9] = {0};
    o[4].allow = 200000;
    o[5].allow = 1 << 20;
    o[7].allow = 1 << 20;
    o[8].allow = 1000;
    CHECK(start_limited(c, "/big?stream_bytes=100000", 10000, 0, &o[0]) != NULL);
    CHECK(start_limited(c, "/big?stream_bytes=100000&chunked=1", 10000, 0, &o[1]) != NULL);
    CHECK(start_limited(c, "/endless?stream_bytes=endless", 0, 0, &o[2]) != NULL);
    CHECK(start_limited(c, "/h?headers=200", 0, 4096, &o[3]) != NULL);
    CHECK(start_limited(c, "/mem?stream_bytes=endless", SIZE_MAX, 0, &o[4]) != NULL);
    CHECK(start_limited(c, "/ok?stream_bytes=5000&chunked=1", 10000, 0, &o[5]) != NULL);
    CHECK(start_limited(c, "/ok?stream_bytes=10000", 10000, 0, &o[6]) != NULL);
    /* past the bytes the transport may hold uncharged (GRANT_SLACK): the
     * transfer waits for the charge callback's yes, chunk after chunk */
    CHECK(start_limited(c, "/grants?stream_bytes=300000", 0, 0, &o[7]) != NULL);
    /* within it: charged, and refused, when the call ends */
    CHECK(start_limited(c, "/late?stream_bytes=5000", 0, 0, &o[8]) != NULL);
    run_until(loop, o, 9);
    CHECK_INT_EQ(o[0].error, CHORUS_HTTP_TOO_LARGE);
    CHECK(strstr(o[0].message, "Content-Length exceeds max_response_bytes (10000 bytes)") != NULL);
    CHECK_INT_EQ(o[1].error, CHORUS_HTTP_TOO_LARGE);
    CHECK_STR_EQ(o[1].message, "response body exceeds max_response_bytes (10000 bytes)");
    CHECK_INT_EQ(o[2].error, CHORUS_HTTP_TOO_LARGE);
    CHECK_STR_EQ(o[2].message, "response body exceeds max_response_bytes (16777216 bytes)");
    CHECK_INT_EQ(o[3].error, CHORUS_HTTP_TOO_LARGE);
    CHECK_STR_EQ(o[3].message, "response headers exceed 4096 bytes");
    CHECK_INT_EQ(o[4].error, CHORUS_HTTP_MEMORY);
    CHECK_INT_EQ(o[4].refused, 1);
    CHECK_INT_EQ(o[4].charged, 0); /* all given back when the call ended */
    CHECK_INT_EQ(o[5].error, CHORUS_HTTP_OK);
    CHECK_INT_EQ(o[5].body_len, 5000);
    CHECK_INT_EQ(o[5].charged, 0);
    CHECK_INT_EQ(o[6].error, CHORUS_HTTP_OK);
    CHECK_INT_EQ(o[6].body_len, 10000);
    CHECK_INT_EQ(o[7].error, CHORUS_HTTP_OK);
    CHECK_INT_EQ(o[7].body_len, 300000);
    CHECK_INT_EQ(o[7].refused, 0);
    CHECK_INT_EQ(o[7].charged, 0);
    CHECK_INT_EQ(o[8].error, CHORUS_HTTP_MEMORY);
    CHECK_STR_EQ(o[8].message, "response body exceeds the run's memory cap");
    CHECK_INT_EQ(o[8].refused, 1);
    CHECK_INT_EQ(o[8].charged, 0);
    CHECK_INT_EQ(chorus_http_active(c), 0);
}

/* Closing the client with calls in flight: they end without a callback,
 * the transport thread stops, nothing leaks (ASan, TSan). */
static void test_close_in_flight(uv_loop_t *loop) {
    struct chorus_http_client *c = chorus_http_client_new(loop);
    CHECK(c != NULL);
    struct outcome o[3] = {0};
    o[2].allow = 1 << 20;
    CHECK(start(c, "GET", "/parked?delay=5000", NULL, 10000, &o[0]) != NULL);
    CHECK(start(c, "POST", "/parked?delay=5000", "{\"a\":1}", 10000, &o[1]) != NULL);
    CHECK(start_limited(c, "/endless?stream_bytes=endless", SIZE_MAX, 0, &o[2]) != NULL);
    for (int i = 0; i < 5; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        usleep(20 * 1000);
    }
    CHECK_INT_EQ(chorus_http_active(c), 3);
    chorus_http_client_close(c);
    uv_run(loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(o[0].done + o[1].done + o[2].done, 0);
}

static void test_keep_alive(struct chorus_http_client *c, uv_loop_t *loop) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "curl -s -X POST %s/__reset >/dev/null", mock_url);
    CHECK_INT_EQ(system(cmd), 0);
    int ok = 0;
    for (int i = 0; i < 10; i++) {
        struct outcome o = {0};
        start(c, "GET", "/again", NULL, 5000, &o);
        run_until(loop, &o, 1);
        ok += o.status == 200;
    }
    CHECK_INT_EQ(ok, 10);
    CHECK_INT_EQ(mock_connections(), 1);
    uv_run(loop, UV_RUN_NOWAIT);
    CHECK_INT_EQ(uv_loop_alive(loop), 0);

    stop_mock(); /* the idle connections' sockets read end-of-file */
    for (int i = 0; i < 5; i++)
        uv_run(loop, UV_RUN_NOWAIT);
    CHECK_INT_EQ(start_mock(), 0);
    struct outcome o = {0};
    start(c, "GET", "/after", NULL, 5000, &o);
    run_until(loop, &o, 1);
    CHECK_INT_EQ(o.status, 200);
}

/* More calls at once than one connection cache is given (SHARD_CONNS in
 * http_client.c): they spread over several multi handles, all complete, and
 * the calls after them reuse those connections rather than open new ones. A
 * call cancelled in a later shard ends there. */
static void test_shards(struct chorus_http_client *c, uv_loop_t *loop) {
    enum { N = 600 };
    static struct outcome o[N];
    memset(o, 0, sizeof o);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "curl -s -X POST %s/__reset >/dev/null", mock_url);
    CHECK_INT_EQ(system(cmd), 0);
    struct chorus_http_call *calls[N];
    for (int i = 0; i < N; i++)
        calls[i] = start(c, "GET", "/shard?delay=300", NULL, 20000, &o[i]);
    CHECK(calls[N - 1] != NULL);
    chorus_http_cancel(calls[N - 1]);
    CHECK_INT_EQ(chorus_http_active(c), N - 1);
    run_until(loop, o, N - 1);
    int ok = 0;
    for (int i = 0; i < N - 1; i++)
        ok += o[i].status == 200;
    CHECK_INT_EQ(ok, N - 1);
    CHECK_INT_EQ(o[N - 1].done, 0);
    long opened = mock_connections();
    CHECK(opened >= N - 1 - 200); /* the 200 of test_many_concurrent may be reused */
    for (int i = 0; i < 10; i++) {
        struct outcome one = {0};
        start(c, "GET", "/again", NULL, 5000, &one);
        run_until(loop, &one, 1);
        CHECK_INT_EQ(one.status, 200);
    }
    CHECK_INT_EQ(mock_connections(), opened + 1); /* + the first count's own curl */
}

/* More calls at once than one transport thread is given (TRANSPORT_CALLS
 * in http_client.c) start more threads, up to the number asked: every call
 * completes, a call cancelled on a later thread ends there, the calls after
 * them reuse the connections left open rather than open new ones, and
 * closing the client with calls in flight on every thread stops them all
 * without a callback (nothing leaks, no race: ASan, TSan). */
static void test_threads(uv_loop_t *loop) {
    enum { N = 600 };
    static struct outcome o[N];
    memset(o, 0, sizeof o);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "curl -s -X POST %s/__reset >/dev/null", mock_url);
    CHECK_INT_EQ(system(cmd), 0);
    struct chorus_http_client *c = chorus_http_client_new_threads(loop, 3);
    CHECK(c != NULL);
    CHECK_INT_EQ(chorus_http_threads(c), 1); /* the others only when needed */
    struct chorus_http_call *calls[N];
    for (int i = 0; i < N; i++)
        calls[i] = start(c, "GET", "/threads?delay=300", NULL, 20000, &o[i]);
    CHECK(calls[N - 1] != NULL);
    CHECK_INT_EQ(chorus_http_threads(c), 3);
    chorus_http_cancel(calls[N - 1]);
    CHECK_INT_EQ(chorus_http_active(c), N - 1);
    run_until(loop, o, N - 1);
    int ok = 0;
    for (int i = 0; i < N - 1; i++)
        ok += o[i].status == 200;
    CHECK_INT_EQ(ok, N - 1);
    CHECK_INT_EQ(o[N - 1].done, 0);
    long opened = mock_connections();
    CHECK(opened >= N - 1);
    for (int i = 0; i < 10; i++) {
        struct outcome one = {0};
        start(c, "GET", "/again", NULL, 5000, &one);
        run_until(loop, &one, 1);
        CHECK_INT_EQ(one.status, 200);
    }
    CHECK_INT_EQ(mock_connections(), opened + 1); /* + the first count's own curl */
    CHECK_INT_EQ(chorus_http_threads(c), 3);

    memset(o, 0, sizeof o);
    for (int i = 0; i < N; i++)
        CHECK(start(c, "GET", "/parked?delay=5000", NULL, 10000, &o[i]) != NULL);
    for (int i = 0; i < 5; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        usleep(20 * 1000);
    }
    CHECK_INT_EQ(chorus_http_active(c), N);
    chorus_http_client_close(c);
    uv_run(loop, UV_RUN_DEFAULT);
    int done = 0;
    for (int i = 0; i < N; i++)
        done += o[i].done;
    CHECK_INT_EQ(done, 0);
}

/* A burst of calls well past the ones the client keeps for reuse gives the
 * freed ones' memory back to the system as they end (chorus_http_trims),
 * on a transport thread (the calls' last references drop on this, the
 * loop's thread, which only asks for it); calls one after another, each
 * reusing a kept one, never do. */
static void test_burst_gives_memory_back(struct chorus_http_client *c, uv_loop_t *loop) {
    enum { N = 1400 }; /* 256 kept, more than 1,024 freed */
    struct rlimit fds;
    if (getrlimit(RLIMIT_NOFILE, &fds) != 0 || fds.rlim_cur < N + 200) {
        fprintf(stderr, "test_burst_gives_memory_back: skipped (needs %d open files)\n", N + 200);
        return;
    }
    static struct outcome o[N];
    memset(o, 0, sizeof o);
    size_t before = chorus_http_trims(c);
    for (int i = 0; i < N; i++)
        CHECK(start(c, "GET", "/burst?delay=200", NULL, 30000, &o[i]) != NULL);
    run_until(loop, o, N);
    int ok = 0;
    for (int i = 0; i < N; i++)
        ok += o[i].status == 200;
    CHECK_INT_EQ(ok, N);
    /* the transport trims after it is asked: wait for it (10 s at most) */
    size_t after = chorus_http_trims(c);
    for (int i = 0; i < 1000 && after == before; i++) {
        uv_sleep(10);
        after = chorus_http_trims(c);
    }
    CHECK(after > before);
    for (int i = 0; i < 300; i++) {
        struct outcome one = {0};
        start(c, "GET", "/steady", NULL, 5000, &one);
        run_until(loop, &one, 1);
        CHECK_INT_EQ(one.status, 200);
    }
    CHECK(chorus_http_trims(c) == after);
}

/* A call with the egress options: restricted, following redirects with an
 * allow-list of hosts. */
static void start_egress(struct chorus_http_client *c, const char *url, int restricted,
                         const char *const *hosts, struct outcome *o) {
    char err[128];
    struct chorus_http_request req = {.method = "GET",
                                      .url = url,
                                      .connect_timeout_ms = 1000,
                                      .timeout_ms = 5000,
                                      .restricted = restricted,
                                      .follow_redirects = 1,
                                      .allow_hosts = hosts};
    CHECK(chorus_http_start(c, &req, on_done, o, err, sizeof err) != NULL);
}

static void test_egress_ranges(struct chorus_http_client *c) {
    static const char *const refused[] = {
        "127.0.0.1",  "10.1.2.3",  "172.20.0.1", "192.168.1.1",       "169.254.169.254",
        "0.0.0.0",    "::1",       "fe80::1",    "fd00::1",           "::ffff:127.0.0.1",
        "100.64.0.1", "224.0.0.1", "::",         "::ffff:192.168.0.1"};
    static const char *const public[] = {"8.8.8.8", "172.32.0.1", "192.169.0.1", "2001:4860::8888",
                                         "::ffff:1.1.1.1"};
    char err[128];
    CHECK_INT_EQ(chorus_http_set_egress(c, NULL, NULL, err, sizeof err), 0);
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++)
        CHECK(chorus_http_egress_denied(c, refused[i], 80) != NULL);
    for (size_t i = 0; i < sizeof public / sizeof *public; i++)
        CHECK(chorus_http_egress_denied(c, public[i], 80) == NULL);
    const char *allow[] = {"10.0.0.0/8", "fd00::/8", NULL};
    CHECK_INT_EQ(chorus_http_set_egress(c, allow, "203.0.113.5:8080", err, sizeof err), 0);
    CHECK(chorus_http_egress_denied(c, "10.1.2.3", 80) == NULL);
    CHECK(chorus_http_egress_denied(c, "fd12::1", 80) == NULL);
    CHECK(chorus_http_egress_denied(c, "172.20.0.1", 80) != NULL);
    CHECK(chorus_http_egress_denied(c, "203.0.113.5", 8080) != NULL); /* the server itself */
    CHECK(chorus_http_egress_denied(c, "203.0.113.5", 443) == NULL);
    static const char *const bad[] = {"10.0.0.0/33", "nope", "1.2.3.4/", "1.2.3.4/x", "", NULL};
    for (size_t i = 0; bad[i]; i++) {
        const char *one[] = {bad[i], NULL};
        CHECK(chorus_http_set_egress(c, one, NULL, err, sizeof err) != 0);
        CHECK(chorus_http_egress_parse(bad[i]) != 0);
    }
    CHECK(chorus_http_egress_denied(c, "10.1.2.3", 80) ==
          NULL); /* a refused policy changes nothing */
    CHECK_INT_EQ(chorus_http_set_egress(c, NULL, NULL, err, sizeof err), 0);
}

/* A restricted call never reaches the mock on loopback, not even over a
 * connection an unrestricted call left open; the allow-list lets it, the
 * server's own address never. */
static void test_egress_calls(struct chorus_http_client *c, uv_loop_t *loop) {
    char url[256], err[128], self[64];
    struct outcome o[4] = {0};
    snprintf(url, sizeof url, "%s/egress", mock_url);
    CHECK(start(c, "GET", "/warm", NULL, 5000, &o[0]) != NULL); /* leaves a keep-alive connection */
    run_until(loop, o, 1);
    CHECK_INT_EQ(o[0].status, 200);
    start_egress(c, url, 1, NULL, &o[1]);
    run_until(loop, &o[1], 1);
    CHECK_INT_EQ(o[1].error, CHORUS_HTTP_DENIED);
    const char *allow[] = {"127.0.0.1", NULL};
    CHECK_INT_EQ(chorus_http_set_egress(c, allow, NULL, err, sizeof err), 0);
    start_egress(c, url, 1, NULL, &o[2]);
    run_until(loop, &o[2], 1);
    CHECK_INT_EQ(o[2].error, CHORUS_HTTP_OK);
    CHECK_INT_EQ(o[2].status, 200);
    snprintf(self, sizeof self, "%s", mock_url + strlen("http://"));
    CHECK_INT_EQ(chorus_http_set_egress(c, allow, self, err, sizeof err), 0);
    start_egress(c, url, 1, NULL, &o[3]);
    run_until(loop, &o[3], 1);
    CHECK_INT_EQ(o[3].error, CHORUS_HTTP_DENIED);
    CHECK_INT_EQ(chorus_http_set_egress(c, NULL, NULL, err, sizeof err), 0);
}

/* Every redirect hop must be one of allow_hosts; user:password URLs never. */
static void test_redirect_hops(struct chorus_http_client *c, uv_loop_t *loop) {
    const char *port = strrchr(mock_url, ':') + 1;
    const char *hosts[] = {"127.0.0.1", NULL};
    char ok_url[256], away[256], creds[256];
    snprintf(ok_url, sizeof ok_url,
             "%s/r?status=302&location=http%%3A%%2F%%2F127.0.0.1%%3A%s%%2Fthere", mock_url, port);
    snprintf(away, sizeof away, "%s/r?status=302&location=http%%3A%%2F%%2Flocalhost%%3A%s%%2Fthere",
             mock_url, port);
    snprintf(creds, sizeof creds,
             "%s/r?status=302&location=http%%3A%%2F%%2Fu%%3Ap%%40127.0.0.1%%3A%s%%2Fthere",
             mock_url, port);
    struct outcome o[3] = {0};
    start_egress(c, ok_url, 0, hosts, &o[0]);
    start_egress(c, away, 0, hosts, &o[1]);
    start_egress(c, creds, 0, NULL, &o[2]);
    run_until(loop, o, 3);
    CHECK_INT_EQ(o[0].error, CHORUS_HTTP_OK);
    CHECK(strstr(o[0].body, "\"path\":\"/there\"") != NULL);
    CHECK_INT_EQ(o[1].error, CHORUS_HTTP_FORBIDDEN_HOST);
    CHECK_INT_EQ(o[2].error, CHORUS_HTTP_DENIED);
}

/* ---- plain HTTP/1.1 without curl (runtime/http_plain.c) ------------------ */

/* The upstream cannot tell the engines apart: for each request the mock's
 * echo of what it received (method, path, query, every header, body) is
 * the same byte for byte whether curl or the plain engine sent it. */
static void test_plain_sends_what_curl_sends(struct chorus_http_client *c, uv_loop_t *loop) {
    const char *json[] = {"Content-Type: application/json", "X-Test: yes", NULL};
    const char *removed[] = {"Accept: ", "X-Empty: ", "X-Kept: 1", NULL};
    const char *own_host[] = {"Host: example.test", "Accept: text/plain", NULL};
    static const struct {
        const char *method, *path, *body;
        int headers; /* 0: none, 1: json, 2: removed, 3: own_host */
    } reqs[] = {
        {"GET", "/plain?a=1&b=two", NULL, 1},
        {"POST", "/form", "x=1&y=2", 0},
        {"PUT", "/json", "{\"a\":1}", 1},
        {"DELETE", "/d", NULL, 0},
        {"POST", "/nobody", NULL, 0},
        {"PATCH", "/empty", "", 1},
        {"GET", "/removed", NULL, 2},
        {"GET", "/host", NULL, 3},
        {"GET", "", NULL, 0},
        {"GET", "/frag#part", NULL, 0},
    };
    size_t plain_before = chorus_http_plain_calls(c);
    for (size_t i = 0; i < sizeof reqs / sizeof *reqs; i++) {
        const char *const *h = reqs[i].headers == 1   ? json
                               : reqs[i].headers == 2 ? removed
                               : reqs[i].headers == 3 ? own_host
                                                      : NULL;
        char url[256];
        snprintf(url, sizeof url, "%s%s", mock_url, reqs[i].path);
        struct outcome o[2] = {0};
        CHECK(start_via(c, reqs[i].method, url, h, reqs[i].body, 5000, 0, &o[0]) != NULL);
        CHECK(start_via(c, reqs[i].method, url, h, reqs[i].body, 5000, 1, &o[1]) != NULL);
        run_until(loop, o, 2);
        CHECK_INT_EQ(o[0].error, CHORUS_HTTP_OK);
        CHECK_INT_EQ(o[0].status, 200);
        /* the mock numbers its answers: "n" differs */
        char *n0 = strstr(o[0].body, ",\"n\":"), *n1 = strstr(o[1].body, ",\"n\":");
        CHECK(n0 != NULL && n1 != NULL);
        if (n0 && n1)
            *n0 = *n1 = '\0';
        CHECK_STR_EQ(o[0].body, o[1].body);
        CHECK_INT_EQ(o[0].nheaders, o[1].nheaders);
    }
    /* one of each pair went without curl, the other through it */
    CHECK_INT_EQ(chorus_http_plain_calls(c) - plain_before, sizeof reqs / sizeof *reqs);
    /* what the plain engine leaves to curl: https, credentials, dot
     * segments, bytes curl would reject or encode, a GET with a body */
    static const struct {
        const char *method, *url, *body;
    } curls[] = {
        {"GET", "http://u:p@127.0.0.1:9/", NULL}, {"GET", "http://127.0.0.1:9/a/../b", NULL},
        {"GET", "http://127.0.0.1:9/a b", NULL},  {"GET", "https://127.0.0.1:9/", NULL},
        {"GET", "http://127.0.0.1:9/", "body"},   {"GET", "http://[fe80::1%25lo]:9/", NULL}};
    plain_before = chorus_http_plain_calls(c);
    for (size_t i = 0; i < sizeof curls / sizeof *curls; i++) {
        struct outcome o = {0};
        CHECK(start_via(c, curls[i].method, curls[i].url, NULL, curls[i].body, 5000, 0, &o) !=
              NULL);
        run_until(loop, &o, 1);
        CHECK(o.done);
    }
    CHECK_INT_EQ(chorus_http_plain_calls(c) - plain_before, 0);
}

/* A raw upstream for what the mock does not do: each connection gets its
 * own thread, reads requests and answers as the path says. */
static int raw_port;
static atomic_int raw_accepted;

static void *raw_conn(void *arg) {
    int fd = (int)(intptr_t)arg;
    char req[4096] = "";
    int answered = 0;
    for (;;) {
        size_t n = 0;
        req[0] = '\0';
        while (!strstr(req, "\r\n\r\n")) {
            ssize_t r = read(fd, req + n, sizeof req - 1 - n);
            if (r <= 0)
                goto out;
            n += (size_t)r;
            req[n] = '\0';
        }
        const char *a = NULL;
        int close_after = 1;
        if (strncmp(req, "GET /keep ", 10) == 0) {
            if (answered) /* the second request on a connection: dropped unanswered */
                goto out;
            a = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nkept";
            close_after = 0;
        } else if (strncmp(req, "GET /interim ", 13) == 0) {
            a = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                "HTTP/1.1 200 OK\r\nX-Final: 1\r\nContent-Length: 5\r\n\r\nfinal";
        } else if (strncmp(req, "GET /eof ", 9) == 0) {
            a = "HTTP/1.1 200 OK\r\nX-Until: eof\r\n\r\nread until the end";
        } else if (strncmp(req, "GET /garbage ", 13) == 0) {
            a = "SMTP ready\r\n\r\n";
        } else if (strncmp(req, "GET /twodigit ", 14) == 0) {
            a = "HTTP/1.1 10 Ten\r\nContent-Length: 0\r\n\r\n";
        } else if (strncmp(req, "GET /short ", 11) == 0) {
            a = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        } else if (strncmp(req, "GET /split ", 11) == 0) {
            /* the answer a byte at a time: every parser state ends a read */
            const char *s = "HTTP/1.1 201 Created\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
            for (const char *p = s; *p; p++) {
                if (send(fd, p, 1, MSG_NOSIGNAL) != 1)
                    goto out;
                usleep(200);
            }
            answered = 1;
            continue;
        }
        if (a && send(fd, a, strlen(a), MSG_NOSIGNAL) != (ssize_t)strlen(a))
            goto out;
        answered = 1;
        if (close_after)
            goto out;
    }
out:
    close(fd);
    return NULL;
}

static void *raw_server(void *arg) {
    int lfd = (int)(intptr_t)arg;
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            return NULL;
        atomic_fetch_add(&raw_accepted, 1);
        pthread_t th;
        pthread_create(&th, NULL, raw_conn, (void *)(intptr_t)fd);
        pthread_detach(th);
    }
}

static int raw_start(void) {
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 64) != 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &len) != 0)
        return -1;
    raw_port = ntohs(a.sin_port);
    pthread_t th;
    pthread_create(&th, NULL, raw_server, (void *)(intptr_t)lfd);
    pthread_detach(th);
    return 0;
}

static void raw_get(struct chorus_http_client *c, uv_loop_t *loop, const char *path,
                    struct outcome *o) {
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", raw_port, path);
    memset(o, 0, sizeof *o);
    CHECK(start_via(c, "GET", url, NULL, NULL, 5000, 0, o) != NULL);
    run_until(loop, o, 1);
}

/* What an upstream may do to a plain call, and what the call then gets:
 * the kinds curl's calls get for the same. */
static void test_plain_upstream_faults(struct chorus_http_client *c, uv_loop_t *loop) {
    CHECK_INT_EQ(raw_start(), 0);
    struct outcome o;
    /* a kept connection the upstream drops as the next request arrives:
     * sent again, once, on a new connection */
    raw_get(c, loop, "/keep", &o);
    CHECK_INT_EQ(o.status, 200);
    CHECK_STR_EQ(o.body, "kept");
    int before = atomic_load(&raw_accepted);
    raw_get(c, loop, "/keep", &o);
    CHECK_INT_EQ(o.error, CHORUS_HTTP_OK);
    CHECK_STR_EQ(o.body, "kept");
    CHECK_INT_EQ(atomic_load(&raw_accepted), before + 1);
    /* an interim 103 before the answer: the answer's headers only */
    raw_get(c, loop, "/interim", &o);
    CHECK_INT_EQ(o.status, 200);
    CHECK_STR_EQ(o.body, "final");
    CHECK_INT_EQ(o.nheaders, 2);
    /* a body without a length ends with the connection */
    raw_get(c, loop, "/eof", &o);
    CHECK_INT_EQ(o.error, CHORUS_HTTP_OK);
    CHECK_STR_EQ(o.body, "read until the end");
    /* an answer a byte per read, chunked */
    raw_get(c, loop, "/split", &o);
    CHECK_INT_EQ(o.status, 201);
    CHECK_STR_EQ(o.body, "abcde");
    /* not HTTP; a body cut short; nothing at all */
    raw_get(c, loop, "/garbage", &o);
    CHECK_INT_EQ(o.error, CHORUS_HTTP_PROTOCOL);
    raw_get(c, loop, "/twodigit", &o); /* http_parser takes it; HTTP has 3 digits */
    CHECK_INT_EQ(o.error, CHORUS_HTTP_PROTOCOL);
    CHECK_STR_EQ(o.message, "malformed HTTP response: status 10");
    raw_get(c, loop, "/short", &o);
    CHECK_INT_EQ(o.error, CHORUS_HTTP_RESET);
    raw_get(c, loop, "/nothing", &o);
    CHECK_INT_EQ(o.error, CHORUS_HTTP_RESET);
    CHECK_STR_EQ(o.message, "Empty reply from server");
}

/* The egress policy holds for plain calls: the address of a new
 * connection, and of a kept one an unrestricted call opened. */
static void test_plain_egress(struct chorus_http_client *c, uv_loop_t *loop) {
    char err[128], url[256];
    snprintf(url, sizeof url, "%s/egress", mock_url);
    CHECK_INT_EQ(chorus_http_set_egress(c, NULL, NULL, err, sizeof err), 0);
    struct outcome o[3] = {0};
    CHECK(start_via(c, "GET", url, NULL, NULL, 5000, 0, &o[0]) != NULL); /* opens, keeps */
    run_until(loop, &o[0], 1);
    CHECK_INT_EQ(o[0].error, CHORUS_HTTP_OK);
    struct chorus_http_request req = {
        .method = "GET", .url = url, .timeout_ms = 5000, .restricted = 1};
    CHECK(chorus_http_start(c, &req, on_done, &o[1], err, sizeof err) != NULL);
    run_until(loop, &o[1], 1);
    CHECK_INT_EQ(o[1].error, CHORUS_HTTP_DENIED);
    CHECK(strstr(o[1].message, "127.0.0.1") != NULL);
    const char *hosts[] = {"api.example", NULL};
    const char *allow[] = {"127.0.0.1", NULL};
    CHECK_INT_EQ(chorus_http_set_egress(c, allow, NULL, err, sizeof err), 0);
    req.allow_hosts = hosts;
    CHECK(chorus_http_start(c, &req, on_done, &o[2], err, sizeof err) != NULL);
    run_until(loop, &o[2], 1);
    CHECK_INT_EQ(o[2].error, CHORUS_HTTP_FORBIDDEN_HOST);
    memset(&o[2], 0, sizeof o[2]);
    req.allow_hosts = NULL;
    CHECK(chorus_http_start(c, &req, on_done, &o[2], err, sizeof err) != NULL);
    run_until(loop, &o[2], 1);
    CHECK_INT_EQ(o[2].error, CHORUS_HTTP_OK);
    CHECK_INT_EQ(chorus_http_set_egress(c, NULL, NULL, err, sizeof err), 0);
}

/* By default a call goes to the loop's own thread only while the loop is
 * mostly idle, which a loop reports only when configured to measure its
 * idle time; one that is not keeps every call on the transport threads. A
 * curl call (one that follows redirects) never goes there. */
static void on_pause(uv_timer_t *timer) { (void)timer; }

static void test_inline_by_load(uv_loop_t *loop) {
    struct chorus_http_client *c = chorus_http_client_new(loop);
    CHECK(c != NULL);
    if (!c)
        return;
    uv_timer_t pause;
    uv_timer_init(loop, &pause);
    /* idle loop, measured over more than one window: the calls go inline */
    uv_loop_configure(loop, UV_METRICS_IDLE_TIME);
    for (int i = 0; i < 3; i++) {
        struct outcome o = {0};
        CHECK(start(c, "GET", "/load", NULL, 5000, &o) != NULL);
        run_until(loop, &o, 1);
        CHECK_INT_EQ(o.status, 200);
        uv_timer_start(&pause, on_pause, 60, 0); /* the loop waits, idle */
        uv_run(loop, UV_RUN_DEFAULT);
    }
    size_t inline_calls = chorus_http_inline_calls(c);
    CHECK(inline_calls >= 1);
    /* a call that ends from its timer (no socket event) with nothing else
     * in flight: its answer is handed over, and the loop then ends */
    chorus_http_client_set_inline(c, 1);
    struct outcome late = {0};
    CHECK(start(c, "GET", "/hang?fault=hang", NULL, 200, &late) != NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(late.done, 1);
    CHECK_INT_EQ(late.error, CHORUS_HTTP_TIMEOUT);
    inline_calls = chorus_http_inline_calls(c);
    /* never: on the threads whatever the load */
    chorus_http_client_set_inline(c, -1);
    struct outcome o = {0};
    CHECK(start(c, "GET", "/load", NULL, 5000, &o) != NULL);
    run_until(loop, &o, 1);
    CHECK_INT_EQ(chorus_http_inline_calls(c), inline_calls);
    /* always, but a call the plain engine does not carry stays with curl */
    chorus_http_client_set_inline(c, 1);
    char url[256];
    snprintf(url, sizeof url, "%s/curl", mock_url);
    memset(&o, 0, sizeof o);
    CHECK(start_via(c, "GET", url, NULL, NULL, 5000, 1, &o) != NULL);
    run_until(loop, &o, 1);
    CHECK_INT_EQ(o.status, 200);
    CHECK_INT_EQ(chorus_http_inline_calls(c), inline_calls);
    uv_close((uv_handle_t *)&pause, NULL);
    chorus_http_client_close(c);
    uv_run(loop, UV_RUN_DEFAULT);
}

/* The calls' tests, in this order on one client; threads: it sends calls to
 * its transport threads (the tests of what only they do run too), else on
 * the loop's own thread. */
static void test_calls(struct chorus_http_client *c, uv_loop_t *loop, int threads) {
    test_get_and_post(c, loop);
    test_failures(c, loop);
    if (threads)
        test_bad_method(c);
    test_many_headers(c, loop);
    test_methods_in_turn(c, loop);
    test_options_in_turn(c, loop);
    test_many_concurrent(c, loop);
    test_cancel(c, loop);
    if (threads) {
        test_shards(c, loop);
        test_burst_gives_memory_back(c, loop);
    }
    test_keep_alive(c, loop);
    test_response_limits(c, loop);
    test_url_charged(c, loop);
    if (threads)
        test_egress_ranges(c);
    test_egress_calls(c, loop);
    test_redirect_hops(c, loop);
    test_plain_sends_what_curl_sends(c, loop);
    test_plain_upstream_faults(c, loop);
    test_plain_egress(c, loop);
}

int main(void) {
    /* test_burst_gives_memory_back keeps 1,400 calls in flight: here and in
     * the mock (which inherits the limit) */
    struct rlimit fds;
    if (getrlimit(RLIMIT_NOFILE, &fds) == 0 && fds.rlim_cur < fds.rlim_max) {
        fds.rlim_cur = fds.rlim_max;
        setrlimit(RLIMIT_NOFILE, &fds);
    }
    if (start_mock() != 0) {
        fprintf(stderr, "cannot start build/mock-upstream\n");
        return 1;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    CHECK_INT_EQ(chorus_http_global_init(), 0);
    struct chorus_http_client *c = chorus_http_client_new(&loop);
    CHECK(c != NULL);
    test_calls(c, &loop, 1);
    test_close_in_flight(&loop);
    test_threads(&loop);
    chorus_http_client_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);

    /* The same calls made on the loop's own thread (chorus_http_client_set_inline),
     * against a fresh mock (it stops by itself after a minute) */
    stop_mock();
    CHECK_INT_EQ(start_mock(), 0);
    c = chorus_http_client_new(&loop);
    CHECK(c != NULL);
    chorus_http_client_set_inline(c, 1);
    test_calls(c, &loop, 0);
    CHECK(chorus_http_inline_calls(c) > 100);
    test_inline_by_load(&loop);
    chorus_http_client_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
    chorus_http_global_cleanup();
    stop_mock();
    return unit_summary();
}
