/*
 * Row-wise ops of the CUDA backend: embedding, RMSNorm, RoPE, SwiGLU, add, softmax, argmax,
 * cast. Each follows its CPU twin (kernels/cpu/cpu_elementwise.c) operation for operation, so
 * results differ only by the rounding of the device's expf/sinf/cosf (at most 2 ulp) and by
 * summation order.
 *
 * Row ops (RMSNorm, softmax, argmax, RoPE, embedding) give each row, or each head slice of a
 * row, to one block, with grid-stride loops so any row count fits the grid. Element-wise ops
 * use a 2-D grid: x over columns, y over rows.
 */
#include "kernels/cuda/cuda_internal.h"
#include "kernels/dummy_values.h"

#include <math.h>
#include <string.h>

static constexpr int64_t ROW_GRID_CAP = 1 << 20;
static constexpr int ROPE_MAX_HALF = 256;

static unsigned row_grid(int64_t rows)
{
    return (unsigned)(rows < 1 ? 1 : rows < ROW_GRID_CAP ? rows : ROW_GRID_CAP);
}

/* Threads per block for a row of n elements: a warp for short rows, up to 1024. */
static int row_threads(int64_t n)
{
    int t = 32;
    while (t < 1024 && (int64_t)t * 4 < n)
        t *= 2;
    return t;
}

static dim3 grid_2d(int64_t rows, int64_t cols, int threads)
{
    return dim3(pk_blocks_for(cols, threads, 1024), (unsigned)(rows < 65535 ? rows : 65535));
}

/* ------------------------------------------------------------------------------------------ */
/* Embedding                                                                                  */
/* ------------------------------------------------------------------------------------------ */

__global__ void embedding_kernel(float *__restrict__ out, int64_t os, const void *__restrict__ table,
                                 int64_t ts, bool bf16, const int32_t *__restrict__ ids, int64_t T,
                                 int64_t H, int64_t V, long long *info)
{
    size_t elem = bf16 ? 2 : 4;
    for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
        int64_t id = ids[t];
        if (id < 0 || id >= V) {
            if (threadIdx.x == 0)
                pk_report(info, PK_CUDA_OP_EMBEDDING, PK_CUDA_BAD_TOKEN_ID, t, id, V, 0);
            continue;
        }
        const void *row = (const char *)table + (size_t)(id * ts) * elem;
        for (int64_t c = threadIdx.x; c < H; c += blockDim.x)
            out[t * os + c] = pk_load(row, bf16, c);
    }
}

pio_status pk_cuda_embedding(pk_context *ctx, const pk_tensor *out, const pk_tensor *table,
                             const pk_tensor *ids, pio_error *err)
{
    static const char op[] = "pk_embedding";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK || out->rows == 0)
        return status;
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    embedding_kernel<<<row_grid(out->rows), row_threads(out->cols), 0, st->stream>>>(
        (float *)out->data, out->stride, table->data, table->stride, pk_is_bf16(table),
        (const int32_t *)ids->data, out->rows, out->cols, table->rows, st->err_info_dev);
    return pk_cuda_check_launch(ctx, op, err);
}

/* ------------------------------------------------------------------------------------------ */
/* RMSNorm                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* One block per group_width-wide slice; HF order: (x · rsqrt(mean(x²) + eps)) · w. With xb
 * (not NULL) the result is also written rounded to bf16 into xb (row stride xbs), the operand
 * of a following cuBLASLt GEMM, which then needs no conversion pass of its own. */
__global__ void rmsnorm_kernel(float *out, int64_t os, const float *x, int64_t xs,
                               const void *__restrict__ w, bool bf16, int64_t rows,
                               int64_t groups, int64_t width, float eps, uint16_t *xb,
                               int64_t xbs)
{
    __shared__ float shared[33];
    for (int64_t item = blockIdx.x; item < rows * groups; item += gridDim.x) {
        int64_t r = item / groups, g = item % groups;
        const float *xr = x + r * xs + g * width;
        float *o = out + r * os + g * width;
        float s = 0.0f;
        for (int64_t i = threadIdx.x; i < width; i += blockDim.x)
            s = fmaf(xr[i], xr[i], s);
        s = pk_block_sum(s, shared);
        float inv_rms = 1.0f / sqrtf(s / (float)width + eps);
        /* out may be x: each element is read and written by the same thread */
        for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
            float v = (xr[i] * inv_rms) * pk_load(w, bf16, i);
            o[i] = v;
            if (xb != NULL)
                xb[r * xbs + g * width + i] = pk_f32_to_bf16(v);
        }
    }
}

/* The same four elements at a time (16-byte aligned rows, width a multiple of 4, xb rows 8-byte
 * aligned): one block per slice, each thread's float4s summed, then scaled and written. */
__global__ void rmsnorm4_kernel(float *out, int64_t os, const float *x, int64_t xs,
                                const void *__restrict__ w, bool bf16, int64_t rows,
                                int64_t groups, int64_t width, float eps, uint16_t *xb,
                                int64_t xbs)
{
    __shared__ float shared[33];
    const int64_t width4 = width / 4;
    for (int64_t item = blockIdx.x; item < rows * groups; item += gridDim.x) {
        int64_t r = item / groups, g = item % groups;
        const float4 *xr = (const float4 *)(x + r * xs + g * width);
        float4 *o = (float4 *)(out + r * os + g * width);
        float s = 0.0f;
        for (int64_t i = threadIdx.x; i < width4; i += blockDim.x) {
            const float4 v = xr[i];
            s = fmaf(v.x, v.x, s);
            s = fmaf(v.y, v.y, s);
            s = fmaf(v.z, v.z, s);
            s = fmaf(v.w, v.w, s);
        }
        s = pk_block_sum(s, shared);
        float inv_rms = 1.0f / sqrtf(s / (float)width + eps);
        /* out may be x: each element is read and written by the same thread */
        for (int64_t i = threadIdx.x; i < width4; i += blockDim.x) {
            const float4 v = xr[i];
            const float4 n = make_float4((v.x * inv_rms) * pk_load(w, bf16, 4 * i),
                                         (v.y * inv_rms) * pk_load(w, bf16, 4 * i + 1),
                                         (v.z * inv_rms) * pk_load(w, bf16, 4 * i + 2),
                                         (v.w * inv_rms) * pk_load(w, bf16, 4 * i + 3));
            o[i] = n;
            if (xb != NULL)
                ((uint2 *)(xb + r * xbs + g * width))[i] = pk_bf16x4(n);
        }
    }
}

static pio_status launch_rmsnorm(pk_context *ctx, const char *op, const pk_tensor *out,
                                 const pk_tensor *x, const pk_tensor *weight,
                                 int64_t group_width, float eps, uint16_t *xb, int64_t xbs,
                                 pio_error *err)
{
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK || out->rows == 0)
        return status;
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    int64_t groups = out->cols / group_width;
    if (group_width % 4 == 0 && pk_rows_vec4(out) && pk_rows_vec4(x) &&
        ((uintptr_t)xb & 7u) == 0 && xbs % 4 == 0)
        rmsnorm4_kernel<<<row_grid(out->rows * groups), row_threads(group_width / 4), 0,
                          st->stream>>>((float *)out->data, out->stride, (const float *)x->data,
                                        x->stride, weight->data, pk_is_bf16(weight), out->rows,
                                        groups, group_width, eps, xb, xbs);
    else
        rmsnorm_kernel<<<row_grid(out->rows * groups), row_threads(group_width), 0,
                         st->stream>>>((float *)out->data, out->stride, (const float *)x->data,
                                       x->stride, weight->data, pk_is_bf16(weight), out->rows,
                                       groups, group_width, eps, xb, xbs);
    return pk_cuda_check_launch(ctx, op, err);
}

pio_status pk_cuda_rmsnorm(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                           const pk_tensor *weight, int64_t group_width, float eps,
                           pio_error *err)
{
    const char *op = group_width == out->cols ? "pk_rmsnorm" : "pk_head_rmsnorm";
    return launch_rmsnorm(ctx, op, out, x, weight, group_width, eps, NULL, 0, err);
}

pio_status pk_cuda_rmsnorm_bf16(pk_context *ctx, const char *op, const pk_tensor *out,
                                const pk_tensor *x, const pk_tensor *weight, float eps,
                                uint16_t *xb, int64_t xbs, pio_error *err)
{
    return launch_rmsnorm(ctx, op, out, x, weight, out->cols, eps, xb, xbs, err);
}

/* ------------------------------------------------------------------------------------------ */
/* RoPE                                                                                       */
/* ------------------------------------------------------------------------------------------ */

typedef pk_rope_freqs<ROPE_MAX_HALF> rope_freqs;

/* One block per token: cos/sin of each frequency once into shared memory, then every pair of
 * every head. Products and differences are rounded separately (no FMA), as on the CPU. */
__global__ void rope_kernel(float *out, int64_t os, const float *x, int64_t xs,
                            const int32_t *__restrict__ positions, int64_t T, int64_t cols,
                            int head_dim, int rotary_dim, int offset, bool interleaved,
                            bool copy_rest, rope_freqs f)
{
    __shared__ float cos_s[ROPE_MAX_HALF], sin_s[ROPE_MAX_HALF];
    int half = rotary_dim / 2;
    int64_t heads = cols / head_dim;
    for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
        __syncthreads(); /* the previous token's cos/sin are no longer read */
        float pos = (float)positions[t];
        for (int i = threadIdx.x; i < half; i += blockDim.x) {
            float angle = pos * f.inv_freq[i];
            cos_s[i] = cosf(angle);
            sin_s[i] = sinf(angle);
        }
        __syncthreads();
        const float *xr = x + t * xs;
        float *o = out + t * os;
        if (copy_rest)
            for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
                int d = (int)(c % head_dim);
                if (d < offset || d >= offset + rotary_dim)
                    o[c] = xr[c];
            }
        for (int64_t idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
            int64_t h = idx / half;
            int i = (int)(idx % half);
            int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
            int64_t base = h * head_dim + offset;
            float x0 = xr[base + a], x1 = xr[base + b], c = cos_s[i], s = sin_s[i];
            o[base + a] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
            o[base + b] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
        }
    }
}

pio_status pk_cuda_rope(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                        const pk_tensor *positions, const pk_rope_params *params,
                        pio_error *err)
{
    static const char op[] = "pk_rope";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK)
        return status;
    int half = params->rotary_dim / 2;
    if (half > ROPE_MAX_HALF)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "%s: rotary_dim %d; the cuda backend rotates at most %d dims", op,
                             (int)params->rotary_dim, 2 * ROPE_MAX_HALF);
    if (out->rows == 0)
        return PIO_OK;
    rope_freqs f = pk_make_rope_freqs<ROPE_MAX_HALF>(params);
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    int64_t heads = out->cols / params->head_dim;
    bool copy_rest = out->data != x->data;
    rope_kernel<<<row_grid(out->rows), row_threads(heads * half), 0, st->stream>>>(
        (float *)out->data, out->stride, (const float *)x->data, x->stride,
        (const int32_t *)positions->data, out->rows, out->cols, params->head_dim,
        params->rotary_dim, params->rotary_offset, params->layout == PK_ROPE_INTERLEAVED,
        copy_rest, f);
    return pk_cuda_check_launch(ctx, op, err);
}

/* ------------------------------------------------------------------------------------------ */
/* QK-norm + RoPE (the first half of pk_qk_norm_rope_store)                                   */
/* ------------------------------------------------------------------------------------------ */

static constexpr int QK_NORM_WARPS = 8;
static constexpr int64_t QK_NORM_MANY_TOKENS = 64; /* above: several heads a warp (prefill) */

struct qk_norm_rope_args {
    float *q, *k;
    const float *v;
    int64_t qs, ks, vs;
    int n_q, n_kv, head_dim;
    const void *q_norm, *k_norm;
    bool q_norm_bf16, k_norm_bf16;
    float eps;
    int64_t T;
    int rotary_dim, offset;
    bool interleaved;
    rope_freqs f;
    void *k_cache, *v_cache; /* v_cache NULL: keys only */
    int64_t kcs, vcs;
    bool k_bf16, v_bf16;
    batch_view b;
    long long *info;
};

/* Head `head` of token t is normalised (q and k heads) and rotated, in place; a k head then
 * goes to its cache slot, a v head (numbered after the k heads) is copied there. */
__device__ void qk_norm_rope_head(const qk_norm_rope_args &a, int64_t t, int head, float *row,
                                  const float *cos_s, const float *sin_s, int64_t slot)
{
    const int lane = threadIdx.x & 31, hd = a.head_dim, half = a.rotary_dim / 2;
    if (head >= a.n_q + a.n_kv) { /* a value head: stored as it is */
        int vh = head - a.n_q - a.n_kv;
        const float *x = a.v + t * a.vs + (int64_t)vh * hd;
        void *dst = (char *)a.v_cache + (size_t)(slot * a.vcs) * (a.v_bf16 ? 2 : 4);
        for (int i = lane; i < hd; i += 32)
            pk_store(dst, a.v_bf16, (int64_t)vh * hd + i, x[i]);
        return;
    }
    bool is_q = head < a.n_q;
    int kh = head - a.n_q;
    float *x = is_q ? a.q + t * a.qs + (int64_t)head * hd : a.k + t * a.ks + (int64_t)kh * hd;
    const void *w = is_q ? a.q_norm : a.k_norm;
    bool w_bf16 = is_q ? a.q_norm_bf16 : a.k_norm_bf16;
    float s = 0.0f;
    for (int i = lane; i < hd; i += 32)
        s = fmaf(x[i], x[i], s);
    float inv_rms = 1.0f / sqrtf(pk_warp_sum(s) / (float)hd + a.eps);
    for (int i = lane; i < hd; i += 32)
        row[i] = (x[i] * inv_rms) * pk_load(w, w_bf16, i);
    __syncwarp();
    /* Each lane writes only its own elements; the rotated pairs read `row`, left unchanged. */
    void *k_row = !is_q && slot >= 0 ? (char *)a.k_cache + (size_t)(slot * a.kcs) *
                                                               (a.k_bf16 ? 2 : 4)
                                     : NULL;
    for (int i = lane; i < hd; i += 32) {
        float out = row[i];
        if (i >= a.offset && i < a.offset + a.rotary_dim) {
            int pair = i - a.offset;
            bool first = a.interleaved ? (pair & 1) == 0 : pair < half;
            int p = a.interleaved ? pair >> 1 : (first ? pair : pair - half);
            int j = a.offset + (a.interleaved ? (first ? pair + 1 : pair - 1)
                                               : (first ? pair + half : pair - half));
            float xj = row[j], c = cos_s[p], sn = sin_s[p];
            out = first ? __fsub_rn(__fmul_rn(out, c), __fmul_rn(xj, sn))
                        : __fadd_rn(__fmul_rn(out, c), __fmul_rn(xj, sn));
        }
        x[i] = out;
        if (k_row != NULL)
            pk_store(k_row, a.k_bf16, (int64_t)kh * hd + i, out);
    }
    __syncwarp(); /* row is reused by this warp's next head */
}

/* Blocks over (token, group of QK_NORM_WARPS heads: q, then k, then v); one warp per head. Same
 * expressions as rmsnorm_kernel, rope_kernel and kv_store. Decode steps have one token: the
 * heads give the parallelism. A token whose cache slot is invalid is normalised and rotated but
 * not stored, and reported (as pk_kv_store does). */
__global__ void __launch_bounds__(QK_NORM_WARPS * 32) qk_norm_rope_kernel(qk_norm_rope_args a)
{
    extern __shared__ float sm[];
    float *cos_s = sm, *sin_s = sm + ROPE_MAX_HALF;
    const int warp = threadIdx.x >> 5;
    float *row = sin_s + ROPE_MAX_HALF + warp * a.head_dim;
    const int half = a.rotary_dim / 2;
    const int heads = a.n_q + a.n_kv + (a.v_cache != NULL ? a.n_kv : 0);
    for (int64_t t = blockIdx.x; t < a.T; t += gridDim.x) {
        __syncthreads(); /* the previous token's cos/sin are no longer read */
        int64_t pos;
        const int32_t *table;
        bool ok = token_ok(a.b, t, PK_CUDA_OP_KV_STORE, a.info,
                           threadIdx.x == 0 && blockIdx.y == 0, &pos, &table);
        int64_t slot = ok ? slot_of(a.b, table, (int)pos) : -1;
        float angle_pos = (float)a.b.positions[t];
        for (int i = threadIdx.x; i < half; i += blockDim.x) {
            float angle = angle_pos * a.f.inv_freq[i];
            cos_s[i] = cosf(angle);
            sin_s[i] = sinf(angle);
        }
        __syncthreads();
        for (int head = blockIdx.y * QK_NORM_WARPS + warp; head < heads;
             head += gridDim.y * QK_NORM_WARPS)
            if (head < a.n_q + a.n_kv || slot >= 0)
                qk_norm_rope_head(a, t, head, row, cos_s, sin_s, slot);
    }
}

/* Head `head` of token t held in registers (lane l: elements l + 32j) by qk_norm_rope_lanes_kernel:
 * a value head is stored as it is; a q or k head is normalised and rotated (c, sn: the
 * token's angles) and written back, a k head also to its cache slot (slot < 0: not stored). */
template <int E>
__device__ __forceinline__ void qk_norm_rope_lanes_head(const qk_norm_rope_args &a, int64_t t,
                                                        int head, int64_t slot,
                                                        const float (&c)[E / 2],
                                                        const float (&sn)[E / 2], float (&v)[E])
{
    const int lane = threadIdx.x & 31, hd = E * 32;
    const bool is_q = head < a.n_q, is_v = head >= a.n_q + a.n_kv;
    if (is_v) {
        if (slot >= 0) {
            const int vh = head - a.n_q - a.n_kv;
            void *dst = (char *)a.v_cache + (size_t)(slot * a.vcs) * (a.v_bf16 ? 2 : 4);
#pragma unroll
            for (int j = 0; j < E; j++)
                pk_store(dst, a.v_bf16, (int64_t)vh * hd + lane + 32 * j, v[j]);
        }
        return;
    }
    const int kh = head - a.n_q;
    float wr[E];
    pk_head_norm_weights(is_q ? a.q_norm : a.k_norm, is_q ? a.q_norm_bf16 : a.k_norm_bf16, wr);
    pk_head_norm_rope(v, wr, a.eps, c, sn);
    float *x = is_q ? a.q + t * a.qs + (int64_t)head * hd : a.k + t * a.ks + (int64_t)kh * hd;
    void *k_row = !is_q && slot >= 0
                      ? (char *)a.k_cache + (size_t)(slot * a.kcs) * (a.k_bf16 ? 2 : 4)
                      : NULL;
#pragma unroll
    for (int j = 0; j < E; j++) {
        x[lane + 32 * j] = v[j];
        if (k_row != NULL)
            pk_store(k_row, a.k_bf16, (int64_t)kh * hd + lane + 32 * j, v[j]);
    }
}

/*
 * The same for the common shape, in registers: NEOX rotation of whole heads whose width is a
 * multiple of 64 (pk_head_norm_rope: no shared memory, no block barrier). A warp takes HPW
 * consecutive heads of a token: their values are all loaded first, then the token's position
 * and cache slot are looked up and its angles computed once, so the latencies overlap. Decode
 * launches HPW = 1 (the heads are the parallelism); prefill HPW = 4, which keeps four times the
 * loads in flight and looks a token up once per warp instead of once per head. Same
 * expressions as qk_norm_rope_head; reporting as qk_norm_rope_kernel. Launched as a
 * programmatic dependent of the projection before it (it waits for it first thing), and lets
 * the attention after it launch early.
 */
template <int E, int HPW>
__global__ void __launch_bounds__(QK_NORM_WARPS * 32, HPW > 1 ? 4 : 1)
    qk_norm_rope_lanes_kernel(qk_norm_rope_args a)
{
    const int lane = threadIdx.x & 31;
    const int first = (blockIdx.y * QK_NORM_WARPS + (threadIdx.x >> 5)) * HPW;
    const int heads = a.n_q + a.n_kv + (a.v_cache != NULL ? a.n_kv : 0), hd = E * 32;
    float freq[E / 2];
    pk_rope_lane_freqs<E>(a.f, freq);
    pk_pdl_wait(); /* q, k, v: the projection before */
    pk_pdl_launch_dependents();
    if (first >= heads)
        return; /* no barriers below */
    const int n = min(HPW, heads - first);
    for (int64_t t = blockIdx.x; t < a.T; t += gridDim.x) {
        float v[HPW][E];
#pragma unroll
        for (int h = 0; h < HPW; h++) {
            const int head = first + h;
            if (h >= n)
                break;
            const float *src = head < a.n_q ? a.q + t * a.qs + (int64_t)head * hd
                               : head < a.n_q + a.n_kv
                                   ? a.k + t * a.ks + (int64_t)(head - a.n_q) * hd
                                   : a.v + t * a.vs + (int64_t)(head - a.n_q - a.n_kv) * hd;
#pragma unroll
            for (int j = 0; j < E; j++)
                v[h][j] = src[lane + 32 * j];
        }
        int64_t pos;
        const int32_t *table;
        bool ok = token_ok(a.b, t, PK_CUDA_OP_KV_STORE, a.info,
                           lane == 0 && first == 0 && blockIdx.y == 0, &pos, &table);
        int64_t slot = ok ? slot_of(a.b, table, (int)pos) : -1;
        float c[E / 2], sn[E / 2];
        if (first < a.n_q + a.n_kv)
            pk_rope_cos_sin<E>((float)a.b.positions[t], freq, c, sn);
#pragma unroll
        for (int h = 0; h < HPW; h++) {
            const int head = first + h;
            if (h >= n)
                break;
            qk_norm_rope_lanes_head<E>(a, t, head, slot, c, sn, v[h]);
        }
    }
}

pio_status pk_cuda_qk_norm_rope_store(pk_context *ctx, const pk_tensor *q, const pk_tensor *k,
                                      const pk_tensor *v, const pk_tensor *q_norm,
                                      const pk_tensor *k_norm, float eps,
                                      const pk_rope_params *rope, const pk_tensor *k_cache,
                                      const pk_tensor *v_cache, const pk_token_batch *batch,
                                      const pk_attention_params *params, pio_error *err)
{
    static const char op[] = "pk_qk_norm_rope_store";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK)
        return status;
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    size_t smem = (2 * ROPE_MAX_HALF + (size_t)QK_NORM_WARPS * params->head_dim) * sizeof(float);
    if (rope->rotary_dim / 2 > ROPE_MAX_HALF || smem > (size_t)st->max_smem_optin ||
        (v != NULL && params->v_head_dim != params->head_dim))
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: head_dim %d / v_head_dim %d / "
                             "rotary_dim %d are beyond the cuda kernel's limits", op,
                             (int)params->head_dim, (int)params->v_head_dim,
                             (int)rope->rotary_dim);
    if (q->rows == 0)
        return PIO_OK;
    qk_norm_rope_args a;
    a.q = (float *)q->data;
    a.k = (float *)k->data;
    a.v = v != NULL ? (const float *)v->data : NULL;
    a.qs = q->stride;
    a.ks = k->stride;
    a.vs = v != NULL ? v->stride : 0;
    a.n_q = params->n_q_heads;
    a.n_kv = params->n_kv_heads;
    a.head_dim = params->head_dim;
    a.q_norm = q_norm->data;
    a.k_norm = k_norm->data;
    a.q_norm_bf16 = pk_is_bf16(q_norm);
    a.k_norm_bf16 = pk_is_bf16(k_norm);
    a.eps = eps;
    a.T = q->rows;
    a.rotary_dim = rope->rotary_dim;
    a.offset = rope->rotary_offset;
    a.interleaved = rope->layout == PK_ROPE_INTERLEAVED;
    a.f = pk_make_rope_freqs<ROPE_MAX_HALF>(rope);
    a.k_cache = k_cache->data;
    a.kcs = k_cache->stride;
    a.k_bf16 = pk_is_bf16(k_cache);
    a.v_cache = v != NULL ? v_cache->data : NULL;
    a.vcs = v != NULL ? v_cache->stride : 0;
    a.v_bf16 = v != NULL && pk_is_bf16(v_cache);
    a.b = make_batch_view(batch, k_cache);
    a.info = st->err_info_dev;
    if (smem > 48 * 1024)
        (void)cudaFuncSetAttribute(qk_norm_rope_kernel,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    int heads = a.n_q + a.n_kv + (v != NULL ? a.n_kv : 0);
    unsigned rows = (unsigned)(q->rows < 65535 ? q->rows : 65535);
    bool lanes = !a.interleaved && a.offset == 0 && a.rotary_dim == a.head_dim;
    /* heads per warp of the lanes kernel: 1 for decode-sized batches; for prefill 16 values a
     * lane (4 heads of 128, 2 of 256) */
    int hpw = !lanes || q->rows <= QK_NORM_MANY_TOKENS ? 1 : a.head_dim == 256 ? 2 : 4;
    dim3 threads(QK_NORM_WARPS * 32);
    dim3 grid(rows, (unsigned)((heads + hpw * QK_NORM_WARPS - 1) / (hpw * QK_NORM_WARPS)));
    cudaError_t e = cudaSuccess;
    if (lanes && a.head_dim == 64)
        e = hpw > 1 ? pk_cuda_launch_pdl(st, qk_norm_rope_lanes_kernel<2, 4>, grid, threads, 0, a)
                    : pk_cuda_launch_pdl(st, qk_norm_rope_lanes_kernel<2, 1>, grid, threads, 0, a);
    else if (lanes && a.head_dim == 128)
        e = hpw > 1 ? pk_cuda_launch_pdl(st, qk_norm_rope_lanes_kernel<4, 4>, grid, threads, 0, a)
                    : pk_cuda_launch_pdl(st, qk_norm_rope_lanes_kernel<4, 1>, grid, threads, 0, a);
    else if (lanes && a.head_dim == 256)
        e = hpw > 1 ? pk_cuda_launch_pdl(st, qk_norm_rope_lanes_kernel<8, 2>, grid, threads, 0, a)
                    : pk_cuda_launch_pdl(st, qk_norm_rope_lanes_kernel<8, 1>, grid, threads, 0, a);
    else
        qk_norm_rope_kernel<<<grid, threads, smem, st->stream>>>(a);
    if (e != cudaSuccess)
        return pk_cuda_fail(ctx, op, "kernel launch", e, err);
    return pk_cuda_check_launch(ctx, op, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Element-wise: SwiGLU, add, cast                                                            */
/* ------------------------------------------------------------------------------------------ */

/* out may be gate or up: each element is read, then written, by one thread. */
__global__ void swiglu_kernel(float *out, int64_t os, const float *gate, int64_t gs,
                              const float *up, int64_t us, int64_t rows, int64_t cols)
{
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
        for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols;
             c += (int64_t)gridDim.x * blockDim.x) {
            out[r * os + c] = pk_silu_mul(gate[r * gs + c], up[r * us + c]);
        }
}

/* The same four columns at a time (rows of 16-byte aligned float4s): prefill-sized calls move
 * hundreds of MB, and scalar accesses keep too few bytes in flight to stream them. */
__global__ void swiglu4_kernel(float *out, int64_t os, const float *gate, int64_t gs,
                               const float *up, int64_t us, int64_t rows, int64_t cols4)
{
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
        for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols4;
             c += (int64_t)gridDim.x * blockDim.x) {
            const float4 g = ((const float4 *)(gate + r * gs))[c];
            const float4 u = ((const float4 *)(up + r * us))[c];
            ((float4 *)(out + r * os))[c] = make_float4(pk_silu_mul(g.x, u.x), pk_silu_mul(g.y, u.y),
                                                        pk_silu_mul(g.z, u.z), pk_silu_mul(g.w, u.w));
        }
}

pio_status pk_cuda_swiglu(pk_context *ctx, const pk_tensor *out, const pk_tensor *gate,
                          const pk_tensor *up, pio_error *err)
{
    static const char op[] = "pk_swiglu";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK || out->rows == 0 || out->cols == 0)
        return status;
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    if (out->cols % 4 == 0 && pk_rows_vec4(out) && pk_rows_vec4(gate) && pk_rows_vec4(up))
        swiglu4_kernel<<<grid_2d(out->rows, out->cols / 4, 256), 256, 0, st->stream>>>(
            (float *)out->data, out->stride, (const float *)gate->data, gate->stride,
            (const float *)up->data, up->stride, out->rows, out->cols / 4);
    else
        swiglu_kernel<<<grid_2d(out->rows, out->cols, 256), 256, 0, st->stream>>>(
            (float *)out->data, out->stride, (const float *)gate->data, gate->stride,
            (const float *)up->data, up->stride, out->rows, out->cols);
    return pk_cuda_check_launch(ctx, op, err);
}

__global__ void add_kernel(float *out, int64_t os, const float *a, int64_t as, const float *b,
                           int64_t bs, int64_t rows, int64_t cols)
{
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
        for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols;
             c += (int64_t)gridDim.x * blockDim.x)
            out[r * os + c] = a[r * as + c] + b[r * bs + c];
}

pio_status pk_cuda_add(pk_context *ctx, const pk_tensor *out, const pk_tensor *a,
                       const pk_tensor *b, pio_error *err)
{
    static const char op[] = "pk_add";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK || out->rows == 0 || out->cols == 0)
        return status;
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    add_kernel<<<grid_2d(out->rows, out->cols, 256), 256, 0, st->stream>>>(
        (float *)out->data, out->stride, (const float *)a->data, a->stride,
        (const float *)b->data, b->stride, out->rows, out->cols);
    return pk_cuda_check_launch(ctx, op, err);
}

__global__ void cast_kernel(void *out, int64_t os, bool out_bf16, const void *x, int64_t xs,
                            bool x_bf16, int64_t rows, int64_t cols)
{
    size_t oe = out_bf16 ? 2 : 4, xe = x_bf16 ? 2 : 4;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        void *o = (char *)out + (size_t)(r * os) * oe;
        const void *xr = (const char *)x + (size_t)(r * xs) * xe;
        for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols;
             c += (int64_t)gridDim.x * blockDim.x)
            pk_store(o, out_bf16, c, pk_load(xr, x_bf16, c));
    }
}

pio_status pk_cuda_cast(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                        pio_error *err)
{
    static const char op[] = "pk_cast";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK || out->rows == 0 || out->cols == 0)
        return status;
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    if (out->dtype == x->dtype) {
        size_t elem = pio_dtype_size(out->dtype);
        return pk_cuda_fail(ctx, op, "cudaMemcpy2DAsync",
                            cudaMemcpy2DAsync(out->data, (size_t)out->stride * elem, x->data,
                                              (size_t)x->stride * elem, (size_t)out->cols * elem,
                                              (size_t)out->rows, cudaMemcpyDeviceToDevice,
                                              st->stream),
                            err);
    }
    cast_kernel<<<grid_2d(out->rows, out->cols, 256), 256, 0, st->stream>>>(
        out->data, out->stride, pk_is_bf16(out), x->data, x->stride, pk_is_bf16(x), out->rows,
        out->cols);
    return pk_cuda_check_launch(ctx, op, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Softmax and argmax                                                                         */
/* ------------------------------------------------------------------------------------------ */

__device__ __forceinline__ double warp_sum_double(double v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* As the CPU: the row maximum (NaN ignored), the sum of expf(x - max) in double, then
 * expf(x - max) · (float)(1 / sum); an all -inf row is uniform. */
__global__ void softmax_kernel(float *out, int64_t os, const float *x, int64_t xs, int64_t rows,
                               int64_t n)
{
    __shared__ float fshared[33];
    __shared__ double dshared[33];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *xr = x + r * xs;
        float *o = out + r * os;
        float m = -INFINITY;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
            m = xr[i] > m ? xr[i] : m;
        m = pk_warp_max(m);
        __syncthreads();
        if (lane == 0)
            fshared[warp] = m;
        __syncthreads();
        if (warp == 0) {
            float v = lane < warps ? fshared[lane] : -INFINITY;
            v = pk_warp_max(v);
            if (lane == 0)
                fshared[32] = v;
        }
        __syncthreads();
        m = fshared[32];
        if (m == -INFINITY) {
            for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
                o[i] = 1.0f / (float)n;
            continue;
        }
        double s = 0.0;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
            s += (double)expf(xr[i] - m);
        s = warp_sum_double(s);
        if (lane == 0)
            dshared[warp] = s;
        __syncthreads();
        if (warp == 0) {
            double v = lane < warps ? dshared[lane] : 0.0;
            v = warp_sum_double(v);
            if (lane == 0)
                dshared[32] = v;
        }
        __syncthreads();
        float inv = (float)(1.0 / dshared[32]);
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
            o[i] = expf(xr[i] - m) * inv;
    }
}

pio_status pk_cuda_softmax(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                           pio_error *err)
{
    static const char op[] = "pk_softmax";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK || out->rows == 0 || out->cols == 0)
        return status;
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    softmax_kernel<<<row_grid(out->rows), row_threads(out->cols), 0, st->stream>>>(
        (float *)out->data, out->stride, (const float *)x->data, x->stride, out->rows, out->cols);
    return pk_cuda_check_launch(ctx, op, err);
}

/* (value, index) pairs: the larger value wins, ties go to the lower index, NaN never wins
 * (index -1 = nothing seen yet). */
__device__ __forceinline__ void argmax_merge(float &v, int64_t &i, float ov, int64_t oi)
{
    if (oi < 0)
        return;
    if (i < 0 || ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

__device__ __forceinline__ void argmax_warp(float &v, int64_t &i)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, o);
        long long oi = __shfl_xor_sync(0xffffffffu, (long long)i, o);
        argmax_merge(v, i, ov, oi);
    }
}

/* Rows are long (a vocabulary) and few (the tokens being sampled): each row is cut into `parts`
 * slices, one block each, whose (value, index) winners meet in argmax_finish. */
static constexpr int ARGMAX_THREADS = 256;
static constexpr int64_t ARGMAX_SLICE = 4096; /* elements per block at least */
static constexpr int ARGMAX_MAX_PARTS = 64;

struct argmax_pair {
    float value;
    int32_t index; /* -1: nothing but NaN seen */
};

__global__ void __launch_bounds__(ARGMAX_THREADS)
    argmax_parts_kernel(argmax_pair *parts, const float *x, int64_t xs, int64_t n, int n_parts)
{
    __shared__ float vshared[32];
    __shared__ int64_t ishared[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int64_t r = blockIdx.y, slice = (n + n_parts - 1) / n_parts;
    const int64_t first = blockIdx.x * slice, last = min(n, first + slice);
    const float *xr = x + r * xs;
    float v = 0.0f;
    int64_t best = -1;
    for (int64_t i = first + threadIdx.x; i < last; i += blockDim.x) {
        float xv = xr[i];
        if (!isnan(xv) && (best < 0 || xv > v)) { /* i rises: ties keep the first */
            v = xv;
            best = i;
        }
    }
    argmax_warp(v, best);
    if (lane == 0) {
        vshared[warp] = v;
        ishared[warp] = best;
    }
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? vshared[lane] : 0.0f;
        best = lane < warps ? ishared[lane] : -1;
        argmax_warp(v, best);
        if (lane == 0)
            parts[r * n_parts + blockIdx.x] = argmax_pair{v, (int32_t)best};
    }
}

/* One warp per row merges its slices' winners (lower slices hold lower indices). */
__global__ void argmax_finish_kernel(int32_t *ids, const argmax_pair *parts, int n_parts)
{
    const int64_t r = blockIdx.x;
    float v = 0.0f;
    int64_t best = -1;
    for (int p = threadIdx.x; p < n_parts; p += 32)
        argmax_merge(v, best, parts[r * n_parts + p].value, parts[r * n_parts + p].index);
    argmax_warp(v, best);
    if (threadIdx.x == 0)
        ids[r] = best < 0 ? 0 : (int32_t)best;
}

pio_status pk_cuda_argmax(pk_context *ctx, const pk_tensor *ids, const pk_tensor *x,
                          pio_error *err)
{
    static const char op[] = "pk_argmax";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK || x->rows == 0)
        return status;
    if (x->rows > 65535 || x->cols > INT32_MAX)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: more than 65535 rows or 2^31 "
                             "columns", op);
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    int64_t parts = (x->cols + ARGMAX_SLICE - 1) / ARGMAX_SLICE;
    parts = parts < 1 ? 1 : parts > ARGMAX_MAX_PARTS ? ARGMAX_MAX_PARTS : parts;
    void *scratch = NULL;
    if ((status = pk_cuda_scratch(ctx, (size_t)(x->rows * parts) * sizeof(argmax_pair), op,
                                  &scratch, err)) != PIO_OK)
        return status;
    argmax_pair *pairs = (argmax_pair *)scratch;
    argmax_parts_kernel<<<dim3((unsigned)parts, (unsigned)x->rows), ARGMAX_THREADS, 0,
                          st->stream>>>(pairs, (const float *)x->data, x->stride, x->cols,
                                        (int)parts);
    argmax_finish_kernel<<<(unsigned)x->rows, 32, 0, st->stream>>>((int32_t *)ids->data, pairs,
                                                                    (int)parts);
    return pk_cuda_check_launch(ctx, op, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Dummy weights                                                                              */
/* ------------------------------------------------------------------------------------------ */

__global__ void fill_dummy_kernel(void *out, int64_t os, bool bf16, int64_t rows, int64_t cols,
                                  uint64_t seed, uint64_t tensor_id, float scale, float offset)
{
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
        for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols;
             c += (int64_t)gridDim.x * blockDim.x) {
            float v = pk_dummy_value(seed, tensor_id, (uint64_t)(r * cols + c), scale, offset);
            pk_store((char *)out + (size_t)(r * os) * (bf16 ? 2 : 4), bf16, c, v);
        }
}

pio_status pk_cuda_fill_dummy(pk_context *ctx, const pk_tensor *out, uint64_t seed,
                              uint64_t tensor_id, float scale, float offset, pio_error *err)
{
    static const char op[] = "pk_fill_dummy";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK || out->rows == 0 || out->cols == 0)
        return status;
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    fill_dummy_kernel<<<grid_2d(out->rows, out->cols, 256), 256, 0, st->stream>>>(
        out->data, out->stride, pk_is_bf16(out), out->rows, out->cols, seed, tensor_id, scale,
        offset);
    return pk_cuda_check_launch(ctx, op, err);
}
