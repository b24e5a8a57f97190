// HOBBIT: mul_mat_id on the CPU with negative ids.
//
// A negative id selects no matrix: its result row must be exactly zero (whatever the output
// buffer held before) and every other row must match a float reference.

#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

static bool run_case(ggml_type type_a, int n_mats, int n_used, int64_t m, int64_t n, int64_t k, std::mt19937 & rng) {
    ggml_init_params params = { ggml_tensor_overhead()*8 + ggml_graph_overhead(), nullptr, true };
    ggml_context * ctx = ggml_init(params);

    ggml_tensor * as  = ggml_new_tensor_3d(ctx, type_a, k, m, n_mats);
    ggml_tensor * b   = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, k, n_used, n);
    ggml_tensor * ids = ggml_new_tensor_2d(ctx, GGML_TYPE_I32, n_used, n);
    ggml_tensor * out = ggml_mul_mat_id(ctx, as, b, ids);

    ggml_backend_t backend = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(backend, 2);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, backend);

    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
    std::vector<float> a_f(k*m*n_mats), b_f(k*n_used*n);
    for (auto & x : a_f) { x = uni(rng); }
    for (auto & x : b_f) { x = uni(rng); }

    std::vector<uint8_t> a_q(ggml_nbytes(as));
    if (type_a == GGML_TYPE_F32) {
        memcpy(a_q.data(), a_f.data(), a_q.size());
    } else {
        ggml_quantize_chunk(type_a, a_f.data(), a_q.data(), 0, m*n_mats, k, nullptr);
    }
    ggml_backend_tensor_set(as, a_q.data(), 0, a_q.size());
    ggml_backend_tensor_set(b, b_f.data(), 0, ggml_nbytes(b));

    // every third route selects nothing; the rest pick distinct matrices per token
    std::vector<int32_t> id(n_used*n);
    for (int64_t t = 0; t < n; ++t) {
        for (int r = 0; r < n_used; ++r) {
            const int64_t i = t*n_used + r;
            id[i] = i % 3 == 0 ? -1 : int32_t((t + r*3) % n_mats);
        }
    }
    ggml_backend_tensor_set(ids, id.data(), 0, ggml_nbytes(ids));

    std::vector<float> garbage(ggml_nelements(out), NAN);
    ggml_backend_tensor_set(out, garbage.data(), 0, ggml_nbytes(out));

    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    const bool computed = ggml_backend_graph_compute(backend, gf) == GGML_STATUS_SUCCESS;

    std::vector<float> res(ggml_nelements(out));
    ggml_backend_tensor_get(out, res.data(), 0, ggml_nbytes(out));

    // reference from the dequantized matrices
    std::vector<float> a_d(a_f.size());
    if (type_a == GGML_TYPE_F32) {
        a_d = a_f;
    } else {
        ggml_get_type_traits(type_a)->to_float(a_q.data(), a_d.data(), (int64_t) a_d.size());
    }

    bool ok = computed;
    double err2 = 0.0, ref2 = 0.0;
    for (int64_t t = 0; t < n && ok; ++t) {
        for (int r = 0; r < n_used && ok; ++r) {
            const int32_t e = id[t*n_used + r];
            const float * row_out = res.data() + (t*n_used + r)*m;
            for (int64_t i = 0; i < m; ++i) {
                if (e < 0) {
                    if (row_out[i] != 0.0f) {
                        fprintf(stderr, "  row of skipped route (t=%lld, r=%d) is %f, not 0\n", (long long) t, r, row_out[i]);
                        ok = false;
                        break;
                    }
                    continue;
                }
                double ref = 0.0;
                for (int64_t j = 0; j < k; ++j) {
                    ref += double(a_d[(e*m + i)*k + j]) * double(b_f[(t*n_used + r)*k + j]);
                }
                err2 += (row_out[i] - ref)*(row_out[i] - ref);
                ref2 += ref*ref;
            }
        }
    }
    const double nmse = ref2 > 0 ? err2/ref2 : 0.0;
    ok = ok && std::isfinite(nmse) && nmse < 5e-3;
    printf("  mul_mat_id skip: type=%-5s n=%-3lld nmse=%.2e %s\n", ggml_type_name(type_a), (long long) n, nmse, ok ? "OK" : "FAIL");

    ggml_backend_buffer_free(buf);
    ggml_backend_free(backend);
    ggml_free(ctx);
    return ok;
}

int main() {
    std::mt19937 rng(42);
    bool ok = true;
    for (ggml_type type : { GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0, GGML_TYPE_Q4_K }) {
        for (int64_t n : { 1, 7, 33 }) {
            ok = run_case(type, 8, 2, 64, n, 256, rng) && ok;
        }
    }
    printf("%s\n", ok ? "all passed" : "FAILED");
    return ok ? 0 : 1;
}
