/* lua_retry.h — core.retry_policy / retry_next / retry_delay / retry_after, the binding of
 * retry.c (contract at the top of lua_retry.c). */
#ifndef CHORUS_LUA_RETRY_H
#define CHORUS_LUA_RETRY_H

#include <lua.h>

int chorus_lua_retry_policy(lua_State *L);
int chorus_lua_retry_next(lua_State *L);
int chorus_lua_retry_delay(lua_State *L);
int chorus_lua_retry_after(lua_State *L);
/* core.retryable_status(status) → whether an HTTP status is worth another
 * try (408, 425, 429, 5xx): the one rule retry, the outbox, breakers and
 * redrive share. */
int chorus_lua_retryable_status(lua_State *L);
int chorus_lua_retry_budget(lua_State *L);
int chorus_lua_retry_budgets_reset(lua_State *L);

/* Adds this binding's functions (core.retry_policy, core.retry_next, core.retry_delay,
 * core.retry_after,
 * core.retryable_status, core.retry_budget, core.retry_budgets_reset) to the chorus.core table at
 * the top of L's stack (runtime/lua_bindings.c). */
void chorus_lua_retry_open(lua_State *L);

#endif
