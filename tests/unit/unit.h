/* unit.h — the tiny harness of the C unit tests.
 *
 * CHECK(cond), CHECK_STR_EQ(a, b) and CHECK_INT_EQ(a, b) count passes and
 * failures and print file:line and the expression of each failure. End
 * main with `return unit_summary();` (or UNIT_MAIN_END();): it prints
 * "N passed, N failed" on its own line and returns 1 when anything failed.
 */
#ifndef CHORUS_UNIT_H
#define CHORUS_UNIT_H

#include <stdio.h>
#include <string.h>

static int unit_passed, unit_failed;

static inline void unit_record(int ok, const char *file, int line, const char *expr) {
    if (ok) {
        unit_passed++;
        return;
    }
    unit_failed++;
    fprintf(stderr, "%s:%d: FAILED %s\n", file, line, expr);
}

static inline void unit_str_eq(const char *a, const char *b, const char *file, int line,
                               const char *expr) {
    int ok = a != NULL && b != NULL ? strcmp(a, b) == 0 : a == b;
    unit_record(ok, file, line, expr);
    if (!ok)
        fprintf(stderr, "    got \"%s\"\n    expected \"%s\"\n", a ? a : "(null)",
                b ? b : "(null)");
}

static inline void unit_int_eq(long long a, long long b, const char *file, int line,
                               const char *expr) {
    unit_record(a == b, file, line, expr);
    if (a != b)
        fprintf(stderr, "    got %lld\n    expected %lld\n", a, b);
}

#define CHECK(cond) unit_record(!!(cond), __FILE__, __LINE__, #cond)
#define CHECK_STR_EQ(a, b) unit_str_eq((a), (b), __FILE__, __LINE__, #a " == " #b)
#define CHECK_INT_EQ(a, b)                                                                         \
    unit_int_eq((long long)(a), (long long)(b), __FILE__, __LINE__, #a " == " #b)

static inline int unit_summary(void) {
    printf("%d passed, %d failed\n", unit_passed, unit_failed);
    fflush(stdout);
    return unit_failed != 0;
}

#define UNIT_MAIN_END() return unit_summary()

#endif
