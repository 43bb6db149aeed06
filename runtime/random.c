/* random.c — random bytes and UUIDs for run ids, trace ids and keys (see
 * random.h). */
#include "random.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* Random bytes for ids, drawn from getrandom a pool at a time: a served
 * request takes a few ids, and a syscall for each was a tenth of its
 * syscalls. The loop thread is the only caller. Without getrandom the
 * process aborts: ids made from the clock could be guessed. */
void chorus_random_bytes(unsigned char *out, size_t n) {
    static unsigned char pool[256]; /* getrandom never returns short for 256 bytes */
    static size_t left;
    if (left < n) {
        size_t got = 0;
        while (got < sizeof pool) {
            ssize_t r = getrandom(pool + got, sizeof pool - got, 0);
            if (r > 0)
                got += (size_t)r;
            else if (errno != EINTR)
                break;
        }
        if (got < sizeof pool) {
            /* Run ids are capabilities (GET /runs/ID of an open workflow):
             * never make them from a guessable seed. */
            fprintf(stderr,
                    "chorus: no source of random numbers (getrandom: %s); refusing to "
                    "make guessable run ids\n",
                    strerror(errno));
            abort();
        }
        left = sizeof pool;
    }
    memcpy(out, pool + sizeof pool - left, n);
    memset(pool + sizeof pool - left, 0, n); /* used bytes do not linger in memory */
    left -= n;
}

static void uuid_text(char out[37], unsigned char b[16]) {
    static const char hex[] = "0123456789abcdef";
    char *p = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = hex[b[i] >> 4];
        *p++ = hex[b[i] & 15];
    }
    *p = '\0';
}

void chorus_uuid(char out[37]) {
    unsigned char b[16];
    chorus_random_bytes(b, sizeof b);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    uuid_text(out, b);
}

void chorus_uuid7(char out[37], uint64_t unix_ms) {
    unsigned char b[16];
    chorus_random_bytes(b + 6, 10);
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)(unix_ms >> (8 * (5 - i)));
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x70);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    uuid_text(out, b);
}
