/* runtime.h — the one object that holds a chorus process's state.
 *
 * A runtime owns one libuv loop, the outbound HTTP client, the scheduler of
 * runs and tasks, and the limits. It is attached to one lua_State (stored in
 * its registry) by luaopen_chorus_core(), both in ./chorus and in the Lua C
 * module that busted loads, so the two execute the same code. There is no
 * global mutable state outside it.
 */
#ifndef CHORUS_RUNTIME_H
#define CHORUS_RUNTIME_H

#include <lua.h>
#include <stddef.h>
#include <time.h>
#include <uv.h>

#define CHORUS_VERSION "0.1.0"

struct chorus_run;
struct chorus_task;
struct chorus_http_client;
struct chorus_vtimer;
struct chorus_waiter;      /* a task parked in core.wait (lua_wait.c) */
struct chorus_block_owner; /* alloc.c */
struct chorus_account;     /* alloc.c */

/* Per-run limits; 0 means unlimited. */
struct chorus_limits {
    size_t run_memory;      /* bytes a run may grow the Lua heap by */
    long run_instructions;  /* Lua VM instructions per run */
    long run_cpu_ms;        /* CPU time per run, in milliseconds (scheduler.h) */
    size_t workflow_memory; /* bytes one workflow's ended runs may keep (alloc.h) */
};

/* Defaults a newcomer gets: generous for real workflows, fatal for runaways.
 * The CPU limit is several times what the instruction budget takes in plain
 * Lua, so it stops only runs whose C calls (s:upper() of a megabyte, one
 * instruction) do far more work than their instructions. */
#define CHORUS_DEFAULT_RUN_MEMORY ((size_t)64 << 20)
#define CHORUS_DEFAULT_RUN_INSTRUCTIONS 100000000L
#define CHORUS_DEFAULT_RUN_CPU_MS 5000L
#define CHORUS_DEFAULT_WORKFLOW_MEMORY (4 * CHORUS_DEFAULT_RUN_MEMORY)

/* Small-block cache of the Lua allocator: glibc's chunk sizes up to 1 KiB. */
#define CHORUS_ALLOC_CLASSES 64
#define CHORUS_ALLOC_CACHE_MAX ((size_t)16 << 20)

/* Finished coroutines kept for reuse by the scheduler. */
#define CHORUS_CO_POOL 256

struct chorus_runtime {
    uv_loop_t loop;
    lua_State *L;
    struct chorus_http_client *http;
    struct chorus_limits limits;
    uv_idle_t idle;                 /* drains the ready queue each turn */
    struct chorus_task *ready_head; /* tasks to resume (scheduler.c) */
    struct chorus_task *ready_tail;
    struct chorus_task *urgent_tail; /* last of those woken by the running task */
    int urgent_streak;               /* urgent ones resumed in a row */
    int in_drain;                    /* chorus_sched_drain is resuming tasks */
    int background;                  /* 1: what gets ready now is not urgent */
    struct chorus_run *runs;         /* every live run */
    struct chorus_task *current;     /* task being resumed, or NULL */
    size_t lua_bytes;                /* Lua heap size, from the allocator */
    int stopping;                    /* core.stop() was called */
    struct event *events;            /* signal and folder watches (lua_events.c) */
    int virtual_clock;               /* chorus.testing: time is vnow */
    double vnow;                     /* virtual seconds since the epoch */
    struct chorus_vtimer *vtimers;   /* virtual sleepers, by due time */
    struct chorus_waiter *waiters;   /* tasks parked in core.wait (lua_wait.c) */
    unsigned long long next_token;   /* core.wait_token */
    lua_Alloc base_alloc;            /* the allocator we wrap */
    void *base_alloc_ud;
    /* Freed small Lua blocks by size class (runtime.c), when base_alloc is
     * lauxlib's malloc-based one; caching off otherwise. */
    int cache_on;
    timer_t watchdog; /* arms the budget hook (watchdog.h) */
    int watchdog_on;  /* 0: every budgeted task keeps the hook instead */
    /* Without the watchdog: when the task being resumed started, for the
     * CPU limit (scheduler.c); 0 when its run has none. */
    double resume_started;
    void *cache[CHORUS_ALLOC_CLASSES + 1];
    size_t cached_bytes;
    /* Finished task coroutines kept for the next tasks (scheduler.c), each
     * still anchored by its registry ref. */
    lua_State *co_pool[CHORUS_CO_POOL];
    int co_pool_ref[CHORUS_CO_POOL];
    int nco_pool;
    /* Who pays for each big Lua block (alloc.c): the account of the run
     * that made it, so that its free gives the bytes back to that run
     * whichever run the collector happens to free it under. */
    struct chorus_block_owner *owners; /* open addressing, by block address */
    size_t owners_cap, owners_len;
    struct chorus_account *accounts; /* [0] is nobody's: the server's */
    unsigned accounts_len, accounts_cap, accounts_free;
    /* What each workflow's ended runs left alive (alloc.h); [0] unused. */
    struct chorus_workflow_account *workflows;
    unsigned workflows_len, workflows_cap;
    struct chorus_run *charge_run; /* charged instead of the current run */
};

/* Returns the runtime attached to L (any thread of it), or NULL. */
struct chorus_runtime *chorus_runtime_of(lua_State *L);

/* Returns the runtime of L, creating it (and installing chorus_alloc as the
 * state's allocator) on first use. Raises a Lua error when it cannot. */
struct chorus_runtime *chorus_runtime_attach(lua_State *L);

/* Lua entry point of the core: creates the runtime for L on first call and
 * returns the `chorus.core` table of C functions. */
int luaopen_chorus_core(lua_State *L);

/* The Lua heap allocator (alloc.h). */
void *chorus_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/* Monotonic seconds: CLOCK_MONOTONIC, or the virtual clock under
 * chorus.testing. The clock of timers, breakers, budgets and rate limits. */
double chorus_runtime_now(const struct chorus_runtime *rt);

/* Runs the loop until `done` becomes non-zero or nothing is left to do. */
void chorus_runtime_run_until(struct chorus_runtime *rt, const int *done);

#endif
