/* vclock.c — virtual time (see vclock.h).
 *
 * Invariant: rt->vtimers is sorted by due time, ties in insertion order, so
 * tasks sleeping the same amount wake in the order they slept.
 */
#include "vclock.h"

#include <stdlib.h>

struct chorus_vtimer {
    double at;
    struct chorus_task *task;
    struct chorus_runtime *rt;
    struct chorus_vtimer *next;
};

int chorus_vclock_set(struct chorus_runtime *rt, int on, double start) {
    if (rt->runs)
        return -1;
    rt->virtual_clock = on;
    rt->vnow = start;
    return 0;
}

static void unlink_timer(struct chorus_vtimer *v) {
    struct chorus_vtimer **link = &v->rt->vtimers;
    while (*link && *link != v)
        link = &(*link)->next;
    if (*link)
        *link = v->next;
}

static void cancel_vsleep(void *data) {
    unlink_timer(data);
    free(data);
}

int chorus_vclock_sleep(struct chorus_task *t, double seconds) {
    struct chorus_runtime *rt = t->run->rt;
    struct chorus_vtimer *v = malloc(sizeof *v);
    if (!v)
        return -1;
    v->at = rt->vnow + seconds;
    v->task = t;
    v->rt = rt;
    struct chorus_vtimer **link = &rt->vtimers;
    while (*link && (*link)->at <= v->at)
        link = &(*link)->next;
    v->next = *link;
    *link = v;
    chorus_task_park(t, cancel_vsleep, v);
    return 0;
}

int chorus_vclock_fire(struct chorus_runtime *rt) {
    struct chorus_vtimer *v = rt->vtimers;
    if (!v)
        return 0;
    double at = v->at;
    if (at > rt->vnow)
        rt->vnow = at;
    while ((v = rt->vtimers) && v->at <= at) {
        rt->vtimers = v->next;
        struct chorus_task *t = v->task;
        free(v);
        chorus_task_wake(t, 0);
    }
    return 1;
}
