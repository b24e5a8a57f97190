// HOBBIT graph: the routed experts of a MoE layer computed from the expert cache.
//
//   cur ──► mul_mat(router of layer l+1, l+2, l+3) ──► hobbit_prefetch (CPU op: predict, queue reads)
//   for each wave w (one wave unless the ubatch needs more experts than the slots hold):
//     selected, weights [, down of wave w-1] ──► hobbit_route (CPU op: policy + loads) ──► ids [n_used, n_tokens, hi|lo]
//     for each path (hi, lo): mul_mat_id(pool_up/gate) -> GLU -> mul_mat_id(pool_down)
//   experts = sum of the down outputs   (a route is served by one wave and one path; the rest leave zero rows)
//   out     = sum over the used experts of weight * experts
//
// On the GPU tier with a host tier, a decode's graph also has a CPU path (hobbit-planner.h):
//
//     selected, weights ──► hobbit_route (submits the copies, does not wait) ──► ids [.., hi|lo[|split hi|split lo]|cpu hi|cpu lo]
//     ids, cur ──► hobbit_cpu_experts (CPU threads, from the host tier; hobbit-cpu-expert.h, hobbit-workers.h) ──► cpu out
//     selected, weights, ids, cpu out ──► hobbit_wait (waits for the copies) ──► ids [.., hi|lo[|split hi|split lo]] + cpu out ──► GPU paths
//
// so the CPU computes the misses the planner gave it while the others are copied into VRAM (with
// hobbit.warm the wait op also has the layer's input, and starts the workers reading the next
// layer's predicted CPU miss while the GPU computes: hobbit-warm.h). With
// split paths (hobbit.split), each level also has a path over views of its pools from a split
// row on, for the misses the planner split: the CPU computes their rows before it, and the GPU
// the others from a slot whose copy of those rows was queued first. On
// the GPU tier the CPU ops' inputs (the selected experts, the weights, the layer's input, the
// next layers' logits) are concatenated on the GPU and reach the host in one copy
// (bundle_for_host), and the wait op's slot ids and CPU experts reach the GPU in one.

// mul_mat_id skips negative ids and leaves their rows zero, so a route costs nothing in a path
// that does not serve it, and a skipped route costs nothing at all. A wave's route op depends
// on the previous wave's output, so it runs after the matmuls that read the slots it may reuse;
// the first one depends on the prefetch op, so the next layers' reads are queued before this
// layer's experts are served (behind this layer's own reads, which go first).

#include "hobbit-hooks.h"
#include "hobbit-cache.h"
#include "hobbit-context.h"
#include "hobbit-cpu-expert.h"
#include "hobbit-mmid.h"
#include "hobbit-warm.h"

#include "ggml.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>

static void llama_hobbit_prefetch_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) nth;
    if (ith != 0) {
        return;
    }
    const auto * op = (const llama_hobbit_op *) userdata;
    std::vector<llama_hobbit_router_logits> logits;
    for (size_t i = 0; i < op->targets.size(); ++i) {
        const ggml_tensor * l = dst->src[i];
        logits.push_back({ op->targets[i], (int) i + 1, (const char *) l->data, l->nb[1], l->ne[1] });
    }
    op->hctx->cache->prefetch(*op->hctx, op->il, op->gating, logits);
}

// the routes of a route or wait op: its first two sources are the selected experts and weights
static llama_hobbit_routes routes_of(const ggml_tensor * dst) {
    const ggml_tensor * sel = dst->src[0];
    const ggml_tensor * w   = dst->src[1];
    llama_hobbit_routes routes;
    routes.sel      = (const char *) sel->data;
    routes.sel_nb0  = sel->nb[0];
    routes.sel_nb1  = sel->nb[1];
    routes.sel_f32  = sel->type == GGML_TYPE_F32;
    routes.w        = (const char *) w->data;
    routes.w_nb1    = w->nb[1];
    routes.w_nb2    = w->nb[2];
    routes.n_used   = sel->ne[0];
    routes.n_tokens = sel->ne[1];
    return routes;
}

// the routes a CPU path computes: in the last n_lvl planes of the route op's ids, one a level
static std::vector<llama_hobbit_cpu_route> cpu_routes(const ggml_tensor * ids, int n_lvl) {
    std::vector<llama_hobbit_cpu_route> out;
    const int64_t base = ids->ne[2] - n_lvl;
    for (int lvl = 0; lvl < n_lvl; ++lvl) {
        for (int64_t t = 0; t < ids->ne[1]; ++t) {
            for (int64_t r = 0; r < ids->ne[0]; ++r) {
                const int32_t e = *(const int32_t *) ((const char *) ids->data + r*ids->nb[0] + t*ids->nb[1] +
                                                      (base + lvl)*ids->nb[2]);
                if (e >= 0) {
                    out.push_back({ (int) t, (int) r, lvl, e });
                }
            }
        }
    }
    return out;
}

static void llama_hobbit_route_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) nth;
    if (ith != 0) {
        return; // one task: the policy runs on the graph's thread
    }
    const auto * op = (const llama_hobbit_op *) userdata;
    llama_hobbit_context & hctx = *op->hctx;
    if (op->cpu_path) {
        hctx.cpu_workers.wake(); // while the policy plans: the CPU experts op may need them
    }
    hctx.wave_started(op->il, op->wave);
    hctx.cache->serve_wave(hctx, op->il, op->wave, op->n_waves, routes_of(dst), dst, op->cpu_path, op->split);
    if (!op->cpu_path) {
        hctx.wave_served(op->il, op->wave);
        return;
    }
    hctx.routed_at   = std::chrono::steady_clock::now(); // the CPU's experts are computed next
    hctx.cpu_busy_ms = 0.0;
    hctx.cpu_threads = 0;
}

// the misses the planner gave to the CPU: the graph's thread and llama_hobbit_parallel's workers
// (hobbit-workers.h) compute them (llama_hobbit_cpu_experts: the FFN rows of every route in
// chunks, then the outputs). Like every HOBBIT op it is one task, so a layer without CPU routes
// wakes no other thread.
static void llama_hobbit_cpu_experts_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) nth;
    if (ith != 0) {
        return; // a one-task op: the workers are the context's own
    }
    const auto * op = (const llama_hobbit_op *) userdata;
    llama_hobbit_context & hctx = *op->hctx;
    const ggml_tensor * ids = dst->src[0];
    const ggml_tensor * cur = dst->src[1];
    const int64_t n_embd = dst->ne[0];
    for (int64_t t = 0; t < dst->ne[2]; ++t) {
        for (int64_t r = 0; r < dst->ne[1]; ++r) {
            memset((char *) dst->data + r*dst->nb[1] + t*dst->nb[2], 0, n_embd*sizeof(float));
        }
    }
    // what the workers read ahead for this layer (warm_next), taken once: it is this op's or none's
    const bool warmed = hctx.cache->warm && hctx.warm_il == op->il;
    hctx.warm_il = -1;
    if (hctx.cache->warm) {
        hctx.cpu_workers.finish_posted(); // what was read ahead is read; the op needs the workers
    }
    if (hctx.failed) {
        return;
    }
    const std::vector<llama_hobbit_cpu_route> routes = cpu_routes(ids, hctx.cache->n_levels());
    if (routes.empty()) {
        return;
    }
    bool warm_taken = false;
    llama_hobbit_cpu_run run;
    try {
        std::vector<llama_hobbit_cpu_task> tasks;
        for (const llama_hobbit_cpu_route & c : routes) {
            const llama_hobbit_cpu_weights w = hctx.cache->cpu_weights(op->il, c.lvl);
            const int n_slices = llama_hobbit_cpu_expert_slices(w);
            if (n_slices == 0) { // the planner never gives such a level to the CPU
                hctx.fail("hobbit: the CPU cannot compute these experts' type");
                return;
            }
            // a split miss: the CPU computes its rows before the split row (hobbit-planner.h)
            const bool split = hctx.job.cpu[c.expert] == 2;
            const int64_t rows = split ? hctx.cache->split_row(op->il, c.lvl) : llama_hobbit_cpu_slice_row(w, n_slices, n_slices);
            tasks.push_back({ w, c.expert, (const float *) ((const char *) cur->data + c.token*cur->nb[2]), rows,
                              (float *) ((char *) dst->data + c.route*dst->nb[1] + c.token*dst->nb[2]) });
            // the expert the workers read ahead: one route takes it, each worker computing the part it read
            if (warmed && !warm_taken && c.expert == hctx.warm_expert && c.lvl == hctx.warm_lvl && !split) {
                tasks.back().parts = hctx.warm_parts;
                warm_taken = true;
                hctx.cache->note_warm(true);
            }
        }
        run = llama_hobbit_cpu_experts(tasks, op->gelu, std::max(1, hctx.n_threads), hctx.cpu_workers, hctx.cpu_scratch,
                                       hctx.cache->warm);
    } catch (const std::exception & e) {
        hctx.fail(std::string("hobbit: computing experts on the CPU: ") + e.what());
        return;
    }
    if (run.out_of_memory) {
        hctx.fail("hobbit: computing experts on the CPU: out of memory");
        return;
    }
    // the planner's CPU rate is the threads' own compute once they run: threads that slept since
    // the CPU's last work start late (on a VM's idle cores, by up to milliseconds); counting that
    // start made one slow start look like a slow CPU, which then got no work, so its threads
    // stayed cold and every probe confirmed it
    hctx.cpu_threads = run.threads;
    hctx.cpu_busy_ms = run.busy_ms;
}

// warming (hobbit-warm.h): once a decode's layer il is served, the workers read the next MoE
// layer's predicted CPU miss (its router applied to x, this layer's input) into their caches,
// each its part, while the GPU computes; the next layer's CPU experts op stops them
static void warm_next(llama_hobbit_context & hctx, int il, int gating, const float * x) {
    hctx.warm_il = -1;
    const std::vector<int> next = hctx.cache->next_moe_layers(il, 1);
    const int n = hctx.n_threads;
    int expert = -1, lvl = 0;
    if (next.empty() || n < 2 || !hctx.cache->warm_target(next[0], x, gating, expert, lvl)) {
        return;
    }
    const llama_hobbit_cpu_weights w = hctx.cache->cpu_weights(next[0], lvl);
    const int parts = n - 1;
    hctx.warm_il     = next[0];
    hctx.warm_expert = expert;
    hctx.warm_lvl    = lvl;
    hctx.warm_parts  = parts;
    hctx.cache->note_warm(false);
    llama_hobbit_workers * pool = &hctx.cpu_workers;
    pool->post(n, [w, expert, parts, pool](int i, int) {
        if (i >= 1 && i <= parts) {
            llama_hobbit_warm_touch(w, expert, llama_hobbit_warm_part(w, w.gate->ne[1], i - 1, parts),
                                    [pool] { return pool->cancelled(); });
        }
    });
}

// the most slot ids a wait op hands to the GPU (a decode of CPU_PATH_MAX_TOKENS tokens with up to
// 32 routes a token on two paths, or 16 on four with the split paths); a graph whose ids would not
// fit has no CPU path (or no split paths)
static constexpr int64_t WAIT_IDS_MAX = 256;

// after the CPU path's experts: wait for the copies, then hand the slots to the GPU paths. Its
// output goes to the GPU in one copy: F32 [the slot ids of the paths, n_used x n_tokens x paths |
// the CPU's experts, n_embd x n_used x n_tokens]; the GPU turns the ids back into int32 (slot
// numbers are far below 2^24, exact as floats).
static void llama_hobbit_wait_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) nth;
    if (ith != 0) {
        return;
    }
    const auto * op = (const llama_hobbit_op *) userdata;
    llama_hobbit_context & hctx = *op->hctx;
    const ggml_tensor * route_ids = dst->src[2];
    const ggml_tensor * cpu       = dst->src[3];
    const int64_t n_used = route_ids->ne[0], n_tokens = route_ids->ne[1];
    const int64_t n_planes = route_ids->ne[2] - hctx.cache->n_levels(); // the GPU's
    const int64_t n_ids    = n_used*n_tokens*n_planes;
    ggml_tensor slot_ids = {}; // the layout finish_wave writes: int32 [n_used, n_tokens, GPU planes]
    slot_ids.type  = GGML_TYPE_I32;
    slot_ids.ne[0] = n_used;
    slot_ids.ne[1] = n_tokens;
    slot_ids.ne[2] = n_planes;
    slot_ids.ne[3] = 1;
    slot_ids.nb[0] = sizeof(int32_t);
    slot_ids.nb[1] = n_used*sizeof(int32_t);
    slot_ids.nb[2] = n_used*n_tokens*sizeof(int32_t);
    slot_ids.nb[3] = n_ids*sizeof(int32_t);
    int32_t ids[WAIT_IDS_MAX];
    GGML_ASSERT(n_ids <= WAIT_IDS_MAX); // the graph has a CPU path only where they fit
    slot_ids.data = ids;
    hctx.cache->finish_wave(hctx, op->il, op->wave, routes_of(dst), &slot_ids);
    hctx.wave_served(op->il, op->wave);
    float * out = (float *) dst->data;
    for (int64_t k = 0; k < n_ids; ++k) {
        out[k] = (float) ids[k];
    }
    memcpy(out + n_ids, cpu->data, ggml_nbytes(cpu));
    if (hctx.cache->warm && n_tokens == 1 && !hctx.failed) {
        warm_next(hctx, op->il, op->gating, (const float *) dst->src[4]->data); // src 4: the layer's input
    }
}

// the next MoE layers' router logits from this layer's router input (their routers applied to
// it), for the prefetch op; none at the last MoE layer
static std::vector<ggml_tensor *> next_logits(const llama_hobbit_cache & cache, ggml_context * ctx,
                                              const std::vector<int> & targets, ggml_tensor * cur) {
    std::vector<ggml_tensor *> out;
    ggml_tensor * x = ggml_reshape_2d(ctx, cur, cur->ne[0], cur->ne[2]);
    for (int t : targets) {
        ggml_tensor * logits = ggml_mul_mat(ctx, cache.gate_inp[t], x);
        if (cache.gate_inp_b[t]) {
            logits = ggml_add(ctx, logits, cache.gate_inp_b[t]);
        }
        out.push_back(logits);
    }
    return out;
}

// the op that turns the next layers' logits into prefetches; nullptr when there are none
static ggml_tensor * build_prefetch(llama_hobbit_context * hctx, ggml_context * ctx, int il, int gating,
                                    const std::vector<int> & targets, const std::vector<ggml_tensor *> & logits) {
    if (targets.empty()) {
        return nullptr;
    }
    ggml_tensor * args[LLAMA_HOBBIT_PREFETCH_MAX];
    for (size_t i = 0; i < targets.size(); ++i) {
        args[i] = logits[i];
    }
    llama_hobbit_op * op = hctx->op(il, -1, 0);
    op->gating  = gating;
    op->targets = targets;
    ggml_tensor * pf = ggml_custom_4d(ctx, GGML_TYPE_F32, 1, 1, 1, 1, args, (int) targets.size(),
            llama_hobbit_prefetch_op, 1, op);
    ggml_format_name(pf, "hobbit_prefetch-%d", il);
    return pf;
}

// the inputs of the CPU ops: the selected experts [n_used, n_tokens], the routing weights
// [1, n_used, n_tokens], the layer's input [n_embd, 1, n_tokens] (for the CPU path) and the next
// layers' logits [n_expert, n_tokens]
struct host_inputs {
    ggml_tensor * selected;
    ggml_tensor * weights;
    ggml_tensor * cur;
    std::vector<ggml_tensor *> logits;
};

// a CPU op that copies its source (the GPU's bundle, once it is on the host) into dst: the first
// CPU op after the GPU's work since the last layer (the scheduler waited for it)
static void llama_hobbit_to_host_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) nth;
    if (ith == 0) {
        ((llama_hobbit_context *) userdata)->inputs_arrived();
        memcpy(dst->data, dst->src[0]->data, ggml_nbytes(dst));
    }
}

// On the GPU tier they are computed on the GPU. The scheduler copies each GPU tensor (and each
// view of one) that a CPU op reads on its own, with waits for the GPU around every copy: there
// they are concatenated on the GPU (the selected experts as floats) into one tensor, which one
// CPU op (llama_hobbit_to_host_op) takes, so that it reaches the host in one copy, and the other
// CPU ops read views of that op's output, on the host.
static host_inputs bundle_for_host(llama_hobbit_context * hctx, ggml_context * ctx, const host_inputs & in, bool with_cur) {
    const int64_t n_used = in.weights->ne[1], n_tokens = in.weights->ne[2];
    ggml_tensor * w = ggml_is_contiguous(in.weights) ? in.weights : ggml_cont(ctx, in.weights);
    ggml_tensor * all = ggml_concat(ctx, ggml_cast(ctx, in.selected, GGML_TYPE_F32),
                                    ggml_reshape_2d(ctx, w, n_used, n_tokens), 0);
    if (with_cur) {
        all = ggml_concat(ctx, all, ggml_reshape_2d(ctx, in.cur, in.cur->ne[0], n_tokens), 0);
    }
    for (ggml_tensor * l : in.logits) {
        all = ggml_concat(ctx, all, l, 0);
    }
    ggml_format_name(all, "hobbit_host_floats");
    ggml_tensor * host = ggml_custom_4d(ctx, GGML_TYPE_F32, all->ne[0], n_tokens, 1, 1, &all, 1,
                                        llama_hobbit_to_host_op, 1, hctx);
    ggml_format_name(host, "hobbit_to_host");
    host_inputs out = in;
    size_t off = 0;
    out.selected = ggml_view_2d(ctx, host, n_used, n_tokens, host->nb[1], 0);
    off += n_used;
    out.weights = ggml_view_3d(ctx, host, 1, n_used, n_tokens, sizeof(float), host->nb[1], off*sizeof(float));
    off += n_used;
    if (with_cur) {
        out.cur = ggml_view_3d(ctx, host, in.cur->ne[0], 1, n_tokens, host->nb[1], host->nb[1], off*sizeof(float));
        off += in.cur->ne[0];
    }
    for (size_t i = 0; i < in.logits.size(); ++i) {
        out.logits[i] = ggml_view_2d(ctx, host, in.logits[i]->ne[0], n_tokens, host->nb[1], off*sizeof(float));
        off += in.logits[i]->ne[0];
    }
    return out;
}

// as build_moe_ffn: weight each expert's output, then sum over the used experts
static ggml_tensor * weighted_sum(ggml_context * ctx, ggml_tensor * experts, ggml_tensor * weights, int64_t n_embd,
                                  int64_t n_tokens, int64_t n_expert_used) {
    experts = ggml_mul(ctx, experts, weights);
    ggml_tensor * moe_out = nullptr;
    for (int64_t i = 0; i < n_expert_used; ++i) {
        ggml_tensor * cur_expert = ggml_view_2d(ctx, experts, n_embd, n_tokens, experts->nb[2], i*experts->nb[1]);
        moe_out = moe_out ? ggml_add(ctx, moe_out, cur_expert) : cur_expert;
    }
    if (n_expert_used == 1) {
        moe_out = ggml_cont(ctx, moe_out);
    }
    return moe_out;
}

ggml_tensor * llama_hobbit_build_moe_ffn(
        llama_hobbit_context * hctx,
        ggml_context         * ctx,
        int                    il,
        ggml_tensor          * cur,
        ggml_tensor          * selected,
        ggml_tensor          * weights,
        bool                   gelu,
        int                    gating,
        int64_t                n_expert_used) {
    llama_hobbit_cache & cache = *hctx->cache;
    if (il < 0 || il >= cache.n_layer || !cache.serves[il]) {
        return nullptr;
    }

    const int64_t n_embd   = cur->ne[0];
    const int64_t n_tokens = cur->ne[2];
    const int64_t n_used   = selected->ne[0];
    const int     n_paths  = cache.n_levels();
    const int     n_waves  = cache.n_waves(n_used, n_tokens);

    // one path of expert matmuls: up/gate, GLU, down from the pools `as` with the ids `ids`
    auto path = [&](ggml_tensor * const as[LLAMA_HOBBIT_N_PROJ], ggml_tensor * ids) {
        ggml_tensor * up   = llama_hobbit_mul_mat_id(ctx, as[LLAMA_HOBBIT_UP],   cur, ids);
        ggml_tensor * gate = llama_hobbit_mul_mat_id(ctx, as[LLAMA_HOBBIT_GATE], cur, ids);
        ggml_tensor * act  = gelu ? ggml_geglu_split(ctx, gate, up) : ggml_swiglu_split(ctx, gate, up);
        return llama_hobbit_mul_mat_id(ctx, as[LLAMA_HOBBIT_DOWN], act, ids);
    };

    if (cache.resident) {
        // every hi expert sits in its own slot for good: the layer's experts are a view of the hi
        // pool, indexed by the routed ids as they are (llama_hobbit_cache::resident)
        ggml_tensor * as[LLAMA_HOBBIT_N_PROJ];
        for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
            ggml_tensor * t = cache.pool[LLAMA_HOBBIT_HI][p];
            as[p] = ggml_view_3d(ctx, t, t->ne[0], t->ne[1], cache.n_expert, t->nb[1], t->nb[2],
                                 size_t(cache.moe_index[il])*cache.n_expert*t->nb[2]);
        }
        return weighted_sum(ctx, path(as, selected), weights, n_embd, n_tokens, n_expert_used);
    }

    // the next layers whose routers see this layer's input, for prefetch (none at depth 0)
    const std::vector<int> targets = cache.next_moe_layers(il, hctx->graph_depth);
    host_inputs host = { selected, weights, cur, next_logits(cache, ctx, targets, cur) };
    const bool cpu_path = cache.cpu_path(n_tokens, n_waves) && n_used*n_tokens*n_paths <= WAIT_IDS_MAX;
    // split paths: a level's pools from its split row on (gate and up: those rows; down: those
    // columns), for the misses whose first rows the CPU computes (hobbit-planner.h)
    int64_t split_rows[LLAMA_HOBBIT_N_LVL] = {};
    bool split = cpu_path && cache.split_paths(n_tokens, n_waves) && 2*n_used*n_tokens*n_paths <= WAIT_IDS_MAX;
    for (int lvl = 0; split && lvl < n_paths; ++lvl) {
        split_rows[lvl] = cache.split_row(il, lvl);
        split = split_rows[lvl] > 0;
    }
    const int n_planes = n_paths*(split ? 2 : 1); // the GPU's: hi|lo, then split hi|split lo
    // the pools of level lvl from its split row on: rows of gate and up, columns of down
    ggml_tensor * split_as[LLAMA_HOBBIT_N_PROJ];
    auto split_pools = [&](int lvl) {
        const int64_t k = split_rows[lvl];
        for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
            ggml_tensor * t = cache.pool[lvl][p];
            split_as[p] = p == LLAMA_HOBBIT_DOWN
                ? ggml_view_3d(ctx, t, t->ne[0] - k, t->ne[1], t->ne[2], t->nb[1], t->nb[2], ggml_row_size(t->type, k))
                : ggml_view_3d(ctx, t, t->ne[0], t->ne[1] - k, t->ne[2], t->nb[1], t->nb[2], size_t(k)*t->nb[1]);
        }
        return split_as;
    };

    if (cache.gpu) {
        host = bundle_for_host(hctx, ctx, host, cpu_path);
    }
    ggml_tensor * prefetch = build_prefetch(hctx, ctx, il, gating, targets, host.logits);
    ggml_tensor * experts  = nullptr;
    for (int wave = 0; wave < n_waves; ++wave) {
        llama_hobbit_op * op = hctx->op(il, wave, n_waves);
        op->cpu_path = cpu_path;
        op->split    = split;
        op->gating   = gating;

        // after the prefetch op (first wave) or the previous wave's matmuls
        ggml_tensor * after   = wave == 0 ? prefetch : experts;
        ggml_tensor * args[3] = { host.selected, host.weights, after };
        ggml_tensor * ids = ggml_custom_4d(ctx, GGML_TYPE_I32, n_used, n_tokens, op->cpu_path ? n_planes + n_paths : n_paths,
                1, args, after ? 3 : 2, llama_hobbit_route_op, 1, op);
        ggml_format_name(ids, "hobbit_route-%d.%d", il, wave);

        if (op->cpu_path) {
            // the misses given to the CPU, from the host tier, while the copies fly
            op->n_embd = n_embd;
            op->gelu   = gelu;
            ggml_tensor * cpu_args[2] = { ids, host.cur };
            ggml_tensor * cpu = ggml_custom_4d(ctx, GGML_TYPE_F32, n_embd, n_used, n_tokens, 1, cpu_args, 2,
                    llama_hobbit_cpu_experts_op, 1, op);
            ggml_format_name(cpu, "hobbit_cpu_experts-%d.%d", il, wave);
            // the wait op's output reaches the GPU in one copy (the cont, the first GPU op after
            // the CPU ops); the GPU splits it into the slot ids and the CPU's experts
            const int64_t n_ids = n_used*n_tokens*n_planes;
            // (with warming, the layer's input too: the next layer's router is applied to it)
            ggml_tensor * wait_args[5] = { host.selected, host.weights, ids, cpu, host.cur };
            ggml_tensor * handed = ggml_custom_4d(ctx, GGML_TYPE_F32, n_ids + n_embd*n_used*n_tokens, 1, 1, 1,
                    wait_args, cache.warm ? 5 : 4, llama_hobbit_wait_op, 1, op);
            ggml_format_name(handed, "hobbit_wait-%d.%d", il, wave);
            handed = ggml_cont(ctx, handed);
            ids = ggml_cast(ctx, ggml_view_3d(ctx, handed, n_used, n_tokens, n_planes, n_used*sizeof(float),
                                              n_used*n_tokens*sizeof(float), 0), GGML_TYPE_I32);
            ggml_tensor * cpu_out = ggml_view_3d(ctx, handed, n_embd, n_used, n_tokens, n_embd*sizeof(float),
                                                 n_embd*n_used*sizeof(float), n_ids*sizeof(float));
            experts = experts ? ggml_add(ctx, experts, cpu_out) : cpu_out;
        } else if (cache.gpu && n_paths > 1) {
            ids = ggml_cont(ctx, ids); // on the GPU: the ids of both paths reach it in one copy
        }

        for (int plane = 0; plane < (op->cpu_path ? n_planes : n_paths); ++plane) {
            const int lvl = plane % n_paths;
            ggml_tensor * ids_lvl = ggml_view_2d(ctx, ids, n_used, n_tokens, ids->nb[1], plane*ids->nb[2]);
            ggml_tensor * down    = path(plane < n_paths ? cache.pool[lvl] : split_pools(lvl), ids_lvl);
            experts = experts ? ggml_add(ctx, experts, down) : down;
        }
    }

    return weighted_sum(ctx, experts, weights, n_embd, n_tokens, n_expert_used);
}
