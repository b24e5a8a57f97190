// HOBBIT workers: the threads that compute a decode's CPU experts on the GPU tier.
//
// ggml's CPU backend runs a graph split on a team of as many threads as its widest node asks
// for. On the GPU tier each MoE layer of a decode has a CPU split (the prefetch, route, CPU
// experts and wait ops): with the CPU experts op asking for every thread, each layer woke the
// whole team and passed its barriers, also when no route went to the CPU. Every HOBBIT op now
// asks for one thread, so the split runs on the thread that computes the graph, and the CPU
// experts op runs its slices with llama_hobbit_parallel, only when it has some.
//
// With OpenMP (ggml's default), that is an OpenMP team of the graph's thread: the very threads
// ggml's own parallel ops use. A second set of threads would compete with them for the cores,
// since OpenMP's idle threads spin for a while after each parallel op (the token embeddings'
// get_rows, the layers on the CPU). Without OpenMP, it is the context's pool below: threads
// started on first use that spin for SPIN_MS after a job (the next layer's comes sooner in a
// decode) and then sleep.
//
// The pool also takes work in the background (post): the warming of the next layer's
// predicted CPU miss while the GPU computes (hobbit-warm.h). A worker then reads its share of
// that expert into its own core's caches, and the CPU experts op computes the same share on
// the same worker (so the pool, not OpenMP, runs the op when warming is on).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

struct llama_hobbit_workers {
    // how long an idle worker spins for the next job before it sleeps
    static constexpr double SPIN_MS = 1.0;

    llama_hobbit_workers() = default;
    llama_hobbit_workers(const llama_hobbit_workers &) = delete;
    llama_hobbit_workers & operator=(const llama_hobbit_workers &) = delete;
    ~llama_hobbit_workers();

    // runs fn(i, n) for every i in [0, n), i = 0 on the calling thread and the others on workers;
    // returns n, which is smaller than asked when threads could not be started (1: the caller
    // ran it alone). fn must not throw. One caller at a time.
    int run(int n, const std::function<void(int, int)> & fn);

    // runs fn(i, n) for every i in [1, n) on the workers and returns at once (the caller takes
    // no part; n is capped to the workers that could start, plus one); fn should return soon
    // once cancelled() is true, which the next post() or run() sets before it waits for fn to
    // end. fn must not throw. One caller at a time, as for run().
    void post(int n, std::function<void(int, int)> fn);

    // a posted job is asked to stop (its fn polls this)
    bool cancelled() const { return cancel.load(std::memory_order_relaxed); }

    // workers asleep wake up and spin for SPIN_MS (a job is coming): their wake-up overlaps
    // with the caller's work before run()
    void wake();

    // workers started so far
    int n_workers() const { return (int) threads.size(); }

    // tests: starting a worker beyond this many fails, as when the system has no threads left
    int start_limit = 1 << 30;

    // pin each worker to a core of its own (Linux; set before the first job): worker i to the
    // i-th of the process's allowed CPUs after the one the first job's caller ran on, so that what
    // a worker read ahead stays in its core's caches (hobbit-warm.h)
    bool pin = false;

    // a posted job that may still run is cancelled and waited for (run and post do this first)
    void finish_posted();

private:
    void loop(int i, uint64_t seen);
    int  start(int n); // start workers for a job of n threads; returns the threads it can run on
    void publish(const std::function<void(int, int)> * fn, int n); // hand fn to the workers (indices 1..n-1)

    std::vector<int> cpus; // pin: the allowed CPUs, from the one after the first caller's (filled once)
    std::function<void(int, int)> posted; // the job post() published (kept while it runs)
    bool                          posted_live = false;
    std::atomic<bool>             cancel{false};

    std::vector<std::thread> threads;
    std::mutex               mtx;
    std::condition_variable  cv;
    std::atomic<uint64_t>    gen{0};     // jobs published
    std::atomic<int>         pending{0}; // workers not done with the latest job
    std::atomic<bool>        stop{false};
    std::atomic<int>         sleeping{0}; // workers waiting on cv
    uint64_t                 alarms = 0;  // wake() calls (under mtx)
    const std::function<void(int, int)> * job = nullptr; // the latest job (set before gen moves)
    int n_job = 0;                                       // its thread count
};

// runs fn(i, m) for every i in [0, m) on m <= n threads, i = 0 on the caller: an OpenMP team
// where llama.cpp is built with OpenMP, else pool.run(n, fn). Returns m. fn must not throw.
int llama_hobbit_parallel(llama_hobbit_workers & pool, int n, const std::function<void(int, int)> & fn);

// whether llama_hobbit_parallel uses OpenMP in this build
bool llama_hobbit_parallel_openmp();
