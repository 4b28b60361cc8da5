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
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>


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
    double memory_gbs;  /* peak memory bandwidth, GB/s (memory clock × bus width, double rate) */
    int gemv_max_m;     /* matmuls with at most this many rows of x use the GEMV kernel */
    int gemv_target;    /* > 0: the GEMV split rule's warps per SM (PIO_CUDA_GEMV_TARGET) */
    int pdl;            /* programmatic dependent launches allowed (PIO_CUDA_PDL=0: off) */
    /* The driver's cuTensorMapEncodeTiled, or NULL: one-row GEMVs then load their weights
     * through registers only. */
    void *encode_tensor_map;
    int gemv_tma; /* which one-row GEMVs take gemv_tma_kernel: enum pk_cuda_gemv_tma */
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
    /* Counts the moves of the grow-only workspaces (scratch, attention, sampling): a graph
     * recorded at an older count may address freed memory. */
    unsigned long long workspace_epoch;
    unsigned long long recording_epoch; /* workspace_epoch when the recording began */
    /* Grows on demand (never shrinks): split-KV attention partials. The first decode call
     * sizes it for every decode batch size of its shape, so recorded graphs keep its address. */
    void *attn_workspace;
    size_t attn_workspace_bytes;
    /* Grows on demand (never shrinks): pk_sample's candidate lists and penalised copies. */
    void *sample_workspace;
    size_t sample_workspace_bytes;

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
/* The same for the attention workspace (attn_workspace). */
pio_status pk_cuda_attention_workspace(pk_context *ctx, size_t bytes, const char *op, void **out,
                                       pio_error *err);
/* The same for pk_sample's workspace (sample_workspace). */
pio_status pk_cuda_sample_workspace(pk_context *ctx, size_t bytes, const char *op, void **out,
                                    pio_error *err);

/* Rows of x up to which matmul uses the GEMV kernel rather than cuBLASLt, unless the
 * environment variable PIO_CUDA_GEMV_MAX_M says otherwise at context creation (tests and tuning
 * force one path with it). Measured on an H100 at Qwen3-4B shapes (docs/KERNELS.md): the GEMV
 * kernel wins up to M = 2; at M = 3-4 it is faster alone but whole decode steps are not (batch
 * 3 +1.6 %, batch 4 -1.1 %), so cuBLASLt from M = 3. The kernel takes PK_CUDA_GEMV_ROWS rows
 * of x per launch; a larger PIO_CUDA_GEMV_MAX_M (up to PK_CUDA_GEMV_MAX_M_EXACT) runs bigger
 * matmuls in chunks of that many rows: fp32 throughout, no bf16 rounding of x, slow for
 * prefill (the exact-fp32 mode of the end-to-end GPU tests). */
enum { PK_CUDA_GEMV_MAX_M_DEFAULT = 2, PK_CUDA_GEMV_ROWS = 8, PK_CUDA_GEMV_MAX_M_EXACT = 1 << 30 };

/* Which one-row GEMVs with BF16 weights stream them through shared memory by tensor-map copies
 * (gemv_tma_kernel) rather than registers (gemv_kernel): pk_context_options.gemv_tma
 * (PK_CUDA_GEMV_TMA_MANY_WAVES by default), unless PIO_CUDA_GEMV_TMA says "0" (none) or "all".
 * Measured on Qwen3 decode steps (docs/KERNELS.md, "Eighth session", "Tenth session"): the
 * lm_head, a GEMV of many waves of blocks, gains with it on both models and both GPUs; every
 * projection on it gains in a dense model's step up to a few thousand tokens of context and
 * loses next to the MoE kernels and at long contexts. */
enum pk_cuda_gemv_tma {
    PK_CUDA_GEMV_TMA_OFF = 0,
    PK_CUDA_GEMV_TMA_MANY_WAVES = 1, /* PK_CUDA_GEMV_MANY_WAVES row groups an SM or more */
    PK_CUDA_GEMV_TMA_ALL = 2,
};
enum { PK_CUDA_GEMV_MANY_WAVES = 32 };

/* Launches kernel<<<grid, block, smem, st->stream>>>(args...) as a programmatic dependent
 * launch (see pk_pdl_wait) when st->pdl is set, else normally. */
template <typename... Params, typename... Args>
static inline cudaError_t pk_cuda_launch_pdl(const pk_cuda_state *st, void (*kernel)(Params...),
                                             dim3 grid, dim3 block, size_t smem, Args... args)
{
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st->stream;
    cfg.attrs = attr;
    cfg.numAttrs = st->pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, args...);
}

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
/* pk_cuda_rmsnorm over whole rows that also writes the result rounded to bf16 into xb [rows,
 * xbs] (a cuBLASLt operand); op names the calling op in errors. */
pio_status pk_cuda_rmsnorm_bf16(pk_context *ctx, const char *op, const pk_tensor *out,
                                const pk_tensor *x, const pk_tensor *weight, float eps,
                                uint16_t *xb, int64_t xbs, pio_error *err);
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
pio_status pk_cuda_fill_dummy(pk_context *ctx, const pk_tensor *out, uint64_t seed,
                              uint64_t tensor_id, float scale, float offset, pio_error *err);
pio_status pk_cuda_kv_store(pk_context *ctx, const pk_tensor *k_cache, const pk_tensor *v_cache,
                            const pk_tensor *k_new, const pk_tensor *v_new,
                            const pk_token_batch *batch, const pk_attention_params *params,
                            pio_error *err);
pio_status pk_cuda_attention(pk_context *ctx, const pk_tensor *out, const pk_tensor *q,
                             const pk_tensor *k_cache, const pk_tensor *v_cache,
                             const pk_token_batch *batch, const pk_attention_params *params,
                             pio_error *err);
/* Fused ops: cuda_matmul.cu (rmsnorm_matmul), cuda_elementwise.cu (qk_norm_rope_store). */
pio_status pk_cuda_rmsnorm_matmul(pk_context *ctx, const pk_tensor *out, const pk_tensor *y,
                                  const pk_tensor *h, const pk_tensor *x,
                                  const pk_tensor *norm_weight, float eps, const pk_tensor *w,
                                  pio_error *err);
pio_status pk_cuda_qk_norm_rope_store(pk_context *ctx, const pk_tensor *q, const pk_tensor *k,
                                      const pk_tensor *v, const pk_tensor *q_norm,
                                      const pk_tensor *k_norm, float eps,
                                      const pk_rope_params *rope, const pk_tensor *k_cache,
                                      const pk_tensor *v_cache, const pk_token_batch *batch,
                                      const pk_attention_params *params, pio_error *err);
/* cuda_attention.cu (qk_norm_rope_attention: decode batches in the attention kernel) */
pio_status pk_cuda_qk_norm_rope_attention(pk_context *ctx, const pk_tensor *out,
                                          const pk_tensor *q, const pk_tensor *k,
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
int pk_cuda_graph_is_current(pk_context *ctx, const pk_graph *graph);
pio_status pk_cuda_host_alloc(pk_context *ctx, size_t bytes, void **data, pio_error *err);
void pk_cuda_host_free(pk_context *ctx, void *data);
/* cuda_moe.cu */
pio_status pk_cuda_moe_topk_softmax(pk_context *ctx, const pk_tensor *ids,
                                    const pk_tensor *weights, const pk_tensor *logits,
                                    int normalize, pio_error *err);
pio_status pk_cuda_moe_experts(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                               const pk_tensor *gate_up, const pk_tensor *down,
                               const pk_tensor *ids, const pk_tensor *weights, int64_t n_experts,
                               pio_error *err);
pio_status pk_cuda_moe_experts_slice(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                                     const pk_tensor *gate_up, const pk_tensor *down,
                                     const pk_tensor *ids, const pk_tensor *weights,
                                     int64_t n_experts, int64_t first, int64_t n_local,
                                     int accumulate, pio_error *err);
pio_status pk_cuda_moe_topk_experts(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                                    const pk_tensor *logits, const pk_tensor *gate_up,
                                    const pk_tensor *down, const pk_tensor *ids,
                                    const pk_tensor *weights, int normalize, pio_error *err);
/* cuda_sample.cu */
pio_status pk_cuda_sample(pk_context *ctx, const pk_tensor *ids, const pk_tensor *logits,
                          int64_t n_valid, const pk_tensor *params, const pk_tensor *prompt_tokens,
                          const pk_tensor *output_tokens, const pk_tensor *uniforms,
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

/* Four floats rounded to bf16 (as pk_f32_to_bf16), packed for one 8-byte store. */
__device__ __forceinline__ uint2 pk_bf16x4(float4 v)
{
    return make_uint2((uint32_t)pk_f32_to_bf16(v.x) | (uint32_t)pk_f32_to_bf16(v.y) << 16,
                      (uint32_t)pk_f32_to_bf16(v.z) | (uint32_t)pk_f32_to_bf16(v.w) << 16);
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

/* ---- 16-byte loads of weight rows (the GEMV and MoE expert kernels) ---------------------- */

/* 16 bytes of a weight row. `once`: read once in this call, so not kept in L1; otherwise (rows
 * read again for more tokens) kept in L1. Either way L2 is asked to fetch the whole 256-byte
 * group around it: fewer, larger DRAM transactions. */
__device__ __forceinline__ uint4 pk_load_weights16(const void *p, bool once = true)
{
    uint4 v;
    if (once)
        asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
            : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
            : "l"(p));
    else
        asm("ld.global.nc.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
            : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
            : "l"(p));
    return v;
}

/* The elements of one 16-byte load (8 bf16 or 4 f32) as floats. */
template <bool BF16> struct pk_vec16 { float v[BF16 ? 8 : 4]; };

template <bool BF16> __device__ __forceinline__ pk_vec16<BF16> pk_unpack16(uint4 q)
{
    pk_vec16<BF16> r;
    uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if constexpr (BF16) {
            r.v[2 * i] = __uint_as_float(w[i] << 16);
            r.v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        } else {
            r.v[i] = __uint_as_float(w[i]);
        }
    }
    return r;
}

/* x[k .. k + 8 or 4) (16-byte aligned floats): the activations matching one weight load. */
template <bool BF16> __device__ __forceinline__ pk_vec16<BF16> pk_load_x16(const float *x)
{
    pk_vec16<BF16> r;
#pragma unroll
    for (int i = 0; i < (BF16 ? 8 : 4); i += 4) {
        float4 a = __ldg((const float4 *)(x + i));
        r.v[i] = a.x;
        r.v[i + 1] = a.y;
        r.v[i + 2] = a.z;
        r.v[i + 3] = a.w;
    }
    return r;
}

/* Σ w·x over the elements of one 16-byte load, in two chains (even and odd elements) so
 * consecutive FMAs need not wait for each other. */
template <bool BF16>
__device__ __forceinline__ float pk_dot16(const pk_vec16<BF16> &w, const pk_vec16<BF16> &x)
{
    float dot[2] = {0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < (BF16 ? 8 : 4); i++)
        dot[i & 1] = fmaf(w.v[i], x.v[i], dot[i & 1]);
    return dot[0] + dot[1];
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

/* Asks L2 for the 128-byte line holding p: no register is tied up and nothing waits. */
__device__ __forceinline__ void pk_prefetch_l2(const void *p)
{
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

/*
 * Programmatic dependent launch (sm_90). A kernel launched with pk_cuda_launch_pdl may start
 * while the kernel before it in the stream is still running; it must call pk_pdl_wait() before
 * it reads anything an earlier kernel wrote or writes anything an earlier kernel may still
 * read (work on read-only data, such as issuing weight loads, may come before). A kernel lets
 * the next one start early by calling pk_pdl_launch_dependents(); without the call the next
 * one starts when it finishes. Both are no-ops for kernels launched normally.
 */
__device__ __forceinline__ void pk_pdl_wait()
{
    asm volatile("griddepcontrol.wait;" ::: "memory");
}

__device__ __forceinline__ void pk_pdl_launch_dependents()
{
    asm volatile("griddepcontrol.launch_dependents;" :::);
}

/* ---- Tensor-map copies into shared memory, completed on an mbarrier (sm_90) --------------- */

__device__ __forceinline__ uint32_t pk_smem_addr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* A barrier that completes a phase after `arrivals` arrivals and the bytes they announced. */
__device__ __forceinline__ void pk_mbar_init(uint64_t *bar, unsigned arrivals)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(pk_smem_addr(bar)),
                 "r"(arrivals)
                 : "memory");
}

/* Makes the barriers this thread initialised visible to the copy engine (the async proxy). */
__device__ __forceinline__ void pk_mbar_init_fence()
{
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

/* Arrives on bar, announcing `bytes` that tensor copies will deliver to it. */
__device__ __forceinline__ void pk_mbar_expect_bytes(uint64_t *bar, unsigned bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(
                     pk_smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
}

/* Waits until bar has completed the phase of the given parity. */
__device__ __forceinline__ void pk_mbar_wait(uint64_t *bar, unsigned parity)
{
    uint32_t done = 0;
    do {
        asm volatile("{\n .reg .pred p;\n"
                     " mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}"
                     : "=r"(done)
                     : "r"(pk_smem_addr(bar)), "r"(parity)
                     : "memory");
    } while (!done);
}

/* Copies the box of the 2-D tensor map `map` (a __grid_constant__ kernel parameter) whose first
 * element is (column c0, row c1) into dst (128-byte aligned) without the register file; the
 * box's bytes (zeros where it reaches past the tensor) count on bar. */
__device__ __forceinline__ void pk_tensor_load_2d(void *dst, const void *map, int c0, int c1,
                                                  uint64_t *bar)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes "
                 "[%0], [%1, {%2, %3}], [%4];" ::"r"(pk_smem_addr(dst)),
                 "l"(map), "r"(c0), "r"(c1), "r"(pk_smem_addr(bar))
                 : "memory");
}

/* silu(g) · u, the CPU backend's expression (cpu_elementwise.c): every SwiGLU of the backend. */
__device__ __forceinline__ float pk_silu_mul(float g, float u)
{
    return g / (1.0f + expf(-g)) * u;
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

/* ------------------------------------------------------------------------------------------ */
/* A flattened batch on the device (pk_token_batch): positions, sequence rows, block tables   */
/* ------------------------------------------------------------------------------------------ */

struct batch_view {
    const int32_t *positions;
    const int32_t *seq_rows;
    const int32_t *tables;
    int64_t table_stride, table_rows, table_width;
    int32_t block_size;
    int32_t block_shift; /* log2(block_size) when a power of two, else -1 */
    int64_t n_blocks;    /* blocks in the cache planes */
};

static inline batch_view make_batch_view(const pk_token_batch *b, const pk_tensor *cache)
{
    batch_view v;
    v.positions = (const int32_t *)b->positions.data;
    v.seq_rows = (const int32_t *)b->seq_rows.data;
    v.tables = (const int32_t *)b->block_tables.data;
    v.table_stride = b->block_tables.stride;
    v.table_rows = b->block_tables.rows;
    v.table_width = b->block_tables.cols;
    v.block_size = b->block_size;
    v.block_shift = -1;
    for (int s = 0; s < 31; s++)
        if ((int32_t)1 << s == b->block_size)
            v.block_shift = s;
    v.n_blocks = cache->rows / b->block_size;
    return v;
}

/* Checks token t's position and table row and that the row spans its position, without
 * reading the block table: on success *pos and *table describe it. `report`: this thread
 * records the error. Kernels that check every block id they read themselves use it to start
 * their block-table reads at once. */
__device__ inline bool token_span_ok(const batch_view &b, int64_t t, int op, long long *info,
                                     bool report, int64_t *pos, const int32_t **table)
{
    int64_t p = b.positions[t], row = b.seq_rows[t];
    if (p < 0) {
        if (report)
            pk_report(info, op, PK_CUDA_BAD_POSITION, t, p, 0, 0);
        return false;
    }
    if (row < 0 || row >= b.table_rows) {
        if (report)
            pk_report(info, op, PK_CUDA_BAD_SEQ_ROW, t, row, b.table_rows, 0);
        return false;
    }
    int64_t last = p / b.block_size;
    if (last >= b.table_width) {
        if (report)
            pk_report(info, op, PK_CUDA_BAD_TABLE_SPAN, t, p, last, b.table_width);
        return false;
    }
    *pos = p;
    *table = b.tables + row * b.table_stride;
    return true;
}

/* token_span_ok, then the block holding the position: as the CPU's check_token. */
__device__ inline bool token_ok(const batch_view &b, int64_t t, int op, long long *info, bool report,
                         int64_t *pos, const int32_t **table)
{
    if (!token_span_ok(b, t, op, info, report, pos, table))
        return false;
    int32_t id = (*table)[*pos / b.block_size];
    if (id < 0 || id >= b.n_blocks) {
        if (report)
            pk_report(info, op, PK_CUDA_BAD_BLOCK_ID, t, id, b.n_blocks, 0);
        return false;
    }
    return true;
}

/* Cache row of position `key` of the sequence whose block-table row is `table` (block ids
 * already checked). */
__device__ __forceinline__ int64_t slot_of(const batch_view &b, const int32_t *table, int key)
{
    int block, offset;
    if (b.block_shift >= 0) {
        block = key >> b.block_shift;
        offset = key & (b.block_size - 1);
    } else {
        block = key / b.block_size;
        offset = key - block * b.block_size;
    }
    return (int64_t)__ldg(table + block) * b.block_size + offset;
}

/* ---- RoPE ------------------------------------------------------------------------------- */

/* RoPE's inverse frequencies for up to HALF rotated pairs, computed on the host with the CPU
 * backend's expression (so both round alike) and passed by value in the kernel arguments: no
 * device memory, nothing to upload, capturable in a graph. */
template <int HALF> struct pk_rope_freqs {
    float inv_freq[HALF];
};

/* The caller has checked rotary_dim / 2 <= HALF. */
template <int HALF> static inline pk_rope_freqs<HALF> pk_make_rope_freqs(const pk_rope_params *p)
{
    pk_rope_freqs<HALF> f;
    memset(&f, 0, sizeof f);
    for (int i = 0; i < p->rotary_dim / 2; i++) { /* exactly the CPU backend's rope_angles */
        float exponent = (float)(2 * i) / (float)p->rotary_dim;
        f.inv_freq[i] = 1.0f / powf(p->theta, exponent);
    }
    return f;
}

/* The inv_freq of the pairs a lane holds in pk_head_norm_rope's layout (pair j: inv_freq[lane +
 * 32j]). Read it early: a table in kernel-parameter space indexed by the lane is one
 * constant-cache access per distinct address, one after another, and the first use in a launch
 * misses: in the decode attention, read after the programmatic wait, it was about 2,700 cycles
 * of an H100's (docs/KERNELS.md, ninth session). */
template <int E, int HALF>
__device__ __forceinline__ void pk_rope_lane_freqs(const pk_rope_freqs<HALF> &f,
                                                   float (&freq)[E / 2])
{
    static_assert(32 * (E / 2) <= HALF, "the table holds every pair a lane rotates");
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < E / 2; j++)
        freq[j] = f.inv_freq[lane + 32 * j];
}

/* cos and sin of the RoPE angles pos·inv_freq of the pairs a lane holds (freq from
 * pk_rope_lane_freqs): one computation serves every head of a token. */
template <int E>
__device__ __forceinline__ void pk_rope_cos_sin(float pos, const float (&freq)[E / 2],
                                                float (&c)[E / 2], float (&sn)[E / 2])
{
#pragma unroll
    for (int j = 0; j < E / 2; j++)
        sincosf(pos * freq[j], &sn[j], &c[j]); /* one range reduction; sinf's and cosf's values */
}

/* The elements of a head-norm weight (BF16 or F32) a lane holds in pk_head_norm_rope's layout:
 * loaded apart from the head so that their latency can overlap other loads. */
template <int E>
__device__ __forceinline__ void pk_head_norm_weights(const void *w, bool w_bf16, float (&out)[E])
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < E; j++)
        out[j] = pk_load(w, w_bf16, lane + 32 * j);
}

/* Per-head RMSNorm (weights w from pk_head_norm_weights) and then NEOX RoPE over the whole head
 * (c, sn from pk_rope_cos_sin), for one head held by a warp: lane l holds elements l + 32j
 * (E = head_dim / 32, even), so a rotated pair (i, i + head_dim/2) is j and j + E/2 of one lane and the warp
 * needs no shared memory. The expressions of the CPU backend's rmsnorm and rope (products and
 * differences rounded separately, no FMA). */
template <int E> __device__ __forceinline__ float pk_lane_sum_squares(const float (&v)[E])
{
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < E; j++)
        s = fmaf(v[j], v[j], s);
    return s;
}

/* pk_head_norm_rope given the head's sum of squares (pk_warp_sum of pk_lane_sum_squares): a warp
 * holding several heads reduces their sums together. */
template <int E>
__device__ __forceinline__ void pk_head_scale_rope(float (&v)[E], float sum_squares,
                                                   const float (&w)[E], float eps,
                                                   const float (&c)[E / 2],
                                                   const float (&sn)[E / 2])
{
    constexpr int H = E / 2; /* pairs per lane */
    const float inv_rms = 1.0f / sqrtf(sum_squares / (float)(32 * E) + eps);
#pragma unroll
    for (int j = 0; j < E; j++)
        v[j] = (v[j] * inv_rms) * w[j];
#pragma unroll
    for (int j = 0; j < H; j++) { /* pair (lane + 32j, lane + 32j + head_dim/2) */
        const float x = v[j], y = v[j + H];
        v[j] = __fsub_rn(__fmul_rn(x, c[j]), __fmul_rn(y, sn[j]));
        v[j + H] = __fadd_rn(__fmul_rn(y, c[j]), __fmul_rn(x, sn[j]));
    }
}

template <int E>
__device__ __forceinline__ void pk_head_norm_rope(float (&v)[E], const float (&w)[E], float eps,
                                                  const float (&c)[E / 2],
                                                  const float (&sn)[E / 2])
{
    pk_head_scale_rope(v, pk_warp_sum(pk_lane_sum_squares(v)), w, eps, c, sn);
}

/* Host helpers. */
static inline bool pk_is_bf16(const pk_tensor *t)
{
    return t->dtype == PIO_DTYPE_BF16;
}

static inline bool pk_aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

/* Whether an F32 tensor's rows can be read and written as float4: 16-byte aligned data and a
 * row stride of a multiple of 4 elements (the columns are the caller's to check). */
static inline bool pk_rows_vec4(const pk_tensor *t)
{
    return pk_aligned16(t->data) && t->stride % 4 == 0;
}

/* Warps that share each of `groups` row groups of a GEMV-style kernel by splitting K (1, 2, 4
 * ... up to max_splits): doubled while the kernel has fewer than `warps_wanted` warps in all
 * and every split would keep at least two steps of `per_step` elements of K. */
static inline int pk_k_splits(int64_t groups, int64_t K, int64_t per_step, int64_t warps_wanted,
                              int max_splits)
{
    int s = 1;
    while (s < max_splits && groups * s < warps_wanted && K >= 2 * (2 * s) * per_step)
        s *= 2;
    return s;
}

static inline unsigned pk_blocks_for(int64_t n, int threads, int64_t cap)
{
    int64_t b = (n + threads - 1) / threads;
    if (b < 1)
        b = 1;
    return (unsigned)(b < cap ? b : cap);
}

#endif
