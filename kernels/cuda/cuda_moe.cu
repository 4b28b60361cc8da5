/*
 * Mixture-of-experts ops of the CUDA backend: softmax top-k routing and the routed SwiGLU
 * experts. Twins of kernels/cpu/cpu_moe.c; everything stays on the device (no host
 * synchronisation, no host-side routing), so a decode step with MoE layers can be captured as a
 * CUDA graph.
 *
 * Routing (moe_topk_kernel): one warp per token. The softmax is the CPU's operation for
 * operation (row max ignoring NaN, sum of expf(x - max) in double, expf(x - max) · (float)(1/sum)),
 * so equal logits give bit-equal probabilities on both backends and exact ties resolve alike.
 * The k experts are found in k rounds of a warp arg-max under the CPU's total order (larger p
 * first, the lower index among equal p, NaN after every number, lower index first among NaN):
 * round j takes the best expert that comes after round j-1's choice in that order, so nothing
 * needs a "taken" mask and any k <= E works. The probabilities are recomputed each round (k·E
 * expf per token, negligible at E = 128, k = 8). Renormalisation is the CPU's: a float sum in
 * slot order by one lane, divided only when positive.
 *
 * Experts (correct-first version, four launches on the context's stream):
 *   1. moe_route_kernel, one block: counts the (token, slot) pairs of each expert in shared
 *      memory, prefix-sums them into offsets[E + 1], lists the experts with at least one pair
 *      (active[], n_active) and places each pair p = t·k + j under its expert (order[]). Ids
 *      outside [0, E) are reported through err_info (pk_synchronize turns them into
 *      PIO_ERR_INVALID_ARGUMENT) and their pairs are dropped.
 *   2. moe_gate_up_kernel, grid (min(E, T·k) expert slots) × (tiles of inner columns): block
 *      x-slot s works for the s-th active expert (slots past n_active exit at once, so the grid
 *      is sized without knowing n_active on the host); each warp takes one inner column c,
 *      reads expert e's gate row c and up row c once per group of up to MOE_NP pairs, and writes
 *      act[p, c] = silu(gate · x_t) · (up · x_t) for each pair. Only the selected experts'
 *      weights are read: for decode (T = 1) that is k experts.
 *   3. moe_down_kernel, the same grid over tiles of hidden rows: pair_out[p, r] = down_e[r] · act[p].
 *   4. moe_reduce_kernel, one block per token: out[t] += Σ_j weights[t, j] · pair_out[t·k + j] in
 *      slot order, so a token's result does not depend on the other tokens of the batch (nor on
 *      the order in which pairs were placed under their expert, which uses atomics).
 *
 * Expert parallelism (pk_moe_experts_slice): the same four launches over experts
 * [first, first + n_local) of the router's E, whose weights are the slice's own rows (expert e
 * at local index e - first). The route kernel counts and lists only the slice's experts (by
 * local index, so the gate_up and down kernels are unchanged) while still checking every id
 * against [0, E); the reduce kernel skips the pairs routed elsewhere and, without accumulate,
 * starts from zero instead of out. The whole call is the slice (0, E, accumulate).
 *
 * Scratch: the context's device workspace (pk_cuda_scratch), laid out as offsets, active list,
 * order, act [T·k, F] and pair_out [T·k, H] floats. It grows (cudaMalloc) only when a call needs
 * more than any earlier call of any op: a graph capture must be preceded by a warm-up call of
 * the largest shape, as for matmul. Steady state allocates nothing.
 *
 * The fast version (prefill and batched decode) would change steps 2-3 only: a grouped GEMM
 * (tensor cores, BF16 weights, tiles of 64-128 tokens of one expert through shared memory, or
 * cuBLASLt grouped GEMM over the per-expert offsets) in place of one warp per weight row dotting
 * up to MOE_NP tokens at a time (which re-reads a weight row from L2 for every MOE_NP tokens of
 * the expert), the activation fused into the gate_up GEMM's epilogue, and the pair buffer kept
 * in bf16 or the T·k rows processed in chunks to bound the scratch. Decode would vectorise the
 * weight loads (16-byte bf16 loads) and split H across more warps per row. The routing and the
 * slot-order reduction stay as they are.
 */
#include "kernels/cuda/cuda_internal.h"

#include <math.h>

static constexpr int MOE_NP = 4;                /* pairs one warp dots a weight row with */
static constexpr int MOE_WARPS = 8;             /* warps (weight rows) per block */
static constexpr int64_t MOE_MAX_EXPERTS = 4096; /* shared counters of the route kernel */
static constexpr int64_t GRID_CAP = 65535;

/* ------------------------------------------------------------------------------------------ */
/* Routing                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* Whether (a, ia) comes before (b, ib) in the selection order; an index < 0 is "none". */
__device__ __forceinline__ bool moe_before(float a, int ia, float b, int ib)
{
    if (ib < 0)
        return ia >= 0;
    if (ia < 0)
        return false;
    bool an = isnan(a), bn = isnan(b);
    if (an || bn)
        return an && bn ? ia < ib : bn;
    return a > b || (a == b && ia < ib);
}

__device__ __forceinline__ double moe_warp_sum_double(double v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__global__ void moe_topk_kernel(int32_t *ids, int64_t is, float *weights, int64_t ws,
                                const float *__restrict__ logits, int64_t ls, int64_t T,
                                int E, int k, bool normalize)
{
    int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    int64_t first = (int64_t)blockIdx.x * warps + (threadIdx.x >> 5);
    for (int64_t t = first; t < T; t += (int64_t)gridDim.x * warps) {
        const float *x = logits + t * ls;
        float m = -INFINITY;
        for (int e = lane; e < E; e += 32)
            m = x[e] > m ? x[e] : m;
        m = pk_warp_max(m);
        bool uniform = m == -INFINITY; /* no mass anywhere: uniform by convention */
        float inv = 1.0f / (float)E;
        if (!uniform) {
            double s = 0.0;
            for (int e = lane; e < E; e += 32)
                s += (double)expf(x[e] - m);
            s = moe_warp_sum_double(s);
            inv = (float)(1.0 / s);
        }
        int32_t *row_ids = ids + t * is;
        float *row_w = weights + t * ws;
        float prev = 0.0f;
        int prev_i = -1;
        for (int j = 0; j < k; j++) {
            float best = 0.0f;
            int best_i = -1;
            for (int e = lane; e < E; e += 32) {
                float p = uniform ? inv : expf(x[e] - m) * inv;
                if ((prev_i < 0 || moe_before(prev, prev_i, p, e)) &&
                    moe_before(p, e, best, best_i)) {
                    best = p;
                    best_i = e;
                }
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                float ob = __shfl_xor_sync(0xffffffffu, best, o);
                int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
                if (moe_before(ob, oi, best, best_i)) {
                    best = ob;
                    best_i = oi;
                }
            }
            if (lane == 0) {
                row_ids[j] = best_i;
                row_w[j] = best;
            }
            prev = best;
            prev_i = best_i;
        }
        if (normalize && lane == 0) { /* as the CPU: float sum in slot order */
            float sum = 0.0f;
            for (int j = 0; j < k; j++)
                sum += row_w[j];
            for (int j = 0; j < k && sum > 0.0f; j++)
                row_w[j] /= sum;
        }
    }
}

pio_status pk_cuda_moe_topk_softmax(pk_context *ctx, const pk_tensor *ids,
                                    const pk_tensor *weights, const pk_tensor *logits,
                                    int normalize, pio_error *err)
{
    static const char op[] = "pk_moe_topk_softmax";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK || logits->rows == 0)
        return status;
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    constexpr int warps = 4;
    unsigned grid = pk_blocks_for(logits->rows, warps, 1 << 20);
    moe_topk_kernel<<<grid, warps * 32, 0, st->stream>>>(
        (int32_t *)ids->data, ids->stride, (float *)weights->data, weights->stride,
        (const float *)logits->data, logits->stride, logits->rows, (int)logits->cols,
        (int)ids->cols, normalize != 0);
    return pk_cuda_check_launch(ctx, op, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Experts                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* One block. meta[0] = n_active. Experts are counted by local index e - first, only those of
 * the slice [first, first + n_local); every id is checked against [0, E). Shared: counts
 * [n_local + 1] then cursors [n_local]. */
__global__ void moe_route_kernel(const int32_t *__restrict__ ids, int64_t is, int64_t T, int k,
                                 int E, int first, int n_local, int32_t *offsets, int32_t *active,
                                 int32_t *meta, int32_t *order, long long *info)
{
    extern __shared__ int32_t moe_shared[];
    int32_t *count = moe_shared;       /* count[e + 1]: pairs of local expert e, then offsets */
    int32_t *cursor = moe_shared + n_local + 1;
    int64_t n_pairs = T * k;
    for (int e = threadIdx.x; e <= n_local; e += blockDim.x)
        count[e] = 0;
    __syncthreads();
    for (int64_t p = threadIdx.x; p < n_pairs; p += blockDim.x) {
        int64_t t = p / k, j = p % k;
        int32_t e = ids[t * is + j];
        if (e < 0 || e >= E)
            pk_report(info, PK_CUDA_OP_MOE_EXPERTS, PK_CUDA_BAD_EXPERT_ID, t, j, e, E);
        else if (e >= first && e - first < n_local)
            atomicAdd(&count[e - first + 1], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int n = 0;
        for (int e = 0; e < n_local; e++) {
            if (count[e + 1] > 0)
                active[n++] = e;
            count[e + 1] += count[e];
            cursor[e] = count[e];
        }
        meta[0] = n;
    }
    __syncthreads();
    for (int e = threadIdx.x; e <= n_local; e += blockDim.x)
        offsets[e] = count[e];
    for (int64_t p = threadIdx.x; p < n_pairs; p += blockDim.x) {
        int32_t e = ids[(p / k) * is + p % k];
        if (e >= first && e - first < n_local)
            order[atomicAdd(&cursor[e - first], 1)] = (int32_t)p;
    }
}

__device__ __forceinline__ const void *moe_row(const void *base, bool bf16, int64_t stride,
                                               int64_t r)
{
    return (const char *)base + (size_t)(r * stride) * (bf16 ? 2u : 4u);
}

/* act[p, c] = silu(gate_e[c] · x_t) · (up_e[c] · x_t) for every pair p = t·k + j of expert e. */
__global__ void moe_gate_up_kernel(const float *__restrict__ x, int64_t xs,
                                   const void *__restrict__ w, int64_t wstride, bool bf16,
                                   const int32_t *__restrict__ offsets,
                                   const int32_t *__restrict__ active,
                                   const int32_t *__restrict__ meta,
                                   const int32_t *__restrict__ order, int k, int64_t H,
                                   int64_t F, float *act)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int n_active = meta[0];
    for (int slot = blockIdx.x; slot < n_active; slot += gridDim.x) {
        int e = active[slot], begin = offsets[e], end = offsets[e + 1];
        for (int64_t c = (int64_t)blockIdx.y * warps + warp; c < F;
             c += (int64_t)gridDim.y * warps) {
            const void *wg = moe_row(w, bf16, wstride, (int64_t)e * 2 * F + c);
            const void *wu = moe_row(w, bf16, wstride, (int64_t)e * 2 * F + F + c);
            for (int i0 = begin; i0 < end; i0 += MOE_NP) {
                int n = end - i0 < MOE_NP ? end - i0 : MOE_NP;
                int32_t pr[MOE_NP];
                const float *xr[MOE_NP];
                float g[MOE_NP], u[MOE_NP];
#pragma unroll
                for (int q = 0; q < MOE_NP; q++) {
                    pr[q] = order[i0 + (q < n ? q : n - 1)];
                    xr[q] = x + (int64_t)(pr[q] / k) * xs;
                    g[q] = u[q] = 0.0f;
                }
                for (int64_t h = lane; h < H; h += 32) {
                    float a = pk_load(wg, bf16, h), b = pk_load(wu, bf16, h);
#pragma unroll
                    for (int q = 0; q < MOE_NP; q++) {
                        float xv = xr[q][h];
                        g[q] = fmaf(a, xv, g[q]);
                        u[q] = fmaf(b, xv, u[q]);
                    }
                }
#pragma unroll
                for (int q = 0; q < MOE_NP; q++) {
                    if (q >= n) /* n is the same on every lane */
                        break;
                    float gs = pk_warp_sum(g[q]), us = pk_warp_sum(u[q]);
                    if (lane == 0)
                        act[(int64_t)pr[q] * F + c] = gs / (1.0f + expf(-gs)) * us;
                }
            }
        }
    }
}

/* pair_out[p, r] = down_e[r] · act[p] for every pair p of expert e. */
__global__ void moe_down_kernel(const float *__restrict__ act, const void *__restrict__ w,
                                int64_t wstride, bool bf16, const int32_t *__restrict__ offsets,
                                const int32_t *__restrict__ active,
                                const int32_t *__restrict__ meta,
                                const int32_t *__restrict__ order, int64_t H, int64_t F,
                                float *pair_out)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int n_active = meta[0];
    for (int slot = blockIdx.x; slot < n_active; slot += gridDim.x) {
        int e = active[slot], begin = offsets[e], end = offsets[e + 1];
        for (int64_t r = (int64_t)blockIdx.y * warps + warp; r < H;
             r += (int64_t)gridDim.y * warps) {
            const void *wr = moe_row(w, bf16, wstride, (int64_t)e * H + r);
            for (int i0 = begin; i0 < end; i0 += MOE_NP) {
                int n = end - i0 < MOE_NP ? end - i0 : MOE_NP;
                int32_t pr[MOE_NP];
                const float *ar[MOE_NP];
                float s[MOE_NP];
#pragma unroll
                for (int q = 0; q < MOE_NP; q++) {
                    pr[q] = order[i0 + (q < n ? q : n - 1)];
                    ar[q] = act + (int64_t)pr[q] * F;
                    s[q] = 0.0f;
                }
                for (int64_t i = lane; i < F; i += 32) {
                    float a = pk_load(wr, bf16, i);
#pragma unroll
                    for (int q = 0; q < MOE_NP; q++)
                        s[q] = fmaf(a, ar[q][i], s[q]);
                }
#pragma unroll
                for (int q = 0; q < MOE_NP; q++) {
                    if (q >= n)
                        break;
                    float v = pk_warp_sum(s[q]);
                    if (lane == 0)
                        pair_out[(int64_t)pr[q] * H + r] = v;
                }
            }
        }
    }
}

/* out[t] (+)= Σ_j weights[t, j] · pair_out[t·k + j] in slot order over the pairs whose expert
 * is in the slice [first, first + n_local) (the others, bad ids included, were not computed);
 * without accumulate the sum starts from zero instead of out[t]. */
__global__ void moe_reduce_kernel(float *out, int64_t os, const float *__restrict__ pair_out,
                                  const int32_t *__restrict__ ids, int64_t is,
                                  const float *__restrict__ weights, int64_t ws, int64_t T,
                                  int k, int first, int n_local, bool accumulate, int64_t H)
{
    for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
        float *o = out + t * os;
        for (int64_t c = threadIdx.x; c < H; c += blockDim.x) {
            float acc = accumulate ? o[c] : 0.0f;
            for (int j = 0; j < k; j++) {
                int32_t e = ids[t * is + j];
                if (e >= first && e - first < n_local)
                    acc = fmaf(weights[t * ws + j], pair_out[(t * k + j) * H + c], acc);
            }
            o[c] = acc;
        }
    }
}

static size_t align_up(size_t n)
{
    return (n + 255) & ~(size_t)255;
}

/* The routed experts [first, first + n_local) of E (see the top of this file). */
static pio_status run_experts(pk_context *ctx, const char *op, const pk_tensor *out,
                              const pk_tensor *x, const pk_tensor *gate_up, const pk_tensor *down,
                              const pk_tensor *ids, const pk_tensor *weights, int64_t E,
                              int64_t first, int64_t n_local, bool accumulate, pio_error *err)
{
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK || out->rows == 0 || out->cols == 0)
        return status;
    int64_t T = out->rows, k = ids->cols, H = out->cols, F = down->cols;
    int64_t n_pairs = T * k;
    if (n_local > MOE_MAX_EXPERTS || n_pairs > INT32_MAX)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "%s: the cuda backend handles up to %lld experts and 2^31 token "
                             "slots (got %lld experts, %lld slots)", op,
                             (long long)MOE_MAX_EXPERTS, (long long)n_local, (long long)n_pairs);
    pk_cuda_state *st = pk_cuda_state_of(ctx);

    size_t off_offsets = 0;
    size_t off_active = off_offsets + align_up((size_t)(n_local + 1) * 4);
    size_t off_meta = off_active + align_up((size_t)n_local * 4);
    size_t off_order = off_meta + align_up(4);
    size_t off_act = off_order + align_up((size_t)n_pairs * 4);
    size_t off_pair = off_act + align_up((size_t)n_pairs * (size_t)F * 4);
    size_t total = off_pair + align_up((size_t)n_pairs * (size_t)H * 4);
    void *scratch = NULL;
    if ((status = pk_cuda_scratch(ctx, total, op, &scratch, err)) != PIO_OK)
        return status;
    char *base = (char *)scratch;
    int32_t *offsets = (int32_t *)(base + off_offsets);
    int32_t *active = (int32_t *)(base + off_active);
    int32_t *meta = (int32_t *)(base + off_meta);
    int32_t *order = (int32_t *)(base + off_order);
    float *act = (float *)(base + off_act);
    float *pair_out = (float *)(base + off_pair);

    size_t route_smem = (size_t)(2 * n_local + 1) * sizeof(int32_t);
    moe_route_kernel<<<1, 1024, route_smem, st->stream>>>(
        (const int32_t *)ids->data, ids->stride, T, (int)k, (int)E, (int)first, (int)n_local,
        offsets, active, meta, order, st->err_info_dev);

    unsigned slots = (unsigned)(n_local < n_pairs ? n_local : n_pairs);
    dim3 gu_grid(slots, pk_blocks_for(F, MOE_WARPS, GRID_CAP));
    moe_gate_up_kernel<<<gu_grid, MOE_WARPS * 32, 0, st->stream>>>(
        (const float *)x->data, x->stride, gate_up->data, gate_up->stride, pk_is_bf16(gate_up),
        offsets, active, meta, order, (int)k, H, F, act);

    dim3 down_grid(slots, pk_blocks_for(H, MOE_WARPS, GRID_CAP));
    moe_down_kernel<<<down_grid, MOE_WARPS * 32, 0, st->stream>>>(
        act, down->data, down->stride, pk_is_bf16(down), offsets, active, meta, order, H, F,
        pair_out);

    int threads = 32;
    while (threads < 1024 && threads * 4 < H)
        threads *= 2;
    moe_reduce_kernel<<<(unsigned)(T < (1 << 20) ? T : (1 << 20)), threads, 0, st->stream>>>(
        (float *)out->data, out->stride, pair_out, (const int32_t *)ids->data, ids->stride,
        (const float *)weights->data, weights->stride, T, (int)k, (int)first, (int)n_local,
        accumulate, H);
    return pk_cuda_check_launch(ctx, op, err);
}

pio_status pk_cuda_moe_experts(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                               const pk_tensor *gate_up, const pk_tensor *down,
                               const pk_tensor *ids, const pk_tensor *weights, int64_t n_experts,
                               pio_error *err)
{
    return run_experts(ctx, "pk_moe_experts", out, x, gate_up, down, ids, weights, n_experts, 0,
                       n_experts, true, err);
}

pio_status pk_cuda_moe_experts_slice(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                                     const pk_tensor *gate_up, const pk_tensor *down,
                                     const pk_tensor *ids, const pk_tensor *weights,
                                     int64_t n_experts, int64_t first, int64_t n_local,
                                     int accumulate, pio_error *err)
{
    return run_experts(ctx, "pk_moe_experts_slice", out, x, gate_up, down, ids, weights,
                       n_experts, first, n_local, accumulate != 0, err);
}
