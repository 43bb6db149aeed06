/* watchdog.h — arms the instruction-budget hook only on Lua code that runs
 * long without yielding, and samples the CPU time each run spends.
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
 * The same ticks measure CPU time: each one that lands between enter and
 * leave is CHORUS_WATCHDOG_TICK_MS of CPU the resumed run spent (its Lua
 * code and the C functions it called: one s:upper() of a megabyte is one
 * VM instruction, and far more CPU than one). A tick is a sample, not a
 * stopwatch: a run that spends 5 ms is charged 10 ms half the time and
 * nothing otherwise, which averages out over the seconds a CPU limit is
 * about, and reading the thread's CPU clock on every resume instead was a
 * system call each time.
 *
 * When the timer cannot be made (chorus_watchdog_start fails), the caller
 * keeps the hook on every budgeted task, as before, and has no ticks.
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
 * on co for the very next instruction (LUA_MASKCOUNT, count 1), so a run
 * over its CPU limit stops as soon as the C call that is running returns,
 * not 1000 instructions (1000 such calls) later; the hook sets its own
 * count back. leave returns the number of ticks that landed in between
 * (the hook stays set when > 0). */
void chorus_watchdog_enter(lua_State *co, lua_Hook hook);
int chorus_watchdog_leave(void);

/* Ticks since the last enter, while between enter and leave: for the hook,
 * to see the CPU of the resume still going on. */
int chorus_watchdog_ticks(void);

#endif
