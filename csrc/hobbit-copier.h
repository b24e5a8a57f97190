// HOBBIT copier (GPU tier with a host tier): demand copies submitted by the graph's own thread.
//
// A decode's misses are copied from the pinned host tier into VRAM slots. Handing each copy to
// an I/O thread costs two thread wake-ups per layer (the I/O thread's, then the graph's when the
// copy is done), and while the CPU path's threads hold every core a woken thread may wait a
// scheduler slice for one. A copy from pinned memory needs no thread of its own: the route op
// queues it on a stream of its own (a second ggml backend on the GPU, so it overlaps the compute
// stream), records an event after it, and the wave's end waits for that event. The I/O threads
// keep the reads from the file and the prefetches, which run while the bus is idle.
#pragma once

#include "ggml-backend.h"

#include <mutex>
#include <vector>

#include "hobbit-store.h"

struct ggml_tensor;

// one expert's copy: each projection's bytes from host memory into a tensor at an offset, as
// one range, or as `rows` ranges of n bytes `pitch` apart on both sides (some columns of a
// matrix: a split miss's part of the down projection, hobbit-planner.h)
struct llama_hobbit_copy {
    ggml_tensor * dst[LLAMA_HOBBIT_N_PROJ];
    size_t        off[LLAMA_HOBBIT_N_PROJ];
    const char *  src[LLAMA_HOBBIT_N_PROJ];
    size_t        n[LLAMA_HOBBIT_N_PROJ];
    size_t        rows[LLAMA_HOBBIT_N_PROJ]  = { 1, 1, 1 };
    size_t        pitch[LLAMA_HOBBIT_N_PROJ] = {};
    size_t        bytes; // of the three
};

class llama_hobbit_copier {
public:
    llama_hobbit_copier() = default;
    llama_hobbit_copier(const llama_hobbit_copier &) = delete;
    llama_hobbit_copier & operator=(const llama_hobbit_copier &) = delete;
    ~llama_hobbit_copier();

    // a backend of its own on dev; false (and inactive) if it or its events cannot be had
    bool init(ggml_backend_dev_t dev);
    bool active() const { return backend != nullptr; }

    // queue the copy of each projection and return the event recorded after them (nullptr:
    // none could be had, nothing was queued)
    ggml_backend_event_t submit(const llama_hobbit_copy & c);

    // wait for an event submit returned; it goes back to the pool. Returns the ms it blocked.
    double wait(ggml_backend_event_t ev);

private:
    ggml_backend_dev_t dev     = nullptr;
    ggml_backend_t     backend = nullptr;
    std::mutex         mtx;    // the event pool and the stream, shared by the contexts
    std::vector<ggml_backend_event_t> free_events;
    std::vector<ggml_backend_event_t> all_events;
};
