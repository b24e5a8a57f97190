// HOBBIT: a routed expert computed on the CPU from its quantized weights (hobbit-cpu-expert.h).
//
// An expert computed in chunks (any chunks: the same bits) must match two independent computations: ggml's own CPU graph
// (mul_mat, GLU, mul_mat on the same quantized expert: the same dot products, so almost exactly;
// GELU within its fp16 table's error)
// and a double-precision reference on the dequantized weights (within quantization error).
// Shapes the CPU backend cannot slice are refused with 0 slices. A warmed expert's static parts
// (hobbit-warm.h) cover its work once and change no bit, whoever computes them.

#include "hobbit-cpu-expert.h"
#include "hobbit-warm.h"
#include "hobbit-workers.h"

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

struct expert_set {
    ggml_context * ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    ggml_tensor * gate = nullptr, * up = nullptr, * down = nullptr;
    std::vector<float> gate_d, up_d, down_d; // dequantized, [expert][row][col]
};

void fill(ggml_tensor * t, std::vector<float> & deq, std::mt19937 & rng) {
    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
    const int64_t n = ggml_nelements(t);
    std::vector<float> f(n);
    for (auto & v : f) {
        v = uni(rng);
    }
    std::vector<uint8_t> q(ggml_nbytes(t));
    if (t->type == GGML_TYPE_F32) {
        memcpy(q.data(), f.data(), q.size());
    } else {
        ggml_quantize_chunk(t->type, f.data(), q.data(), 0, n/t->ne[0], t->ne[0], nullptr);
    }
    ggml_backend_tensor_set(t, q.data(), 0, q.size());
    deq.resize(n);
    if (t->type == GGML_TYPE_F32) {
        deq = f;
    } else {
        ggml_get_type_traits(t->type)->to_float(q.data(), deq.data(), n);
    }
}

// ggml's CPU graph on expert e: down . act(gate . x) * (up . x)
std::vector<float> ggml_expert(const expert_set & w, int e, bool gelu, const std::vector<float> & x,
                               ggml_backend_t backend) {
    ggml_init_params params = { ggml_tensor_overhead()*16 + ggml_graph_overhead(), nullptr, true };
    ggml_context * ctx = ggml_init(params);
    auto slice = [&](ggml_tensor * t) {
        return ggml_view_2d(ctx, t, t->ne[0], t->ne[1], t->nb[1], e*t->nb[2]);
    };
    ggml_tensor * xt   = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, (int64_t) x.size());
    ggml_tensor * g    = ggml_mul_mat(ctx, slice(w.gate), xt);
    ggml_tensor * u    = ggml_mul_mat(ctx, slice(w.up), xt);
    ggml_tensor * act  = gelu ? ggml_geglu_split(ctx, g, u) : ggml_swiglu_split(ctx, g, u);
    ggml_tensor * out  = ggml_mul_mat(ctx, slice(w.down), act);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, backend);
    ggml_backend_tensor_set(xt, x.data(), 0, ggml_nbytes(xt));
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    ggml_backend_graph_compute(backend, gf);
    std::vector<float> res(ggml_nelements(out));
    ggml_backend_tensor_get(out, res.data(), 0, ggml_nbytes(out));
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
    return res;
}

// the same in double precision on the dequantized weights, over the FFN rows [j0, j1) (all: -1)
std::vector<double> reference(const expert_set & w, int e, bool gelu, const std::vector<float> & x,
                              int64_t j0 = 0, int64_t j1 = -1) {
    const int64_t n_embd = w.gate->ne[0], n_ff = w.gate->ne[1];
    j1 = j1 < 0 ? n_ff : j1;
    std::vector<double> act(n_ff, 0.0), out(n_embd, 0.0);
    for (int64_t j = j0; j < j1; ++j) {
        double g = 0.0, u = 0.0;
        for (int64_t i = 0; i < n_embd; ++i) {
            g += double(w.gate_d[(e*n_ff + j)*n_embd + i])*x[i];
            u += double(w.up_d[(e*n_ff + j)*n_embd + i])*x[i];
        }
        const double a = gelu ? 0.5*g*(1.0 + std::tanh(0.7978845608028654*g*(1.0 + 0.044715*g*g))) : g/(1.0 + std::exp(-g));
        act[j] = a*u;
    }
    for (int64_t i = 0; i < n_embd; ++i) {
        for (int64_t j = 0; j < n_ff; ++j) {
            out[i] += double(w.down_d[(e*n_embd + i)*n_ff + j])*act[j];
        }
    }
    return out;
}

double nmse(const std::vector<float> & a, const std::vector<double> & ref) {
    double err2 = 0.0, ref2 = 0.0;
    for (size_t i = 0; i < a.size(); ++i) {
        err2 += (a[i] - ref[i])*(a[i] - ref[i]);
        ref2 += ref[i]*ref[i];
    }
    return ref2 > 0.0 ? err2/ref2 : INFINITY;
}

// share: the CPU's share of a split miss's rows (hobbit.split_cpu_pct)
bool run_case(ggml_type type_up, ggml_type type_down, int64_t n_embd, int64_t n_ff, bool gelu, double share,
              ggml_backend_t backend, std::mt19937 & rng) {
    const int n_expert = 3;
    expert_set w;
    ggml_init_params params = { ggml_tensor_overhead()*4, nullptr, true };
    w.ctx  = ggml_init(params);
    w.gate = ggml_new_tensor_3d(w.ctx, type_up, n_embd, n_ff, n_expert);
    w.up   = ggml_new_tensor_3d(w.ctx, type_up, n_embd, n_ff, n_expert);
    w.down = ggml_new_tensor_3d(w.ctx, type_down, n_ff, n_embd, n_expert);
    w.buf  = ggml_backend_alloc_ctx_tensors(w.ctx, backend);
    fill(w.gate, w.gate_d, rng);
    fill(w.up, w.up_d, rng);
    fill(w.down, w.down_d, rng);

    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
    std::vector<float> x(n_embd);
    for (auto & v : x) {
        v = uni(rng)*0.2f;
    }
    const llama_hobbit_cpu_weights cw = { w.gate, w.up, w.down };
    const int n_slices = llama_hobbit_cpu_expert_slices(cw);
    bool ok = n_slices >= 1 && n_slices <= LLAMA_HOBBIT_CPU_SLICES;
    double worst_ggml = 0.0, worst_ref = 0.0;
    // a split miss: the CPU computes the rows before the slice split_slices starts at, which is a
    // whole number of down's blocks inside the FFN
    const int head = llama_hobbit_cpu_split_slices(n_slices, share);
    const int64_t split_row = llama_hobbit_cpu_slice_row(cw, head, n_slices);
    const int64_t unit = llama_hobbit_cpu_row_unit(cw);
    ok = ok && llama_hobbit_cpu_slice_row(cw, 0, n_slices) == 0 && llama_hobbit_cpu_slice_row(cw, n_slices, n_slices) == n_ff;
    ok = ok && (n_slices < 2 || (split_row > 0 && split_row < n_ff && split_row % unit == 0));
    ok = ok && unit % ggml_blck_size(type_down) == 0;
    double worst_head = 0.0;
    bool same_for_any_chunks = true;
    // the expert over its first n_rows FFN rows, the rows in chunks of `chunk` units (0: one
    // chunk) and the outputs in chunks of out_chunk
    std::vector<char> xq(llama_hobbit_cpu_x_bytes(cw));
    auto expert = [&](int e, int64_t n_rows, int64_t chunk, int64_t out_chunk) {
        std::vector<char> aq(llama_hobbit_cpu_act_bytes(cw, n_rows));
        std::vector<float> act((size_t(n_rows))), out(n_embd, NAN);
        llama_hobbit_cpu_quantize_x(cw, x.data(), xq.data());
        const int64_t rows = chunk > 0 ? chunk*unit : n_rows;
        for (int64_t j = 0; j < n_rows; j += rows) {
            llama_hobbit_cpu_expert_rows(cw, e, gelu, xq.data(), j, std::min(n_rows, j + rows), aq.data(), act.data());
        }
        for (int64_t i = 0; i < n_embd; i += out_chunk) {
            llama_hobbit_cpu_expert_down(cw, e, aq.data(), n_rows, i, std::min(n_embd, i + out_chunk), out.data());
        }
        return out;
    };
    for (int e = 0; e < n_expert && ok; ++e) {
        const std::vector<float> sum = expert(e, n_ff, 0, n_embd);
        for (int64_t chunk : { 1, 3 }) { // chunks of the FFN and of the outputs change nothing
            same_for_any_chunks = same_for_any_chunks && expert(e, n_ff, chunk, 7) == sum;
        }
        const std::vector<float> head_sum = head > 0 ? expert(e, split_row, 1, 5) : std::vector<float>();
        if (head > 0) {
            worst_head = std::max(worst_head, nmse(head_sum, reference(w, e, gelu, x, 0, split_row)));
        }
        const std::vector<float> g = ggml_expert(w, e, gelu, x, backend);
        const std::vector<double> gd(g.begin(), g.end());
        worst_ggml = std::max(worst_ggml, nmse(sum, gd));
        worst_ref  = std::max(worst_ref, nmse(sum, reference(w, e, gelu, x)));
    }
    // every expert and a split miss's rows at once, on 1 and 4 threads: the bits of one at a time
    bool same_in_parallel = true;
    {
        llama_hobbit_workers pool;
        std::vector<char> cpu_scratch;
        std::vector<std::vector<float>> outs(n_expert + 1, std::vector<float>(n_embd));
        std::vector<llama_hobbit_cpu_task> tasks;
        for (int e = 0; e < n_expert; ++e) {
            tasks.push_back({ cw, e, x.data(), n_ff, outs[e].data() });
        }
        if (head > 0) {
            tasks.push_back({ cw, 1, x.data(), split_row, outs[n_expert].data() });
        }
        for (int threads : { 1, 4 }) {
            for (auto & o : outs) {
                std::fill(o.begin(), o.end(), NAN);
            }
            const llama_hobbit_cpu_run run = llama_hobbit_cpu_experts(tasks, gelu, threads, pool, cpu_scratch);
            same_in_parallel = same_in_parallel && !run.out_of_memory && run.threads >= 1 && run.threads <= threads &&
                               run.busy_ms >= 0.0;
            for (int e = 0; e < n_expert; ++e) {
                same_in_parallel = same_in_parallel && outs[e] == expert(e, n_ff, 0, n_embd);
            }
            if (head > 0) {
                same_in_parallel = same_in_parallel && outs[n_expert] == expert(1, split_row, 0, n_embd);
            }
        }
        // the first and last experts in static parts (as a warmed one), each computed first by its
        // own thread, on the pool or an OpenMP team, more parts than threads or fewer, right after
        // a warm of those parts was posted on the pool: the same bits
        for (int threads : { 1, 4 }) {
            for (int parts : { 3, 5 }) {
                for (bool own_pool : { false, true }) {
                    std::vector<llama_hobbit_cpu_task> with_parts = tasks;
                    with_parts.front().parts = parts;
                    with_parts[n_expert - 1].parts = parts;
                    for (auto & o : outs) {
                        std::fill(o.begin(), o.end(), NAN);
                    }
                    pool.post(threads, [&](int i, int) {
                        if (i >= 1 && i <= parts) {
                            llama_hobbit_warm_touch(cw, 0, llama_hobbit_warm_part(cw, n_ff, i - 1, parts),
                                                    [&pool] { return pool.cancelled(); });
                        }
                    });
                    const llama_hobbit_cpu_run run = llama_hobbit_cpu_experts(with_parts, gelu, threads, pool, cpu_scratch,
                                                                              own_pool);
                    same_in_parallel = same_in_parallel && !run.out_of_memory && run.threads >= 1;
                    for (int e = 0; e < n_expert; ++e) {
                        same_in_parallel = same_in_parallel && outs[e] == expert(e, n_ff, 0, n_embd);
                    }
                }
            }
        }
    }
    ok = ok && same_in_parallel;
    // ggml's GELU reads a table of fp16 values; this kernel computes it exactly
    const double ggml_tol = gelu ? 1e-4 : 1e-6;
    ok = ok && std::isfinite(worst_ggml) && worst_ggml < ggml_tol && std::isfinite(worst_ref) && worst_ref < 5e-3 &&
         std::isfinite(worst_head) && worst_head < 5e-3 && same_for_any_chunks;
    printf("  cpu expert: up=%-5s down=%-5s n_ff=%-5lld %s slices=%-2d nmse vs ggml %.2e, vs f64 %.2e, "
           "rows before %lld vs f64 %.2e, chunks %s, threads %s %s\n",
           ggml_type_name(type_up), ggml_type_name(type_down), (long long) n_ff, gelu ? "gelu" : "silu", n_slices,
           worst_ggml, worst_ref, (long long) split_row, worst_head, same_for_any_chunks ? "agree" : "DIFFER",
           same_in_parallel ? "agree" : "DIFFER", ok ? "OK" : "FAIL");
    ggml_backend_buffer_free(w.buf);
    ggml_free(w.ctx);
    return ok;
}

// shapes that cannot be cut into whole blocks: no slices
bool refuses_bad_shapes() {
    ggml_init_params params = { ggml_tensor_overhead()*8, nullptr, true };
    ggml_context * ctx = ggml_init(params);
    ggml_tensor * gate = ggml_new_tensor_3d(ctx, GGML_TYPE_Q8_0, 256, 96, 2);
    ggml_tensor * up   = ggml_new_tensor_3d(ctx, GGML_TYPE_Q8_0, 256, 96, 2);
    ggml_tensor * down_k = ggml_new_tensor_3d(ctx, GGML_TYPE_Q8_0, 96, 256, 2);   // 3 units of 32
    ggml_tensor * down_q4k = ggml_new_tensor_3d(ctx, GGML_TYPE_Q4_K, 96, 256, 2); // not a whole block of 256
    ggml_tensor * down_bad = ggml_new_tensor_3d(ctx, GGML_TYPE_Q8_0, 96, 128, 2); // 128 rows, not n_embd
    ggml_tensor * up_f16 = ggml_new_tensor_3d(ctx, GGML_TYPE_F16, 256, 96, 2);
    const bool ok = llama_hobbit_cpu_expert_slices({ gate, up, down_k }) == 3 &&
                    llama_hobbit_cpu_expert_slices({ gate, up, down_q4k }) == 0 &&
                    llama_hobbit_cpu_expert_slices({ gate, up, down_bad }) == 0 &&
                    llama_hobbit_cpu_expert_slices({ gate, up_f16, down_k }) == 0 &&  // gate and up differ
                    llama_hobbit_cpu_expert_slices({ gate, nullptr, down_k }) == 0;
    printf("  cpu expert: bad shapes refused %s\n", ok ? "OK" : "FAIL");
    ggml_free(ctx);
    return ok;
}

// a split miss's CPU share in slices: the nearest, at least one, one fewer than all
bool split_shares() {
    const bool ok = llama_hobbit_cpu_split_slices(16, 0.5) == 8 && llama_hobbit_cpu_split_slices(16, 0.62) == 10 &&
                    llama_hobbit_cpu_split_slices(16, 0.01) == 1 && llama_hobbit_cpu_split_slices(16, 0.99) == 15 &&
                    llama_hobbit_cpu_split_slices(3, 0.5) == 2 && llama_hobbit_cpu_split_slices(2, 0.9) == 1 &&
                    llama_hobbit_cpu_split_slices(1, 0.5) == 0;
    printf("  cpu expert: split shares %s\n", ok ? "OK" : "FAIL");
    return ok;
}

// warming: parts cover an expert's FFN rows (in whole units) and outputs once each, a touch reads
// exactly its part's bytes unless stopped, and the pick is the most needed expert not cached
bool warm_parts() {
    ggml_init_params params = { ggml_tensor_overhead()*8, nullptr, true };
    ggml_context * ctx = ggml_init(params);
    ggml_tensor * gate = ggml_new_tensor_3d(ctx, GGML_TYPE_Q8_0, 256, 2048, 2);
    ggml_tensor * up   = ggml_new_tensor_3d(ctx, GGML_TYPE_Q8_0, 256, 2048, 2);
    ggml_tensor * down = ggml_new_tensor_3d(ctx, GGML_TYPE_Q8_0, 2048, 256, 2);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx, ggml_backend_cpu_buffer_type());
    ggml_backend_buffer_clear(buf, 1);
    const llama_hobbit_cpu_weights w = { gate, up, down };
    const int64_t unit = llama_hobbit_cpu_row_unit(w);
    bool ok = unit == 32;
    for (int64_t rows : { int64_t(2048), int64_t(1024), int64_t(96) }) {
        for (int n_parts : { 1, 3, 15, 64 }) { // 64 parts of 96 rows: some parts have no rows
            int64_t next_r = 0, next_o = 0;
            size_t touched = 0;
            for (int p = 0; p < n_parts; ++p) {
                const llama_hobbit_part part = llama_hobbit_warm_part(w, rows, p, n_parts);
                ok = ok && part.r0 == next_r && part.r1 >= part.r0 && part.r0 % unit == 0 &&
                     (part.r1 % unit == 0 || part.r1 == rows) && part.o0 == next_o && part.o1 >= part.o0;
                next_r = part.r1;
                next_o = part.o1;
                const size_t bytes = size_t(part.r1 - part.r0)*(gate->nb[1] + up->nb[1]) + size_t(part.o1 - part.o0)*down->nb[1];
                ok = ok && llama_hobbit_warm_touch(w, 1, part, [] { return false; }) == bytes;
                touched += bytes;
            }
            ok = ok && next_r == rows && next_o == 256 && touched == size_t(rows)*(gate->nb[1] + up->nb[1]) + 256*down->nb[1];
        }
    }
    // stopped at once: nothing read; stopped after the first question: one block of gate and of up
    const llama_hobbit_part all = llama_hobbit_warm_part(w, 2048, 0, 1);
    int asked = 0;
    ok = ok && llama_hobbit_warm_touch(w, 0, all, [] { return true; }) == 0;
    ok = ok && llama_hobbit_warm_touch(w, 0, all, [&asked] { return asked++ >= 2; }) == 2*(16 << 10);
    // the pick
    ok = ok && llama_hobbit_warm_pick({ 0.2f, 0.7f, -1.0f, 0.1f }, { 0, 0, 0, 0 }) == 1;
    ok = ok && llama_hobbit_warm_pick({ 0.2f, 0.7f, -1.0f, 0.1f }, { 0, 1, 0, 0 }) == 0;
    ok = ok && llama_hobbit_warm_pick({ 0.2f, 0.7f, -1.0f, 0.1f }, { 1, 1, 0, 1 }) == -1;
    // a router on the host: W x + b
    llama_hobbit_router_host r;
    r.n_embd = 2;
    r.n_expert = 2;
    r.w = { 1.0f, 2.0f, -1.0f, 0.5f };
    r.b = { 0.25f, 0.0f };
    float logits[2];
    const float x[2] = { 3.0f, 4.0f };
    r.logits(x, logits);
    ok = ok && logits[0] == 11.25f && logits[1] == -1.0f;
    printf("  cpu expert: warm parts, touches and pick %s\n", ok ? "OK" : "FAIL");
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
    return ok;
}

} // namespace

int main() {
    ggml_backend_t backend = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(backend, 2);
    std::mt19937 rng(7);
    bool ok = refuses_bad_shapes();
    ok = split_shares() && ok;
    ok = warm_parts() && ok;
    ok = run_case(GGML_TYPE_Q8_0, GGML_TYPE_Q8_0, 256, 2048, false, 0.5, backend, rng) && ok;
    ok = run_case(GGML_TYPE_Q4_K, GGML_TYPE_Q4_K, 256, 2048, false, 0.62, backend, rng) && ok;
    ok = run_case(GGML_TYPE_Q4_0, GGML_TYPE_Q8_0, 256, 512, true, 0.3, backend, rng) && ok;
    ok = run_case(GGML_TYPE_F16, GGML_TYPE_F16, 64, 96, false, 0.5, backend, rng) && ok;
    ok = run_case(GGML_TYPE_Q8_0, GGML_TYPE_Q8_0, 256, 96, false, 0.9, backend, rng) && ok; // fewer units than slices
    ok = run_case(GGML_TYPE_Q8_0, GGML_TYPE_Q4_K, 256, 256, true, 0.5, backend, rng) && ok; // one slice
    ggml_backend_free(backend);
    printf("%s\n", ok ? "all passed" : "FAILED");
    return ok ? 0 : 1;
}
