// Does the page size of host memory change how fast the CPU's threads read experts from it?
// The GPU tier's CPU experts op reads each miss (tens of MiB) from the host tier in chunks of
// about 32 KiB that its threads take as they come. This reads 24 MiB regions of a buffer the
// same way, with OpenMP threads, from memory of each kind: anonymous with 4 KiB pages,
// anonymous with transparent huge pages (MADV_HUGEPAGE), cudaMallocHost's, and the two
// anonymous ones pinned with cudaHostRegister (libcudart is opened at run time), and says how
// much of each buffer the kernel backs with huge pages (AnonHugePages in /proc/self/smaps).
// The buffer should be several times the last-level cache (300 MiB of L3 on some of the GPU
// machines), or the reads are partly the cache's: its size in GiB is the first argument.
//
//   gcc -O3 -march=native -fopenmp scripts/host-page-probe.c -o /tmp/host-page-probe -ldl
//   LD_LIBRARY_PATH=/usr/local/cuda/lib64 OMP_NUM_THREADS=16 /tmp/host-page-probe [GiB, default 4]
#define _GNU_SOURCE
#include <dlfcn.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static size_t buf_bytes = 4ull << 30; // the buffer's size (argument 1, in GiB)
#define REGION (24ull*1024*1024)
#define CHUNK  (32ull*1024)
#define ROUNDS 400

typedef int (*host_alloc_fn)(void **, size_t);
typedef int (*host_register_fn)(void *, size_t, unsigned);

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec*1e-9;
}

// kB of huge pages backing the mapping that starts at p
static long huge_kb(const void * p) {
    FILE * f = fopen("/proc/self/smaps", "r");
    char line[512];
    int in = 0;
    long kb = -1;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') == line + strspn(line, "0123456789abcdef")) {
            in = (uintptr_t) p >= a && (uintptr_t) p < b;
        } else if (in && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) {
            break;
        }
    }
    if (f) {
        fclose(f);
    }
    return kb;
}

// GB/s of reading ROUNDS regions of REGION bytes at pseudo-random places of buf (buf_bytes bytes)
static double read_rate(const uint8_t * buf) {
    volatile uint64_t sink = 0;
    uint64_t seed = 12345;
    double t = 0.0;
    for (int r = 0; r < ROUNDS; ++r) {
        seed = seed*6364136223846793005ull + 1442695040888963407ull;
        const size_t off = ((seed >> 20) % ((buf_bytes - REGION)/CHUNK))*CHUNK;
        const uint64_t * base = (const uint64_t *) (buf + off);
        const double t0 = now_s();
        uint64_t total = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+:total)
        for (size_t c = 0; c < REGION/CHUNK; ++c) {
            const uint64_t * q = base + c*(CHUNK/8);
            uint64_t s = 0;
            for (size_t i = 0; i < CHUNK/8; ++i) {
                s += q[i];
            }
            total += s;
        }
        t += now_s() - t0;
        sink += total;
    }
    (void) sink;
    return (double) ROUNDS*REGION/t/1e9;
}

static uint8_t * anon(int huge) {
    uint8_t * p = mmap(NULL, buf_bytes + (2u << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        return NULL;
    }
    p = (uint8_t *) (((uintptr_t) p + (2u << 20) - 1) & ~(uintptr_t) ((2u << 20) - 1));
    madvise(p, buf_bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    memset(p, 1, buf_bytes);
    return p;
}

static void report(const char * name, const uint8_t * p) {
    if (!p) {
        printf("| %s | not allocated | |\n", name);
        return;
    }
    read_rate(p); // warm-up: first touch of the TLBs, threads started
    printf("| %s | %.1f | %ld |\n", name, read_rate(p), huge_kb(p)/1024);
    fflush(stdout);
}

int main(int argc, char ** argv) {
    if (argc > 1 && atoi(argv[1]) > 0) {
        buf_bytes = (size_t) atoi(argv[1]) << 30;
    }
    void * cudart = dlopen("libcudart.so", RTLD_NOW);
    host_alloc_fn    host_alloc    = cudart ? (host_alloc_fn) dlsym(cudart, "cudaMallocHost") : NULL;
    host_register_fn host_register = cudart ? (host_register_fn) dlsym(cudart, "cudaHostRegister") : NULL;
    printf("threads %d; %d reads of 24 MiB in 32 KiB chunks from a %zu GiB buffer\n", omp_get_max_threads(), ROUNDS, buf_bytes >> 30);
    printf("| memory | GB/s | MiB in huge pages |\n|---|---|---|\n");
    uint8_t * small = anon(0);
    report("anonymous, 4 KiB pages", small);
    uint8_t * huge = anon(1);
    report("anonymous, MADV_HUGEPAGE", huge);
    if (host_alloc) {
        void * p = NULL;
        if (host_alloc(&p, buf_bytes) == 0) {
            memset(p, 1, buf_bytes);
            report("cudaMallocHost", p);
        }
    }
    if (host_register) {
        if (small && host_register(small, buf_bytes, 0) == 0) {
            report("4 KiB pages, cudaHostRegister", small);
        }
        if (huge && host_register(huge, buf_bytes, 0) == 0) {
            report("MADV_HUGEPAGE, cudaHostRegister", huge);
        }
    } else {
        printf("(no libcudart: %s)\n", dlerror());
    }
    return 0;
}
