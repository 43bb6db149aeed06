/* fuzz_upstream_response.c — libFuzzer target for what an upstream may send
 * back to a plain HTTP/1.1 call (runtime/http_plain.c).
 *
 * The plain engine feeds whatever bytes an upstream sends to http_parser and
 * keeps what its callbacks make of them: the header text and its byte
 * count against max_header_bytes, interim 1xx answers, the body against
 * max_response_bytes and, for a metered call, against the grants of its
 * owner's memory. Those callbacks are our code on untrusted input. Each
 * input is served, as the answer to one call, by a listening socket on
 * 127.0.0.1 in this process: the call goes out through the real client
 * (chorus_http_start, a transport thread), this thread accepts it, reads
 * the request, writes the input in up to three pieces (the first two
 * bytes of the input say where it is cut, so a parser state may end a
 * read) and closes the connection. The third byte picks the call: HEAD or
 * GET, a 64-byte header limit or the default, a 32-byte body limit or the
 * default, metered with a 20,000-byte memory cap or not.
 * These are bugs ("INVARIANT", then abort()):
 *   - the call does not end, or ends twice;
 *   - a success whose body passes the limit, whose body_len and body
 *     disagree, whose status is outside 100..999, or with a NULL header;
 *   - a metered call's body not charged to its owner before the callback,
 *     or any of it still charged after the end;
 *   - a call carried by curl (the plain engine must take these URLs).
 * ASan, UBSan and LeakSanitizer watch the rest.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http_client.h"

#define TARGET "fuzz_upstream_response"
#define CAP 20000

static uv_loop_t loop;
static struct chorus_http_client *client;
static int listener = -1;
static char url[64];

struct outcome {
    int done;
    long long charged;
    int metered;
    size_t max_body;
};

static void invariant(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "\n%s: INVARIANT: %s\n", TARGET, what);
        abort();
    }
}

static int on_charge(void *data, long long delta) {
    struct outcome *o = data;
    if (delta > 0 && o->charged + delta > CAP)
        return -1;
    o->charged += delta;
    return 0;
}

static void on_done(const struct chorus_http_response *res, void *data) {
    struct outcome *o = data;
    invariant(!o->done, "the call ended twice");
    o->done = 1;
    if (res->error != CHORUS_HTTP_OK)
        return;
    invariant(res->status >= 100 && res->status <= 999, "a status outside 100..999");
    invariant(res->body_len <= o->max_body, "a body past max_response_bytes");
    invariant(res->body && strlen(res->body) <= res->body_len, "body_len and the body disagree");
    for (size_t i = 0; i < res->nheaders; i++)
        invariant(res->headers[i].name && res->headers[i].value, "a NULL header");
    invariant(!o->metered || o->charged >= (long long)res->body_len, "a body not charged");
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    uv_loop_init(&loop);
    if (chorus_http_global_init() != 0 || !(client = chorus_http_client_new_threads(&loop, 1)))
        abort();
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(listener, 16) != 0 || getsockname(listener, (struct sockaddr *)&a, &len) != 0)
        abort();
    snprintf(url, sizeof url, "http://127.0.0.1:%d/fuzz", ntohs(a.sin_port));
    return 0;
}

/* Reads the request on fd up to its blank line (the calls send no body). */
static void read_request(int fd) {
    char buf[2048];
    size_t n = 0;
    while (n < sizeof buf - 1) {
        ssize_t r = read(fd, buf + n, sizeof buf - 1 - n);
        if (r <= 0)
            return;
        n += (size_t)r;
        buf[n] = '\0';
        if (strstr(buf, "\r\n\r\n"))
            return;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 3)
        return 0;
    size_t cut1 = data[0], cut2 = data[0] + (size_t)data[1];
    unsigned mode = data[2];
    data += 3, size -= 3;
    struct outcome o = {.metered = (mode & 8) != 0, .max_body = (mode & 4) ? 32 : 16u << 20};
    struct chorus_http_request req = {.method = (mode & 1) ? "HEAD" : "GET",
                                      .url = url,
                                      .connect_timeout_ms = 2000,
                                      .timeout_ms = 5000,
                                      .max_body = (mode & 4) ? 32 : 0,
                                      .max_header_bytes = (mode & 2) ? 64 : 0,
                                      .charge = o.metered ? on_charge : NULL};
    char err[128];
    size_t plain_before = chorus_http_plain_calls(client);
    struct chorus_http_call *call = chorus_http_start(client, &req, on_done, &o, err, sizeof err);
    invariant(call != NULL, "the call did not start");
    /* the transport connects meanwhile; a kept connection the last input's
     * answer left alive finds it closed and the call comes here anew */
    int fd = accept(listener, NULL, NULL);
    invariant(fd >= 0, "no connection came");
    read_request(fd);
    size_t cuts[3] = {cut1 < size ? cut1 : size, cut2 < size ? cut2 : size, size};
    size_t at = 0;
    for (int i = 0; i < 3; i++) {
        if (cuts[i] > at && send(fd, data + at, cuts[i] - at, MSG_NOSIGNAL) < 0)
            break;
        if (cuts[i] > at)
            at = cuts[i];
        usleep(100);
    }
    close(fd);
    while (!o.done)
        uv_run(&loop, UV_RUN_ONCE);
    invariant(chorus_http_plain_calls(client) > plain_before, "the call went through curl");
    invariant(!o.metered || o.charged == 0, "still charged after the end");
    return 0;
}
