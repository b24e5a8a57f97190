#include "hobbit-cpu-expert.h"
#include "hobbit-warm.h"
#include "hobbit-workers.h"

#include "ggml-cpu.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <utility>

namespace {

// as ggml-cpu's GELU (tanh approximation) and SiLU
float cpu_gelu(float x) {
    constexpr float SQRT_2_OVER_PI = 0.79788456080286535587989211986876f;
    constexpr float GELU_COEF_A    = 0.044715f;
    return 0.5f*x*(1.0f + tanhf(SQRT_2_OVER_PI*x*(1.0f + GELU_COEF_A*x*x)));
}

float cpu_silu(float x) {
    return x/(1.0f + expf(-x));
}

// the width of a slice's unit: whole blocks of down's rows and of the activations' quantization
int64_t cpu_slice_unit(const ggml_tensor * down) {
    const ggml_type vd = ggml_get_type_traits_cpu(down->type)->vec_dot_type;
    return std::max<int64_t>(ggml_blck_size(down->type), ggml_blck_size(vd));
}

size_t align64(size_t n) {
    return (n + 63) & ~size_t(63);
}

// llama_hobbit_cpu_experts' chunks
constexpr int64_t FFN_CHUNK = 128; // FFN rows a chunk of the first pass (rounded up to whole units)
constexpr int64_t OUT_CHUNK = 8;   // output rows a chunk of the second

} // namespace

int llama_hobbit_cpu_expert_slices(const llama_hobbit_cpu_weights & w) {
    if (!w.gate || !w.up || !w.down || w.gate->type != w.up->type) {
        return 0;
    }
    const auto * tg = ggml_get_type_traits_cpu(w.gate->type);
    const auto * td = ggml_get_type_traits_cpu(w.down->type);
    if (!tg->vec_dot || !td->vec_dot || !ggml_get_type_traits_cpu(tg->vec_dot_type)->from_float ||
            !ggml_get_type_traits_cpu(td->vec_dot_type)->from_float) {
        return 0;
    }
    const int64_t n_embd = w.gate->ne[0], n_ff = w.gate->ne[1];
    if (w.up->ne[0] != n_embd || w.up->ne[1] != n_ff || w.down->ne[0] != n_ff || w.down->ne[1] != n_embd ||
            n_embd % ggml_blck_size(tg->vec_dot_type) != 0) {
        return 0;
    }
    const int64_t unit = cpu_slice_unit(w.down);
    if (n_ff % unit != 0) {
        return 0;
    }
    return (int) std::min<int64_t>(LLAMA_HOBBIT_CPU_SLICES, n_ff/unit);
}

int64_t llama_hobbit_cpu_slice_row(const llama_hobbit_cpu_weights & w, int s, int n_slices) {
    const int64_t unit = cpu_slice_unit(w.down);
    return int64_t(s)*(w.gate->ne[1]/unit)/n_slices*unit;
}

int llama_hobbit_cpu_split_slices(int n_slices, double share) {
    if (n_slices < 2) {
        return 0;
    }
    return std::clamp((int) std::lround(share*n_slices), 1, n_slices - 1);
}

int64_t llama_hobbit_cpu_row_unit(const llama_hobbit_cpu_weights & w) {
    return cpu_slice_unit(w.down);
}

size_t llama_hobbit_cpu_x_bytes(const llama_hobbit_cpu_weights & w) {
    return ggml_row_size(ggml_get_type_traits_cpu(w.gate->type)->vec_dot_type, w.gate->ne[0]);
}

size_t llama_hobbit_cpu_act_bytes(const llama_hobbit_cpu_weights & w, int64_t n_rows) {
    return ggml_row_size(ggml_get_type_traits_cpu(w.down->type)->vec_dot_type, n_rows);
}

void llama_hobbit_cpu_quantize_x(const llama_hobbit_cpu_weights & w, const float * x, void * xq) {
    const ggml_type vg = ggml_get_type_traits_cpu(w.gate->type)->vec_dot_type;
    ggml_get_type_traits_cpu(vg)->from_float(x, xq, w.gate->ne[0]);
}

void llama_hobbit_cpu_expert_rows(const llama_hobbit_cpu_weights & w, int e, bool use_gelu, const void * xq,
                                  int64_t j0, int64_t j1, void * actq, float * act) {
    const ggml_tensor * gate = w.gate;
    const ggml_tensor * up   = w.up;
    const int64_t n_embd = gate->ne[0];
    const auto * tg = ggml_get_type_traits_cpu(gate->type);
    const ggml_type vd = ggml_get_type_traits_cpu(w.down->type)->vec_dot_type;
    const char * g_rows = (const char *) gate->data + e*gate->nb[2];
    const char * u_rows = (const char *) up->data   + e*up->nb[2];
    for (int64_t j = j0; j < j1; ++j) {
        float g = 0.0f, u = 0.0f;
        tg->vec_dot((int) n_embd, &g, 0, g_rows + j*gate->nb[1], 0, xq, 0, 1);
        tg->vec_dot((int) n_embd, &u, 0, u_rows + j*up->nb[1],   0, xq, 0, 1);
        act[j - j0] = (use_gelu ? cpu_gelu(g) : cpu_silu(g))*u;
    }
    ggml_get_type_traits_cpu(vd)->from_float(act, (char *) actq + ggml_row_size(vd, j0), j1 - j0);
}

void llama_hobbit_cpu_expert_down(const llama_hobbit_cpu_weights & w, int e, const void * actq, int64_t n_rows,
                                  int64_t i0, int64_t i1, float * out) {
    const ggml_tensor * down = w.down;
    const auto * td = ggml_get_type_traits_cpu(down->type);
    const char * d_rows = (const char *) down->data + e*down->nb[2];
    for (int64_t i = i0; i < i1; ++i) {
        td->vec_dot((int) n_rows, &out[i], 0, d_rows + i*down->nb[1], 0, actq, 0, 1);
    }
}

llama_hobbit_cpu_run llama_hobbit_cpu_experts(const std::vector<llama_hobbit_cpu_task> & tasks, bool gelu,
                                              int n_threads, llama_hobbit_workers & pool, std::vector<char> & scratch,
                                              bool own_pool) {
    llama_hobbit_cpu_run run;
    if (tasks.empty()) {
        return run;
    }
    // each task's x and activations, quantized, in the scratch; the units of work of each pass:
    // (task, first row)
    std::vector<size_t> xq(tasks.size()), aq(tasks.size());
    std::vector<int64_t> chunk(tasks.size());
    std::vector<std::pair<size_t, int64_t>> ffn_units, out_units;
    struct static_part {
        size_t k; // the task
        int    p; // its part: thread p + 1 computes it first
        llama_hobbit_part rows;
    };
    std::vector<static_part> parts;
    size_t bytes = 0;
    for (size_t k = 0; k < tasks.size(); ++k) {
        const llama_hobbit_cpu_task & t = tasks[k];
        const int64_t unit = llama_hobbit_cpu_row_unit(t.w);
        chunk[k] = (FFN_CHUNK + unit - 1)/unit*unit;
        xq[k]    = bytes;
        bytes   += align64(llama_hobbit_cpu_x_bytes(t.w));
        aq[k]    = bytes;
        bytes   += align64(llama_hobbit_cpu_act_bytes(t.w, t.rows));
        if (t.parts > 0) {
            for (int p = 0; p < t.parts; ++p) {
                parts.push_back({ k, p, llama_hobbit_warm_part(t.w, t.rows, p, t.parts) });
            }
            continue;
        }
        for (int64_t j = 0; j < t.rows; j += chunk[k]) {
            ffn_units.emplace_back(k, j);
        }
        for (int64_t i = 0; i < t.w.gate->ne[0]; i += OUT_CHUNK) {
            out_units.emplace_back(k, i);
        }
    }
    scratch.resize(bytes + 64);
    std::vector<double> busy(size_t(std::max(1, n_threads)), 0.0);
    char * base = (char *) (((uintptr_t) scratch.data() + 63) & ~uintptr_t(63));
    for (size_t k = 0; k < tasks.size(); ++k) {
        llama_hobbit_cpu_quantize_x(tasks[k].w, tasks[k].x, base + xq[k]);
    }

    // the static parts of a pass: each claimed once, first by its own thread (part p: thread p + 1)
    std::unique_ptr<std::atomic<bool>[]> claimed_ffn(new std::atomic<bool>[parts.size() + 1]());
    std::unique_ptr<std::atomic<bool>[]> claimed_out(new std::atomic<bool>[parts.size() + 1]());
    auto own_parts_then_rest = [&](int i, std::atomic<bool> * claimed, const auto & compute_part, const auto & dynamic) {
        for (size_t s = 0; s < parts.size(); ++s) {
            if (parts[s].p + 1 == i && !claimed[s].exchange(true)) {
                compute_part(s);
            }
        }
        dynamic();
        for (size_t s = 0; s < parts.size(); ++s) {
            if (!claimed[s].exchange(true)) {
                compute_part(s);
            }
        }
    };
    const auto parallel = [&](const std::function<void(int, int)> & fn) {
        return own_pool ? pool.run((int) busy.size(), fn) : llama_hobbit_parallel(pool, (int) busy.size(), fn);
    };

    // each thread times its own share, from when it starts (a thread that slept starts late)
    std::atomic<bool> out_of_memory{false};
    std::atomic<size_t> next_ffn{0}, next_out{0};
    const int threads_ffn = parallel([&](int i, int) {
        thread_local std::vector<float> act;
        const auto t_begin = std::chrono::steady_clock::now();
        const auto ffn_rows = [&](size_t k, int64_t j0, int64_t j1) {
            act.resize(size_t(chunk[k]));
            llama_hobbit_cpu_expert_rows(tasks[k].w, tasks[k].expert, gelu, base + xq[k], j0, j1, base + aq[k], act.data());
        };
        try {
            own_parts_then_rest(i, claimed_ffn.get(), [&](size_t s) {
                const size_t k = parts[s].k;
                for (int64_t j = parts[s].rows.r0; j < parts[s].rows.r1; j += chunk[k]) {
                    ffn_rows(k, j, std::min(parts[s].rows.r1, j + chunk[k]));
                }
            }, [&]() {
                for (size_t u = next_ffn.fetch_add(1); u < ffn_units.size(); u = next_ffn.fetch_add(1)) {
                    const size_t k = ffn_units[u].first;
                    ffn_rows(k, ffn_units[u].second, std::min(tasks[k].rows, ffn_units[u].second + chunk[k]));
                }
            });
        } catch (const std::exception &) {
            out_of_memory.store(true);
        }
        busy[i] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_begin).count();
    });
    if (out_of_memory.load()) {
        run.out_of_memory = true;
        return run;
    }
    const int threads_out = parallel([&](int i, int) {
        const auto t_begin = std::chrono::steady_clock::now();
        own_parts_then_rest(i, claimed_out.get(), [&](size_t s) {
            const size_t k = parts[s].k;
            const llama_hobbit_cpu_task & t = tasks[k];
            for (int64_t o = parts[s].rows.o0; o < parts[s].rows.o1; o += OUT_CHUNK) {
                llama_hobbit_cpu_expert_down(t.w, t.expert, base + aq[k], t.rows, o, std::min(parts[s].rows.o1, o + OUT_CHUNK),
                                             t.out);
            }
        }, [&]() {
            for (size_t u = next_out.fetch_add(1); u < out_units.size(); u = next_out.fetch_add(1)) {
                const size_t k = out_units[u].first;
                const llama_hobbit_cpu_task & t = tasks[k];
                const int64_t i0 = out_units[u].second, i1 = std::min(t.w.gate->ne[0], i0 + OUT_CHUNK);
                llama_hobbit_cpu_expert_down(t.w, t.expert, base + aq[k], t.rows, i0, i1, t.out);
            }
        });
        busy[i] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_begin).count();
    });
    run.threads = std::min(threads_ffn, threads_out);
    run.busy_ms = *std::max_element(busy.begin(), busy.end());
    return run;
}
