/* test_retry.c — runtime/retry.c: backoff sequences and bounds, retryable
 * statuses, Retry-After in every form, and the retry budget on virtual time. */
#include "retry.h"

#include <math.h>
#include <string.h>

#include "unit.h"

static struct chorus_retry_policy policy(enum chorus_backoff kind, double base, double cap) {
    struct chorus_retry_policy p = chorus_retry_policy_default();
    p.backoff = kind;
    p.base = base;
    p.cap = cap;
    return p;
}

static void test_defaults_and_names(void) {
    struct chorus_retry_policy p = chorus_retry_policy_default();
    enum chorus_backoff b = CHORUS_BACKOFF_EXPONENTIAL;
    char err[128] = "";
    CHECK_INT_EQ(p.attempts, 3);
    CHECK_INT_EQ(p.backoff, CHORUS_BACKOFF_EXPONENTIAL);
    CHECK(p.base == 0.1 && p.cap == 10 && p.max_elapsed == 0);
    CHECK_INT_EQ(chorus_retry_policy_check(&p, err, sizeof err), 0);

    CHECK_INT_EQ(chorus_backoff_parse("full_jitter", &b), 0);
    CHECK_INT_EQ(b, CHORUS_BACKOFF_FULL_JITTER);
    CHECK_INT_EQ(chorus_backoff_parse("decorrelated_jitter", &b), 0);
    CHECK_INT_EQ(b, CHORUS_BACKOFF_DECORRELATED_JITTER);
    CHECK_INT_EQ(chorus_backoff_parse("exponential", &b), 0);
    CHECK_INT_EQ(b, CHORUS_BACKOFF_EXPONENTIAL);
    CHECK_INT_EQ(chorus_backoff_parse("linear", &b), -1);
    CHECK_INT_EQ(chorus_backoff_parse("Exponential", &b), -1);
    CHECK_INT_EQ(chorus_backoff_parse(NULL, &b), -1);
    CHECK_INT_EQ(b, CHORUS_BACKOFF_EXPONENTIAL);
    CHECK_STR_EQ(chorus_backoff_name(CHORUS_BACKOFF_DECORRELATED_JITTER), "decorrelated_jitter");
    CHECK_STR_EQ(chorus_backoff_name((enum chorus_backoff)7), "unknown");
}

static void test_policy_check(void) {
    struct chorus_retry_policy p = chorus_retry_policy_default();
    char err[128];
    p.attempts = 0;
    CHECK_INT_EQ(chorus_retry_policy_check(&p, err, sizeof err), -1);
    CHECK(strstr(err, "attempts") != NULL);
    p = chorus_retry_policy_default();
    p.base = -1;
    CHECK_INT_EQ(chorus_retry_policy_check(&p, err, sizeof err), -1);
    CHECK(strstr(err, "base") == err);
    p = chorus_retry_policy_default();
    p.cap = 0.05;
    CHECK_INT_EQ(chorus_retry_policy_check(&p, err, sizeof err), -1);
    CHECK(strstr(err, "cap") == err);
    p = chorus_retry_policy_default();
    p.cap = INFINITY;
    CHECK_INT_EQ(chorus_retry_policy_check(&p, err, sizeof err), -1);
    p = chorus_retry_policy_default();
    p.max_elapsed = NAN;
    CHECK_INT_EQ(chorus_retry_policy_check(&p, err, sizeof err), -1);
    CHECK(strstr(err, "max_elapsed") == err);
    p = chorus_retry_policy_default();
    p.backoff = (enum chorus_backoff)9;
    CHECK_INT_EQ(chorus_retry_policy_check(&p, NULL, 0), -1); /* err may be NULL */
}

static void test_exponential(void) {
    struct chorus_retry_policy p = policy(CHORUS_BACKOFF_EXPONENTIAL, 0.1, 1);
    uint64_t rng = 1, before = rng;
    CHECK(chorus_retry_delay(&p, 1, 0, &rng) == 0.1);
    CHECK(chorus_retry_delay(&p, 2, 0, &rng) == 0.2);
    CHECK(chorus_retry_delay(&p, 3, 0, &rng) == 0.4);
    CHECK(chorus_retry_delay(&p, 4, 0, &rng) == 0.8);
    CHECK(chorus_retry_delay(&p, 5, 0, &rng) == 1); /* 1.6 capped */
    CHECK(chorus_retry_delay(&p, 100, 0, &rng) == 1);
    CHECK(chorus_retry_delay(&p, 1000000, 0, &rng) == 1);
    CHECK(chorus_retry_delay(&p, 0, 0, &rng) == 0.1); /* below 1 counts as 1 */
    CHECK(rng == before);                             /* no draw */
    p.base = 0;
    CHECK(chorus_retry_delay(&p, 5000, 0, &rng) == 0); /* never NaN */
}

static void test_full_jitter(void) {
    struct chorus_retry_policy p = policy(CHORUS_BACKOFF_FULL_JITTER, 0.1, 2);
    uint64_t rng = 42;
    int in_bounds = 1, capped = 1;
    double sum = 0, lo = 1e9, hi = -1;
    for (int i = 0; i < 1000; i++) {
        double d = chorus_retry_delay(&p, 3, 0, &rng); /* exponential 0.4 */
        in_bounds &= d >= 0 && d <= 0.4;
        sum += d;
        lo = fmin(lo, d);
        hi = fmax(hi, d);
    }
    CHECK(in_bounds);
    CHECK(fabs(sum / 1000 - 0.2) < 0.02); /* mean of uniform[0, 0.4] */
    CHECK(lo < 0.02 && hi > 0.38);        /* spread over the whole range */
    for (int i = 0; i < 1000; i++)
        capped &= chorus_retry_delay(&p, 30, 0, &rng) <= 2;
    CHECK(capped);
}

static void test_decorrelated_jitter(void) {
    struct chorus_retry_policy p = policy(CHORUS_BACKOFF_DECORRELATED_JITTER, 0.1, 5);
    uint64_t rng = 7;
    int first_ok = 1, chain_ok = 1, reached_cap = 0;
    double prev = 0;
    for (int i = 0; i < 1000; i++) {
        double d = chorus_retry_delay(&p, 1, 123 /* ignored on the first */, &rng);
        first_ok &= d >= 0.1 && d <= 0.3;
    }
    CHECK(first_ok);
    for (int i = 1; i <= 1000; i++) {
        double d = chorus_retry_delay(&p, i, prev, &rng);
        double hi = fmax(0.1, i == 1 ? 0.1 : prev) * 3;
        chain_ok &= d >= 0.1 && d <= 5 && d <= hi;
        reached_cap |= d == 5;
        prev = d;
    }
    CHECK(chain_ok);
    CHECK(reached_cap);
    /* A prev_delay below base counts as base. */
    CHECK(chorus_retry_delay(&p, 4, 0.001, &rng) >= 0.1);
}

static void test_equal_jitter(void) {
    struct chorus_retry_policy p = policy(CHORUS_BACKOFF_EQUAL_JITTER, 1, 300);
    uint64_t rng = 5;
    int in_bounds = 1, capped = 1;
    double sum = 0, lo = 1e9, hi = -1;
    for (int i = 0; i < 1000; i++) {
        double d = chorus_retry_delay(&p, 3, 0, &rng); /* exponential 4 */
        in_bounds &= d >= 2 && d < 4;
        sum += d;
        lo = fmin(lo, d);
        hi = fmax(hi, d);
    }
    CHECK(in_bounds);
    CHECK(fabs(sum / 1000 - 3) < 0.1); /* mean of uniform[2, 4) */
    CHECK(lo < 2.05 && hi > 3.95);     /* spread over the whole upper half */
    for (int i = 0; i < 1000; i++) {
        double d = chorus_retry_delay(&p, 20, 0, &rng); /* 2^19 capped at 300 */
        capped &= d >= 150 && d < 300;
    }
    CHECK(capped);
    /* the first retry waits between base/2 and base; base 0 waits 0 */
    double first = chorus_retry_delay(&p, 1, 0, &rng);
    CHECK(first >= 0.5 && first < 1);
    p.base = 0;
    CHECK(chorus_retry_delay(&p, 7, 0, &rng) == 0);
    enum chorus_backoff b = CHORUS_BACKOFF_EXPONENTIAL;
    CHECK_INT_EQ(chorus_backoff_parse("equal_jitter", &b), 0);
    CHECK_INT_EQ(b, CHORUS_BACKOFF_EQUAL_JITTER);
    CHECK_STR_EQ(chorus_backoff_name(CHORUS_BACKOFF_EQUAL_JITTER), "equal_jitter");
    p.base = 1;
    CHECK_INT_EQ(chorus_retry_policy_check(&p, NULL, 0), 0);
}

static void test_same_seed_same_delays(void) {
    struct chorus_retry_policy p = policy(CHORUS_BACKOFF_FULL_JITTER, 1, 100);
    uint64_t a = 99, b = 99, c = 100;
    double da = chorus_retry_delay(&p, 5, 0, &a), db = chorus_retry_delay(&p, 5, 0, &b);
    CHECK(da == db);
    CHECK(chorus_retry_delay(&p, 5, 0, &c) != da);
    CHECK(a == b && a != 99);
}

static void test_next(void) {
    struct chorus_retry_policy p = policy(CHORUS_BACKOFF_EXPONENTIAL, 1, 10);
    uint64_t rng = 0;
    double prev = 0;
    p.attempts = 3;
    CHECK(chorus_retry_next(&p, 1, 0.5, -1, &prev, &rng) == 1);
    CHECK(prev == 1);
    CHECK(chorus_retry_next(&p, 2, 2, -1, &prev, &rng) == 2);
    CHECK(chorus_retry_next(&p, 3, 5, -1, &prev, &rng) == -1); /* 3 attempts made */
    /* Retry-After wins when longer than the backoff, up to cap. */
    prev = 0;
    CHECK(chorus_retry_next(&p, 1, 0, 3, &prev, &rng) == 3);
    CHECK(prev == 1); /* the backoff chain is unaffected */
    prev = 0;
    CHECK(chorus_retry_next(&p, 1, 0, 86400, &prev, &rng) == p.cap); /* capped */
    CHECK(chorus_retry_next(&p, 1, 0, 0.5, &prev, &rng) == 1);
    /* max_elapsed: give up when the wait would pass it. */
    p.max_elapsed = 5;
    prev = 0;
    CHECK(chorus_retry_next(&p, 2, 3, -1, &prev, &rng) == 2); /* 3 + 2 = 5: ok */
    CHECK(chorus_retry_next(&p, 2, 3.5, -1, &prev, &rng) == -1);
    CHECK(chorus_retry_next(&p, 1, 0, 6, &prev, &rng) == -1);
    p.attempts = 1;
    CHECK(chorus_retry_next(&p, 1, 0, -1, &prev, &rng) == -1);
}

static void test_statuses(void) {
    static const long yes[] = {408, 425, 429, 500, 502, 503, 504, 599};
    static const long no[] = {0, 200, 201, 301, 400, 401, 403, 404, 409, 422, 499, 600, -500};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        CHECK_INT_EQ(chorus_retry_status_retryable(yes[i]), 1);
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        CHECK_INT_EQ(chorus_retry_status_retryable(no[i]), 0);
}

/* Sun, 06 Nov 1994 08:49:37 GMT */
#define T1994 784111777.0

static double after(const char *value, double now, int *rc) {
    double s = -42;
    *rc = chorus_retry_after_parse(value, now, &s);
    return s;
}

static void test_retry_after_delta(void) {
    int rc;
    CHECK(after("120", 0, &rc) == 120 && rc == 0);
    CHECK(after("0", 5, &rc) == 0 && rc == 0);
    CHECK(after("  7\t", 5, &rc) == 7 && rc == 0);
    CHECK(after("007", 5, &rc) == 7 && rc == 0);
    CHECK(after("2147483647", 0, &rc) == 2147483647.0 && rc == 0);
    /* failures leave *seconds untouched */
    CHECK(after("2147483648", 0, &rc) == -42 && rc == -1);
    CHECK(after("99999999999999999999999999", 0, &rc) == -42 && rc == -1);
    CHECK(after("-5", 0, &rc) == -42 && rc == -1);
    CHECK(after("+5", 0, &rc) == -42 && rc == -1);
    CHECK(after("1.5", 0, &rc) == -42 && rc == -1);
    CHECK(after("120s", 0, &rc) == -42 && rc == -1);
    CHECK(after("12 0", 0, &rc) == -42 && rc == -1);
    CHECK(after("", 0, &rc) == -42 && rc == -1);
    CHECK(after("   ", 0, &rc) == -42 && rc == -1);
    CHECK(after("soon", 0, &rc) == -42 && rc == -1);
    CHECK_INT_EQ(chorus_retry_after_parse(NULL, 0, &(double){0}), -1);
}

static void test_retry_after_dates(void) {
    int rc;
    /* the three forms of RFC 9110, one minute ahead */
    CHECK(after("Sun, 06 Nov 1994 08:49:37 GMT", T1994 - 60, &rc) == 60 && rc == 0);
    CHECK(after("Sunday, 06-Nov-94 08:49:37 GMT", T1994 - 60, &rc) == 60 && rc == 0);
    CHECK(after("Sun Nov  6 08:49:37 1994", T1994 - 60, &rc) == 60 && rc == 0);
    CHECK(after("Sun Nov 16 08:49:37 1994", T1994, &rc) == 10 * 86400 && rc == 0);
    CHECK(after(" Sun, 06 Nov 1994 08:49:37 GMT ", T1994 - 1.5, &rc) == 1.5 && rc == 0);
    /* past dates give 0 */
    CHECK(after("Sun, 06 Nov 1994 08:49:37 GMT", T1994 + 3600, &rc) == 0 && rc == 0);
    CHECK(after("Thu, 01 Jan 1970 00:00:00 GMT", T1994, &rc) == 0 && rc == 0);
    /* leap years and the end of a long year */
    CHECK(after("Thu, 29 Feb 2024 00:00:00 GMT", 1709164800.0 - 5, &rc) == 5 && rc == 0);
    CHECK(after("Fri, 31 Dec 2100 23:59:59 GMT", 4133980799.0 - 1, &rc) == 1 && rc == 0);
    /* RFC 850 two-digit years: within 50 years ahead of now, else the
     * previous century (now = 2026-01-01) */
    CHECK(after("Tuesday, 01-Jan-30 00:00:00 GMT", 1767225600.0, &rc) ==
              1893456000.0 - 1767225600.0 &&
          rc == 0);
    CHECK(after("Tuesday, 01-Jan-80 00:00:00 GMT", 1767225600.0, &rc) == 0 && rc == 0);
    /* malformed dates */
    static const char *bad[] = {
        "Sun, 06 Nov 1994 08:49:37 UTC",  "Sun, 06 Nov 1994 08:49:37",
        "Sun, 6 Nov 1994 08:49:37 GMT",   "sun, 06 nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",    "Sun, 31 Nov 1994 08:49:37 GMT",
        "Thu, 29 Feb 1900 08:49:37 GMT",  "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",  "Sun, 06 Nov 1994 08:49:37 GMT junk",
        "Sun, 00 Nov 1994 08:49:37 GMT",  "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sun, 06-Nov-94 08:49:37 GMT",    "Sun Nov 6 08:49:37 1994",
        "Sun Nov  6 08:49:37 1994 GMT",   "Sun, 06 Foo 1994 08:49:37 GMT",
        "Funday, 06-Nov-94 08:49:37 GMT", "Sun, 06 Nov 1994 8:49:37 GMT",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        double r = after(bad[i], T1994, &rc);
        CHECK(rc == -1 && r == -42);
        if (rc != -1)
            fprintf(stderr, "    accepted \"%s\"\n", bad[i]);
    }
}

static void test_budget_ratio(void) {
    struct chorus_retry_budget b;
    int allowed = 0;
    CHECK_INT_EQ(chorus_retry_budget_init(&b, 0.2, 0, 10), 0);
    CHECK_INT_EQ(chorus_retry_budget_try_withdraw(&b, 0), 0); /* no calls, no floor */
    for (int i = 0; i < 100; i++)
        chorus_retry_budget_on_call(&b, 1 + i * 0.05);
    for (int i = 0; i < 50; i++)
        allowed += chorus_retry_budget_try_withdraw(&b, 6);
    CHECK_INT_EQ(allowed, 20);
    CHECK(fabs(chorus_retry_budget_balance(&b, 6)) < 1e-9);
    /* Five more calls earn one more retry. */
    for (int i = 0; i < 5; i++)
        chorus_retry_budget_on_call(&b, 7);
    CHECK_INT_EQ(chorus_retry_budget_try_withdraw(&b, 7), 1);
    CHECK_INT_EQ(chorus_retry_budget_try_withdraw(&b, 7), 0);
}

static void test_budget_floor(void) {
    struct chorus_retry_budget b;
    int allowed = 0;
    CHECK_INT_EQ(chorus_retry_budget_init(&b, 0.2, 1, 10), 0); /* 10 retries per window */
    for (int i = 0; i < 30; i++)
        allowed += chorus_retry_budget_try_withdraw(&b, 100 + i * 0.01);
    CHECK_INT_EQ(allowed, 10);
    /* Retries leave the window too: a window later the floor is back. */
    allowed = 0;
    for (int i = 0; i < 30; i++)
        allowed += chorus_retry_budget_try_withdraw(&b, 111);
    CHECK_INT_EQ(allowed, 10);
}

static void test_budget_expiry(void) {
    struct chorus_retry_budget b;
    int allowed = 0;
    CHECK_INT_EQ(chorus_retry_budget_init(&b, 0.5, 0, 10), 0);
    for (int i = 0; i < 10; i++)
        chorus_retry_budget_on_call(&b, 0.5);
    CHECK(fabs(chorus_retry_budget_balance(&b, 0.5) - 5) < 1e-9);
    CHECK(fabs(chorus_retry_budget_balance(&b, 9.9) - 5) < 1e-9); /* still in the window */
    CHECK(fabs(chorus_retry_budget_balance(&b, 10.5)) < 1e-9);    /* expired */
    CHECK_INT_EQ(chorus_retry_budget_try_withdraw(&b, 10.5), 0);
    /* Deposits spread over time expire slot by slot. */
    for (int s = 20; s < 30; s++)
        chorus_retry_budget_on_call(&b, s + 0.5);
    CHECK(fabs(chorus_retry_budget_balance(&b, 29.5) - 5) < 1e-9);
    CHECK(fabs(chorus_retry_budget_balance(&b, 34.5) - 2.5) < 1e-9);
    for (int i = 0; i < 10; i++)
        allowed += chorus_retry_budget_try_withdraw(&b, 34.5);
    CHECK_INT_EQ(allowed, 2);
    /* Over any window, retries stay within ratio * calls. */
    CHECK(chorus_retry_budget_balance(&b, 34.5) >= 0);
}

static void test_budget_args(void) {
    struct chorus_retry_budget b;
    CHECK_INT_EQ(chorus_retry_budget_init(&b, -0.1, 0, 10), -1);
    CHECK_INT_EQ(chorus_retry_budget_init(&b, 0.2, -1, 10), -1);
    CHECK_INT_EQ(chorus_retry_budget_init(&b, 0.2, 1, 0), -1);
    CHECK_INT_EQ(chorus_retry_budget_init(&b, NAN, 1, 10), -1);
    CHECK_INT_EQ(chorus_retry_budget_init(&b, 0.2, 1, INFINITY), -1);
    /* negative and huge times stay well defined */
    CHECK_INT_EQ(chorus_retry_budget_init(&b, 1, 0, 10), 0);
    chorus_retry_budget_on_call(&b, -12345.6);
    CHECK_INT_EQ(chorus_retry_budget_try_withdraw(&b, -12345.6), 1);
    chorus_retry_budget_on_call(&b, 1e300);
    CHECK_INT_EQ(chorus_retry_budget_try_withdraw(&b, 1e300), 1);
    CHECK_INT_EQ(chorus_retry_budget_try_withdraw(&b, 1e300), 0);
}

int main(void) {
    test_defaults_and_names();
    test_policy_check();
    test_exponential();
    test_full_jitter();
    test_decorrelated_jitter();
    test_equal_jitter();
    test_same_seed_same_delays();
    test_next();
    test_statuses();
    test_retry_after_delta();
    test_retry_after_dates();
    test_budget_ratio();
    test_budget_floor();
    test_budget_expiry();
    test_budget_args();
    return unit_summary();
}
