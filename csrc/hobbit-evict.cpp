#include "hobbit-evict.h"

#include "llama-hobbit.h"

#include <algorithm>
#include <cmath>

int llama_hobbit_forward_distance(int il, const llama_hobbit_clock & now) {
    const int n = std::max(1, now.n_layer);
    return ((il - now.il_now - 1) % n + n) % n + 1;
}

int llama_hobbit_staleness(const llama_hobbit_entry & e, int il, const llama_hobbit_clock & now) {
    // visits of the entry's layer since its last use: a layer still ahead in this pass has not
    // been visited again yet
    const int64_t passes = int64_t(now.pass) - int64_t(e.last_pass) - (il > now.il_now ? 1 : 0);
    return (int) std::max<int64_t>(0, passes);
}

static double decayed(float value, const llama_hobbit_entry & e, uint64_t pass) {
    const uint64_t age = pass > e.decay_pass ? pass - e.decay_pass : 0;
    return double(value)*std::pow(LLAMA_HOBBIT_DECAY, double(age));
}

double llama_hobbit_decayed_uses(const llama_hobbit_entry & e, uint64_t pass) {
    return decayed(e.uses, e, pass);
}

double llama_hobbit_decayed_hi(const llama_hobbit_entry & e, uint64_t pass) {
    return decayed(e.hi_needs, e, pass);
}

void llama_hobbit_note_use(llama_hobbit_entry & e, const llama_hobbit_clock & now, bool hi_need) {
    e.uses       = float(llama_hobbit_decayed_uses(e, now.pass) + 1.0);
    e.hi_needs   = float(llama_hobbit_decayed_hi(e, now.pass) + (hi_need ? 1.0 : 0.0));
    e.decay_pass = now.pass;
    e.last_use   = now.tick;
    e.last_pass  = now.pass;
    e.prefetched = 0;
}

double llama_hobbit_evict_lru::score(const llama_hobbit_entry & e, int il, const llama_hobbit_clock & now) const {
    (void) il;
    (void) now;
    return double(e.last_use);
}

namespace {

// least frequently used in the sequence (decayed), recency breaking ties
struct evict_lfu : llama_hobbit_evictor {
    double score(const llama_hobbit_entry & e, int il, const llama_hobbit_clock & now) const override {
        (void) il;
        return llama_hobbit_decayed_uses(e, now.pass) + 1e-9*double(e.last_use);
    }
};

// forward layer distance: the entry whose layer is needed furthest ahead goes first
struct evict_fld : llama_hobbit_evictor {
    double score(const llama_hobbit_entry & e, int il, const llama_hobbit_clock & now) const override {
        return -double(llama_hobbit_forward_distance(il, now)) + 1e-9*double(e.last_use);
    }
};

// least stale: the entry whose layer went by the most times without using it goes first; among
// equally stale entries, the one whose layer is needed furthest ahead
struct evict_stale : llama_hobbit_evictor {
    double score(const llama_hobbit_entry & e, int il, const llama_hobbit_clock & now) const override {
        const double stale = llama_hobbit_staleness(e, il, now);
        return -stale*double(now.n_layer + 1) - double(llama_hobbit_forward_distance(il, now));
    }
};

// HOBBIT's multidimensional priority: a weighted sum of recency (LRU, in visits of the entry's
// layer), frequency in the sequence (LFU), needs at hi precision (LHU) and forward layer
// distance (FLD), each scaled to [0, 1]
struct evict_blend : llama_hobbit_evictor {
    llama_hobbit_evict_weights w;
    explicit evict_blend(const llama_hobbit_evict_weights & w) : w(w) {}

    double score(const llama_hobbit_entry & e, int il, const llama_hobbit_clock & now) const override {
        const double recency  = 1.0/(1.0 + llama_hobbit_staleness(e, il, now));
        const double uses     = llama_hobbit_decayed_uses(e, now.pass);
        const double hi       = llama_hobbit_decayed_hi(e, now.pass);
        const double span     = std::max(1, now.n_layer - 1);
        const double distance = 1.0 - double(llama_hobbit_forward_distance(il, now) - 1)/span;
        return w.recency*recency + w.frequency*uses/(1.0 + uses) + w.hi_need*hi/(1.0 + hi) +
               w.distance*distance + 1e-9*double(e.last_use);
    }
};

} // namespace

std::unique_ptr<llama_hobbit_evictor> llama_hobbit_make_evictor(int32_t eviction, const llama_hobbit_evict_weights & w) {
    switch (eviction) {
        case LLAMA_HOBBIT_EVICT_LRU:   return std::make_unique<llama_hobbit_evict_lru>();
        case LLAMA_HOBBIT_EVICT_LFU:   return std::make_unique<evict_lfu>();
        case LLAMA_HOBBIT_EVICT_FLD:   return std::make_unique<evict_fld>();
        case LLAMA_HOBBIT_EVICT_STALE: return std::make_unique<evict_stale>();
        case LLAMA_HOBBIT_EVICT_BLEND: return std::make_unique<evict_blend>(w);
        default:                       return nullptr;
    }
}
