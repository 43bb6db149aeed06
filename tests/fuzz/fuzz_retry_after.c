/* fuzz_retry_after.c — libFuzzer target for the header and name parsers of
 * runtime/retry.h and runtime/store.h.
 *
 * chorus_retry_after_parse reads the Retry-After header of every upstream
 * response (http.lua's retries, the outbox's backoff), so its input is
 * whatever a remote server sends: a hand-written scanner over three date
 * formats and delta-seconds is worth fuzzing for over-reads and for the
 * promises retry.h makes. For each input, as a NUL-terminated string, at a
 * few fixed `now` values and one taken from the input (within years
 * 1970-9999), it checks:
 *   - the result is 0 or -1; on 0, *seconds is finite and >= 0; on -1,
 *     *seconds is untouched;
 *   - spaces and tabs around the value change nothing;
 *   - delta-seconds agree with an independent reading (digits only, at
 *     most 2^31-1), and a value starting with a digit is never a date;
 *   - an accepted date is one of the three RFC 9110 forms (glibc strptime
 *     reads it in the C locale) and gives max(0, timegm(date) - now), the
 *     RFC 850 two-digit year resolved as RFC 9110 §5.6.7 says.
 * The same bytes also go through the other parsers of untrusted names in
 * runtime/ headers: chorus_backoff_parse (config files) and
 * chorus_store_db_index, checked against their inverse functions, and
 * chorus_retry_status_retryable on a status read from the first bytes.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "retry.h"
#include "store.h"

#define TARGET "fuzz_retry_after"
#define SENTINEL -12345.5
#define MAX_EPOCH 253402300799.0 /* 9999-12-31 23:59:59 */

static void fail(const char *why, const char *value, double now) {
    fprintf(stderr, "\n%s: %s (value \"%s\", now %.0f)\n", TARGET, why, value, now);
    fflush(stderr);
    abort();
}

static int is_ows(char c) { return c == ' ' || c == '\t'; }

/* value without surrounding spaces and tabs, into out (size >= strlen + 1). */
static void trim(const char *value, char *out) {
    const char *p = value, *e = value + strlen(value);
    while (p < e && is_ows(*p))
        p++;
    while (e > p && is_ows(e[-1]))
        e--;
    memcpy(out, p, (size_t)(e - p));
    out[e - p] = '\0';
}

/* Independent delta-seconds: 1 with *v for 1*DIGIT <= 2^31-1, else 0. */
static int ref_delta(const char *t, double *v) {
    long long n = 0;
    if (*t == '\0')
        return 0;
    for (; *t; t++) {
        if (*t < '0' || *t > '9')
            return 0;
        n = n * 10 + (*t - '0');
        if (n > 2147483647LL)
            return 0;
    }
    *v = (double)n;
    return 1;
}

/* The UTC year of a Unix time within our range. */
static int year_of(double epoch) {
    time_t t = (time_t)epoch;
    struct tm tm;
    gmtime_r(&t, &tm);
    return tm.tm_year + 1900;
}

/* Reads an accepted date with strptime; 1 with *epoch when t is exactly
 * one of the three forms. */
static int ref_date(const char *t, double now, double *epoch) {
    struct tm tm;
    const char *end;
    memset(&tm, 0, sizeof tm);
    end = strptime(t, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end != NULL && *end == '\0') {
        *epoch = (double)timegm(&tm);
        return 1;
    }
    memset(&tm, 0, sizeof tm);
    end = strptime(t, "%A, %d-%b-%y %H:%M:%S GMT", &tm);
    if (end != NULL && *end == '\0') {
        int now_year = year_of(now), y = now_year - now_year % 100 + tm.tm_year % 100;
        if (y > now_year + 50)
            y -= 100;
        tm.tm_year = y - 1900;
        *epoch = (double)timegm(&tm);
        return 1;
    }
    memset(&tm, 0, sizeof tm);
    end = strptime(t, "%a %b %e %H:%M:%S %Y", &tm);
    if (end != NULL && *end == '\0') {
        *epoch = (double)timegm(&tm);
        return 1;
    }
    return 0;
}

static void check_retry_after(const char *value, const char *padded, const char *trimmed,
                              double now) {
    double s = SENTINEL, s2 = SENTINEL, want;
    int rc = chorus_retry_after_parse(value, now, &s);
    int rc2 = chorus_retry_after_parse(padded, now, &s2);
    if (rc != 0 && rc != -1)
        fail("result is neither 0 nor -1", value, now);
    if (rc == -1 && s != SENTINEL)
        fail("*seconds written on failure", value, now);
    if (rc == 0 && !(isfinite(s) && s >= 0))
        fail("*seconds negative, NaN or infinite", value, now);
    if (rc2 != rc || memcmp(&s, &s2, sizeof s) != 0)
        fail("surrounding spaces and tabs changed the result", value, now);
    if (trimmed[0] >= '0' && trimmed[0] <= '9') {
        int ok = ref_delta(trimmed, &want);
        if (ok != (rc == 0) || (ok && s != want))
            fail("delta-seconds read wrong", value, now);
        return;
    }
    if (rc != 0)
        return;
    if (!ref_date(trimmed, now, &want))
        fail("accepted a date that is none of the three forms", value, now);
    want = want > now ? want - now : 0;
    if (s != want)
        fail("date gives the wrong number of seconds", value, now);
}

static void check_names(const char *value) {
    static const char *const backoffs[] = {"exponential", "full_jitter", "decorrelated_jitter",
                                           "equal_jitter"};
    enum chorus_backoff b = (enum chorus_backoff)99;
    int rc = chorus_backoff_parse(value, &b), known = 0, db;
    for (size_t i = 0; i < sizeof backoffs / sizeof backoffs[0]; i++)
        known |= strcmp(value, backoffs[i]) == 0;
    if (rc != (known ? 0 : -1))
        fail("chorus_backoff_parse accepted a wrong name or refused a right one", value, 0);
    if (rc == 0 && strcmp(chorus_backoff_name(b), value) != 0)
        fail("chorus_backoff_name(parse(x)) != x", value, 0);
    if (rc != 0 && b != (enum chorus_backoff)99)
        fail("chorus_backoff_parse wrote *out on failure", value, 0);
    db = chorus_store_db_index(value);
    if (db < -1 || db >= STORE_NDB)
        fail("chorus_store_db_index out of range", value, 0);
    if (db >= 0 && strcmp(chorus_store_db_name(db), value) != 0)
        fail("chorus_store_db_name(db_index(x)) != x", value, 0);
    if (db < 0)
        for (int i = 0; i < STORE_NDB; i++)
            if (strcmp(chorus_store_db_name(i), value) == 0)
                fail("chorus_store_db_index refused a database name", value, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const double nows[] = {1445412480.0 /* 2015-10-21 07:28:00 */, 1767225600.0, 0.0,
                                  4102444800.0 /* 2100 */};
    char *value = malloc(size + 1), *padded = malloc(size + 5), *trimmed = malloc(size + 1);
    uint64_t bits = 0;
    long status = 0;
    if (value == NULL || padded == NULL || trimmed == NULL)
        goto out;
    memcpy(value, data, size);
    value[size] = '\0';
    snprintf(padded, size + 5, " \t%s\t ", value);
    trim(value, trimmed);
    for (size_t i = 0; i < sizeof nows / sizeof nows[0]; i++)
        check_retry_after(value, padded, trimmed, nows[i]);
    for (size_t i = 0; i < size && i < 8; i++)
        bits = bits << 8 | data[i];
    check_retry_after(value, padded, trimmed,
                      floor((double)(bits >> 11) / 9007199254740992.0 * MAX_EPOCH));
    check_names(value);
    for (size_t i = 0; i < size && i < sizeof status; i++)
        status = (long)((unsigned long)status << 8 | data[i]);
    if (chorus_retry_status_retryable(status) !=
        (status == 408 || status == 425 || status == 429 || (status >= 500 && status <= 599)))
        fail("chorus_retry_status_retryable disagrees with retry.h", value, 0);
out:
    free(value);
    free(padded);
    free(trimmed);
    return 0;
}
