#include "hobbit-prefetch.h"

#include "llama-hparams.h"

#include <algorithm>
#include <cmath>
#include <numeric>

float llama_hobbit_gate(int func, float logit) {
    switch (func) {
        case LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID:
            return 1.0f/(1.0f + std::exp(-logit));
        case LLAMA_EXPERT_GATING_FUNC_TYPE_SQRT_SOFTPLUS:
            return std::sqrt(logit > 20.0f ? logit : std::log1p(std::exp(logit)));
        default:
            // softmax (and softmax over the selected weights): exp, normalised over the selected
            // experts below; the shift by the row maximum is applied by the caller
            return std::exp(logit);
    }
}

void llama_hobbit_predict(const char * logits, size_t nb1, int n_expert, int64_t n_tokens, int n_used,
                          int width, int gating_func, const float * bias, llama_hobbit_prediction & out) {
    out.need.assign(n_expert, -1.0f);
    out.widened.assign(n_expert, 0);
    const bool exp_gate = gating_func != LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID &&
                          gating_func != LLAMA_EXPERT_GATING_FUNC_TYPE_SQRT_SOFTPLUS;
    std::vector<float> g(n_expert), sel(n_expert);
    std::vector<int>   order(n_expert);
    const int n_pick = std::min(n_expert, n_used + std::max(0, width));
    for (int64_t t = 0; t < n_tokens; ++t) {
        const float * l = (const float *) (logits + t*nb1);
        const float shift = exp_gate ? *std::max_element(l, l + n_expert) : 0.0f;
        for (int e = 0; e < n_expert; ++e) {
            g[e]   = llama_hobbit_gate(gating_func, l[e] - shift);
            sel[e] = g[e] + (bias ? bias[e] : 0.0f);
        }
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + n_pick, order.end(),
                [&](int a, int b) { return sel[a] != sel[b] ? sel[a] > sel[b] : a < b; });
        float total = 0.0f;
        for (int i = 0; i < n_used && i < n_expert; ++i) {
            total += g[order[i]];
        }
        for (int i = 0; i < n_pick; ++i) {
            const int e = order[i];
            if (i < n_used) {
                const float share = total > 0.0f ? g[e]/total : 1.0f/float(n_used);
                out.need[e]    = std::max(out.need[e], share);
                out.widened[e] = 0;
            } else if (out.need[e] < 0.0f) {
                out.need[e]    = 0.0f;
                out.widened[e] = 1;
            }
        }
    }
}

int llama_hobbit_auto_depth(const double * acc, int max_depth, double wait_ms, double compute_ms,
                            double reads_per_route) {
    // Without prefetch loads and compute take turns: a layer takes compute + wait. Reading d
    // layers ahead hides up to d layers of compute of the wait, for the share of the routes the
    // prediction got right. But every predicted expert is a read, and a wrong one also evicts
    // a copy that may be needed: the disk then works about (1 - acc + r + (r - acc))*wait per
    // layer, which bounds the layer from below. A prefetch is a guess, so it is taken only
    // where this model says it saves a tenth of the layer's time. Where loads dwarf compute (a
    // slow disk, big experts) the answer is 0: measured on such a machine, every prefetch rule
    // that read ahead there was slower than none.
    if (wait_ms < 0.0 || compute_ms < 0.0) {
        return 0; // nothing measured yet
    }
    const double base = compute_ms + wait_ms;
    int    best   = 0;
    double best_t = 0.9*base;
    for (int d = 1; d <= max_depth; ++d) {
        const double a    = std::clamp(acc[d - 1], 0.0, 1.0);
        const double disk = (1.0 - a + reads_per_route + std::max(0.0, reads_per_route - a))*wait_ms;
        const double t    = std::max(base - a*std::min(d*compute_ms, wait_ms), disk);
        if (t < best_t*(1.0 - 1e-6)) { // a deeper depth must gain, not tie
            best   = d;
            best_t = t;
        }
    }
    return best;
}

int llama_hobbit_depth_trial::best() const {
    int b = -1;
    for (int d = 0; d <= max_depth; ++d) {
        if (avg[d] >= 0.0 && (b < 0 || avg[d] < avg[b])) {
            b = d;
        }
    }
    return b < 0 ? 0 : b;
}

int llama_hobbit_depth_trial::on_pass(double ms) {
    passes++;
    const int settled = trying ? SETTLE + TRY - left : SETTLE; // timed passes come after SETTLE
    // a pass far slower than the fastest depth's is a pause between generations, not a decode
    const int b = best();
    const bool outlier = avg[b] > 0.0 && ms > 4.0*avg[b];
    if (settled >= SETTLE && !outlier && n < EXPLOIT) {
        timed[n++] = ms;
    }
    if (--left > 0) {
        return depth;
    }
    if (n > 0) {
        // the median pass (the upper one of an even count)
        std::nth_element(timed, timed + n/2, timed + n);
        const double m = timed[n/2];
        avg[depth] = avg[depth] < 0.0 ? m : 0.5*avg[depth] + 0.5*m;
    }
    n = 0;
    const int fastest = best();
    if (trying) {
        if (depth == fastest) {
            std::fill(std::begin(backoff), std::end(backoff), 1); // a new fastest: every depth may be tried soon
            if (climbing && depth < max_depth) {
                start(depth + 1, true); // the first round goes one deeper
                return depth;
            }
        } else {
            due[depth]     = passes + int64_t(backoff[depth])*EXPLOIT;
            backoff[depth] = std::min(2*backoff[depth], MAX_BACKOFF);
            // deeper prefetch costs more bus time still: deeper depths not timed yet wait the
            // longest before their first trial
            for (int k = depth + 1; k <= max_depth; ++k) {
                if (avg[k] < 0.0 && due[k] == 0) {
                    due[k] = passes + int64_t(MAX_BACKOFF)*EXPLOIT;
                }
            }
        }
        climbing = false;
        start(fastest, false);
        return depth;
    }
    // the fastest depth ran its period: the depth that has waited longest for a trial, if its
    // wait is over
    int d = -1;
    for (int k = 0; k <= max_depth; ++k) {
        if (k != fastest && due[k] <= passes && (d < 0 || due[k] < due[d])) {
            d = k;
        }
    }
    start(d >= 0 ? d : fastest, d >= 0);
    return depth;
}

void llama_hobbit_depth_trial::start(int d, bool trial) {
    depth  = d;
    trying = trial;
    left   = trial ? SETTLE + TRY : EXPLOIT;
}
