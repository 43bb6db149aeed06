/* scheduler.h — runs and tasks: Lua coroutines parked on I/O and resumed by C.
 *
 * A run is one workflow execution; it owns its tasks. Its first task (id 1)
 * runs the workflow; chorus.all and friends spawn more tasks in the same run.
 * A task that starts I/O parks itself (chorus_task_park) and yields; the I/O
 * callback pushes the results on the task's coroutine and wakes it
 * (chorus_task_wake); the scheduler resumes ready tasks from one place, the
 * loop's idle callback, so no resume ever nests inside another.
 *
 * Invariant: a task has at most one pending operation, and exactly one of
 * {its cancel function runs, it is woken} happens to that operation.
 */
#ifndef CHORUS_SCHEDULER_H
#define CHORUS_SCHEDULER_H

#include "runtime.h"

/* Registry name of the metatable of chorus errors ({kind=, message=}); set
 * by lua/chorus/errors.lua, so errors made here print as theirs do. */
#define CHORUS_ERROR_MT "chorus.error"

enum chorus_task_state { TASK_READY, TASK_RUNNING, TASK_PARKED, TASK_DONE };

/* Why a run was stopped by the runtime rather than by its own code.
 * KILL_BUDGET is the instruction budget, KILL_CPU the CPU limit: both are
 * kind "budget" to the run, with a message naming the limit. */
/* KILL_KEPT: the run started while its workflow kept more than
 * limits.workflow_memory between runs (alloc.h): kind "memory", raised at
 * its first instruction. */
enum chorus_kill { KILL_NONE, KILL_BUDGET, KILL_CPU, KILL_MEMORY, KILL_DEADLINE, KILL_KEPT };

typedef void (*chorus_cancel_fn)(void *data);

struct chorus_task {
    struct chorus_run *run;
    struct chorus_task *parent;
    int id; /* 1-based index in run->tasks */
    lua_State *co;
    int co_ref; /* registry anchor of co while alive */
    enum chorus_task_state state;
    int nargs;               /* values pushed on co for the next resume */
    int ok;                  /* when DONE */
    int result_ref;          /* when DONE: registry ref of its values (see pack_ref) */
    int nresults;            /* when DONE: how many */
    chorus_cancel_fn cancel; /* pending operation, while PARKED */
    void *cancel_data;
    int awaiting;                  /* parked in chorus_task_await */
    int interruptible;             /* parked by chorus_task_yield */
    int interrupted;               /* woken by chorus_run_interrupt: raises on resume */
    struct chorus_task *done_head; /* finished children not yet reported */
    struct chorus_task *done_tail;
    struct chorus_task *next_done;
    struct chorus_task *next_ready;
    int queued;
    int uncharged; /* doing the server's work on its run's output (chorus_charged_run) */
};

typedef void (*chorus_run_done_fn)(struct chorus_run *run, void *data);

struct chorus_run {
    struct chorus_runtime *rt;
    struct chorus_run *prev, *next;
    char id[37]; /* uuid text */
    struct chorus_task **tasks;
    int ntasks, cap;
    int nqueued;       /* of its tasks, on the ready queue */
    int allow_io;      /* 0 while a script's top level runs */
    size_t mem;        /* heap growth charged to this run */
    unsigned account;  /* its slot in rt->accounts (alloc.h); 0: none */
    unsigned workflow; /* its workflow's account in rt->workflows (alloc.h); 0: none */
    long instructions;
    long long cpu_ns; /* CPU time charged to this run (see below) */
    int hooked;       /* the watchdog caught it running: counted from then on */
    enum chorus_kill killed;
    struct chorus_limits limits;
    uint64_t deadline_ms; /* loop time; 0: none */
    int done, ok;
    int result_ref;  /* when done: registry ref of its values or error (see pack_ref) */
    int nresults;    /* when done: how many */
    char *traceback; /* when failed with a Lua error; owned */
    chorus_run_done_fn on_done;
    void *on_done_data;
    int interrupt_ref; /* the error chorus_run_interrupt raises; LUA_NOREF */
    /* The task whose pending operation owns this run (core.execute's child:
     * the operation's cancel or its on_done frees it), or NULL for a run
     * that whoever started it frees (a detached run, a request's run, the
     * CLI's). An owned run is never freed by anyone else: freeing its
     * owner's run cancels that operation, which frees it. */
    struct chorus_task *owner;
};

/* The CPU limit (limits.run_cpu_ms). The instruction budget alone let a
 * loop of big C calls (s:upper() of a megabyte, a == b of two long strings,
 * s .. s: a VM instruction each, and far more CPU than one) hold the loop
 * thread for minutes within its budget. So a run with a CPU limit is charged the
 * watchdog's ticks that land while its tasks are resumed (watchdog.h), and
 * the count hook, which the first such tick arms, stops it once they pass
 * the limit: after the C call that is running returns, with kind "budget".
 * One C call cannot be stopped halfway: the sandbox and the C bindings
 * charge their big ones to the instruction budget up front instead
 * (core.charge, lua_charged.c). Without the watchdog, a resume's time on
 * the monotonic clock is charged (no tick to sample with; reading the
 * thread's CPU clock in the hook was a system call every 1000
 * instructions). */

/* Starts a run whose first task calls the function at stack index -(nargs+1)
 * of L with the nargs values above it (all popped). Returns the run, or NULL
 * when out of memory (nothing popped then). The task starts on the next loop
 * turn; on_done (may be NULL) runs once when the first task ends. */
struct chorus_run *chorus_run_start(struct chorus_runtime *rt, lua_State *L, int nargs,
                                    const struct chorus_limits *limits, int allow_io,
                                    chorus_run_done_fn on_done, void *data);

/* The same, under the id given (37 bytes: at most 36 characters, NUL-ended) rather
 * than a new random one; id NULL or "": a new one. */
struct chorus_run *chorus_run_start_id(struct chorus_runtime *rt, lua_State *L, int nargs,
                                       const struct chorus_limits *limits, int allow_io,
                                       chorus_run_done_fn on_done, void *data, const char *id);

/* Pushes the run's outcome on L: true, values... or false, error. Returns the
 * number of values pushed. Valid once run->done. */
int chorus_run_push_result(struct chorus_run *run, lua_State *L);

/* Cancels what is still running and frees the run, and with it the runs
 * its tasks' pending operations own (run->owner). Those were started after
 * it, so they come before it on rt->runs (newest first): a walk of the list
 * that frees a run may keep its pointer to the next one. */
void chorus_run_free(struct chorus_run *run);

/* Spawns a task in the current task's run, calling the function below nargs
 * values on L. Returns the task id. Raises a Lua error outside a run. */
int chorus_task_spawn(lua_State *L, int nargs);

/* The task being resumed, checked: raises a Lua error when L is not a task's
 * own coroutine (e.g. called at a script's top level or from a coroutine the
 * script created itself) or when io is asked for and the run has none. */
struct chorus_task *chorus_task_current(lua_State *L, int need_io);

/* chorus_task_current for a primitive about to park and yield: also raises
 * a {kind="script"} error when L cannot yield here (inside a metamethod, a
 * table.sort comparator, a gsub replacement function, a load reader: any
 * C-call boundary). Call it before starting the operation, so that nothing
 * is left pending when it raises. */
struct chorus_task *chorus_task_waitable(lua_State *L, int need_io);

/* Records the pending operation of t (about to yield). */
void chorus_task_park(struct chorus_task *t, chorus_cancel_fn cancel, void *data);

/* Yields L, the coroutine of t, parked by chorus_task_park: the values
 * its operation pushes are the primitive's results, unless
 * chorus_run_interrupt ends the wait first, which raises the run's
 * interrupt error there instead. `return chorus_task_yield(L, t);` */
int chorus_task_yield(lua_State *L, struct chorus_task *t);

/* The live run whose id is id, or NULL. */
struct chorus_run *chorus_run_find(struct chorus_runtime *rt, const char *id);

/* Interrupts run (a cancellation): the value on top of L (popped) becomes
 * its interrupt error, and each of its tasks parked in chorus_task_yield
 * has its operation cancelled (an HTTP transfer stops) and raises that
 * error where it waited. Tasks awaiting children, committing or ready are
 * left alone: they meet the run's stop in Lua (chorus.runstate). Returns
 * how many tasks were interrupted. */
int chorus_run_interrupt(struct chorus_run *run, lua_State *L);

/* Makes t ready with the nargs values its pending operation pushed on t->co. */
void chorus_task_wake(struct chorus_task *t, int nargs);

/* Between chorus_sched_background(rt, 1) and (rt, 0), tasks made ready
 * (runs started, tasks woken) queue behind the others instead of running
 * next: for what is not a continuation of the running task. Not nested;
 * keep nothing that may raise a Lua error in between. */
void chorus_sched_background(struct chorus_runtime *rt, int on);

/* Cancels a task and its descendants: their pending operations are cancelled
 * and their coroutines closed. Their result is a {kind="cancelled"} error. */
void chorus_task_cancel(struct chorus_task *t);

/* Looks up task id in t's run; NULL when unknown. */
struct chorus_task *chorus_task_find(struct chorus_run *run, int id);

/* Returns the id of a child of t that finished and was not reported yet, in
 * the order they finished; if none has, parks t (returns 0) and t is woken
 * with that id pushed. Cancelled children are never reported. O(1). */
int chorus_task_await(struct chorus_task *t);

/* Pushes a done task's results: true, values... or false, error. */
int chorus_task_push_result(struct chorus_task *t, lua_State *L);

/* Gives co (a coroutine a script made inside the current run) the count
 * hook when the run has an instruction budget: the watchdog only watches
 * task coroutines, so these are counted from their start. */
void chorus_budget_hook(lua_State *co);

/* Charges n instructions' worth of work a C function does (core.charge, the
 * charged string functions: lua_charged.h) to the running task's run when
 * it has an instruction budget, and stops it as the count hook would
 * (chorus_run_stop) when the budget is spent, when its CPU limit is passed
 * or when a limit stopped it already. Elsewhere does nothing. */
void chorus_run_charge(lua_State *L, lua_Integer n);

/* Stops run for `why` as the count hook stops it, for limits enforced in C
 * outside the VM (the pattern matcher's steps, lua_pattern.h): the run is
 * marked killed (a reason it already has stays), L and the run's running
 * task get the count hook on every instruction so none of its code goes on,
 * and the kill's error is raised on L. Does not return. */
void chorus_run_stop(lua_State *L, struct chorus_run *run, enum chorus_kill why);

/* The run whose limits the work now running counts against: the current
 * task's run, or NULL outside a run and while that task does uncharged work
 * (core.uncharged): what the server does with a run's output after the
 * run's code has ended (encoding, storing and answering its record) is
 * bounded by the record cap, never refused by the cap of the run it does it
 * in (a request's handler, a detached run's wrapper), so every run ends. */
static inline struct chorus_run *chorus_charged_run(const struct chorus_runtime *rt) {
    return rt && rt->current && !rt->current->uncharged ? rt->current->run : NULL;
}

/* Fills out with n random bytes (getrandom, drawn a pool at a time). */
void chorus_random_bytes(unsigned char *out, size_t n);

/* Writes a random (version 4) UUID and its NUL. */
void chorus_uuid(char out[37]);

/* Resumes every ready task; the loop's idle handle calls it. */
void chorus_sched_drain(struct chorus_runtime *rt);

#endif
