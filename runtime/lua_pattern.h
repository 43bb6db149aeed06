/* lua_pattern.h — Lua 5.4's pattern matching (string.find, match, gmatch,
 * gsub) with a step budget.
 *
 * Why: lstrlib matches a pattern inside one C call, where the instruction
 * budget's count hook never fires; a backtracking pattern such as
 * ("a*"):rep(12) .. "b" against 2000 'a's then held the server's only loop
 * thread for good. These functions match exactly as Lua 5.4's string library
 * does (same results, same errors for malformed patterns, the same limits of
 * 32 captures and 200 nested matcher calls) and count their steps.
 *
 * Contract:
 * - A step is one pattern item tried at one subject position, one character
 *   taken by a repetition or walked by %b, and one step per 16 bytes of a
 *   back-reference compared, of a long set scanned, of a plain search's
 *   subject and of a gsub replacement string.
 * - Inside a run with an instruction budget, steps are charged to the run's
 *   instruction count (prepaid in blocks of a few thousand, the unused part
 *   refunded when the call returns). When the budget runs out the run is
 *   stopped exactly as the count hook stops it (chorus_run_stop: KILL_BUDGET,
 *   error kind `budget`, not catchable by the sandbox's pcall). A run already
 *   stopped by a limit is stopped again at the next call.
 * - Anywhere else (no run, or a run without a budget: the server's own
 *   code), one call may take at most CHORUS_PATTERN_MAX_STEPS steps and then
 *   raises "pattern too costly: ..." (a plain, catchable error).
 * - Character classes are those of the C locale, whatever the process's
 *   locale (lstrlib follows the locale; chorus never sets one).
 */
#ifndef CHORUS_LUA_PATTERN_H
#define CHORUS_LUA_PATTERN_H

#include <lua.h>

/* About a third of a second of matching on a current CPU. */
#define CHORUS_PATTERN_MAX_STEPS 100000000L

/* With the chorus.core table on top of L: sets core.pattern = { find=,
 * match=, gmatch=, gsub= } and makes them the ones strings' methods use
 * (s:find(...)): the string metatable's __index becomes a table with the
 * string library's functions except dump, so string.dump is not reachable as
 * ("").dump either. Functions added to the string table later are still
 * found through it. The string table itself is left as it is. */
void chorus_lua_pattern_open(lua_State *L);

#endif
