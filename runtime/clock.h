/* clock.h — the one time source of the resilience engines.
 *
 * Retry, breaker, bulkhead and rate limiter never read the system clock
 * themselves: they are handed a struct chorus_clock (or a `now` number read
 * from one), so the runtime can drive them on CLOCK_MONOTONIC and the tests
 * and chorus.testing on virtual time with no sleeps.
 *
 * Invariant: a clock is monotonic — two successive reads never go
 * backwards. The engines tolerate a clock that stalls, not one that rewinds
 * (they treat a rewind as "no time passed").
 */
#ifndef CHORUS_CLOCK_H
#define CHORUS_CLOCK_H

/* A clock is a function and its state; ud belongs to the caller and must
 * outlive every engine the clock is given to. The struct itself is copied
 * by whoever keeps it. */
struct chorus_clock {
    double (*now)(void *ud); /* seconds, monotonic; the origin is arbitrary */
    void *ud;
};

/* Reads c. Never fails. */
double chorus_clock_now(const struct chorus_clock *c);

/* The system's clocks, in seconds: CLOCK_MONOTONIC (the engines' and the
 * loop's time, when not virtual) and CLOCK_REALTIME (core.now, seconds
 * since the epoch). The runtime reads the system time only through these. */
double chorus_clock_monotonic(void);
double chorus_clock_wall(void);

/* A manual clock that reads *t: tests and virtual time advance it by
 * assigning to the double. t is borrowed and must outlive the clock. */
struct chorus_clock chorus_clock_manual(double *t);

#endif
