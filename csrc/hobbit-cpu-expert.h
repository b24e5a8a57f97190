// HOBBIT CPU experts (GPU tier): the misses of a decode the planner gives to the CPU.
//
// They are computed straight from the host tier's pinned copies by one graph op on all of the
// CPU backend's threads (hobbit-graph.cpp), instead of three mul_mat_id, a GLU and an add per
// level: a decode's layer then pays for one op, and for nothing when no route goes to the CPU.
// An expert is computed in two passes, each cut into chunks that the threads take as they come
// (a thread that starts late takes fewer):
//
//     rows  [j0, j1) of the FFN:   act[j] = act(gate[j, :] . x) * (up[j, :] . x)
//     rows  [i0, i1) of the output: out[i] = down[i, :] . act
//
// with the CPU backend's own dot products (x and the activations quantized to the weights'
// vec_dot type, as ggml's mul_mat does). Both read whole rows from the host tier, and each
// output is one dot product over its row, so the result does not depend on the chunks or the
// number of threads. The FFN is also cut into slices of whole blocks, whose boundaries are
// where a split miss (hobbit-planner.h) hands its rows from the CPU to the GPU.
#pragma once

#include "ggml.h"

#include <vector>

struct llama_hobbit_workers;

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

// the most slices an expert's FFN is cut into (their boundaries are where a split miss can be
// split; the computation itself goes by chunks)
constexpr int LLAMA_HOBBIT_CPU_SLICES = 16;

// how many slices the FFN of w is cut into (1..LLAMA_HOBBIT_CPU_SLICES); 0 if the CPU backend
// cannot compute these types or shapes (the planner then never gives w's experts to the CPU)
int llama_hobbit_cpu_expert_slices(const llama_hobbit_cpu_weights & w);

// the first FFN row of slice s of n_slices of w (n_ff for s = n_slices): a split miss's CPU
// computes the slices before llama_hobbit_cpu_split_slices(n_slices, share), the GPU the rows from
// there on
int64_t llama_hobbit_cpu_slice_row(const llama_hobbit_cpu_weights & w, int s, int n_slices);
// the slices of n_slices nearest to `share` of them (the CPU's share of a split miss), at least one
// and one fewer than all; 0 when there are too few to split
int llama_hobbit_cpu_split_slices(int n_slices, double share);

// rows of the FFN are cut at multiples of this (down's blocks and the activations' quantization)
int64_t llama_hobbit_cpu_row_unit(const llama_hobbit_cpu_weights & w);

// bytes of x quantized for gate and up, and of n_rows activations quantized for down
size_t llama_hobbit_cpu_x_bytes(const llama_hobbit_cpu_weights & w);
size_t llama_hobbit_cpu_act_bytes(const llama_hobbit_cpu_weights & w, int64_t n_rows);

// x (n_embd floats) quantized into xq (llama_hobbit_cpu_x_bytes)
void llama_hobbit_cpu_quantize_x(const llama_hobbit_cpu_weights & w, const float * x, void * xq);

// the FFN rows [j0, j1) of expert e (j0 a multiple of llama_hobbit_cpu_row_unit, j1 too or the
// FFN's end): their activations, quantized into actq at row j0's place. act: j1 - j0 floats of scratch
void llama_hobbit_cpu_expert_rows(const llama_hobbit_cpu_weights & w, int e, bool gelu, const void * xq,
                                  int64_t j0, int64_t j1, void * actq, float * act);

// the outputs [i0, i1) of expert e from the activations of its first n_rows FFN rows (all of
// them, or a split miss's rows before its split row): out[i] = down[i, :n_rows] . act
void llama_hobbit_cpu_expert_down(const llama_hobbit_cpu_weights & w, int e, const void * actq, int64_t n_rows,
                                  int64_t i0, int64_t i1, float * out);

// one route the CPU computes: expert `expert` of w on x (n_embd floats), over its first `rows` FFN
// rows (all of them, or a split miss's before its split row), into out (n_embd floats, overwritten)
struct llama_hobbit_cpu_task {
    llama_hobbit_cpu_weights w;
    int           expert;
    const float * x;
    int64_t       rows;
    float *       out;
    int           parts = 0; // > 0: its work is cut into this many static parts (llama_hobbit_warm_part),
                             // part p computed first by thread p + 1, which read it ahead (hobbit-warm.h)
};

// what computing a set of tasks took: the threads it ran on (the fewer of its two passes), the
// longest compute time of a thread (ms, each from when it started), and whether memory ran out
// in a thread (then no output is valid)
struct llama_hobbit_cpu_run {
    int    threads       = 0;
    double busy_ms       = 0.0;
    bool   out_of_memory = false;
};

// computes every task on up to n_threads threads (llama_hobbit_parallel over pool, the caller
// one of them; with own_pool always pool.run, whose thread i is the same worker each time): the
// FFN rows of every task in chunks, then the outputs in chunks, the threads taking each pass's
// chunks as they come, after each thread p + 1 took part p of the tasks with static parts (a part
// no thread took first is taken as the chunks are). The result does not depend on who computes
// what. scratch is kept between calls; growing it may throw std::bad_alloc, before any thread
// starts.
llama_hobbit_cpu_run llama_hobbit_cpu_experts(const std::vector<llama_hobbit_cpu_task> & tasks, bool gelu,
                                              int n_threads, llama_hobbit_workers & pool, std::vector<char> & scratch,
                                              bool own_pool = false);
