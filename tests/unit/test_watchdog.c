/* test_watchdog.c — runtime/watchdog.c: ticks of the thread's CPU time are
 * counted between enter and leave only, each one arms the hook for the very
 * next instruction, and nothing is armed or counted outside. The spins are
 * bounded by CPU time; no assertion is about how long anything took. */
#include "watchdog.h"

#include <lauxlib.h>
#include <time.h>

#include "unit.h"

static void hook(lua_State *L, lua_Debug *ar) {
    (void)L;
    (void)ar;
}

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Burns CPU until the watchdog counted n ticks or `limit` seconds of CPU
 * went by. */
static void spin_until_ticks(int n, double limit) {
    double start = cpu_seconds();
    while (chorus_watchdog_ticks() < n && cpu_seconds() - start < limit)
        ;
}

static void spin(double seconds) {
    double start = cpu_seconds();
    while (cpu_seconds() - start < seconds)
        ;
}

static void test_ticks_between_enter_and_leave(void) {
    timer_t timer;
    lua_State *L = luaL_newstate();
    if (chorus_watchdog_start(&timer) != 0) {
        printf("no CPU-time timer on this system: skipped\n");
        lua_close(L);
        return;
    }
    chorus_watchdog_enter(L, hook);
    CHECK_INT_EQ(chorus_watchdog_ticks(), 0);
    spin_until_ticks(3, 10.0);
    CHECK(chorus_watchdog_ticks() >= 3);
    CHECK(lua_gethook(L) == hook);
    CHECK_INT_EQ(lua_gethookmask(L), LUA_MASKCOUNT);
    CHECK_INT_EQ(lua_gethookcount(L), 1); /* the very next instruction */
    int ticks = chorus_watchdog_leave();
    CHECK(ticks >= 3);

    /* after leave: no tick counted, no hook set */
    lua_sethook(L, NULL, 0, 0);
    spin(5 * CHORUS_WATCHDOG_TICK_MS / 1000.0);
    CHECK_INT_EQ(chorus_watchdog_ticks(), ticks);
    CHECK_INT_EQ(lua_gethookmask(L), 0);

    /* each enter counts from zero */
    chorus_watchdog_enter(L, hook);
    CHECK_INT_EQ(chorus_watchdog_ticks(), 0);
    chorus_watchdog_leave();
    chorus_watchdog_stop(timer);
    lua_close(L);
}

int main(void) {
    test_ticks_between_enter_and_leave();
    return unit_summary();
}
