// HOBBIT CPU experts (GPU tier): the misses of a decode the planner gives to the CPU.
//
// They are computed straight from the host tier's pinned copies by one graph op on all of the
// CPU backend's threads (hobbit-graph.cpp), instead of three mul_mat_id, a GLU and an add per
// level: a decode's layer then pays for one op, and for nothing when no route goes to the CPU.
// The FFN dimension of an expert is cut into slices of whole blocks; slice s computes
//
//     partial_s = down[:, s] . act(gate[s, :] . x) * (up[s, :] . x)
//
// with the CPU backend's own dot products (x and the activations quantized to the weights'
// vec_dot type, as ggml's mul_mat does), and the partials are summed in slice order, so the
// result does not depend on the number of threads.
#pragma once

#include "ggml.h"

#include <vector>

// the three projections of one level of one layer: [ne0, ne1, n_expert] tensors in host memory
// (gate and up [n_embd, n_ff], down [n_ff, n_embd])
struct llama_hobbit_cpu_weights {
    const ggml_tensor * gate;
    const ggml_tensor * up;
    const ggml_tensor * down;
};

// a route of a decode computed on the CPU: token, route of the token, level, expert
struct llama_hobbit_cpu_route {
    int token;
    int route;
    int lvl;
    int expert;
};

// the most slices an expert is cut into
constexpr int LLAMA_HOBBIT_CPU_SLICES = 16;

// how many slices the FFN of w is cut into (1..LLAMA_HOBBIT_CPU_SLICES); 0 if the CPU backend
// cannot compute these types or shapes
int llama_hobbit_cpu_expert_slices(const llama_hobbit_cpu_weights & w);

// the first FFN row of slice s of n_slices of w (n_ff for s = n_slices): a split miss's CPU
// computes the slices before llama_hobbit_cpu_split_slices(n_slices), the GPU the rows from there on
int64_t llama_hobbit_cpu_slice_row(const llama_hobbit_cpu_weights & w, int s, int n_slices);
constexpr int llama_hobbit_cpu_split_slices(int n_slices) { return n_slices/2; }

// slice s of n_slices of expert e on input x (n_embd floats): adds nothing, writes partial
// (n_embd floats). scratch is the calling thread's; it grows as needed (may throw bad_alloc).
void llama_hobbit_cpu_expert_slice(const llama_hobbit_cpu_weights & w, int e, bool gelu, const float * x, int s,
                                   int n_slices, float * partial, std::vector<char> & scratch);
