// Unit tests of the routing policy (csrc/hobbit-policy.h): shares, skip and precision rules,
// and wave planning, with the slot allocator's books as the cache.

#include "hobbit-evict.h"
#include "hobbit-planner.h"
#include "hobbit-policy.h"
#include "hobbit-prefetch.h"
#include "hobbit-test.h"

#include <cmath>
#include <random>
#include <vector>

namespace {

// routes of one ubatch: n_used experts per token with their gating weights
struct test_routes {
    int64_t n_used;
    std::vector<int32_t> sel;
    std::vector<float>   w;

    llama_hobbit_routes view() const {
        llama_hobbit_routes r;
        r.sel = (const char *) sel.data(); r.sel_nb0 = sizeof(int32_t); r.sel_nb1 = sizeof(int32_t)*n_used;
        r.w   = (const char *) w.data();   r.w_nb1   = sizeof(float);   r.w_nb2   = sizeof(float)*n_used;
        r.n_used = n_used;
        r.n_tokens = (int64_t) sel.size()/n_used;
        return r;
    }
};

llama_hobbit_policy policy(float hi, float skip = 0.0f, float upgrade = 2.0f) {
    llama_hobbit_policy p = llama_hobbit_policy_default();
    p.hi_threshold = hi;
    p.skip_threshold = skip;
    p.upgrade_threshold = upgrade;
    return p;
}

// one context serving layer evaluations as the cache does, without memory or files
struct sim_context {
    llama_hobbit_slots & slots;
    llama_hobbit_evict_lru lru;
    llama_hobbit_job job;
    std::vector<int> pins;
    uint64_t tick = 0;
    uint64_t demotions = 0;

    explicit sim_context(llama_hobbit_slots & s) : slots(s) {}

    llama_hobbit_clock now(int il) const {
        llama_hobbit_clock c;
        c.tick    = tick;
        c.pass    = tick;
        c.il_now  = il;
        c.n_layer = slots.n_layer;
        return c;
    }

    void release() {
        for (int idx : pins) {
            slots.unpin(idx);
        }
        pins.clear();
    }

    // serve all waves of one layer; returns the decisions of every wave, or false if a wave
    // could not be planned
    bool serve(int il, const test_routes & tr, const llama_hobbit_policy & pol,
               std::vector<std::vector<llama_hobbit_decision>> & waves) {
        const llama_hobbit_routes r = tr.view();
        const int n_waves = llama_hobbit_n_waves(slots, r.n_used, r.n_tokens);
        tick++;
        release();
        job.init(il, n_waves, slots.n_expert, r, pol.skip_threshold);
        waves.clear();
        for (int w = 0; w < n_waves; ++w) {
            release();
            std::vector<llama_hobbit_decision> out;
            llama_hobbit_plan_counts counts;
            if (!llama_hobbit_plan_wave(slots, job, w, pol, lru, now(il), out, counts)) {
                return false;
            }
            demotions += counts.demotions;
            for (const auto & d : out) {
                pins.push_back(d.idx);
                if (d.action == LLAMA_HOBBIT_LOAD) {
                    slots.entry(d.idx).state = LLAMA_HOBBIT_READY; // the read succeeded
                    if (d.upgrade) {
                        const int lo = slots.index(il, d.expert, LLAMA_HOBBIT_LO);
                        if (slots.cached(lo) && slots.entry(lo).pins == 0) {
                            slots.release(lo);
                        }
                    }
                }
            }
            CHECK(slots.consistent());
            waves.push_back(out);
        }
        release();
        return true;
    }
};

// level each expert was served at over all waves, -1 if never; an expert twice is an error
std::vector<int> served_levels(const std::vector<std::vector<llama_hobbit_decision>> & waves, int n_expert) {
    std::vector<int> lvl(n_expert, -1);
    for (const auto & w : waves) {
        for (const auto & d : w) {
            CHECK(lvl[d.expert] < 0);
            lvl[d.expert] = d.lvl;
        }
    }
    return lvl;
}

} // namespace

static void test_shares_are_independent_of_scaling() {
    // the same routing with normalised (Mixtral), unnormalised (Qwen2-MoE) and scaled
    // (DeepSeek-V2) weights: the same shares, so the same decisions
    const float raw[3][2] = { { 0.75f, 0.25f }, { 0.30f, 0.10f }, { 12.0f, 4.0f } };
    for (const auto & w : raw) {
        test_routes tr{ 2, { 3, 5 }, { w[0], w[1] } };
        const llama_hobbit_routes r = tr.view();
        CHECK(r.share(0, 0) > 0.7499f && r.share(0, 0) < 0.7501f);
        CHECK(r.share(1, 0) > 0.2499f && r.share(1, 0) < 0.2501f);

        llama_hobbit_slots slots;
        slots.init(1, 8, true, 16, 2);
        sim_context ctx(slots);
        std::vector<std::vector<llama_hobbit_decision>> waves;
        CHECK(ctx.serve(0, tr, policy(0.5f), waves));
        const std::vector<int> lvl = served_levels(waves, 8);
        CHECK_EQ(lvl[3], LLAMA_HOBBIT_HI);
        CHECK_EQ(lvl[5], LLAMA_HOBBIT_LO);
    }
    // a token whose weights are all zero: equal shares
    test_routes zero{ 2, { 1, 2 }, { 0.0f, 0.0f } };
    CHECK(zero.view().share(0, 0) == 0.5f);
}

static void test_float_selected_experts_read_as_int32() {
    // the GPU tier hands the selected experts to the host as floats, next to the weights in one
    // row of a strided bundle (hobbit-graph.cpp): the same experts as the int32 tensor
    const std::vector<int32_t> ids = { 7, 0, 3, 5, 1, 6 }; // 3 tokens x 2 routes
    std::vector<float> bundle; // per token: 2 experts, 2 weights, 1 more float
    for (size_t t = 0; t < 3; ++t) {
        bundle.insert(bundle.end(), { float(ids[2*t]), float(ids[2*t + 1]), 0.6f, 0.4f, -9.0f });
    }
    llama_hobbit_routes r;
    r.sel = (const char *) bundle.data(); r.sel_nb0 = sizeof(float); r.sel_nb1 = 5*sizeof(float);
    r.sel_f32 = true;
    r.w = (const char *) (bundle.data() + 2); r.w_nb1 = sizeof(float); r.w_nb2 = 5*sizeof(float);
    r.n_used = 2;
    r.n_tokens = 3;
    for (int64_t t = 0; t < 3; ++t) {
        for (int64_t k = 0; k < 2; ++k) {
            CHECK_EQ(r.expert(k, t), ids[2*t + k]);
        }
        CHECK(r.share(0, t) > 0.5999f && r.share(0, t) < 0.6001f);
    }
}

static void test_hits_then_misses_and_upgrade() {
    llama_hobbit_slots slots;
    slots.init(1, 8, true, 16, 2);
    sim_context ctx(slots);
    std::vector<std::vector<llama_hobbit_decision>> waves;
    // expert 1 gets loaded at lo (share 0.4)
    CHECK(ctx.serve(0, { 2, { 0, 1 }, { 0.6f, 0.4f } }, policy(0.5f, 0.0f, 0.9f), waves));
    CHECK_EQ(waves[0].size(), 2);
    for (const auto & d : waves[0]) {
        CHECK_EQ(d.action, LLAMA_HOBBIT_LOAD);
    }
    // now both are hits
    CHECK(ctx.serve(0, { 2, { 1, 0 }, { 0.55f, 0.45f } }, policy(0.5f, 0.0f, 0.9f), waves));
    for (const auto & d : waves[0]) {
        CHECK_EQ(d.action, LLAMA_HOBBIT_USE);
        CHECK_EQ(d.lvl, d.expert == 0 ? LLAMA_HOBBIT_HI : LLAMA_HOBBIT_LO);
    }
    // expert 1 at share 0.95 >= upgrade: reloaded at hi, its lo copy dropped
    CHECK(ctx.serve(0, { 2, { 1, 0 }, { 0.95f, 0.05f } }, policy(0.5f, 0.0f, 0.9f), waves));
    bool upgraded = false;
    for (const auto & d : waves[0]) {
        if (d.expert == 1) {
            upgraded = d.action == LLAMA_HOBBIT_LOAD && d.lvl == LLAMA_HOBBIT_HI && d.upgrade;
        }
    }
    CHECK(upgraded);
    CHECK(!slots.cached(slots.index(0, 1, LLAMA_HOBBIT_LO)));
}

static void test_skip_only_drops_misses() {
    llama_hobbit_slots slots;
    slots.init(1, 8, true, 16, 2);
    sim_context ctx(slots);
    std::vector<std::vector<llama_hobbit_decision>> waves;
    const llama_hobbit_policy pol = policy(0.5f, 0.2f);
    // expert 4 at share 0.1 < skip and not cached: skipped, nothing loaded for it
    CHECK(ctx.serve(0, { 2, { 2, 4 }, { 0.9f, 0.1f } }, pol, waves));
    std::vector<int> lvl = served_levels(waves, 8);
    CHECK_EQ(lvl[2], LLAMA_HOBBIT_HI);
    CHECK_EQ(lvl[4], -1);
    CHECK(!slots.cached(slots.index(0, 4, LLAMA_HOBBIT_LO)) && !slots.cached(slots.index(0, 4, LLAMA_HOBBIT_HI)));
    // expert 2 at share 0.1 < skip but cached: served, a hit costs nothing
    CHECK(ctx.serve(0, { 2, { 6, 2 }, { 0.9f, 0.1f } }, pol, waves));
    lvl = served_levels(waves, 8);
    CHECK_EQ(lvl[2], LLAMA_HOBBIT_HI);
    CHECK_EQ(lvl[6], LLAMA_HOBBIT_HI);
    // a skippable route rides along when another route of the same ubatch needs its expert
    CHECK(ctx.serve(0, { 2, { 7, 5, 5, 7 }, { 0.9f, 0.1f, 0.6f, 0.4f } }, pol, waves));
    lvl = served_levels(waves, 8);
    CHECK(lvl[5] >= 0 && lvl[7] >= 0);
}

static void test_minimum_budget_keeps_hi_in_two_waves() {
    // room for exactly one hi expert: both routes of a token want hi and get it, one per wave
    llama_hobbit_slots slots;
    slots.init(2, 8, true, 2, 2);
    sim_context ctx(slots);
    CHECK_EQ(llama_hobbit_n_waves(slots, 2, 1), 2);
    std::vector<std::vector<llama_hobbit_decision>> waves;
    for (int step = 0; step < 20; ++step) {
        const int a = step % 8, b = (step*3 + 1) % 8 == a ? (a + 1) % 8 : (step*3 + 1) % 8;
        CHECK(ctx.serve(step % 2, { 2, { a, b }, { 0.5f, 0.5f } }, policy(0.5f), waves));
        CHECK_EQ(waves.size(), 2);
        const std::vector<int> lvl = served_levels(waves, 8);
        CHECK_EQ(lvl[a], LLAMA_HOBBIT_HI);
        CHECK_EQ(lvl[b], LLAMA_HOBBIT_HI);
    }
    CHECK_EQ(ctx.demotions, 0);
}

static void test_prefill_needing_every_expert_is_served_in_waves() {
    // a ubatch selects all 8 experts; the slots hold 2 hi or 4 lo copies
    llama_hobbit_slots slots;
    slots.init(1, 8, true, 4, 2);
    sim_context ctx(slots);
    test_routes tr{ 2, {}, {} };
    for (int t = 0; t < 16; ++t) {
        tr.sel.push_back(t % 8);
        tr.sel.push_back((t + 3) % 8);
        tr.w.push_back(t % 3 == 0 ? 0.7f : 0.45f);
        tr.w.push_back(t % 3 == 0 ? 0.3f : 0.55f);
    }
    std::vector<std::vector<llama_hobbit_decision>> waves;
    CHECK(ctx.serve(0, tr, policy(0.5f), waves));
    CHECK_EQ(waves.size(), llama_hobbit_n_waves(slots, 2, 16));
    const std::vector<int> lvl = served_levels(waves, 8);
    for (int e = 0; e < 8; ++e) {
        CHECK(lvl[e] >= 0); // never skipped for lack of room
    }
}

static void test_wave_waits_while_another_context_pins_everything() {
    llama_hobbit_slots slots;
    slots.init(1, 8, true, 4, 2);
    sim_context other(slots);
    std::vector<std::vector<llama_hobbit_decision>> waves;
    // the other context is in the middle of a wave: it pins every unit
    const test_routes theirs{ 2, { 0, 1, 2, 3 }, { 0.4f, 0.4f, 0.4f, 0.4f } };
    other.job.init(0, 1, 8, theirs.view(), 0.0f);
    std::vector<llama_hobbit_decision> out;
    llama_hobbit_plan_counts counts;
    CHECK(llama_hobbit_plan_wave(slots, other.job, 0, policy(0.5f), other.lru, other.now(0), out, counts));
    for (const auto & d : out) {
        other.pins.push_back(d.idx);
    }
    CHECK_EQ(slots.n_available(), 0);

    // our single-wave decode cannot get room: the plan fails and changes nothing
    sim_context ours(slots);
    const test_routes mine{ 2, { 5, 6 }, { 0.5f, 0.5f } };
    ours.job.init(0, 1, 8, mine.view(), 0.0f);
    std::vector<llama_hobbit_decision> out2;
    CHECK(!llama_hobbit_plan_wave(slots, ours.job, 0, policy(0.5f), ours.lru, ours.now(0), out2, counts));
    CHECK(out2.empty());
    CHECK_EQ(ours.job.pending.size(), 2);
    CHECK(slots.consistent());

    // once the other context moves on, it succeeds
    for (const auto & d : out) {
        slots.entry(d.idx).state = LLAMA_HOBBIT_READY;
    }
    other.release();
    CHECK(llama_hobbit_plan_wave(slots, ours.job, 0, policy(0.5f), ours.lru, ours.now(0), out2, counts));
    CHECK_EQ(out2.size(), 2);
}

static void test_random_ubatches_serve_every_needed_expert_once() {
    std::mt19937 rng(99);
    for (int trial = 0; trial < 300; ++trial) {
        const int n_expert = 4 + rng() % 12;
        const int n_used   = 1 + rng() % std::min(4, n_expert);
        const int hi_span  = 1 + rng() % 3;
        const bool has_lo  = rng() % 4 != 0;
        const int span     = has_lo ? hi_span : 1;
        const int n_units  = span*(1 + rng() % 6);
        llama_hobbit_slots slots;
        slots.init(3, n_expert, has_lo, n_units, span);
        sim_context ctx(slots);
        const llama_hobbit_policy pol = policy(float(rng() % 100)/100.0f, float(rng() % 30)/100.0f,
                                               float(50 + rng() % 60)/100.0f);
        for (int ub = 0; ub < 6; ++ub) {
            const int n_tokens = 1 + rng() % 12;
            test_routes tr{ n_used, {}, {} };
            for (int t = 0; t < n_tokens; ++t) {
                std::vector<int> pick;
                while ((int) pick.size() < n_used) {
                    const int e = rng() % n_expert;
                    bool dup = false;
                    for (int p : pick) {
                        dup = dup || p == e;
                    }
                    if (!dup) {
                        pick.push_back(e);
                    }
                }
                for (int e : pick) {
                    tr.sel.push_back(e);
                    tr.w.push_back(float(1 + rng() % 100));
                }
            }
            std::vector<std::vector<llama_hobbit_decision>> waves;
            CHECK(ctx.serve(rng() % 3, tr, pol, waves));
            const std::vector<int> lvl = served_levels(waves, n_expert);
            for (int e = 0; e < n_expert; ++e) {
                if (ctx.job.need[e] >= 0.0f) {
                    CHECK(lvl[e] >= 0); // every route that must be served was served
                }
            }
            for (const auto & w : waves) {
                int units = 0;
                for (const auto & d : w) {
                    units += slots.span(d.lvl);
                }
                CHECK(units <= n_units); // a wave never holds more than the slots
            }
        }
    }
}

// the auto prefetch depth: reading ahead pays where compute can hide loads, not where loads
// dwarf compute (then the wrong guesses only add reads)
static void test_auto_depth_follows_loads_against_compute() {
    const double acc[3] = { 0.83, 0.80, 0.75 };
    // the 2-core benchmark machine: 3 ms of compute a layer, 25 ms of loads
    CHECK_EQ(llama_hobbit_auto_depth(acc, 3, 25.0, 3.0, 1.0), 0);
    // a fast device: loads shorter than a layer's compute, one layer ahead hides them
    CHECK_EQ(llama_hobbit_auto_depth(acc, 3, 5.0, 10.0, 1.0), 1);
    // the disk bounds what reading ahead can hide: a deeper prediction pays only by being
    // more accurate, and ties keep the shallower depth
    const double deeper[3] = { 0.5, 0.9, 0.9 };
    CHECK_EQ(llama_hobbit_auto_depth(deeper, 3, 5.0, 10.0, 1.0), 2);
    CHECK_EQ(llama_hobbit_auto_depth(acc, 3, 8.0, 4.0, 1.0), 1);
    // nothing to wait for, or predictions that are mostly wrong: no prefetch
    CHECK_EQ(llama_hobbit_auto_depth(acc, 3, 0.0, 10.0, 1.0), 0);
    const double poor[3] = { 0.2, 0.1, 0.1 };
    CHECK_EQ(llama_hobbit_auto_depth(poor, 3, 8.0, 4.0, 1.0), 0);
    // a wider candidate set reads more per route: where one ahead paid at top-k, it need not
    CHECK_EQ(llama_hobbit_auto_depth(acc, 3, 3.0, 2.0, 1.0), 1);
    CHECK_EQ(llama_hobbit_auto_depth(acc, 3, 3.0, 2.0, 2.0), 0);
    // the benchmark machine at a 50% budget: 9 ms of loads, 3.7 ms of compute; the model says
    // 5% faster, the measurement said 45% slower: below a tenth, no prefetch
    CHECK_EQ(llama_hobbit_auto_depth(acc, 3, 9.0, 3.7, 1.0), 0);
    // before anything is measured: no prefetch
    CHECK_EQ(llama_hobbit_auto_depth(deeper, 3, -1.0, 10.0, 1.0), 0);
    CHECK_EQ(llama_hobbit_auto_depth(deeper, 3, 5.0, -1.0, 1.0), 0);
    // the depth never exceeds the maximum it is given
    CHECK_EQ(llama_hobbit_auto_depth(deeper, 1, 5.0, 10.0, 1.0), 1);
}

static void test_planner_balances_copies_and_cpu() {
    const size_t hi = 25u << 20, lo = 13u << 20; // the widened benchmark model's q8_0 / q4_k experts
    llama_hobbit_cost_model m;
    // nothing measured: both at the default rate, so the first misses use both
    {
        const std::vector<uint8_t> c = llama_hobbit_plan_cpu(m, { { 3, 0, hi }, { 5, 1, lo } }, 0);
        CHECK(!c[0]); // a tie goes to the copy
        CHECK(c[1]);
    }
    // the bus at 50 GB/s, the CPU at 25 GB/s (a hi expert: 0.5 ms to copy, 1 ms on the CPU): of
    // three hi misses the bus takes two (the second ties at 1 ms) and the CPU the third
    m.copy_rate = 50e6;
    m.cpu_rate[0] = 25e6;
    {
        const std::vector<uint8_t> c = llama_hobbit_plan_cpu(m, { { 0, 0, hi }, { 1, 0, hi }, { 2, 0, hi } }, 0);
        CHECK(!c[0]);
        CHECK(!c[1]);
        CHECK(c[2]);
    }
    // a CPU far slower than the bus takes nothing; a bus far behind (a backlog) sends misses to the CPU
    m.cpu_rate[0] = 1e6;
    m.cpu_rate[1] = 0.0; // lo not measured yet: as fast as hi on the CPU
    CHECK_EQ(m.cpu_bytes_per_ms(1), (long long) 1e6);
    {
        const std::vector<uint8_t> c = llama_hobbit_plan_cpu(m, { { 0, 0, hi }, { 1, 1, lo } }, 0);
        CHECK(!c[0]);
        CHECK(!c[1]);
        const std::vector<uint8_t> d = llama_hobbit_plan_cpu(m, { { 0, 0, hi } }, size_t(2000)*hi);
        CHECK(d[0]);
    }
    // the running averages move towards what is measured
    llama_hobbit_cost_model r;
    r.note_copy(50u << 20, 1.0);
    CHECK_EQ((long long) r.copy_rate, (long long) (50u << 20));
    r.note_copy(0, 1.0); // nothing copied: no measurement
    r.note_copy(10u << 20, 1.0);
    CHECK(r.copy_rate < double(50u << 20) && r.copy_rate > double(10u << 20));
    r.note_cpu(1, 1u << 20, 100.0); // the first CPU measurement of a level is a warm-up: not used
    CHECK_EQ((long long) r.cpu_rate[1], 0);
    r.note_cpu(1, 5u << 20, 1.0);
    CHECK_EQ((long long) r.cpu_rate[1], (long long) (5u << 20));
    CHECK_EQ((long long) r.cpu_rate[0], 0);

    // a CPU that looked slow once is probed again after PROBE_EVERY evaluations without it
    llama_hobbit_cost_model slow;
    slow.copy_rate   = 50e6;
    slow.cpu_rate[0] = 0.1e6;
    int probes = 0;
    for (int i = 0; i < 3*llama_hobbit_cost_model::PROBE_EVERY; ++i) {
        const std::vector<uint8_t> c = llama_hobbit_plan_cpu(slow, { { 0, 0, hi }, { 1, 0, hi } }, 0);
        CHECK(!c[0]);
        probes += c[1] ? 1 : 0;
    }
    CHECK_EQ(probes, 3);
    CHECK(slow.probed); // the last plan was a probe
    // a probe's measurement raises the rate, never lowers it (a cold start); work given to the
    // CPU as such lowers it
    llama_hobbit_cost_model p;
    p.note_cpu(0, 1u << 20, 1.0); // warm-up
    p.note_cpu(0, 8u << 20, 1.0);
    CHECK_EQ((long long) p.cpu_rate[0], (long long) (8u << 20));
    p.note_cpu(0, 1u << 20, 1.0, true); // a slow probe: ignored
    CHECK_EQ((long long) p.cpu_rate[0], (long long) (8u << 20));
    p.note_cpu(0, 18u << 20, 1.0, true); // a fast one: taken as it is (a lower bound of the warm rate)
    CHECK_EQ((long long) p.cpu_rate[0], (long long) (18u << 20));
    p.note_cpu(0, 0u, 1.0); // nothing measured
    p.note_cpu(0, 8u << 20, 1.0); // slower work that was not a probe: blended in
    CHECK(std::fabs(p.cpu_rate[0] - double(16u << 20)) < 1.0);
    CHECK(!llama_hobbit_plan_cpu(p, { { 0, 0, hi } }, 0).empty() && !p.probed);
    // no misses, no probe
    CHECK(llama_hobbit_plan_cpu(slow, {}, 0).empty());
}

// a miss split between the CPU and the bus is done when the later of its two parts is: the
// planner splits where that beats both whole placements, and only misses that can be split
static void test_planner_splits_a_lone_miss() {
    const size_t hi = 25u << 20, lo = 13u << 20;
    llama_hobbit_cost_model m;
    m.copy_rate   = 50e6; // bytes per ms
    m.cpu_rate[0] = 50e6;
    m.cpu_rate[1] = 50e6;
    // one miss: either whole placement takes it all; split in halves, half of that
    CHECK_EQ(llama_hobbit_plan_cpu(m, { { 0, 0, hi, 0.5 } }, 0)[0], LLAMA_HOBBIT_PLACE_SPLIT);
    CHECK_EQ(llama_hobbit_plan_cpu(m, { { 0, 0, hi, 0.0 } }, 0)[0], LLAMA_HOBBIT_PLACE_COPY); // cannot be split
    // two misses, the second not splittable: the first is split (both channels 0.26 ms), the
    // second then ties between them and goes to the copy
    {
        const std::vector<uint8_t> c = llama_hobbit_plan_cpu(m, { { 0, 0, hi, 0.5 }, { 1, 1, lo, 0.0 } }, 0);
        CHECK_EQ(c[0], LLAMA_HOBBIT_PLACE_SPLIT);
        CHECK_EQ(c[1], LLAMA_HOBBIT_PLACE_COPY);
    }
    // the CPU at half the bus's rate: with 60% of it, the CPU's part takes longer than the
    // whole copy; with a quarter, the split is done first
    m.cpu_rate[0] = 25e6;
    CHECK_EQ(llama_hobbit_plan_cpu(m, { { 0, 0, hi, 0.6 } }, 0)[0], LLAMA_HOBBIT_PLACE_COPY);
    CHECK_EQ(llama_hobbit_plan_cpu(m, { { 0, 0, hi, 0.25 } }, 0)[0], LLAMA_HOBBIT_PLACE_SPLIT);
    // a bus far behind: the whole miss on the CPU beats waiting for the bus with half of it
    CHECK_EQ(llama_hobbit_plan_cpu(m, { { 0, 0, hi, 0.5 } }, size_t(100)*hi)[0], LLAMA_HOBBIT_PLACE_CPU);
    // a split counts as work for the CPU: no probe is due after it
    llama_hobbit_cost_model q;
    q.copy_rate = 50e6;
    q.cpu_rate[0] = 50e6;
    q.without_cpu = llama_hobbit_cost_model::PROBE_EVERY - 1;
    CHECK_EQ(llama_hobbit_plan_cpu(q, { { 0, 0, hi, 0.5 } }, 0)[0], LLAMA_HOBBIT_PLACE_SPLIT);
    CHECK(!q.probed);
    CHECK_EQ(q.without_cpu, 0);
}

// the GPU tier's auto depth by measurement: it settles on the depth whose passes are fastest,
// keeps trying the others now and then, and follows when another becomes the fastest
static void test_depth_trial_follows_measured_pass_times() {
    llama_hobbit_depth_trial trial;
    // depth 1 slower than 0, 2 the fastest: 2 is first tried after MAX_BACKOFF periods
    const double first[4]  = { 3.0, 3.5, 2.5, 4.0 };
    const double second[4] = { 2.0, 3.5, 2.5, 4.0 };
    const int wait = llama_hobbit_depth_trial::MAX_BACKOFF*llama_hobbit_depth_trial::EXPLOIT;
    int at[4] = {};
    for (int i = 0; i < 1500; ++i) {
        at[trial.on_pass(first[trial.depth])]++;
    }
    CHECK(at[2] > 1500 - wait - 200);
    CHECK(at[0] > 0 && at[1] > 0 && at[3] > 0); // the others are still tried
    CHECK(trial.avg[2] > 2.4 && trial.avg[2] < 2.6);
    // (depth 0 had lost its trials: it is tried again within MAX_BACKOFF periods)
    int later[4] = {};
    for (int i = 0; i < 1000; ++i) {
        later[trial.on_pass(second[trial.depth])]++;
    }
    CHECK(later[0] > 1000 - llama_hobbit_depth_trial::MAX_BACKOFF*llama_hobbit_depth_trial::EXPLOIT - 100);
    // a pause between generations (a pass ten times as long) is not taken for a slow depth
    llama_hobbit_depth_trial paused;
    for (int i = 0; i < 800; ++i) {
        const double t = i % 50 == 49 ? 30.0 : first[paused.depth];
        paused.on_pass(t);
    }
    CHECK(paused.avg[2] > 2.4 && paused.avg[2] < 2.6);

    // prefetch only costs (the GPU tier with the CPU path on every core): the first round stops
    // at depth 1, and the trials of the slower depths back off, so that they take few passes
    llama_hobbit_depth_trial costly;
    const double slower[4] = { 2.0, 3.0, 3.5, 4.0 };
    int trials[4] = {}, first_deep = -1;
    for (int i = 0; i < 2000; ++i) {
        const int d = costly.depth;
        trials[d]++;
        if (d >= 2 && first_deep < 0) {
            first_deep = i;
        }
        costly.on_pass(slower[d]);
    }
    CHECK(first_deep >= llama_hobbit_depth_trial::MAX_BACKOFF*llama_hobbit_depth_trial::EXPLOIT); // depth 1 lost first
    CHECK(trials[1] + trials[2] + trials[3] < 2000/16); // 5% of the passes (a trial every EXPLOIT: 10%)
    CHECK(trials[2] > 0 && trials[3] > 0); // still measured now and then

    // one slow pass in a trial (the CPU's threads waking after an idle stretch: 3.5x a pass, not
    // a pause) does not decide it: depth 1 is faster, and its first trial has such a pass
    llama_hobbit_depth_trial jolted;
    const double times[4] = { 3.0, 2.0, 2.6, 2.8 };
    int trial_pass = 0, at_one = 0;
    for (int i = 0; i < 200; ++i) {
        const int d = jolted.depth;
        double t = times[d];
        if (d == 1 && trial_pass++ == 2) {
            t = 10.5;
        }
        at_one += jolted.on_pass(t) == 1 ? 1 : 0;
    }
    CHECK(jolted.avg[1] > 1.9 && jolted.avg[1] < 2.1);
    CHECK(at_one > 150);
}

int main() {
    test_planner_balances_copies_and_cpu();
    test_planner_splits_a_lone_miss();
    test_depth_trial_follows_measured_pass_times();
    test_auto_depth_follows_loads_against_compute();
    test_shares_are_independent_of_scaling();
    test_float_selected_experts_read_as_int32();
    test_hits_then_misses_and_upgrade();
    test_skip_only_drops_misses();
    test_minimum_budget_keeps_hi_in_two_waves();
    test_prefill_needing_every_expert_is_served_in_waves();
    test_wave_waits_while_another_context_pins_everything();
    test_random_ubatches_serve_every_needed_expert_once();
    return hobbit_test_result("test-hobbit-policy");
}
