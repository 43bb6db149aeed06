/* lua_crypto.h — core.sha256 and core.hmac_sha256 (OpenSSL's libcrypto). */
#ifndef CHORUS_LUA_CRYPTO_H
#define CHORUS_LUA_CRYPTO_H

#include <lua.h>

int chorus_lua_sha256(lua_State *L);
int chorus_lua_hmac_sha256(lua_State *L);

/* Adds this binding's functions (core.sha256, core.hmac_sha256) to the
 * chorus.core table at the top of L's stack (runtime/lua_bindings.c). */
void chorus_lua_crypto_open(lua_State *L);

#endif
