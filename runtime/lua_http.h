/* lua_http.h — the binding of http_client.c for Lua tasks.
 *
 * core.http({ method =, url =, headers =, body =, connect_timeout =, timeout =,
 *             tls_verify =, follow_redirects =, restricted =,
 *             max_response_bytes =, allow_hosts = })
 * starts a call for the current task and yields. method and url are
 * required strings; headers maps names to strings; body is a string;
 * the timeouts are seconds (nil or 0: none); tls_verify (default true)
 * false skips certificate checks; follow_redirects (default false);
 * restricted = true applies the egress policy of URLs taken from requests
 * (core.egress); max_response_bytes is an integer (nil: 16 MiB);
 * allow_hosts, a set of host names, is the allow-list every redirect hop
 * must match. A key that is not one of these, or an option of the wrong
 * type, raises an argument error naming it. The task resumes with
 *   status, headers, body, duration            on a response (any status), or
 *   nil, kind, message, duration               on a transport failure,
 * where kind is "timeout", "connect", "tls", "reset", "protocol",
 * "egress_denied", "forbidden_host" (a redirect hop outside allow_hosts) or
 * "too_large" (body past max_response_bytes, headers past 64 KiB). The body
 * is charged to the run's memory as it arrives; a body that would take the
 * run past its memory cap stops the transfer and kills the run (kind
 * "memory", like the allocator's refusal).
 * where the response's headers are a table of lowercase name → value
 * (repeated headers joined with ", ").
 * lua/chorus/http.lua turns this into the documented API and errors.
 */
#ifndef CHORUS_LUA_HTTP_H
#define CHORUS_LUA_HTTP_H

#include <lua.h>
#include <stddef.h>

#include "runtime.h"

int chorus_lua_http_request(lua_State *L);

/* core.egress, core.egress_check, core.egress_parse (see lua_http.c). */
int chorus_lua_http_egress(lua_State *L);
int chorus_lua_http_egress_check(lua_State *L);
int chorus_lua_http_egress_parse(lua_State *L);

/* Calls in flight in the runtime's client. */
size_t chorus_lua_http_active(struct chorus_runtime *rt);

/* Adds this binding's functions (core.http, core.egress, core.egress_check, core.egress_parse) to
 * the chorus.core table at the top of L's stack (runtime/lua_bindings.c). */
void chorus_lua_http_open(lua_State *L);

#endif
