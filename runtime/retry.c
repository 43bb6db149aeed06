/* retry.c — backoff, retryable statuses, Retry-After and the retry budget
 * (see retry.h).
 *
 * Invariant: the budget's slots hold counts only for their own epoch; a slot
 * whose epoch left the window counts as empty and is zeroed on reuse.
 */
#include "retry.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- policy ---------------------------------------------------------- */

struct chorus_retry_policy chorus_retry_policy_default(void) {
    struct chorus_retry_policy p = {3, CHORUS_BACKOFF_EXPONENTIAL, 0.1, 10, 0};
    return p;
}

static int fail(char *err, size_t errlen, const char *msg) {
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
    return -1;
}

static const char *const backoff_names[] = {"exponential", "full_jitter", "decorrelated_jitter",
                                            "equal_jitter"};
#define NBACKOFF (unsigned)(sizeof backoff_names / sizeof backoff_names[0])

int chorus_retry_policy_check(const struct chorus_retry_policy *p, char *err, size_t errlen) {
    if (p->attempts < 1)
        return fail(err, errlen, "attempts must be >= 1");
    if ((unsigned)p->backoff >= NBACKOFF)
        return fail(err, errlen,
                    "backoff must be \"exponential\", \"full_jitter\", \"decorrelated_jitter\" or "
                    "\"equal_jitter\"");
    if (!(p->base >= 0) || !isfinite(p->base))
        return fail(err, errlen, "base must be a finite number of seconds >= 0");
    if (!(p->cap >= p->base) || !isfinite(p->cap))
        return fail(err, errlen, "cap must be a finite number of seconds >= base");
    if (!(p->max_elapsed >= 0))
        return fail(err, errlen, "max_elapsed must be >= 0 seconds (0: no limit)");
    return 0;
}

int chorus_backoff_parse(const char *name, enum chorus_backoff *out) {
    for (unsigned i = 0; name && i < NBACKOFF; i++) {
        if (strcmp(name, backoff_names[i]) == 0) {
            *out = (enum chorus_backoff)i;
            return 0;
        }
    }
    return -1;
}

const char *chorus_backoff_name(enum chorus_backoff b) {
    return (unsigned)b < NBACKOFF ? backoff_names[b] : "unknown";
}

/* ---- backoff ----------------------------------------------------------- */

/* splitmix64: any seed, 0 included, gives a full-period stream. */
static uint64_t next_u64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [lo, hi). */
static double uniform(uint64_t *rng, double lo, double hi) {
    double u = (double)(next_u64(rng) >> 11) * 0x1.0p-53;
    return lo + (hi - lo) * u;
}

static double exponential(const struct chorus_retry_policy *p, int retry) {
    /* ldexp never turns 0 * 2^n into NaN; 2^1000 already exceeds any cap. */
    int n = retry - 1 > 1000 ? 1000 : retry - 1;
    return fmin(p->cap, ldexp(p->base, n));
}

double chorus_retry_delay(const struct chorus_retry_policy *p, int retry, double prev_delay,
                          uint64_t *rng) {
    if (retry < 1)
        retry = 1;
    switch (p->backoff) {
    case CHORUS_BACKOFF_FULL_JITTER:
        return uniform(rng, 0, exponential(p, retry));
    case CHORUS_BACKOFF_EQUAL_JITTER: {
        double wait = exponential(p, retry);
        return uniform(rng, wait / 2, wait);
    }
    case CHORUS_BACKOFF_DECORRELATED_JITTER:
        if (retry == 1 || !(prev_delay >= p->base))
            prev_delay = p->base;
        return fmin(p->cap, uniform(rng, p->base, prev_delay * 3));
    case CHORUS_BACKOFF_EXPONENTIAL:
    default:
        return exponential(p, retry);
    }
}

double chorus_retry_next(const struct chorus_retry_policy *p, int retry, double elapsed,
                         double retry_after, double *prev_delay, uint64_t *rng) {
    double wait;
    if (retry >= p->attempts)
        return -1;
    *prev_delay = chorus_retry_delay(p, retry, *prev_delay, rng);
    /* a Retry-After is honoured up to cap: "Retry-After: 86400" must not
     * park a run (or its caller) for a day */
    wait = fmax(*prev_delay, fmin(retry_after, p->cap));
    if (p->max_elapsed > 0 && elapsed + wait > p->max_elapsed)
        return -1;
    return wait;
}

int chorus_retry_status_retryable(long status) {
    return status == 408 || status == 425 || status == 429 || (status >= 500 && status <= 599);
}

/* ---- Retry-After ------------------------------------------------------- */

/* A cursor over the trimmed header value. */
struct scan {
    const char *p, *end;
};

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* Consumes the exact text lit. */
static int scan_lit(struct scan *s, const char *lit) {
    size_t n = strlen(lit);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, lit, n) != 0)
        return 0;
    s->p += n;
    return 1;
}

/* Consumes exactly n digits into *out. */
static int scan_digits(struct scan *s, int n, int *out) {
    int v = 0;
    if (s->end - s->p < n)
        return 0;
    for (int i = 0; i < n; i++) {
        if (!is_digit(s->p[i]))
            return 0;
        v = v * 10 + (s->p[i] - '0');
    }
    s->p += n;
    *out = v;
    return 1;
}

/* Consumes one of names[0..n) and stores its index. */
static int scan_name(struct scan *s, const char *const *names, int n, int *out) {
    for (int i = 0; i < n; i++) {
        if (scan_lit(s, names[i])) {
            *out = i;
            return 1;
        }
    }
    return 0;
}

static const char *const months[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
static const char *const days[7] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
/* Longest first is not needed: no full name is a prefix of another. */
static const char *const long_days[7] = {"Monday", "Tuesday",  "Wednesday", "Thursday",
                                         "Friday", "Saturday", "Sunday"};

struct date {
    int year, month /* 1-12 */, day, hour, min, sec;
};

/* "HH:MM:SS" */
static int scan_time(struct scan *s, struct date *d) {
    return scan_digits(s, 2, &d->hour) && scan_lit(s, ":") && scan_digits(s, 2, &d->min) &&
           scan_lit(s, ":") && scan_digits(s, 2, &d->sec);
}

static int scan_month(struct scan *s, struct date *d) {
    if (!scan_name(s, months, 12, &d->month))
        return 0;
    d->month++;
    return 1;
}

/* "Sun, 06 Nov 1994 08:49:37 GMT" */
static int scan_imf(struct scan s, struct date *d) {
    int wd;
    return scan_name(&s, days, 7, &wd) && scan_lit(&s, ", ") && scan_digits(&s, 2, &d->day) &&
           scan_lit(&s, " ") && scan_month(&s, d) && scan_lit(&s, " ") &&
           scan_digits(&s, 4, &d->year) && scan_lit(&s, " ") && scan_time(&s, d) &&
           scan_lit(&s, " GMT") && s.p == s.end;
}

/* "Sunday, 06-Nov-94 08:49:37 GMT"; the year is two digits, resolved later. */
static int scan_rfc850(struct scan s, struct date *d) {
    int wd;
    return scan_name(&s, long_days, 7, &wd) && scan_lit(&s, ", ") && scan_digits(&s, 2, &d->day) &&
           scan_lit(&s, "-") && scan_month(&s, d) && scan_lit(&s, "-") &&
           scan_digits(&s, 2, &d->year) && scan_lit(&s, " ") && scan_time(&s, d) &&
           scan_lit(&s, " GMT") && s.p == s.end;
}

/* "Sun Nov  6 08:49:37 1994"; the day is two digits or a space and one. */
static int scan_asctime(struct scan s, struct date *d) {
    int wd;
    if (!(scan_name(&s, days, 7, &wd) && scan_lit(&s, " ") && scan_month(&s, d) &&
          scan_lit(&s, " ")))
        return 0;
    if (!(scan_lit(&s, " ") ? scan_digits(&s, 1, &d->day) : scan_digits(&s, 2, &d->day)))
        return 0;
    return scan_lit(&s, " ") && scan_time(&s, d) && scan_lit(&s, " ") &&
           scan_digits(&s, 4, &d->year) && s.p == s.end;
}

static int leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

static int date_valid(const struct date *d) {
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int dim = mdays[d->month - 1] + (d->month == 2 && leap(d->year));
    /* sec 60: a leap second, which Unix time folds into the next one. */
    return d->day >= 1 && d->day <= dim && d->hour <= 23 && d->min <= 59 && d->sec <= 60;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil), so no timegm, TZ or locale is involved. */
static int64_t days_from_civil(int64_t y, int m, int d) {
    int64_t era, yoe, doy, doe;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* The Gregorian year of a Unix time (the inverse of days_from_civil). */
static int64_t year_of(double epoch) {
    int64_t z = (int64_t)floor(epoch / 86400) + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    return yoe + era * 400 + (mp >= 10);
}

/* RFC 9110 §5.6.7: a two-digit year that looks more than 50 years in the
 * future is the most recent past year with those digits. */
static int full_year(int yy, double now_epoch) {
    int64_t now_year = year_of(now_epoch);
    int64_t y = now_year - now_year % 100 + yy;
    if (y > now_year + 50)
        y -= 100;
    return (int)y;
}

static int parse_date(struct scan s, double now_epoch, double *epoch) {
    struct date d;
    if (scan_rfc850(s, &d))
        d.year = full_year(d.year, now_epoch);
    else if (!scan_imf(s, &d) && !scan_asctime(s, &d))
        return -1;
    if (!date_valid(&d))
        return -1;
    *epoch = (double)days_from_civil(d.year, d.month, d.day) * 86400 + d.hour * 3600 + d.min * 60 +
             d.sec;
    return 0;
}

/* 1*DIGIT up to 2^31-1; anything else (sign, dot, junk) fails. */
static int parse_delta(struct scan s, double *out) {
    long long v = 0;
    if (s.p == s.end)
        return -1;
    for (; s.p < s.end; s.p++) {
        if (!is_digit(*s.p))
            return -1;
        v = v * 10 + (*s.p - '0');
        if (v > 2147483647LL)
            return -1;
    }
    *out = (double)v;
    return 0;
}

static int is_ows(char c) { return c == ' ' || c == '\t'; }

int chorus_retry_after_parse(const char *value, double now_epoch, double *seconds) {
    struct scan s;
    double v;
    if (!value)
        return -1;
    s.p = value;
    s.end = value + strlen(value);
    while (s.p < s.end && is_ows(*s.p))
        s.p++;
    while (s.end > s.p && is_ows(s.end[-1]))
        s.end--;
    if (s.p < s.end && is_digit(*s.p)) {
        if (parse_delta(s, &v) != 0)
            return -1;
        *seconds = v;
        return 0;
    }
    if (parse_date(s, now_epoch, &v) != 0)
        return -1;
    *seconds = v > now_epoch ? v - now_epoch : 0;
    return 0;
}

/* ---- budget ------------------------------------------------------------ */

/* The slot epoch of now, clamped so that epoch - SLOTS never overflows and
 * a huge or NaN now cannot reach an undefined double-to-integer cast. */
static int64_t epoch_of(const struct chorus_retry_budget *b, double now) {
    double e = floor(now / b->slot_len);
    if (!(e > -4e18))
        return (int64_t)-4e18;
    if (e > 4e18)
        return (int64_t)4e18;
    return (int64_t)e;
}

static int live(int64_t slot_epoch, int64_t now_epoch) {
    return slot_epoch > now_epoch - CHORUS_RETRY_BUDGET_SLOTS && slot_epoch <= now_epoch;
}

/* The slot of now, zeroed if it last held an older epoch. */
static struct chorus_retry_budget_slot *current_slot(struct chorus_retry_budget *b, double now) {
    int64_t e = epoch_of(b, now);
    int64_t i = e % CHORUS_RETRY_BUDGET_SLOTS;
    struct chorus_retry_budget_slot *s = &b->slot[i < 0 ? i + CHORUS_RETRY_BUDGET_SLOTS : i];
    if (s->epoch != e) {
        s->epoch = e;
        s->calls = s->retries = 0;
    }
    return s;
}

int chorus_retry_budget_init(struct chorus_retry_budget *b, double ratio, double min_per_second,
                             double window) {
    if (!(ratio >= 0) || !isfinite(ratio) || !(min_per_second >= 0) || !isfinite(min_per_second) ||
        !(window > 0) || !isfinite(window))
        return -1;
    b->ratio = ratio;
    b->reserve = min_per_second * window;
    b->slot_len = window / CHORUS_RETRY_BUDGET_SLOTS;
    for (int i = 0; i < CHORUS_RETRY_BUDGET_SLOTS; i++) {
        b->slot[i].epoch = INT64_MIN; /* never live */
        b->slot[i].calls = b->slot[i].retries = 0;
    }
    return 0;
}

void chorus_retry_budget_on_call(struct chorus_retry_budget *b, double now) {
    current_slot(b, now)->calls++;
}

double chorus_retry_budget_balance(const struct chorus_retry_budget *b, double now) {
    int64_t e = epoch_of(b, now);
    long calls = 0, retries = 0;
    for (int i = 0; i < CHORUS_RETRY_BUDGET_SLOTS; i++) {
        if (live(b->slot[i].epoch, e)) {
            calls += b->slot[i].calls;
            retries += b->slot[i].retries;
        }
    }
    return b->ratio * (double)calls + b->reserve - (double)retries;
}

int chorus_retry_budget_try_withdraw(struct chorus_retry_budget *b, double now) {
    /* The epsilon keeps 0.2 * 100 calls at 20 retries despite rounding. */
    if (chorus_retry_budget_balance(b, now) < 1 - 1e-9)
        return 0;
    current_slot(b, now)->retries++;
    return 1;
}
