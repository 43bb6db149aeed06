/* http_client.c — libcurl multi on transport threads, each with its libuv loop.
 *
 * The Lua thread only copies a request and hands it over to a transport
 * thread (transport_pick); that thread owns the call's curl handle and
 * sockets from then on: curl tells it which sockets to watch (socket
 * callback → the thread's epoll set) and when to wake it (timer callback →
 * one uv_timer per multi handle), it tells curl what happened with
 * curl_multi_socket_action and drains CURLMSG_DONE. Recovery after a
 * restart opens thousands of connections at once: the connect, send and
 * epoll system calls and curl's own work per connection were about 40% of
 * the Lua thread's CPU when it did them, and then twice the Lua thread's
 * on one transport thread (MAX_TRANSPORTS).
 *
 * The threads talk through queues of calls under one mutex, each woken by
 * a uv_async: to each transport START, CANCEL and GRANT, to the Lua thread
 * DONE and GRANT requests. A call is in a queue at most once, with a bit
 * per pending message. libcurl allows a handle to move between threads as
 * long as one thread uses it at a time: an easy handle is touched by its
 * call's transport thread from START to the end of its transfer, and by
 * whichever thread drops the call's last reference after that (a kept
 * handle may carry its next call on another transport).
 *
 * A plain HTTP/1.1 call (http_plain.c says which) never reaches curl: the
 * transport thread hands it to the plain engine at START, which shares
 * this file's queues, epoll set, egress policy and response buffers, and
 * ends it with the CURLcode curl would have given.
 *
 * Invariant: a call's done callback runs only from the Lua thread's loop
 * (on_wake_main), never inside chorus_http_start or chorus_http_cancel, so a
 * callback may start or cancel other calls freely.
 */
#include "http_client.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <malloc.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http_plain.h"
#include "http_transport.h"

static void check_done(struct shard *shard);

int chorus_http_global_init(void) {
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

void chorus_http_global_cleanup(void) { curl_global_cleanup(); }

size_t chorus_http_active(const struct chorus_http_client *client) { return client->active; }

size_t chorus_http_inline_calls(const struct chorus_http_client *client) {
    return client->inline_calls;
}

void chorus_http_client_set_inline(struct chorus_http_client *client, int mode) {
    client->inline_mode = mode;
}

size_t chorus_http_plain_calls(struct chorus_http_client *client) {
    return atomic_load_explicit(&client->plain_calls, memory_order_relaxed);
}

size_t chorus_http_trims(struct chorus_http_client *client) {
    uv_mutex_lock(&client->lock);
    size_t n = client->trims;
    uv_mutex_unlock(&client->lock);
    return n;
}

/* Set on the transport threads: call_release trims memory only there. */
static _Thread_local int on_transport_thread;

/* malloc_trim, counted (a transport thread's). */
static void trim_memory(struct chorus_http_client *client) {
    malloc_trim(0);
    uv_mutex_lock(&client->lock);
    client->trims++;
    uv_mutex_unlock(&client->lock);
}

/* ---- the queues between the threads --------------------------------------- */

static void call_release(struct chorus_http_call *call);

/* Lets go of one reference; the last one puts the call back in the pool.
 * Either thread: the call's transfer is over by then. */
static void call_unref(struct chorus_http_call *call) {
    if (atomic_fetch_sub_explicit(&call->refs, 1, memory_order_acq_rel) == 1)
        call_release(call);
}

void chorus_http_call_unref(struct chorus_http_call *call) { call_unref(call); }

/* Queues bits for the call's transport thread (from the Lua thread). */
static void tq_push(struct chorus_http_call *call, unsigned bits) {
    struct chorus_http_client *client = call->client;
    struct transport *t = call->t;
    int wake = 0;
    uv_mutex_lock(&client->lock);
    if (!call->tq_bits) {
        atomic_fetch_add_explicit(&call->refs, 1, memory_order_relaxed);
        call->tq_next = NULL;
        if (t->tq_tail)
            t->tq_tail->tq_next = call;
        else
            t->tq_head = call, wake = 1;
        t->tq_tail = call;
    }
    call->tq_bits |= bits;
    uv_mutex_unlock(&client->lock);
    if (wake)
        uv_async_send(&t->wake);
}

/* Queues bits for the Lua thread (from a transport thread). */
static void mq_push(struct chorus_http_call *call, unsigned bits);
static void on_drain(uv_idle_t *idle);

void chorus_http_mq_push(struct chorus_http_call *call, unsigned bits) { mq_push(call, bits); }

static void mq_push(struct chorus_http_call *call, unsigned bits) {
    struct chorus_http_client *client = call->client;
    int wake = 0;
    uv_mutex_lock(&client->lock);
    if (!call->mq_bits) {
        atomic_fetch_add_explicit(&call->refs, 1, memory_order_relaxed);
        call->mq_next = NULL;
        if (client->mq_tail)
            client->mq_tail->mq_next = call;
        else
            client->mq_head = call, wake = 1;
        client->mq_tail = call;
    }
    call->mq_bits |= bits;
    uv_mutex_unlock(&client->lock);
    /* the inline transport is on this thread: no wake-up; an idle handle
     * hands the queue over on the loop's next turn, which then does not
     * wait for I/O (a DONE pushed from a timer or from a Lua callback
     * would otherwise wait for the next event) */
    if (wake && call->t && call->t->inline_)
        uv_idle_start(&client->drain, on_drain);
    else if (wake)
        uv_async_send(&client->wake_main);
}

/* Takes the whole queue (t's tq, else mq) as a batch linked by t_batch
 * (m_batch), each call's bits in t_work (m_work). The batch keeps the
 * queues' references: drop each with call_unref once handled. */
static struct chorus_http_call *take_batch(struct chorus_http_client *client, struct transport *t,
                                           int *close_requested) {
    uv_mutex_lock(&client->lock);
    struct chorus_http_call *head;
    if (t) {
        head = t->tq_head;
        for (struct chorus_http_call *c = head; c; c = c->t_batch) {
            c->t_work = c->tq_bits;
            c->tq_bits = 0;
            c->t_batch = c->tq_next;
        }
        t->tq_head = t->tq_tail = NULL;
    } else {
        head = client->mq_head;
        for (struct chorus_http_call *c = head; c; c = c->m_batch) {
            c->m_work = c->mq_bits;
            c->mq_bits = 0;
            c->m_batch = c->mq_next;
        }
        client->mq_head = client->mq_tail = NULL;
    }
    if (close_requested)
        *close_requested = client->close_requested;
    uv_mutex_unlock(&client->lock);
    return head;
}

/* ---- curl ⇄ libuv plumbing ------------------------------------------------ */

static void watch(struct sock_ctx *ctx, int events);
static struct sock_ctx *sock_find(struct transport *t, curl_socket_t fd);

/* What epoll reported for one socket. */
static void on_socket(struct sock_ctx *ctx, uint32_t events) {
    struct shard *shard = ctx->shard;
    if (!ctx->wanted) {
        /* an idle keep-alive socket stirred: stop watching it */
        watch(ctx, 0);
        return;
    }
    int flags = 0;
    if (events & EPOLLERR) {
        flags = CURL_CSELECT_ERR;
        watch(ctx, 0); /* curl ends the transfer; no wake-up per loop turn till then */
    }
    /* a hung-up socket reads its end and fails its writes: what curl waits for */
    if (events & EPOLLHUP)
        events |= (uint32_t)ctx->wanted;
    if (events & EPOLLIN)
        flags |= CURL_CSELECT_IN;
    if (events & EPOLLOUT)
        flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(shard->multi, ctx->fd, flags, &running);
    check_done(shard);
}

/* The transport's epoll set has sockets ready. A socket is found by its
 * number, not by a pointer kept in the set: handling one may close another
 * of the same batch (and free its sock_ctx). A number closed and opened
 * again within the batch gets a spurious wake-up, which curl tolerates. */
static void on_epoll(uv_poll_t *poll, int status, int events) {
    (void)status;
    (void)events;
    struct transport *t = poll->data;
    struct epoll_event ready[256];
    int n = epoll_wait(t->epfd, ready, (int)(sizeof ready / sizeof *ready), 0);
    for (int i = 0; i < n && !t->stopping; i++) {
        if (ready[i].data.u64 & PLAIN_EPOLL_TAG) {
            chorus_plain_event(ready[i].data.u64, ready[i].events);
            continue;
        }
        struct sock_ctx *ctx = sock_find(t, (curl_socket_t)ready[i].data.u64);
        if (ctx && ctx->polling)
            on_socket(ctx, ready[i].events);
    }
}

static void on_timer(uv_timer_t *timer) {
    struct shard *shard = timer->data;
    int running;
    curl_multi_socket_action(shard->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(shard);
}

/* Puts the socket in its transport's epoll set for events (EPOLLIN,
 * EPOLLOUT), or takes it out (0), when that changes. Out rather than in
 * with no events: epoll reports a hang-up whatever it was asked for. */
static void watch(struct sock_ctx *ctx, int events) {
    if (events == ctx->polling)
        return;
    struct epoll_event ev = {.events = (uint32_t)events, .data.u64 = (uint64_t)ctx->fd};
    int epfd = ctx->shard->t->epfd;
    int op = !events ? EPOLL_CTL_DEL : ctx->polling ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(epfd, op, ctx->fd, &ev) != 0 && op == EPOLL_CTL_ADD && errno == EEXIST)
        epoll_ctl(epfd, EPOLL_CTL_MOD, ctx->fd, &ev); /* a closed socket's file still open */
    ctx->polling = events;
}

static struct sock_ctx *sock_find(struct transport *t, curl_socket_t fd) {
    return fd >= 0 && (size_t)fd < t->nsocks ? t->socks[fd] : NULL;
}

/* Counts ctx's socket as idle (a keep-alive connection no transfer uses)
 * or not, in its shard and its transport. */
static void sock_idle(struct sock_ctx *ctx, int idle) {
    if (ctx->idle == idle)
        return;
    ctx->idle = idle;
    struct shard *shard = ctx->shard;
    if (idle) {
        shard->idle_socks++;
        atomic_fetch_add_explicit(&shard->t->idle_socks, 1, memory_order_relaxed);
    } else {
        shard->idle_socks--;
        atomic_fetch_sub_explicit(&shard->t->idle_socks, 1, memory_order_relaxed);
    }
}

static void sock_forget(struct transport *t, curl_socket_t fd);

void chorus_http_sock_forget(struct transport *t, int fd) { sock_forget(t, fd); }

static void sock_forget(struct transport *t, curl_socket_t fd) {
    struct sock_ctx *ctx = sock_find(t, fd);
    if (!ctx)
        return;
    t->socks[fd] = NULL;
    sock_idle(ctx, 0);
    ctx->shard->socks--;
    /* a socket curl closed behind our back left the set by itself, and a
     * new socket with its number is not in it yet */
    watch(ctx, 0);
    free(ctx);
}

static struct sock_ctx *sock_add(struct shard *shard, curl_socket_t fd) {
    struct transport *t = shard->t;
    if ((size_t)fd >= t->nsocks) {
        size_t n = t->nsocks ? t->nsocks : 64;
        while (n <= (size_t)fd)
            n *= 2;
        void *p = realloc(t->socks, n * sizeof *t->socks);
        if (!p)
            return NULL;
        t->socks = p;
        memset(t->socks + t->nsocks, 0, (n - t->nsocks) * sizeof *t->socks);
        t->nsocks = n;
    }
    struct sock_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return NULL;
    ctx->fd = fd;
    ctx->shard = shard;
    t->socks[fd] = ctx;
    shard->socks++;
    return ctx;
}
/* ---- egress policy -------------------------------------------------------- */

static int parse_net(const char *entry, struct egress_net *out) {
    char buf[INET6_ADDRSTRLEN + 8];
    size_t n = strlen(entry);
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, entry, n + 1);
    long prefix = -1;
    char *slash = strchr(buf, '/');
    if (slash) {
        char *end;
        *slash = '\0';
        errno = 0;
        prefix = strtol(slash + 1, &end, 10);
        if (end == slash + 1 || *end || errno || prefix < 0)
            return -1;
    }
    int max;
    memset(out->addr, 0, sizeof out->addr);
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        return -1;
    }
    if (prefix > max)
        return -1;
    out->prefix = prefix < 0 ? max : (int)prefix;
    return 0;
}

int chorus_http_egress_parse(const char *entry) {
    struct egress_net net;
    return parse_net(entry, &net);
}

static int in_net(int family, const unsigned char *a, const struct egress_net *net) {
    if (family != net->family)
        return 0;
    int full = net->prefix / 8, rest = net->prefix % 8;
    if (memcmp(a, net->addr, (size_t)full) != 0)
        return 0;
    if (!rest)
        return 1;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (a[full] & mask) == (net->addr[full] & mask);
}

/* Addresses that are not the public internet: a URL taken from a request
 * must not reach the server's own host, its network or cloud metadata. */
static const struct {
    const char *net;
    const char *what;
} NON_PUBLIC[] = {
    {"0.0.0.0/8", "'this host' (0.0.0.0/8)"},
    {"10.0.0.0/8", "private (10.0.0.0/8)"},
    {"100.64.0.0/10", "shared carrier-grade NAT (100.64.0.0/10)"},
    {"127.0.0.0/8", "loopback (127.0.0.0/8)"},
    {"169.254.0.0/16", "link-local (169.254.0.0/16)"},
    {"172.16.0.0/12", "private (172.16.0.0/12)"},
    {"192.0.0.0/24", "IETF protocol assignments (192.0.0.0/24)"},
    {"192.168.0.0/16", "private (192.168.0.0/16)"},
    {"198.18.0.0/15", "benchmarking (198.18.0.0/15)"},
    {"224.0.0.0/4", "multicast (224.0.0.0/4)"},
    {"240.0.0.0/4", "reserved (240.0.0.0/4)"},
    {"::/128", "unspecified (::)"},
    {"::1/128", "loopback (::1)"},
    {"fc00::/7", "unique local (fc00::/7)"},
    {"fe80::/10", "link-local (fe80::/10)"},
    {"fec0::/10", "site-local (fec0::/10)"},
    {"ff00::/8", "multicast (ff00::/8)"},
};

/* Why a restricted call may not reach family/a (network order) on port, or
 * NULL. An IPv4-mapped IPv6 address is judged as the IPv4 one. */
static const char *denied_addr(const struct chorus_http_client *client, int family,
                               const unsigned char *a, int port) {
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (family == AF_INET6 && memcmp(a, mapped, sizeof mapped) == 0) {
        family = AF_INET;
        a += 12;
    }
    if (client->self.prefix && port == client->self_port) {
        static const unsigned char zero[16];
        const struct egress_net *self = &client->self;
        int any = memcmp(self->addr, zero, sizeof zero) == 0; /* listening on 0.0.0.0 */
        int local = family == AF_INET && (a[0] == 127 || a[0] == 0);
        if ((family == self->family && memcmp(a, self->addr, family == AF_INET ? 4 : 16) == 0) ||
            (any && local) || (family == AF_INET && a[0] == 0))
            return "the server's own listen address";
    }
    for (size_t i = 0; i < client->nallow; i++)
        if (in_net(family, a, &client->allow[i]))
            return NULL;
    for (size_t i = 0; i < sizeof NON_PUBLIC / sizeof *NON_PUBLIC; i++) {
        struct egress_net net;
        parse_net(NON_PUBLIC[i].net, &net);
        if (in_net(family, a, &net))
            return NON_PUBLIC[i].what;
    }
    return NULL;
}

const char *chorus_http_egress_denied(struct chorus_http_client *client, const char *ip, int port) {
    unsigned char a[16] = {0};
    int family = inet_pton(AF_INET, ip, a) == 1    ? AF_INET
                 : inet_pton(AF_INET6, ip, a) == 1 ? AF_INET6
                                                   : 0;
    if (!family)
        return "not a numeric address";
    uv_mutex_lock(&client->policy_lock);
    const char *why = denied_addr(client, family, a, port);
    uv_mutex_unlock(&client->policy_lock);
    return why;
}

int chorus_http_set_egress(struct chorus_http_client *client, const char *const *allow,
                           const char *self, char *err, size_t errlen) {
    size_t n = 0;
    while (allow && allow[n])
        n++;
    struct egress_net *nets = n ? calloc(n, sizeof *nets) : NULL;
    if (n && !nets) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (parse_net(allow[i], &nets[i]) != 0) {
            snprintf(err, errlen, "'%s' is not an IP address or network (a.b.c.d/N, x::y/N)",
                     allow[i]);
            free(nets);
            return -1;
        }
    struct egress_net me = {0};
    long port = 0;
    if (self) {
        char buf[INET6_ADDRSTRLEN + 8];
        const char *colon = strrchr(self, ':');
        size_t hl = colon ? (size_t)(colon - self) : 0;
        char *end = NULL;
        if (colon)
            port = strtol(colon + 1, &end, 10);
        if (*self == '[' && hl >= 2 && self[hl - 1] == ']')
            self++, hl -= 2;
        if (!colon || hl >= sizeof buf || !end || *end || port <= 0 || port > 65535) {
            snprintf(err, errlen, "own address '%s' is not ip:port", self);
            free(nets);
            return -1;
        }
        memcpy(buf, self, hl);
        buf[hl] = '\0';
        if (parse_net(buf, &me) != 0) {
            snprintf(err, errlen, "own address '%s' is not numeric", buf);
            free(nets);
            return -1;
        }
    }
    uv_mutex_lock(&client->policy_lock);
    struct egress_net *old = client->allow;
    client->allow = nets;
    client->nallow = n;
    client->self = me;
    client->self_port = (int)port;
    uv_mutex_unlock(&client->policy_lock);
    free(old);
    return 0;
}

/* Records why the policy stopped call (the done callback reports it). */
static void deny(struct chorus_http_call *call, const char *target, const char *why) {
    call->denied_as = CHORUS_HTTP_DENIED;
    snprintf(call->denied, sizeof call->denied, "egress to %s refused: %s", target, why);
}

void chorus_http_deny(struct chorus_http_call *call, const char *target, const char *why) {
    deny(call, target, why);
}

const char *chorus_http_denied_addr(struct chorus_http_client *client, int family,
                                    const unsigned char *a, int port) {
    uv_mutex_lock(&client->policy_lock);
    const char *why = denied_addr(client, family, a, port);
    uv_mutex_unlock(&client->policy_lock);
    return why;
}

/* curl's socket opener (userp is the call): a restricted call never
 * connects to an address the policy refuses; a socket whose number a
 * socket of this thread's had is a new one (curl closes some sockets of
 * failed connects without telling us). Another transport's table may
 * still name the number: that thread forgets it when its own curl opens a
 * socket with it, and until then its epoll no longer holds the closed
 * socket and its watch waits for nothing. */
static curl_socket_t on_open_socket(void *userp, curlsocktype purpose,
                                    struct curl_sockaddr *address) {
    (void)purpose;
    struct chorus_http_call *call = userp;
    struct chorus_http_client *client = call->client;
    if (call->restricted) {
        const struct sockaddr *sa = &address->addr;
        const unsigned char *a = NULL;
        int port = 0;
        if (address->family == AF_INET) {
            const struct sockaddr_in *in = (const void *)sa;
            a = (const unsigned char *)&in->sin_addr;
            port = ntohs(in->sin_port);
        } else if (address->family == AF_INET6) {
            const struct sockaddr_in6 *in6 = (const void *)sa;
            a = (const unsigned char *)&in6->sin6_addr;
            port = ntohs(in6->sin6_port);
        }
        const char *why = "not an IP socket";
        if (a) {
            uv_mutex_lock(&client->policy_lock);
            why = denied_addr(client, address->family, a, port);
            uv_mutex_unlock(&client->policy_lock);
        }
        if (why) {
            char ip[INET6_ADDRSTRLEN] = "?", target[INET6_ADDRSTRLEN + 16];
            if (a)
                inet_ntop(address->family, a, ip, sizeof ip);
            snprintf(target, sizeof target, "%s port %d", ip, port);
            deny(call, target, why);
            return CURL_SOCKET_BAD;
        }
    }
    curl_socket_t fd = socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
    if (fd >= 0)
        sock_forget(call->shard->t, fd);
    return fd;
}

static int host_allowed(struct chorus_http_call *call, const char *host) {
    for (char **h = call->allow_hosts; *h; h++)
        if (strcasecmp(*h, host) == 0)
            return 1;
    return 0;
}

/* Runs before every request curl sends, the first and each redirect hop,
 * on a new or a reused connection: the connected address (a reused
 * connection was opened by another call, unchecked) and the hop's URL
 * (host allow-list, no credentials) must pass. */
static int on_prereq(void *clientp, char *primary_ip, char *local_ip, int primary_port,
                     int local_port) {
    (void)local_ip;
    (void)local_port;
    struct chorus_http_call *call = clientp;
    if (call->restricted) {
        const char *why = chorus_http_egress_denied(call->client, primary_ip, primary_port);
        if (why) {
            char target[INET6_ADDRSTRLEN + 16];
            snprintf(target, sizeof target, "%.46s port %d", primary_ip, primary_port);
            deny(call, target, why);
            return CURL_PREREQFUNC_ABORT;
        }
    }
    char *url = NULL;
    curl_easy_getinfo(call->easy, CURLINFO_EFFECTIVE_URL, &url);
    CURLU *u = curl_url();
    char *user = NULL, *host = NULL;
    int rc = CURL_PREREQFUNC_ABORT;
    if (!u) {
        deny(call, "?", "out of memory");
    } else if (!url || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
               curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        deny(call, url ? url : "?", "the URL cannot be parsed");
    } else if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK) {
        deny(call, host, "the URL carries credentials (user:password@)");
    } else if (call->allow_hosts && !host_allowed(call, host)) {
        deny(call, host, "a redirect to a host not in the workflow's allow_hosts");
        call->denied_as = CHORUS_HTTP_FORBIDDEN_HOST;
    } else {
        rc = CURL_PREREQFUNC_OK;
    }
    curl_free(user);
    curl_free(host);
    curl_url_cleanup(u);
    return rc;
}

/* userp: the transport whose multi handle made the connection (curl keeps
 * the CURLOPT_CLOSESOCKETDATA of the transfer that opened it, and a
 * connection never leaves its multi handle). */
static int on_close_socket(void *userp, curl_socket_t fd) {
    sock_forget(userp, fd);
    return close(fd);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
    (void)easy;
    (void)socketp;
    struct shard *shard = userp;
    struct sock_ctx *ctx = sock_find(shard->t, fd);
    if (what == CURL_POLL_REMOVE) {
        if (ctx) {
            /* Done with for now, maybe not closed: an idle keep-alive
             * socket stays watched for reading (it will want that again),
             * and if it stirs before, on_socket stops watching it. */
            ctx->wanted = 0;
            sock_idle(ctx, 1);
            if (ctx->polling & EPOLLOUT)
                watch(ctx, 0);
        }
        return 0;
    }
    if (ctx && ctx->shard != shard) {
        /* closed behind our back, its number now another shard's socket */
        sock_forget(shard->t, fd);
        ctx = NULL;
    }
    if (!ctx && !(ctx = sock_add(shard, fd)))
        return -1;
    sock_idle(ctx, 0);
    int events = 0;
    if (what & CURL_POLL_IN)
        events |= EPOLLIN;
    if (what & CURL_POLL_OUT)
        events |= EPOLLOUT;
    ctx->wanted = events;
    watch(ctx, events);
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp) {
    (void)multi;
    struct shard *shard = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&shard->timer);
    else
        uv_timer_start(&shard->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

/* A new shard in t->shards, or NULL when out of memory. */
static struct shard *shard_new(struct transport *t) {
    struct shard *shard = calloc(1, sizeof *shard);
    if (!shard)
        return NULL;
    shard->t = t;
    if (!(shard->multi = curl_multi_init()) || uv_timer_init(t->uv, &shard->timer) != 0) {
        if (shard->multi)
            curl_multi_cleanup(shard->multi);
        free(shard);
        return NULL;
    }
    shard->timer.data = shard;
    CURLM *m = shard->multi;
    curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(m, CURLMOPT_SOCKETDATA, shard);
    curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(m, CURLMOPT_TIMERDATA, shard);
    curl_multi_setopt(m, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    /* No fixed cap on the connection cache: with a cap below the number of
     * connections in use, curl 7.88 scans every connection to find the
     * oldest idle one each time a transfer ends, which is quadratic at
     * thousands of concurrent calls. 0 lets the cache grow with the number
     * of transfers (curl's own default of 4 per handle added). */
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, 0L);
    t->shards[t->nshards++] = shard;
    return shard;
}

/* Where a new call goes in t (SHARD_CONNS): NULL only when out of memory. */
static struct shard *shard_pick(struct transport *t) {
    struct shard *roomy = NULL, *least = NULL;
    for (int i = 0; i < t->nshards; i++) {
        struct shard *s = t->shards[i];
        size_t load = s->socks > s->active ? s->socks : s->active;
        /* an idle connection may be to another host, and then the call
         * opens one more: bounded, so that a shard's cache stays small */
        if (s->idle_socks && load < 2 * SHARD_CONNS)
            return s;
        if (!roomy && load < SHARD_CONNS)
            roomy = s;
        if (!least || load < (least->socks > least->active ? least->socks : least->active))
            least = s;
    }
    if (roomy)
        return roomy;
    struct shard *fresh = t->nshards < MAX_SHARDS ? shard_new(t) : NULL;
    return fresh ? fresh : least;
}

/* ---- calls ---------------------------------------------------------------- */

static CURL *easy_new(struct chorus_http_call *call);

/* A call ready to fill (Lua thread): a kept one, whose handle keeps the
 * options of its last call (no curl_easy_reset: that cost as much as
 * setting them all again; easy_new() set those that never change or point
 * at the call, configure() sets every one a call depends on, including
 * those only some calls use, unless the handle has its value already), or a new one without a
 * handle yet (the transport makes it: curl_easy_init is a good part of a new call's cost). NULL
 * when out of memory. */
static struct chorus_http_call *call_take(struct chorus_http_client *client) {
    struct chorus_http_call *call = NULL;
    uv_mutex_lock(&client->lock);
    if (client->nidle > 0)
        call = client->idle[--client->nidle];
    uv_mutex_unlock(&client->lock);
    if (call) {
        CURL *easy = call->easy;
        struct easy_set set = call->set;
        char *body = call->resp_body;
        size_t cap = call->resp_cap;
        memset(call, 0, offsetof(struct chorus_http_call, htext_inline));
        call->easy = easy;
        call->set = set;
        call->resp_body = body; /* kept for this call's response */
        call->resp_cap = cap;
        if (body)
            body[0] = '\0';
        call->fail_msg[0] = call->denied[0] = call->errbuf[0] = '\0';
    } else if (!(call = calloc(1, sizeof *call))) {
        return NULL;
    }
    atomic_init(&call->refs, 0);
    call->client = client;
    call->htext = call->htext_inline;
    call->htext_cap = sizeof call->htext_inline;
    return call;
}

static void call_destroy(struct chorus_http_call *call) {
    if (call->easy)
        curl_easy_cleanup(call->easy);
    free(call->resp_body);
    free(call);
}

/* Frees what the call held and keeps it, with its handle and a small
 * response buffer, for the next one (either thread: nobody holds it, its
 * handle is in no multi handle). */
static void call_release(struct chorus_http_call *call) {
    struct chorus_http_client *client = call->client;
    for (char **h = call->allow_hosts; h && *h; h++)
        free(*h);
    free(call->allow_hosts);
    call->allow_hosts = NULL;
    curl_slist_free_all(call->headers);
    call->headers = NULL;
    if (call->htext != call->htext_inline)
        free(call->htext);
    call->htext = call->htext_inline;
    free(call->body);
    call->body = NULL;
    free(call->url);
    call->url = NULL;
    free(call->method);
    call->method = NULL;
    if (call->resp_cap > KEEP_BODY_BUFFER) {
        free(call->resp_body);
        call->resp_body = NULL;
        call->resp_cap = 0;
    }
    uv_mutex_lock(&client->lock);
    int kept = client->nidle < EASY_POOL && !client->close_requested;
    int trim = 0;
    if (kept) {
        client->idle[client->nidle++] = call;
    } else if (!client->close_requested && ++client->freed >= TRIM_AFTER) {
        client->freed = 0;
        trim = 1;
    }
    uv_mutex_unlock(&client->lock);
    if (!kept)
        call_destroy(call);
    if (trim && on_transport_thread) {
        trim_memory(client);
    } else if (trim) { /* the transports stop only after close_requested */
        atomic_store(&client->trim_due, 1);
        uv_async_send(&client->transports[0]->wake);
    }
}

/* Stops the transfer from inside a curl callback: the callback returns a
 * short count, curl fails the transfer, finish() reports why. */
static size_t stop(struct chorus_http_call *call, enum chorus_http_error why, const char *msg) {
    call->fail = why;
    snprintf(call->fail_msg, sizeof call->fail_msg, "%s", msg);
    return 0;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata) {
    struct chorus_http_call *call = userdata;
    size_t n = size * nmemb;
    /* Counted as it arrives, before it is stored: an endless body costs
     * the limit, not the process's memory. */
    if (n > call->max_body - call->resp_len) {
        char msg[96];
        snprintf(msg, sizeof msg, "response body exceeds max_response_bytes (%zu bytes)",
                 call->max_body);
        return stop(call, CHORUS_HTTP_TOO_LARGE, msg);
    }
    if (call->metered) {
        if (call->denied_mem)
            return stop(call, CHORUS_HTTP_MEMORY, "response body exceeds the run's memory cap");
        /* Past the slack the owner must take the bytes first (GRANT_SLACK):
         * curl keeps this chunk and hands it again after the unpause. */
        if (call->resp_len + n > call->granted + GRANT_SLACK) {
            call->want = call->resp_len + n - call->granted;
            call->paused = 1;
            mq_push(call, M_GRANT);
            return CURL_WRITEFUNC_PAUSE;
        }
    }
    if (chorus_http_body_add(call, ptr, n) != 0)
        return 0; /* curl fails the transfer with CURLE_WRITE_ERROR */
    return n;
}

int chorus_http_body_add(struct chorus_http_call *call, const char *s, size_t n) {
    if (call->resp_len + n + 1 > call->resp_cap) {
        size_t cap = call->resp_cap ? call->resp_cap : 1024;
        while (cap < call->resp_len + n + 1)
            cap *= 2;
        char *p = realloc(call->resp_body, cap);
        if (!p)
            return -1;
        call->resp_body = p;
        call->resp_cap = cap;
    }
    memcpy(call->resp_body + call->resp_len, s, n);
    call->resp_len += n;
    call->resp_body[call->resp_len] = '\0';
    return 0;
}

int chorus_http_htext_add(struct chorus_http_call *call, const char *s, size_t n) {
    if (call->htext_len + n + 1 > call->htext_cap) {
        size_t cap = call->htext_cap * 2;
        while (cap < call->htext_len + n + 1)
            cap *= 2;
        char *p = call->htext == call->htext_inline ? malloc(cap) : realloc(call->htext, cap);
        if (!p)
            return -1;
        if (call->htext == call->htext_inline)
            memcpy(p, call->htext_inline, call->htext_len);
        call->htext = p;
        call->htext_cap = cap;
    }
    memcpy(call->htext + call->htext_len, s, n);
    call->htext_len += n;
    return 0;
}

/* Appends s (n bytes, trimmed of blanks and the line end) and a NUL. */
static int add_header_text(struct chorus_http_call *call, const char *s, size_t n) {
    while (n && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        n--;
    return chorus_http_htext_add(call, s, n) != 0 || chorus_http_htext_add(call, "", 1) != 0 ? -1
                                                                                             : 0;
}

/* curl hands us each header line; a status line starts a new response (after
 * a 100 Continue or a redirect), so earlier headers are dropped. */
static size_t on_header(char *line, size_t size, size_t nitems, void *userdata) {
    struct chorus_http_call *call = userdata;
    size_t n = size * nitems;
    int status_line = n >= 5 && memcmp(line, "HTTP/", 5) == 0;
    if (status_line) {
        call->htext_len = 0;
        call->nheaders = 0;
        call->header_bytes = 0;
    }
    if (n > call->max_header_bytes - call->header_bytes) {
        char msg[96];
        snprintf(msg, sizeof msg, "response headers exceed %zu bytes", call->max_header_bytes);
        return stop(call, CHORUS_HTTP_TOO_LARGE, msg);
    }
    call->header_bytes += n;
    if (status_line)
        return n;
    char *colon = memchr(line, ':', n);
    if (!colon)
        return n;
    size_t name_len = (size_t)(colon - line);
    if (add_header_text(call, line, name_len) != 0 ||
        add_header_text(call, colon + 1, n - name_len - 1) != 0)
        return 0; /* curl fails the transfer */
    call->nheaders++;
    return n;
}

static enum chorus_http_error classify(CURLcode code) {
    switch (code) {
    case CURLE_OK:
        return CHORUS_HTTP_OK;
    case CURLE_OPERATION_TIMEDOUT:
        return CHORUS_HTTP_TIMEOUT;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
        return CHORUS_HTTP_CONNECT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        return CHORUS_HTTP_TLS;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2_STREAM:
        return CHORUS_HTTP_RESET;
    case CURLE_FILESIZE_EXCEEDED: /* a Content-Length past CURLOPT_MAXFILESIZE */
        return CHORUS_HTTP_TOO_LARGE;
    default:
        return CHORUS_HTTP_PROTOCOL;
    }
}

/* Builds the response of a finished call and runs its done callback (the
 * Lua thread's; the transport wrote the result before DONE). over_cap: the
 * charge callback refused the body's last bytes. */
static void finish(struct chorus_http_call *call, int over_cap) {
    CURLcode code = call->code;
    struct chorus_http_response res = {0};
    struct chorus_http_header some[32], *headers = some;
    char msg[96];
    res.error = classify(code);
    res.message = call->errbuf[0] ? call->errbuf : curl_easy_strerror(code);
    if (code != CURLE_OK && call->denied[0]) {
        res.error = call->denied_as;
        res.message = call->denied;
    } else if (code != CURLE_OK && call->fail != CHORUS_HTTP_OK) {
        res.error = call->fail;
        res.message = call->fail_msg;
    } else if (code == CURLE_FILESIZE_EXCEEDED) {
        snprintf(msg, sizeof msg, "response Content-Length exceeds max_response_bytes (%zu bytes)",
                 call->max_body);
        res.message = msg;
    } else if (over_cap) {
        res.error = CHORUS_HTTP_MEMORY;
        res.message = "response body exceeds the run's memory cap";
    }
    if (res.error == CHORUS_HTTP_OK && call->nheaders > sizeof some / sizeof *some &&
        !(headers = malloc(call->nheaders * sizeof *headers))) {
        res.error = CHORUS_HTTP_PROTOCOL;
        res.message = "out of memory reading the response headers";
    }
    if (res.error == CHORUS_HTTP_OK) {
        res.status = call->status;
        res.http_version = call->http_version;
        char *p = call->htext;
        for (size_t i = 0; i < call->nheaders; i++) {
            headers[i].name = p;
            p += strlen(p) + 1;
            headers[i].value = p;
            p += strlen(p) + 1;
        }
        res.headers = headers;
        res.nheaders = call->nheaders;
        res.body = call->resp_body ? call->resp_body : "";
        res.body_len = call->resp_len;
    }
    res.duration = (double)(call->end_ns - call->start_ns) / 1e9;
    call->done(&res, call->data);
    if (headers != some)
        free(headers);
}

/* A method curl may send: GET, HEAD or upper-case letters. */
static int method_ok(const char *method) {
    if (!*method)
        return 0;
    for (const char *p = method; *p; p++)
        if (*p < 'A' || *p > 'Z')
            return 0;
    return 1;
}

static void set_method(struct chorus_http_call *call) {
    CURL *e = call->easy;
    const char *method = call->method;
    /* from a pooled handle's last call: a custom method, HEAD's no-body, a
     * POST's body and method (CURLOPT_HTTPGET resets the last two) */
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, NULL);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)-1);
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    if (strcmp(method, "GET") == 0)
        return;
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
}

static int set_body(struct chorus_http_call *call, const struct chorus_http_request *req) {
    if (!req->body)
        return 0;
    call->body = malloc(req->body_len + 1);
    if (!call->body)
        return -1;
    memcpy(call->body, req->body, req->body_len);
    call->body[req->body_len] = '\0';
    call->body_len = req->body_len;
    return 0;
}

static int set_headers(struct chorus_http_call *call, const char *const *headers, int body) {
    /* No "Expect: 100-continue" round trip for larger bodies (without a
     * body curl sends no Expect: no list entry to build and free). */
    struct curl_slist *list = NULL;
    if (body && !(list = curl_slist_append(NULL, "Expect:")))
        return -1;
    for (size_t i = 0; headers && headers[i]; i++) {
        struct curl_slist *next = curl_slist_append(list, headers[i]);
        if (!next) {
            curl_slist_free_all(list);
            return -1;
        }
        list = next;
    }
    call->headers = list;
    return 0;
}

static int copy_hosts(struct chorus_http_call *call, const char *const *hosts) {
    if (!hosts)
        return 0;
    size_t n = 0;
    while (hosts[n])
        n++;
    call->allow_hosts = calloc(n + 1, sizeof *call->allow_hosts);
    if (!call->allow_hosts)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (!(call->allow_hosts[i] = strdup(hosts[i])))
            return -1; /* call_free frees those copied */
    return 0;
}

/* Whether the environment names a proxy (or hosts to send without one):
 * with none, curl's lookup of those variables for every transfer (four to
 * six getenv walks of the environment, the copies freed again) finds
 * nothing, and an empty proxy says the same at no cost. */
static int proxy_env(void) {
    static const char *const names[] = {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                                        "all_proxy",  "ALL_PROXY",  "no_proxy",    "NO_PROXY"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (getenv(names[i]))
            return 1;
    return 0;
}

/* A new easy handle for call, with the options that are the same for every
 * call it carries: a kept call's handle keeps them (call_free does not
 * reset it). */
static CURL *easy_new(struct chorus_http_call *call) {
    CURL *e = curl_easy_init();
    if (!e)
        return NULL;
    curl_easy_setopt(e, CURLOPT_PRIVATE, call);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, call);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, call);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, call->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, call);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, call);
    if (!proxy_env()) {
        curl_easy_setopt(e, CURLOPT_PROXY, "");
        curl_easy_setopt(e, CURLOPT_NOPROXY, "");
    }
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
    return e;
}

/* A long option, set when the handle may hold another value. */
static void set_long(CURL *e, int known, long *had, CURLoption opt, long v) {
    if (known && *had == v)
        return;
    curl_easy_setopt(e, opt, v);
    *had = v;
}

/* The options that depend on the call: every one, each time, unless the
 * handle has it already (call->set). */
static void configure(struct chorus_http_call *call) {
    CURL *e = call->easy;
    struct easy_set *set = &call->set;
    int known = set->known;
    curl_easy_setopt(e, CURLOPT_URL, call->url);
    /* a kept handle may have carried a call of another transport */
    if (!known || set->t != call->t)
        curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, set->t = call->t);
    /* Each hop's URL and address are checked when one may differ from
     * what the caller checked: redirects followed, or a restricted call
     * (whose connection may be a reused one, opened unchecked). */
    int check = call->restricted || call->follow_redirects;
    if (!known || set->check != check)
        curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, (set->check = check) ? on_prereq : NULL);
    /* Over TLS, wait for a connection that may multiplex (HTTP/2) rather than
     * open more; over plain HTTP/1.1 that wait would serialize calls. */
    int tls = strncmp(call->url, "https://", 8) == 0;
    if (!known || set->tls != tls)
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, (set->tls = tls) ? 1L : 0L);
    /* To find a connection to reuse, curl 7.88 walks every connection to
     * the host, in use or not: with thousands of calls parked on one
     * upstream each new call cost a walk of them all (much of the 10 to
     * 20 s recovery took to resume 10,000 parked runs). A plain HTTP/1.1
     * connection in use never takes another call, so when no socket is
     * idle there is nothing to find: skip the search. (Over TLS a busy
     * HTTP/2 connection may take one more stream.) */
    int fresh = !tls && call->shard->idle_socks == 0;
    if (!known || set->fresh != fresh)
        curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, (set->fresh = fresh) ? 1L : 0L);
    if (!known || set->insecure != call->insecure) {
        set->insecure = call->insecure;
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, call->insecure ? 0L : 1L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, call->insecure ? 0L : 2L);
    }
    if (!known || set->follow != call->follow_redirects)
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION,
                         (set->follow = call->follow_redirects) ? 1L : 0L);
    set_long(e, known, &set->connect_timeout_ms, CURLOPT_CONNECTTIMEOUT_MS,
             call->connect_timeout_ms);
    set_long(e, known, &set->timeout_ms, CURLOPT_TIMEOUT_MS, call->timeout_ms);
    /* refuses a Content-Length past the limit before reading the body */
    curl_off_t max = call->max_body < (size_t)INT64_MAX ? (curl_off_t)call->max_body : 0;
    if (!known || set->max_filesize != max)
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, set->max_filesize = max);
    int plain = !call->body && strcmp(call->method, "GET") == 0;
    if (!(known && set->plain && plain))
        set_method(call);
    set->plain = plain;
    if (call->body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, call->body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)call->body_len);
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, call->headers);
    set->known = 1;
}

/* ---- the transport thread -------------------------------------------------- */

static void link_running(struct chorus_http_call *call) {
    struct transport *t = call->t;
    call->prev = NULL;
    call->next = t->running;
    if (t->running)
        t->running->prev = call;
    t->running = call;
    call->shard->active++;
    call->in_multi = 1;
}

/* Takes a transfer out of its multi handle (curl closes its connection
 * unless it ended cleanly) and ends the transport's hold on the call. */
static void end_transfer(struct chorus_http_call *call) {
    curl_multi_remove_handle(call->shard->multi, call->easy);
    if (call->prev)
        call->prev->next = call->next;
    else
        call->t->running = call->next;
    if (call->next)
        call->next->prev = call->prev;
    call->shard->active--;
    call->in_multi = 0;
}

/* A transfer that could not start: its DONE carries why. */
static void start_failed(struct chorus_http_call *call, const char *why) {
    call->code = CURLE_FAILED_INIT;
    call->fail = CHORUS_HTTP_PROTOCOL;
    snprintf(call->fail_msg, sizeof call->fail_msg, "%s", why);
    call->end_ns = uv_hrtime();
    mq_push(call, M_DONE);
}

static struct transport *thread_pick(struct chorus_http_client *client);

static void t_start(struct chorus_http_call *call) {
    if (chorus_plain_start(call) == 0)
        return;
    if (call->t->inline_) { /* curl's calls are the threads' (the Lua thread's, here) */
        struct chorus_http_client *client = call->client;
        call->t->calls--;
        client->inline_calls--;
        call->t = thread_pick(client);
        call->t->calls++;
        tq_push(call, T_START);
        return;
    }
    if (!(call->shard = shard_pick(call->t))) {
        start_failed(call, "out of memory (a curl multi handle)");
        return;
    }
    if (!call->easy && !(call->easy = easy_new(call))) {
        start_failed(call, "out of memory (a curl handle)");
        return;
    }
    configure(call);
    struct shard *shard = call->shard;
    CURLMcode mc = curl_multi_add_handle(shard->multi, call->easy);
    if (mc != CURLM_OK) {
        char why[96];
        snprintf(why, sizeof why, "cannot start transfer: %s", curl_multi_strerror(mc));
        start_failed(call, why);
        return;
    }
    atomic_fetch_add_explicit(&call->refs, 1, memory_order_relaxed); /* the transfer's */
    link_running(call);
    /* Send now rather than when curl's 0 ms timer fires on the next loop
     * turn. Finished transfers are left for check_done, which the 0 ms
     * timer below guarantees a turn for. */
    int running;
    curl_multi_socket_action(shard->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    if (running < (int)shard->active)
        uv_timer_start(&shard->timer, on_timer, 0, 0);
}

/* The Lua thread answered a grant request: resume the paused transfer
 * (curl hands the kept chunk to on_body again, which takes it or, denied,
 * stops the transfer). */
static void t_grant(struct chorus_http_call *call) {
    if (call->plain) {
        chorus_plain_grant(call);
        return;
    }
    if (!call->in_multi || !call->paused)
        return;
    call->paused = 0;
    curl_easy_pause(call->easy, CURLPAUSE_CONT);
    check_done(call->shard);
}

static void check_done(struct shard *shard) {
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(shard->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode code = msg->data.result;
        struct chorus_http_call *call = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&call);
        call->code = code;
        call->end_ns = uv_hrtime();
        if (code == CURLE_OK) {
            curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &call->status);
            curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &call->http_version);
        }
        end_transfer(call);
        mq_push(call, M_DONE);
        call_unref(call); /* the transfer's */
    }
}

static void free_shard(uv_handle_t *handle) { free(handle->data); }

/* The close callback of the inline transport's two handles (wake, epoll):
 * the second frees it (libuv finishes closes in its own order). */
static void free_inline(uv_handle_t *handle) {
    struct transport *t = handle->data;
    if (--t->handles_open > 0)
        return;
    close(t->epfd);
    free(t);
}

/* Ends every transfer of t (no DONE: the Lua thread cancelled them all)
 * and closes its handles; its loop then ends. */
static void t_shutdown(struct transport *t) {
    t->stopping = 1;
    chorus_plain_shutdown(t);
    while (t->running) {
        struct chorus_http_call *call = t->running;
        end_transfer(call);
        call_unref(call);
    }
    /* closes the sockets, through on_close_socket; then any curl closed
     * behind our back */
    for (int i = 0; i < t->nshards; i++)
        curl_multi_cleanup(t->shards[i]->multi);
    for (size_t fd = 0; fd < t->nsocks; fd++)
        sock_forget(t, (curl_socket_t)fd);
    free(t->socks);
    t->socks = NULL;
    t->nsocks = 0;
    for (int i = 0; i < t->nshards; i++) {
        t->shards[i]->timer.data = t->shards[i];
        uv_close((uv_handle_t *)&t->shards[i]->timer, free_shard);
    }
    t->nshards = 0;
    /* the inline transport is freed with its last handle; a thread's
     * after its thread ended (chorus_http_client_close) */
    uv_close((uv_handle_t *)&t->epoll, t->inline_ ? free_inline : NULL);
    uv_close((uv_handle_t *)&t->wake, t->inline_ ? free_inline : NULL);
}

/* Ends the call's transfer, whichever engine carries it (the call was
 * cancelled). */
static void t_cancel(struct chorus_http_call *call) {
    if (call->in_multi) {
        end_transfer(call);
        call_unref(call); /* the transfer's */
    }
    if (call->plain)
        chorus_plain_cancel(call);
}

static void on_wake_transport(uv_async_t *async) {
    struct transport *t = async->data;
    if (t->stopping)
        return;
    int close_requested = 0;
    struct chorus_http_call *next;
    for (struct chorus_http_call *c = take_batch(t->client, t, &close_requested); c; c = next) {
        next = c->t_batch;
        /* a call cancelled before it started never connects */
        if ((c->t_work & T_START) && !(c->t_work & T_CANCEL) && !close_requested)
            t_start(c);
        if (c->t_work & T_CANCEL)
            t_cancel(c);
        if (c->t_work & T_GRANT)
            t_grant(c);
        call_unref(c); /* the queue's */
    }
    if (!t->inline_ && atomic_load_explicit(&t->client->trim_due, memory_order_relaxed) &&
        atomic_exchange(&t->client->trim_due, 0))
        trim_memory(t->client);
    if (close_requested)
        t_shutdown(t);
}

static void transport_main(void *arg) {
    struct transport *t = arg;
    on_transport_thread = 1;
    uv_run(&t->loop, UV_RUN_DEFAULT);
    close(t->epfd);
}

/* A new transport thread with its loop and first shard, running; NULL when
 * one cannot be made (the Lua thread's). */
static struct transport *transport_new(struct chorus_http_client *client) {
    struct transport *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->client = client;
    t->uv = &t->loop;
    atomic_init(&t->idle_socks, 0);
    if ((t->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
        goto fail_epfd;
    if (uv_loop_init(&t->loop) != 0)
        goto fail_loop;
    if (uv_async_init(&t->loop, &t->wake, on_wake_transport) != 0)
        goto fail_async;
    t->wake.data = t;
    if (uv_poll_init(&t->loop, &t->epoll, t->epfd) != 0)
        goto fail_epoll;
    t->epoll.data = t;
    if (uv_poll_start(&t->epoll, UV_READABLE, on_epoll) != 0 || !shard_new(t))
        goto fail_shard;
    if (uv_thread_create(&t->thread, transport_main, t) != 0)
        goto fail_thread;
    client->transports[client->ntransports++] = t;
    return t;
fail_thread:
    curl_multi_cleanup(t->shards[0]->multi);
    t->shards[0]->timer.data = t->shards[0];
    uv_close((uv_handle_t *)&t->shards[0]->timer, free_shard);
fail_shard:
    uv_close((uv_handle_t *)&t->epoll, NULL);
fail_epoll:
    uv_close((uv_handle_t *)&t->wake, NULL);
    uv_run(&t->loop, UV_RUN_DEFAULT);
fail_async:
    uv_loop_close(&t->loop);
fail_loop:
    close(t->epfd);
fail_epfd:
    free(t);
    return NULL;
}

/* The Lua thread's own transport: the same machinery on the Lua thread's
 * loop, no thread. Its handles do not keep the loop running (the client's
 * wake_main does, while calls are in flight). NULL when it cannot be made. */
static struct transport *transport_new_inline(struct chorus_http_client *client) {
    struct transport *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->client = client;
    t->uv = client->loop;
    t->inline_ = 1;
    atomic_init(&t->idle_socks, 0);
    if ((t->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
        free(t);
        return NULL;
    }
    if (uv_async_init(t->uv, &t->wake, on_wake_transport) != 0) {
        close(t->epfd);
        free(t);
        return NULL;
    }
    t->wake.data = t;
    uv_unref((uv_handle_t *)&t->wake);
    t->handles_open = 1;
    if (uv_poll_init(t->uv, &t->epoll, t->epfd) != 0) {
        uv_close((uv_handle_t *)&t->wake, free_inline);
        return NULL;
    }
    t->epoll.data = t;
    t->handles_open = 2;
    if (uv_poll_start(&t->epoll, UV_READABLE, on_epoll) != 0) {
        uv_close((uv_handle_t *)&t->epoll, free_inline);
        uv_close((uv_handle_t *)&t->wake, free_inline);
        return NULL;
    }
    uv_unref((uv_handle_t *)&t->epoll);
    return t;
}

/* Whether the Lua thread's loop has time for calls of its own: its busy
 * share (1 - idle time / wall time) over the last BUSY_WINDOW_NS, with
 * hysteresis. A call made on the Lua thread's loop costs less CPU in all
 * (no hand-over to a thread and back: two wake-ups, two context switches)
 * and answers sooner, but puts the transport's work on the thread that runs
 * every script; under load the threads take it. */
#define BUSY_WINDOW_NS 50000000u
#define INLINE_BELOW 0.35
#define THREADS_ABOVE 0.6
static int loop_has_time(struct chorus_http_client *client) {
    if (client->inline_mode)
        return client->inline_mode > 0;
    uint64_t now = uv_hrtime();
    if (now - client->busy_at >= BUSY_WINDOW_NS) {
        uint64_t idle = uv_metrics_idle_time(client->loop);
        if (client->busy_at && idle) {
            double busy =
                1.0 - (double)(idle - client->idle_seen) / (double)(now - client->busy_at);
            if (busy < INLINE_BELOW)
                client->inline_now = 1;
            else if (busy > THREADS_ABOVE)
                client->inline_now = 0;
        }
        client->busy_at = now;
        client->idle_seen = idle;
    }
    return client->inline_now;
}

/* Where a new call goes (TRANSPORT_CALLS); NULL only when no transport
 * runs (the first could not be made). */
static struct transport *thread_pick(struct chorus_http_client *client) {
    struct transport *roomy = NULL, *least = NULL;
    for (int i = 0; i < client->ntransports; i++) {
        struct transport *t = client->transports[i];
        /* an idle connection may be to another host: bounded as for shards */
        if (atomic_load_explicit(&t->idle_socks, memory_order_relaxed) &&
            t->calls < 2 * TRANSPORT_CALLS)
            return t;
        if (!roomy && t->calls < TRANSPORT_CALLS)
            roomy = t;
        if (!least || t->calls < least->calls)
            least = t;
    }
    if (roomy)
        return roomy;
    if (client->ntransports < client->max_transports) {
        struct transport *fresh = transport_new(client);
        if (fresh)
            return fresh;
        client->max_transports = client->ntransports; /* no second try per call */
    }
    return least;
}

/* Where a new call goes: the Lua thread's own transport while its loop has
 * time for it (a call the plain engine carries), else a thread. */
static struct transport *transport_pick(struct chorus_http_client *client,
                                        const struct chorus_http_call *call) {
    if (!client->inline_off && loop_has_time(client) && chorus_plain_likely(call)) {
        if (!client->inline_t && !(client->inline_t = transport_new_inline(client)))
            client->inline_off = 1;
        if (client->inline_t) {
            client->inline_calls++;
            return client->inline_t;
        }
    }
    return thread_pick(client);
}

/* ---- the Lua thread --------------------------------------------------------- */

/* A call the Lua thread no longer waits for: out of client->calls, and an
 * idle client lets the loop end (`chorus run` ends when its run does). */
static void main_forget(struct chorus_http_call *call) {
    struct chorus_http_client *client = call->client;
    if (call->mprev)
        call->mprev->mnext = call->mnext;
    else
        client->calls = call->mnext;
    if (call->mnext)
        call->mnext->mprev = call->mprev;
    call->t->calls--;
    if (--client->active == 0)
        uv_unref((uv_handle_t *)&client->wake_main);
    /* while closing, the owners of the data are gone already */
    if (call->charged && call->charge && !client->closing)
        call->charge(call->data, -(long long)call->charged);
    call->charged = 0;
}

/* The transport asks for the bytes its paused transfer holds past its
 * grant: charge them to the call's owner, or refuse. */
static void m_grant(struct chorus_http_call *call) {
    if (call->cancelled)
        return;
    if (call->charge(call->data, (long long)call->want) == 0) {
        call->charged += call->want;
        call->granted += call->want;
    } else {
        call->denied_mem = 1;
    }
    tq_push(call, T_GRANT);
}

static void m_done(struct chorus_http_call *call) {
    if (call->cancelled)
        return;
    /* the body's bytes within the slack, charged now that they are known */
    int over_cap = 0;
    if (call->code == CURLE_OK && call->metered && call->resp_len > call->granted) {
        size_t rest = call->resp_len - call->granted;
        if (call->charge(call->data, (long long)rest) == 0)
            call->charged += rest;
        else
            over_cap = 1;
    }
    finish(call, over_cap);
    call->cancelled = 1; /* done: nothing more is delivered */
    main_forget(call);
    call_unref(call); /* the Lua thread's */
}

static void on_wake_main(uv_async_t *async) {
    struct chorus_http_client *client = async->data;
    struct chorus_http_call *next;
    for (struct chorus_http_call *c = take_batch(client, NULL, NULL); c; c = next) {
        next = c->m_batch;
        if (c->m_work & M_GRANT)
            m_grant(c);
        if (c->m_work & M_DONE)
            m_done(c);
        call_unref(c); /* the queue's */
    }
}

static void on_drain(uv_idle_t *idle) {
    struct chorus_http_client *client = idle->data;
    uv_idle_stop(idle);
    on_wake_main(&client->wake_main);
}

struct chorus_http_call *chorus_http_start(struct chorus_http_client *client,
                                           const struct chorus_http_request *req,
                                           chorus_http_done_fn done, void *data, char *err,
                                           size_t errlen) {
    if (!method_ok(req->method)) {
        snprintf(err, errlen, "invalid HTTP method '%s'", req->method);
        return NULL;
    }
    struct chorus_http_call *call = call_take(client);
    if (!call) {
        snprintf(err, errlen, "out of memory (a call)");
        return NULL;
    }
    call->done = done;
    call->data = data;
    call->charge = req->charge;
    call->metered = req->charge != NULL;
    call->restricted = req->restricted;
    call->connect_timeout_ms = req->connect_timeout_ms;
    call->timeout_ms = req->timeout_ms;
    call->insecure = req->insecure;
    call->follow_redirects = req->follow_redirects;
    call->max_body = req->max_body ? req->max_body : CHORUS_HTTP_DEFAULT_MAX_BODY;
    call->max_header_bytes =
        req->max_header_bytes ? req->max_header_bytes : CHORUS_HTTP_DEFAULT_MAX_HEADER_BYTES;
    if (!(call->url = strdup(req->url)) || !(call->method = strdup(req->method)) ||
        copy_hosts(call, req->allow_hosts) != 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* The copies of the request body, headers and URL are the caller's
     * memory as the response body is: told to the charge callback, given
     * back when the call ends (one body string sent by many calls at once
     * was a copy per call, outside the run's memory cap; so was a URL of
     * megabytes, three times: this copy, curl's and the request line curl
     * writes, 360 MB of the server for 60 calls under a 64 MiB cap). */
    size_t held = req->body ? req->body_len : 0;
    held += 3 * strlen(req->url);
    for (const char *const *h = req->headers; h && *h; h++)
        held += strlen(*h);
    if (held && call->charge) {
        if (call->charge(data, (long long)held) != 0) {
            snprintf(err, errlen, "the request's body, headers and URL pass the memory cap");
            goto fail;
        }
        call->charged += held;
    }
    if (set_body(call, req) != 0 || set_headers(call, req->headers, req->body != NULL) != 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    call->start_ns = uv_hrtime();
    call->t = transport_pick(client, call);
    call->t->calls++;
    atomic_store_explicit(&call->refs, 1, memory_order_relaxed); /* the Lua thread's */
    call->mnext = client->calls;
    if (client->calls)
        client->calls->mprev = call;
    client->calls = call;
    if (client->active++ == 0)
        uv_ref((uv_handle_t *)&client->wake_main);
    if (call->t->inline_)
        t_start(call); /* sends now; what it tells comes back through mq, later */
    else
        tq_push(call, T_START);
    return call;
fail:
    if (call->charged)
        call->charge(data, -(long long)call->charged);
    call_release(call);
    return NULL;
}

void chorus_http_cancel(struct chorus_http_call *call) {
    /* Removing a transfer mid-flight makes curl close its connection rather
     * than return it to the pool: the upstream sees the client leave. */
    call->cancelled = 1;
    main_forget(call);
    if (call->t->inline_) /* on this thread: at once (nothing of it calls back into Lua) */
        t_cancel(call);
    else
        tq_push(call, T_CANCEL);
    call_unref(call); /* the Lua thread's */
}

struct chorus_http_client *chorus_http_client_new_threads(uv_loop_t *loop, int max_threads) {
    struct chorus_http_client *client = calloc(1, sizeof *client);
    if (!client)
        return NULL;
    client->loop = loop;
    client->proxied = proxy_env();
    atomic_init(&client->plain_calls, 0);
    atomic_init(&client->trim_due, 0);
    if (max_threads <= 0)
        max_threads = (int)uv_available_parallelism();
    client->max_transports = max_threads < 1                ? 1
                             : max_threads > MAX_TRANSPORTS ? MAX_TRANSPORTS
                                                            : max_threads;
    if (uv_mutex_init(&client->lock) != 0)
        goto fail_lock;
    if (uv_mutex_init(&client->policy_lock) != 0)
        goto fail_policy;
    if (uv_async_init(loop, &client->wake_main, on_wake_main) != 0)
        goto fail_masync;
    client->wake_main.data = client;
    uv_unref((uv_handle_t *)&client->wake_main); /* until a call is in flight */
    uv_idle_init(loop, &client->drain);
    client->drain.data = client;
    uv_unref((uv_handle_t *)&client->drain);
    client->handles_open = 2;
    if (!transport_new(client))
        goto fail_transport;
    return client;
fail_transport:
    uv_close((uv_handle_t *)&client->drain, NULL);
    uv_close((uv_handle_t *)&client->wake_main, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
fail_masync:
    uv_mutex_destroy(&client->policy_lock);
fail_policy:
    uv_mutex_destroy(&client->lock);
fail_lock:
    free(client);
    return NULL;
}

struct chorus_http_client *chorus_http_client_new(uv_loop_t *loop) {
    return chorus_http_client_new_threads(loop, 0);
}

int chorus_http_threads(const struct chorus_http_client *client) { return client->ntransports; }

/* The close callback of the client's two handles: the second frees it. */
static void free_client(uv_handle_t *handle) {
    struct chorus_http_client *client = handle->data;
    if (--client->handles_open > 0)
        return;
    uv_mutex_destroy(&client->lock);
    uv_mutex_destroy(&client->policy_lock);
    free(client->allow);
    free(client);
}

void chorus_http_client_close(struct chorus_http_client *client) {
    client->closing = 1;
    while (client->calls)
        chorus_http_cancel(client->calls);
    uv_mutex_lock(&client->lock);
    client->close_requested = 1;
    uv_mutex_unlock(&client->lock);
    if (client->inline_t) { /* its cancels, then its end, here and now */
        on_wake_transport(&client->inline_t->wake);
        client->inline_t = NULL;
    }
    for (int i = 0; i < client->ntransports; i++)
        uv_async_send(&client->transports[i]->wake);
    for (int i = 0; i < client->ntransports; i++) {
        struct transport *t = client->transports[i];
        uv_thread_join(&t->thread);
        uv_loop_close(&t->loop);
        free(t);
    }
    client->ntransports = 0;
    /* what the transport queued for us before it ended: nobody waits for it */
    struct chorus_http_call *next;
    for (struct chorus_http_call *c = take_batch(client, NULL, NULL); c; c = next) {
        next = c->m_batch;
        call_unref(c);
    }
    while (client->nidle > 0)
        call_destroy(client->idle[--client->nidle]);
    uv_close((uv_handle_t *)&client->drain, free_client);
    uv_close((uv_handle_t *)&client->wake_main, free_client);
}
