/* scheduler.c — the run and task scheduler (see scheduler.h for the model).
 *
 * Invariant: lua_resume is called only from task_resume(), and task_resume()
 * only from chorus_sched_drain(), which the loop calls when no Lua code is
 * running. Everything else (I/O callbacks, cancellations) only queues.
 */
#include "scheduler.h"

#include "alloc.h"
#include "clock.h"
#include "random.h"
#include "watchdog.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define HOOK_EVERY 1000
#define TICK_NS (CHORUS_WATCHDOG_TICK_MS * 1000000LL)

/* A task's own C bytes, its struct and its slot in run->tasks, kept until
 * the run ends: charged to the run's memory cap as its Lua heap is (a loop
 * of chorus.all over short tasks grew the C heap by a gigabyte under an
 * 8 MiB cap). Never given back: they are held until chorus_run_free. */
#define TASK_BYTES (sizeof(struct chorus_task) + sizeof(struct chorus_task *))

static void task_resume(struct chorus_task *t);
static void count_hook(lua_State *L, lua_Debug *ar);

/* Limits the count hook enforces: a run with neither runs unhooked. */
static int budgeted(const struct chorus_limits *limits) {
    return limits->run_instructions > 0 || limits->run_cpu_ms > 0;
}

/* CPU time the resume going on has spent so far (scheduler.h): its ticks,
 * or its time without the watchdog. */
static long long resume_cpu_ns(const struct chorus_runtime *rt) {
    if (rt->watchdog_on)
        return (long long)chorus_watchdog_ticks() * TICK_NS;
    if (rt->resume_started > 0)
        return (long long)((chorus_clock_monotonic() - rt->resume_started) * 1e9);
    return 0;
}

/* ---- ready queue ----------------------------------------------------------
 *
 * One list, in two parts: first the tasks made ready by the task that just
 * ran (a child it spawned, a parent its end wakes, a waiter its unlock
 * hands over to), then everything else (I/O completions, new runs), each
 * part first in, first out. A request's run ends through a chain of such
 * wakes (the call's task, its parent, the run awaiting the workflow); at
 * the back of the queue each hop waited for every other ready task, so a
 * response waited for the whole batch's Lua several times over (Go's
 * runnext and Tokio's LIFO slot do the same for the same reason). After
 * URGENT_STREAK of them in a row one task from the second part runs, so
 * a run that keeps spawning cannot starve the others. What is not a
 * continuation of the running task (a detached run it starts, a waiter
 * its notify wakes) queues behind the rest: a relay woken at the end of
 * every delivery looked for work once per delivery instead of once per
 * batch. */

#define URGENT_STREAK 64

static void on_idle(uv_idle_t *idle) {
    struct chorus_runtime *rt = idle->data;
    chorus_sched_drain(rt);
    if (!rt->ready_head)
        uv_idle_stop(idle);
}

static void enqueue(struct chorus_task *t, int urgent) {
    struct chorus_runtime *rt = t->run->rt;
    t->state = TASK_READY;
    if (t->queued)
        return;
    t->queued = 1;
    t->run->nqueued++;
    if (urgent && rt->urgent_streak < URGENT_STREAK) {
        struct chorus_task **link =
            rt->urgent_tail ? &rt->urgent_tail->next_ready : &rt->ready_head;
        t->next_ready = *link;
        *link = t;
        if (!t->next_ready)
            rt->ready_tail = t;
        rt->urgent_tail = t;
    } else {
        t->next_ready = NULL;
        if (rt->ready_tail)
            rt->ready_tail->next_ready = t;
        else
            rt->ready_head = t;
        rt->ready_tail = t;
    }
    if (!uv_is_active((uv_handle_t *)&rt->idle))
        uv_idle_start(&rt->idle, on_idle);
}

/* Ready because of the task that is running or just ran: urgent, unless
 * what made it ready asked otherwise (chorus_sched_background). */
static void queue_ready(struct chorus_task *t) {
    struct chorus_runtime *rt = t->run->rt;
    enqueue(t, rt->in_drain && !rt->background);
}

void chorus_sched_background(struct chorus_runtime *rt, int on) { rt->background = on; }

void chorus_sched_drain(struct chorus_runtime *rt) {
    struct chorus_task *t;
    rt->in_drain = 1;
    while ((t = rt->ready_head)) {
        int urgent = rt->urgent_tail != NULL;
        if (t == rt->urgent_tail)
            rt->urgent_tail = NULL;
        rt->urgent_streak = urgent ? rt->urgent_streak + 1 : 0;
        rt->ready_head = t->next_ready;
        if (!rt->ready_head)
            rt->ready_tail = NULL;
        t->queued = 0;
        t->run->nqueued--;
        if (t->state == TASK_READY)
            task_resume(t);
    }
    rt->in_drain = 0;
    rt->urgent_streak = 0;
}

/* Takes run's tasks off the ready queue. A run freed after it ended has
 * none there (the common case: no walk of a queue that, with thousands of
 * runs in flight, is long). */
static void unqueue_run(struct chorus_run *run) {
    struct chorus_runtime *rt = run->rt;
    if (run->nqueued == 0)
        return;
    struct chorus_task **link = &rt->ready_head, *last = NULL, *urgent_last = NULL;
    int in_urgent = rt->urgent_tail != NULL;
    while (*link) {
        struct chorus_task *t = *link;
        int was_urgent_tail = t == rt->urgent_tail;
        if (t->run == run) {
            t->queued = 0;
            run->nqueued--;
            *link = t->next_ready;
        } else {
            last = t;
            if (in_urgent)
                urgent_last = t;
            link = &t->next_ready;
        }
        if (was_urgent_tail)
            in_urgent = 0;
    }
    rt->ready_tail = last;
    rt->urgent_tail = urgent_last;
}

/* ---- results -------------------------------------------------------------- */

/* Takes the top n values of co and returns a registry ref to them, their
 * count in *count: one value is referenced itself (nil: LUA_REFNIL, nothing
 * stored), several packed in an array. Nearly every task ends with one
 * value: a table {n=, ...} per task was three heap blocks, four tasks per
 * served request. */
static int pack_ref(struct chorus_runtime *rt, lua_State *co, int n, int *count) {
    lua_State *L = rt->L;
    *count = n;
    if (n == 0)
        return LUA_REFNIL;
    if (n == 1) {
        lua_xmove(co, L, 1);
        return luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_createtable(L, n, 0);
    lua_xmove(co, L, n);
    for (int i = n; i >= 1; i--) /* i values remain above the table */
        lua_rawseti(L, -(i + 1), i);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

static int make_error_ref(lua_State *L, const char *kind, const char *message) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, message);
    lua_setfield(L, -2, "message");
    luaL_setmetatable(L, CHORUS_ERROR_MT);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* An error { kind =, message = } as a task's one value. It is made on the
 * main state, possibly inside a task's call (a race cancelling its losers):
 * charged to that run, a run at its memory cap had it refused, and the
 * memory error was raised on rt->L, whose handler is the server's own, out
 * past the resume going on: it unwound the scheduler and ended the process.
 * The scheduler's own values are charged to no run. */
static int error_ref(struct chorus_runtime *rt, const char *kind, const char *message, int *count) {
    lua_State *L = rt->L;
    struct chorus_task *current = rt->current;
    rt->current = NULL;
    int ref = make_error_ref(L, kind, message);
    rt->current = current;
    *count = 1;
    return ref;
}

static int push_packed(lua_State *L, int ok, int ref, int n) {
    luaL_checkstack(L, n + 2, "too many results");
    lua_pushboolean(L, ok);
    if (n == 0)
        return 1;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    if (n == 1)
        return 2;
    for (int i = 1; i <= n; i++)
        lua_rawgeti(L, -i, i);
    lua_remove(L, -(n + 1));
    return n + 1;
}

int chorus_task_push_result(struct chorus_task *t, lua_State *L) {
    return push_packed(L, t->ok, t->result_ref, t->nresults);
}

int chorus_run_push_result(struct chorus_run *run, lua_State *L) {
    return push_packed(L, run->ok, run->result_ref, run->nresults);
}

static const char *kill_message(struct chorus_run *run, char *buf, size_t len) {
    switch (run->killed) {
    case KILL_BUDGET:
        snprintf(buf, len,
                 "run exceeded its instruction budget of %ld instructions "
                 "(limits.run_instructions)",
                 run->limits.run_instructions);
        return "budget";
    case KILL_CPU:
        snprintf(buf, len, "run exceeded its CPU time limit of %g seconds (limits.run_cpu_seconds)",
                 (double)run->limits.run_cpu_ms / 1000);
        return "budget";
    case KILL_MEMORY:
        snprintf(buf, len, "run exceeded its memory cap of %zu MiB", run->limits.run_memory >> 20);
        return "memory";
    case KILL_DEADLINE:
        snprintf(buf, len, "run exceeded its deadline");
        return "deadline";
    case KILL_KEPT: {
        struct chorus_workflow_account *w = chorus_alloc_workflow(run->rt, run->workflow);
        snprintf(buf, len,
                 "workflow %.64s keeps %zu MiB between runs (limits.workflow_memory_mb = %zu): "
                 "its script holds what earlier runs left; a reload starts it afresh",
                 w ? w->name : "?", (w ? w->kept : 0) >> 20, run->limits.workflow_memory >> 20);
        return "memory";
    }
    default:
        snprintf(buf, len, "run stopped");
        return "stopped";
    }
}

/* ---- task lifecycle ------------------------------------------------------- */

/* A served request runs four tasks; a new coroutine for each was an
 * allocation for the thread, one for its stack and one per call depth for
 * its CallInfo list, all freed again by the collector. A coroutine that
 * ended cleanly (returned, or was reset with nothing on its stack) has no
 * frames left and is as good as new: the next task takes it. */
static int reusable(struct chorus_task *t) {
    lua_State *co = t->co;
    lua_Debug ar;
    return t->run->rt->current != t && lua_status(co) == LUA_OK && lua_gettop(co) == 0 &&
           !lua_getstack(co, 0, &ar);
}

static void release_co(struct chorus_task *t) {
    struct chorus_runtime *rt = t->run->rt;
    if (t->co_ref != LUA_NOREF) {
        if (rt->nco_pool < CHORUS_CO_POOL && reusable(t)) {
            if (lua_gethookmask(t->co))
                lua_sethook(t->co, NULL, 0, 0);
            rt->co_pool[rt->nco_pool] = t->co;
            rt->co_pool_ref[rt->nco_pool++] = t->co_ref;
        } else {
            luaL_unref(rt->L, LUA_REGISTRYINDEX, t->co_ref);
        }
        t->co_ref = LUA_NOREF;
    }
    t->co = NULL;
}

static void finish_run(struct chorus_run *run, struct chorus_task *root);

/* Ends the CPU-time segment going on (a resume, or a close below): charges
 * what it spent to its run and starts a new one for whatever runs next. */
static void charge_segment(struct chorus_runtime *rt, struct chorus_run *run, int watched) {
    if (watched) {
        int ticks = chorus_watchdog_leave();
        if (ticks > 0)
            run->hooked = 1;
        run->cpu_ns += (long long)ticks * TICK_NS;
    } else if (rt->resume_started > 0) {
        run->cpu_ns += (long long)((chorus_clock_monotonic() - rt->resume_started) * 1e9);
    }
    rt->resume_started = 0;
}

/* Closing a task's coroutine runs the script's __close handlers. They are
 * its run's code wherever the close happens (the loop after the run's root
 * ended, a race's parent cancelling the losers, the server cancelling the
 * run), so they run as that task: under its instruction budget (the count
 * hook on the coroutine), its CPU limit and its memory cap (rt->current
 * picks the account). Without this a loop in __close held the server's
 * thread for good. The caller's resume, if one is going on, is paused:
 * what it spent so far is charged to its run first. */
static void close_task(struct chorus_task *t) {
    struct chorus_run *run = t->run;
    struct chorus_runtime *rt = run->rt;
    struct chorus_task *caller = rt->current;
    int caller_watched = caller && rt->watchdog_on && budgeted(&caller->run->limits);
    if (caller)
        charge_segment(rt, caller->run, caller_watched);
    rt->current = t;
    int watched = rt->watchdog_on && budgeted(&run->limits);
    if (budgeted(&run->limits))
        lua_sethook(t->co, count_hook, LUA_MASKCOUNT, run->killed != KILL_NONE ? 1 : HOOK_EVERY);
    if (watched)
        chorus_watchdog_enter(t->co, count_hook);
    else if (run->limits.run_cpu_ms > 0)
        rt->resume_started = chorus_clock_monotonic();
    lua_resetthread(t->co);
    charge_segment(rt, run, watched);
    rt->current = caller;
    if (!caller)
        return;
    if (caller_watched)
        chorus_watchdog_enter(caller->co, count_hook);
    else if (!rt->watchdog_on && caller->run->limits.run_cpu_ms > 0)
        rt->resume_started = chorus_clock_monotonic();
    /* a close that stopped the caller's own run stops the caller at once */
    if (caller->run->killed != KILL_NONE && caller->co)
        lua_sethook(caller->co, count_hook, LUA_MASKCOUNT, 1);
}

/* Reports a finished child to its parent: queued, and the parent woken if
 * it is parked in await. */
static void notify_parent(struct chorus_task *t) {
    struct chorus_task *p = t->parent;
    if (!p || p->state == TASK_DONE)
        return;
    if (p->state == TASK_PARKED && p->awaiting) {
        p->awaiting = 0;
        lua_pushinteger(p->co, t->id);
        chorus_task_wake(p, 1);
        return;
    }
    t->next_done = NULL;
    if (p->done_tail)
        p->done_tail->next_done = t;
    else
        p->done_head = t;
    p->done_tail = t;
}

/* The task's result (result_ref, nresults) is set by the caller. */
static void task_done(struct chorus_task *t, int ok) {
    t->state = TASK_DONE;
    t->ok = ok;
    /* A coroutine that died of an error keeps its to-be-closed variables
     * open (Lua closes them only on pcall unwinding): close them now, so a
     * lock or a bulkhead slot held by the task is released. */
    if (!ok && t->co)
        close_task(t);
    release_co(t);
    if (t->id == 1)
        finish_run(t->run, t);
    else
        notify_parent(t);
}

static void capture_error(struct chorus_task *t, int status) {
    struct chorus_run *run = t->run;
    struct chorus_runtime *rt = run->rt;
    char msg[256];
    if (run->killed != KILL_NONE) {
        const char *kind = kill_message(run, msg, sizeof msg);
        t->result_ref = error_ref(rt, kind, msg, &t->nresults);
        task_done(t, 0);
        return;
    }
    if (t->id == 1 && !run->traceback) {
        /* an error table's message (raw: no metamethod may run here) */
        int pushed = 0;
        const char *m = lua_tostring(t->co, -1);
        if (!m && lua_istable(t->co, -1)) {
            lua_pushliteral(t->co, "message");
            lua_rawget(t->co, -2);
            pushed = 1;
            m = lua_tostring(t->co, -1);
        }
        luaL_traceback(rt->L, t->co, m ? m : "(error object is not a string)", 0);
        if (pushed)
            lua_pop(t->co, 1);
        run->traceback = strdup(lua_tostring(rt->L, -1));
        lua_pop(rt->L, 1);
    }
    if (status == LUA_ERRMEM) {
        lua_pop(t->co, 1);
        t->result_ref = error_ref(rt, "memory", "not enough memory", &t->nresults);
        task_done(t, 0);
        return;
    }
    t->result_ref = pack_ref(rt, t->co, 1, &t->nresults);
    task_done(t, 0);
}

static void task_resume(struct chorus_task *t) {
    struct chorus_runtime *rt = t->run->rt;
    int nres = 0, nargs = t->nargs;
    t->nargs = 0;
    t->state = TASK_RUNNING;
    rt->current = t;
    struct chorus_run *run = t->run;
    /* A run stopped by a limit stops at its next instruction, whichever of
     * its tasks runs (with the watchdog, the others may have no hook). */
    if (run->killed != KILL_NONE)
        lua_sethook(t->co, count_hook, LUA_MASKCOUNT, 1);
    /* A budgeted run is counted from the first watchdog tick that lands in
     * it, in every task and every resume after (a loop that yields is
     * counted too); every tick is charged to its CPU time. */
    int watched = rt->watchdog_on && budgeted(&run->limits);
    if (watched)
        chorus_watchdog_enter(t->co, count_hook);
    if (run->hooked && !lua_gethookmask(t->co))
        lua_sethook(t->co, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
    rt->resume_started =
        !rt->watchdog_on && run->limits.run_cpu_ms > 0 ? chorus_clock_monotonic() : 0;
    int status = lua_resume(t->co, rt->L, nargs, &nres);
    charge_segment(rt, run, watched);
    rt->current = NULL;
    if (status == LUA_YIELD) {
        lua_pop(t->co, nres);
        if (t->state == TASK_RUNNING) /* a bare coroutine.yield(): run again, after the others */
            enqueue(t, 0);
    } else if (status == LUA_OK) {
        t->result_ref = pack_ref(rt, t->co, nres, &t->nresults);
        task_done(t, 1);
    } else {
        capture_error(t, status);
    }
}

void chorus_task_park(struct chorus_task *t, chorus_cancel_fn cancel, void *data) {
    t->state = TASK_PARKED;
    t->cancel = cancel;
    t->cancel_data = data;
}

void chorus_task_wake(struct chorus_task *t, int nargs) {
    t->cancel = NULL;
    t->cancel_data = NULL;
    t->nargs = nargs;
    queue_ready(t);
}

static int interrupted_k(lua_State *L, int status, lua_KContext base) {
    (void)status;
    struct chorus_task *t = chorus_runtime_of(L)->current;
    t->interruptible = 0;
    if (t->interrupted) {
        t->interrupted = 0;
        lua_settop(L, (int)base);
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->run->interrupt_ref);
        return lua_error(L);
    }
    return lua_gettop(L) - (int)base;
}

int chorus_task_yield(lua_State *L, struct chorus_task *t) {
    t->interruptible = 1;
    return lua_yieldk(L, 0, (lua_KContext)lua_gettop(L), interrupted_k);
}

struct chorus_run *chorus_run_find(struct chorus_runtime *rt, const char *id) {
    for (struct chorus_run *run = rt->runs; run; run = run->next)
        if (strcmp(run->id, id) == 0)
            return run;
    return NULL;
}

int chorus_run_interrupt(struct chorus_run *run, lua_State *L) {
    struct chorus_runtime *rt = run->rt;
    luaL_unref(rt->L, LUA_REGISTRYINDEX, run->interrupt_ref);
    run->interrupt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    int n = 0;
    for (int i = 0; i < run->ntasks; i++) {
        struct chorus_task *t = run->tasks[i];
        if (t->state != TASK_PARKED || !t->interruptible || !t->cancel || t->awaiting)
            continue;
        t->cancel(t->cancel_data);
        t->interrupted = 1;
        chorus_task_wake(t, 0);
        n++;
    }
    return n;
}

void chorus_task_cancel(struct chorus_task *t) {
    if (t->state == TASK_DONE)
        return;
    struct chorus_run *run = t->run;
    for (int i = 0; i < run->ntasks; i++)
        if (run->tasks[i]->parent == t)
            chorus_task_cancel(run->tasks[i]);
    if (t->state == TASK_PARKED && t->cancel)
        t->cancel(t->cancel_data);
    t->cancel = NULL;
    t->awaiting = 0;
    /* Close the coroutine so its to-be-closed variables run and its stack is
     * released; it is never resumed again. */
    t->state = TASK_DONE;
    if (t->co)
        close_task(t);
    t->ok = 0;
    t->result_ref = error_ref(run->rt, "cancelled", "cancelled", &t->nresults);
    release_co(t);
}

/* ---- spawning ------------------------------------------------------------- */

static void count_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    struct chorus_runtime *rt = chorus_runtime_of(L);
    struct chorus_run *run = chorus_charged_run(rt);
    /* HOOK_EVERY instructions ran, or 1 after a watchdog tick or a kill */
    int every = lua_gethookcount(L);
    if (!run) {
        if (every != HOOK_EVERY) /* not left on every instruction */
            lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
        return;
    }
    run->instructions += every;
    if (run->killed == KILL_NONE && run->limits.run_instructions > 0 &&
        run->instructions > run->limits.run_instructions)
        run->killed = KILL_BUDGET;
    if (run->killed == KILL_NONE && run->limits.run_cpu_ms > 0 &&
        run->cpu_ns + resume_cpu_ns(rt) > run->limits.run_cpu_ms * 1000000LL)
        run->killed = KILL_CPU;
    if (run->killed != KILL_NONE) {
        char msg[256];
        kill_message(run, msg, sizeof msg);
        luaL_error(L, "%s", msg);
    }
    if (every != HOOK_EVERY)
        lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
}

void chorus_run_charge(lua_State *L, lua_Integer n) {
    struct chorus_runtime *rt = chorus_runtime_of(L);
    struct chorus_run *run = chorus_charged_run(rt);
    if (!run || run->limits.run_instructions <= 0)
        return;
    long left = run->limits.run_instructions - run->instructions;
    if (n > 0)
        run->instructions += n > left ? (left > 0 ? left : 0) + 1 : (long)n;
    if (run->killed != KILL_NONE || run->instructions > run->limits.run_instructions)
        chorus_run_stop(L, run, KILL_BUDGET);
    if (run->limits.run_cpu_ms > 0 &&
        run->cpu_ns + resume_cpu_ns(rt) > run->limits.run_cpu_ms * 1000000LL)
        chorus_run_stop(L, run, KILL_CPU);
}

void chorus_run_stop(lua_State *L, struct chorus_run *run, enum chorus_kill why) {
    struct chorus_task *t = run->rt->current;
    if (run->killed == KILL_NONE)
        run->killed = why;
    lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
    if (t && t->run == run && t->co && t->co != L)
        lua_sethook(t->co, count_hook, LUA_MASKCOUNT, 1);
    char msg[256];
    kill_message(run, msg, sizeof msg);
    luaL_error(L, "%s", msg);
}

/* The count hook only where a budget needs it: with any hook set, Lua calls
 * luaG_traceexec before every VM instruction (a tenth of a served request's
 * instructions). Runs of trusted code (the request handler, the relay) run
 * without a budget; budgeted tasks get the hook from the watchdog when they
 * run long (watchdog.h), or from the start when there is no watchdog. */
static void sched_hook(struct chorus_run *run, lua_State *co) {
    if (budgeted(&run->limits) && !run->rt->watchdog_on)
        lua_sethook(co, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
}

void chorus_budget_hook(lua_State *co) {
    struct chorus_runtime *rt = chorus_runtime_of(co);
    struct chorus_run *run = rt && rt->current ? rt->current->run : NULL;
    if (run && budgeted(&run->limits))
        lua_sethook(co, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
}

static struct chorus_task *task_new(struct chorus_run *run, struct chorus_task *parent,
                                    lua_State *L, int nargs) {
    struct chorus_runtime *rt = run->rt;
    if (run->ntasks == run->cap) {
        int cap = run->cap ? run->cap * 2 : 4;
        void *p = realloc(run->tasks, (size_t)cap * sizeof *run->tasks);
        if (!p)
            return NULL;
        run->tasks = p;
        run->cap = cap;
    }
    struct chorus_task *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    run->mem += TASK_BYTES;
    t->run = run;
    t->parent = parent;
    t->result_ref = LUA_NOREF;
    if (rt->nco_pool > 0) {
        t->co = rt->co_pool[--rt->nco_pool];
        t->co_ref = rt->co_pool_ref[rt->nco_pool];
    } else {
        /* on the main state, possibly inside the spawning task's call: the
         * run pays for its coroutine but is not refused it at its cap (a
         * memory error raised on rt->L would unwind the server, see
         * error_ref); its next allocation of its own is */
        struct chorus_run *charged = chorus_alloc_charge_to(rt, run);
        t->co = lua_newthread(rt->L);
        t->co_ref = luaL_ref(rt->L, LUA_REGISTRYINDEX);
        chorus_alloc_charge_to(rt, charged);
    }
    sched_hook(run, t->co);
    lua_xmove(L, t->co, nargs + 1);
    t->nargs = nargs;
    run->tasks[run->ntasks++] = t;
    t->id = run->ntasks;
    queue_ready(t);
    return t;
}

struct chorus_run *chorus_run_start(struct chorus_runtime *rt, lua_State *L, int nargs,
                                    const struct chorus_limits *limits, int allow_io,
                                    chorus_run_done_fn on_done, void *data) {
    return chorus_run_start_id(rt, L, nargs, limits, allow_io, on_done, data, NULL);
}

struct chorus_run *chorus_run_start_id(struct chorus_runtime *rt, lua_State *L, int nargs,
                                       const struct chorus_limits *limits, int allow_io,
                                       chorus_run_done_fn on_done, void *data, const char *id) {
    struct chorus_run *run = calloc(1, sizeof *run);
    if (!run)
        return NULL;
    run->rt = rt;
    run->limits = limits ? *limits : rt->limits;
    run->allow_io = allow_io;
    run->result_ref = LUA_NOREF;
    run->interrupt_ref = LUA_NOREF;
    run->on_done = on_done;
    run->on_done_data = data;
    if (id && id[0])
        memcpy(run->id, id, sizeof run->id); /* a served run's: no random one made and dropped */
    else
        chorus_uuid(run->id);
    chorus_alloc_account_open(rt, run);
    if (!task_new(run, NULL, L, nargs)) {
        chorus_alloc_account_close(rt, run);
        free(run->tasks);
        free(run);
        return NULL;
    }
    run->next = rt->runs;
    if (rt->runs)
        rt->runs->prev = run;
    rt->runs = run;
    return run;
}

static void finish_run(struct chorus_run *run, struct chorus_task *root) {
    /* Tasks still running when the workflow returns are orphans: stop them. */
    for (int i = 1; i < run->ntasks; i++)
        chorus_task_cancel(run->tasks[i]);
    run->done = 1;
    run->ok = root->ok;
    run->result_ref = root->result_ref;
    run->nresults = root->nresults;
    root->result_ref = LUA_NOREF;
    if (run->on_done)
        run->on_done(run, run->on_done_data);
}

void chorus_run_free(struct chorus_run *run) {
    struct chorus_runtime *rt = run->rt;
    if (run->ntasks > 0 && run->tasks[0]->state != TASK_DONE) {
        run->on_done = NULL;
        chorus_task_cancel(run->tasks[0]);
        for (int i = 1; i < run->ntasks; i++)
            chorus_task_cancel(run->tasks[i]);
    }
    unqueue_run(run);
    for (int i = 0; i < run->ntasks; i++) {
        struct chorus_task *t = run->tasks[i];
        luaL_unref(rt->L, LUA_REGISTRYINDEX, t->result_ref);
        release_co(t);
        free(t);
    }
    luaL_unref(rt->L, LUA_REGISTRYINDEX, run->result_ref);
    luaL_unref(rt->L, LUA_REGISTRYINDEX, run->interrupt_ref);
    chorus_alloc_account_close(rt, run);
    if (run->prev)
        run->prev->next = run->next;
    else
        rt->runs = run->next;
    if (run->next)
        run->next->prev = run->prev;
    free(run->traceback);
    free(run->tasks);
    free(run);
}

/* ---- the Lua-facing checks ------------------------------------------------ */

struct chorus_task *chorus_task_current(lua_State *L, int need_io) {
    struct chorus_runtime *rt = chorus_runtime_of(L);
    struct chorus_task *t = rt ? rt->current : NULL;
    if (!t)
        luaL_error(L, "this call is only allowed inside a workflow run");
    /* a __close handler of a task that ended or was cancelled (close_task):
     * whatever it spawned or started would outlive the task */
    if (t->state == TASK_DONE)
        luaL_error(L, "chorus calls cannot run while a finished or cancelled task closes its "
                      "to-be-closed variables");
    if (t->co != L)
        luaL_error(L, "chorus calls cannot run inside a coroutine the script created; "
                      "use chorus.all/race/any for concurrency");
    if (need_io && !t->run->allow_io)
        luaL_error(L, "I/O is not allowed while a script loads; do it inside run()");
    return t;
}

struct chorus_task *chorus_task_waitable(lua_State *L, int need_io) {
    struct chorus_task *t = chorus_task_current(L, need_io);
    if (!lua_isyieldable(L)) {
        /* Raised before anything is parked: a yield here would fail after
         * the timer or transfer was started, and its callback would later
         * wake a task whose run is gone. */
        lua_createtable(L, 0, 2);
        lua_pushliteral(L, "script");
        lua_setfield(L, -2, "kind");
        luaL_where(L, 1);
        lua_pushliteral(L, "cannot wait here: a call that waits (ctx.sleep, an HTTP call, a lock, "
                           "chorus.all, ...) is not allowed inside a metamethod, a table.sort "
                           "comparator, a string.gsub replacement function or a load reader; "
                           "make the call outside that callback");
        lua_concat(L, 2);
        lua_setfield(L, -2, "message");
        luaL_setmetatable(L, CHORUS_ERROR_MT);
        lua_error(L);
    }
    return t;
}

int chorus_task_spawn(lua_State *L, int nargs) {
    struct chorus_task *self = chorus_task_current(L, 0);
    struct chorus_run *run = self->run;
    if (run->killed == KILL_NONE && run->limits.run_memory &&
        run->mem + TASK_BYTES > run->limits.run_memory)
        chorus_run_stop(L, run, KILL_MEMORY);
    struct chorus_task *t = task_new(run, self, L, nargs);
    if (!t)
        return luaL_error(L, "out of memory spawning a task");
    return t->id;
}

struct chorus_task *chorus_task_find(struct chorus_run *run, int id) {
    if (id < 1 || id > run->ntasks)
        return NULL;
    return run->tasks[id - 1];
}

int chorus_task_await(struct chorus_task *t) {
    struct chorus_task *c = t->done_head;
    if (c) {
        t->done_head = c->next_done;
        if (!t->done_head)
            t->done_tail = NULL;
        return c->id;
    }
    t->awaiting = 1;
    chorus_task_park(t, NULL, NULL);
    return 0;
}
