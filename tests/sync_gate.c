/* sync_gate.c — an LD_PRELOAD shim for the crash specs: it holds the
 * process's disk syncs at a gate the spec opens and closes, so a SIGKILL
 * can land at a known point, between a write being handed to the store and
 * its commit being on disk, however fast the disk is.
 *
 * While the file named by CHORUS_SYNC_GATE exists, fdatasync, fsync and
 * msync wait (polling every 10 ms) before they run; the first sync that
 * waits creates CHORUS_SYNC_GATE.held, so the spec knows a commit is held.
 * Without the variable the calls go straight through. Test-only: built as
 * build/sync-gate.so, never linked into chorus. */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void gate(void) {
    const char *path = getenv("CHORUS_SYNC_GATE");
    if (!path || access(path, F_OK) != 0)
        return;
    char held[4096];
    if (snprintf(held, sizeof held, "%s.held", path) < (int)sizeof held) {
        int fd = open(held, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0)
            close(fd);
    }
    struct timespec tick = {0, 10 * 1000 * 1000};
    while (access(path, F_OK) == 0)
        nanosleep(&tick, NULL);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "fdatasync");
    gate();
    return real(fd);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "fsync");
    gate();
    return real(fd);
}

int msync(void *addr, size_t len, int flags) {
    static int (*real)(void *, size_t, int);
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "msync");
    gate();
    return real(addr, len, flags);
}
