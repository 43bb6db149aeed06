/* test_scheduler.c — runtime/scheduler.c through scheduler.h, without the
 * loop: tasks park through small C primitives registered below, the test
 * wakes or cancels them from C (as an I/O callback would) and resumes the
 * ready ones with chorus_sched_drain, the call the loop's idle phase makes.
 */
#include "scheduler.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

#include "unit.h"

static lua_State *L;
static struct chorus_runtime *rt;
static const struct chorus_limits no_limits = {0, 0, 0, 0};

/* What the tasks did, in order: mark(x) appends "x," */
static char trail[8192];

/* Tasks parked by park(name), one slot per capital letter, and how many
 * times each one's pending operation was cancelled. */
static struct chorus_task *parked[26];
static int cancels[26];

static lua_State *seen_co; /* the coroutine of the last where() call */

static void reset(void) {
    trail[0] = '\0';
    memset(parked, 0, sizeof parked);
    memset(cancels, 0, sizeof cancels);
    seen_co = NULL;
}

static int slot_of(lua_State *co, int arg) {
    const char *name = luaL_checkstring(co, arg);
    luaL_argcheck(co, name[0] >= 'A' && name[0] <= 'Z' && !name[1], arg, "one capital letter");
    return name[0] - 'A';
}

static int l_mark(lua_State *co) {
    size_t n = strlen(trail);
    snprintf(trail + n, sizeof trail - n, "%s,", luaL_tolstring(co, 1, NULL));
    return 0;
}

static void on_cancel(void *data) { (*(int *)data)++; }

/* park(name): the pending operation of an I/O primitive; its results are
 * what wake() pushes. */
static int l_park(lua_State *co) {
    int slot = slot_of(co, 1);
    struct chorus_task *t = chorus_task_waitable(co, 0);
    parked[slot] = t;
    chorus_task_park(t, on_cancel, &cancels[slot]);
    return chorus_task_yield(co, t);
}

/* spawn(fn, ...): a child task of the caller; returns its id. */
static int l_spawn(lua_State *co) {
    int id = chorus_task_spawn(co, lua_gettop(co) - 1);
    lua_pushinteger(co, id);
    return 1;
}

/* await(): the id of the next finished child, parking until there is one. */
static int l_await(lua_State *co) {
    struct chorus_task *t = chorus_task_current(co, 0);
    int id = chorus_task_await(t);
    if (id) {
        lua_pushinteger(co, id);
        return 1;
    }
    return chorus_task_yield(co, t);
}

/* cancel(id): cancels a task of the caller's run. */
static int l_cancel(lua_State *co) {
    struct chorus_task *self = chorus_task_current(co, 0);
    chorus_task_cancel(chorus_task_find(self->run, (int)luaL_checkinteger(co, 1)));
    return 0;
}

/* wakeup(name, background): wakes a parked task from inside a running
 * one, as a notify or an unlock does. */
static int l_wakeup(lua_State *co) {
    struct chorus_task *t = parked[slot_of(co, 1)];
    int background = lua_toboolean(co, 2);
    if (background)
        chorus_sched_background(rt, 1);
    lua_pushliteral(t->co, "");
    chorus_task_wake(t, 1);
    if (background)
        chorus_sched_background(rt, 0);
    return 0;
}

/* execute(name): as core.execute does, a child run of waiter(name), owned
 * by the caller's pending operation: freed when it ends or when that
 * operation is cancelled. */
static int owned_frees;

static void on_owned_done(struct chorus_run *child, void *data) {
    struct chorus_task *t = data;
    chorus_run_free(child);
    lua_pushliteral(t->co, "child done");
    chorus_task_wake(t, 1);
}

static void cancel_owned(void *data) {
    owned_frees++;
    chorus_run_free(data);
}

static int l_execute(lua_State *co) {
    struct chorus_task *t = chorus_task_waitable(co, 0);
    lua_getglobal(co, "waiter");
    lua_pushvalue(co, 1);
    struct chorus_run *child = chorus_run_start(rt, co, 1, &no_limits, 1, on_owned_done, t);
    if (!child)
        return luaL_error(co, "out of memory");
    child->owner = t;
    chorus_task_park(t, cancel_owned, child);
    return lua_yield(co, 0);
}

static int l_where(lua_State *co) {
    seen_co = co;
    return 0;
}

/* As an I/O completion does: push the results, then wake. */
static void wake(int slot, const char *value) {
    struct chorus_task *t = parked[slot];
    lua_pushstring(t->co, value);
    chorus_task_wake(t, 1);
}

static void on_done(struct chorus_run *run, void *data) {
    (void)run;
    (*(int *)data)++;
}

/* Starts a run of the global function fn with one string argument. */
static struct chorus_run *start(const char *fn, const char *arg, int *done) {
    lua_getglobal(L, fn);
    lua_pushstring(L, arg);
    return chorus_run_start(rt, L, 1, &no_limits, 1, on_done, done);
}

/* The run's outcome as "true:v1" / "false:kind:message" in buf. */
static const char *outcome(struct chorus_run *run, char *buf, size_t len) {
    int top = lua_gettop(L);
    int n = chorus_run_push_result(run, L);
    if (lua_toboolean(L, top + 1)) {
        snprintf(buf, len, "true:%s", n > 1 ? luaL_tolstring(L, top + 2, NULL) : "");
    } else if (lua_istable(L, top + 2)) {
        lua_getfield(L, top + 2, "kind");
        lua_getfield(L, top + 2, "message");
        snprintf(buf, len, "false:%s:%s", lua_tostring(L, -2), lua_tostring(L, -1));
    } else {
        snprintf(buf, len, "false:%s", luaL_tolstring(L, top + 2, NULL));
    }
    lua_settop(L, top);
    return buf;
}

static const char SCRIPTS[] =
    /* parks as `name`, then marks name=what it was woken with */
    "function waiter(name) local v = park(name) mark(name .. '=' .. v) return v end\n"
    /* each link marks itself and spawns the next, up to `last`; a task
     * awaits its child, or the child would be cancelled as an orphan */
    "function link(i, last) mark(i) if i < last then spawn(link, i + 1, last) await() end end\n"
    "function chain(name) park(name) mark(name) spawn(link, 1, 200) await() end\n"
    "function marker(name) park(name) mark(name) end\n"
    /* P's first act when woken is to spawn a child */
    "function spawner(name) park(name) mark(name) spawn(function() mark('child') end) await() end\n"
    "function waker(name) park(name) wakeup('A', true) wakeup('B', false) mark(name) end\n"
    "function yielder(name) for i = 1, 3 do mark(name .. i) coroutine.yield() end end\n"
    /* a family: root R, child C and its child G, each parked */
    "function family(name)\n"
    "  spawn(function()\n"
    "    local guard <close> = setmetatable({}, {__close = function() mark('C closed') end})\n"
    "    spawn(function() park('G') mark('G ran') end)\n"
    "    park('C') mark('C ran')\n"
    "  end)\n"
    "  return park(name)\n"
    "end\n"
    "function cancels_child(name)\n"
    "  local c = spawn(function() park('C') end)\n"
    "  local d = spawn(function() park('D') return 'd' end)\n"
    "  park(name)\n"
    "  cancel(c)\n"
    "  return await() == d and 'got d' or 'got another'\n"
    "end\n"
    "function awaits(name)\n"
    "  local ids = {}\n"
    "  ids[spawn(function() park('A') end)] = 'A'\n"
    "  ids[spawn(function() park('B') end)] = 'B'\n"
    "  ids[spawn(function() park('C') end)] = 'C'\n"
    "  for i = 1, 3 do mark(ids[await()]) end\n"
    "  return 'all'\n"
    "end\n"
    "function in_sort(name)\n"
    "  local ok, err = pcall(table.sort, {3, 1, 2}, function(a, b) park(name) return a < b end)\n"
    "  return type(err) == 'table' and err.kind .. ':' .. err.message or tostring(err)\n"
    "end\n"
    "function in_coroutine(name)\n"
    "  return select(2, coroutine.wrap(function() return pcall(park, name) end)())\n"
    "end\n"
    "function spin(name) local i = 0 while true do i = i + 1 end end\n"
    "function hooks(name) where() debug.sethook(function() end, '', 1000) return name end\n"
    "function clean(name)\n"
    "  where()\n"
    "  return tostring(debug.gethook()) .. ' ' .. name\n"
    "end\n"
    "function executes(name) return execute(name) end\n"
    "function fails(name)\n"
    "  local guard <close> = setmetatable({}, {__close = function() mark('closed') end})\n"
    "  error(name .. ' failed')\n"
    "end\n";

/* ---- the ready queue ------------------------------------------------------ */

/* Tasks woken by I/O resume in the order they were woken, not the order
 * their runs started. */
static void test_wake_order(void) {
    reset();
    int done = 0;
    struct chorus_run *a = start("waiter", "A", &done);
    struct chorus_run *b = start("waiter", "B", &done);
    struct chorus_run *c = start("waiter", "C", &done);
    chorus_sched_drain(rt);
    CHECK(parked[0] && parked[1] && parked[2]);
    CHECK_INT_EQ(done, 0);
    wake('C' - 'A', "3");
    wake('A' - 'A', "1");
    wake('B' - 'A', "2");
    chorus_sched_drain(rt);
    CHECK_STR_EQ(trail, "C=3,A=1,B=2,");
    CHECK_INT_EQ(done, 3);
    char buf[128];
    CHECK_STR_EQ(outcome(a, buf, sizeof buf), "true:1");
    CHECK_STR_EQ(outcome(c, buf, sizeof buf), "true:3");
    /* woken means not cancelled: the invariant's "exactly one" */
    CHECK_INT_EQ(cancels[0] + cancels[1] + cancels[2], 0);
    chorus_run_free(a);
    chorus_run_free(b);
    chorus_run_free(c);
    CHECK_INT_EQ(cancels[0] + cancels[1] + cancels[2], 0);
}

/* A child the running task spawns runs next, ahead of I/O completions
 * already queued (the continuation slot). */
static void test_continuation_runs_first(void) {
    reset();
    int done = 0;
    struct chorus_run *p = start("spawner", "P", &done);
    struct chorus_run *q = start("marker", "Q", &done);
    chorus_sched_drain(rt);
    wake('P' - 'A', "");
    wake('Q' - 'A', "");
    chorus_sched_drain(rt);
    CHECK_STR_EQ(trail, "P,child,Q,");
    CHECK_INT_EQ(done, 2);
    chorus_run_free(p);
    chorus_run_free(q);
}

/* A task that keeps making continuations (a chain of 200 spawns) is
 * preempted after the streak cap: a task woken by I/O behind it runs
 * before the chain ends, not after all of it. */
static void test_streak_cap(void) {
    reset();
    int done = 0;
    struct chorus_run *x = start("chain", "X", &done);
    struct chorus_run *z = start("marker", "Z", &done);
    chorus_sched_drain(rt);
    wake('X' - 'A', "");
    wake('Z' - 'A', "");
    chorus_sched_drain(rt);
    CHECK_INT_EQ(done, 2);
    /* position of Z among the 200 links */
    int before = 0;
    const char *zpos = strstr(trail, ",Z,");
    CHECK(zpos != NULL);
    for (const char *s = trail; zpos && s < zpos; s++)
        before += *s == ',';
    CHECK(before > 2);   /* X and its first links ran first: they are continuations */
    CHECK(before < 200); /* but Z did not wait for the whole chain */
    CHECK(strstr(trail, ",200,") != NULL);
    chorus_run_free(x);
    chorus_run_free(z);
}

/* A bare coroutine.yield() requeues the task behind the others: two
 * yielding tasks take turns. */
static void test_bare_yield_takes_turns(void) {
    reset();
    int done = 0;
    struct chorus_run *a = start("yielder", "a", &done);
    struct chorus_run *b = start("yielder", "b", &done);
    chorus_sched_drain(rt);
    CHECK_STR_EQ(trail, "a1,b1,a2,b2,a3,b3,");
    CHECK_INT_EQ(done, 2);
    chorus_run_free(a);
    chorus_run_free(b);
}

/* A task the running one wakes is its continuation and runs next, unless
 * woken between chorus_sched_background(rt, 1) and (rt, 0): then it
 * queues behind the others. W wakes A in the background, then B. */
static void test_background_queues_behind(void) {
    reset();
    int done = 0;
    struct chorus_run *a = start("marker", "A", &done);
    struct chorus_run *b = start("marker", "B", &done);
    struct chorus_run *w = start("waker", "W", &done);
    chorus_sched_drain(rt);
    wake('W' - 'A', "");
    chorus_sched_drain(rt);
    CHECK_STR_EQ(trail, "W,B,A,");
    CHECK_INT_EQ(done, 3);
    chorus_run_free(a);
    chorus_run_free(b);
    chorus_run_free(w);
}

/* A run freed while one of its tasks is queued leaves the queue: the
 * drain after it resumes the others only (ASan sees any use of the freed
 * task), and the woken task's operation is not cancelled as well. */
static void test_free_run_with_queued_task(void) {
    reset();
    int done = 0;
    struct chorus_run *a = start("waiter", "A", &done);
    struct chorus_run *b = start("waiter", "B", &done);
    struct chorus_run *c = start("waiter", "C", &done);
    chorus_sched_drain(rt);
    wake('A' - 'A', "1");
    wake('B' - 'A', "2");
    wake('C' - 'A', "3");
    chorus_run_free(b);
    CHECK_INT_EQ(cancels['B' - 'A'], 0);
    chorus_sched_drain(rt);
    CHECK_STR_EQ(trail, "A=1,C=3,");
    CHECK_INT_EQ(done, 2);
    chorus_run_free(a);
    chorus_run_free(c);
}

/* ---- cancellation --------------------------------------------------------- */

/* Freeing a run cancels every parked task's operation exactly once, the
 * child's and the grandchild's too, and closes their to-be-closed
 * variables; none of them resumes. */
static void test_free_run_cancels_family(void) {
    reset();
    int done = 0;
    struct chorus_run *r = start("family", "R", &done);
    chorus_sched_drain(rt);
    CHECK(parked['R' - 'A'] && parked['C' - 'A'] && parked['G' - 'A']);
    chorus_run_free(r);
    CHECK_INT_EQ(cancels['R' - 'A'], 1);
    CHECK_INT_EQ(cancels['C' - 'A'], 1);
    CHECK_INT_EQ(cancels['G' - 'A'], 1);
    CHECK_STR_EQ(trail, "C closed,");
    CHECK_INT_EQ(done, 0); /* on_done is not called for a run freed unfinished */
    chorus_sched_drain(rt);
    CHECK_STR_EQ(trail, "C closed,");
}

/* Cancelling a child cascades to its own child, and leaves its parent
 * parked; the operations are cancelled once, also when the run is freed
 * later. The child's result is a {kind="cancelled"} error. */
static void test_cancel_child_cascades(void) {
    reset();
    int done = 0;
    struct chorus_run *r = start("family", "R", &done);
    chorus_sched_drain(rt);
    struct chorus_task *child = parked['C' - 'A'];
    struct chorus_task *grandchild = parked['G' - 'A'];
    chorus_task_cancel(child);
    CHECK_INT_EQ(cancels['C' - 'A'], 1);
    CHECK_INT_EQ(cancels['G' - 'A'], 1);
    CHECK_INT_EQ(cancels['R' - 'A'], 0);
    CHECK_INT_EQ(child->state, TASK_DONE);
    CHECK_INT_EQ(grandchild->state, TASK_DONE);
    CHECK_INT_EQ(parked['R' - 'A']->state, TASK_PARKED);
    CHECK_STR_EQ(trail, "C closed,");
    int top = lua_gettop(L);
    CHECK_INT_EQ(chorus_task_push_result(child, L), 2);
    CHECK(!lua_toboolean(L, top + 1));
    lua_getfield(L, top + 2, "kind");
    CHECK_STR_EQ(lua_tostring(L, -1), "cancelled");
    lua_settop(L, top);
    chorus_task_cancel(child); /* a second cancel does nothing */
    CHECK_INT_EQ(cancels['C' - 'A'], 1);
    /* the root still finishes normally */
    wake('R' - 'A', "root");
    chorus_sched_drain(rt);
    CHECK_INT_EQ(done, 1);
    char buf[128];
    CHECK_STR_EQ(outcome(r, buf, sizeof buf), "true:root");
    chorus_run_free(r);
    CHECK_INT_EQ(cancels['R' - 'A'], 0);
    CHECK_INT_EQ(cancels['C' - 'A'], 1);
    CHECK_INT_EQ(cancels['G' - 'A'], 1);
}

/* When the root task returns, its children still parked are orphans:
 * their operations are cancelled, once. */
static void test_root_end_cancels_orphans(void) {
    reset();
    int done = 0;
    struct chorus_run *r = start("family", "R", &done);
    chorus_sched_drain(rt);
    wake('R' - 'A', "root");
    chorus_sched_drain(rt);
    CHECK_INT_EQ(done, 1);
    CHECK_INT_EQ(cancels['R' - 'A'], 0);
    CHECK_INT_EQ(cancels['C' - 'A'], 1);
    CHECK_INT_EQ(cancels['G' - 'A'], 1);
    chorus_run_free(r);
    CHECK_INT_EQ(cancels['C' - 'A'], 1);
    CHECK_INT_EQ(cancels['G' - 'A'], 1);
    CHECK_STR_EQ(trail, "C closed,");
}

/* chorus_run_interrupt cancels the operations of the tasks parked in
 * chorus_task_yield and raises the interrupt error where each waited. */
static void test_interrupt(void) {
    reset();
    int done = 0;
    struct chorus_run *r = start("family", "R", &done);
    chorus_sched_drain(rt);
    lua_pushliteral(L, "stopped by the operator");
    CHECK_INT_EQ(chorus_run_interrupt(r, L), 3);
    CHECK_INT_EQ(cancels['R' - 'A'], 1);
    CHECK_INT_EQ(cancels['C' - 'A'], 1);
    CHECK_INT_EQ(cancels['G' - 'A'], 1);
    chorus_sched_drain(rt);
    CHECK_INT_EQ(done, 1);
    char buf[128];
    CHECK_STR_EQ(outcome(r, buf, sizeof buf), "false:stopped by the operator");
    CHECK(strstr(trail, "ran") == NULL); /* no task went on past its wait */
    chorus_run_free(r);
    CHECK_INT_EQ(cancels['R' - 'A'], 1);
    CHECK_INT_EQ(cancels['C' - 'A'], 1);
    CHECK_INT_EQ(cancels['G' - 'A'], 1);
}

/* ---- await ---------------------------------------------------------------- */

/* Children are reported in the order they finish; a cancelled one never. */
static void test_await_order(void) {
    reset();
    int done = 0;
    struct chorus_run *r = start("awaits", "R", &done);
    chorus_sched_drain(rt);
    wake('B' - 'A', "");
    chorus_sched_drain(rt);
    wake('C' - 'A', "");
    wake('A' - 'A', "");
    chorus_sched_drain(rt);
    CHECK_STR_EQ(trail, "B,C,A,");
    CHECK_INT_EQ(done, 1);
    chorus_run_free(r);

    reset();
    done = 0;
    r = start("cancels_child", "R", &done);
    chorus_sched_drain(rt);
    wake('R' - 'A', "");
    chorus_sched_drain(rt); /* R cancels C, then awaits */
    CHECK_INT_EQ(cancels['C' - 'A'], 1);
    CHECK_INT_EQ(done, 0);
    wake('D' - 'A', "");
    chorus_sched_drain(rt);
    CHECK_INT_EQ(done, 1);
    char buf[128];
    CHECK_STR_EQ(outcome(r, buf, sizeof buf), "true:got d");
    chorus_run_free(r);
}

/* ---- where a task may wait ------------------------------------------------ */

/* A primitive that would park where the task cannot yield (a table.sort
 * comparator) raises a {kind="script"} error before parking anything;
 * one called outside a run or from a coroutine the script made raises
 * too. */
static void test_wait_refused(void) {
    reset();
    int done = 0;
    char buf[512];
    struct chorus_run *r = start("in_sort", "S", &done);
    chorus_sched_drain(rt);
    CHECK_INT_EQ(done, 1);
    CHECK(parked['S' - 'A'] == NULL);
    CHECK(strncmp(outcome(r, buf, sizeof buf), "true:script:", 12) == 0);
    CHECK(strstr(buf, "cannot wait here") != NULL);
    chorus_run_free(r);

    r = start("in_coroutine", "T", &done);
    chorus_sched_drain(rt);
    CHECK_INT_EQ(done, 2);
    CHECK(parked['T' - 'A'] == NULL);
    CHECK(strstr(outcome(r, buf, sizeof buf), "inside a coroutine the script created") != NULL);
    chorus_run_free(r);

    CHECK(luaL_dostring(L, "return pcall(park, 'U')") == LUA_OK);
    CHECK(!lua_toboolean(L, -2));
    CHECK(strstr(lua_tostring(L, -1), "only allowed inside a workflow run") != NULL);
    lua_pop(L, 2);
    CHECK(parked['U' - 'A'] == NULL);
}

/* A run over its instruction budget is stopped with kind "budget"; a run
 * without one beside it is not. */
static void test_budget_stops_run(void) {
    reset();
    int done = 0;
    char buf[512];
    struct chorus_limits budget = {0, 100000, 0, 0};
    struct chorus_run *other = start("waiter", "O", &done);
    lua_getglobal(L, "spin");
    lua_pushliteral(L, "X");
    struct chorus_run *x = chorus_run_start(rt, L, 1, &budget, 1, on_done, &done);
    chorus_sched_drain(rt);
    CHECK_INT_EQ(done, 1);
    CHECK(x->done);
    CHECK_STR_EQ(outcome(x, buf, sizeof buf),
                 "false:budget:run exceeded its instruction budget of 100000 instructions "
                 "(limits.run_instructions)");
    chorus_run_free(x);
    wake('O' - 'A', "still here");
    chorus_sched_drain(rt);
    CHECK_INT_EQ(done, 2);
    CHECK_STR_EQ(outcome(other, buf, sizeof buf), "true:still here");
    chorus_run_free(other);
}

/* ---- the coroutine pool --------------------------------------------------- */

/* A task that ended cleanly gives its coroutine to the next task: the
 * same lua_State comes back, without the debug hook the last task set,
 * and runs the new task's function with its own argument. */
static void test_pool_reuse(void) {
    reset();
    int done = 0;
    char buf[128];
    struct chorus_run *a = start("hooks", "first", &done);
    chorus_sched_drain(rt);
    CHECK_INT_EQ(done, 1);
    CHECK_STR_EQ(outcome(a, buf, sizeof buf), "true:first");
    lua_State *first = seen_co;
    chorus_run_free(a);

    struct chorus_run *b = start("clean", "second", &done);
    chorus_sched_drain(rt);
    CHECK_INT_EQ(done, 2);
    CHECK(seen_co != NULL && seen_co == first);
    CHECK_STR_EQ(outcome(b, buf, sizeof buf), "true:nil second");
    chorus_run_free(b);
}

/* A coroutine whose task was cancelled while parked is closed and reused;
 * one that died of an error is not (its stack holds the error), but its
 * to-be-closed variables were closed. */
static void test_pool_after_cancel_and_error(void) {
    reset();
    int done = 0;
    char buf[128];
    struct chorus_run *w = start("waiter", "W", &done);
    chorus_sched_drain(rt);
    lua_State *cancelled = parked['W' - 'A']->co;
    chorus_run_free(w);
    CHECK_INT_EQ(cancels['W' - 'A'], 1);
    struct chorus_run *c = start("clean", "again", &done);
    chorus_sched_drain(rt);
    CHECK(seen_co == cancelled);
    CHECK_STR_EQ(outcome(c, buf, sizeof buf), "true:nil again");
    chorus_run_free(c);

    reset();
    int pooled = rt->nco_pool;
    struct chorus_run *f = start("fails", "F", &done);
    chorus_sched_drain(rt);
    CHECK_STR_EQ(trail, "closed,");
    CHECK(strstr(outcome(f, buf, sizeof buf), "F failed") != NULL);
    CHECK_INT_EQ(rt->nco_pool, pooled - 1); /* taken, not given back */
    chorus_run_free(f);
    CHECK_INT_EQ(rt->nco_pool, pooled - 1);
}

/* Closing the runtime with a run parked on a child it owns (a served
 * workflow parked in any wait when serve stops): the child is freed once,
 * by its owner's cancel. Freeing the runs head first freed the child, then
 * the owner's cancel freed it again. Checked after lua_close in main. */
static void test_close_frees_owned_runs_once(void) {
    reset();
    int done = 0;
    start("executes", "X", &done);
    chorus_sched_drain(rt);
    CHECK(parked['X' - 'A'] != NULL);
    CHECK(rt->runs && rt->runs->owner != NULL); /* the child, newest */
    CHECK_INT_EQ(done, 0);
}

int main(void) {
    L = luaL_newstate();
    luaL_openlibs(L);
    rt = chorus_runtime_attach(L);
    lua_register(L, "mark", l_mark);
    lua_register(L, "park", l_park);
    lua_register(L, "spawn", l_spawn);
    lua_register(L, "await", l_await);
    lua_register(L, "cancel", l_cancel);
    lua_register(L, "wakeup", l_wakeup);
    lua_register(L, "where", l_where);
    lua_register(L, "execute", l_execute);
    if (luaL_dostring(L, SCRIPTS) != LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        return 1;
    }
    test_wake_order();
    test_continuation_runs_first();
    test_streak_cap();
    test_bare_yield_takes_turns();
    test_background_queues_behind();
    test_free_run_with_queued_task();
    test_free_run_cancels_family();
    test_cancel_child_cascades();
    test_root_end_cancels_orphans();
    test_interrupt();
    test_await_order();
    test_wait_refused();
    test_budget_stops_run();
    test_pool_reuse();
    test_pool_after_cancel_and_error();
    test_close_frees_owned_runs_once(); /* last: lua_close frees what it leaves */
    lua_close(L);
    CHECK_INT_EQ(owned_frees, 1);
    CHECK_INT_EQ(cancels['X' - 'A'], 1);
    return unit_summary();
}
