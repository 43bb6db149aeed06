/* test_serve_lock.c — runtime/serve_lock.c in a fresh temporary folder:
 * the lock is taken and taken again once let go; while it is held another
 * holder is refused at once, or after waiting, with the message a user
 * sees; a folder that does not exist is refused with the path and errno.
 * A guest's lock (chorus run --data) says whether its process lives.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "serve_lock.h"
#include "unit.h"

int main(void) {
    alarm(60);
    char root[64], err[4400], want[4400];
    snprintf(root, sizeof root, "/tmp/chorus-test-serve-lock-XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }

    int fd = chorus_serve_lock(root, 0, err, sizeof err);
    CHECK(fd >= 0);
    char path[200];
    snprintf(path, sizeof path, "%s/serve.lock", root);
    struct stat sb;
    CHECK_INT_EQ(stat(path, &sb), 0);
    CHECK_INT_EQ(sb.st_mode & 0777, 0600);

    /* held: refused at once, and after waiting a little (flock locks are per
     * open file, so a second open in this process is another holder) */
    snprintf(want, sizeof want, "another chorus serve is using the data folder %s", root);
    err[0] = 0;
    CHECK_INT_EQ(chorus_serve_lock(root, 0, err, sizeof err), -1);
    CHECK_STR_EQ(err, want);
    err[0] = 0;
    CHECK_INT_EQ(chorus_serve_lock(root, 0.1, err, sizeof err), -1);
    CHECK_STR_EQ(err, want);

    /* let go: the next holder gets it */
    chorus_serve_unlock(fd);
    int fd2 = chorus_serve_lock(root, 0, err, sizeof err);
    CHECK(fd2 >= 0);
    chorus_serve_unlock(fd2);
    chorus_serve_unlock(-1); /* ignored */

    /* a folder that does not exist */
    char missing[128];
    snprintf(missing, sizeof missing, "%s/no/such", root);
    err[0] = 0;
    CHECK_INT_EQ(chorus_serve_lock(missing, 0, err, sizeof err), -1);
    snprintf(want, sizeof want, "cannot lock %s/serve.lock: No such file or directory", missing);
    CHECK_STR_EQ(err, want);

    /* a guest's lock: alive while held (another open file of this process
     * is another holder), gone with its file once let go; a name outside
     * the rule is refused */
    CHECK_INT_EQ(chorus_guest_alive(root, "g-1"), 0);
    int g = chorus_guest_lock(root, "g-1", err, sizeof err);
    CHECK(g >= 0);
    CHECK_INT_EQ(chorus_guest_alive(root, "g-1"), 1);
    char gpath[200];
    snprintf(gpath, sizeof gpath, "%s/guest-g-1.lock", root);
    chorus_guest_unlock(root, "g-1", g);
    CHECK_INT_EQ(access(gpath, F_OK), -1);
    CHECK_INT_EQ(chorus_guest_alive(root, "g-1"), 0);
    CHECK_INT_EQ(chorus_guest_alive(root, "../serve"), -1);
    CHECK_INT_EQ(chorus_guest_lock(root, "a/b", err, sizeof err), -1);
    /* a guest that died (its descriptor closed, its file left): not alive,
     * and its file is removed */
    g = chorus_guest_lock(root, "g-2", err, sizeof err);
    CHECK(g >= 0);
    close(g);
    CHECK_INT_EQ(chorus_guest_alive(root, "g-2"), 0);
    snprintf(gpath, sizeof gpath, "%s/guest-g-2.lock", root);
    CHECK_INT_EQ(access(gpath, F_OK), -1);

    CHECK_INT_EQ(unlink(path), 0);
    CHECK_INT_EQ(rmdir(root), 0);
    return unit_summary();
}
