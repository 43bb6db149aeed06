/* http_plain.h — plain HTTP/1.1 calls without libcurl, on a transport
 * thread (see http_plain.c for which calls and why). Only http_client.c
 * calls these, each on the call's transport thread. */
#ifndef CHORUS_HTTP_PLAIN_H
#define CHORUS_HTTP_PLAIN_H

#include <stdint.h>

#include "http_transport.h"

/* Set in the epoll data of a plain connection's socket (the other bits are
 * its struct plain_conn); curl's sockets carry their number. */
#define PLAIN_EPOLL_TAG ((uint64_t)1 << 63)

/* Starts the call's transfer without curl and returns 0, or returns -1
 * when the call is not one this engine carries (curl does). The transfer
 * holds a reference to the call and ends with M_DONE like curl's. */
int chorus_plain_start(struct chorus_http_call *call);

/* Whether the call looks like one this engine carries: the cheap checks
 * chorus_plain_start makes first (made before a transport is picked too). */
int chorus_plain_likely(const struct chorus_http_call *call);
/* The Lua thread cancelled the call: its connection closes, no DONE. */
void chorus_plain_cancel(struct chorus_http_call *call);
/* The Lua thread answered the call's grant request (call->granted,
 * call->denied_mem): reading goes on, or the call ends with memory. */
void chorus_plain_grant(struct chorus_http_call *call);
/* What epoll reported for a plain connection's socket. */
void chorus_plain_event(uint64_t data, uint32_t events);
/* Ends every plain transfer of t (no DONE) and closes its connections. */
void chorus_plain_shutdown(struct transport *t);

#endif
