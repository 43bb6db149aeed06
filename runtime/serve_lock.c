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
