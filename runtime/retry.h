/* retry.h — when to retry an outbound call, and how long to wait first.
 *
 * Pure arithmetic on numbers the caller passes in (a policy, the retry
 * number, the elapsed time, `now`): no clock, no sleeping, no Lua. The
 * binding (chorus.retry, http upstreams) does the sleeping and the calling.
 *
 *   - a policy says how many attempts and which backoff (exponential, full
 *     jitter, AWS decorrelated jitter or equal jitter) between base and cap;
 *     the outbox's redeliveries use equal jitter: half the wait kept, so
 *     waits still grow, half spread, so entries failing together do not
 *     come back together;
 *   - chorus_retry_status_retryable and chorus_retry_after_parse classify a
 *     response and read its Retry-After;
 *   - a retry budget per upstream (Finagle-style) caps retries at a fraction
 *     of first attempts plus a small floor, so a failing upstream never sees
 *     a retry storm however many callers retry it.
 *
 * Invariant: randomness comes only from the caller's *rng state (splitmix64),
 * so a given seed always yields the same delays; tests are deterministic and
 * there is no hidden global state.
 */
#ifndef CHORUS_RETRY_H
#define CHORUS_RETRY_H

#include <stddef.h>
#include <stdint.h>

enum chorus_backoff {
    CHORUS_BACKOFF_EXPONENTIAL,         /* min(cap, base * 2^(retry-1)) */
    CHORUS_BACKOFF_FULL_JITTER,         /* uniform[0, exponential) */
    CHORUS_BACKOFF_DECORRELATED_JITTER, /* min(cap, uniform[base, prev * 3)) */
    CHORUS_BACKOFF_EQUAL_JITTER,        /* uniform[exponential / 2, exponential) */
};

/* Seconds everywhere. */
struct chorus_retry_policy {
    int attempts;                /* total attempts, the first one included; >= 1 */
    enum chorus_backoff backoff; /* how the wait grows */
    double base;                 /* first wait (exponential) or floor (decorrelated); >= 0 */
    double cap;                  /* no backoff wait exceeds it; >= base */
    double max_elapsed;          /* give up rather than retry past this since the first
                                    attempt started; 0: no limit */
};

/* attempts 3, exponential, base 0.1, cap 10, max_elapsed 0 (none). */
struct chorus_retry_policy chorus_retry_policy_default(void);

/* Checks every field of p. Returns 0 when valid; otherwise -1 with a message
 * naming the first bad field ("cap must be >= base") written to err (may be
 * NULL; truncated to errlen). */
int chorus_retry_policy_check(const struct chorus_retry_policy *p, char *err, size_t errlen);

/* Maps "exponential", "full_jitter", "decorrelated_jitter" or
 * "equal_jitter" (exact, as in the Lua API) to *out. Returns 0, or -1 for
 * any other name or NULL (then *out is untouched). */
int chorus_backoff_parse(const char *name, enum chorus_backoff *out);

/* The Lua name of b; "unknown" for a value outside the enum. Static. */
const char *chorus_backoff_name(enum chorus_backoff b);

/* The backoff wait before retry number `retry` (1 for the first retry; values
 * below 1 count as 1), in seconds, in [0, p->cap]:
 *   exponential          min(cap, base * 2^(retry-1)), exact, no draw;
 *   full jitter          uniform in [0, that);
 *   equal jitter         uniform in [that / 2, that);
 *   decorrelated jitter  min(cap, uniform in [base, prev_delay * 3)), with
 *                        prev_delay taken as base for the first retry or when
 *                        it is below base; never below base unless cap is.
 * prev_delay is the value this function returned for the previous retry (only
 * decorrelated jitter reads it). *rng is the caller's PRNG state, advanced by
 * each draw; seed it with anything (0 included). Never fails. */
double chorus_retry_delay(const struct chorus_retry_policy *p, int retry, double prev_delay,
                          uint64_t *rng);

/* Decides whether retry number `retry` may happen and how long to wait first.
 * elapsed: seconds since the first attempt started; retry_after: the
 * server's Retry-After in seconds, or < 0 when it sent none.
 * Returns -1 (give up) when the attempts are used up (retry >= attempts) or
 * when max_elapsed > 0 and elapsed + the wait would pass it; otherwise the
 * wait, max(backoff, min(retry_after, cap)): a Retry-After longer than cap
 * is shortened to cap, and max_elapsed or the run's deadline bound it. *prev_delay
 * (in/out, 0 before the first retry) carries the backoff part between
 * retries for decorrelated jitter. The retry budget is separate: call
 * chorus_retry_budget_try_withdraw after this says yes. */
double chorus_retry_next(const struct chorus_retry_policy *p, int retry, double elapsed,
                         double retry_after, double *prev_delay, uint64_t *rng);

/* 1 when an HTTP status is worth retrying: 408, 425, 429 and 500-599; else 0.
 * Whether the method may be retried (idempotency) is the caller's call. */
int chorus_retry_status_retryable(long status);

/* Parses a Retry-After header value (RFC 9110 §10.2.3) into *seconds from
 * now: delta-seconds ("120", at most 2^31-1) or an HTTP-date in any of the
 * three forms RFC 9110 makes recipients accept — IMF-fixdate
 * "Sun, 06 Nov 1994 08:49:37 GMT", obsolete RFC 850
 * "Sunday, 06-Nov-94 08:49:37 GMT" (two-digit years more than 50 years
 * ahead of now_epoch are taken in the previous century) and asctime
 * "Sun Nov  6 08:49:37 1994". now_epoch is the current time in seconds since
 * the Unix epoch; a date in the past gives 0. Names are matched
 * case-sensitively, as the grammar says; surrounding spaces and tabs are
 * ignored; no locale is consulted.
 * Returns 0 with *seconds >= 0, or -1 (then *seconds is untouched) for an
 * empty value, a sign, a fraction, an out-of-range number or field, a
 * malformed date or trailing junk. */
int chorus_retry_after_parse(const char *value, double now_epoch, double *seconds);

#define CHORUS_RETRY_BUDGET_SLOTS 10

/* A retry budget: over any window (to the granularity of window/10), retries
 * withdrawn <= ratio * calls deposited + min_per_second * window. Calls and
 * retries are counted in CHORUS_RETRY_BUDGET_SLOTS time slots, so memory is
 * fixed and old deposits expire once their slot leaves the window (after
 * between 0.9 and 1 window). Caller-allocated; no destroy needed. Fields are
 * private. */
struct chorus_retry_budget {
    double ratio;    /* retries allowed per call */
    double reserve;  /* min_per_second * window: retries allowed with no calls */
    double slot_len; /* window / CHORUS_RETRY_BUDGET_SLOTS, seconds */
    struct chorus_retry_budget_slot {
        int64_t epoch; /* floor(now / slot_len) when the slot was last used */
        long calls, retries;
    } slot[CHORUS_RETRY_BUDGET_SLOTS];
};

/* Initialises b: ratio (>= 0, e.g. 0.2 for 20%), min_per_second (>= 0, e.g.
 * 10) and window (> 0 seconds, e.g. 10). Returns 0, or -1 when an argument is
 * out of range or not finite (b is then unusable). */
int chorus_retry_budget_init(struct chorus_retry_budget *b, double ratio, double min_per_second,
                             double window);

/* Deposits one call (each first attempt, never a retry) at time now (the
 * monotonic seconds of a struct chorus_clock). */
void chorus_retry_budget_on_call(struct chorus_retry_budget *b, double now);

/* Withdraws one retry at time now: returns 1 (and counts it) when the window
 * still allows one, else 0 (nothing counted). */
int chorus_retry_budget_try_withdraw(struct chorus_retry_budget *b, double now);

/* Retries still allowed in the window at time now (may be fractional; for
 * metrics and tests). Does not change b. */
double chorus_retry_budget_balance(const struct chorus_retry_budget *b, double now);

#endif
