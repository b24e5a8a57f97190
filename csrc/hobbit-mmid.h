// HOBBIT's mark on a mul_mat_id whose ids may be negative (a route the path does not serve).
//
// The CPU's mul_mat_id skips negative ids whatever the mark (patch 0001); the CUDA backend
// handles them only on marked ops (csrc/cuda/hobbit-mmid.cuh), so that stock graphs pay
// nothing for it. The mark sits in the op's last op_params slot, which mul_mat_id leaves unused.
#pragma once

#include "ggml.h"

#define LLAMA_HOBBIT_MMID_SKIP_PARAM (GGML_MAX_OP_PARAMS/sizeof(int32_t) - 1)
#define LLAMA_HOBBIT_MMID_SKIP_MARK  0x48424254 // "HBBT"

// ggml_mul_mat_id, marked: negative ids select no expert and leave a zero row
static inline ggml_tensor * llama_hobbit_mul_mat_id(ggml_context * ctx, ggml_tensor * as, ggml_tensor * b,
                                                    ggml_tensor * ids) {
    ggml_tensor * t = ggml_mul_mat_id(ctx, as, b, ids);
    t->op_params[LLAMA_HOBBIT_MMID_SKIP_PARAM] = LLAMA_HOBBIT_MMID_SKIP_MARK;
    return t;
}

static inline bool llama_hobbit_mmid_may_skip(const ggml_tensor * t) {
    return t->op == GGML_OP_MUL_MAT_ID && t->op_params[LLAMA_HOBBIT_MMID_SKIP_PARAM] == LLAMA_HOBBIT_MMID_SKIP_MARK;
}
