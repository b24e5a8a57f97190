// HOBBIT expert cache: slot pools in backend memory under one byte budget, shared by every
// context of one model, filled by a pool of I/O threads.
//
// The model owns the cache (llama_model::hobbit); each context that uses the model has a
// llama_hobbit_context (hobbit-context.h) with what it has pinned and the layer it is serving.
// One mutex guards the books (slots, policy, stats). Reads run on the loader's I/O threads
// (hobbit-loader.h) into slots whose entries are marked loading and pinned, so nobody evicts
// or reads them until they are ready. Waves that cannot get room because other contexts pin it
// wait in FIFO order, holding no pins, so contexts never deadlock and none starves.
//
// Prefetch: before a layer's experts are served, the graph predicts the next layers' routes
// (hobbit-prefetch.h) and the cache queues reads of predicted experts that are not cached,
// behind demand reads, evicting neither pinned entries, nor unused prefetches, nor experts of
// the layers from the current one to the deepest predicted.
#pragma once

#include "hobbit-copier.h"
#include "hobbit-cpu-expert.h"
#include "hobbit-host.h"
#include "hobbit-loader.h"
#include "hobbit-planner.h"
#include "hobbit-policy.h"
#include "hobbit-prefetch.h"
#include "hobbit-slots.h"
#include "hobbit-store.h"
#include "hobbit-warm.h"
#include "llama-hobbit.h"

#include "ggml.h"
#include "ggml-backend.h"

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

struct llama_hobbit_context;

// the logits of one router applied to an earlier layer's input: [n_expert, n_tokens] F32
struct llama_hobbit_router_logits {
    int          il;     // the layer whose router it is
    int          depth;  // MoE layers ahead of the layer whose input it was applied to
    const char * data;
    size_t       nb1;
    int64_t      n_tokens;
};

// what a wave waited for of its split misses' copies (the rows the GPU computes)
struct llama_hobbit_split_wait {
    size_t bytes = 0;
    std::chrono::steady_clock::time_point done_at{};
    bool   timed = true;
};

struct llama_hobbit_cache {
    // shape
    int  n_layer       = 0;
    int  n_expert      = 0;
    int  n_expert_used = 0;
    bool has_lo        = false;
    int  n_levels() const { return has_lo ? 2 : 1; } // the levels in use (hi, and lo if any): a path each
    std::string type_name[LLAMA_HOBBIT_N_LVL]; // requested type of each level used
    std::vector<bool> serves;                  // [il] the layer's routed experts come from the cache
    int n_served = 0;                          // layers it serves (set by init_pools)

    // routers of the MoE layers, for prefetch predictions: [il]
    std::vector<ggml_tensor *> gate_inp;
    std::vector<ggml_tensor *> gate_inp_b;
    std::vector<ggml_tensor *> probs_bias;

    // GPU tier, hobbit.warm=1: the next layer's predicted CPU miss is read into the CPU's caches
    // while the GPU computes (hobbit-warm.h), from the routers' copies on the host; 2: so, with the
    // context's workers pinned to cores (warm_pin)
    bool warm     = false;
    bool warm_pin = false;
    std::vector<llama_hobbit_router_host> router_host; // [il]
    // the routers' host copies (warm); a layer whose router (or bias) has a type that cannot be
    // read back as floats gets none, and is not warmed
    void load_routers();
    // the expert of layer il (and its level) that the CPU would most likely compute next, from
    // the previous MoE layer's input x (n_embd floats: il's router applied to it, as prefetch
    // predicts) and what VRAM holds; false if none or the CPU cannot compute it
    bool warm_target(int il, const float * x, int gating, int & expert, int & lvl);
    void note_warm(bool used); // stats: a warm posted (used: the CPU then computed that expert)

    llama_hobbit_store store;

    // GPU tier: the slot pools are in VRAM and loads are copies from the host tier
    bool gpu = false;
    llama_hobbit_host host;
    ggml_backend_buffer_type_t staging_buft = nullptr; // pinned host memory, for copies to VRAM
    // GPU tier with a host tier: demand copies queued by the graph's thread (inactive: the loader's)
    llama_hobbit_copier copier;
    // GPU tier on unified memory: the pools are pinned host memory the GPU reads (no copies)
    bool unified = false;
    ggml_backend_buffer_type_t device_buft = nullptr;  // the GPU's buffer type, for the pools

    // slot memory: one arena per projection; the hi and lo pool tensors are two views of it
    size_t unit_bytes[LLAMA_HOBBIT_N_PROJ] = {};
    ggml_backend_buffer_t buf[LLAMA_HOBBIT_N_PROJ] = {};
    void * arena[LLAMA_HOBBIT_N_PROJ] = {}; // host memory of the buffers, when the cache owns it
    ggml_context * ctx = nullptr; // holds the pool tensors
    ggml_tensor  * pool[LLAMA_HOBBIT_N_LVL][LLAMA_HOBBIT_N_PROJ] = {};

    llama_hobbit_cache() = default;
    llama_hobbit_cache(const llama_hobbit_cache &) = delete;
    llama_hobbit_cache & operator=(const llama_hobbit_cache &) = delete;
    ~llama_hobbit_cache();

    // size the slots for `budget` bytes and allocate the arenas in `buft` (host or VRAM; throws if
    // the budget is below the minimum or memory cannot be had: load time only)
    void init_pools(ggml_backend_buffer_type_t buft, uint64_t budget);

    // start the I/O threads (throws: load time only)
    void start_loader(int n_threads);

    // GPU tier with an active copier: time a copy of one expert into a free slot, twice, so that
    // the planner starts from the bus's measured rate (load time, before any context)
    void calibrate_copies();

    // GPU tier when the slots hold every hi expert: each is copied once at load into slot
    // m*n_expert + e of the hi pool (m: its layer's place among the MoE layers) and stays, so a
    // layer's experts are a view of the pool that the routed ids index as they are, like stock
    // llama.cpp's expert tensors, and the decode's graph has no HOBBIT op and no hand-over to the
    // CPU (hobbit.resident=0: served by the route op as any budget is; never with the CPU path
    // forced). Routes are then counted at each ubatch, every one a hi hit.
    bool resident = false;
    int  resident_mode = 1;     // hobbit.resident
    std::vector<int> moe_index; // [il] the layer's place among the MoE layers the cache serves, -1 if none
    void make_resident();       // load time (throws if a copy cannot be queued)
    void count_resident_routes(int64_t n_tokens); // a ubatch of resident experts: every route a hi hit

    // smallest budget init_pools accepts: one expert at hi (in units of the lo size)
    uint64_t min_budget() const;
    uint64_t min_bytes = 0; // (set by init_pools)

    int n_waves(int64_t n_used, int64_t n_tokens) const {
        return llama_hobbit_n_waves(slots, n_used, n_tokens);
    }

    // a ubatch this small (a decode) in one wave on the GPU tier with a host tier gets a CPU
    // path in its graph: misses the planner gives to the CPU are computed there from the host
    // tier while the others are copied (hobbit-planner.h)
    static constexpr int64_t CPU_PATH_MAX_TOKENS = 4;
    // (not when the slots hold every hi expert: each is then copied once and stays, and the
    // output equals stock llama.cpp's with every expert in VRAM)
    // hobbit.cpu_path: 0 never, 1 even then (to measure what the path costs)
    bool cpu_path(int64_t n_tokens, int n_waves) const {
        return gpu && !unified && host.resident() && cpu_path_mode != 0 && (!all_hi_fit || cpu_path_mode > 0) &&
               n_waves == 1 && n_tokens <= CPU_PATH_MAX_TOKENS;
    }
    int cpu_path_mode = -1; // hobbit.cpu_path: -1 auto, 0 never, 1 always

    // a graph with a CPU path may also split misses between the CPU and the GPU (hobbit-planner.h):
    // it then has a path over views of each level's pools from split_row(il, lvl) on
    int split_mode = 0; // hobbit.split: 1 the planner may split a miss, 0 (default) never
    double split_share = 0.5; // hobbit.split_cpu_pct: the share of a split miss's rows the CPU computes
    bool split_paths(int64_t n_tokens, int n_waves) const {
        return split_mode != 0 && cpu_path(n_tokens, n_waves);
    }
    // the FFN row from which the GPU computes a split miss of layer il at level lvl (the CPU the
    // rows before it); 0 if that level cannot be split
    int64_t split_row(int il, int lvl) const;
    bool all_hi_fit = false; // the slots hold every routed expert at hi at once (then every miss loads at hi)

    // the host tier's projections of layer il at level lvl, for the CPU path (null when not held)
    llama_hobbit_cpu_weights cpu_weights(int il, int lvl) const {
        return { host.tensor(il, lvl, LLAMA_HOBBIT_GATE), host.tensor(il, lvl, LLAMA_HOBBIT_UP),
                 host.tensor(il, lvl, LLAMA_HOBBIT_DOWN) };
    }

    // the next MoE layers after il, up to n of them
    std::vector<int> next_moe_layers(int il, int n) const;

    // how many MoE layers ahead a graph built now predicts (applies their routers to a layer's
    // router input, for prefetch): none while the depth is 0 for sure (the policy's depth is 0,
    // or the GPU tier's auto depth runs at 0 between its trials), else every layer prefetch may
    // reach (predictions beyond the depth in use measure their accuracy)
    int graph_depth();
    bool always_predict = false; // hobbit.always_predict: graphs predict at depth 0 too (a diagnostic)

    // serve wave `wave` of layer il for one context: plan, load, wait, and write the slot of
    // each route into ids ([n_used, n_tokens, hi|lo], -1 where a path does not serve the route).
    // Never throws; a failure is recorded in the context and every id left -1.
    // With `cpu` (a graph with a CPU path: ids is [n_used, n_tokens, GPU planes + paths]) the
    // planner may give misses to the CPU, whose expert ids go to the last planes (one a level);
    // with `split` too (the GPU planes are hi|lo|split hi|split lo) it may split misses, whose
    // ids go to a CPU plane and, in finish_wave, a split plane. It returns once the loads are
    // submitted, and finish_wave waits for them and writes the slots.
    void serve_wave(llama_hobbit_context & hctx, int il, int wave, int n_waves,
                    const llama_hobbit_routes & routes, ggml_tensor * ids, bool cpu = false, bool split = false);

    // after serve_wave with `cpu`, once the CPU's experts are computed: wait for the wave's loads
    // (a split miss's first part) and write the slot of each route into ids ([n_used, n_tokens,
    // the GPU planes]). Never throws.
    void finish_wave(llama_hobbit_context & hctx, int il, int wave, const llama_hobbit_routes & routes, ggml_tensor * ids);

    // predict the experts of the next layers from their routers' logits on layer il's input,
    // and queue prefetches of those not cached (a prefetch op of layer il; never throws)
    void prefetch(llama_hobbit_context & hctx, int il, int gating, const std::vector<llama_hobbit_router_logits> & logits);

    // drop every pin the context holds (its graph no longer reads those slots)
    void release(llama_hobbit_context & hctx);

    // C API
    void                trace_enable(bool enable, uint64_t capacity);
    size_t              trace_read(llama_hobbit_route_event * out, size_t max, uint64_t * dropped);
    llama_hobbit_policy get_policy();
    bool                set_policy(const llama_hobbit_policy & pol, std::string & err);
    llama_hobbit_stats  get_stats();
    void                reset_stats();

private:
    // run `body(lk, start)` under the lock, its time counted as stall; a throw fails the context's
    // ubatch and leaves every id -1
    template <typename F>
    void guarded(llama_hobbit_context & hctx, int il, ggml_tensor * ids, F && body);
    void serve_wave_locked(std::unique_lock<std::mutex> & lk, llama_hobbit_context & hctx, int il, int wave,
                           int n_waves, const llama_hobbit_routes & routes, ggml_tensor * ids, bool cpu, bool split);
    void finish_wave_locked(std::unique_lock<std::mutex> & lk, llama_hobbit_context & hctx, int il, int wave,
                            const llama_hobbit_routes & routes, ggml_tensor * ids);
    void plan_cpu(llama_hobbit_context & hctx, const llama_hobbit_policy & pol, bool split);
    void prefetch_locked(llama_hobbit_context & hctx, int il, int gating, const std::vector<llama_hobbit_router_logits> & logits);
    void release_locked(llama_hobbit_context & hctx);
    void note_evicted(const std::vector<int> & evicted);
    void note_prediction(llama_hobbit_context & hctx, int il, const llama_hobbit_routes & routes);
    void adapt_depth(llama_hobbit_context & hctx); // the depth for the next layer, also into stats.prefetch_depth
    void time_pass(llama_hobbit_context & hctx, int64_t n_tokens); // GPU tier: a pass started
    // a queued prefetch of entry idx is dropped, or one on the copier's stream waited for: true if
    // its room is no longer held
    bool take_back_prefetch(std::unique_lock<std::mutex> & lk, int idx);
    // GPU tier with the copier: a context's prefetches go on the copier's stream behind its wave's
    // demand copies; those queued before a finished demand copy are landed (all: every one)
    void   submit_prefetch_copies();
    void   complete_prefetch_copies(std::unique_lock<std::mutex> & lk, bool all);
    size_t prefetch_copy_backlog() const; // bytes of them that may still be on the bus
    void expire_prefetches(int il);   // a layer was served: its unused prefetches were wrong guesses
    llama_hobbit_load_ptr make_load(int idx, int depth);
    void on_loaded(const llama_hobbit_load_ptr & job); // an I/O thread finished a read
    void on_loaded_locked(const llama_hobbit_load_ptr & job);
    // the copier's copies: whether it can take a job (a copy from the host tier into VRAM),
    // queue one (false: not possible, the loader takes it), wait for one (dropping the lock
    // meanwhile), and wait for those of a list (a wave's, or those an aborted graph left)
    bool copier_takes(const llama_hobbit_load_ptr & job) const {
        return copier.active() && job->device[0] && host.resident();
    }
    bool submit_copy(const llama_hobbit_load_ptr & job);
    // the copy of expert e of layer il at level lvl from the host tier into slot `slot` of its
    // pool (false: the host tier does not hold it)
    bool host_copy(int il, int e, int lvl, int slot, llama_hobbit_copy & c) const;
    // ... of its FFN rows [row0, row1) only: those rows of gate and up, those columns of down
    bool host_copy_rows(int il, int e, int lvl, int slot, int64_t row0, int64_t row1, llama_hobbit_copy & c) const;
    // a split miss's copies (job->split_row set): the rows from split_row on now, with
    // job->part_event after them (false: the copier cannot take it, nothing was queued) ...
    bool submit_split_part(const llama_hobbit_load_ptr & job);
    // ... and the first rows, once the wave's other copies and prefetches are queued (job->copy_event)
    void submit_split_head(const llama_hobbit_load_ptr & job);
    // wait for the first part of each split miss of a wave's loads; they then land like prefetches
    void wait_split_parts(std::unique_lock<std::mutex> & lk, std::vector<llama_hobbit_load_ptr> & loads,
                          llama_hobbit_split_wait & w);
    void complete_copy(std::unique_lock<std::mutex> & lk, const llama_hobbit_load_ptr & job);
    void drain_copies(std::unique_lock<std::mutex> & lk, const std::vector<llama_hobbit_load_ptr> & jobs);
    llama_hobbit_clock clock_at(int il) const;
    llama_hobbit_policy effective_policy() const; // the policy as a wave applies it (under the lock)

    std::mutex              mtx;
    std::condition_variable cv;
    std::deque<uint64_t>    queue; // tickets of waves waiting for room, first come first served
    uint64_t                next_ticket = 0;
    uint64_t                tick = 0;
    uint64_t                pass = 0;
    int64_t                 n_prefetched = 0; // prefetched copies not used yet (queued, in flight or ready)

    llama_hobbit_slots                    slots;
    llama_hobbit_policy                   policy = llama_hobbit_policy_default();
    std::unique_ptr<llama_hobbit_evictor> evictor;
    llama_hobbit_stats                    stats  = {};
    llama_hobbit_cost_model               cost;   // GPU tier: measured copy and CPU rates, for the planner
    llama_hobbit_depth_trial              depth_trial; // GPU tier, auto depth: pass times per depth (all contexts)
    static_assert(LLAMA_HOBBIT_PREFETCH_MAX <= llama_hobbit_depth_trial::MAX_DEPTH, "depth trial too small");

    bool                                  tracing = false;
    uint64_t                              trace_capacity = 0;
    uint64_t                              trace_pass = 0; // the pass tracing started at
    uint64_t                              trace_dropped = 0;
    std::deque<llama_hobbit_route_event>  trace;

    std::unordered_map<int, llama_hobbit_load_ptr> in_flight; // entry -> its read, queued or running
    std::vector<llama_hobbit_load_ptr> deferred_prefetches; // prefetches for the copier, queued after the next wave's demand copies
    std::vector<llama_hobbit_load_ptr> copier_prefetches;   // prefetches queued on the copier, not landed yet
    uint64_t copy_seq      = 0; // copies queued on the copier so far
    uint64_t copy_seq_done = 0; // every copy up to this one has landed
    llama_hobbit_loader                            loader;    // stopped first of all (destructor)
};
