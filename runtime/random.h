/* random.h — random bytes from the kernel (getrandom), and UUIDs made of
 * them. Run ids are capabilities (GET /runs/ID of an open workflow): without
 * a random source the process aborts rather than make guessable ids. The
 * loop thread is the only caller. */
#ifndef CHORUS_RANDOM_H
#define CHORUS_RANDOM_H

#include <stddef.h>

/* Fills out with n random bytes (getrandom, drawn a pool at a time). */
void chorus_random_bytes(unsigned char *out, size_t n);

/* Writes a random (version 4) UUID and its NUL. */
void chorus_uuid(char out[37]);

#endif
