/* rate_limit.c — token bucket with reservations (see rate_limit.h). */
#include "rate_limit.h"

#include <math.h>

/* Refill may land a hair under a whole token (0.1 * 10 is not always 1):
 * amounts this close count as whole. */
#define TOKEN_EPSILON 1e-9

int chorus_bucket_init(struct chorus_bucket *b, double rate, double burst, double now) {
    if (!(rate > 0) || !isfinite(rate) || !(burst >= 1) || !isfinite(burst) || !isfinite(now))
        return -1;
    b->rate = rate;
    b->burst = burst;
    b->tokens = burst;
    b->last = now;
    return 0;
}

double chorus_bucket_tokens(const struct chorus_bucket *b, double now) {
    /* A clock that went back refills nothing. */
    if (!(now > b->last))
        return b->tokens;
    return fmin(b->burst, b->tokens + (now - b->last) * b->rate);
}

double chorus_bucket_reserve(struct chorus_bucket *b, double now, double max_wait) {
    double tokens = chorus_bucket_tokens(b, now), wait;
    if (now > b->last)
        b->last = now;
    b->tokens = tokens;
    if (tokens >= 1 - TOKEN_EPSILON) {
        b->tokens = tokens - 1;
        return 0;
    }
    wait = (1 - tokens) / b->rate;
    if (!(wait <= max_wait))
        return -1;
    b->tokens = tokens - 1;
    return wait;
}
