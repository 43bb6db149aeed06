/* breaker.c — circuit breaker state machine and sliding windows (see
 * breaker.h).
 *
 * Invariant: a window's running totals (calls, failed, slow) always equal
 * the sum of the outcomes it still holds — the ring entries of a COUNT
 * window, the buckets of the last `size` seconds of a TIME window — so a
 * rate is O(1) however large the window.
 */
#include "breaker.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

enum { OUT_FAILED = 1, OUT_SLOW = 2 };

struct bucket {
    int calls, failed, slow;
};

struct window {
    enum chorus_breaker_window type;
    int size;                /* calls or seconds */
    int calls, failed, slow; /* totals of what the window holds */
    unsigned char *ring;     /* COUNT: outcome bits of the last `size` calls */
    int next;                /* COUNT: ring slot written next */
    struct bucket *buckets;  /* TIME: bucket s % size holds second s */
    int64_t head_sec;        /* TIME: newest second held; INT64_MIN when empty */
};

struct chorus_breaker {
    struct chorus_breaker_config cfg;
    struct chorus_clock clock;
    enum chorus_breaker_state state;
    struct window closed, half;
    struct window *metrics; /* closed in CLOSED, half in HALF_OPEN, either in OPEN */
    int min_closed;         /* min_calls as it applies to the closed window */
    int min_half;           /* and to the half-open trials */
    double opened_at;
    int permits;   /* HALF_OPEN: trial calls still to hand out */
    int in_flight; /* HALF_OPEN: trials permitted, neither recorded nor released */
    int not_permitted;
};

/* ---- windows ----------------------------------------------------------- */

static int window_init(struct window *w, enum chorus_breaker_window type, int size) {
    w->type = type;
    w->size = size;
    w->ring = NULL;
    w->buckets = NULL;
    if (type == CHORUS_BREAKER_COUNT)
        w->ring = malloc((size_t)size);
    else
        w->buckets = malloc((size_t)size * sizeof *w->buckets);
    return w->ring || w->buckets ? 0 : -1;
}

static void window_reset(struct window *w) {
    w->calls = w->failed = w->slow = 0;
    w->next = 0;
    w->head_sec = INT64_MIN;
    for (int i = 0; w->buckets && i < w->size; i++)
        w->buckets[i] = (struct bucket){0, 0, 0};
}

static int64_t second_of(double now) {
    double s = floor(now);
    if (!(s > -4e18))
        return (int64_t)-4e18;
    return s > 4e18 ? (int64_t)4e18 : (int64_t)s;
}

static struct bucket *bucket_at(struct window *w, int64_t sec) {
    int64_t i = sec % w->size;
    return &w->buckets[i < 0 ? i + w->size : i];
}

/* Drops the TIME buckets older than `size` seconds before now. A clock that
 * went back leaves the window as it is. */
static void window_advance(struct window *w, double now) {
    int64_t cur = second_of(now);
    if (w->type != CHORUS_BREAKER_TIME || cur <= w->head_sec)
        return;
    if (w->head_sec == INT64_MIN || cur - w->head_sec >= w->size) {
        window_reset(w);
    } else {
        for (int64_t s = w->head_sec + 1; s <= cur; s++) {
            struct bucket *k = bucket_at(w, s);
            w->calls -= k->calls;
            w->failed -= k->failed;
            w->slow -= k->slow;
            *k = (struct bucket){0, 0, 0};
        }
    }
    w->head_sec = cur;
}

static void window_add(struct window *w, double now, int outcome) {
    int failed = (outcome & OUT_FAILED) != 0, slow = (outcome & OUT_SLOW) != 0;
    if (w->type == CHORUS_BREAKER_TIME) {
        struct bucket *k;
        window_advance(w, now);
        k = bucket_at(w, w->head_sec);
        k->calls++;
        k->failed += failed;
        k->slow += slow;
    } else {
        if (w->calls == w->size) {
            unsigned char old = w->ring[w->next];
            w->calls--;
            w->failed -= (old & OUT_FAILED) != 0;
            w->slow -= (old & OUT_SLOW) != 0;
        }
        w->ring[w->next] = (unsigned char)outcome;
        w->next = (w->next + 1) % w->size;
    }
    w->calls++;
    w->failed += failed;
    w->slow += slow;
}

static double rate(int part, int calls, int min_calls) {
    return calls == 0 || calls < min_calls ? -1 : part * 100.0 / calls;
}

enum verdict { BELOW_MIN_CALLS, BELOW_THRESHOLDS, ABOVE_THRESHOLDS };

static enum verdict judge(const struct chorus_breaker *b, const struct window *w, int min_calls) {
    double fr = rate(w->failed, w->calls, min_calls), sr = rate(w->slow, w->calls, min_calls);
    if (fr < 0)
        return BELOW_MIN_CALLS;
    return fr >= b->cfg.failure_rate || sr >= b->cfg.slow_call_rate ? ABOVE_THRESHOLDS
                                                                    : BELOW_THRESHOLDS;
}

/* ---- config ------------------------------------------------------------ */

struct chorus_breaker_config chorus_breaker_config_default(void) {
    struct chorus_breaker_config c = {CHORUS_BREAKER_COUNT, 100, 100, 50, 100, 60, 60, 10};
    return c;
}

static int fail(char *err, size_t errlen, const char *msg) {
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
    return -1;
}

static int percent_ok(double v) { return v > 0 && v <= 100; }

int chorus_breaker_config_check(const struct chorus_breaker_config *c, char *err, size_t errlen) {
    if (c->window_type != CHORUS_BREAKER_COUNT && c->window_type != CHORUS_BREAKER_TIME)
        return fail(err, errlen, "window_type must be COUNT or TIME");
    if (c->window_type == CHORUS_BREAKER_COUNT && (c->window < 1 || c->window > 1000000))
        return fail(err, errlen, "window must be between 1 and 1000000 calls");
    if (c->window_type == CHORUS_BREAKER_TIME && (c->window < 1 || c->window > 86400))
        return fail(err, errlen, "window must be between 1 and 86400 seconds");
    if (c->min_calls < 1)
        return fail(err, errlen, "min_calls must be >= 1");
    if (!percent_ok(c->failure_rate))
        return fail(err, errlen, "failure_rate must be a percentage in (0, 100]");
    if (!percent_ok(c->slow_call_rate))
        return fail(err, errlen, "slow_call_rate must be a percentage in (0, 100]");
    if (!(c->slow_call_duration > 0) || !isfinite(c->slow_call_duration))
        return fail(err, errlen, "slow_call_duration must be a finite number of seconds > 0");
    if (!(c->open_for >= 0) || !isfinite(c->open_for))
        return fail(err, errlen, "open_for must be a finite number of seconds >= 0");
    if (c->half_open_calls < 1 || c->half_open_calls > 1000000)
        return fail(err, errlen, "half_open_calls must be between 1 and 1000000");
    return 0;
}

/* ---- state machine ----------------------------------------------------- */

static double now_of(const struct chorus_breaker *b) { return chorus_clock_now(&b->clock); }

static void to_closed(struct chorus_breaker *b) {
    b->state = CHORUS_BREAKER_CLOSED;
    window_reset(&b->closed);
    b->metrics = &b->closed;
    b->not_permitted = 0;
}

/* Keeps the window that opened it, for the stats. */
static void to_open(struct chorus_breaker *b, double now) {
    b->state = CHORUS_BREAKER_OPEN;
    b->opened_at = now;
}

static void to_half_open(struct chorus_breaker *b) {
    b->state = CHORUS_BREAKER_HALF_OPEN;
    window_reset(&b->half);
    b->metrics = &b->half;
    b->permits = b->cfg.half_open_calls;
    b->in_flight = 0;
    b->not_permitted = 0;
}

static int open_elapsed(const struct chorus_breaker *b, double now) {
    return now - b->opened_at >= b->cfg.open_for;
}

struct chorus_breaker *chorus_breaker_new(const struct chorus_breaker_config *cfg,
                                          const struct chorus_clock *clock) {
    struct chorus_breaker *b;
    if (chorus_breaker_config_check(cfg, NULL, 0) != 0)
        return NULL;
    b = calloc(1, sizeof *b);
    if (!b)
        goto fail;
    b->cfg = *cfg;
    b->clock = *clock;
    if (window_init(&b->closed, cfg->window_type, cfg->window) != 0)
        goto fail;
    /* Resilience4j: the half-open trials are a COUNT window of their own. */
    if (window_init(&b->half, CHORUS_BREAKER_COUNT, cfg->half_open_calls) != 0)
        goto fail;
    /* Resilience4j caps min_calls at the size of a COUNT window, the
     * half-open one included. */
    b->min_closed = cfg->window_type == CHORUS_BREAKER_COUNT && cfg->min_calls > cfg->window
                        ? cfg->window
                        : cfg->min_calls;
    b->min_half = cfg->min_calls < cfg->half_open_calls ? cfg->min_calls : cfg->half_open_calls;
    window_reset(&b->half);
    to_closed(b);
    return b;
fail:
    chorus_breaker_free(b);
    return NULL;
}

void chorus_breaker_free(struct chorus_breaker *b) {
    if (!b)
        return;
    free(b->half.ring);
    free(b->closed.ring);
    free(b->closed.buckets);
    free(b);
}

int chorus_breaker_acquire(struct chorus_breaker *b) {
    if (b->state == CHORUS_BREAKER_CLOSED)
        return 1;
    if (b->state == CHORUS_BREAKER_OPEN && open_elapsed(b, now_of(b)))
        to_half_open(b);
    if (b->state == CHORUS_BREAKER_HALF_OPEN && b->permits > 0) {
        b->permits--;
        b->in_flight++;
        return 1;
    }
    b->not_permitted++;
    return 0;
}

void chorus_breaker_record(struct chorus_breaker *b, int failed, double duration) {
    double now = now_of(b);
    int outcome = (failed ? OUT_FAILED : 0) | (duration > b->cfg.slow_call_duration ? OUT_SLOW : 0);
    window_add(b->metrics, now, outcome);
    if (b->state == CHORUS_BREAKER_CLOSED) {
        if (judge(b, &b->closed, b->min_closed) == ABOVE_THRESHOLDS)
            to_open(b, now);
    } else if (b->state == CHORUS_BREAKER_HALF_OPEN) {
        if (b->in_flight > 0)
            b->in_flight--;
        switch (judge(b, &b->half, b->min_half)) {
        case ABOVE_THRESHOLDS:
            to_open(b, now);
            break;
        case BELOW_THRESHOLDS:
            to_closed(b);
            break;
        case BELOW_MIN_CALLS:
            break;
        }
    }
}

/* Only a trial still in flight gives its permit back, so a stray release
 * never mints more trials than half_open_calls. */
void chorus_breaker_release(struct chorus_breaker *b) {
    if (b->state == CHORUS_BREAKER_HALF_OPEN && b->in_flight > 0) {
        b->in_flight--;
        b->permits++;
    }
}

enum chorus_breaker_state chorus_breaker_state(const struct chorus_breaker *b) {
    if (b->state == CHORUS_BREAKER_OPEN && open_elapsed(b, now_of(b)))
        return CHORUS_BREAKER_HALF_OPEN;
    return b->state;
}

const char *chorus_breaker_state_name(enum chorus_breaker_state state) {
    switch (state) {
    case CHORUS_BREAKER_CLOSED:
        return "closed";
    case CHORUS_BREAKER_OPEN:
        return "open";
    case CHORUS_BREAKER_HALF_OPEN:
        return "half_open";
    }
    return "unknown";
}

void chorus_breaker_stats(struct chorus_breaker *b, struct chorus_breaker_stats *st) {
    double now = now_of(b);
    const struct window *w = b->metrics;
    int min_calls = w == &b->closed ? b->min_closed : b->min_half;
    if (b->state == CHORUS_BREAKER_OPEN && open_elapsed(b, now)) {
        *st = (struct chorus_breaker_stats){-1, -1, 0, 0, 0, 0};
        return;
    }
    window_advance(b->metrics, now);
    st->calls = w->calls;
    st->failed = w->failed;
    st->slow = w->slow;
    st->failure_rate = rate(w->failed, w->calls, min_calls);
    st->slow_rate = rate(w->slow, w->calls, min_calls);
    st->not_permitted = b->not_permitted;
}
