// HOBBIT: the CPU experts' worker pool (hobbit-workers.h).
//
// Every index of a job runs exactly once, on as many distinct threads as the job asked for; the
// caller is index 0; jobs follow one another with the workers spinning and after they slept;
// a job may ask for more or fewer threads than the one before; workers that cannot be started
// leave the job to those that could (the start failure is injected); and the pool is destroyed
// both idle and right after a job. A posted job runs in the background on the workers alone,
// each of its indices once, until it ends or the next run or post cancels it and waits for it
// (also the destructor). llama_hobbit_parallel does the same on an OpenMP team where
// the build has OpenMP (it must then, as ggml's CPU backend does), else on the pool. Run under
// ThreadSanitizer (a build without OpenMP) by scripts/sanitize.sh.

#include "hobbit-workers.h"
#include "hobbit-test.h"
#include "llama.h"

#include <atomic>
#include <chrono>
#ifdef __linux__
#include <pthread.h>
#include <sched.h>
#endif
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace {

// one job of n threads: which indices ran, how often, and on which threads
struct job_record {
    std::vector<std::atomic<int>> runs;
    std::mutex mtx;
    std::set<std::thread::id> threads;
    std::atomic<int> bad_n{0};
    std::thread::id index0;

    explicit job_record(int n) : runs(n) {}
};

// runs a job of n threads on pool (or through llama_hobbit_parallel), checks it and returns the
// thread count it used
int check_job(llama_hobbit_workers & pool, int n, int expect_n, bool parallel = false) {
    job_record rec(n);
    const auto fn = [&](int i, int m) {
        if (m != expect_n || i < 0 || i >= m) {
            rec.bad_n.fetch_add(1);
            return;
        }
        rec.runs[i].fetch_add(1);
        std::lock_guard<std::mutex> lock(rec.mtx);
        rec.threads.insert(std::this_thread::get_id());
        if (i == 0) {
            rec.index0 = std::this_thread::get_id();
        }
    };
    const int used = parallel ? llama_hobbit_parallel(pool, n, fn) : pool.run(n, fn);
    CHECK_EQ(used, expect_n);
    CHECK_EQ(rec.bad_n.load(), 0);
    for (int i = 0; i < n; ++i) {
        CHECK_EQ(rec.runs[i].load(), i < expect_n ? 1 : 0);
    }
    CHECK_EQ((long long) rec.threads.size(), expect_n);
    CHECK(rec.index0 == std::this_thread::get_id());
    return used;
}

} // namespace

int main() {
    {
        llama_hobbit_workers pool;
        check_job(pool, 1, 1);
        CHECK_EQ(pool.n_workers(), 0); // a one-thread job starts nobody
        check_job(pool, 4, 4);
        CHECK_EQ(pool.n_workers(), 3);
        // back to back: the workers are still spinning
        for (int k = 0; k < 300; ++k) {
            check_job(pool, 4, 4);
        }
        // after they slept
        for (int k = 0; k < 5; ++k) {
            std::this_thread::sleep_for(std::chrono::milliseconds(int(3*llama_hobbit_workers::SPIN_MS) + 1));
            check_job(pool, 4, 4);
        }
        // more threads, then fewer: the extra workers take no index
        check_job(pool, 7, 7);
        CHECK_EQ(pool.n_workers(), 6);
        check_job(pool, 3, 3);
        check_job(pool, 7, 7);
        CHECK_EQ(pool.n_workers(), 6);
    }
    {
        // the sum of a job's work does not depend on who did it
        llama_hobbit_workers pool;
        for (int k = 0; k < 200; ++k) {
            std::vector<long long> part(5, 0);
            pool.run(5, [&](int i, int n) {
                for (int u = i; u < 1000; u += n) {
                    part[i] += u;
                }
            });
            long long sum = 0;
            for (long long p : part) {
                sum += p;
            }
            CHECK_EQ(sum, 999LL*1000/2);
        }
    } // destroyed right after a job, its workers spinning
    {
        // starting threads fails after two: the job runs on the caller and those two
        llama_hobbit_workers pool;
        pool.start_limit = 2;
        check_job(pool, 6, 3);
        CHECK_EQ(pool.n_workers(), 2);
        pool.start_limit = 0;
        llama_hobbit_workers none;
        none.start_limit = 0;
        check_job(none, 6, 1); // no worker at all: the caller alone
    }
    {
        // a posted job: indices 1..n-1 on the workers, the caller goes on at once
        llama_hobbit_workers pool;
        std::vector<std::atomic<int>> ran(4);
        std::atomic<int> seen_cancel{0}, running{0};
        std::atomic<bool> release{false};
        const std::thread::id caller = std::this_thread::get_id();
        std::atomic<int> on_caller{0};
        pool.post(4, [&](int i, int n) {
            ran[i].fetch_add(n == 4 ? 1 : 100);
            on_caller.fetch_add(std::this_thread::get_id() == caller ? 1 : 0);
            running.fetch_add(1);
            while (!release.load() && !pool.cancelled()) {
                std::this_thread::yield();
            }
            seen_cancel.fetch_add(pool.cancelled() ? 1 : 0);
        });
        while (running.load() < 3) { // every worker runs it while the caller is here
            std::this_thread::yield();
        }
        CHECK_EQ(ran[0].load(), 0);
        // the next run cancels it, waits for it, then runs as always
        check_job(pool, 4, 4);
        CHECK_EQ(seen_cancel.load(), 3);
        CHECK_EQ(on_caller.load(), 0);
        for (int i = 1; i < 4; ++i) {
            CHECK_EQ(ran[i].load(), 1);
        }
        CHECK(!pool.cancelled()); // cleared for the next one
        // a job that ends by itself: nothing to cancel, and a post replaces a post
        std::atomic<int> quick{0};
        pool.post(4, [&](int, int) { quick.fetch_add(1); });
        pool.post(3, [&](int, int) { quick.fetch_add(10); });
        pool.finish_posted();
        CHECK_EQ(quick.load(), 3 + 2*10);
        // a one-thread post runs nothing
        pool.post(1, [&](int, int) { quick.fetch_add(1000); });
        pool.finish_posted();
        CHECK_EQ(quick.load(), 23);
    }
    {
        // a pool destroyed with a posted job still running cancels it and waits for it
        std::atomic<int> ended{0};
        {
            llama_hobbit_workers pool;
            pool.post(4, [&](int, int) {
                while (!pool.cancelled()) {
                    std::this_thread::yield();
                }
                ended.fetch_add(1);
            });
        }
        CHECK_EQ(ended.load(), 3);
    }
#ifdef __linux__
    {
        // pinned workers: each to one allowed CPU, the first workers to distinct ones, none to the
        // CPU the first caller ran on while there are others
        cpu_set_t allowed;
        CPU_ZERO(&allowed);
        CHECK_EQ(sched_getaffinity(0, sizeof(allowed), &allowed), 0);
        const int n_cpus = CPU_COUNT(&allowed);
        llama_hobbit_workers pool;
        pool.pin = true;
        const int caller_cpu = sched_getcpu();
        std::vector<int> cpu_of(4, -1);
        pool.run(4, [&](int i, int) {
            if (i == 0) {
                return;
            }
            cpu_set_t mine;
            CPU_ZERO(&mine);
            pthread_getaffinity_np(pthread_self(), sizeof(mine), &mine);
            if (CPU_COUNT(&mine) == 1) {
                for (int c = 0; c < CPU_SETSIZE; ++c) {
                    if (CPU_ISSET(c, &mine)) {
                        cpu_of[i] = c;
                    }
                }
            }
        });
        for (int i = 1; i < 4; ++i) {
            CHECK(cpu_of[i] >= 0 && CPU_ISSET(cpu_of[i], &allowed));
            CHECK(n_cpus < 2 || i >= n_cpus || cpu_of[i] != caller_cpu);
            for (int j = 1; j < i && i < n_cpus; ++j) {
                CHECK(cpu_of[i] != cpu_of[j]);
            }
        }
    }
#endif
    {
        // llama_hobbit_parallel: an OpenMP team or the pool, the same contract
        llama_hobbit_workers pool;
        for (int k = 0; k < 50; ++k) {
            check_job(pool, 6, 6, true);
        }
        check_job(pool, 1, 1, true);
        CHECK_EQ(pool.n_workers(), llama_hobbit_parallel_openmp() ? 0 : 5);
        // OpenMP exactly where ggml's CPU backend has it
        CHECK_EQ(llama_hobbit_parallel_openmp(), strstr(llama_print_system_info(), "OPENMP = 1") != nullptr);
        printf("llama_hobbit_parallel: %s\n", llama_hobbit_parallel_openmp() ? "OpenMP" : "the pool");
    }
    return hobbit_test_result("test-hobbit-workers");
}
