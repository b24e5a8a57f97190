// HOBBIT internals: the hooks llama.cpp calls (loader, model, graph).
//
// A model is in HOBBIT mode when it is loaded with the kv override `hobbit.budget_bytes`.
// Then its routed expert tensors are mapped lazily and never touched; an expert cache with
// slot pools in backend memory serves the expert matmuls instead (see llama-hobbit-cache.h).
#pragma once

#include "llama-hobbit.h"

#include <cstdint>

#include <string>
#include <vector>

struct ggml_context;
struct ggml_tensor;
struct llama_model;
struct llama_model_loader;
struct llama_hobbit_layer;

// kv override keys read at load time
#define LLAMA_HOBBIT_KV_BUDGET  "hobbit.budget_bytes" // int: expert cache budget; enables HOBBIT mode
#define LLAMA_HOBBIT_KV_HI_TYPE "hobbit.hi_type"      // str: level used as hi (default: the first)
#define LLAMA_HOBBIT_KV_LO_TYPE "hobbit.lo_type"      // str: level used as lo (default: the last; "none": hi only)
#define LLAMA_HOBBIT_KV_DIRECT  "hobbit.direct_io"    // int: 1 reads experts with O_DIRECT (no page cache)
#define LLAMA_HOBBIT_KV_TYPES   "hobbit.expert_types" // file key: requested types of the expert levels

// true for a routed expert tensor name of any level ("blk.N.ffn_{gate,up,down}_exps[.TYPE].weight")
bool llama_hobbit_is_routed_expert(const std::string & name);

// true for an extra (non-standard) expert level tensor, which the model itself never creates
bool llama_hobbit_is_extra_level(const std::string & name);

// before the tensors are created: is HOBBIT mode requested for this load?
bool llama_hobbit_requested(llama_model_loader & ml);

// after the tensors are loaded: build the expert store and cache (throws on bad config)
void llama_hobbit_attach(llama_model & model, llama_model_loader & ml, const std::vector<std::string> & paths);

// when the model is freed
void llama_hobbit_detach(const llama_model * model);

// graph hook: the HOBBIT layer whose routed up-projection is `up_exps`, or nullptr
llama_hobbit_layer * llama_hobbit_layer_for(const ggml_tensor * up_exps);

// graph hook: the routed experts of one MoE layer, from the cache's slot pools, weighted and
// summed over the used experts ([n_embd, n_tokens]); mirrors the tail of build_moe_ffn
ggml_tensor * llama_hobbit_build_moe_ffn(
        ggml_context       * ctx,
        llama_hobbit_layer * layer,
        ggml_tensor        * cur,       // [n_embd, 1, n_tokens]
        ggml_tensor        * selected,  // [n_expert_used, n_tokens] I32
        ggml_tensor        * weights,   // [1, n_expert_used, n_tokens] F32
        bool                 gelu,      // GEGLU instead of SwiGLU
        int64_t              n_expert_used);
