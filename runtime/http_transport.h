/* http_transport.h — what http_client.c and http_plain.c share: the
 * client, its transport threads, their shards and the calls (see
 * http_client.c for how they work together). Not an interface: only the
 * two files of the HTTP client include it. */
#ifndef CHORUS_HTTP_TRANSPORT_H
#define CHORUS_HTTP_TRANSPORT_H

#include <curl/curl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "http_client.h"

struct plain_conn;

/* Calls, each with its easy handle, are kept for reuse: creating a handle
 * costs more than a call, and a kept call's handle keeps the options that
 * point at the call. */
#define EASY_POOL 256
#define HEADER_TEXT 512
/* A kept call keeps a response buffer up to this size for the next one. */
#define KEEP_BODY_BUFFER 8192
/* After a burst of calls past the pool (EASY_POOL), every TRIM_AFTER calls
 * freed give their memory back to the system (malloc_trim). glibc keeps
 * what free() returns in its free lists, still resident: in the 5,000-request
 * wave (10,000 calls at once) the freed handles, their receive buffers'
 * touched pages and the freed calls stayed resident while the answers went
 * out and libmicrohttpd touched every page of each connection's pool (it
 * zeroes the pool after each request), so the peak was those two added
 * (about 75 KB per run); given back as the calls end, the peak is the runs
 * in flight alone (about 62 KB). A trim walks every arena's free chunks:
 * 5 to 15 ms at that wave's 300 MB, once per 1,024 freed calls (each of
 * which cost a curl_easy_init and a curl_easy_cleanup already); a steady
 * load within the pool never frees a call, so never trims. The trim is a
 * transport thread's: made on the Lua thread (which drops most calls' last
 * reference) it stalled every run and request for those milliseconds. */
#define TRIM_AFTER 1024
/* Response body bytes the transport thread may hold beyond what the Lua
 * thread has charged to the call's owner (chorus_http_charge_fn, which
 * reads the run's memory and must run there): past it the transfer pauses
 * until the Lua thread charges the bytes held (or refuses them, and the
 * call ends with CHORUS_HTTP_MEMORY). A body within it is charged when the
 * call completes, so the usual small response costs no round trip. curl's
 * own receive buffer per transfer is as large. */
#define GRANT_SLACK ((size_t)16 << 10)
/* Transfers are spread over several multi handles (shards), each with its
 * own connection cache, once one holds SHARD_CONNS connections or
 * transfers: curl 7.88 walks a cache's connections to the host when a
 * transfer looks for one to reuse (ConnectionExists) and up to all of them
 * when a finished transfer's handle is removed (close_connect_only in
 * curl_multi_remove_handle), so with one cache N concurrent calls cost
 * N² steps (10,000 calls: half the CPU of the 5,000-request wave). A call
 * goes to the first shard with an idle connection (one it may reuse) and
 * fewer than twice SHARD_CONNS, else the first with room, else a new
 * shard, up to MAX_SHARDS; then the least loaded one. Below SHARD_CONNS
 * concurrent calls everything stays in the first shard, as with one multi
 * handle. */
#define SHARD_CONNS 256
#define MAX_SHARDS 64
/* Transport threads, each with its loop and shards: up to one per online
 * CPU, at most MAX_TRANSPORTS (or what chorus_http_client_new_threads
 * asks). Resuming 10,000 parked runs after a restart opens 10,000 loopback
 * connections at once: connect, send, socket and epoll_ctl, page faults
 * and curl's own work per connection took one transport thread 1.2 s of
 * CPU, twice the Lua thread's, and that thread alone set the time. A call
 * goes, as with shards, to the first thread with an idle connection (one
 * it may reuse: calls to one host keep using one thread's keep-alive
 * connections) and fewer than twice TRANSPORT_CALLS calls, else the first
 * with fewer than TRANSPORT_CALLS, else a new thread, else the least
 * loaded. Below TRANSPORT_CALLS concurrent calls (a server's usual fan-out)
 * every call stays on the first thread, which is the only one started. */
#define MAX_TRANSPORTS 4
#define TRANSPORT_CALLS 256

/* Messages to the transport thread (call->tq_bits) */
#define T_START 1u
#define T_CANCEL 2u
#define T_GRANT 4u
/* and to the Lua thread (call->mq_bits) */
#define M_DONE 1u
#define M_GRANT 2u

/* An address or network of the egress allow-list (addr in network order). */
struct egress_net {
    int family;
    unsigned char addr[16];
    int prefix;
};

/* One multi handle, its connection cache and its timer (SHARD_CONNS). */
struct shard {
    struct transport *t; /* whose thread runs it */
    CURLM *multi;
    uv_timer_t timer;
    size_t active;     /* transfers added to multi */
    size_t socks;      /* sockets of its connections open */
    size_t idle_socks; /* of those, the ones no transfer uses (keep-alive) */
};

/* One transport thread: its loop, its shards and the sockets of their
 * connections (TRANSPORT_CALLS). */
struct transport {
    struct chorus_http_client *client;
    /* The Lua thread's. */
    size_t calls; /* started here and not yet done or cancelled */
    /* This thread's (set up before it starts). */
    uv_thread_t thread;
    uv_loop_t loop;
    /* The loop it runs on: its own (loop), or for the Lua thread's own
     * transport (inline; see transport_pick) the Lua thread's. */
    uv_loop_t *uv;
    int inline_;
    int handles_open;                 /* the inline one's: freed when both handles closed */
    uv_async_t wake;                  /* the Lua thread queued calls in tq */
    struct shard *shards[MAX_SHARDS]; /* [0] made with the transport, the rest when needed */
    int nshards;
    struct chorus_http_call *running; /* transfers in a multi handle */
    struct sock_ctx **socks;          /* by fd: every socket curl has open here */
    size_t nsocks;
    int epfd;        /* the epoll set of those sockets (struct sock_ctx) */
    uv_poll_t epoll; /* the loop's watch on epfd */
    int stopping;    /* the client is closing: no transfer starts */
    /* Its shards' idle_socks in all: written here, read by the Lua thread
     * (transport_pick) to send a call where a connection may be reused. */
    atomic_size_t idle_socks;
    /* Under client->lock. */
    struct chorus_http_call *tq_head, *tq_tail; /* to this thread */
    /* Plain HTTP/1.1 connections (http_plain.c): every one, and the idle
     * ones (most recently used first), this thread's. */
    struct plain_conn *plain_all;
    struct plain_conn *plain_idle, *plain_idle_tail;
    size_t plain_nidle;
};

struct chorus_http_client {
    /* The Lua thread's. */
    uv_loop_t *loop;
    int proxied; /* the environment names a proxy (read once): every call goes through curl */
    atomic_size_t plain_calls;      /* calls the plain engine took (any thread) */
    uv_async_t wake_main;           /* a transport queued calls in mq */
    struct chorus_http_call *calls; /* started, not yet done or cancelled */
    size_t active;
    int closing;
    struct transport *transports[MAX_TRANSPORTS]; /* [0] made with the client */
    int ntransports, max_transports;
    /* Plain calls made on the Lua thread's own loop while it has time to
     * spare (transport_pick): made when first needed, NULL before. */
    struct transport *inline_t;
    uv_idle_t drain;  /* hands the inline transport's results over on the next loop turn */
    int handles_open; /* of wake_main and drain: freed when both closed */
    int inline_off;   /* it could not be made */
    int inline_mode;  /* chorus_http_client_set_inline: 0 by the loop's load, 1 always, -1 never */
    size_t inline_calls; /* calls it took */
    int inline_now;      /* the Lua thread is idle enough for calls of its own */
    uint64_t busy_at;    /* uv_hrtime() of the last look at the loop's idle time */
    uint64_t idle_seen;  /* the loop's idle time then (uv_metrics_idle_time) */

    /* Every thread's, under lock. */
    uv_mutex_t lock;
    struct chorus_http_call *mq_head, *mq_tail; /* to the Lua thread */
    int close_requested;
    struct chorus_http_call *idle[EASY_POOL]; /* ended calls ready for reuse, with their handles */
    int nidle;
    size_t freed; /* calls freed (the pool full) since the last trim (TRIM_AFTER) */
    size_t trims; /* malloc_trim calls made */
    /* A trim the Lua thread left to the first transport (any thread). */
    atomic_int trim_due;

    /* The egress policy: set from the Lua thread, read by every thread,
     * under policy_lock. */
    uv_mutex_t policy_lock;
    struct egress_net *allow; /* what restricted calls may reach though not public */
    size_t nallow;
    struct egress_net self; /* the server's listen address (prefix 0: none) */
    int self_port;
};

/* The options configure() last set on a kept handle: a call like the
 * handle's last one sets only those that differ, not every one again
 * (curl_easy_setopt goes through curl's whole option switch each time). */
struct easy_set {
    int known; /* the fields below hold what the handle has */
    struct transport *t;
    int check, tls, fresh, insecure, follow;
    int plain; /* a GET without a body: set_method's resets are in place */
    long connect_timeout_ms, timeout_ms;
    curl_off_t max_filesize;
};

struct chorus_http_call {
    struct chorus_http_client *client;
    struct transport *t; /* whose thread carries it: set at start, before START */
    /* Who holds the call: the Lua thread from start to its done callback
     * or cancel, the transport thread from START to the end of the
     * transfer, and each queue the call is in. The last one to let go
     * puts the call back in the pool. */
    atomic_int refs;
    /* The Lua thread's. */
    struct chorus_http_call *mprev, *mnext; /* client->calls */
    chorus_http_done_fn done;
    void *data;
    chorus_http_charge_fn charge;
    size_t charged; /* bytes the charge callback was told of */
    int cancelled;
    uint64_t start_ns; /* uv_hrtime() at the start (the loop's ms clock made fast calls 0 s) */
    /* The queues' (under client->lock). */
    struct chorus_http_call *tq_next, *mq_next;
    unsigned tq_bits, mq_bits;
    /* A batch taken from a queue (take_batch): the transport thread's
     * (t_) and the Lua thread's (m_), a call may be in one of each. */
    struct chorus_http_call *t_batch, *m_batch;
    unsigned t_work, m_work;
    /* The request, copied on the Lua thread before START. */
    char *url, *method;
    struct curl_slist *headers;
    char *body;
    size_t body_len;
    long connect_timeout_ms, timeout_ms;
    int insecure, follow_redirects;
    int restricted;     /* the egress policy applies (chorus_http_request.restricted) */
    char **allow_hosts; /* NULL-terminated, lowercase; NULL: any host */
    size_t max_body, max_header_bytes;
    int metered; /* a charge callback is set: the body needs grants */
    /* Grants (GRANT_SLACK): granted and denied are written by the Lua
     * thread while the transfer waits paused for them, want by the
     * transport before it asks. */
    size_t granted, want;
    int denied_mem;
    /* The transport thread's while the transfer runs; the result fields
     * are read by the Lua thread after DONE. */
    struct shard *shard;                  /* whose multi handle the transfer is in */
    struct chorus_http_call *prev, *next; /* t->running */
    int in_multi, paused;
    struct plain_conn *plain; /* the connection carrying it without curl (http_plain.c) */
    CURL *easy;
    struct easy_set set; /* what easy has, kept with it */
    char *resp_body;
    size_t resp_len, resp_cap;
    /* Response headers as "name\0value\0" pairs in one buffer (the first
     * HEADER_TEXT bytes inside the call): a malloc per name and value was
     * most of a call's allocations. */
    char *htext;
    size_t htext_len, htext_cap;
    size_t nheaders;
    size_t header_bytes;         /* of the current response, as received */
    enum chorus_http_error fail; /* why a callback of ours stopped the transfer */
    enum chorus_http_error denied_as;
    CURLcode code; /* how the transfer ended */
    long status, http_version;
    uint64_t end_ns;
    /* From here on, buffers: a reused call clears only the fields above
     * (call_take) and the first byte of each of these. */
    char htext_inline[HEADER_TEXT];
    char fail_msg[96];
    char denied[256]; /* why the egress policy stopped the call, if it did */
    char errbuf[CURL_ERROR_SIZE];
};

/* One socket curl opened, known from its open to its close (both through
 * curl's callbacks) and watched in its transport's own epoll set, which the
 * loop watches with one uv_poll: a uv_poll per socket cost seven epoll_ctl
 * calls for each new connection (uv_poll_init adds and deletes the socket
 * to check it, each uv_poll_start deletes it and adds it again, its close
 * deletes it), 7% of a transport thread's CPU in a restart that opens
 * thousands; here it is an add, a change from writable to readable when
 * the request is sent, and none at the close (the kernel drops a closed
 * socket from the set). Not from one transfer's CURL_POLL_IN to its
 * CURL_POLL_REMOVE either: a keep-alive connection is removed and added
 * back for every call it carries. */
struct sock_ctx {
    curl_socket_t fd;
    struct shard *shard; /* whose multi handle the socket's connection is in */
    int polling;         /* EPOLLIN/EPOLLOUT the epoll set watches now (0: not in it) */
    int wanted;          /* what curl asked for; 0 after CURL_POLL_REMOVE */
    int idle;            /* counted in shard->idle_socks */
};

/* ---- what http_client.c lends http_plain.c (transport thread) ----------- */

/* Queues bits for the Lua thread (M_DONE, M_GRANT). */
void chorus_http_mq_push(struct chorus_http_call *call, unsigned bits);
/* Lets go of one reference to the call. */
void chorus_http_call_unref(struct chorus_http_call *call);
/* Why a restricted call may not reach family/a (network order) on port,
 * or NULL; takes the policy lock. */
const char *chorus_http_denied_addr(struct chorus_http_client *client, int family,
                                    const unsigned char *a, int port);
/* Appends n bytes to the call's response body (kept NUL-terminated), or
 * to its header text ("name\0value\0" pairs; the caller adds the NULs).
 * -1 when out of memory. */
int chorus_http_body_add(struct chorus_http_call *call, const char *s, size_t n);
int chorus_http_htext_add(struct chorus_http_call *call, const char *s, size_t n);
/* Records why the egress policy stopped the call. */
void chorus_http_deny(struct chorus_http_call *call, const char *target, const char *why);
/* Forgets a socket number curl's table of t may still hold (closed behind
 * our back) before another socket takes the number. */
void chorus_http_sock_forget(struct transport *t, int fd);

#endif
