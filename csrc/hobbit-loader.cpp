#include "hobbit-loader.h"

#include "llama-impl.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <system_error>

void llama_hobbit_loader::start(const llama_hobbit_store * store_, int n_threads, done_fn on_done_) {
    store   = store_;
    on_done = std::move(on_done_);
    try {
        for (int i = 0; i < n_threads; ++i) {
            threads.emplace_back([this]() { run(); });
        }
    } catch (const std::system_error & e) {
        stop();
        throw std::runtime_error(format("hobbit: cannot start the expert loader's threads: %s", e.what()));
    }
}

void llama_hobbit_loader::stop() {
    std::vector<llama_hobbit_load_ptr> dropped;
    {
        std::lock_guard<std::mutex> lock(mtx);
        stopping = true;
        dropped.insert(dropped.end(), demand.begin(), demand.end());
        dropped.insert(dropped.end(), prefetch.begin(), prefetch.end());
        demand.clear();
        prefetch.clear();
    }
    cv.notify_all();
    for (auto & t : threads) {
        if (t.joinable()) {
            t.join();
        }
    }
    threads.clear();
    for (const auto & job : dropped) {
        job->err = "hobbit: the expert loader stopped";
        if (on_done) {
            on_done(job);
        }
    }
}

void llama_hobbit_loader::submit(const llama_hobbit_load_ptr & job) {
    {
        std::lock_guard<std::mutex> lock(mtx);
        (job->prefetch() ? prefetch : demand).push_back(job);
        pending += job->bytes;
        pending_peak = std::max(pending_peak, pending);
    }
    cv.notify_one();
}

void llama_hobbit_loader::promote(const llama_hobbit_load_ptr & job) {
    std::lock_guard<std::mutex> lock(mtx);
    auto it = std::find(prefetch.begin(), prefetch.end(), job);
    if (it != prefetch.end()) {
        prefetch.erase(it);
        demand.push_back(job);
    }
}

bool llama_hobbit_loader::take_back(const llama_hobbit_load_ptr & job) {
    std::lock_guard<std::mutex> lock(mtx);
    for (auto * q : { &prefetch, &demand }) {
        auto it = std::find(q->begin(), q->end(), job);
        if (it != q->end()) {
            q->erase(it);
            pending -= job->bytes;
            return true;
        }
    }
    return false;
}

size_t llama_hobbit_loader::bytes_pending() const {
    std::lock_guard<std::mutex> lock(mtx);
    return pending;
}

size_t llama_hobbit_loader::bytes_pending_peak() const {
    std::lock_guard<std::mutex> lock(mtx);
    return pending_peak;
}

void llama_hobbit_loader::run() {
    llama_hobbit_bounce bounce; // this thread's O_DIRECT staging buffer
    for (;;) {
        llama_hobbit_load_ptr job;
        {
            std::unique_lock<std::mutex> lock(mtx);
            cv.wait(lock, [&]() { return stopping || !demand.empty() || !prefetch.empty(); });
            if (stopping) {
                return;
            }
            auto & q = demand.empty() ? prefetch : demand;
            job = q.front();
            q.pop_front();
            job->started = true;
        }
        const auto t0 = std::chrono::steady_clock::now();
        const size_t need = store->bounce_bytes();
        bool ok = need == 0 || bounce.reserve(need);
        std::string err;
        if (!ok) {
            err = format("hobbit: cannot allocate %zu bytes to read experts from %s", need, store->path(0).c_str());
        } else {
            ok = store->read_expert(job->il, job->expert, job->lvl, job->dst, bounce, err);
        }
        job->read_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        job->ok  = ok;
        job->err = err;
        {
            std::lock_guard<std::mutex> lock(mtx);
            pending -= job->bytes;
        }
        on_done(job);
    }
}
