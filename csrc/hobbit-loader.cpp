#include "hobbit-loader.h"

#include "llama-impl.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <system_error>

void llama_hobbit_loader::start(const llama_hobbit_store * store_, int n_threads, done_fn on_done_,
                                const llama_hobbit_host * host_, ggml_backend_buffer_type_t staging_) {
    store        = store_;
    on_done      = std::move(on_done_);
    host         = host_;
    staging_buft = staging_;
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
        for (auto * q : { &demand, &prefetch }) {
            for (const auto & [job, p] : *q) {
                if (std::find(dropped.begin(), dropped.end(), job) == dropped.end()) {
                    dropped.push_back(job);
                }
            }
            q->clear();
        }
    }
    cv.notify_all();
    for (auto & t : threads) {
        if (t.joinable()) {
            t.join();
        }
    }
    threads.clear();
    for (const auto & job : dropped) {
        job->ok  = false;
        job->err = "hobbit: the expert loader stopped";
        if (on_done) {
            on_done(job);
        }
    }
}

void llama_hobbit_loader::submit(const llama_hobbit_load_ptr & job) {
    {
        std::lock_guard<std::mutex> lock(mtx);
        auto & q = job->prefetch() ? prefetch : demand;
        for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
            q.emplace_back(job, p);
        }
        pending += job->bytes;
        pending_peak = std::max(pending_peak, pending);
    }
    cv.notify_all();
}

void llama_hobbit_loader::promote(const llama_hobbit_load_ptr & job) {
    {
        std::lock_guard<std::mutex> lock(mtx);
        bool moved = false;
        for (auto it = prefetch.begin(); it != prefetch.end();) {
            if (it->first == job) {
                demand.push_back(*it);
                it = prefetch.erase(it);
                moved = true;
            } else {
                ++it;
            }
        }
        if (!moved) {
            return;
        }
    }
    cv.notify_all();
}

bool llama_hobbit_loader::take_back(const llama_hobbit_load_ptr & job) {
    std::lock_guard<std::mutex> lock(mtx);
    if (job->parts_started > 0) {
        return false; // a read of it is running: it must finish
    }
    bool found = false;
    for (auto * q : { &prefetch, &demand }) {
        for (auto it = q->begin(); it != q->end();) {
            if (it->first == job) {
                it = q->erase(it);
                found = true;
            } else {
                ++it;
            }
        }
    }
    if (found) {
        pending -= job->bytes;
    }
    return found;
}

void llama_hobbit_loader::demand_started() {
    std::lock_guard<std::mutex> lock(mtx);
    demand_running++;
}

void llama_hobbit_loader::demand_finished() {
    {
        std::lock_guard<std::mutex> lock(mtx);
        demand_running--;
    }
    cv.notify_all();
}

size_t llama_hobbit_loader::bytes_pending() const {
    std::lock_guard<std::mutex> lock(mtx);
    return pending;
}

size_t llama_hobbit_loader::bytes_ahead_of_demand() const {
    std::lock_guard<std::mutex> lock(mtx);
    size_t n = running_bytes;
    for (const auto & [job, p] : demand) {
        n += store->expert_bytes[job->lvl][p];
    }
    return n;
}

size_t llama_hobbit_loader::bytes_pending_peak() const {
    std::lock_guard<std::mutex> lock(mtx);
    return pending_peak;
}

bool llama_hobbit_loader::copy_part(const llama_hobbit_load & job, int p, llama_hobbit_bounce & bounce,
                                    llama_hobbit_staging & staging, std::string & err) const {
    const size_t n = store->expert_bytes[job.lvl][p];
    const char * src = host ? host->part(*store, job.il, job.expert, job.lvl, p) : nullptr;
    if (!src) {
        if (!staging_buft || !staging.reserve(staging_buft, n)) {
            err = format("hobbit: cannot allocate %zu bytes of pinned memory to copy experts to the GPU", n);
            return false;
        }
        if (!store->read_part(job.il, job.expert, job.lvl, p, staging.data, bounce, err)) {
            return false;
        }
        src = staging.data;
    }
    // on this thread's own stream, waited for here: the copy is complete when the slot turns ready
    ggml_tensor * t = job.device[p];
    ggml_backend_tensor_set(t, src, size_t(job.dst[p] - (char *) t->data), n);
    return true;
}

void llama_hobbit_loader::run() {
    llama_hobbit_bounce  bounce;  // this thread's O_DIRECT staging buffer, for unaligned ranges
    llama_hobbit_staging staging; // GPU tier: this thread's pinned buffer, when the host tier is off
    for (;;) {
        part item;
        {
            std::unique_lock<std::mutex> lock(mtx);
            // a prefetch is read only while no read a graph waits for is queued or running: it
            // uses the time the disk (or, for copies from the host tier, the bus) would sit
            // idle, never bandwidth a waiting graph needs, and one prefetch read at a time, so a
            // graph that comes to wait finds the disk or the bus soon.
            cv.wait(lock, [&]() {
                return stopping || !demand.empty() ||
                    (!prefetch.empty() && demand_running == 0 && prefetch_running == 0);
            });
            if (stopping) {
                return;
            }
            auto & q = demand.empty() ? prefetch : demand;
            item = q.front();
            q.pop_front();
            item.first->parts_started++;
            (item.first->prefetch() ? prefetch_running : demand_running)++;
            running_bytes += store->expert_bytes[item.first->lvl][item.second];
        }
        const llama_hobbit_load_ptr & job = item.first;
        const auto t0 = std::chrono::steady_clock::now();
        std::string err;
        const size_t need = store->bounce_bytes(); // sized once, for the largest read
        bool ok = need == 0 || bounce.reserve(need);
        if (!ok) {
            err = format("hobbit: cannot allocate %zu bytes to read experts from %s", need, store->path(0).c_str());
        } else if (job->device[item.second]) {
            ok = copy_part(*job, item.second, bounce, staging, err);
        } else {
            ok = store->read_part(job->il, job->expert, job->lvl, item.second, job->dst[item.second], bounce, err);
        }
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        bool last;
        {
            std::lock_guard<std::mutex> lock(mtx);
            job->read_ms += ms;
            if (!ok && job->ok) {
                job->ok  = false;
                job->err = err;
            }
            (job->prefetch() ? prefetch_running : demand_running)--;
            running_bytes -= store->expert_bytes[job->lvl][item.second];
            last = ++job->parts_done == LLAMA_HOBBIT_N_PROJ;
            if (last) {
                pending -= job->bytes;
            }
        }
        cv.notify_all(); // prefetches may go now
        if (last) {
            on_done(job);
        }
    }
}
