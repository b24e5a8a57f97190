// HOBBIT on CUDA: mul_mat_id with negative expert ids.
//
// HOBBIT serves each route of a MoE layer by one matmul path (a hi and a lo slot pool) and gives
// the routes a path does not serve the id -1: on the CPU such a route costs nothing and leaves
// a zero row (patch 0001). CUDA's mul_mat_id kernels assume valid ids, and duplicated ids break
// its batched path, so a marked mul_mat_id (csrc/hobbit-mmid.h) runs on a copy of its ids where
// every negative id is replaced by an expert that no route of its token uses, and the rows of
// those routes are zeroed afterwards. The skipped routes still cost their compute on the GPU.
// The slot pools are strided views (a hi copy spans whole lo units); the batched kernels want
// experts back to back, so a decode's few routes have their experts gathered first.
#pragma once

#include "hobbit-mmid.h"

#include <cuda_runtime.h>

// the experts of src0 (a strided slot pool) that ids [n_used, n_tokens] name, copied back to back
// into dst (route k = t*n_used + r at dst + k*expert bytes), and ids_out (contiguous) = k for
// those routes, -1 for routes with a negative id (their part of dst is left as it was)
void ggml_cuda_mmid_gather(const ggml_tensor * src0, const ggml_tensor * ids, char * dst, int32_t * ids_out,
                           cudaStream_t stream);

// ids [n_used, n_tokens] (any strides) -> out (contiguous, same shape): negative ids replaced by
// distinct experts of [0, n_as) that the token's routes do not use
void ggml_cuda_mmid_skip_fix_ids(const ggml_tensor * ids, int64_t n_as, int32_t * out, cudaStream_t stream);

// zero the rows of dst [ne0, n_used, n_tokens] whose id is negative
void ggml_cuda_mmid_skip_zero_rows(const ggml_tensor * ids, ggml_tensor * dst, cudaStream_t stream);
