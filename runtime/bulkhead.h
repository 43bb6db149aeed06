/* bulkhead.h — at most `max` concurrent calls, and a bounded FIFO of waiters.
 *
 * A caller asks for a slot with a ticket of its choosing (a task id, say).
 * It is granted at once while a slot is free and nobody waits; otherwise it
 * joins the queue while the queue has room; otherwise it is rejected. When a
 * holder releases its slot the oldest waiter gets it, and release returns
 * that waiter's ticket so the caller can wake it. A waiter that gives up
 * (wait timeout, cancelled task) leaves with chorus_bulkhead_cancel.
 *
 * The engine does no waiting and knows nothing of tasks or time.
 *
 * Invariant: in_use <= max, queued <= queue, and queued > 0 only while
 * in_use == max — a slot never sits free while someone waits for it.
 */
#ifndef CHORUS_BULKHEAD_H
#define CHORUS_BULKHEAD_H

#include <stdint.h>

/* Caller-allocated; set up by chorus_bulkhead_init, torn down by
 * chorus_bulkhead_destroy. Read it only through the functions below. */
struct chorus_bulkhead {
    int max;         /* concurrent calls */
    int queue_cap;   /* waiters at most */
    int in_use;      /* slots held */
    int queued;      /* waiters in queue */
    int head;        /* index of the oldest waiter */
    uint64_t *queue; /* queue_cap tickets, a ring; owned; NULL when queue_cap is 0 */
    uint64_t rejected;
};

enum chorus_bulkhead_result {
    CHORUS_BULKHEAD_GRANTED,  /* a slot is held: release it when the call ends */
    CHORUS_BULKHEAD_QUEUED,   /* waiting: release() will hand over a slot, or cancel() */
    CHORUS_BULKHEAD_REJECTED, /* full: nothing held, nothing to undo */
};

struct chorus_bulkhead_stats {
    int max, queue;    /* as configured */
    int in_use;        /* slots held now */
    int queued;        /* waiters now */
    uint64_t rejected; /* acquires rejected since init */
};

/* Sets up b for max (>= 1) concurrent calls and queue (>= 0) waiters; the
 * queue is allocated here. Returns 0, or -1 when max or queue is out of
 * range or memory runs out; b can be passed to chorus_bulkhead_destroy in
 * either case. */
int chorus_bulkhead_init(struct chorus_bulkhead *b, int max, int queue);

/* Frees the queue. Waiters still queued are forgotten (nobody is told);
 * b must be initialised again before reuse. */
void chorus_bulkhead_destroy(struct chorus_bulkhead *b);

/* Asks for a slot on behalf of ticket (nonzero: 0 means "nobody" to
 * release). GRANTED when a slot is free and nobody waits; QUEUED at the tail
 * when the queue has room; REJECTED otherwise, counted in `rejected`. A 0
 * ticket that would queue is REJECTED without being counted. */
enum chorus_bulkhead_result chorus_bulkhead_acquire(struct chorus_bulkhead *b, uint64_t ticket);

/* Ends a granted call (or one handed a slot by a previous release). When
 * someone waits, the slot passes to the oldest waiter, who leaves the queue
 * and whose ticket is returned: the caller must wake it, and that waiter now
 * owes a release. Returns 0 when nobody waited (the slot is freed). A
 * release with no slot held is ignored and returns 0. */
uint64_t chorus_bulkhead_release(struct chorus_bulkhead *b);

/* Removes a queued waiter (the first with that ticket). Returns 1 when it was
 * queued, 0 when not (already handed a slot, never queued): in the latter
 * case a caller that was handed a slot must release it. O(queue). */
int chorus_bulkhead_cancel(struct chorus_bulkhead *b, uint64_t ticket);

/* Fills *st. */
void chorus_bulkhead_stats(const struct chorus_bulkhead *b, struct chorus_bulkhead_stats *st);

#endif
