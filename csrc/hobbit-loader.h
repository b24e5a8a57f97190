// HOBBIT loader: a pool of I/O threads of HOBBIT's own that read expert copies into their slots,
// several reads in flight, off the compute threads: each projection of an expert is a read of
// its own, so one expert's load keeps several reads in flight too.
//
// Demand loads (a graph is waiting for them) go before prefetches, and a prefetch is read only
// while no demand read is queued or running, so it never takes bandwidth a waiting graph
// needs. A queued prefetch that a graph comes to need is promoted; one can be taken back.
// The loader knows nothing of the cache's books: a finished read is handed to a callback,
// which the cache uses to mark the slot ready (or free it) under its own lock. Lock order: the
// cache's mutex may be held while calling the loader, never the other way round.
#pragma once

#include "hobbit-host.h"
#include "hobbit-store.h"

#include "ggml-backend.h"

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// one read of one expert copy (all projections) into its slot
struct llama_hobbit_load {
    int    idx    = -1; // entry in the slot books
    int    il     = -1;
    int    expert = -1;
    int    lvl    = 0;
    char * dst[LLAMA_HOBBIT_N_PROJ] = {};
    // GPU tier: dst[p] is VRAM inside this pool tensor, and the read is a copy from the host tier
    ggml_tensor * device[LLAMA_HOBBIT_N_PROJ] = {};
    size_t bytes  = 0;
    int    depth  = 0; // 0: a demand load; j > 0: a prefetch made j layers ahead

    // the loader's: its projections are read in parallel, each by whichever I/O thread is free
    int         parts_started = 0;
    int         parts_done    = 0;
    bool        ok            = true;
    std::string err;            // the first failure
    double      read_ms = 0.0;  // summed over the projections

    // GPU tier, a copy the graph's thread submitted (hobbit-copier.h) instead of the loader: the
    // event to wait for (nullptr once waited), when it was queued, and whether its end was seen
    // (the wait blocked), which makes its time a measurement of the bus
    ggml_backend_event_t copy_event = nullptr;
    // a split miss (hobbit-planner.h): the rows from split_row on are copied first and this event
    // follows them (nullptr once waited); the first rows' bytes follow later (head_bytes)
    ggml_backend_event_t part_event = nullptr;
    int64_t     split_row  = 0;
    size_t      head_bytes = 0;
    bool        direct  = false;
    uint64_t    copy_seq = 0;   // its place on the copier's stream
    bool        timed   = false;
    std::chrono::steady_clock::time_point submitted_at{};

    // set by the completion callback under the cache's lock
    bool        done    = false;
    std::chrono::steady_clock::time_point done_at{};

    bool prefetch() const { return depth > 0; }
};

using llama_hobbit_load_ptr = std::shared_ptr<llama_hobbit_load>;

class llama_hobbit_loader {
public:
    using done_fn = std::function<void(const llama_hobbit_load_ptr &)>;

    llama_hobbit_loader() = default;
    llama_hobbit_loader(const llama_hobbit_loader &) = delete;
    llama_hobbit_loader & operator=(const llama_hobbit_loader &) = delete;
    ~llama_hobbit_loader() { stop(); }

    // start n_threads I/O threads reading from `store`; `on_done` runs on an I/O thread after
    // each read (ok or not), with no loader lock held. Throws if a thread cannot be started.
    // GPU tier: copies into VRAM come from `host` when it is resident, else from the file
    // through a staging buffer of type `staging` (pinned host memory) per thread.
    void start(const llama_hobbit_store * store, int n_threads, done_fn on_done,
               const llama_hobbit_host * host = nullptr, ggml_backend_buffer_type_t staging = nullptr);

    // finish the reads in flight, drop the queued ones (their callbacks run, not ok), join
    void stop();

    void submit(const llama_hobbit_load_ptr & job);

    // a queued prefetch is needed now: read it before the other prefetches
    void promote(const llama_hobbit_load_ptr & job);

    // take back a read not started yet: true if it was still queued (it will not run)
    bool take_back(const llama_hobbit_load_ptr & job);

    // a demand copy queued elsewhere (hobbit-copier.h) started / ended: prefetches wait meanwhile
    void demand_started();
    void demand_finished();

    // bytes queued or being read, and the most there ever were
    size_t bytes_pending() const;
    // bytes a new demand read would wait behind: demand reads queued, and every read running
    size_t bytes_ahead_of_demand() const;
    size_t bytes_pending_peak() const;

    int n_threads() const { return (int) threads.size(); }

private:
    void run();
    bool copy_part(const llama_hobbit_load & job, int p, llama_hobbit_bounce & bounce,
                   llama_hobbit_staging & staging, std::string & err) const;

    const llama_hobbit_store * store = nullptr;
    const llama_hobbit_host  * host  = nullptr;
    ggml_backend_buffer_type_t staging_buft = nullptr;
    done_fn                    on_done;

    mutable std::mutex                mtx;
    std::condition_variable           cv;
    using part = std::pair<llama_hobbit_load_ptr, int>; // a job and one of its projections
    std::deque<part>                  demand;
    std::deque<part>                  prefetch;
    std::vector<std::thread>          threads;
    bool                              stopping = false;
    size_t                            pending = 0;
    size_t                            pending_peak = 0;
    size_t                            running_bytes = 0; // bytes of the projections being read now
    int                               demand_running   = 0; // demand reads being read now
    int                               prefetch_running = 0; // prefetch reads being read now
};
