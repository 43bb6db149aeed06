/* test_bulkhead.c — runtime/bulkhead.c: slots, the FIFO of waiters, hand-over
 * on release, cancellation and the counters. */
#include "bulkhead.h"

#include "unit.h"

static struct chorus_bulkhead_stats stats(const struct chorus_bulkhead *b) {
    struct chorus_bulkhead_stats st;
    chorus_bulkhead_stats(b, &st);
    return st;
}

static void test_grant_queue_reject(void) {
    struct chorus_bulkhead b;
    struct chorus_bulkhead_stats st;
    CHECK_INT_EQ(chorus_bulkhead_init(&b, 2, 3), 0);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 1), CHORUS_BULKHEAD_GRANTED);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 2), CHORUS_BULKHEAD_GRANTED);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 3), CHORUS_BULKHEAD_QUEUED);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 4), CHORUS_BULKHEAD_QUEUED);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 5), CHORUS_BULKHEAD_QUEUED);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 6), CHORUS_BULKHEAD_REJECTED);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 7), CHORUS_BULKHEAD_REJECTED);
    st = stats(&b);
    CHECK(st.max == 2 && st.queue == 3);
    CHECK(st.in_use == 2 && st.queued == 3 && st.rejected == 2);

    /* release hands the slot to the oldest waiter, in order */
    CHECK_INT_EQ(chorus_bulkhead_release(&b), 3);
    CHECK_INT_EQ(stats(&b).in_use, 2);
    CHECK_INT_EQ(stats(&b).queued, 2);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 8), CHORUS_BULKHEAD_QUEUED); /* behind 4, 5 */
    CHECK_INT_EQ(chorus_bulkhead_release(&b), 4);
    CHECK_INT_EQ(chorus_bulkhead_release(&b), 5);
    CHECK_INT_EQ(chorus_bulkhead_release(&b), 8);
    /* nobody waits: slots free up */
    CHECK_INT_EQ(chorus_bulkhead_release(&b), 0);
    CHECK_INT_EQ(stats(&b).in_use, 1);
    CHECK_INT_EQ(chorus_bulkhead_release(&b), 0);
    CHECK_INT_EQ(stats(&b).in_use, 0);
    CHECK_INT_EQ(chorus_bulkhead_release(&b), 0); /* unbalanced: ignored */
    CHECK_INT_EQ(stats(&b).in_use, 0);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 9), CHORUS_BULKHEAD_GRANTED);
    CHECK(stats(&b).rejected == 2);
    chorus_bulkhead_destroy(&b);
}

static void test_cancel(void) {
    struct chorus_bulkhead b;
    CHECK_INT_EQ(chorus_bulkhead_init(&b, 1, 4), 0);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 10), CHORUS_BULKHEAD_GRANTED);
    for (uint64_t t = 11; t <= 14; t++)
        CHECK_INT_EQ(chorus_bulkhead_acquire(&b, t), CHORUS_BULKHEAD_QUEUED);
    CHECK_INT_EQ(chorus_bulkhead_cancel(&b, 12), 1); /* from the middle */
    CHECK_INT_EQ(chorus_bulkhead_cancel(&b, 12), 0); /* not queued any more */
    CHECK_INT_EQ(chorus_bulkhead_cancel(&b, 10), 0); /* holds the slot, never queued */
    CHECK_INT_EQ(chorus_bulkhead_cancel(&b, 99), 0);
    CHECK_INT_EQ(stats(&b).queued, 3);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 15), CHORUS_BULKHEAD_QUEUED); /* room again */
    CHECK_INT_EQ(chorus_bulkhead_cancel(&b, 15), 1);                       /* the tail */
    CHECK_INT_EQ(chorus_bulkhead_release(&b), 11);
    CHECK_INT_EQ(chorus_bulkhead_cancel(&b, 13), 1); /* the head */
    CHECK_INT_EQ(chorus_bulkhead_release(&b), 14);
    CHECK_INT_EQ(chorus_bulkhead_release(&b), 0);
    CHECK(stats(&b).in_use == 0 && stats(&b).queued == 0 && stats(&b).rejected == 0);
    chorus_bulkhead_destroy(&b);
}

/* The ring wraps many times without losing order. */
static void test_ring_wraps(void) {
    struct chorus_bulkhead b;
    int in_order = 1;
    uint64_t next_expected = 2;
    CHECK_INT_EQ(chorus_bulkhead_init(&b, 1, 3), 0);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 1), CHORUS_BULKHEAD_GRANTED);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 2), CHORUS_BULKHEAD_QUEUED);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 3), CHORUS_BULKHEAD_QUEUED);
    for (uint64_t t = 4; t < 100; t++) {
        in_order &= chorus_bulkhead_acquire(&b, t) == CHORUS_BULKHEAD_QUEUED;
        in_order &= chorus_bulkhead_release(&b) == next_expected++;
        if (t % 7 == 0) { /* cancel the newest now and then */
            in_order &= chorus_bulkhead_cancel(&b, t) == 1;
            in_order &= chorus_bulkhead_acquire(&b, t) == CHORUS_BULKHEAD_QUEUED;
        }
    }
    CHECK(in_order);
    CHECK_INT_EQ(stats(&b).queued, 2);
    chorus_bulkhead_destroy(&b);
}

static void test_no_queue_and_bad_args(void) {
    struct chorus_bulkhead b;
    CHECK_INT_EQ(chorus_bulkhead_init(&b, 1, 0), 0);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 1), CHORUS_BULKHEAD_GRANTED);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 2), CHORUS_BULKHEAD_REJECTED);
    CHECK_INT_EQ(chorus_bulkhead_cancel(&b, 2), 0);
    CHECK(stats(&b).rejected == 1);
    CHECK_INT_EQ(chorus_bulkhead_release(&b), 0);
    chorus_bulkhead_destroy(&b);

    CHECK_INT_EQ(chorus_bulkhead_init(&b, 1, 2), 0);
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 0), CHORUS_BULKHEAD_GRANTED);  /* 0 can hold */
    CHECK_INT_EQ(chorus_bulkhead_acquire(&b, 0), CHORUS_BULKHEAD_REJECTED); /* not wait */
    CHECK(stats(&b).rejected == 0 && stats(&b).queued == 0);
    chorus_bulkhead_destroy(&b);

    CHECK_INT_EQ(chorus_bulkhead_init(&b, 0, 2), -1);
    chorus_bulkhead_destroy(&b); /* safe after a failed init */
    CHECK_INT_EQ(chorus_bulkhead_init(&b, 1, -1), -1);
    chorus_bulkhead_destroy(&b);
}

int main(void) {
    test_grant_queue_reject();
    test_cancel();
    test_ring_wraps();
    test_no_queue_and_bad_args();
    return unit_summary();
}
