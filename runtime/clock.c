/* clock.c — real and manual clocks (see clock.h). */
#include "clock.h"

#include <time.h>

double chorus_clock_now(const struct chorus_clock *c) { return c->now(c->ud); }

/* Neither clock can fail on Linux with a valid pointer. */
static double read_clock(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double chorus_clock_monotonic(void) { return read_clock(CLOCK_MONOTONIC); }

double chorus_clock_wall(void) { return read_clock(CLOCK_REALTIME); }

static double manual_now(void *ud) { return *(const double *)ud; }

struct chorus_clock chorus_clock_manual(double *t) {
    struct chorus_clock c = {manual_now, t};
    return c;
}
