#include "hobbit-copier.h"

#include <chrono>

llama_hobbit_copier::~llama_hobbit_copier() {
    if (backend) {
        ggml_backend_synchronize(backend);
    }
    for (ggml_backend_event_t ev : all_events) {
        ggml_backend_event_free(ev);
    }
    if (backend) {
        ggml_backend_free(backend);
    }
}

bool llama_hobbit_copier::init(ggml_backend_dev_t d) {
    ggml_backend_t b = ggml_backend_dev_init(d, nullptr);
    if (!b) {
        return false;
    }
    ggml_backend_event_t ev = ggml_backend_event_new(d);
    if (!ev) {
        ggml_backend_free(b); // a backend without events: the loader copies
        return false;
    }
    dev     = d;
    backend = b;
    all_events.push_back(ev);
    free_events.push_back(ev);
    return true;
}

ggml_backend_event_t llama_hobbit_copier::submit(const llama_hobbit_copy & c) {
    std::lock_guard<std::mutex> lock(mtx);
    if (free_events.empty()) {
        ggml_backend_event_t ev = ggml_backend_event_new(dev);
        if (!ev) {
            return nullptr;
        }
        all_events.push_back(ev);
        free_events.push_back(ev);
    }
    ggml_backend_event_t ev = free_events.back();
    free_events.pop_back();
    for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
        // one row: a plain async set (ggml_backend_tensor_set_2d_async's own case)
        ggml_backend_tensor_set_2d_async(backend, c.dst[p], c.src[p], c.off[p], c.n[p], c.rows[p], c.pitch[p], c.pitch[p]);
    }
    ggml_backend_event_record(ev, backend);
    return ev;
}

double llama_hobbit_copier::wait(ggml_backend_event_t ev) {
    const auto t0 = std::chrono::steady_clock::now();
    ggml_backend_event_synchronize(ev);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::lock_guard<std::mutex> lock(mtx);
    free_events.push_back(ev);
    return ms;
}
