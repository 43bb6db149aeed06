/* http_server.h — inbound HTTP/1.1: libmicrohttpd driven by the libuv loop.
 *
 * MHD runs in external epoll mode: its epoll fd is watched by one uv_poll and
 * its timeouts by one uv_timer, so the server shares the runtime's single
 * thread. Each request becomes an exchange handed to the handler once its
 * body is read; the handler answers with chorus_server_respond(), at once or
 * later (the connection is suspended meanwhile). The engine knows nothing of
 * Lua.
 */
#ifndef CHORUS_HTTP_SERVER_H
#define CHORUS_HTTP_SERVER_H

#include <stddef.h>
#include <uv.h>

struct chorus_server;
struct chorus_exchange;

struct chorus_server_config {
    const char *host;  /* numeric IPv4 address, e.g. "127.0.0.1" */
    int port;          /* 0 picks a free port */
    size_t max_body;   /* bytes; larger bodies get 413 */
    size_t max_header; /* bytes of request header space per connection */
    unsigned max_connections;
    unsigned idle_timeout; /* seconds a connection may stay silent */
    unsigned
        client_timeout; /* seconds a request's headers and body may take to arrive; 0: no limit */
};

/* The request as the handler sees it; valid until the exchange is answered. */
struct chorus_request {
    const char *method;
    const char *path; /* without the query string */
    const char *body; /* NUL-terminated; body_len excludes the NUL */
    size_t body_len;
};

/* Called once per request, from the loop. It must eventually call
 * chorus_server_respond() exactly once for ex. */
typedef void (*chorus_server_handler)(struct chorus_exchange *ex, const struct chorus_request *req,
                                      void *data);

/* Starts listening. Returns NULL with a message in err on failure (address in
 * use, bad host, out of memory). */
struct chorus_server *chorus_server_start(uv_loop_t *loop, const struct chorus_server_config *cfg,
                                          chorus_server_handler handler, void *data, char *err,
                                          size_t errlen);

/* The port actually bound. */
int chorus_server_port(const struct chorus_server *server);

/* Calls fn for each request header (kind 0) or query argument (kind 1). */
typedef void (*chorus_server_kv_fn)(void *cls, const char *key, const char *value);
void chorus_server_each(struct chorus_exchange *ex, int kind, chorus_server_kv_fn fn, void *cls);

/* How many headers (kind 0) or query arguments (kind 1) the request has. */
int chorus_server_count(struct chorus_exchange *ex, int kind);

/* Answers ex. headers is a flat array of name, value pairs (n pairs); body is
 * copied. After this the exchange belongs to the engine again. Returns 0, or
 * -1 when the response could not be built (the connection is then closed). */
int chorus_server_respond(struct chorus_exchange *ex, unsigned status, const char *const *headers,
                          size_t n, const char *body, size_t body_len);

/* Requests whose answer is pending. */
size_t chorus_server_pending(const struct chorus_server *server);

/* Stops accepting new connections; in-flight exchanges can still answer. */
void chorus_server_quiesce(struct chorus_server *server);

/* Answers every pending exchange with 503, stops the daemon and closes the
 * handles; memory is freed from the loop's close callbacks. */
void chorus_server_close(struct chorus_server *server);

#endif
