#include "hobbit-mmid.cuh"

static __global__ void k_mmid_fix_ids(const char * ids, size_t nb0, size_t nb1, int n_used, int n_tokens, int n_as,
                                      int32_t * out) {
    const int t = blockIdx.x*blockDim.x + threadIdx.x;
    if (t >= n_tokens) {
        return;
    }
    const char * row = ids + t*nb1;
    int32_t    * o   = out + (size_t) t*n_used;
    int next = 0;
    for (int r = 0; r < n_used; ++r) {
        const int32_t id = *(const int32_t *) (row + r*nb0);
        if (id >= 0) {
            o[r] = id;
            continue;
        }
        for (; next < n_as; ++next) { // the next expert no route of this token uses
            bool used = false;
            for (int q = 0; q < n_used; ++q) {
                used |= *(const int32_t *) (row + q*nb0) == next;
            }
            if (!used) {
                break;
            }
        }
        o[r] = next < n_as ? next++ : 0; // fewer experts than routes: a duplicate cannot be avoided
    }
}

static __global__ void k_mmid_zero_rows(const char * ids, size_t nb0, size_t nb1, char * dst, size_t dnb1, size_t dnb2,
                                        int ne0) {
    const int r = blockIdx.x;
    const int t = blockIdx.y;
    if (*(const int32_t *) (ids + t*nb1 + r*nb0) >= 0) {
        return;
    }
    float * row = (float *) (dst + r*dnb1 + t*dnb2);
    for (int i = threadIdx.x; i < ne0; i += blockDim.x) {
        row[i] = 0.0f;
    }
}

static __global__ void k_mmid_gather(const char * src, size_t nb2, size_t expert, const char * ids, size_t nb0,
                                     size_t nb1, int n_used, char * dst, int32_t * ids_out) {
    const int k = blockIdx.y; // the route: token k/n_used, route k%n_used
    const int32_t id = *(const int32_t *) (ids + (k/n_used)*nb1 + (k%n_used)*nb0);
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        ids_out[k] = id >= 0 ? k : -1;
    }
    if (id < 0) {
        return;
    }
    const char * s = src + id*nb2;
    char       * d = dst + k*expert;
    const size_t first = blockIdx.x*blockDim.x + threadIdx.x;
    const size_t step  = (size_t) gridDim.x*blockDim.x;
    if ((((uintptr_t) s | (uintptr_t) d | expert) & 15) == 0) {
        for (size_t i = first; i < expert/16; i += step) {
            ((int4 *) d)[i] = ((const int4 *) s)[i];
        }
    } else {
        for (size_t i = first; i < expert; i += step) {
            d[i] = s[i];
        }
    }
}

void ggml_cuda_mmid_gather(const ggml_tensor * src0, const ggml_tensor * ids, char * dst, int32_t * ids_out,
                           cudaStream_t stream) {
    const size_t expert = src0->nb[1]*src0->ne[1];
    const dim3 grid(64, (unsigned) (ids->ne[0]*ids->ne[1]));
    k_mmid_gather<<<grid, 256, 0, stream>>>((const char *) src0->data, src0->nb[2], expert, (const char *) ids->data,
                                            ids->nb[0], ids->nb[1], (int) ids->ne[0], dst, ids_out);
}

void ggml_cuda_mmid_skip_fix_ids(const ggml_tensor * ids, int64_t n_as, int32_t * out, cudaStream_t stream) {
    const int n_tokens = (int) ids->ne[1];
    const int block    = 128;
    k_mmid_fix_ids<<<(n_tokens + block - 1)/block, block, 0, stream>>>(
        (const char *) ids->data, ids->nb[0], ids->nb[1], (int) ids->ne[0], n_tokens, (int) n_as, out);
}

void ggml_cuda_mmid_skip_zero_rows(const ggml_tensor * ids, ggml_tensor * dst, cudaStream_t stream) {
    const dim3 grid((unsigned) ids->ne[0], (unsigned) ids->ne[1]);
    k_mmid_zero_rows<<<grid, 256, 0, stream>>>(
        (const char *) ids->data, ids->nb[0], ids->nb[1], (char *) dst->data, dst->nb[1], dst->nb[2], (int) dst->ne[0]);
}
