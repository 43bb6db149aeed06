/* bulkhead.c — concurrency slots and a FIFO ring of waiters (see
 * bulkhead.h).
 *
 * Invariant: the waiters are queue[(head + i) % queue_cap] for i in
 * [0, queued), oldest first.
 */
#include "bulkhead.h"

#include <stdlib.h>

int chorus_bulkhead_init(struct chorus_bulkhead *b, int max, int queue) {
    *b = (struct chorus_bulkhead){0};
    if (max < 1 || queue < 0)
        return -1;
    if (queue > 0) {
        b->queue = calloc((size_t)queue, sizeof *b->queue);
        if (!b->queue)
            return -1;
    }
    b->max = max;
    b->queue_cap = queue;
    return 0;
}

void chorus_bulkhead_destroy(struct chorus_bulkhead *b) {
    free(b->queue);
    *b = (struct chorus_bulkhead){0};
}

static uint64_t *slot_at(struct chorus_bulkhead *b, int i) {
    return &b->queue[(b->head + i) % b->queue_cap];
}

enum chorus_bulkhead_result chorus_bulkhead_acquire(struct chorus_bulkhead *b, uint64_t ticket) {
    if (b->in_use < b->max && b->queued == 0) {
        b->in_use++;
        return CHORUS_BULKHEAD_GRANTED;
    }
    if (ticket == 0)
        return CHORUS_BULKHEAD_REJECTED;
    if (b->queued < b->queue_cap) {
        *slot_at(b, b->queued++) = ticket;
        return CHORUS_BULKHEAD_QUEUED;
    }
    b->rejected++;
    return CHORUS_BULKHEAD_REJECTED;
}

uint64_t chorus_bulkhead_release(struct chorus_bulkhead *b) {
    uint64_t next;
    if (b->in_use == 0)
        return 0;
    if (b->queued == 0) {
        b->in_use--;
        return 0;
    }
    /* The slot changes hands: in_use stays. */
    next = *slot_at(b, 0);
    b->head = (b->head + 1) % b->queue_cap;
    b->queued--;
    return next;
}

int chorus_bulkhead_cancel(struct chorus_bulkhead *b, uint64_t ticket) {
    int i = 0;
    while (i < b->queued && *slot_at(b, i) != ticket)
        i++;
    if (i == b->queued)
        return 0;
    for (; i + 1 < b->queued; i++)
        *slot_at(b, i) = *slot_at(b, i + 1);
    b->queued--;
    return 1;
}

void chorus_bulkhead_stats(const struct chorus_bulkhead *b, struct chorus_bulkhead_stats *st) {
    st->max = b->max;
    st->queue = b->queue_cap;
    st->in_use = b->in_use;
    st->queued = b->queued;
    st->rejected = b->rejected;
}
