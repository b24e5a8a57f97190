// HOBBIT hooks: every function llama.cpp's own files call (through patches/), and nothing else.
//
// A model is in HOBBIT mode when it is loaded with the kv override `hobbit.budget_bytes`.
// Then its routed expert tensors are mapped lazily and never touched; the model owns an expert
// cache (hobbit-cache.h) and each of its contexts a llama_hobbit_context (hobbit-context.h),
// whose graph serves the expert matmuls from the cache's slot pools (hobbit-graph.cpp).
#pragma once

#include "llama-hobbit.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct ggml_context;
struct ggml_tensor;
struct llama_model;
struct llama_model_loader;
struct llama_hobbit_cache;
struct llama_hobbit_context;

// loader, before the tensors are created: is HOBBIT mode requested for this load? Routed expert
// levels beyond the first are taken out of the tensor count and out of prefetching. Throws on
// unknown hobbit.* overrides.
bool llama_hobbit_requested(llama_model_loader & ml);

// loader: is this tensor a routed expert of any level ("blk.N.ffn_{gate,up,down}_exps[.TYPE].weight")?
bool llama_hobbit_is_routed_expert(const std::string & name);

// model load, after the tensors are loaded: the expert cache for a model loaded in HOBBIT mode,
// or nullptr (throws on a bad configuration, setting this thread's last error)
std::shared_ptr<llama_hobbit_cache> llama_hobbit_attach(const llama_model & model, llama_model_loader & ml,
                                                        const std::vector<std::string> & paths);

// context creation: the context's state for a HOBBIT model, or nullptr
std::shared_ptr<llama_hobbit_context> llama_hobbit_context_init(const llama_model & model);

// graph parameters: the key of what in the context's HOBBIT state shapes the graph built next
// (today: how many layers ahead it predicts, llama_hobbit_cache::graph_depth), which that
// build then uses; a graph built under another key is not reused. 0 without HOBBIT.
uint32_t llama_hobbit_graph_key(llama_hobbit_context * hctx);

// around each ubatch's graph compute: begin clears the thread's last error, counts the
// ubatch's routes when every expert is resident (llama_hobbit_cache::resident) and takes the CPU
// threads the ubatch is computed with (the CPU experts' workers); end releases the context's
// pins (also when the graph stopped early) and returns false, setting the thread's last error,
// if a fault made the ubatch's output invalid
void llama_hobbit_ubatch_begin(llama_hobbit_context * hctx, int64_t n_tokens, int n_threads);
bool llama_hobbit_ubatch_end(llama_hobbit_context * hctx);

// build_moe_ffn: the routed experts of layer il from the cache's slot pools, weighted and
// summed over the used experts ([n_embd, n_tokens]); nullptr if the cache does not serve the
// layer (the stock path follows)
ggml_tensor * llama_hobbit_build_moe_ffn(
        llama_hobbit_context * hctx,
        ggml_context         * ctx,
        int                    il,
        ggml_tensor          * cur,       // [n_embd, 1, n_tokens]
        ggml_tensor          * selected,  // [n_expert_used, n_tokens] I32
        ggml_tensor          * weights,   // [1, n_expert_used, n_tokens] F32
        bool                   gelu,      // GEGLU instead of SwiGLU
        int                    gating,    // enum llama_expert_gating_func_type (for prefetch predictions)
        int64_t                n_expert_used);

// the C API's error channel: this thread's last HOBBIT error (llama_model_load clears it)
void llama_hobbit_set_last_error(const std::string & msg);
