/* rate_limit.h — a token bucket per upstream.
 *
 * Tokens accrue at `rate` per second up to `burst`; each call takes one.
 * When none is left, a call may reserve the next one instead of failing:
 * the bucket goes into debt (tokens below zero) and the caller is told how
 * long to sleep before its token exists. Reservations queue up in the order
 * they were made, spaced exactly 1/rate apart. Time is a `now` the caller
 * passes in (monotonic seconds from a struct chorus_clock), so tests run on
 * virtual time.
 *
 * Invariant: tokens <= burst at all times; tokens < 0 means -tokens
 * reservations are already promised and not yet paid for by refill.
 */
#ifndef CHORUS_RATE_LIMIT_H
#define CHORUS_RATE_LIMIT_H

/* Caller-allocated; no destroy needed. Read it only through the functions. */
struct chorus_bucket {
    double rate;   /* tokens per second */
    double burst;  /* most tokens held */
    double tokens; /* as of `last`; negative: reserved ahead */
    double last;   /* when tokens was computed */
};

/* Sets up a full bucket (burst tokens) at time now. rate > 0 and burst >= 1,
 * both finite. Returns 0, or -1 for arguments out of range (b untouched). */
int chorus_bucket_init(struct chorus_bucket *b, double rate, double burst, double now);

/* Takes a token at time now. Returns 0 when one was available (taken now);
 * a wait > 0 in seconds when the next token is reserved for this caller,
 * who must sleep that long before calling (the reservation is counted
 * already: do not call again for it); or -1 when that wait would exceed
 * max_wait (0: never wait), in which case nothing is reserved. */
double chorus_bucket_reserve(struct chorus_bucket *b, double now, double max_wait);

/* Tokens available at time now, after refill: may be fractional, and
 * negative while reservations are outstanding. Does not change b. */
double chorus_bucket_tokens(const struct chorus_bucket *b, double now);

#endif
