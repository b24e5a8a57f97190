#include "hobbit-policy.h"

#include "hobbit-evict.h"

#include <algorithm>

float llama_hobbit_routes::share(int64_t r, int64_t t) const {
    float total = 0.0f;
    for (int64_t i = 0; i < n_used; ++i) {
        total += weight(i, t);
    }
    return total > 0.0f ? weight(r, t)/total : 1.0f/float(n_used);
}

int llama_hobbit_n_waves(const llama_hobbit_slots & slots, int64_t n_used, int64_t n_tokens) {
    // worst case: every distinct expert the ubatch can select, each cached at hi
    const int64_t distinct = std::min<int64_t>(slots.n_expert, n_used*n_tokens);
    const int64_t units    = distinct*slots.hi_span;
    return (int) std::max<int64_t>(1, (units + slots.n_units - 1)/slots.n_units);
}

void llama_hobbit_job::init(int il_, int n_waves_, int n_expert, const llama_hobbit_routes & routes, float skip_threshold) {
    il      = il_;
    n_waves = n_waves_;
    need.assign(n_expert, -1.0f);
    best.assign(n_expert, -1.0f);
    level.assign(n_expert, -1);
    wave.assign(n_expert, -1);
    loaded.assign(n_expert, 0);
    prefetched.assign(n_expert, 0);
    cpu.assign(n_expert, 0);
    pending.clear();
    optional.clear();
    for (int64_t t = 0; t < routes.n_tokens; ++t) {
        for (int64_t r = 0; r < routes.n_used; ++r) {
            const int   e = routes.expert(r, t);
            const float s = routes.share(r, t);
            best[e] = std::max(best[e], s);
            if (s >= skip_threshold) {
                need[e] = std::max(need[e], s);
            }
        }
    }
    for (int e = 0; e < n_expert; ++e) {
        if (need[e] >= 0.0f) {
            pending.push_back(e);
        } else if (best[e] >= 0.0f) {
            optional.push_back(e);
        }
    }
    auto by_need = [&](int a, int b) { return need[a] != need[b] ? need[a] > need[b] : a < b; };
    auto by_best = [&](int a, int b) { return best[a] != best[b] ? best[a] > best[b] : a < b; };
    std::sort(pending.begin(), pending.end(), by_need);
    std::sort(optional.begin(), optional.end(), by_best);
}

namespace {

// how one pending expert can be served right now
struct candidate {
    int  e;
    int  hit;     // entry of a cached copy to serve from, -1: a miss
    bool upgrade; // hit is a lo copy the policy wants reloaded at hi
    int  cost;    // units it counts for in the quota
};

candidate classify(const llama_hobbit_slots & slots, const llama_hobbit_job & job, int e, const llama_hobbit_policy & pol) {
    const int hi = slots.index(job.il, e, LLAMA_HOBBIT_HI);
    if (slots.cached(hi)) {
        return { e, hi, false, slots.hi_span };
    }
    if (slots.has_lo) {
        const int lo = slots.index(job.il, e, LLAMA_HOBBIT_LO);
        if (slots.cached(lo)) {
            return { e, lo, job.need[e] >= pol.upgrade_threshold, 1 };
        }
    }
    return { e, -1, false, 1 };
}

} // namespace

bool llama_hobbit_plan_wave(llama_hobbit_slots & slots, llama_hobbit_job & job, int wave,
                            const llama_hobbit_policy & pol, const llama_hobbit_evictor & ev,
                            const llama_hobbit_clock & now,
                            std::vector<llama_hobbit_decision> & out, llama_hobbit_plan_counts & counts) {
    // Decisions are made as if this context had the cache to itself: `room` counts the units
    // it may still take, and pins of other contexts do not enter it. Where the room a decision
    // needs is pinned by another context, the attempt is undone and the wave waits: so what a
    // context computes never depends on what other contexts happen to be doing.
    std::vector<candidate> cands;
    cands.reserve(job.pending.size());
    int64_t cost_left = 0; // units the pending experts need at least
    for (int e : job.pending) {
        cands.push_back(classify(slots, job, e, pol));
        cost_left += cands.back().cost;
    }
    // what this wave must serve so that the rest fits in the waves left, at lo if need be
    int64_t quota = std::max<int64_t>(0, cost_left - int64_t(job.n_waves - 1 - wave)*slots.n_units);
    int64_t room  = slots.n_units;

    std::vector<llama_hobbit_decision> plan;
    counts.busy = -1;
    std::vector<int> mine;      // entries pinned by this attempt (sorted), to undo it
    std::vector<int> allocated; // entries this attempt gave a slot
    uint64_t demotions = 0;
    auto take = [&](int idx) {
        mine.insert(std::upper_bound(mine.begin(), mine.end(), idx), idx);
    };
    auto undo = [&]() {
        for (int idx : allocated) {
            slots.release(idx);
        }
        for (int idx : mine) {
            slots.unpin(idx);
        }
        return false;
    };
    // serve from a cached copy (pinned by others or not: the same as alone)
    auto use_cached = [&](const candidate & c, int idx, int cost) {
        slots.pin(idx);
        take(idx);
        room  -= cost;
        quota -= cost;
        const uint8_t action = slots.entry(idx).state == LLAMA_HOBBIT_READY ? LLAMA_HOBBIT_USE : LLAMA_HOBBIT_WAIT;
        plan.push_back({ c.e, slots.level_of(idx), idx, action, false });
    };
    // load at lvl: false if the room is pinned by another context (the attempt must wait)
    enum { LOADED, NO_ROOM, BLOCKED };
    auto load = [&](const candidate & c, int lvl) {
        const int idx = slots.index(job.il, c.e, lvl);
        const int r = slots.alloc(idx, ev, now, &counts.evicted, true, &counts.busy);
        if (r == llama_hobbit_slots::BUSY) {
            return BLOCKED;
        }
        if (r >= 0) {
            take(idx);
            allocated.push_back(idx);
            room  -= slots.span(lvl);
            quota -= 1;
            plan.push_back({ c.e, lvl, idx, LLAMA_HOBBIT_LOAD, c.upgrade && lvl == LLAMA_HOBBIT_HI });
            return LOADED;
        }
        return slots.could_alloc(lvl, mine) ? BLOCKED : NO_ROOM;
    };

    // 1. hits first, so that the loads below cannot evict them
    std::vector<candidate> rest;
    for (const candidate & c : cands) {
        if (c.hit >= 0 && !c.upgrade) {
            use_cached(c, c.hit, c.cost);
        } else {
            rest.push_back(c);
        }
    }

    // 2. loads, most important first; a hi load takes hi_span units but counts 1 in the quota,
    //    so it is demoted to lo when the quota could not be met otherwise
    std::vector<int> deferred;
    for (candidate c : rest) {
        if (c.upgrade && !slots.cached(c.hit)) {
            c = { c.e, -1, false, 1 }; // an earlier load of this wave evicted the lo copy
        }
        const bool want_hi = c.upgrade || llama_hobbit_miss_level(pol, slots.has_lo, job.need[c.e]) == LLAMA_HOBBIT_HI;
        if (want_hi && (!slots.has_lo || room - slots.hi_span >= quota - 1)) {
            const int r = room >= slots.hi_span ? load(c, LLAMA_HOBBIT_HI) : NO_ROOM;
            if (r == LOADED) {
                continue;
            }
            if (r == BLOCKED) {
                return undo();
            }
        }
        if (!slots.has_lo) {
            deferred.push_back(c.e);
            continue;
        }
        if (c.upgrade && slots.cached(c.hit)) {
            use_cached(c, c.hit, 1); // no room to upgrade: the lo copy serves
            continue;
        }
        const int r = room > 0 ? load(c, LLAMA_HOBBIT_LO) : NO_ROOM;
        if (r == BLOCKED) {
            return undo();
        }
        if (r == LOADED) {
            demotions += want_hi ? 1 : 0;
        } else {
            deferred.push_back(c.e);
        }
    }
    if (quota > 0) {
        return undo(); // cannot happen alone; some of the room is pinned by another context
    }

    // 3. experts whose routes are all skippable ride along if cached and there is room to spare
    if (wave == 0) {
        for (int e : job.optional) {
            const candidate c = classify(slots, job, e, pol);
            if (c.hit >= 0 && room - c.cost >= 0) {
                use_cached(c, c.hit, c.cost);
                quota += c.cost; // not part of the quota
            }
        }
    }

    // commit
    for (const llama_hobbit_decision & d : plan) {
        job.level[d.expert]  = (int8_t) d.lvl;
        job.wave[d.expert]   = (int8_t) wave;
        job.loaded[d.expert] = d.action == LLAMA_HOBBIT_LOAD;
        llama_hobbit_entry & en = slots.entry(d.idx);
        counts.prefetch_used += en.prefetched > 0 ? 1 : 0;
        job.prefetched[d.expert] = (int8_t) en.prefetched;
        llama_hobbit_note_use(en, now, job.need[d.expert] >= pol.hi_threshold);
        out.push_back(d);
    }
    counts.demotions += demotions;
    job.pending = deferred;
    if (wave == 0) {
        job.optional.clear();
    }
    return true;
}
