/* vclock.h — virtual time for chorus.testing.
 *
 * With the virtual clock on, core.now/monotime read a number the runtime
 * keeps, and core.sleep parks the task on a sorted list instead of a libuv
 * timer. When nothing is ready and no real transfer is in flight, the loop
 * jumps the clock to the earliest sleeper and wakes it: a workflow that
 * backs off for ten minutes finishes in microseconds of real time, and
 * timings in specs are exact.
 */
#ifndef CHORUS_VCLOCK_H
#define CHORUS_VCLOCK_H

#include "runtime.h"
#include "scheduler.h"

/* Turns the virtual clock on at `start` (seconds since the epoch) or off.
 * Returns -1 when runs are live (time cannot change under them), else 0. */
int chorus_vclock_set(struct chorus_runtime *rt, int on, double start);

/* Parks t for `seconds` of virtual time (t yields afterwards). Returns -1
 * when out of memory. */
int chorus_vclock_sleep(struct chorus_task *t, double seconds);

/* Advances the clock to the earliest sleeper and wakes every task due then.
 * Returns 0 when there was none. */
int chorus_vclock_fire(struct chorus_runtime *rt);

#endif
