/* lua_core.c — the `chorus.core` Lua module: runs, tasks, timers, clocks.
 *
 * These are the C primitives under lua/chorus/ modules. A primitive that waits
 * parks its task and yields; the scheduler resumes the task with the result.
 * Invariant: every primitive that yields checks first that it runs on a
 * task's own coroutine (chorus_task_current), so a yield always reaches the
 * scheduler and never a coroutine.resume of the script's.
 */
#include <dirent.h>
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <unistd.h>

#include "embedded.h" /* core.ui_file */
#include "lua_bindings.h"
#include "random.h"
#include "lua_http.h" /* chorus_lua_http_active, for core.stats */
#include "alloc.h"
#include "runtime.h"
#include "scheduler.h"
#include "clock.h"
#include "vclock.h"

static struct chorus_runtime *rt_of(lua_State *L) { return lua_touserdata(L, lua_upvalueindex(1)); }

/* ---- runs ----------------------------------------------------------------- */

static size_t opt_size_field(lua_State *L, int idx, const char *name, size_t def) {
    lua_getfield(L, idx, name);
    lua_Integer v = luaL_optinteger(L, -1, (lua_Integer)def);
    lua_pop(L, 1);
    if (v < 0)
        luaL_error(L, "option '%s' must not be negative", name);
    return (size_t)v;
}

/* Reads the limits in the table at idx (memory, instructions, cpu_ms) over
 * those in limits. */
static void read_limits(lua_State *L, int idx, struct chorus_limits *limits) {
    limits->run_memory = opt_size_field(L, idx, "memory", limits->run_memory);
    limits->run_instructions =
        (long)opt_size_field(L, idx, "instructions", (size_t)limits->run_instructions);
    limits->run_cpu_ms = (long)opt_size_field(L, idx, "cpu_ms", (size_t)limits->run_cpu_ms);
}

/* Reads opts at index 1: the limits, io, id (a caller-chosen run id, at
 * most 36 characters, written to id when given) and account (the workflow
 * account of core.workflow_account the run's kept blocks go to; 0: none). */
static void read_run_opts(lua_State *L, struct chorus_runtime *rt, struct chorus_limits *limits,
                          int *io, char id[37], unsigned *account) {
    *limits = rt->limits;
    *io = 1;
    id[0] = '\0';
    *account = 0;
    if (lua_isnoneornil(L, 1))
        return;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "id");
    if (!lua_isnil(L, -1)) {
        size_t len;
        const char *s = luaL_checklstring(L, -1, &len);
        if (len == 0 || len > 36)
            luaL_error(L, "run id must be 1 to 36 characters");
        memcpy(id, s, len + 1);
    }
    lua_pop(L, 1);
    read_limits(L, 1, limits);
    lua_getfield(L, 1, "account");
    if (!lua_isnil(L, -1)) {
        lua_Integer a = luaL_checkinteger(L, -1);
        if (!chorus_alloc_workflow(rt, (unsigned)a) || a != (lua_Integer)(unsigned)a)
            luaL_error(L, "option 'account' is not a workflow account");
        *account = (unsigned)a;
    }
    lua_pop(L, 1);
    lua_getfield(L, 1, "io");
    if (!lua_isnil(L, -1))
        *io = lua_toboolean(L, -1);
    lua_pop(L, 1);
}

static void push_run_info(lua_State *L, struct chorus_run *run) {
    lua_createtable(L, 0, 5);
    lua_pushstring(L, run->id);
    lua_setfield(L, -2, "id");
    lua_pushinteger(L, run->instructions);
    lua_setfield(L, -2, "instructions");
    lua_pushinteger(L, (lua_Integer)run->mem);
    lua_setfield(L, -2, "memory");
    lua_pushinteger(L, (lua_Integer)(run->cpu_ns / 1000000));
    lua_setfield(L, -2, "cpu_ms");
    if (run->traceback) {
        lua_pushstring(L, run->traceback);
        lua_setfield(L, -2, "traceback");
    }
}

/* Pushes a finished run's outcome as three values: ok, value, info. */
static void push_outcome(lua_State *L, struct chorus_run *run) {
    lua_checkstack(L, 4);
    int n = chorus_run_push_result(run, L);
    lua_settop(L, lua_gettop(L) - n + (n >= 2 ? 2 : n));
    if (n < 2)
        lua_pushnil(L);
    push_run_info(L, run);
}

/* Starts a run of the function at index 2 with the arguments above it, under
 * the options at index 1 (all popped). Raises on bad options. A background
 * run (core.start) queues behind the ready tasks instead of running next. */
static struct chorus_run *start_from_args(lua_State *L, chorus_run_done_fn on_done, void *data,
                                          int background) {
    struct chorus_runtime *rt = rt_of(L);
    struct chorus_limits limits;
    int io;
    char id[37];
    unsigned account;
    read_run_opts(L, rt, &limits, &io, id, &account);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    /* only around the start: a raised error above must not leave it set */
    chorus_sched_background(rt, background);
    struct chorus_run *run =
        chorus_run_start_id(rt, L, lua_gettop(L) - 2, &limits, io, on_done, data, id);
    chorus_sched_background(rt, 0);
    if (!run)
        luaL_error(L, "out of memory starting a run");
    lua_settop(L, 0);
    run->workflow = account;
    /* stopped at its first instruction: its workflow keeps too much */
    if (chorus_alloc_workflow_over(rt, L, account, limits.workflow_memory))
        run->killed = KILL_KEPT;
    return run;
}

/* core.run(opts, fn, ...) → ok, value, info: runs fn as a whole run to its
 * end, driving the loop meanwhile. For the CLI and for specs, never inside a
 * run. */
static int core_run(lua_State *L) {
    struct chorus_runtime *rt = rt_of(L);
    if (rt->current)
        return luaL_error(L, "chorus.core.run cannot be nested inside a run");
    struct chorus_run *run = start_from_args(L, NULL, NULL, 0);
    chorus_runtime_run_until(rt, &run->done);
    if (!run->done) {
        chorus_run_free(run);
        return luaL_error(L, "run stalled: it waits on something that can never happen");
    }
    push_outcome(L, run);
    chorus_run_free(run);
    return 3;
}

/* core.execute(opts, fn, ...) → ok, value, info: from inside a task, runs fn
 * as a separate run (its own limits, its own id) and waits for it. Trusted
 * code uses it so that a run stopped by a limit cannot take its caller down. */
static void on_child_done(struct chorus_run *child, void *data) {
    struct chorus_task *t = data;
    push_outcome(t->co, child);
    chorus_run_free(child);
    chorus_task_wake(t, 3);
}

static void cancel_child(void *data) { chorus_run_free(data); }

static int core_execute(lua_State *L) {
    struct chorus_task *t = chorus_task_waitable(L, 0);
    struct chorus_run *child = start_from_args(L, on_child_done, t, 0);
    child->owner = t; /* freed by on_child_done or cancel_child, nobody else */
    chorus_task_park(t, cancel_child, child);
    return lua_yield(L, 0);
}

static void free_detached(struct chorus_run *run, void *data) {
    (void)data;
    chorus_run_free(run);
}

/* core.start(opts, fn, ...) → run id: a detached run, freed when it ends; fn
 * records its own outcome. */
static int core_start(lua_State *L) {
    struct chorus_run *run = start_from_args(L, free_detached, NULL, 1);
    lua_pushstring(L, run->id);
    return 1;
}

/* core.loop() drives the event loop until core.stop() or nothing is left. */
static int core_loop(lua_State *L) {
    struct chorus_runtime *rt = rt_of(L);
    if (rt->current)
        return luaL_error(L, "core.loop cannot run inside a run");
    rt->stopping = 0;
    while (!rt->stopping && uv_run(&rt->loop, UV_RUN_ONCE))
        ;
    return 0;
}

static int core_stop(lua_State *L) {
    rt_of(L)->stopping = 1;
    return 0;
}

/* ---- tasks ---------------------------------------------------------------- */

static int core_spawn(lua_State *L) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_pushinteger(L, chorus_task_spawn(L, lua_gettop(L) - 1));
    return 1;
}

static struct chorus_task *check_task(lua_State *L, struct chorus_task *self, int arg) {
    struct chorus_task *t = chorus_task_find(self->run, (int)luaL_checkinteger(L, arg));
    if (!t || t->parent != self)
        luaL_argerror(L, arg, "not a task spawned by this task");
    return t;
}

/* core.await() → the id of a child task that finished, waiting if needed
 * (children report in the order they finish; cancelled ones never do). */
static int core_await(lua_State *L) {
    struct chorus_task *self = chorus_task_waitable(L, 0);
    int id = chorus_task_await(self);
    if (id > 0) {
        lua_pushinteger(L, id);
        return 1;
    }
    return lua_yield(L, 0);
}

static int core_result(lua_State *L) {
    struct chorus_task *self = chorus_task_current(L, 0);
    struct chorus_task *t = check_task(L, self, 1);
    if (t->state != TASK_DONE)
        return luaL_error(L, "task %d has not finished", t->id);
    return chorus_task_push_result(t, L);
}

/* core.interrupt(run_id, err) → how many of its waits it ended, or false
 * when no such run is live: a cancellation (chorus_run_interrupt). */
static int core_interrupt(lua_State *L) {
    struct chorus_run *run = chorus_run_find(rt_of(L), luaL_checkstring(L, 1));
    if (!run) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_settop(L, 2);
    lua_pushinteger(L, chorus_run_interrupt(run, L));
    return 1;
}

static int core_cancel(lua_State *L) {
    struct chorus_task *self = chorus_task_current(L, 0);
    chorus_task_cancel(check_task(L, self, 1));
    return 0;
}

/* ---- timers --------------------------------------------------------------- */

/* A sleep's timer and when it is due. libuv's timers count whole
 * milliseconds from the loop's cached time, so a timer can fire before its
 * time by up to a millisecond (more when the loop's turn started long ago):
 * it is armed again for what is left, so a sleep never ends early. A sleep
 * under a millisecond rounded to 0 ms woke at once, and a wait for a
 * deadline slept 0 ms again and again until the deadline passed. */
struct sleep {
    uv_timer_t timer; /* first: the handle is the struct */
    struct chorus_task *task;
    double due; /* chorus_clock_monotonic */
};

static void free_timer(uv_handle_t *h) { free(h); }

/* The milliseconds to arm for s seconds: rounded up. */
static uint64_t sleep_ms(double s) { return s > 0 ? (uint64_t)ceil(s * 1000.0) : 0; }

static void on_sleep_done(uv_timer_t *timer) {
    struct sleep *sl = (struct sleep *)timer;
    double left = sl->due - chorus_clock_monotonic();
    if (left > 0) {
        uv_timer_start(timer, on_sleep_done, sleep_ms(left), 0);
        return;
    }
    uv_close((uv_handle_t *)timer, free_timer);
    chorus_task_wake(sl->task, 0);
}

static void cancel_sleep(void *data) {
    uv_timer_t *timer = data;
    uv_timer_stop(timer);
    uv_close((uv_handle_t *)timer, free_timer);
}

/* core.waitable(): raises as a call that waits would here (chorus_task_waitable,
 * with I/O): for transports written in Lua (chorus.testing's mocks), so that
 * a call the real transport refuses is refused there too. */
static int core_waitable(lua_State *L) {
    chorus_task_waitable(L, 1);
    return 0;
}

static int core_sleep(lua_State *L) {
    lua_Number s = luaL_checknumber(L, 1);
    luaL_argcheck(L, s >= 0 && s < 1e9, 1, "seconds must be between 0 and 1e9");
    struct chorus_task *t = chorus_task_waitable(L, 1);
    if (t->run->rt->virtual_clock) {
        if (chorus_vclock_sleep(t, s) != 0)
            return luaL_error(L, "out of memory");
        return chorus_task_yield(L, t);
    }
    struct sleep *sl = malloc(sizeof *sl);
    if (!sl)
        return luaL_error(L, "out of memory");
    uv_timer_init(&t->run->rt->loop, &sl->timer);
    sl->task = t;
    sl->due = chorus_clock_monotonic() + s;
    uv_timer_start(&sl->timer, on_sleep_done, sleep_ms(s), 0);
    chorus_task_park(t, cancel_sleep, &sl->timer);
    return chorus_task_yield(L, t);
}

/* ---- small services ------------------------------------------------------- */

static int core_now(lua_State *L) {
    struct chorus_runtime *rt = rt_of(L);
    if (rt->virtual_clock) {
        lua_pushnumber(L, rt->vnow);
        return 1;
    }
    lua_pushnumber(L, chorus_clock_wall());
    return 1;
}

static int core_monotime(lua_State *L) {
    lua_pushnumber(L, chorus_runtime_now(rt_of(L)));
    return 1;
}

/* core.set_clock("virtual" [, start_epoch]) or core.set_clock("real"). */
static int core_set_clock(lua_State *L) {
    static const char *const modes[] = {"real", "virtual", NULL};
    struct chorus_runtime *rt = rt_of(L);
    int on = luaL_checkoption(L, 1, NULL, modes);
    double start = luaL_optnumber(L, 2, (lua_Number)(long long)chorus_clock_wall());
    if (chorus_vclock_set(rt, on, start) != 0)
        return luaL_error(L, "the clock cannot change while runs are live");
    return 0;
}

/* core.exe() → the path of the running executable (for `chorus test`). */
static int core_exe(lua_State *L) {
    char buf[4096];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0)
        return 0;
    lua_pushlstring(L, buf, (size_t)n);
    return 1;
}

/* core.budget_coroutine(co) → co, with the count hook when the current run
 * has an instruction budget (the sandbox's coroutine.create/wrap). */
static int core_budget_coroutine(lua_State *L) {
    lua_State *co = lua_tothread(L, 1);
    luaL_argcheck(L, co != NULL, 1, "coroutine expected");
    chorus_budget_hook(co);
    lua_settop(L, 1);
    return 1;
}

/* core.random_hex(n) → 2n lowercase hex digits of n random bytes (n ≤ 64):
 * trace and span ids without formatting a UUID and cutting it up. */
static int core_random_hex(lua_State *L) {
    static const char hex[] = "0123456789abcdef";
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 1 && n <= 64, 1, "between 1 and 64 bytes");
    unsigned char b[64];
    char out[128];
    chorus_random_bytes(b, (size_t)n);
    for (lua_Integer i = 0; i < n; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
    lua_pushlstring(L, out, (size_t)(2 * n));
    return 1;
}

/* core.is_hex(s, n) → whether s is a string of exactly n lowercase hex
 * digits: the check of every trace and span id a run keeps, which Lua's
 * pattern matcher made ten times longer than the loop below. */
static int core_is_hex(lua_State *L) {
    lua_Integer n = luaL_checkinteger(L, 2);
    size_t len;
    const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &len) : NULL;
    int ok = s != NULL && n >= 0 && (lua_Integer)len == n;
    for (size_t i = 0; ok && i < len; i++)
        ok = (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f');
    lua_pushboolean(L, ok);
    return 1;
}

static int core_uuid(lua_State *L) {
    char id[37];
    chorus_uuid(id);
    lua_pushstring(L, id);
    return 1;
}

/* A run's id: time-ordered (random.h), on the runtime's clock (virtual
 * under chorus.testing). */
static int core_uuid7(lua_State *L) {
    struct chorus_runtime *rt = rt_of(L);
    double now = rt->virtual_clock ? rt->vnow : chorus_clock_wall();
    char id[37];
    chorus_uuid7(id, now > 0 ? (uint64_t)(now * 1000) : 0);
    lua_pushstring(L, id);
    return 1;
}

static int core_run_id(lua_State *L) {
    struct chorus_runtime *rt = rt_of(L);
    if (!rt->current)
        return 0;
    lua_pushstring(L, rt->current->run->id);
    return 1;
}

/* True when the current run has been stopped by a limit: the sandbox's pcall
 * uses it so a script cannot swallow that error and keep going. */
static int core_killed(lua_State *L) {
    struct chorus_runtime *rt = rt_of(L);
    lua_pushboolean(L, rt->current && rt->current->run->killed != KILL_NONE);
    return 1;
}

/* t[k] = t[k] - 1, raw, for t and k on top of the stack; pops k (t stays). */
static void count_down(lua_State *L) {
    lua_pushvalue(L, -1); /* t, k, k */
    lua_rawget(L, -3);    /* t, k, t[k] */
    lua_Integer n = lua_tointeger(L, -1);
    lua_pop(L, 1);
    lua_pushinteger(L, n - 1); /* t, k, n - 1 */
    lua_rawset(L, -3);         /* t */
}

/* core.release(c): when c[1] is true, sets it false and takes one off
 * each count c lists after it, as pairs of a table and a key from c[2]
 * (t[k] = t[k] - 1); nothing once released. A run's place in the counts of
 * runs in flight (chorus.runs) is released this way, as its to-be-closed
 * value's __close too: in C no count hook runs between the check and the
 * updates, so a close in a run stopped by a limit (whose hook raises before
 * each Lua instruction) is whole or not at all, never half done. Raw
 * access: no metamethod runs. */
static int core_release(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_rawgeti(L, 1, 1);
    int open = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (!open)
        return 0;
    lua_pushboolean(L, 0);
    lua_rawseti(L, 1, 1);
    for (lua_Integer i = 2; lua_rawgeti(L, 1, i) == LUA_TTABLE; i += 2) {
        lua_rawgeti(L, 1, i + 1); /* t, k */
        count_down(L);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 0;
}

/* core.uncount(c): t[k] = t[k] - 1 for c = { t, k }, raw, as one C step
 * (no count hook runs between the read and the write). The __close of a
 * place in a count that a to-be-closed variable holds, which Lua closes
 * exactly once: c may be shared by every such place of one key (http.lua's
 * calls in flight per workflow), no table per place. */
static int core_uncount(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_rawgeti(L, 1, 1);
    luaL_checktype(L, -1, LUA_TTABLE);
    lua_rawgeti(L, 1, 2); /* t, k */
    count_down(L);
    return 0;
}

/* core.charge(n): counts n instructions' worth of work a C function does
 * for the current run (the sandbox's table.move, insert and remove, which
 * copy in one C call where the count hook never fires) against its budget:
 * chorus_run_charge. */
static int core_charge(lua_State *L) {
    chorus_run_charge(L, luaL_checkinteger(L, 1));
    return 0;
}

/* core.uncharged(on) → whether it was on: while on, the current task's work
 * counts against no run's limits (chorus_charged_run). For the run service
 * only, around what it does with a run's output once the run's code has
 * ended; never reachable from a script (the sandbox gives scripts no core).
 * Per task, so a commit it waits for meanwhile lifts nothing for the tasks
 * that run in between. */
static int core_uncharged(lua_State *L) {
    struct chorus_task *t = chorus_task_current(L, 0);
    int on = lua_toboolean(L, 1);
    lua_pushboolean(L, t->uncharged);
    t->uncharged = on;
    return 1;
}

static int core_env(lua_State *L) {
    const char *v = getenv(luaL_checkstring(L, 1));
    if (v)
        lua_pushstring(L, v);
    else
        lua_pushvalue(L, 2);
    return 1;
}

static int core_write_log(lua_State *L) {
    size_t len;
    const char *line = luaL_checklstring(L, 1, &len);
    fwrite(line, 1, len, stderr);
    fputc('\n', stderr);
    return 0;
}

static int core_set_limits(lua_State *L) {
    struct chorus_runtime *rt = rt_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    read_limits(L, 1, &rt->limits);
    rt->limits.workflow_memory =
        opt_size_field(L, 1, "workflow_memory", rt->limits.workflow_memory);
    return 0;
}

/* core.workflow_account(name) → id: a new workflow account (alloc.h) for
 * the runs started with { account = id }; core.workflow_account(id, name)
 * renames it. */
static int core_workflow_account(lua_State *L) {
    struct chorus_runtime *rt = rt_of(L);
    if (lua_type(L, 1) == LUA_TNUMBER) {
        unsigned id = (unsigned)luaL_checkinteger(L, 1);
        luaL_argcheck(L, chorus_alloc_workflow(rt, id) != NULL, 1, "not a workflow account");
        if (!chorus_alloc_workflow_rename(rt, id, luaL_checkstring(L, 2)))
            return luaL_error(L, "out of memory naming a workflow account");
        return 0;
    }
    unsigned id = chorus_alloc_workflow_open(rt, luaL_checkstring(L, 1));
    if (!id)
        return luaL_error(L, "out of memory opening a workflow account");
    lua_pushinteger(L, id);
    return 1;
}

/* core.workflow_kept(id) → the bytes workflow account id keeps: its runs'
 * blocks still alive after their run ended. */
static int core_workflow_kept(lua_State *L) {
    struct chorus_workflow_account *w =
        chorus_alloc_workflow(rt_of(L), (unsigned)luaL_checkinteger(L, 1));
    luaL_argcheck(L, w != NULL, 1, "not a workflow account");
    lua_pushinteger(L, (lua_Integer)w->kept);
    return 1;
}

/* The process's resident set in bytes (/proc/self/statm), or -1. */
static long long resident_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long long pages = -1, rss = -1;
    if (!f)
        return -1;
    if (fscanf(f, "%lld %lld", &pages, &rss) != 2)
        rss = -1;
    fclose(f);
    return rss < 0 ? -1 : rss * sysconf(_SC_PAGESIZE);
}

/* How many file descriptors the process has open (/proc/self/fd), or -1. */
static long long open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    long long n = 0;
    if (!d)
        return -1;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the one opendir holds */
}

/* core.stats() → { lua_bytes, http_active, rss_bytes, open_fds, cpu_seconds
 * (user + system), max_fds (the open-file limit; absent when unlimited) }:
 * what /metrics shows of the process. */
static int core_stats(lua_State *L) {
    struct chorus_runtime *rt = rt_of(L);
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, (lua_Integer)rt->lua_bytes);
    lua_setfield(L, -2, "lua_bytes");
    lua_pushinteger(L, (lua_Integer)chorus_lua_http_active(rt));
    lua_setfield(L, -2, "http_active");
    lua_pushinteger(L, (lua_Integer)resident_bytes());
    lua_setfield(L, -2, "rss_bytes");
    lua_pushinteger(L, (lua_Integer)open_fds());
    lua_setfield(L, -2, "open_fds");
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        lua_pushnumber(L, (lua_Number)ru.ru_utime.tv_sec + (lua_Number)ru.ru_utime.tv_usec / 1e6 +
                              (lua_Number)ru.ru_stime.tv_sec +
                              (lua_Number)ru.ru_stime.tv_usec / 1e6);
        lua_setfield(L, -2, "cpu_seconds");
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        lua_pushinteger(L, (lua_Integer)rl.rlim_cur);
        lua_setfield(L, -2, "max_fds");
    }
    return 1;
}

static const luaL_Reg core_funcs[] = {
    {"run", core_run},
    {"spawn", core_spawn},
    {"await", core_await},
    {"result", core_result},
    {"cancel", core_cancel},
    {"interrupt", core_interrupt},
    {"sleep", core_sleep},
    {"waitable", core_waitable},
    {"now", core_now},
    {"monotime", core_monotime},
    {"uuid", core_uuid},
    {"uuid7", core_uuid7},
    {"random_hex", core_random_hex},
    {"is_hex", core_is_hex},
    {"budget_coroutine", core_budget_coroutine},
    {"set_clock", core_set_clock},
    {"exe", core_exe},
    {"run_id", core_run_id},
    {"killed", core_killed},
    {"charge", core_charge},
    {"uncharged", core_uncharged},
    {"release", core_release},
    {"uncount", core_uncount},
    {"env", core_env},
    {"write_log", core_write_log},
    {"set_limits", core_set_limits},
    {"workflow_account", core_workflow_account},
    {"workflow_kept", core_workflow_kept},
    {"stats", core_stats},
    {"execute", core_execute},
    {"start", core_start},
    {"loop", core_loop},
    {"stop", core_stop},
    {"ui_file", chorus_lua_ui_file},
    {NULL, NULL},
};

int luaopen_chorus_core(lua_State *L) {
    struct chorus_runtime *rt = chorus_runtime_attach(L);
    lua_newtable(L);
    lua_pushlightuserdata(L, rt);
    luaL_setfuncs(L, core_funcs, 1);
    chorus_lua_bindings_open(L);
    lua_pushstring(L, CHORUS_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
