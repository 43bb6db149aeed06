/* watchdog.h — arms the instruction-budget hook only on Lua code that runs
 * long without yielding.
 *
 * With any hook set, Lua calls luaG_traceexec before every VM instruction:
 * counting every instruction of every budgeted run cost a tenth of a served
 * request. Instead, a timer on the loop thread's CPU time ticks every
 * CHORUS_WATCHDOG_TICK_MS; a tick that lands while a budgeted task is being
 * resumed sets the count hook on that task's coroutine (lua_sethook is made
 * to be called from a signal handler), and the scheduler then counts that
 * run exactly, in all its tasks, until it ends. A runaway, even one that
 * yields between its loops, is therefore stopped about a tick of its own
 * CPU plus its budget later; a run that never meets a tick is not counted.
 *
 * When the timer cannot be made (chorus_watchdog_start fails), the caller
 * keeps the hook on every budgeted task, as before.
 */
#ifndef CHORUS_WATCHDOG_H
#define CHORUS_WATCHDOG_H

#include <lua.h>
#include <time.h>

#define CHORUS_WATCHDOG_TICK_MS 10

/* Starts ticking on the calling thread's CPU time. Returns 0, or -1 (errno
 * set) when this system cannot. */
int chorus_watchdog_start(timer_t *timer);

void chorus_watchdog_stop(timer_t timer);

/* Around a resume of budgeted code: a tick between enter and leave sets hook
 * (LUA_MASKCOUNT, every `every` instructions) on co. leave returns 1 when
 * that happened (the hook stays set), else 0. */
void chorus_watchdog_enter(lua_State *co, lua_Hook hook, int every);
int chorus_watchdog_leave(lua_State *co);

#endif
