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

struct ggml_tensor;

class llama_hobbit_copier {
public:
    llama_hobbit_copier() = default;
    llama_hobbit_copier(const llama_hobbit_copier &) = delete;
    llama_hobbit_copier & operator=(const llama_hobbit_copier &) = delete;
    ~llama_hobbit_copier();

    // a backend of its own on dev; false (and inactive) if it or its events cannot be had
    bool init(ggml_backend_dev_t dev);
    bool active() const { return backend != nullptr; }

    // queue n[i] bytes from host memory src[i] into t[i] at offset off[i], for i < parts, and
    // return the event recorded after them (nullptr: none could be had, nothing was queued)
    ggml_backend_event_t submit(ggml_tensor * const * t, const char * const * src, const size_t * off, const size_t * n,
                                int parts);

    // wait for an event submit returned; it goes back to the pool. Returns the ms it blocked.
    double wait(ggml_backend_event_t ev);

private:
    ggml_backend_dev_t dev     = nullptr;
    ggml_backend_t     backend = nullptr;
    std::mutex         mtx;    // the event pool and the stream, shared by the contexts
    std::vector<ggml_backend_event_t> free_events;
    std::vector<ggml_backend_event_t> all_events;
};
