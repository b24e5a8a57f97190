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
//     selected, weights ──► hobbit_route (submits the copies, does not wait) ──► ids [.., hi|lo|cpu hi|cpu lo]
//     for each level: mul_mat_id(host tier of layer l, on the CPU) ... ──► cpu down
//     selected, weights, ids, cpu downs ──► hobbit_wait (waits for the copies) ──► ids [.., hi|lo] ──► GPU paths
//
// so the CPU computes the misses the planner gave it while the others are copied into VRAM.
//
// mul_mat_id skips negative ids and leaves their rows zero, so a route costs nothing in a path
// that does not serve it, and a skipped route costs nothing at all. A wave's route op depends
// on the previous wave's output, so it runs after the matmuls that read the slots it may reuse;
// the first one depends on the prefetch op, so the next layers' reads are queued before this
// layer's experts are served (behind this layer's own reads, which go first).

#include "hobbit-hooks.h"
#include "hobbit-cache.h"
#include "hobbit-context.h"
#include "hobbit-mmid.h"

#include "ggml.h"

#include <chrono>

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
    routes.w        = (const char *) w->data;
    routes.w_nb1    = w->nb[1];
    routes.w_nb2    = w->nb[2];
    routes.n_used   = sel->ne[0];
    routes.n_tokens = sel->ne[1];
    return routes;
}

static void llama_hobbit_route_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) nth;
    if (ith != 0) {
        return; // the policy runs on one thread; the others wait at the node's barrier
    }
    const auto * op = (const llama_hobbit_op *) userdata;
    op->hctx->wave_started(op->il, op->wave);
    op->hctx->cache->serve_wave(*op->hctx, op->il, op->wave, op->n_waves, routes_of(dst), dst, op->cpu_path);
    if (op->cpu_path) {
        op->hctx->routed_at = std::chrono::steady_clock::now(); // the CPU's experts are computed next
    } else {
        op->hctx->wave_served(op->il, op->wave);
    }
}

// after the CPU path's experts: wait for the copies, then hand the slots to the GPU paths
static void llama_hobbit_wait_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) nth;
    if (ith != 0) {
        return;
    }
    const auto * op = (const llama_hobbit_op *) userdata;
    op->hctx->cache->finish_wave(*op->hctx, op->il, op->wave, routes_of(dst), dst);
    op->hctx->wave_served(op->il, op->wave);
}

// predict the next MoE layers' experts from this layer's router input: their routers' logits,
// and the op that turns them into prefetches; nullptr at the last MoE layer
static ggml_tensor * build_prefetch(llama_hobbit_context * hctx, ggml_context * ctx, int il, ggml_tensor * cur,
                                    int gating) {
    const llama_hobbit_cache & cache = *hctx->cache;
    const std::vector<int> targets = cache.next_moe_layers(il, LLAMA_HOBBIT_PREFETCH_MAX);
    if (targets.empty()) {
        return nullptr;
    }
    ggml_tensor * x = ggml_reshape_2d(ctx, cur, cur->ne[0], cur->ne[2]);
    ggml_tensor * args[LLAMA_HOBBIT_PREFETCH_MAX];
    for (size_t i = 0; i < targets.size(); ++i) {
        ggml_tensor * logits = ggml_mul_mat(ctx, cache.gate_inp[targets[i]], x);
        if (cache.gate_inp_b[targets[i]]) {
            logits = ggml_add(ctx, logits, cache.gate_inp_b[targets[i]]);
        }
        args[i] = logits;
    }
    llama_hobbit_op * op = hctx->op(il, -1, 0);
    op->gating  = gating;
    op->targets = targets;
    ggml_tensor * pf = ggml_custom_4d(ctx, GGML_TYPE_F32, 1, 1, 1, 1, args, (int) targets.size(),
            llama_hobbit_prefetch_op, 1, op);
    ggml_format_name(pf, "hobbit_prefetch-%d", il);
    return pf;
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
    const int     n_paths  = cache.has_lo ? 2 : 1;
    const int     n_waves  = cache.n_waves(n_used, n_tokens);

    // one path of expert matmuls: up/gate, GLU, down from the pools `as` with ids plane `plane`
    auto path = [&](ggml_tensor * const as[LLAMA_HOBBIT_N_PROJ], ggml_tensor * ids, int plane) {
        ggml_tensor * ids_p = ggml_view_2d(ctx, ids, n_used, n_tokens, ids->nb[1], plane*ids->nb[2]);
        ggml_tensor * up   = llama_hobbit_mul_mat_id(ctx, as[LLAMA_HOBBIT_UP],   cur, ids_p);
        ggml_tensor * gate = llama_hobbit_mul_mat_id(ctx, as[LLAMA_HOBBIT_GATE], cur, ids_p);
        ggml_tensor * act  = gelu ? ggml_geglu_split(ctx, gate, up) : ggml_swiglu_split(ctx, gate, up);
        return llama_hobbit_mul_mat_id(ctx, as[LLAMA_HOBBIT_DOWN], act, ids_p);
    };

    ggml_tensor * prefetch = build_prefetch(hctx, ctx, il, cur, gating);
    ggml_tensor * experts  = nullptr;
    for (int wave = 0; wave < n_waves; ++wave) {
        llama_hobbit_op * op = hctx->op(il, wave, n_waves);
        op->cpu_path = cache.cpu_path(n_tokens, n_waves);

        // after the prefetch op (first wave) or the previous wave's matmuls
        ggml_tensor * after   = wave == 0 ? prefetch : experts;
        ggml_tensor * args[3] = { selected, weights, after };
        ggml_tensor * ids = ggml_custom_4d(ctx, GGML_TYPE_I32, n_used, n_tokens, op->cpu_path ? 2*n_paths : n_paths, 1,
                args, after ? 3 : 2, llama_hobbit_route_op, 1, op);
        ggml_format_name(ids, "hobbit_route-%d.%d", il, wave);

        if (op->cpu_path) {
            // the misses given to the CPU, from the host tier, while the copies fly
            ggml_tensor * wait_args[2 + 1 + LLAMA_HOBBIT_N_LVL] = { selected, weights, ids };
            for (int lvl = 0; lvl < n_paths; ++lvl) {
                ggml_tensor * host[LLAMA_HOBBIT_N_PROJ];
                for (int p = 0; p < LLAMA_HOBBIT_N_PROJ; ++p) {
                    host[p] = cache.host.tensor(il, lvl, p);
                }
                ggml_tensor * down = path(host, ids, n_paths + lvl);
                wait_args[3 + lvl] = down;
                experts = experts ? ggml_add(ctx, experts, down) : down;
            }
            ids = ggml_custom_4d(ctx, GGML_TYPE_I32, n_used, n_tokens, n_paths, 1, wait_args, 3 + n_paths,
                    llama_hobbit_wait_op, 1, op);
            ggml_format_name(ids, "hobbit_wait-%d.%d", il, wave);
        }

        for (int lvl = 0; lvl < n_paths; ++lvl) {
            ggml_tensor * down = path(cache.pool[lvl], ids, lvl);
            experts = experts ? ggml_add(ctx, experts, down) : down;
        }
    }

    // as build_moe_ffn: weight each expert's output, then sum over the used experts
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
