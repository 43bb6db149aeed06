/* serve_lock.c — serve.lock (contract in serve_lock.h). */
#include "serve_lock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

int chorus_serve_lock(const char *dir, double wait_seconds, char *err, size_t errlen) {
    char path[4200];
    snprintf(path, sizeof path, "%s/serve.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    for (int tries = (int)(wait_seconds * 20); fd >= 0 && tries > 0; tries--) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0)
            return fd;
        nanosleep(&(struct timespec){.tv_sec = 0, .tv_nsec = 50000000}, NULL);
    }
    if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0)
        return fd;
    int e = errno;
    if (fd >= 0)
        close(fd);
    if (e == EWOULDBLOCK)
        snprintf(err, errlen, "another chorus serve is using the data folder %s", dir);
    else
        snprintf(err, errlen, "cannot lock %s: %s", path, strerror(e));
    return -1;
}

void chorus_serve_unlock(int fd) {
    if (fd >= 0)
        close(fd);
}

/* DIR/guest-NAME.lock into path; -1 for a NAME outside the rule. */
static int guest_path(char *path, size_t len, const char *dir, const char *name) {
    size_t n = strlen(name);
    if (n == 0 || n > 64)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              c == '-'))
            return -1;
    }
    snprintf(path, len, "%s/guest-%s.lock", dir, name);
    return 0;
}

int chorus_guest_lock(const char *dir, const char *name, char *err, size_t errlen) {
    char path[4200], tmp[4200];
    if (guest_path(path, sizeof path, dir, name) < 0) {
        snprintf(err, errlen, "a guest's name is 1 to 64 letters, digits or '-'");
        return -1;
    }
    /* locked under another name, then renamed: a server never sees the
     * file unheld while its guest lives (it would take the guest for dead) */
    snprintf(tmp, sizeof tmp, "%s/guest-%s.tmp", dir, name);
    int fd = open(tmp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0 && rename(tmp, path) == 0)
        return fd;
    int e = errno;
    if (fd >= 0) {
        unlink(tmp);
        close(fd);
    }
    snprintf(err, errlen, "cannot lock %s: %s", path, strerror(e));
    return -1;
}

void chorus_guest_unlock(const char *dir, const char *name, int fd) {
    char path[4200];
    if (fd < 0)
        return;
    if (guest_path(path, sizeof path, dir, name) == 0)
        unlink(path); /* while still held: nobody takes a file about to go */
    close(fd);
}

int chorus_guest_alive(const char *dir, const char *name) {
    char path[4200];
    if (guest_path(path, sizeof path, dir, name) < 0)
        return -1;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return 0;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        close(fd);
        return 1;
    }
    unlink(path); /* its process died: nobody will take it again */
    close(fd);
    return 0;
}
