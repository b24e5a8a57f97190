#include "hobbit-workers.h"

#include <algorithm>
#include <chrono>
#include <system_error>

#ifdef __linux__
#include <pthread.h>
#include <sched.h>
#endif

#ifdef LLAMA_HOBBIT_OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#endif

namespace {

// a hint to the core that this thread is spinning
inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
    _mm_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#else
    std::this_thread::yield();
#endif
}

// the CPUs this process may run on, rotated to start after the one this thread runs on (Linux;
// elsewhere none: no pinning)
std::vector<int> cpus_after_this_one() {
    std::vector<int> out;
#ifdef __linux__
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) {
        return out;
    }
    for (int c = 0; c < CPU_SETSIZE; ++c) {
        if (CPU_ISSET(c, &set)) {
            out.push_back(c);
        }
    }
    const int here = sched_getcpu();
    const auto it = std::find(out.begin(), out.end(), here);
    if (it != out.end()) {
        std::rotate(out.begin(), it + 1, out.end()); // this CPU last: the caller keeps it
    }
#endif
    return out;
}

void pin_to(int cpu) {
#ifdef __linux__
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set); // best effort: unpinned if refused
#else
    (void) cpu;
#endif
}

} // namespace

llama_hobbit_workers::~llama_hobbit_workers() {
    finish_posted();
    {
        std::lock_guard<std::mutex> lock(mtx);
        stop.store(true);
    }
    cv.notify_all();
    for (std::thread & t : threads) {
        t.join();
    }
}

void llama_hobbit_workers::loop(int i, uint64_t seen) {
    auto idle_since = std::chrono::steady_clock::now();
    for (;;) {
        // spin for the next job; after SPIN_MS, sleep until one is published or wake() is called
        uint64_t g = gen.load(std::memory_order_acquire);
        for (int spins = 1; g == seen && !stop.load(std::memory_order_relaxed); ++spins) {
            cpu_relax();
            if ((spins & 255) == 0) {
                std::this_thread::yield(); // let the copier and the I/O threads run on a full machine
                const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - idle_since).count();
                if (ms > SPIN_MS) {
                    std::unique_lock<std::mutex> lock(mtx);
                    const uint64_t woken = alarms;
                    sleeping.fetch_add(1);
                    cv.wait(lock, [&] { return gen.load(std::memory_order_acquire) != seen || stop.load() || alarms != woken; });
                    sleeping.fetch_sub(1);
                    idle_since = std::chrono::steady_clock::now();
                }
            }
            g = gen.load(std::memory_order_acquire);
        }
        if (stop.load()) {
            return;
        }
        seen = g;
        if (i < n_job) {
            (*job)(i, n_job);
        }
        pending.fetch_sub(1, std::memory_order_acq_rel);
        idle_since = std::chrono::steady_clock::now();
    }
}

void llama_hobbit_workers::wake() {
    if (sleeping.load() == 0) {
        return;
    }
    {
        std::lock_guard<std::mutex> lock(mtx);
        alarms++;
    }
    cv.notify_all();
}

int llama_hobbit_workers::start(int n) {
    while ((int) threads.size() < n - 1) {
        if ((int) threads.size() >= start_limit) {
            break; // as a failed start
        }
        try {
            // a new worker starts from the jobs published before it, so it takes this one too
            const int i = (int) threads.size() + 1;
            const uint64_t seen = gen.load(std::memory_order_acquire);
            if (pin && cpus.empty()) {
                cpus = cpus_after_this_one();
            }
            const int cpu = pin && !cpus.empty() ? cpus[size_t(i - 1) % cpus.size()] : -1;
            threads.emplace_back([this, i, seen, cpu] {
                if (cpu >= 0) {
                    pin_to(cpu);
                }
                loop(i, seen);
            });
        } catch (const std::system_error &) {
            break; // the threads that could start do the work
        }
    }
    return n < 1 ? 1 : (n - 1 > (int) threads.size() ? (int) threads.size() + 1 : n);
}

void llama_hobbit_workers::finish_posted() {
    if (!posted_live) {
        return;
    }
    cancel.store(true, std::memory_order_relaxed);
    while (pending.load(std::memory_order_acquire) != 0) {
        cpu_relax();
    }
    cancel.store(false, std::memory_order_relaxed);
    posted_live = false;
}

void llama_hobbit_workers::post(int n, std::function<void(int, int)> fn) {
    finish_posted();
    n = start(n);
    if (n == 1) {
        return; // no worker: nothing runs in the background
    }
    posted = std::move(fn); // no worker runs a job now (finish_posted): none reads it
    publish(&posted, n);
    posted_live = true;
}

void llama_hobbit_workers::publish(const std::function<void(int, int)> * fn, int n) {
    {
        std::lock_guard<std::mutex> lock(mtx);
        job   = fn;
        n_job = n;
        pending.store((int) threads.size(), std::memory_order_relaxed);
        gen.fetch_add(1, std::memory_order_release);
    }
    cv.notify_all();
}

int llama_hobbit_workers::run(int n, const std::function<void(int, int)> & fn) {
    finish_posted();
    n = start(n);
    if (n == 1) {
        fn(0, 1);
        return 1;
    }
    publish(&fn, n);
    fn(0, n);
    while (pending.load(std::memory_order_acquire) != 0) {
        cpu_relax();
    }
    return n;
}

int llama_hobbit_parallel(llama_hobbit_workers & pool, int n, const std::function<void(int, int)> & fn) {
#ifdef LLAMA_HOBBIT_OPENMP
    (void) pool;
    if (n <= 1) {
        fn(0, 1);
        return 1;
    }
    int used = 1;
    #pragma omp parallel num_threads(n)
    {
        const int m = omp_get_num_threads();
        if (omp_get_thread_num() == 0) {
            used = m;
        }
        fn(omp_get_thread_num(), m);
    }
    return used;
#else
    return pool.run(n, fn);
#endif
}

bool llama_hobbit_parallel_openmp() {
#ifdef LLAMA_HOBBIT_OPENMP
    return true;
#else
    return false;
#endif
}
