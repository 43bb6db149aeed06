/* lua_retry.h — core.retry_policy / retry_next / retry_after, the binding of
 * retry.c (contract at the top of lua_retry.c). */
#ifndef CHORUS_LUA_RETRY_H
#define CHORUS_LUA_RETRY_H

#include <lua.h>

int chorus_lua_retry_policy(lua_State *L);
int chorus_lua_retry_next(lua_State *L);
int chorus_lua_retry_after(lua_State *L);
/* core.retryable_status(status) → whether an HTTP status is worth another
 * try (408, 425, 429, 5xx): the one rule retry, the outbox, breakers and
 * redrive share. */
int chorus_lua_retryable_status(lua_State *L);
int chorus_lua_retry_budget(lua_State *L);
int chorus_lua_retry_budgets_reset(lua_State *L);

#endif
