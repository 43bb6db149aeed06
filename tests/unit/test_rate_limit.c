/* test_rate_limit.c — runtime/rate_limit.c on virtual time: burst, spacing
 * of reservations, max_wait rejection and refill capped at burst. */
#include "rate_limit.h"

#include <math.h>

#include "unit.h"

static int near(double a, double b) { return fabs(a - b) < 1e-9; }

static void test_burst_then_spacing(void) {
    struct chorus_bucket b;
    int zeros = 1, spaced = 1;
    CHECK_INT_EQ(chorus_bucket_init(&b, 4, 5, 100), 0); /* 4/s: a token every 0.25 s */
    for (int i = 0; i < 5; i++)
        zeros &= chorus_bucket_reserve(&b, 100, 0) == 0;
    CHECK(zeros);
    CHECK(chorus_bucket_reserve(&b, 100, 0) == -1); /* no waiting allowed */
    /* reservations queue up exactly 1/rate apart */
    for (int i = 1; i <= 8; i++)
        spaced &= chorus_bucket_reserve(&b, 100, 10) == 0.25 * i;
    CHECK(spaced);
    CHECK(near(chorus_bucket_tokens(&b, 100), -8));
    /* a caller arriving later waits for what is left of the queue */
    CHECK(near(chorus_bucket_reserve(&b, 101, 10), 1.25));
}

static void test_max_wait_reserves_nothing(void) {
    struct chorus_bucket b;
    CHECK_INT_EQ(chorus_bucket_init(&b, 2, 1, 0), 0);
    CHECK(chorus_bucket_reserve(&b, 0, 0) == 0);
    CHECK(chorus_bucket_reserve(&b, 0, 0.4) == -1); /* needs 0.5 */
    CHECK(chorus_bucket_reserve(&b, 0, 0.4) == -1);
    CHECK(near(chorus_bucket_tokens(&b, 0), 0));     /* nothing taken */
    CHECK(chorus_bucket_reserve(&b, 0, 0.5) == 0.5); /* exactly max_wait is fine */
    CHECK(chorus_bucket_reserve(&b, 0, 0.5) == -1);  /* next would need 1.0 */
    CHECK(chorus_bucket_reserve(&b, 0, -1) == -1);
    CHECK(near(chorus_bucket_reserve(&b, 0, INFINITY), 1.0));
}

static void test_refill(void) {
    struct chorus_bucket b;
    int zeros = 1;
    CHECK_INT_EQ(chorus_bucket_init(&b, 10, 3, 0), 0);
    for (int i = 0; i < 3; i++)
        chorus_bucket_reserve(&b, 0, 0);
    CHECK(chorus_bucket_reserve(&b, 0, 0) == -1);
    /* 0.1 s brings exactly one token back, rounding notwithstanding */
    CHECK(chorus_bucket_reserve(&b, 0.1, 0) == 0);
    CHECK(chorus_bucket_reserve(&b, 0.1, 0) == -1);
    /* a long idle refills to burst, never above */
    CHECK(near(chorus_bucket_tokens(&b, 1000), 3));
    for (int i = 0; i < 3; i++)
        zeros &= chorus_bucket_reserve(&b, 1000, 0) == 0;
    CHECK(zeros);
    CHECK(chorus_bucket_reserve(&b, 1000, 0) == -1);
    /* partial refill pays down the wait */
    CHECK(near(chorus_bucket_reserve(&b, 1000.05, 1), 0.05));
    /* a clock that goes back refills nothing */
    CHECK(near(chorus_bucket_tokens(&b, 999), chorus_bucket_tokens(&b, 1000.05)));
    /* reservations are repaid before new tokens accrue */
    CHECK(near(chorus_bucket_tokens(&b, 1000.1), 0));
    CHECK(near(chorus_bucket_tokens(&b, 1000.2), 1));
}

static void test_bad_args(void) {
    struct chorus_bucket b;
    CHECK_INT_EQ(chorus_bucket_init(&b, 0, 5, 0), -1);
    CHECK_INT_EQ(chorus_bucket_init(&b, -1, 5, 0), -1);
    CHECK_INT_EQ(chorus_bucket_init(&b, 1, 0.5, 0), -1);
    CHECK_INT_EQ(chorus_bucket_init(&b, NAN, 5, 0), -1);
    CHECK_INT_EQ(chorus_bucket_init(&b, 1, INFINITY, 0), -1);
    CHECK_INT_EQ(chorus_bucket_init(&b, 0.5, 1, 0), 0); /* slower than 1/s is fine */
    CHECK(chorus_bucket_reserve(&b, 0, 0) == 0);
    CHECK(chorus_bucket_reserve(&b, 0, 5) == 2);
}

int main(void) {
    test_burst_then_spacing();
    test_max_wait_reserves_nothing();
    test_refill();
    test_bad_args();
    return unit_summary();
}
