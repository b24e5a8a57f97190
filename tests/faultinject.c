// Fault injection for the tests: an LD_PRELOAD library that makes reads of one file fail, or
// large aligned allocations fail, after a number of successful calls. Built by the test run
// (tests/test_faults.py); Linux only.
//
//   HOBBIT_FAULT_PATH   reads of file descriptors whose path contains this string are counted
//   HOBBIT_FAULT_FUNCS  which reads: "pread" (pread, pread64: the expert loads; the default),
//                       "read", or "pread,read"
//   HOBBIT_FAULT_MODE   eio    the read fails with EIO
//                       eof    the read returns 0 (the file ends early: a short read)
//                       short  the read returns fewer bytes than it read (one less; with O_DIRECT,
//                              half rounded down to 4 KiB, as a device would)
//                       eintr  the read fails with EINTR (persistently, while failing)
//                       alloc  posix_memalign of HOBBIT_FAULT_MIN_BYTES..HOBBIT_FAULT_MAX_BYTES bytes
//                              fails with ENOMEM
//   HOBBIT_FAULT_AFTER  calls that succeed before the first failure (default 0)
//   HOBBIT_FAULT_COUNT  calls that fail, then everything succeeds again (default: all)
//
// It prints one line per injected fault to stderr only if HOBBIT_FAULT_VERBOSE is set; the
// number of faults injected is written to the file HOBBIT_FAULT_REPORT at exit, if given.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static long g_calls    = 0;
static long g_injected = 0;

static long env_long(const char * name, long def) {
    const char * v = getenv(name);
    return v && *v ? atol(v) : def;
}

static const char * mode(void) {
    const char * m = getenv("HOBBIT_FAULT_MODE");
    return m ? m : "";
}

static void report(void) {
    const char * path = getenv("HOBBIT_FAULT_REPORT");
    if (path) {
        FILE * f = fopen(path, "w");
        if (f) {
            fprintf(f, "%ld %ld\n", g_calls, g_injected);
            fclose(f);
        }
    }
}

__attribute__((constructor)) static void init(void) {
    atexit(report);
}

// is this call one to fail? counts the calls that are candidates
static int should_fail(void) {
    const long after = env_long("HOBBIT_FAULT_AFTER", 0);
    const long count = env_long("HOBBIT_FAULT_COUNT", -1);
    const long n = __atomic_fetch_add(&g_calls, 1, __ATOMIC_SEQ_CST);
    if (n < after || (count >= 0 && n >= after + count)) {
        return 0;
    }
    __atomic_fetch_add(&g_injected, 1, __ATOMIC_SEQ_CST);
    if (getenv("HOBBIT_FAULT_VERBOSE")) {
        fprintf(stderr, "faultinject: %s fault on call %ld\n", mode(), n);
    }
    return 1;
}

// is `tok` one of the comma-separated words of `list`?
static int has_word(const char * list, const char * tok) {
    const size_t n = strlen(tok);
    for (const char * p = list; p && *p; ) {
        const char * end = strchr(p, ',');
        const size_t len = end ? (size_t) (end - p) : strlen(p);
        if (len == n && strncmp(p, tok, n) == 0) {
            return 1;
        }
        p = end ? end + 1 : NULL;
    }
    return 0;
}

static int targeted(const char * func, int fd) {
    const char * want  = getenv("HOBBIT_FAULT_PATH");
    const char * funcs = getenv("HOBBIT_FAULT_FUNCS");
    const char * m = mode();
    if (!want || !*want || strcmp(m, "alloc") == 0 || !has_word(funcs && *funcs ? funcs : "pread", func)) {
        return 0;
    }
    char link[64], path[4096];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    const ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n <= 0) {
        return 0;
    }
    path[n] = '\0';
    return strstr(path, want) != NULL;
}

// the fault to return instead of reading, or -2 to read for real
static ssize_t fault_for(void) {
    const char * m = mode();
    if (strcmp(m, "eio") == 0) {
        errno = EIO;
        return -1;
    }
    if (strcmp(m, "eintr") == 0) {
        errno = EINTR;
        return -1;
    }
    if (strcmp(m, "eof") == 0) {
        return 0;
    }
    return -2;
}

// a short read: fewer bytes than were read, in whole blocks for O_DIRECT
static ssize_t shorten(int fd, ssize_t r) {
    if (strcmp(mode(), "short") != 0 || r <= 1) {
        return r;
    }
    const int flags = fcntl(fd, F_GETFL);
#ifdef O_DIRECT
    if (flags >= 0 && (flags & O_DIRECT)) {
        const ssize_t half = (r/2) & ~(ssize_t) 4095;
        return half > 0 ? half : r;
    }
#endif
    (void) flags;
    return r - 1;
}

typedef ssize_t (*pread_fn)(int, void *, size_t, off_t);
typedef ssize_t (*read_fn)(int, void *, size_t);
typedef int (*memalign_fn)(void **, size_t, size_t);

static ssize_t faulty_pread(const char * sym, int fd, void * buf, size_t count, off_t off) {
    static pread_fn real_pread = NULL, real_pread64 = NULL;
    pread_fn * slot = strcmp(sym, "pread") == 0 ? &real_pread : &real_pread64;
    if (!*slot) {
        *slot = (pread_fn) dlsym(RTLD_NEXT, sym);
    }
    if (targeted("pread", fd) && should_fail()) {
        const ssize_t f = fault_for();
        return f != -2 ? f : shorten(fd, (*slot)(fd, buf, count, off));
    }
    return (*slot)(fd, buf, count, off);
}

ssize_t pread(int fd, void * buf, size_t count, off_t off) {
    return faulty_pread("pread", fd, buf, count, off);
}

ssize_t pread64(int fd, void * buf, size_t count, off_t off) {
    return faulty_pread("pread64", fd, buf, count, off);
}

ssize_t read(int fd, void * buf, size_t count) {
    static read_fn real_read = NULL;
    if (!real_read) {
        real_read = (read_fn) dlsym(RTLD_NEXT, "read");
    }
    if (targeted("read", fd) && should_fail()) {
        const ssize_t f = fault_for();
        return f != -2 ? f : shorten(fd, real_read(fd, buf, count));
    }
    return real_read(fd, buf, count);
}

int posix_memalign(void ** ptr, size_t alignment, size_t size) {
    static memalign_fn real_memalign = NULL;
    if (!real_memalign) {
        real_memalign = (memalign_fn) dlsym(RTLD_NEXT, "posix_memalign");
    }
    if (strcmp(mode(), "alloc") == 0 && size >= (size_t) env_long("HOBBIT_FAULT_MIN_BYTES", 1 << 20) &&
            size <= (size_t) env_long("HOBBIT_FAULT_MAX_BYTES", -1) && should_fail()) {
        return ENOMEM;
    }
    return real_memalign(ptr, alignment, size);
}
