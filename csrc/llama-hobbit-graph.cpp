// HOBBIT graph: the routed experts of a MoE layer computed from the expert cache.
//
//   selected, weights ──► hobbit_route (CPU custom op: policy + loads) ──► ids [n_used, n_tokens, hi|lo]
//   for each path (hi, lo): mul_mat_id(pool_up/gate) -> GLU -> mul_mat_id(pool_down)
//   experts = down_hi + down_lo   (a route is served by one path; the other leaves a zero row)
//
// mul_mat_id skips negative ids and leaves their rows zero, so a route costs nothing in the
// path that does not serve it, and a skipped route costs nothing at all.

#include "llama-hobbit-impl.h"
#include "llama-hobbit-cache.h"

#include "ggml.h"

static void llama_hobbit_route_op(ggml_tensor * dst, int ith, int nth, void * userdata) {
    GGML_UNUSED(nth);
    if (ith != 0) {
        return; // the policy runs on one thread; the others wait at the node's barrier
    }
    auto * layer = (llama_hobbit_layer *) userdata;
    layer->cache->route(layer->il, dst->src[0], dst->src[1], dst);
}

ggml_tensor * llama_hobbit_build_moe_ffn(
        ggml_context       * ctx,
        llama_hobbit_layer * layer,
        ggml_tensor        * cur,
        ggml_tensor        * selected,
        ggml_tensor        * weights,
        bool                 gelu,
        int64_t              n_expert_used) {
    llama_hobbit_cache & cache = *layer->cache;

    const int64_t n_embd   = cur->ne[0];
    const int64_t n_tokens = cur->ne[2];
    const int64_t n_used   = selected->ne[0];
    const int     n_paths  = cache.has_lo ? 2 : 1;

    ggml_tensor * args[2] = { selected, weights };
    ggml_tensor * ids = ggml_custom_4d(ctx, GGML_TYPE_I32, n_used, n_tokens, n_paths, 1,
            args, 2, llama_hobbit_route_op, 1, layer);
    ggml_format_name(ids, "hobbit_route-%d", layer->il);

    ggml_tensor * experts = nullptr;
    for (int lvl = 0; lvl < n_paths; ++lvl) {
        ggml_tensor * ids_lvl = ggml_view_2d(ctx, ids, n_used, n_tokens, ids->nb[1], lvl*ids->nb[2]);

        ggml_tensor * up   = ggml_mul_mat_id(ctx, cache.pool[lvl][LLAMA_HOBBIT_UP],   cur, ids_lvl);
        ggml_tensor * gate = ggml_mul_mat_id(ctx, cache.pool[lvl][LLAMA_HOBBIT_GATE], cur, ids_lvl);
        ggml_tensor * act  = gelu ? ggml_geglu_split(ctx, gate, up) : ggml_swiglu_split(ctx, gate, up);
        ggml_tensor * down = ggml_mul_mat_id(ctx, cache.pool[lvl][LLAMA_HOBBIT_DOWN], act, ids_lvl);

        experts = experts ? ggml_add(ctx, experts, down) : down;
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
