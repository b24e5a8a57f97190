// HOBBIT graph: the routed experts of a MoE layer computed from the expert cache.
//
//   for each wave w (one wave unless the ubatch needs more experts than the slots hold):
//     selected, weights [, down of wave w-1] ──► hobbit_route (CPU op: policy + loads) ──► ids [n_used, n_tokens, hi|lo]
//     for each path (hi, lo): mul_mat_id(pool_up/gate) -> GLU -> mul_mat_id(pool_down)
//   experts = sum of the down outputs   (a route is served by one wave and one path; the rest leave zero rows)
//   out     = sum over the used experts of weight * experts
//
// mul_mat_id skips negative ids and leaves their rows zero, so a route costs nothing in a path
// that does not serve it, and a skipped route costs nothing at all. A wave's route op depends
// on the previous wave's output, so it runs after the matmuls that read the slots it may reuse.

#include "hobbit-hooks.h"
#include "hobbit-cache.h"
#include "hobbit-context.h"

#include "ggml.h"

static void llama_hobbit_route_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    (void) nth;
    if (ith != 0) {
        return; // the policy runs on one thread; the others wait at the node's barrier
    }
    const auto * op = (const llama_hobbit_op *) userdata;
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
    op->hctx->cache->serve_wave(*op->hctx, op->il, op->wave, op->n_waves, routes, dst);
}

ggml_tensor * llama_hobbit_build_moe_ffn(
        llama_hobbit_context * hctx,
        ggml_context         * ctx,
        int                    il,
        ggml_tensor          * cur,
        ggml_tensor          * selected,
        ggml_tensor          * weights,
        bool                   gelu,
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

    ggml_tensor * experts = nullptr;
    for (int wave = 0; wave < n_waves; ++wave) {
        ggml_tensor * args[3] = { selected, weights, experts };
        ggml_tensor * ids = ggml_custom_4d(ctx, GGML_TYPE_I32, n_used, n_tokens, n_paths, 1,
                args, experts ? 3 : 2, llama_hobbit_route_op, 1, hctx->op(il, wave, n_waves));
        ggml_format_name(ids, "hobbit_route-%d.%d", il, wave);

        for (int lvl = 0; lvl < n_paths; ++lvl) {
            ggml_tensor * ids_lvl = ggml_view_2d(ctx, ids, n_used, n_tokens, ids->nb[1], lvl*ids->nb[2]);

            ggml_tensor * up   = ggml_mul_mat_id(ctx, cache.pool[lvl][LLAMA_HOBBIT_UP],   cur, ids_lvl);
            ggml_tensor * gate = ggml_mul_mat_id(ctx, cache.pool[lvl][LLAMA_HOBBIT_GATE], cur, ids_lvl);
            ggml_tensor * act  = gelu ? ggml_geglu_split(ctx, gate, up) : ggml_swiglu_split(ctx, gate, up);
            ggml_tensor * down = ggml_mul_mat_id(ctx, cache.pool[lvl][LLAMA_HOBBIT_DOWN], act, ids_lvl);

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
