/* lua_charged.h — the string functions whose one C call works through a
 * whole string, charged to the run's instruction budget.
 *
 * Why: the budget's count hook fires between VM instructions, and one
 * instruction may be a C call through megabytes (s:upper() of a string of
 * tens of them). The run's CPU limit (scheduler.h) stops a
 * loop of such calls, but only by sampling the CPU clock and only after the
 * C call returns; these functions are charged by the bytes they handle, in
 * instructions, before they do the work, so the budget (the same on every
 * machine) runs out after a fixed amount of it.
 *
 * Contract:
 * - One instruction per CHORUS_CHARGE_BYTES bytes, as the pattern functions
 *   charge a plain search (lua_pattern.h): string.upper, lower and reverse
 *   the bytes of their string; string.rep the bytes of its result (an empty
 *   string and separator give "" at once: Lua's rep looped n times writing
 *   nothing, with no hook and no allocation); string.format the bytes of its
 *   string arguments; table.concat, string.pack, utf8.char and os.date the
 *   bytes of their result, once made (one call is bounded by the memory
 *   cap, a loop of them by the budget).
 * - Charged with chorus_run_charge: inside a run with an instruction budget
 *   a run past it is stopped (kind "budget"); elsewhere nothing is charged.
 * - Results and errors are the string library's own: each function charges,
 *   then calls the standard one.
 */
#ifndef CHORUS_LUA_CHARGED_H
#define CHORUS_LUA_CHARGED_H

#include <lua.h>

#define CHORUS_CHARGE_BYTES 16

/* With the chorus.core table on top of L: sets core.charged = { upper=,
 * lower=, reverse=, rep=, format=, concat=, pack=, utf8_char=, os_date= }
 * (the string functions are also made the methods of strings, s:upper(),
 * once chorus_lua_pattern_open made that table chorus's own). Does nothing
 * for a library that is not loaded. */
void chorus_lua_charged_open(lua_State *L);

#endif
