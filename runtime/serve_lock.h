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

/* A guest's lock: DIR/guest-NAME.lock, held by a process that writes runs
 * to the folder without serve.lock (`chorus run --data`) for as long as it
 * lives, so a server starting meanwhile can tell its unfinished runs from
 * those of a process that died (and resumes only those). NAME is 1 to 64
 * of [0-9A-Za-z-]. chorus_guest_lock takes it (the file is created
 * locked: it never shows unheld while its guest lives) and
 * returns the descriptor that holds it (give it to chorus_guest_unlock,
 * which removes the file), or -1 with the reason in err. */
int chorus_guest_lock(const char *dir, const char *name, char *err, size_t errlen);
void chorus_guest_unlock(const char *dir, const char *name, int fd);

/* Whether the guest NAME still holds its lock: 1 (alive), 0 (no such
 * file, or nobody holds it: the file is removed then), -1 for a NAME
 * outside the rule above. */
int chorus_guest_alive(const char *dir, const char *name);

#endif
