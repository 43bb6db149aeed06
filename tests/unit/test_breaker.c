/* test_breaker.c — runtime/breaker.c on a manual clock: every transition of
 * the state machine for both window kinds, slow calls, TIME window expiry,
 * half-open permits and config errors. */
#include "breaker.h"

#include <math.h>
#include <string.h>

#include "unit.h"

static double now;
static struct chorus_clock clk;

/* window 10 (calls or seconds), min_calls 10, 50% failures, open 60 s,
 * 3 half-open calls. */
static struct chorus_breaker_config config(enum chorus_breaker_window kind) {
    struct chorus_breaker_config c = chorus_breaker_config_default();
    c.window_type = kind;
    c.window = 10;
    c.min_calls = 10;
    c.half_open_calls = 3;
    return c;
}

static struct chorus_breaker *breaker(const struct chorus_breaker_config *c) {
    now = 1000;
    return chorus_breaker_new(c, &clk);
}

/* Makes n calls with the given outcome; returns how many were permitted. */
static int calls(struct chorus_breaker *b, int n, int failed, double duration) {
    int permitted = 0;
    for (int i = 0; i < n; i++) {
        if (!chorus_breaker_acquire(b))
            continue;
        permitted++;
        chorus_breaker_record(b, failed, duration);
    }
    return permitted;
}

static enum chorus_breaker_state state(const struct chorus_breaker *b) {
    return chorus_breaker_state(b);
}

static struct chorus_breaker_stats stats(struct chorus_breaker *b) {
    struct chorus_breaker_stats st;
    chorus_breaker_stats(b, &st);
    return st;
}

static void test_defaults(void) {
    struct chorus_breaker_config c = chorus_breaker_config_default();
    char err[128] = "";
    CHECK_INT_EQ(c.window_type, CHORUS_BREAKER_COUNT);
    CHECK_INT_EQ(c.window, 100);
    CHECK_INT_EQ(c.min_calls, 100);
    CHECK(c.failure_rate == 50 && c.slow_call_rate == 100);
    CHECK(c.slow_call_duration == 60 && c.open_for == 60);
    CHECK_INT_EQ(c.half_open_calls, 10);
    CHECK_INT_EQ(chorus_breaker_config_check(&c, err, sizeof err), 0);
    CHECK_STR_EQ(chorus_breaker_state_name(CHORUS_BREAKER_CLOSED), "closed");
    CHECK_STR_EQ(chorus_breaker_state_name(CHORUS_BREAKER_OPEN), "open");
    CHECK_STR_EQ(chorus_breaker_state_name(CHORUS_BREAKER_HALF_OPEN), "half_open");
    CHECK_STR_EQ(chorus_breaker_state_name((enum chorus_breaker_state)9), "unknown");
}

/* Each case breaks one field; the message must start with its name. */
static void test_config_errors(void) {
    struct {
        const char *field;
        struct chorus_breaker_config c;
    } cases[12];
    size_t n = 0;
    char err[128];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        cases[i].c = config(CHORUS_BREAKER_COUNT);
    cases[n].field = "window_type";
    cases[n++].c.window_type = (enum chorus_breaker_window)5;
    cases[n].field = "window";
    cases[n++].c.window = 0;
    cases[n].field = "window";
    cases[n].c.window_type = CHORUS_BREAKER_TIME;
    cases[n++].c.window = 86401;
    cases[n].field = "min_calls";
    cases[n++].c.min_calls = 0;
    cases[n].field = "failure_rate";
    cases[n++].c.failure_rate = 0;
    cases[n].field = "failure_rate";
    cases[n++].c.failure_rate = 100.5;
    cases[n].field = "slow_call_rate";
    cases[n++].c.slow_call_rate = NAN;
    cases[n].field = "slow_call_duration";
    cases[n++].c.slow_call_duration = 0;
    cases[n].field = "open_for";
    cases[n++].c.open_for = -1;
    cases[n].field = "open_for";
    cases[n++].c.open_for = INFINITY;
    cases[n].field = "half_open_calls";
    cases[n++].c.half_open_calls = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(cases[i].field);
        err[0] = 0;
        CHECK_INT_EQ(chorus_breaker_config_check(&cases[i].c, err, sizeof err), -1);
        CHECK(strncmp(err, cases[i].field, len) == 0 && err[len] == ' ');
        if (strncmp(err, cases[i].field, len) != 0)
            fprintf(stderr, "    case %zu: \"%s\"\n", i, err);
        CHECK(chorus_breaker_new(&cases[i].c, &clk) == NULL);
    }
    CHECK_INT_EQ(chorus_breaker_config_check(&cases[0].c, NULL, 0), -1);
    CHECK_INT_EQ(chorus_breaker_config_check(&cases[0].c, err, 8), -1);
    CHECK_INT_EQ(strlen(err), 7); /* truncated, terminated */
}

static void test_stays_closed_under_min_calls(enum chorus_breaker_window kind) {
    struct chorus_breaker_config c = config(kind);
    struct chorus_breaker *b = breaker(&c);
    struct chorus_breaker_stats st;
    CHECK_INT_EQ(calls(b, 9, 1, 0.01), 9);
    st = stats(b);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_CLOSED);
    CHECK_INT_EQ(st.calls, 9);
    CHECK_INT_EQ(st.failed, 9);
    CHECK(st.failure_rate == -1 && st.slow_rate == -1);
    chorus_breaker_free(b);
}

/* Opens on the 10th call at exactly 50%, then rejects without calling,
 * goes half-open after open_for and closes after 3 good trial calls. */
static void test_open_half_open_close(enum chorus_breaker_window kind) {
    struct chorus_breaker_config c = config(kind);
    struct chorus_breaker *b = breaker(&c);
    struct chorus_breaker_stats st;
    CHECK_INT_EQ(calls(b, 5, 1, 0.01), 5);
    CHECK_INT_EQ(calls(b, 4, 0, 0.01), 4);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_CLOSED);
    st = stats(b);
    CHECK(st.failure_rate == -1);
    CHECK_INT_EQ(calls(b, 1, 0, 0.01), 1); /* 5 of 10 failed: 50% */
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_OPEN);
    st = stats(b); /* the window that opened it */
    CHECK(st.failure_rate == 50 && st.slow_rate == 0);
    CHECK_INT_EQ(st.calls, 10);

    CHECK_INT_EQ(chorus_breaker_acquire(b), 0);
    CHECK_INT_EQ(calls(b, 4, 0, 0.01), 0);
    CHECK_INT_EQ(stats(b).not_permitted, 5);
    now += 59.9;
    CHECK_INT_EQ(chorus_breaker_acquire(b), 0);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_OPEN);
    now += 0.1;
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_HALF_OPEN); /* lazily, as acquire sees it */
    st = stats(b);
    CHECK(st.calls == 0 && st.failure_rate == -1 && st.not_permitted == 0);

    CHECK_INT_EQ(calls(b, 2, 0, 0.01), 2);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_HALF_OPEN);
    st = stats(b);
    CHECK(st.calls == 2 && st.failure_rate == -1);
    CHECK_INT_EQ(calls(b, 1, 0, 0.01), 1);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_CLOSED);
    st = stats(b);
    CHECK(st.calls == 0 && st.failed == 0 && st.not_permitted == 0); /* window reset */
    /* closed for real: a fresh window is needed to open again */
    CHECK_INT_EQ(calls(b, 9, 1, 0.01), 9);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_CLOSED);
    chorus_breaker_free(b);
}

static void open_it(struct chorus_breaker *b) { calls(b, 10, 1, 0.01); }

static void test_reopens(enum chorus_breaker_window kind) {
    struct chorus_breaker_config c = config(kind);
    struct chorus_breaker *b = breaker(&c);
    open_it(b);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_OPEN);
    now += 60;
    CHECK_INT_EQ(calls(b, 1, 0, 0.01), 1);
    CHECK_INT_EQ(calls(b, 2, 1, 0.01), 2); /* 2 of 3 failed */
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_OPEN);
    CHECK(fabs(stats(b).failure_rate - 200.0 / 3) < 1e-9);
    now += 59;
    CHECK_INT_EQ(chorus_breaker_acquire(b), 0); /* open_for counts from the reopening */
    now += 1;
    CHECK_INT_EQ(chorus_breaker_acquire(b), 1);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_HALF_OPEN);
    chorus_breaker_free(b);
}

static void test_half_open_permits(enum chorus_breaker_window kind) {
    struct chorus_breaker_config c = config(kind);
    struct chorus_breaker *b = breaker(&c);
    open_it(b);
    now += 60;
    CHECK_INT_EQ(chorus_breaker_acquire(b), 1);
    CHECK_INT_EQ(chorus_breaker_acquire(b), 1);
    CHECK_INT_EQ(chorus_breaker_acquire(b), 1);
    CHECK_INT_EQ(chorus_breaker_acquire(b), 0); /* all 3 in flight */
    CHECK_INT_EQ(stats(b).not_permitted, 1);
    chorus_breaker_record(b, 0, 0.01);
    CHECK_INT_EQ(chorus_breaker_acquire(b), 0); /* a result does not return its permit */
    chorus_breaker_release(b);                  /* a cancelled one does */
    CHECK_INT_EQ(chorus_breaker_acquire(b), 1);
    CHECK_INT_EQ(chorus_breaker_acquire(b), 0);
    chorus_breaker_record(b, 0, 0.01);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_HALF_OPEN);
    chorus_breaker_record(b, 0, 0.01); /* the third result: closes */
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_CLOSED);
    chorus_breaker_release(b); /* CLOSED: no-op */
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_CLOSED);

    /* stray releases never mint more than half_open_calls permits */
    open_it(b);
    now += 60;
    CHECK_INT_EQ(chorus_breaker_acquire(b), 1);
    for (int i = 0; i < 5; i++)
        chorus_breaker_release(b);
    CHECK_INT_EQ(chorus_breaker_acquire(b), 1);
    CHECK_INT_EQ(chorus_breaker_acquire(b), 1);
    CHECK_INT_EQ(chorus_breaker_acquire(b), 1);
    CHECK_INT_EQ(chorus_breaker_acquire(b), 0);
    chorus_breaker_free(b);
}

static void test_slow_calls(enum chorus_breaker_window kind) {
    struct chorus_breaker_config c = config(kind);
    struct chorus_breaker *b;
    struct chorus_breaker_stats st;
    c.slow_call_rate = 50;
    c.slow_call_duration = 1;
    b = breaker(&c);
    CHECK_INT_EQ(calls(b, 5, 0, 1.0), 5); /* exactly the threshold: not slow */
    CHECK_INT_EQ(calls(b, 4, 0, 1.5), 4);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_CLOSED);
    CHECK_INT_EQ(calls(b, 1, 1, 2.0), 1); /* a failed slow call is both */
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_OPEN);
    st = stats(b);
    CHECK(st.slow == 5 && st.failed == 1);
    CHECK(st.slow_rate == 50 && st.failure_rate == 10);
    chorus_breaker_free(b);

    /* default slow_call_rate 100: only all-slow opens it */
    c = config(kind);
    c.slow_call_duration = 1;
    b = breaker(&c);
    calls(b, 9, 0, 5);
    calls(b, 1, 0, 0.5);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_CLOSED);
    chorus_breaker_free(b);
    b = breaker(&c);
    calls(b, 10, 0, 5);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_OPEN);
    chorus_breaker_free(b);
}

static void test_count_window_slides(void) {
    struct chorus_breaker_config c = config(CHORUS_BREAKER_COUNT);
    struct chorus_breaker *b;
    struct chorus_breaker_stats st;
    c.failure_rate = 60;
    b = breaker(&c);
    calls(b, 5, 1, 0.01);
    calls(b, 5, 0, 0.01);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_CLOSED); /* 50% < 60% */
    calls(b, 3, 0, 0.01);                          /* pushes out 3 failures */
    st = stats(b);
    CHECK(st.calls == 10 && st.failed == 2 && st.failure_rate == 20);
    calls(b, 5, 1, 0.01); /* pushes out F F O O O: 5 of the last 10 */
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_CLOSED);
    calls(b, 1, 1, 0.01); /* 6 of the last 10 */
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_OPEN);
    chorus_breaker_free(b);

    /* min_calls above a COUNT window means the window size (Resilience4j) */
    c = config(CHORUS_BREAKER_COUNT);
    c.window = 4;
    c.min_calls = 100;
    b = breaker(&c);
    calls(b, 3, 1, 0.01);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_CLOSED);
    calls(b, 1, 1, 0.01);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_OPEN);
    chorus_breaker_free(b);
}

static void test_time_window_forgets(void) {
    struct chorus_breaker_config c = config(CHORUS_BREAKER_TIME);
    struct chorus_breaker *b;
    struct chorus_breaker_stats st;
    c.min_calls = 5;
    b = breaker(&c); /* now = 1000.0 */
    for (int i = 0; i < 4; i++) {
        calls(b, 1, 1, 0.01); /* one failure in each of seconds 1000..1003 */
        now += 1;
    }
    CHECK_INT_EQ(stats(b).calls, 4);
    now = 1010.5; /* the window is seconds 1001..1010 */
    st = stats(b);
    CHECK(st.calls == 3 && st.failed == 3);
    now = 1012.99; /* 1003..1012 */
    CHECK_INT_EQ(stats(b).calls, 1);
    calls(b, 4, 1, 0.01); /* 5 failures in the window: opens */
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_OPEN);
    chorus_breaker_free(b);

    /* the same failures spread over more than the window never open it */
    b = breaker(&c);
    for (int i = 0; i < 50; i++) {
        calls(b, 1, 1, 0.01);
        now += 2.5; /* at most 4 in any 10 seconds */
    }
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_CLOSED);
    CHECK(stats(b).calls <= 4);
    now += 100; /* idle longer than the window: everything dropped at once */
    CHECK_INT_EQ(stats(b).calls, 0);
    chorus_breaker_free(b);
}

/* Resilience4j's half-open window uses min(min_calls, half_open_calls). */
static void test_half_open_min_calls(void) {
    struct chorus_breaker_config c = config(CHORUS_BREAKER_COUNT);
    struct chorus_breaker *b;
    c.min_calls = 2;
    c.window = 2;
    c.half_open_calls = 5;
    b = breaker(&c);
    calls(b, 2, 1, 0.01);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_OPEN);
    now += 60;
    CHECK_INT_EQ(chorus_breaker_acquire(b), 1);
    CHECK_INT_EQ(chorus_breaker_acquire(b), 1);
    CHECK_INT_EQ(chorus_breaker_acquire(b), 1);
    chorus_breaker_record(b, 0, 0.01);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_HALF_OPEN);
    chorus_breaker_record(b, 0, 0.01);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_CLOSED);
    chorus_breaker_record(b, 1, 0.01); /* the third trial lands in the new window */
    CHECK_INT_EQ(stats(b).calls, 1);
    chorus_breaker_free(b);
}

static void test_late_results_while_open(void) {
    struct chorus_breaker_config c = config(CHORUS_BREAKER_COUNT);
    struct chorus_breaker *b = breaker(&c);
    CHECK_INT_EQ(chorus_breaker_acquire(b), 1); /* in flight while it opens */
    open_it(b);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_OPEN);
    chorus_breaker_record(b, 0, 0.01); /* counted, no transition */
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_OPEN);
    CHECK_INT_EQ(stats(b).failed, 9);
    chorus_breaker_release(b); /* OPEN: no-op */
    /* open_for 0: the next acquire is a half-open trial */
    chorus_breaker_free(b);
    c.open_for = 0;
    b = breaker(&c);
    open_it(b);
    CHECK_INT_EQ(state(b), CHORUS_BREAKER_HALF_OPEN);
    CHECK_INT_EQ(chorus_breaker_acquire(b), 1);
    chorus_breaker_free(b);
    chorus_breaker_free(NULL);
}

int main(void) {
    static const enum chorus_breaker_window kinds[] = {CHORUS_BREAKER_COUNT, CHORUS_BREAKER_TIME};
    clk = chorus_clock_manual(&now);
    test_defaults();
    test_config_errors();
    for (int i = 0; i < 2; i++) {
        int failed_before = unit_failed;
        test_stays_closed_under_min_calls(kinds[i]);
        test_open_half_open_close(kinds[i]);
        test_reopens(kinds[i]);
        test_half_open_permits(kinds[i]);
        test_slow_calls(kinds[i]);
        if (unit_failed != failed_before)
            fprintf(stderr, "    (the failures above: %s window)\n", i ? "TIME" : "COUNT");
    }
    test_count_window_slides();
    test_time_window_forgets();
    test_half_open_min_calls();
    test_late_results_while_open();
    return unit_summary();
}
