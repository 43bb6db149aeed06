/* clock.c — real and manual clocks (see clock.h). */
#include "clock.h"

#include <time.h>

double chorus_clock_now(const struct chorus_clock *c) { return c->now(c->ud); }

static double real_now(void *ud) {
    struct timespec ts;
    (void)ud;
    /* CLOCK_MONOTONIC cannot fail on Linux with a valid pointer. */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct chorus_clock chorus_clock_real(void) {
    struct chorus_clock c = {real_now, NULL};
    return c;
}

static double manual_now(void *ud) { return *(const double *)ud; }

struct chorus_clock chorus_clock_manual(double *t) {
    struct chorus_clock c = {manual_now, t};
    return c;
}
