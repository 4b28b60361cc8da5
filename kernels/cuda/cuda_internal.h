/*
 * Shared by the files of the CUDA backend (the .cu files of kernels/cuda/); not part of the op API.
 *
 * This header is CUDA C++ and is included by .cu files only; C code sees the backend through
 * kernels/cuda/cuda_backend.h.
 *
 * Conventions of the backend:
 *   - Every op runs on the context's one stream and never waits on the host, so a decode step
 *     can be captured as a CUDA graph. Launch errors are checked after every launch
 *     (cudaGetLastError) and become PIO_ERR_DEVICE with a message naming the op.
 *   - A sticky CUDA error (illegal address, launch failure, ...) marks the context failed: every
 *     later call returns PIO_ERR_DEVICE with the first error's text.
 *   - What only the data can tell (token ids, positions, block ids) is checked on the device:
 *     the first bad value is recorded in a small device word block (err_info) and the kernel
 *     skips that token; pk_synchronize reports it as PIO_ERR_INVALID_ARGUMENT naming the op,
 *     clears it, and the context stays usable.
 */
#ifndef PIO_KERNELS_CUDA_INTERNAL_H
#define PIO_KERNELS_CUDA_INTERNAL_H

#ifndef __CUDACC__
#error "kernels/cuda/cuda_internal.h is CUDA C++: include it from kernels/cuda/ .cu files only"
#endif

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"

/* ------------------------------------------------------------------------------------------ */
/* Per-context state                                                                          */
/* ------------------------------------------------------------------------------------------ */

/* Ops that report data errors from the device (err_info[0]). */
enum pk_cuda_op_code {
    PK_CUDA_OP_NONE = 0,
    PK_CUDA_OP_EMBEDDING = 1,
    PK_CUDA_OP_KV_STORE = 2,
    PK_CUDA_OP_ATTENTION = 3,
    PK_CUDA_OP_MOE_EXPERTS = 4,
};

/* What was wrong (err_info[1]); the values that follow depend on it. */
enum pk_cuda_data_error {
    PK_CUDA_BAD_TOKEN_ID = 1,   /* index, id, vocabulary rows */
    PK_CUDA_BAD_POSITION = 2,   /* token, position */
    PK_CUDA_BAD_SEQ_ROW = 3,    /* token, row, table rows */
    PK_CUDA_BAD_TABLE_SPAN = 4, /* token, position, block index needed, table width */
    PK_CUDA_BAD_BLOCK_ID = 5,   /* token, block id, cache blocks */
    PK_CUDA_BAD_EXPERT_ID = 6,  /* token, slot, expert id, n_experts */
};

enum { PK_CUDA_ERR_WORDS = 8 }; /* op, kind, up to 4 values, spare */

typedef struct pk_cuda_matmul_plan pk_cuda_matmul_plan;
enum { PK_CUDA_PLAN_CACHE = 32 };

typedef struct pk_cuda_state {
    int device;
    int sm_count;
    int max_smem_optin; /* bytes of dynamic shared memory a block may opt in to */
    int gemv_max_m;     /* matmuls with at most this many rows of x use the GEMV kernel */
    cudaStream_t stream;

    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t lt_desc; /* fp32 compute and scale, A transposed (W is [N, K]) */
    void *lt_workspace;
    size_t lt_workspace_bytes;
    pk_cuda_matmul_plan *plans; /* PK_CUDA_PLAN_CACHE entries */
    int next_plan;              /* round-robin replacement */

    /* Grows on demand (never shrinks): the bf16 copy of x for cuBLASLt matmuls. */
    void *scratch;
    size_t scratch_bytes;

    long long *err_info_dev;  /* PK_CUDA_ERR_WORDS device words, zero while nothing is wrong */
    long long *err_info_host; /* pinned copy read by pk_synchronize */

    int failed; /* a sticky error happened: every later call fails */
    char failed_message[512];
} pk_cuda_state;

static inline pk_cuda_state *pk_cuda_state_of(const pk_context *ctx)
{
    return (pk_cuda_state *)ctx->state;
}

/* Host-side helpers of cuda_backend.cu. */

/* Fails fast on a failed context and makes the context's device current for this thread. */
pio_status pk_cuda_enter(pk_context *ctx, const char *op, pio_error *err);
/* Turns a CUDA error from `what` into PIO_ERR_DEVICE naming op; marks the context failed when
 * the error is sticky. cudaSuccess returns PIO_OK. */
pio_status pk_cuda_fail(pk_context *ctx, const char *op, const char *what, cudaError_t e,
                        pio_error *err);
/* Checks the launches just issued (cudaGetLastError). */
pio_status pk_cuda_check_launch(pk_context *ctx, const char *op, pio_error *err);
/* *out = device scratch of at least `bytes` (grows, never shrinks; growing allocates, so a
 * graph capture must be preceded by a warm-up call of the largest shape). */
pio_status pk_cuda_scratch(pk_context *ctx, size_t bytes, const char *op, void **out,
                           pio_error *err);

/* Rows of x up to which matmul uses the GEMV kernel rather than cuBLASLt, unless the
 * environment variable PIO_CUDA_GEMV_MAX_M says otherwise at context creation (tests and tuning
 * force one path with it). Measured on an H100 at Qwen3-4B shapes (docs/KERNELS.md): the GEMV
 * kernel wins or ties up to M = 2, cuBLASLt from M = 3. The kernel takes PK_CUDA_GEMV_ROWS rows
 * of x per launch; a larger PIO_CUDA_GEMV_MAX_M (up to PK_CUDA_GEMV_MAX_M_EXACT) runs bigger
 * matmuls in chunks of that many rows: fp32 throughout, no bf16 rounding of x, slow for
 * prefill (the exact-fp32 mode of the end-to-end GPU tests). */
enum { PK_CUDA_GEMV_MAX_M_DEFAULT = 2, PK_CUDA_GEMV_ROWS = 8, PK_CUDA_GEMV_MAX_M_EXACT = 1 << 30 };

/* Sets up / releases the matmul plan cache (cuda_matmul.cu). */
pio_status pk_cuda_matmul_init(pk_context *ctx, pio_error *err);
void pk_cuda_matmul_fini(pk_context *ctx);
/* Raises the dynamic shared memory limit of the attention kernels (cuda_attention.cu). */
pio_status pk_cuda_attention_init(pk_context *ctx, pio_error *err);

/* Backend entry points (one per op). */
pio_status pk_cuda_matmul(pk_context *ctx, const pk_tensor *y, const pk_tensor *x,
                          const pk_tensor *w, int accumulate, pio_error *err);
pio_status pk_cuda_embedding(pk_context *ctx, const pk_tensor *out, const pk_tensor *table,
                             const pk_tensor *ids, pio_error *err);
pio_status pk_cuda_rmsnorm(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                           const pk_tensor *weight, int64_t group_width, float eps,
                           pio_error *err);
pio_status pk_cuda_rope(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                        const pk_tensor *positions, const pk_rope_params *params,
                        pio_error *err);
pio_status pk_cuda_swiglu(pk_context *ctx, const pk_tensor *out, const pk_tensor *gate,
                          const pk_tensor *up, pio_error *err);
pio_status pk_cuda_add(pk_context *ctx, const pk_tensor *out, const pk_tensor *a,
                       const pk_tensor *b, pio_error *err);
pio_status pk_cuda_softmax(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                           pio_error *err);
pio_status pk_cuda_argmax(pk_context *ctx, const pk_tensor *ids, const pk_tensor *x,
                          pio_error *err);
pio_status pk_cuda_cast(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                        pio_error *err);
pio_status pk_cuda_kv_store(pk_context *ctx, const pk_tensor *k_cache, const pk_tensor *v_cache,
                            const pk_tensor *k_new, const pk_tensor *v_new,
                            const pk_token_batch *batch, const pk_attention_params *params,
                            pio_error *err);
pio_status pk_cuda_attention(pk_context *ctx, const pk_tensor *out, const pk_tensor *q,
                             const pk_tensor *k_cache, const pk_tensor *v_cache,
                             const pk_token_batch *batch, const pk_attention_params *params,
                             pio_error *err);
/* Fused ops: cuda_matmul.cu (rmsnorm_matmul), cuda_elementwise.cu (qk_norm_rope_store). */
pio_status pk_cuda_rmsnorm_matmul(pk_context *ctx, const pk_tensor *y, const pk_tensor *h,
                                  const pk_tensor *x, const pk_tensor *norm_weight, float eps,
                                  const pk_tensor *w, pio_error *err);
pio_status pk_cuda_qk_norm_rope_store(pk_context *ctx, const pk_tensor *q, const pk_tensor *k,
                                      const pk_tensor *v, const pk_tensor *q_norm,
                                      const pk_tensor *k_norm, float eps,
                                      const pk_rope_params *rope, const pk_tensor *k_cache,
                                      const pk_tensor *v_cache, const pk_token_batch *batch,
                                      const pk_attention_params *params, pio_error *err);
/* cuda_graph.cu */
pio_status pk_cuda_graph_begin(pk_context *ctx, pio_error *err);
pio_status pk_cuda_graph_end(pk_context *ctx, pk_graph **out, pio_error *err);
pio_status pk_cuda_graph_launch(pk_context *ctx, pk_graph *graph, pio_error *err);
void pk_cuda_graph_destroy(pk_context *ctx, pk_graph *graph);
/* cuda_moe.cu */
pio_status pk_cuda_moe_topk_softmax(pk_context *ctx, const pk_tensor *ids,
                                    const pk_tensor *weights, const pk_tensor *logits,
                                    int normalize, pio_error *err);
pio_status pk_cuda_moe_experts(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                               const pk_tensor *gate_up, const pk_tensor *down,
                               const pk_tensor *ids, const pk_tensor *weights, int64_t n_experts,
                               pio_error *err);

/* ------------------------------------------------------------------------------------------ */
/* Device helpers                                                                             */
/* ------------------------------------------------------------------------------------------ */

/* bf16 is the top half of an f32. */
__device__ __forceinline__ float pk_bf16_to_f32(uint16_t bits)
{
    return __uint_as_float((uint32_t)bits << 16);
}

/* Round to nearest even, NaN stays a quiet NaN: bit for bit what pio_f32_to_bf16 does on the
 * host, so a cache written here equals the CPU backend's. */
__device__ __forceinline__ uint16_t pk_f32_to_bf16(float value)
{
    uint32_t bits = __float_as_uint(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((bits >> 16) | 0x0040u);
    uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)((bits + rounding) >> 16);
}

/* Element i of a row stored as BF16 (is_bf16) or F32. */
__device__ __forceinline__ float pk_load(const void *row, bool is_bf16, int64_t i)
{
    return is_bf16 ? pk_bf16_to_f32(__ldg((const unsigned short *)row + i))
                   : __ldg((const float *)row + i);
}

__device__ __forceinline__ void pk_store(void *row, bool is_bf16, int64_t i, float v)
{
    if (is_bf16)
        ((uint16_t *)row)[i] = pk_f32_to_bf16(v);
    else
        ((float *)row)[i] = v;
}

/* Records the first data error of the context; later ones are dropped. */
__device__ __forceinline__ void pk_report(long long *info, int op, int kind, long long a,
                                          long long b, long long c, long long d)
{
    if (atomicCAS((unsigned long long *)info, 0ull, (unsigned long long)op) != 0ull)
        return;
    info[1] = kind;
    info[2] = a;
    info[3] = b;
    info[4] = c;
    info[5] = d;
}

__device__ __forceinline__ float pk_warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float pk_warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over a block whose size is a multiple of 32 (at most 1024); every thread gets it.
 * `shared` holds 33 floats; the block must not be in divergent code. */
__device__ __forceinline__ float pk_block_sum(float v, float *shared)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = pk_warp_sum(v);
    __syncthreads(); /* shared may still be read by an earlier reduction */
    if (lane == 0)
        shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < warps ? shared[lane] : 0.0f;
        s = pk_warp_sum(s);
        if (lane == 0)
            shared[32] = s;
    }
    __syncthreads();
    return shared[32];
}

/* Host helpers. */
static inline bool pk_is_bf16(const pk_tensor *t)
{
    return t->dtype == PIO_DTYPE_BF16;
}

static inline unsigned pk_blocks_for(int64_t n, int threads, int64_t cap)
{
    int64_t b = (n + threads - 1) / threads;
    if (b < 1)
        b = 1;
    return (unsigned)(b < cap ? b : cap);
}

#endif
