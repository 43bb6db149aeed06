/* random.h — random bytes from the kernel (getrandom), and UUIDs made of
 * them. Run ids are capabilities (GET /runs/ID of an open workflow): without
 * a random source the process aborts rather than make guessable ids. The
 * loop thread is the only caller. */
#ifndef CHORUS_RANDOM_H
#define CHORUS_RANDOM_H

#include <stddef.h>
#include <stdint.h>

/* Fills out with n random bytes (getrandom, drawn a pool at a time). */
void chorus_random_bytes(unsigned char *out, size_t n);

/* Writes a random (version 4) UUID and its NUL. */
void chorus_uuid(char out[37]);

/* Writes a time-ordered (version 7, RFC 9562) UUID and its NUL: unix_ms in
 * its first 48 bits, then 74 random bits. Run ids: the data folder keys
 * runs, their journals, timers and index rows by run id, and ids that
 * follow the clock land next to each other in LMDB's B-trees, so a group
 * commit writes a few pages at the right edge of each tree instead of one
 * page per run scattered through it (random ids: about twice the writer's
 * CPU, and it grows with the folder). 74 random bits keep them unguessable. */
void chorus_uuid7(char out[37], uint64_t unix_ms);

#endif
