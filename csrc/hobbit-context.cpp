#include "hobbit-context.h"

#include <algorithm>

llama_hobbit_context::llama_hobbit_context(std::shared_ptr<llama_hobbit_cache> cache_) : cache(std::move(cache_)) {
    cpu_workers.pin = cache->warm_pin;
    predicted.assign(size_t(cache->n_layer)*cache->n_expert, 0);
    pred_made.assign(cache->n_layer, 0);
}

void llama_hobbit_context::wave_started(int il, int wave) {
    const auto now = std::chrono::steady_clock::now();
    // compute between two MoE layers of one pass; the gap between passes (sampling, the
    // caller's work) is not the graph's compute
    if (wave == 0 && il > served_il && served_at.time_since_epoch().count() != 0) {
        const double ms = std::chrono::duration<double, std::milli>(now - served_at).count();
        compute_ms = compute_ms < 0.0 ? ms : 0.8*compute_ms + 0.2*ms;
        between_ms += ms;
        if (inputs_at > served_at) {
            gpu_gap_ms += std::chrono::duration<double, std::milli>(inputs_at - served_at).count();
        }
    }
    started_at = now;
}

void llama_hobbit_context::wave_served(int il, int wave) {
    served_at = std::chrono::steady_clock::now();
    served_il = il;
    if (wave == 0) {
        const double ms = std::chrono::duration<double, std::milli>(served_at - started_at).count();
        stall_ms = stall_ms < 0.0 ? ms : 0.8*stall_ms + 0.2*ms;
    }
}

llama_hobbit_context::~llama_hobbit_context() {
    cache->release(*this);
}

llama_hobbit_op * llama_hobbit_context::op(int il, int wave, int n_waves) {
    for (const auto & o : ops) {
        if (o->il == il && o->wave == wave && o->n_waves == n_waves) {
            return o.get();
        }
    }
    ops.push_back(std::make_unique<llama_hobbit_op>(llama_hobbit_op{ this, il, wave, n_waves, 0, {}, false }));
    return ops.back().get();
}
