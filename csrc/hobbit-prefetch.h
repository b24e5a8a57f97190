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
