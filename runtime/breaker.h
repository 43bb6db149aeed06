/* breaker.h — a circuit breaker with Resilience4j's semantics.
 *
 * CLOSED lets every call through and records outcomes in a sliding window,
 * either the last `window` calls (COUNT) or the last `window` seconds
 * (TIME, one bucket per second). Once the window holds at least min_calls
 * outcomes and the failure rate or the slow-call rate reaches its threshold,
 * the breaker goes OPEN: every acquire is rejected, with no call made, for
 * open_for seconds. The first acquire (or state query) after that finds it
 * HALF_OPEN: at most half_open_calls trial calls are permitted; once
 * min(min_calls, half_open_calls) of their results are in (all of them with
 * the default min_calls), the same thresholds over those calls decide CLOSED
 * (with an empty window) or OPEN again.
 *
 * The engine knows nothing of Lua or of what a failure is: the caller
 * decides (raised error, 5xx, ...) and reports it with chorus_breaker_record.
 * Time comes only from the struct chorus_clock given at creation.
 *
 * Invariant: every successful chorus_breaker_acquire is matched by exactly
 * one chorus_breaker_record (a result) or chorus_breaker_release (no
 * result); a rejected acquire is matched by nothing.
 */
#ifndef CHORUS_BREAKER_H
#define CHORUS_BREAKER_H

#include <stddef.h>

#include "clock.h"

struct chorus_breaker;

enum chorus_breaker_window {
    CHORUS_BREAKER_COUNT, /* the last `window` calls */
    CHORUS_BREAKER_TIME,  /* the calls of the last `window` seconds */
};

enum chorus_breaker_state {
    CHORUS_BREAKER_CLOSED,
    CHORUS_BREAKER_OPEN,
    CHORUS_BREAKER_HALF_OPEN,
};

/* Rates are percents, durations seconds. Names follow breaker.new{} in the
 * Lua API (window_type TIME is window_seconds= there). */
struct chorus_breaker_config {
    enum chorus_breaker_window window_type; /* default COUNT */
    int window;                /* calls (COUNT, 1..1000000) or seconds (TIME, 1..86400);
                                  default 100 */
    int min_calls;             /* outcomes needed before rates count; >= 1, default 100;
                                  with COUNT, min(min_calls, window) applies, and
                                  min(min_calls, half_open_calls) in HALF_OPEN */
    double failure_rate;       /* open at >= this percent failed; (0, 100], default 50 */
    double slow_call_rate;     /* open at >= this percent slow; (0, 100], default 100 */
    double slow_call_duration; /* a call is slow when it took longer; > 0, default 60 */
    double open_for;           /* seconds OPEN before HALF_OPEN; >= 0, default 60 */
    int half_open_calls;       /* trial calls in HALF_OPEN; 1..1000000, default 10 */
};

/* A snapshot of the current state's window. failure_rate and slow_rate are
 * percents, or -1 while the window holds fewer outcomes than the min_calls
 * that applies to it (see the config). While OPEN it describes the window that
 * opened the breaker. not_permitted counts the acquires rejected since the
 * window was last reset (entering CLOSED or HALF_OPEN), as Resilience4j's
 * metrics do. */
struct chorus_breaker_stats {
    double failure_rate, slow_rate;
    int calls, failed, slow; /* slow counts failed slow calls too */
    int not_permitted;
};

/* Resilience4j's defaults: COUNT window of 100, min_calls 100, failure_rate
 * 50, slow_call_rate 100, slow_call_duration 60, open_for 60,
 * half_open_calls 10. */
struct chorus_breaker_config chorus_breaker_config_default(void);

/* Checks every field of cfg. Returns 0 when valid; otherwise -1 with a
 * message naming the first bad field ("min_calls must be >= 1") written to
 * err (may be NULL; truncated to errlen). */
int chorus_breaker_config_check(const struct chorus_breaker_config *cfg, char *err, size_t errlen);

/* Creates a CLOSED breaker. cfg and *clock are copied; clock->ud is borrowed
 * and must outlive the breaker. Returns NULL when cfg fails
 * chorus_breaker_config_check (call it first for the message) or when out of
 * memory. Free with chorus_breaker_free. */
struct chorus_breaker *chorus_breaker_new(const struct chorus_breaker_config *cfg,
                                          const struct chorus_clock *clock);

/* Frees b and its windows. NULL is a no-op. */
void chorus_breaker_free(struct chorus_breaker *b);

/* Asks to make a call. Returns 1 when permitted (the caller then owes one
 * record or release), 0 when rejected: OPEN with open_for not yet elapsed,
 * or HALF_OPEN with all half_open_calls permits taken (a permit is taken by
 * acquire and comes back only through release, never through record, as in
 * Resilience4j). The acquire that finds open_for elapsed moves OPEN to
 * HALF_OPEN and takes the first permit. Rejections count in not_permitted. */
int chorus_breaker_acquire(struct chorus_breaker *b);

/* Reports the outcome of a permitted call: failed (nonzero) or not, and its
 * duration in seconds (slow when > slow_call_duration; a failed call can be
 * slow too). CLOSED: may open the breaker. HALF_OPEN: once
 * min(min_calls, half_open_calls) results are in, closes it (window
 * emptied) or reopens it. OPEN (a call
 * permitted before it opened): counted in the window for the stats, no
 * transition. */
void chorus_breaker_record(struct chorus_breaker *b, int failed, double duration);

/* Gives back a permitted call that ended without a result (cancelled before
 * it completed): in HALF_OPEN its permit is returned, provided a trial call
 * is still in flight (a stray release never mints an extra permit);
 * otherwise nothing happens. */
void chorus_breaker_release(struct chorus_breaker *b);

/* The state as acquire would find it: OPEN whose open_for has elapsed reads
 * as HALF_OPEN. A query only — the transition itself happens at the next
 * acquire, so looking never changes what happens to calls in flight. */
enum chorus_breaker_state chorus_breaker_state(const struct chorus_breaker *b);

/* "closed", "open", "half_open" (the names b:state() returns in Lua);
 * "unknown" otherwise. Static strings. */
const char *chorus_breaker_state_name(enum chorus_breaker_state state);

/* Fills *st for the state chorus_breaker_state reports (an OPEN breaker due
 * for HALF_OPEN reads as an empty half-open window). Drops TIME buckets that
 * have left the window, which changes no decision. */
void chorus_breaker_stats(struct chorus_breaker *b, struct chorus_breaker_stats *st);

#endif
