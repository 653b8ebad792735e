/*
 * A fault injector for the end-to-end tests, loaded into the real `daena` binary with
 * LD_PRELOAD. It sits between Daena and the C library, so the service runs unchanged and
 * meets the faults the way it would meet them from the kernel.
 *
 * The file named by LIBFAULT_CTL says which fault is on, read on every intercepted call
 * (a missing or empty file: none):
 *   erofs          writes to regular files fail with EROFS (a disk remounted read-only)
 *   eio-sync       fsync and fdatasync fail with EIO (a failing disk)
 *   clock <secs>   the wall clock (CLOCK_REALTIME) is moved by <secs>, which may be negative
 * Standard output and standard error (the server log) are never touched.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static int ctl(char *buf, size_t len) {
    const char *path = getenv("LIBFAULT_CTL");
    if (!path) return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    return 1;
}

static int fault(const char *name) {
    char buf[64];
    return ctl(buf, sizeof buf) && strncmp(buf, name, strlen(name)) == 0;
}

static int regular_file(int fd) {
    struct stat st;
    return fd > 2 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
}

#define NEXT(name) static __typeof__(name) *next; if (!next) next = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

static int refuse_write(int fd) {
    if (fault("erofs") && regular_file(fd)) {
        errno = EROFS;
        return 1;
    }
    return 0;
}

ssize_t write(int fd, const void *buf, size_t count) {
    NEXT(write);
    if (refuse_write(fd)) return -1;
    return next(fd, buf, count);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    NEXT(pwrite64);
    if (refuse_write(fd)) return -1;
    return next(fd, buf, count, offset);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    NEXT(pwrite);
    if (refuse_write(fd)) return -1;
    return next(fd, buf, count, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    NEXT(writev);
    if (refuse_write(fd)) return -1;
    return next(fd, iov, iovcnt);
}

int fsync(int fd) {
    NEXT(fsync);
    if (fault("eio-sync") || (fault("erofs") && regular_file(fd))) {
        errno = fault("eio-sync") ? EIO : EROFS;
        return -1;
    }
    return next(fd);
}

int fdatasync(int fd) {
    NEXT(fdatasync);
    if (fault("eio-sync") || (fault("erofs") && regular_file(fd))) {
        errno = fault("eio-sync") ? EIO : EROFS;
        return -1;
    }
    return next(fd);
}

int clock_gettime(clockid_t id, struct timespec *tp) {
    NEXT(clock_gettime);
    int r = next(id, tp);
    char buf[64];
    if (r == 0 && id == CLOCK_REALTIME && ctl(buf, sizeof buf) && strncmp(buf, "clock ", 6) == 0) {
        tp->tv_sec += strtol(buf + 6, NULL, 10);
    }
    return r;
}
