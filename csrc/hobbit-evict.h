// HOBBIT eviction policies: which cached expert makes room for a new one.
//
// Each policy gives every evictable entry a keep-score from what the books record about it
// (when it was last used, how often, how often at hi precision) and where its layer lies from
// the layer being served; the entry with the lowest score is evicted first.
//
// Policies: lru (layer evaluations since the last use), lfu (uses in the sequence, decayed per
// pass), fld (the layer needed furthest ahead goes first), least-stale (the entry whose layer
// went by most often without it goes first, ties by fld) and the blend of recency, frequency,
// hi-precision needs and layer distance that HOBBIT uses.
#pragma once

#include "hobbit-slots.h"

#include <cstdint>
#include <memory>

struct llama_hobbit_policy;

// layers from il_now until layer il is needed again in decode order: 1 for the next layer, n_layer for il_now
int llama_hobbit_forward_distance(int il, const llama_hobbit_clock & now);

// how many times the entry's layer was served since the entry was last used
int llama_hobbit_staleness(const llama_hobbit_entry & e, int il, const llama_hobbit_clock & now);

// frequency and hi-need counts decay by this factor per pass
constexpr double LLAMA_HOBBIT_DECAY = 0.9;

// the decayed use count and hi-need count of an entry, as of pass `pass`
double llama_hobbit_decayed_uses(const llama_hobbit_entry & e, uint64_t pass);
double llama_hobbit_decayed_hi(const llama_hobbit_entry & e, uint64_t pass);

// record a use of entry e at the clock; `hi_need`: the policy wanted it at hi precision
void llama_hobbit_note_use(llama_hobbit_entry & e, const llama_hobbit_clock & now, bool hi_need);

struct llama_hobbit_evict_weights {
    float recency   = 1.0f; // LRU: passes since the last use
    float frequency = 1.0f; // LFU: uses in the sequence, decayed
    float hi_need   = 1.0f; // LHU: needs at hi precision, decayed
    float distance  = 1.0f; // FLD: layers until it is needed again
};

// the evictor for an enum llama_hobbit_eviction value (weights for the blend), or nullptr
std::unique_ptr<llama_hobbit_evictor> llama_hobbit_make_evictor(int32_t eviction, const llama_hobbit_evict_weights & w);

// least recently used (at the granularity of layer evaluations)
struct llama_hobbit_evict_lru : llama_hobbit_evictor {
    double score(const llama_hobbit_entry & e, int il, const llama_hobbit_clock & now) const override;
};
