// HOBBIT per-context state: what one llama_context is doing with its model's expert cache.
//
// A llama_context on a HOBBIT model owns one (llama_context::hobbit). It holds the pins of the
// wave its graph is computing (released when its next wave starts and when the ubatch ends,
// also if the graph stopped early), the layer job being served, the first error of the ubatch
// (which makes llama_decode fail), and what its prefetches predicted and how well.
#pragma once

#include "hobbit-cache.h"
#include "hobbit-policy.h"
#include "hobbit-prefetch.h"
#include "hobbit-store.h"
#include "hobbit-workers.h"
#include "llama-hobbit.h"

#include <atomic>
#include <chrono>
#include <climits>
#include <memory>
#include <string>
#include <vector>

struct llama_hobbit_context;

// what one op of the graph serves: the userdata of a route op (wave >= 0) or of a prefetch op
// (wave -1; its sources are the router logits of `targets`, at depths 1, 2, ...)
struct llama_hobbit_op {
    llama_hobbit_context * hctx;
    int il;
    int wave;
    int n_waves;
    int gating  = 0; // enum llama_expert_gating_func_type of the model
    std::vector<int> targets;
    bool cpu_path = false; // the graph has a CPU path for this wave (a route op and a wait op)
    bool split    = false; // ... and split paths (hobbit-planner.h)
    int64_t n_embd = 0;    // CPU path: the width of the layer's input
    bool    gelu   = false; // CPU path: the experts' activation is GELU (else SiLU)
};

struct llama_hobbit_context {
    explicit llama_hobbit_context(std::shared_ptr<llama_hobbit_cache> cache);
    llama_hobbit_context(const llama_hobbit_context &) = delete;
    llama_hobbit_context & operator=(const llama_hobbit_context &) = delete;
    ~llama_hobbit_context();

    std::shared_ptr<llama_hobbit_cache> cache;

    llama_hobbit_job                   job;       // the layer being served
    std::vector<int>                   pins;      // entries pinned for the wave being computed
    std::vector<llama_hobbit_decision> decisions; // scratch of one wave
    std::vector<llama_hobbit_load_ptr> loads;     // the wave's reads, and copies others read that it waits for
    std::vector<llama_hobbit_load_ptr> waits;
    std::chrono::steady_clock::time_point submitted_at{}; // when the wave's loads were submitted
    std::chrono::steady_clock::time_point routed_at{};    // when its route op returned (CPU path)
    size_t cpu_bytes[LLAMA_HOBBIT_N_LVL] = {};            // expert bytes the wave gave to the CPU
    bool   cpu_probe = false;                             // ... as a probe of its rate (hobbit-planner.h)
    std::vector<char> cpu_scratch;    // the CPU experts op's x and activations, quantized, per route
    double cpu_busy_ms = 0.0;         // the wave's longest: its CPU experts' time once the threads run
    int    cpu_threads = 0;           // the threads that computed the wave's CPU experts (0: none)
    llama_hobbit_workers cpu_workers; // the threads that compute them with the graph's thread
    int n_threads = 1;                // the CPU threads of the ubatch being computed (llama_context's)
    // warming (hobbit-warm.h): the expert of layer warm_il, at warm_lvl, that the workers read ahead
    // in warm_parts parts (-1: none)
    int warm_il = -1, warm_expert = -1, warm_lvl = 0, warm_parts = 0;

    bool        failed = false; // the ubatch being computed hit a fault
    std::string error;          // the first one

    // prefetch: what earlier layers predicted for each layer, to measure accuracy per depth
    std::vector<uint8_t> predicted;  // [il][expert] bit d-1: predicted at depth d
    std::vector<uint8_t> pred_made;  // [il] bit d-1: a prediction at depth d was made for il
    int    depth = 1;                // prefetch depth in use (adapts when the policy says auto)
    int    graph_depth = LLAMA_HOBBIT_PREFETCH_MAX; // the layers ahead the graph being built predicts (llama_hobbit_graph_key)
    double accuracy[LLAMA_HOBBIT_PREFETCH_MAX] = { 1.0, 1.0, 1.0 }; // running averages per depth
    double compute_ms = -1.0;        // running average of compute between two MoE layers (-1: none yet)
    double between_ms = 0.0;         // compute between MoE layers not yet added to the cache's stats
    double gpu_gap_ms = 0.0;         // ... of it, until the host had the next layer's inputs (GPU tier)
    double stall_ms   = -1.0;        // running average of the wait in a layer's first wave (-1: none yet)
    int    il_prev    = INT_MAX;     // the layer served before (one not after it starts a new pass)
    std::chrono::steady_clock::time_point pass_at{}; // when the last pass started
    bool   pass_decode = false;      // ... and whether it was a decode
    std::chrono::steady_clock::time_point served_at{};  // when the last wave was served
    int served_il = INT_MAX;  // the layer served last (INT_MAX: none yet)
    std::chrono::steady_clock::time_point started_at{}; // when the current wave started
    std::chrono::steady_clock::time_point inputs_at{};  // when a layer's inputs last reached the host (GPU tier)

    void fail(const std::string & msg) {
        if (!failed) {
            failed = true;
            error  = msg;
        }
    }

    // the userdata of the op for (il, wave, n_waves); stable while the context lives
    llama_hobbit_op * op(int il, int wave, int n_waves);

    // time a layer's first wave (for the prefetch depth): before and after serving it
    void wave_started(int il, int wave);
    void wave_served(int il, int wave);
    // GPU tier: a layer's inputs reached the host (the GPU's work since the last layer is done)
    void inputs_arrived() { inputs_at = std::chrono::steady_clock::now(); }

private:
    std::vector<std::unique_ptr<llama_hobbit_op>> ops;
};
