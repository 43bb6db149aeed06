/* watchdog.c — the CPU-time tick that arms the budget hook (watchdog.h).
 *
 * Invariant: target is non-NULL only between chorus_watchdog_enter and
 * chorus_watchdog_leave, on the loop thread, which is the only thread the
 * timer signals (SIGEV_THREAD_ID). The handler touches nothing but target's
 * hook fields, as Lua's own interpreter does from its SIGINT handler, and
 * the tick count (a sig_atomic_t only the loop thread reads and writes).
 * target is one per process: chorus runs its runtimes on one thread (a
 * process with runtimes on several threads would need it per runtime). */
#include "watchdog.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

static lua_State *volatile target;
static lua_Hook volatile target_hook;
static volatile sig_atomic_t target_ticks;

static void on_tick(int sig) {
    (void)sig;
    lua_State *co = target;
    if (!co)
        return;
    target_ticks++;
    lua_sethook(co, target_hook, LUA_MASKCOUNT, 1);
}

static int running; /* watchdogs started and not stopped */

/* The handler while a watchdog runs; ignored after the last one stops, so a
 * tick still pending then (or after core.so is unloaded) does nothing. */
static int set_action(void (*handler)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_RESTART; /* the loop's own syscalls carry on */
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGRTMIN, &sa, NULL);
}

int chorus_watchdog_start(timer_t *timer) {
    if (running == 0 && set_action(on_tick) != 0)
        return -1;
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = SIGRTMIN;
    sev._sigev_un._tid = gettid(); /* sigev_notify_thread_id: glibc 2.36 names no macro */
    if (timer_create(CLOCK_THREAD_CPUTIME_ID, &sev, timer) != 0) {
        if (running == 0)
            set_action(SIG_IGN);
        return -1;
    }
    struct itimerspec every = {
        .it_interval = {0, CHORUS_WATCHDOG_TICK_MS * 1000000L},
        .it_value = {0, CHORUS_WATCHDOG_TICK_MS * 1000000L},
    };
    if (timer_settime(*timer, 0, &every, NULL) != 0) {
        timer_delete(*timer);
        if (running == 0)
            set_action(SIG_IGN);
        return -1;
    }
    running++;
    return 0;
}

void chorus_watchdog_stop(timer_t timer) {
    timer_delete(timer);
    if (--running == 0)
        set_action(SIG_IGN);
}

void chorus_watchdog_enter(lua_State *co, lua_Hook hook) {
    target_hook = hook;
    target_ticks = 0;
    target = co;
}

int chorus_watchdog_leave(void) {
    target = NULL;
    return (int)target_ticks;
}

int chorus_watchdog_ticks(void) { return (int)target_ticks; }
