/* http_client.h — non-blocking outbound HTTP: libcurl multi driven by libuv.
 *
 * One client per event loop; its transfers run on a thread of its own (see
 * http_client.c), its callbacks on the loop's thread. A call is started
 * with chorus_http_start() and ends exactly once: either its done callback
 * runs (success or transport error) or the caller cancels it with
 * chorus_http_cancel(), after which the callback never runs. The engine
 * knows nothing of Lua.
 */
#ifndef CHORUS_HTTP_CLIENT_H
#define CHORUS_HTTP_CLIENT_H

#include <stddef.h>
#include <uv.h>

struct chorus_http_client;
struct chorus_http_call;

/* Transport failure classes; the Lua layer turns them into error kinds. */
enum chorus_http_error {
    CHORUS_HTTP_OK = 0,
    CHORUS_HTTP_TIMEOUT,        /* connect or total timeout elapsed */
    CHORUS_HTTP_CONNECT,        /* could not resolve or connect */
    CHORUS_HTTP_TLS,            /* handshake or certificate failure */
    CHORUS_HTTP_RESET,          /* connection dropped after the request was sent */
    CHORUS_HTTP_PROTOCOL,       /* malformed response, unsupported URL, ... */
    CHORUS_HTTP_TOO_LARGE,      /* body past max_body, or headers past max_header_bytes */
    CHORUS_HTTP_MEMORY,         /* the charge callback refused the body's growth */
    CHORUS_HTTP_DENIED,         /* the egress policy refused an address or URL */
    CHORUS_HTTP_FORBIDDEN_HOST, /* a redirect hop to a host not in allow_hosts */
};

/* Response limits when the request does not set its own. */
#define CHORUS_HTTP_DEFAULT_MAX_BODY ((size_t)16 << 20)
#define CHORUS_HTTP_DEFAULT_MAX_HEADER_BYTES ((size_t)64 << 10)

/* Told of the call's body memory, always on the thread of the client's
 * loop: the copies of the request body and headers when the call starts
 * (nonzero refuses: chorus_http_start fails), the response body as it
 * arrives, delta > 0 before the call holds that many more bytes (nonzero
 * refuses: the transfer stops and the call ends with CHORUS_HTTP_MEMORY),
 * and once, when the call ends or is cancelled, delta < 0 giving back all
 * it was told of. The transport thread receives the body: it holds up to
 * 16 KiB uncharged (told when the call ends), past that its transfer
 * waits for each charge. data is the call's. */
typedef int (*chorus_http_charge_fn)(void *data, long long delta);

/* What to send. Strings are copied by chorus_http_start(); the caller keeps
 * ownership of everything here. */
struct chorus_http_request {
    const char *method; /* "GET", "POST", ... */
    const char *url;
    const char *const *headers; /* "Name: value" lines, NULL-terminated, may be NULL */
    const char *body;           /* may be NULL */
    size_t body_len;
    long connect_timeout_ms; /* 0: no connect timeout */
    long timeout_ms;         /* total; 0: none */
    int insecure;            /* skip TLS certificate and host verification */
    int follow_redirects;    /* follow up to 5 redirects (off: a 3xx is the response) */
    /* A body longer than this ends the call with CHORUS_HTTP_TOO_LARGE as
     * soon as it is known: from the Content-Length, or when the bytes read
     * pass it. 0: CHORUS_HTTP_DEFAULT_MAX_BODY; SIZE_MAX: no limit. */
    size_t max_body;
    size_t max_header_bytes;      /* the same for the headers; 0: the default */
    chorus_http_charge_fn charge; /* may be NULL */
    /* Refuse loopback, private, link-local and other non-public addresses
     * unless the client's egress allow-list names them (the URL came from
     * a request: callback_url). Checked on the resolved address of every
     * connection and every redirect hop. */
    int restricted;
    /* Host names (lowercase) every redirect hop must be one of; NULL: any. */
    const char *const *allow_hosts;
};

/* One response header (name as received). */
struct chorus_http_header {
    char *name;
    char *value;
};

/* The outcome, valid only during the done callback. */
struct chorus_http_response {
    enum chorus_http_error error; /* CHORUS_HTTP_OK or the failure class */
    const char *message;          /* human-readable, for errors */
    long status;                  /* HTTP status, 0 on transport error */
    const struct chorus_http_header *headers;
    size_t nheaders;
    const char *body; /* NUL-terminated for convenience */
    size_t body_len;
    double duration;   /* seconds from start to completion */
    long http_version; /* 11, 20, ... */
};

typedef void (*chorus_http_done_fn)(const struct chorus_http_response *res, void *data);

/* Creates a client on loop. Returns NULL on failure (out of memory or curl
 * refused to initialize). Call chorus_http_global_init() once per process
 * before the first client. */
int chorus_http_global_init(void);
void chorus_http_global_cleanup(void);
struct chorus_http_client *chorus_http_client_new(uv_loop_t *loop);
/* The same with at most max_threads transport threads (0: one per online
 * CPU; never more than 4). The first starts with the client, the others
 * only when the calls in flight need them (http_client.c, TRANSPORT_CALLS). */
struct chorus_http_client *chorus_http_client_new_threads(uv_loop_t *loop, int max_threads);
/* How many transport threads run now. */
int chorus_http_threads(const struct chorus_http_client *client);

/* Cancels every call still in flight (no callbacks) and closes the client's
 * handles; the memory is freed from the loop's close callbacks, so run the
 * loop once more (uv_run) after this before closing the loop. */
void chorus_http_client_close(struct chorus_http_client *client);

/* The egress policy of restricted calls: allow, a NULL-terminated list of
 * addresses or networks ("127.0.0.1", "10.0.0.0/8", "fd00::/8") a
 * restricted call may reach although they are not public; self, the
 * server's own listen address ("ip:port", NULL: none), which a restricted
 * call never reaches. Replaces the previous policy. Returns 0, or -1 with
 * a message in err (a malformed entry; nothing changes). */
int chorus_http_set_egress(struct chorus_http_client *client, const char *const *allow,
                           const char *self, char *err, size_t errlen);

/* Parses one allow-list entry; 0 when it is a valid address or network. */
int chorus_http_egress_parse(const char *entry);

/* Why a restricted call may not reach ip (numeric, v4 or v6) on port, or
 * NULL when it may. */
const char *chorus_http_egress_denied(struct chorus_http_client *client, const char *ip, int port);

/* Starts a call. Returns the call, or NULL with a message in err when the
 * request cannot even be started (bad method, out of memory). done runs later
 * from the loop, never from inside this function. */
struct chorus_http_call *chorus_http_start(struct chorus_http_client *client,
                                           const struct chorus_http_request *req,
                                           chorus_http_done_fn done, void *data, char *err,
                                           size_t errlen);

/* Aborts a call in flight: the transfer stops and its connection is closed
 * (not returned to the pool). done will not run. call is freed. */
void chorus_http_cancel(struct chorus_http_call *call);

/* Number of calls in flight. */
size_t chorus_http_active(const struct chorus_http_client *client);

/* How many calls went without curl (plain HTTP/1.1, http_plain.c); the
 * others went through curl. */
size_t chorus_http_plain_calls(struct chorus_http_client *client);

/* Plain calls are made on the Lua thread's own loop (no hand-over to a
 * transport thread and back) while that loop is idle most of the time:
 * its idle time (uv_metrics_idle_time, so a loop configured with
 * UV_METRICS_IDLE_TIME; without it, never) over the last 50 ms under 35%
 * busy switches them there, over 60% back to the threads. mode 1: always
 * (when the call is one the plain engine carries), -1: never, 0: so. */
void chorus_http_client_set_inline(struct chorus_http_client *client, int mode);

/* How many calls were made on the Lua thread's loop. */
size_t chorus_http_inline_calls(const struct chorus_http_client *client);

/* How many times the client gave freed memory back to the system: after a
 * burst of calls past the ones it keeps for reuse, once per 1,024 freed
 * (see TRIM_AFTER in http_client.c). */
size_t chorus_http_trims(struct chorus_http_client *client);

#endif
