// HOBBIT routing policy: for each MoE layer evaluation, which experts to serve, at which
// precision, and in how many rounds ("waves") through the slots.
//
// Per route (token, selected expert) the policy looks at its share of the token's total gating
// weight. A route whose share is below skip_threshold is dropped, unless its expert is served
// anyway (cached, or loaded for another route): skipping a hit saves nothing. Every other
// route's expert is served once per ubatch: from a cached copy (hi preferred; a lo copy whose
// need reaches upgrade_threshold is reloaded at hi), or by a load at hi (need >= hi_threshold)
// or lo. An expert's need is the largest share among its routes that must be served.
//
// When a ubatch needs more experts than the slots hold, they are served in several waves;
// the graph has `n_waves` rounds (llama_hobbit_n_waves), each a route op and the expert
// matmuls. Each wave must serve at least its quota, counted in units (a hi copy costs hi_span,
// a lo copy or a miss 1), so that what remains always fits in the waves left, even at lo. A hi
// load that would break that is demoted to lo. A route is never dropped for lack of room, and
// other contexts sharing the cache change when a wave runs, never what it decides.
#pragma once

#include "hobbit-slots.h"
#include "llama-hobbit.h"

#include <cstddef>
#include <cstdint>
#include <vector>

// the routes of one MoE layer evaluation, as the graph's tensors hold them
struct llama_hobbit_routes {
    const char * sel = nullptr; // expert ids [n_used, n_tokens]: int32, or float on the GPU tier (sel_f32)
    size_t sel_nb0 = 0, sel_nb1 = 0;
    bool sel_f32 = false;
    const char * w   = nullptr; // float gating weights [1, n_used, n_tokens]
    size_t w_nb1 = 0, w_nb2 = 0;
    int64_t n_used   = 0;
    int64_t n_tokens = 0;

    int32_t expert(int64_t r, int64_t t) const {
        const char * p = sel + r*sel_nb0 + t*sel_nb1;
        return sel_f32 ? (int32_t) *(const float *) p : *(const int32_t *) p;
    }
    float   weight(int64_t r, int64_t t) const { return *(const float *) (w + r*w_nb1 + t*w_nb2); }
    // the route's share of its token's total weight (1/n_used when the total is not positive)
    float   share(int64_t r, int64_t t) const;
};

// waves a graph needs for a ubatch of n_tokens so that every route can be served
int llama_hobbit_n_waves(const llama_hobbit_slots & slots, int64_t n_used, int64_t n_tokens);

enum llama_hobbit_action : uint8_t {
    LLAMA_HOBBIT_USE  = 0, // a cached copy, ready
    LLAMA_HOBBIT_WAIT = 1, // a copy another context is loading: wait until it is ready
    LLAMA_HOBBIT_LOAD = 2, // a slot was allocated: read the expert into it
};

struct llama_hobbit_decision {
    int     expert;
    int     lvl;
    int     idx;    // entry (pinned once for this decision)
    uint8_t action; // enum llama_hobbit_action
    bool    upgrade; // a hi load replacing a cached lo copy
    uint8_t prefetched = 0; // a copy a prefetch brought in, used for the first time (its depth)
};

// what one context has to serve for the MoE layer it is evaluating
struct llama_hobbit_job {
    int il      = -1;
    int n_waves = 1;
    std::vector<float>  need;     // [n_expert] largest share among the routes that must be served, -1: none
    std::vector<float>  best;     // [n_expert] largest share of any route, -1: not selected
    std::vector<int>    pending;  // experts still to serve, most important first
    std::vector<int>    optional; // experts whose routes are all skippable: served only if cached
    std::vector<int8_t> level;    // [n_expert] level that served it, -1: not (yet)
    std::vector<int8_t> wave;     // [n_expert] wave that served it
    std::vector<int8_t> loaded;   // [n_expert] its first route counts a load
    std::vector<int8_t> prefetched; // [n_expert] served by a prefetched copy (its depth), else 0
    std::vector<int8_t> cpu;        // [n_expert] GPU tier: 1 computed on the CPU from the host tier, not cached;
                                    // 2 split: its first rows on the CPU, the others copied (hobbit-planner.h)

    // start a layer evaluation from its routes
    void init(int il, int n_waves, int n_expert, const llama_hobbit_routes & routes, float skip_threshold);
};

// the level a miss is loaded at, for an expert of need `need`: hi from hi_threshold on, or when
// the cache has no lo level (the route op, the CPU path's planner and prefetch all ask this)
inline int llama_hobbit_miss_level(const llama_hobbit_policy & pol, bool has_lo, float need) {
    return !has_lo || need >= pol.hi_threshold ? LLAMA_HOBBIT_HI : LLAMA_HOBBIT_LO;
}

struct llama_hobbit_plan_counts {
    uint64_t demotions     = 0;
    uint64_t prefetch_used = 0; // prefetched copies used for the first time
    std::vector<int> evicted;   // entries evicted to make room (also by attempts that were undone)
    int busy = -1;              // after a failed attempt: the prefetch in flight it must wait for, or -1
};

// plan wave `wave` of `job`: pick experts in order of need, pin their cached copies and
// allocate slots (state loading, one pin) for the ones to load, appending to `out`. Decisions
// are those the context would make if it had the cache to itself. Returns false when room they
// need is pinned by other contexts, or holds a prefetch still being read (counts.busy): the
// attempt is undone (only its evictions stay) and the caller waits for those contexts to move
// on, or for the read (or takes the prefetch back), then tries again.
bool llama_hobbit_plan_wave(llama_hobbit_slots & slots, llama_hobbit_job & job, int wave,
                            const llama_hobbit_policy & pol, const llama_hobbit_evictor & ev,
                            const llama_hobbit_clock & now,
                            std::vector<llama_hobbit_decision> & out, llama_hobbit_plan_counts & counts);
