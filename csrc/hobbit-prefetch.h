// HOBBIT layer-level prefetch: predicting the experts of the next layers from this layer's
// router input, with the model's own gating function, top-k and normalisation.
//
// The graph applies the routers of layers l+1..l+d to layer l's router input (ggml matmuls);
// this turns their logits into predicted routes: per token the top-k experts by the gating
// function (plus a selection bias where the model has one), each with its share of the token's
// total weight, and optionally `width` more candidates beyond the top-k. An expert's predicted
// need is its largest predicted share, which picks the precision of its prefetch as the
// policy would pick it for a miss.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

struct llama_hobbit_prediction {
    int il    = -1; // the layer predicted
    int depth = 0;  // how many MoE layers ahead of the layer that predicted it
    std::vector<float>  need;     // [n_expert] largest predicted share, -1: not predicted
    std::vector<int8_t> widened;  // [n_expert] predicted only as a candidate beyond the top-k
};

// the expert gating function `func` (enum llama_expert_gating_func_type) applied to one logit
float llama_hobbit_gate(int func, float logit);

// predict from router logits [n_expert, n_tokens] (row stride nb1 bytes); bias: the selection
// bias of the target layer ([n_expert]) or nullptr
void llama_hobbit_predict(const char * logits, size_t nb1, int n_expert, int64_t n_tokens, int n_used,
                          int width, int gating_func, const float * bias, llama_hobbit_prediction & out);

// The prefetch depth (0..max_depth) expected to make a MoE layer fastest, from running
// averages: acc[d-1] the share of a layer's routes that a prediction made d layers ahead
// covered, wait_ms a layer's wait for its loads, compute_ms the compute between two MoE layers,
// reads_per_route the experts a prediction reads per route it stands for ((k + width)/k);
// a negative time means not measured yet (then 0).
int llama_hobbit_auto_depth(const double * acc, int max_depth, double wait_ms, double compute_ms,
                            double reads_per_route);

// The prefetch depth by measurement (the GPU tier's auto depth). There the planner computes
// misses on the CPU while copies fly, and a wrong prefetch takes the bus from the copies a
// layer waits for: what a depth saves cannot be read off the stalls as above. So depths are
// tried for a few decode passes (tokens) each, the time of a pass at each is kept as a running
// average of the median pass of each trial (one slow pass, such as the CPU's threads waking up
// after an idle stretch, does not decide a trial), and the fastest is used. A trial of a slower
// depth costs time, so they are few: the first round goes deeper only while each depth is
// faster than the one before, a depth that lost a trial waits twice as long for its next one
// (EXPLOIT passes, then 2x, 4x, ... up to MAX_BACKOFF x) and the deeper depths not timed yet
// the longest wait; when another depth becomes the fastest, the next waits start again from
// EXPLOIT (those already set run out).
struct llama_hobbit_depth_trial {
    static constexpr int SETTLE      = 1;  // passes after a switch that are not timed (the cache adjusts)
    static constexpr int TRY         = 4;  // timed passes of a trial
    static constexpr int EXPLOIT     = 48; // passes at the fastest depth between two trials
    static constexpr int MAX_BACKOFF = 8;  // the longest wait of a depth that keeps losing, in EXPLOIT periods

    static constexpr int MAX_DEPTH = 3;

    int    max_depth = MAX_DEPTH;
    int    depth     = 0;  // in use for the next pass
    double avg[MAX_DEPTH + 1] = { -1.0, -1.0, -1.0, -1.0 }; // ms per pass at each depth (-1: not timed yet)

    // a decode pass at `depth` took ms; returns the depth for the next pass
    int on_pass(double ms);

private:
    int     left     = SETTLE + TRY; // passes left in this phase
    bool    trying   = true;         // a trial (else the fastest depth runs)
    bool    climbing = true;         // the first round: one depth deeper after each that was the fastest
    int64_t passes   = 0;
    int64_t due[MAX_DEPTH + 1]     = {};          // the pass from which each depth may be tried again
    int     backoff[MAX_DEPTH + 1] = { 1, 1, 1, 1 }; // its wait after a lost trial, in EXPLOIT periods
    double  timed[EXPLOIT] = {}; // the timed passes of this phase (at most EXPLOIT - SETTLE)
    int     n        = 0;
    int     best() const;
    void    start(int d, bool trial);
};
