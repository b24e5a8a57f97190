// HOBBIT planner (GPU tier): where a missed expert of a decode is served.
//
// With the experts in VRAM slots and every expert also in pinned host memory (the host tier),
// a miss can be copied over the bus into a slot (it is then cached), or computed on the CPU
// straight from the host tier while the copies of the other misses are in flight (HybriMoE /
// Fiddler style; it is not cached). The bus and the CPU work at the same time, so the layer
// waits for the longer of the two: the planner hands each miss, most important first, to
// whichever would finish it sooner, from running averages of the measured copy and CPU rates.
// The precision of each miss (hi, lo, or a skip) is the routing policy's; the planner only
// picks where it is served. A tie goes to the copy, which also fills the cache.
//
// A layer often has a single miss, and then one of the two sits idle. So a miss can also be
// split: the CPU computes the first rows of its FFN (a share of its bytes) from the host tier
// while the rest of its rows are copied and the GPU computes them from the slot (a path over
// views of the pools, hobbit-graph.cpp); the two partial sums add up to the expert's output.
// The rows the CPU computed are copied after the layer's other copies, so that the slot ends
// up holding the whole expert, cached as any copy.
#pragma once

#include "hobbit-store.h"

#include <cstddef>
#include <cstdint>
#include <vector>

struct llama_hobbit_cost_model {
    // bytes per ms assumed before anything was measured: the same for both, so that the first
    // decodes use both and measure them
    static constexpr double DEFAULT_RATE = 20.0e6; // 20 GB/s

    // a layer evaluation with misses that gave none to the CPU for this many in a row gives it
    // its least important miss, so that a CPU rate measured once badly (a cold start) is
    // measured again
    static constexpr int PROBE_EVERY = 64;

    double copy_rate = 0.0;                      // bytes copied per ms of a wave's copies (0: not measured)
    double cpu_rate[LLAMA_HOBBIT_N_LVL] = {};    // bytes of expert weights the CPU computes per ms, per level
    int    cpu_seen[LLAMA_HOBBIT_N_LVL] = {};    // CPU measurements taken (the first is a warm-up, not used)
    int    without_cpu = 0;                      // evaluations with misses since the CPU last had one
    bool   probed = false;                       // the last plan gave the CPU a probe only

    double copy_bytes_per_ms() const { return copy_rate > 0.0 ? copy_rate : DEFAULT_RATE; }
    double cpu_bytes_per_ms(int lvl) const;

    // a wave's copies: `bytes` in `ms` from their submission to the last one done
    void note_copy(size_t bytes, double ms);
    // a wave's CPU experts of level lvl: `bytes` of weights in `ms`. A probe's measurement can
    // raise the rate, never lower it: after an idle stretch the CPU's threads start cold (asleep,
    // their caches elsewhere), and a slow probe would keep the CPU idle and its threads cold.
    // A probe faster than the average replaces it: running cold, it is a lower bound of the
    // warm rate, so the average (pulled down by a slow stretch) is stale, and blending it in
    // would take several probes, PROBE_EVERY layers apart, to give the CPU work again. When the
    // CPU is really slower, the work it is given measures that.
    void note_cpu(int lvl, size_t bytes, double ms, bool probe = false);
};

// one miss to place: its bytes at the level the policy chose for it, and the share of them the
// CPU computes if it is split (0: it cannot be)
struct llama_hobbit_miss {
    int    expert;
    int    lvl;
    size_t bytes;
    double split = 0.0;
};

// where a miss is served
enum llama_hobbit_place : uint8_t {
    LLAMA_HOBBIT_PLACE_COPY  = 0, // copied into a slot, computed by the GPU
    LLAMA_HOBBIT_PLACE_CPU   = 1, // computed by the CPU from the host tier, not cached
    LLAMA_HOBBIT_PLACE_SPLIT = 2, // its first rows by the CPU, the others copied first and computed by the GPU
};

// for misses in order of importance, where each is served (enum llama_hobbit_place): each goes
// where it would be done soonest, a tie to the copy, then to the CPU; `backlog_bytes`: copies
// already queued ahead of them (prefetches being read)
std::vector<uint8_t> llama_hobbit_plan_cpu(llama_hobbit_cost_model & model, const std::vector<llama_hobbit_miss> & misses,
                                           size_t backlog_bytes);
