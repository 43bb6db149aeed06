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
 *   JSON string   ⇄ string (bytes; escapes decoded to UTF-8, \u0000 to a
 *                   zero byte and a zero byte encoded as \u0000)
 *   true / false  ⇄ boolean
 *
 * Containers nest at most CHORUS_JSON_MAX_DEPTH deep either way (the
 * outermost container is depth 1).
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
 * pushes the Lua value. The text must be exactly one RFC 8259 JSON text:
 * one value with only space, \t, \n and \r around it (no byte order mark,
 * nothing after it, not even a NUL byte); no leading zeros, "2.", ".5" or
 * "+1"; no raw control byte in a string; only JSON's escapes, each \u with
 * four hex digits. Where RFC 8259 leaves the choice to the implementation:
 * an unpaired surrogate (\uD800 alone, \uDC00 first) is refused, and bytes
 * from 0x80 up inside strings are taken as they are, UTF-8 or not (the
 * encoder writes them back unchanged). Integer literals within int64 are
 * integers, exactly; beyond int64 they are floats.
 *
 * cJSON's tree is allocated with L's allocator (lua_getallocf), so under a
 * runtime it is charged to the current run and a run past its memory cap
 * fails with "not enough memory" (and is killed for memory, runtime.h).
 *
 * Returns 0 with one value pushed, or -1 with nothing pushed and err set to
 *   "invalid JSON at offset N: WHY near 'TEXT'"     TEXT: up to 16 bytes from N
 *   "invalid JSON at offset N: unexpected end of input"  (N = len; also
 *                                                   "... in a string")
 *   "nesting deeper than 200 at offset N"           depth limit
 *   "number LITERAL is out of range"                beyond a double (1e400)
 *   "not enough memory"
 * WHY is one of: leading zero in a number; digit expected after '-' / after
 * the decimal point / in the exponent; control character in a string (it
 * must be escaped); invalid escape in a string; invalid \u escape (four hex
 * digits expected); unpaired surrogate in a \u escape; invalid literal (true,
 * false or null expected); expected a value; expected a string key; expected
 * ':' after a key; expected ',' or ']'; expected ',' or '}'; unexpected text
 * after the value.
 * N is a 0-based byte offset into text. The caller keeps ownership of text. */
int chorus_json_decode(lua_State *L, const char *text, size_t len, char *err, size_t errlen);

/* Encodes the value at stack index idx as compact JSON (no whitespace).
 * Tables: one with the array metatable, or whose keys are exactly 1..n, is an
 * array; an empty one without that metatable is {}; one with only string
 * keys is an object (metamethods are ignored: raw access only). nil encodes
 * as null. Integers are printed exactly, floats with up to 17 significant
 * digits.
 *
 * Returns a NUL-terminated string allocated with malloc that the caller
 * frees with free(),
 * or NULL with err set to one of these, PATH locating the value from the
 * root "$" with Lua's 1-based indices (e.g. $.items[2].cb, $["a b"][1]):
 *   "cannot encode a function at PATH"      also thread, userdata
 *   "cannot encode NaN or infinity at PATH"
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
