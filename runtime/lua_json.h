/* lua_json.h — JSON ⇄ Lua values, on cJSON (the parser and printer are cJSON's).
 *
 * Mapping, both ways:
 *   JSON object   ⇄ table with string keys (key order is Lua's traversal order)
 *   JSON array    ⇄ sequence 1..n; decoded arrays carry the array metatable
 *                   (registry name CHORUS_JSON_ARRAY_MT) so that they, even
 *                   empty, encode back as arrays
 *   JSON null     ⇄ the null sentinel, a light userdata (json.null)
 *   JSON number   ⇄ integer when integral and within int64, float otherwise;
 *                   integer literals are read exactly (2^63-1 stays 2^63-1)
 *   JSON string   ⇄ string (bytes; escapes decoded to UTF-8)
 *   true / false  ⇄ boolean
 *
 * Containers nest at most CHORUS_JSON_MAX_DEPTH deep either way (the
 * outermost container is depth 1). Strings holding a NUL byte are refused
 * both ways, because cJSON keeps strings NUL-terminated and would silently
 * cut them.
 *
 * Neither function raises a Lua error: both run their Lua work in protected
 * mode, free everything they hold, and report through err (err may be NULL;
 * a message longer than errlen is cut, always NUL-terminated). Both need the
 * state to be able to grow its stack by a few slots.
 */
#ifndef CHORUS_LUA_JSON_H
#define CHORUS_LUA_JSON_H

#include <lua.h>
#include <stddef.h>

#define CHORUS_JSON_MAX_DEPTH 200
#define CHORUS_JSON_ARRAY_MT "chorus.json.array"

/* Decodes the JSON text text[0..len) (it need not be NUL-terminated) and
 * pushes the Lua value. Whitespace may surround the value; anything else
 * after it is an error.
 *
 * Returns 0 with one value pushed, or -1 with nothing pushed and err set to
 *   "invalid JSON at offset N near 'TEXT'"          syntax error, trailing text
 *   "nesting deeper than 200 at offset N"           depth limit
 *   "unsupported \u0000 in a string at offset N"    NUL byte in a string
 *   "not enough memory"
 * N is a 0-based byte offset into text. The caller keeps ownership of text. */
int chorus_json_decode(lua_State *L, const char *text, size_t len, char *err, size_t errlen);

/* Encodes the value at stack index idx as compact JSON (no whitespace).
 * Tables: one with the array metatable, or whose keys are exactly 1..n, is an
 * array; an empty one without that metatable is {}; one with only string
 * keys is an object (metamethods are ignored: raw access only). nil encodes
 * as null. Integers are printed exactly, floats with up to 17 significant
 * digits.
 *
 * Returns a NUL-terminated string allocated with malloc (cJSON's default
 * hooks; chorus never installs others) that the caller frees with free(),
 * or NULL with err set to one of these, PATH locating the value from the
 * root "$" with Lua's 1-based indices (e.g. $.items[2].cb, $["a b"][1]):
 *   "cannot encode a function at PATH"      also thread, userdata
 *   "cannot encode NaN or infinity at PATH"
 *   "cannot encode a string with a NUL byte at PATH"   value or key
 *   "table with mixed or non-string keys at PATH"
 *   "table with integer keys that are not 1..n at PATH"
 *   "array with string keys at PATH"        the array metatable on an object
 *   "cycle at PATH"                         the table is its own ancestor
 *   "nesting deeper than 200 at PATH"
 *   "not enough memory"
 * The stack is left as it was, whatever the outcome. */
char *chorus_json_encode(lua_State *L, int idx, char *err, size_t errlen);

/* Pushes the json library table (and registers the array metatable):
 *   json.encode(v)   → string; raises the chorus_json_encode message
 *   json.decode(s)   → value; raises "json.decode: " .. the decode message
 *   json.null        the null sentinel
 *   json.array([t])  sets the array metatable on t (a new table if absent)
 *                    and returns it
 *   json.is_null(v)  → true when v is json.null
 * Returns 1, like a luaopen_* function. */
int chorus_json_open(lua_State *L);

#endif
