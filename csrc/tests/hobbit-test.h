// A few lines of test harness for HOBBIT's C++ unit tests: CHECK records a failure and goes on,
// the test program's exit code says whether any check failed.
#pragma once

#include <cstdio>

static int g_hobbit_test_failures = 0;

#define CHECK(cond) do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            g_hobbit_test_failures++; \
        } \
    } while (0)

#define CHECK_EQ(a, b) do { \
        const long long va_ = (long long) (a); \
        const long long vb_ = (long long) (b); \
        if (va_ != vb_) { \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%lld vs %lld)\n", __FILE__, __LINE__, #a, #b, va_, vb_); \
            g_hobbit_test_failures++; \
        } \
    } while (0)

static int hobbit_test_result(const char * name) {
    if (g_hobbit_test_failures == 0) {
        printf("%s: all checks passed\n", name);
        return 0;
    }
    printf("%s: %d check(s) failed\n", name, g_hobbit_test_failures);
    return 1;
}
