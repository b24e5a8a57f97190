// HOBBIT warming (GPU tier): the next layer's predicted CPU miss, read into the CPU's caches
// while the GPU computes.
//
// Between two MoE layers of a decode the host's memory sits idle: the GPU computes the layer's
// hits and the next layer's attention and router (on the H200/H100 machines about 0.13 ms a
// layer), while the CPU waits. And a core reads what it read a moment ago from its own L2 at
// several times the rate of memory (scripts/cache-warm-probe.py: 13 MiB summed by 16 threads
// at 71 GB/s cold, 416 GB/s when the same threads had just read the same parts; with the parts
// dealt to other threads, no faster than cold). So once a layer's CPU experts are done, the
// next MoE layer's router is applied to this layer's input on the CPU (as prefetch predicts),
// its most important predicted expert that VRAM does not hold is taken as the CPU's next miss,
// and each worker of the context's pool reads its part of that expert (at the level the
// policy would load it at) in the background. When the next layer's CPU experts op computes
// that expert, each worker computes the same part (hobbit-cpu-expert.h: a task's static parts),
// and the graph's thread and any worker that is done take the rest as they come. The op first
// stops the warming where it got to (hobbit-workers.h: post, cancelled). A wrong guess costs
// only memory traffic that was idle; the output never depends on it.
#pragma once

#include "hobbit-cpu-expert.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

// part p of n_parts of an expert's work: FFN rows [r0, r1) of its first `rows` (cut at multiples
// of llama_hobbit_cpu_row_unit) and output rows [o0, o1) (of down's ne1); parts 0..n_parts-1
// cover each row once
struct llama_hobbit_part {
    int64_t r0, r1;
    int64_t o0, o1;
};
llama_hobbit_part llama_hobbit_warm_part(const llama_hobbit_cpu_weights & w, int64_t rows, int p, int n_parts);

// reads part `part` of expert e of w (gate and up rows, then down rows: the order the op reads
// them in) a cache line at a time, until done or stop() returns true (asked every 16 KiB);
// returns the bytes read
size_t llama_hobbit_warm_touch(const llama_hobbit_cpu_weights & w, int e, const llama_hobbit_part & part,
                               const std::function<bool()> & stop);

// a router's weights on the host, as floats: logits = W x (+ b)
struct llama_hobbit_router_host {
    int64_t n_embd   = 0;
    int64_t n_expert = 0;
    std::vector<float> w; // [n_expert][n_embd]
    std::vector<float> b; // [n_expert] or empty
    std::vector<float> sel_bias; // [n_expert] the selection bias (ffn_exp_probs_b) or empty

    bool empty() const { return w.empty(); }
    // logits [n_expert] of x [n_embd]
    void logits(const float * x, float * out) const;
};

// the expert a warm takes: of `need` (the predicted share of each expert, -1: not predicted), the
// most needed one that `cached` does not hold (cached[e] != 0); -1 if none
int llama_hobbit_warm_pick(const std::vector<float> & need, const std::vector<uint8_t> & cached);
