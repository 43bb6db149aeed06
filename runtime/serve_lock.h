/* serve_lock.h — serve.lock: one `chorus serve` per data folder.
 *
 * The server that holds the lock runs the outbox relay and the recovery of
 * the folder's runs; a second server on the same folder is refused rather
 * than let two relays deliver the same entries. The lock is flock(2) on
 * DIR/serve.lock, so the kernel lets go of it when the process dies,
 * however it dies.
 */
#ifndef CHORUS_SERVE_LOCK_H
#define CHORUS_SERVE_LOCK_H

#include <stddef.h>

/* Takes DIR/serve.lock (creating the file), trying for up to wait_seconds
 * (a server killed a moment ago may still be exiting). Returns the file
 * descriptor that holds it (give it to chorus_serve_unlock), or -1 with the
 * reason in err: "another chorus serve is using the data folder DIR" when
 * another process (or another descriptor of this one) holds it, else
 * "cannot lock PATH: ERRNO TEXT". */
int chorus_serve_lock(const char *dir, double wait_seconds, char *err, size_t errlen);

/* Lets go of the lock held by fd (a value chorus_serve_lock returned);
 * -1 is ignored. */
void chorus_serve_unlock(int fd);

#endif
