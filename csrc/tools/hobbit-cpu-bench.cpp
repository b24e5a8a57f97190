// hobbit-cpu-bench: how fast the GPU tier's CPU experts op (hobbit-cpu-expert.h) reads a
// decode's missed experts, against a plain read of the same bytes by the same threads.
//
//   hobbit-cpu-bench [n_embd n_ff type n_expert threads reps routes]
//   hobbit-cpu-bench 256 32768 q8_0 64 16 300 2     # the benchmark model's experts (BENCHMARKS.md)
//
// The experts sit in one host buffer (random weights, quantized), which should be several times
// the last-level cache (64 of those experts: 1.6 GiB), or the reads are partly the cache's, as
// a decode's are not; each call computes `routes`
// distinct experts, picked at random, for one token, as a layer's CPU misses are. It prints the
// medians, in GB/s of expert weights: the op on the threads (OpenMP where the build has it, as
// in a decode), a plain sum of the same experts' bytes on the same threads, and, on one thread
// with the expert in the caches, each pass of the op alone (its compute rate).

#include "hobbit-cpu-expert.h"
#include "hobbit-workers.h"
#include "hobbit-median.h"

#include "ggml.h"
#include "ggml-cpu.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

double ms_since(clock_type::time_point t0) {
    return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

ggml_type parse_type(const std::string & name) {
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const char * n = ggml_type_name((ggml_type) t);
        if (n && name == n) {
            return (ggml_type) t;
        }
    }
    return GGML_TYPE_COUNT;
}

// t's data: rows quantized from random values, the first 64 rows' bytes repeated over the rest
void fill(ggml_tensor * t, std::mt19937 & rng) {
    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
    const int64_t rows = std::min<int64_t>(64, ggml_nrows(t));
    std::vector<float> f(size_t(rows*t->ne[0]));
    for (auto & v : f) {
        v = uni(rng);
    }
    const size_t row_bytes = ggml_row_size(t->type, t->ne[0]);
    std::vector<char> q(size_t(rows)*row_bytes);
    ggml_quantize_chunk(t->type, f.data(), q.data(), 0, rows, t->ne[0], nullptr);
    for (int64_t r = 0; r < ggml_nrows(t); ++r) {
        memcpy((char *) t->data + r*row_bytes, q.data() + (r % rows)*row_bytes, row_bytes);
    }
}

} // namespace

int main(int argc, char ** argv) {
    const int64_t n_embd   = argc > 1 ? atoll(argv[1]) : 256;
    const int64_t n_ff     = argc > 2 ? atoll(argv[2]) : 32768;
    const ggml_type type   = parse_type(argc > 3 ? argv[3] : "q8_0");
    const int n_expert     = argc > 4 ? atoi(argv[4]) : 64;
    const int n_threads    = argc > 5 ? atoi(argv[5]) : 4;
    const int reps         = argc > 6 ? atoi(argv[6]) : 100;
    const int n_routes     = argc > 7 ? atoi(argv[7]) : 2;
    if (type == GGML_TYPE_COUNT || n_expert < n_routes || n_routes < 1 || n_threads < 1 || reps < 1) {
        fprintf(stderr, "usage: %s [n_embd n_ff type n_expert threads reps routes] (routes <= n_expert)\n", argv[0]);
        return 1;
    }
    if (n_embd <= 0 || n_ff <= 0 || n_embd % ggml_blck_size(type) != 0 || n_ff % ggml_blck_size(type) != 0) {
        fprintf(stderr, "%s: the CPU cannot compute %s experts of [%lld x %lld]: rows must be whole blocks of %lld\n", argv[0],
                ggml_type_name(type), (long long) n_embd, (long long) n_ff, (long long) ggml_blck_size(type));
        return 1;
    }
    ggml_cpu_init();
    // the experts' memory is ours, so that too little of it is an error, not ggml's abort
    const size_t mem_size = ggml_tensor_overhead()*4 + 3*ggml_row_size(type, n_embd)*size_t(n_ff)*size_t(n_expert) + 1024;
    std::unique_ptr<void, decltype(&free)> mem(malloc(mem_size), &free);
    if (!mem) {
        fprintf(stderr, "%s: cannot allocate %.1f MiB for the experts\n", argv[0], mem_size/1048576.0);
        return 1;
    }
    ggml_init_params params = { mem_size, mem.get(), false };
    ggml_context * ctx = ggml_init(params);
    ggml_tensor * gate = ggml_new_tensor_3d(ctx, type, n_embd, n_ff, n_expert);
    ggml_tensor * up   = ggml_new_tensor_3d(ctx, type, n_embd, n_ff, n_expert);
    ggml_tensor * down = ggml_new_tensor_3d(ctx, type, n_ff, n_embd, n_expert);
    std::mt19937 rng(42);
    fill(gate, rng);
    fill(up, rng);
    fill(down, rng);
    const llama_hobbit_cpu_weights w = { gate, up, down };
    if (llama_hobbit_cpu_expert_slices(w) == 0) {
        fprintf(stderr, "%s: the CPU cannot compute %s experts of this shape\n", argv[0], ggml_type_name(type));
        return 1;
    }
    const double expert_bytes = double(w.gate->nb[2] + w.up->nb[2] + w.down->nb[2]);
    std::uniform_real_distribution<float> uni(-0.2f, 0.2f);
    std::vector<float> x(size_t(n_embd*n_routes));
    for (auto & v : x) {
        v = uni(rng);
    }
    std::vector<float> out(size_t(n_embd*n_routes));
    llama_hobbit_workers pool;
    std::vector<char> scratch;
    std::vector<int> experts(n_expert);
    for (int e = 0; e < n_expert; ++e) {
        experts[e] = e;
    }

    // the op, as a layer's CPU misses
    std::vector<double> op_rate, busy_rate, sum_rate;
    volatile uint64_t sink = 0;
    for (int r = 0; r < reps + 3; ++r) {
        std::shuffle(experts.begin(), experts.end(), rng); // the call's experts: the first n_routes
        std::vector<llama_hobbit_cpu_task> tasks;
        for (int k = 0; k < n_routes; ++k) {
            llama_hobbit_cpu_task t = { w, experts[k], x.data() + k*n_embd, n_ff, out.data() + k*n_embd };
            tasks.push_back(t);
        }
        const auto t0 = clock_type::now();
        const llama_hobbit_cpu_run run = llama_hobbit_cpu_experts(tasks, false, n_threads, pool, scratch);
        const double ms = ms_since(t0);
        // the same experts' bytes summed by the same threads, each a share of every matrix
        const auto t1 = clock_type::now();
        std::vector<uint64_t> part(size_t(n_threads), 0);
        llama_hobbit_parallel(pool, n_threads, [&](int i, int n) {
            uint64_t s = 0;
            for (const auto & t : tasks) {
                for (const ggml_tensor * m : { w.gate, w.up, w.down }) {
                    const size_t words = m->nb[2]/8; // thread i sums words [j0, j1) of the expert's matrix
                    const size_t j0 = words*size_t(i)/size_t(n), j1 = words*size_t(i + 1)/size_t(n);
                    const uint64_t * p = (const uint64_t *) ((const char *) m->data + t.expert*m->nb[2]);
                    for (size_t j = j0; j < j1; ++j) {
                        s += p[j];
                    }
                }
            }
            part[size_t(i)] = s;
        });
        const double sum_ms = ms_since(t1);
        for (uint64_t s : part) {
            sink += s;
        }
        if (r >= 3) { // warm-up
            op_rate.push_back(n_routes*expert_bytes/ms/1e6);
            busy_rate.push_back(n_routes*expert_bytes/run.busy_ms/1e6);
            sum_rate.push_back(n_routes*expert_bytes/sum_ms/1e6);
        }
    }

    // one thread, one expert in the caches (its first rows only, when the whole one is larger
    // than 8 MiB): each pass's compute rate
    const int64_t unit = llama_hobbit_cpu_row_unit(w);
    const int64_t rows = std::max(unit, std::min<int64_t>(n_ff, int64_t(8.0*1024*1024/expert_bytes*n_ff))/unit*unit);
    std::vector<char> xq(llama_hobbit_cpu_x_bytes(w)), aq(llama_hobbit_cpu_act_bytes(w, rows));
    std::vector<float> act((size_t(rows)));
    llama_hobbit_cpu_quantize_x(w, x.data(), xq.data());
    std::vector<double> rows_rate, down_rate;
    for (int r = 0; r < 23; ++r) {
        const auto t0 = clock_type::now();
        llama_hobbit_cpu_expert_rows(w, 0, false, xq.data(), 0, rows, aq.data(), act.data());
        const double rows_ms = ms_since(t0);
        const auto t1 = clock_type::now();
        llama_hobbit_cpu_expert_down(w, 0, aq.data(), rows, 0, n_embd, out.data());
        const double down_ms = ms_since(t1);
        if (r >= 3) {
            rows_rate.push_back(double(2*rows*w.gate->nb[1])/rows_ms/1e6);
            down_rate.push_back(double(n_embd*ggml_row_size(type, rows))/down_ms/1e6);
        }
    }
    (void) sink;
    printf("%s experts [%lld x %lld], %.1f MiB each; %d routes a call on %d threads (%s), median of %d calls:\n",
           ggml_type_name(type), (long long) n_embd, (long long) n_ff, expert_bytes/1048576.0, n_routes, n_threads,
           llama_hobbit_parallel_openmp() ? "OpenMP" : "HOBBIT's workers", reps);
    printf("  CPU experts op %.1f GB/s (its threads' busy time: %.1f); plain sum of the same bytes %.1f GB/s\n",
           median(op_rate), median(busy_rate), median(sum_rate));
    printf("  one thread, in cache (%lld FFN rows): gate+up rows %.1f GB/s, down %.1f GB/s\n",
           (long long) rows, median(rows_rate), median(down_rate));
    ggml_free(ctx);
    return 0;
}
