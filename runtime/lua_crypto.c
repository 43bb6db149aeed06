/* lua_crypto.c — digests for request fingerprints, script versions and
 * webhook signatures, from OpenSSL's libcrypto (never hand-written crypto).
 *
 *   core.sha256(data) → 64 lowercase hex digits
 *   core.hmac_sha256(key, data) → 64 lowercase hex digits
 */
#include "lua_crypto.h"

#include "lua_bindings.h"

#include <lauxlib.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

static void push_hex(lua_State *L, const unsigned char *d, unsigned n) {
    static const char digits[] = "0123456789abcdef";
    char hex[2 * EVP_MAX_MD_SIZE];
    for (unsigned i = 0; i < n; i++) {
        hex[2 * i] = digits[d[i] >> 4];
        hex[2 * i + 1] = digits[d[i] & 15];
    }
    lua_pushlstring(L, hex, 2 * (size_t)n);
}

int chorus_lua_sha256(lua_State *L) {
    size_t len;
    const char *data = luaL_checklstring(L, 1, &len);
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)data, len, md);
    push_hex(L, md, sizeof md);
    return 1;
}

int chorus_lua_hmac_sha256(lua_State *L) {
    size_t klen, len;
    const char *key = luaL_checklstring(L, 1, &klen);
    const char *data = luaL_checklstring(L, 2, &len);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    if (!HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)data, len, md, &n))
        return luaL_error(L, "hmac_sha256 failed");
    push_hex(L, md, n);
    return 1;
}

void chorus_lua_crypto_open(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"sha256", chorus_lua_sha256},
        {"hmac_sha256", chorus_lua_hmac_sha256},
        {NULL, NULL},
    };
    chorus_lua_register(L, funcs);
}
