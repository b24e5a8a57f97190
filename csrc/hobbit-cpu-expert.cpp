#include "hobbit-cpu-expert.h"

#include "ggml-cpu.h"

#include <algorithm>
#include <cmath>

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
