// HOBBIT: mixed-precision expert offloading for Mixture-of-Experts models.
//
// The llama_hobbit_* C API configures the expert cache and its policy on a loaded model and
// reads its statistics. Everything here is plain C: no exceptions cross this boundary.
#pragma once

#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

// Bumped whenever a function or struct of this header changes.
#define LLAMA_HOBBIT_API_VERSION 9

// Version of this header the library was built with (LLAMA_HOBBIT_API_VERSION).
LLAMA_API int32_t llama_hobbit_api_version(void);

// Identifies the pinned llama.cpp source the library was built from,
// e.g. "llama-cpp-python-0.3.36" ("unknown" when the build did not say).
LLAMA_API const char * llama_hobbit_source_id(void);

// A model is put in HOBBIT mode at load time, through kv overrides in llama_model_params:
//   hobbit.budget_bytes (int)  byte budget of the expert cache; its presence enables HOBBIT mode
//   hobbit.hi_type      (str)  expert level used as high precision (default: the file's first)
//   hobbit.lo_type      (str)  expert level used as low precision (default: the file's last;
//                              "none" for a hi-only cache)
//   hobbit.direct_io    (int)  1: read experts with O_DIRECT, bypassing the page cache
//   hobbit.io_threads   (int)  I/O threads reading experts (default 4)
//   hobbit.gpu          (int)  1 (default): when the model offloads layers to a GPU, the slot
//                              pools are in its VRAM (budget_bytes is VRAM) and experts are
//                              computed there; 0: slots in RAM, experts computed on the CPU
//   hobbit.host_tier    (int)  GPU tier: 1 (default) every expert of the levels in use is kept
//                              in pinned RAM and copied from there; 0: each copy reads the file
//   hobbit.unified      (int)  GPU tier on unified memory (an integrated GPU: Jetson): -1 (default)
//                              when the device says it is integrated, 1 forced, 0 off. The slot
//                              pools are then pinned host memory that the GPU reads directly:
//                              loads read the file into them, nothing is copied
//   hobbit.policy       (str)  initial eviction: lru, lfu, fld, least-stale, hobbit (default)
//   hobbit.prefetch_depth (int) initial prefetch depth: -1 auto (default), 0 off, 1..3
//   hobbit.cpu_compute  (int)  initial cpu_compute of the policy: 1 (default), 0, 2, 3
//   hobbit.cpu_path     (int)  GPU tier: a decode graph's CPU path, where the CPU computes
//                              misses: -1 (default) when a host tier is kept and the slots do not
//                              hold every hi expert, 0 never, 1 always (to measure what it costs)
//   hobbit.graph_copies (int)  GPU tier with a host tier: 1 (default) the graph's thread queues a
//                              decode's copies on a stream of their own, 0 the I/O threads copy
//   hobbit.split        (int)  GPU tier, a graph with a CPU path: 1 the planner may split a
//                              miss, the CPU computing its first FFN rows while the others are
//                              copied and computed by the GPU; 0 (default) never: where the
//                              CPU's reads and the copies share the host's memory bandwidth it
//                              was slower (BENCHMARKS.md)
// Any other hobbit.* key is refused. The routed experts are then not resident: they are read
// from the file into the cache's slot pools on demand, under the policy below, which can be
// changed at any time. Several contexts may share one HOBBIT model, also from several threads.
//
// Faults: if an expert cannot be read (I/O error, short read, the file truncated or changed
// after load) or memory runs out while serving a batch, llama_decode returns a non-zero value
// (no output of that batch is valid) and llama_hobbit_last_error() on the calling thread says
// which file and why. The model and the context stay usable.

enum llama_hobbit_eviction {
    LLAMA_HOBBIT_EVICT_LRU   = 0, // least recently used
    LLAMA_HOBBIT_EVICT_LFU   = 1, // least frequently used in the sequence (decayed per pass)
    LLAMA_HOBBIT_EVICT_FLD   = 2, // the layer needed furthest ahead first (forward layer distance)
    LLAMA_HOBBIT_EVICT_STALE = 3, // least stale: the expert whose layer went by most often without it first
    LLAMA_HOBBIT_EVICT_BLEND = 4, // HOBBIT: weighted recency + frequency + hi needs + layer distance
};

#define LLAMA_HOBBIT_PREFETCH_AUTO (-1) // prefetch_depth: adapt between 0 and LLAMA_HOBBIT_PREFETCH_MAX (the
                                        // CPU tier from measured stalls, the GPU tier by timing each depth)
#define LLAMA_HOBBIT_PREFETCH_MAX  3

// Thresholds act on a route's share of its token's total gating weight (weight / sum of the
// token's selected weights), so the same values mean the same on every architecture. When the
// budget holds every hi expert at once, every miss loads at hi (unless hi_threshold > 1).
struct llama_hobbit_policy {
    float   hi_threshold;      // a missed expert whose share is >= this loads the hi copy, else lo
    float   skip_threshold;    // a route with share < this is skipped if its expert is not cached
    float   upgrade_threshold; // a lo hit with share >= this reloads the expert at hi (> 1: never)
    int32_t eviction;          // enum llama_hobbit_eviction
    float   w_recency;         // weights of the blend (LLAMA_HOBBIT_EVICT_BLEND), each >= 0
    float   w_frequency;
    float   w_hi_need;
    float   w_distance;
    int32_t prefetch_depth;    // layers ahead to prefetch: 0 off, 1..3, or LLAMA_HOBBIT_PREFETCH_AUTO
    int32_t prefetch_width;    // predicted experts beyond the router's top-k also prefetched (at lo)
    int32_t cpu_compute;       // GPU tier with a host tier: 1 (default) a decode's misses may be computed
                               // on the CPU from host RAM while others are copied (the planner picks
                               // from measured rates); 0: every miss is copied; 2: every miss of
                               // a decode is computed on the CPU (a diagnostic: the CPU path alone);
                               // 3: every miss of a decode is split between the CPU and the GPU
                               // where it can be (a diagnostic of hobbit.split=1, which it needs)
};

struct llama_hobbit_stats {
    uint64_t n_calls;          // MoE layer evaluations (one per layer per ubatch)
    uint64_t n_waves;          // rounds through the slots (> n_calls when a batch needs more experts than fit)
    uint64_t routes_total;     // (token, selected expert) pairs seen (= hits + loads + skipped + cpu)
    uint64_t hits_hi;          // routes served by a cached hi copy
    uint64_t hits_lo;          // routes served by a cached lo copy
    uint64_t loads_hi;         // routes that loaded a hi copy (one per load)
    uint64_t loads_lo;         // routes that loaded a lo copy (one per load)
    uint64_t skipped;          // routes dropped by skip_threshold (never for lack of room)
    uint64_t upgrades;         // hi loads that replaced a cached lo copy
    uint64_t demotions;        // misses the policy wanted at hi that were loaded at lo for lack of room
    uint64_t failed_loads;     // expert reads that failed (a demand one fails its batch)
    uint64_t bytes_loaded;     // bytes read from the expert store (demand and prefetch)
    uint64_t bytes_prefetched; // of which by prefetches
    double   load_stall_ms;    // time the compute waited for the policy and loads
    double   read_ms;          // time the I/O threads spent reading (summed over threads)
    uint64_t prefetch_issued;  // prefetch reads started
    uint64_t prefetch_used;    // prefetched copies a route then used
    uint64_t prefetch_wasted;  // prefetched copies evicted or cancelled before any use
    uint64_t predicted[LLAMA_HOBBIT_PREFETCH_MAX];       // routes of a layer predicted at depth d+1 ...
    uint64_t predicted_right[LLAMA_HOBBIT_PREFETCH_MAX]; // ... and how many of those routes' experts were predicted
    int32_t  prefetch_depth;   // the depth in use now (adapts with LLAMA_HOBBIT_PREFETCH_AUTO)
    int32_t  io_threads;
    uint64_t bytes_in_flight_peak; // most bytes queued or being read at once
    uint64_t budget_bytes;     // the budget asked for
    uint64_t cache_capacity_bytes; // bytes of slot memory allocated (<= budget_bytes)
    uint64_t cache_bytes;      // bytes of experts cached now
    uint64_t cache_peak_bytes; // most bytes of experts cached at once
    int32_t  n_slots_hi;       // hi experts the cache can hold at once
    int32_t  n_slots_lo;       // lo experts the cache can hold at once (0: hi only)
    // tiers: on the GPU tier the slots above are in VRAM, a load is a copy over the bus (its
    // bytes in bytes_loaded), and a hit is a VRAM hit
    int32_t  tier;             // where routed experts are computed: 0 the CPU (slots in RAM), 1 the GPU (slots in VRAM)
    uint64_t host_tier_bytes;  // GPU tier: experts kept in pinned host memory (0: each copy reads the file)
    uint64_t bytes_read;       // bytes loads read from the model file (GPU tier with a host tier: 0)
    int32_t  unified;          // GPU tier: 1 the GPU reads the slots in host memory (unified memory)
    uint64_t bytes_over_bus;   // GPU tier: bytes copied into VRAM slots (demand and prefetch)
    uint64_t host_hits;        // GPU tier: loads served by a copy from the host tier (no file read)
    uint64_t cpu_hi;           // GPU tier: routes computed on the CPU from the host tier, hi copy
    uint64_t cpu_lo;           // ... lo copy (not cached; counted apart from hits, loads and skips)
    uint64_t cpu_bytes;        // expert bytes those CPU computations read
    double   cpu_ms;           // time the CPU spent on them (summed over waves)
    double   copy_gbps;        // the planner's running estimates: copy rate over the bus (GB/s) ...
    double   cpu_gbps;         // ... and the CPU's rate on the hi level (GB/s of weights), 0: not measured
    double   between_ms;       // time from a layer's experts being served to the next MoE layer's routing, within
                               // a ubatch: the graph's other work (on the GPU tier with the hand-overs between
                               // GPU and CPU); with load_stall_ms and cpu_ms it splits a ubatch's MoE span
    int32_t  resident;         // GPU tier: 1 every hi expert was placed in VRAM once at load, and the graph
                               // indexes them as stock llama.cpp does its expert tensors (hobbit.resident)
    uint64_t passes_at_depth[LLAMA_HOBBIT_PREFETCH_MAX + 1]; // GPU tier, auto depth: decode passes timed at
                               // each prefetch depth (the depth trial's choices)
    int32_t  cpu_threads_min;  // GPU tier: fewest threads a wave's CPU experts ran on (0: none ran)
    uint64_t cpu_split;        // GPU tier: of the loads, routes split between the CPU (an expert's first rows,
                               // from the host tier) and the GPU (the other rows, copied first; hobbit.split)
    double   gpu_gap_ms;       // GPU tier: of between_ms, the time until the next layer's inputs reached the host
                               // (the GPU's work and the copy back); the rest is the CPU ops before the routing
    uint64_t warm_posted;      // GPU tier, hobbit.warm: layers whose predicted CPU miss was read into the CPU's
                               // caches while the GPU computed
    uint64_t warm_used;        // ... and of them, those whose CPU experts then computed that expert at that level
};

// true if the model was loaded in HOBBIT mode
LLAMA_API bool llama_hobbit_active(const struct llama_model * model);

LLAMA_API struct llama_hobbit_policy llama_hobbit_policy_default(void);

// returns 0 on success, -1 if the model is not in HOBBIT mode or the policy is invalid
LLAMA_API int32_t llama_hobbit_set_policy(struct llama_model * model, struct llama_hobbit_policy policy);
LLAMA_API struct llama_hobbit_policy llama_hobbit_get_policy(const struct llama_model * model);

// statistics since load or the last reset (all zero for a model not in HOBBIT mode)
LLAMA_API struct llama_hobbit_stats llama_hobbit_get_stats(const struct llama_model * model);
LLAMA_API void llama_hobbit_reset_stats(struct llama_model * model);

// the smallest budget (bytes) the expert cache of this model accepts (one expert at the hi
// level), or 0 if the model is not in HOBBIT mode
LLAMA_API uint64_t llama_hobbit_min_budget(const struct llama_model * model);

// the first GPU that layers offloaded with n_gpu_layers would go to (what the GPU tier's slots
// use): its free and total memory in bytes and whether its memory is the host's (an integrated
// GPU). Returns false, leaving the outputs alone, when the library has no GPU backend or no GPU.
LLAMA_API bool llama_hobbit_gpu_memory(size_t * free, size_t * total, bool * integrated);

// Tracing: what every route got, for timelines of the cache. While enabled, each route of each
// MoE layer evaluation is recorded (up to `capacity` events; later ones are counted as dropped).
enum llama_hobbit_outcome {
    LLAMA_HOBBIT_HIT_HI  = 0,
    LLAMA_HOBBIT_HIT_LO  = 1,
    LLAMA_HOBBIT_LOAD_HI = 2,
    LLAMA_HOBBIT_LOAD_LO = 3,
    LLAMA_HOBBIT_SKIP    = 4,
    LLAMA_HOBBIT_CPU_HI  = 5, // GPU tier: computed on the CPU from the host tier
    LLAMA_HOBBIT_CPU_LO  = 6,
};

struct llama_hobbit_route_event {
    uint64_t ubatch;     // which walk through the layers (a ubatch), counting since tracing was enabled
    int32_t  layer;
    int32_t  token;      // token of the ubatch
    int32_t  expert;
    float    share;      // the route's share of its token's gating weight
    int32_t  outcome;    // enum llama_hobbit_outcome
    int32_t  prefetched; // a hit on a copy a prefetch brought in (its depth), else 0
};

// start (clearing what was recorded) or stop recording; returns 0, -1 if not in HOBBIT mode
LLAMA_API int32_t llama_hobbit_trace_enable(struct llama_model * model, bool enable, uint64_t capacity);

// move up to max recorded events (oldest first) to out; returns how many. *dropped (optional)
// receives how many events did not fit since tracing was enabled.
LLAMA_API size_t llama_hobbit_trace_read(struct llama_model * model, struct llama_hobbit_route_event * out,
                                         size_t max, uint64_t * dropped);

// The message of the last HOBBIT error on this thread, or "". A model load, and a llama_decode
// on a HOBBIT model, clear it when they start; a failed one sets it.
LLAMA_API const char * llama_hobbit_last_error(void);

#ifdef __cplusplus
}
#endif
