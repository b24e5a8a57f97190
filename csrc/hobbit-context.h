// HOBBIT per-context state: what one llama_context is doing with its model's expert cache.
//
// A llama_context on a HOBBIT model owns one (llama_context::hobbit). It holds the pins of the
// wave its graph is computing (released when its next wave starts and when the ubatch ends,
// also if the graph stopped early), the layer job being served, a read buffer, and the first
// error of the ubatch, which makes llama_decode fail.
#pragma once

#include "hobbit-cache.h"
#include "hobbit-policy.h"
#include "hobbit-store.h"

#include <memory>
#include <string>
#include <vector>

struct llama_hobbit_context;

// what one route op of the graph serves: the op's userdata
struct llama_hobbit_op {
    llama_hobbit_context * hctx;
    int il;
    int wave;
    int n_waves;
};

struct llama_hobbit_context {
    explicit llama_hobbit_context(std::shared_ptr<llama_hobbit_cache> cache) : cache(std::move(cache)) {}
    llama_hobbit_context(const llama_hobbit_context &) = delete;
    llama_hobbit_context & operator=(const llama_hobbit_context &) = delete;
    ~llama_hobbit_context();

    std::shared_ptr<llama_hobbit_cache> cache;

    llama_hobbit_job                   job;       // the layer being served
    std::vector<int>                   pins;      // entries pinned for the wave being computed
    std::vector<llama_hobbit_decision> decisions; // scratch of one wave
    llama_hobbit_bounce                bounce;    // O_DIRECT staging for this context's reads

    bool        failed = false; // the ubatch being computed hit a fault
    std::string error;          // the first one

    void fail(const std::string & msg) {
        if (!failed) {
            failed = true;
            error  = msg;
        }
    }

    // the userdata of the route op for (il, wave, n_waves); stable while the context lives
    llama_hobbit_op * op(int il, int wave, int n_waves);

private:
    std::vector<std::unique_ptr<llama_hobbit_op>> ops;
};
