#include "hobbit-warm.h"

#include <algorithm>

namespace {

constexpr size_t LINE  = 64;        // bytes a read brings in
constexpr size_t BLOCK = 16 << 10;  // bytes read between two questions to stop()

thread_local volatile uint64_t g_sink; // what the reads summed to: keeps them from being optimised away

// reads [p, p + n) a line at a time, BLOCK by BLOCK; false if stopped first
bool touch(const char * p, size_t n, const std::function<bool()> & stop, size_t & done, uint64_t & sink) {
    for (size_t off = 0; off < n; off += BLOCK) {
        if (stop()) {
            return false;
        }
        const size_t end = std::min(n, off + BLOCK);
        uint64_t acc = 0;
        for (size_t i = off; i < end; i += LINE) {
            acc += (uint8_t) p[i];
        }
        sink += acc;
        done += end - off;
    }
    return true;
}

} // namespace

llama_hobbit_part llama_hobbit_warm_part(const llama_hobbit_cpu_weights & w, int64_t rows, int p, int n_parts) {
    const int64_t unit    = llama_hobbit_cpu_row_unit(w);
    const int64_t n_units = (rows + unit - 1)/unit;
    const int64_t n_out   = w.down->ne[1];
    llama_hobbit_part part;
    part.r0 = std::min(rows, int64_t(p)*n_units/n_parts*unit);
    part.r1 = std::min(rows, int64_t(p + 1)*n_units/n_parts*unit);
    part.o0 = int64_t(p)*n_out/n_parts;
    part.o1 = int64_t(p + 1)*n_out/n_parts;
    return part;
}

size_t llama_hobbit_warm_touch(const llama_hobbit_cpu_weights & w, int e, const llama_hobbit_part & part,
                               const std::function<bool()> & stop) {
    size_t done = 0;
    uint64_t sink = 0;
    const char * gate = (const char *) w.gate->data + e*w.gate->nb[2] + part.r0*w.gate->nb[1];
    const char * up   = (const char *) w.up->data   + e*w.up->nb[2]   + part.r0*w.up->nb[1];
    const size_t n_gu = size_t(part.r1 - part.r0)*w.gate->nb[1];
    // gate and up in step, as the op reads a row of each in turn
    for (size_t off = 0; off < n_gu; off += BLOCK) {
        const size_t n = std::min(BLOCK, n_gu - off);
        if (!touch(gate + off, n, stop, done, sink) || !touch(up + off, n, stop, done, sink)) {
            g_sink = sink;
            return done;
        }
    }
    const char * down = (const char *) w.down->data + e*w.down->nb[2] + part.o0*w.down->nb[1];
    touch(down, size_t(part.o1 - part.o0)*w.down->nb[1], stop, done, sink);
    g_sink = sink;
    return done;
}

void llama_hobbit_router_host::logits(const float * x, float * out) const {
    for (int64_t e = 0; e < n_expert; ++e) {
        const float * row = w.data() + e*n_embd;
        float acc = 0.0f;
        for (int64_t i = 0; i < n_embd; ++i) {
            acc += row[i]*x[i];
        }
        out[e] = acc + (b.empty() ? 0.0f : b[e]);
    }
}

int llama_hobbit_warm_pick(const std::vector<float> & need, const std::vector<uint8_t> & cached) {
    int best = -1;
    for (int e = 0; e < (int) need.size(); ++e) {
        if (need[e] >= 0.0f && !(e < (int) cached.size() && cached[e]) && (best < 0 || need[e] > need[best])) {
            best = e;
        }
    }
    return best;
}
