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
 * Experts: four launches on the context's stream.
 *   1. moe_route_kernel, one block: counts the (token, slot) pairs of each expert in shared
 *      memory, prefix-sums them into offsets[E + 1], lists the experts with at least one pair
 *      (active[], then -1 up to n_local) and places each pair p = t·k + j under its expert
 *      (order[]). Ids outside [0, E) are reported through err_info (pk_synchronize turns them
 *      into PIO_ERR_INVALID_ARGUMENT) and their pairs are dropped.
 *   2. moe_gemv_kernel<G = 2> (gate_up): act[p, c] = silu(gate_e[c] · x_t) · (up_e[c] · x_t).
 *   3. moe_gemv_kernel<G = 1> (down): pair_out[p, r] = down_e[r] · act[p].
 *   4. moe_reduce_kernel, one block per token: out[t] += Σ_j weights[t, j] · pair_out[t·k + j] in
 *      slot order, so a token's result does not depend on the other tokens of the batch (nor on
 *      the order in which pairs were placed under their expert, which uses atomics).
 *
 * The expert GEMV (steps 2 and 3) is the matmul GEMV kernel's scheme applied to the selected
 * experts only. Grid (min(n_local, T·k) expert slots) × (blocks of outputs), 8 warps a block:
 * block x-slot s works for the s-th active expert (slots past the last exit at once, so the
 * grid is sized without knowing their number on the host), so every selected expert's rows
 * stream at the same time. A warp owns 4 weight rows (2 outputs of gate_up, each a gate and an
 * up row, or 4 rows of down) and reads them with 16-byte loads (8 bf16 or 4 f32 a lane; not
 * kept in L1, L2 fetching 256-byte groups), each input value loaded once for the 4 rows. When K
 * is short for the number of warps (down: K = F = 768) `splits` warps share a row group,
 * interleaving over K; their sums meet in shared memory and are added in split order. The pairs
 * of an expert are taken in groups (up to 4, or one at a time in the one-pair variant used when
 * T·k <= n_local), each group one pass over the rows: the weights come from HBM once per call,
 * later passes hit L1/L2. Rows or inputs that are not 16-byte aligned use scalar loads; K % 8
 * (bf16) or K % 4 (f32) tail elements are read one per lane.
 *   Bytes: decode (T = 1) of Qwen3-Coder-30B-A3B (H 2048, F 768, k 8, bf16) reads 8 × 6.3 MB of
 * gate_up and 8 × 3.1 MB of down; the inputs (8 KB of x, 24 KB of act) come from L2, and
 * act/pair_out writes are under 100 KB. Limited by HBM bandwidth and by the four launches; the
 * one-pair variant keeps 3 blocks (24 warps, 96 KB of weight loads) in flight per SM.
 *   Determinism: a pair's dot is the same sequence of fp32 operations whatever pairs it is
 * grouped with and whatever T is (splits depend on the shapes and min(n_local, k) only), so
 * results are bit-identical between runs and between a token alone and in a batch.
 *
 * Expert parallelism (pk_moe_experts_slice): the same four launches over experts
 * [first, first + n_local) of the router's E, whose weights are the slice's own rows (expert e
 * at local index e - first). The route kernel counts and lists only the slice's experts (by
 * local index, so the GEMV launches are unchanged) while still checking every id against
 * [0, E); the reduce kernel skips the pairs routed elsewhere and, without accumulate, starts
 * from zero instead of out. The whole call is the slice (0, E, accumulate).
 *
 * Scratch: the context's device workspace (pk_cuda_scratch), laid out as offsets, active list,
 * order, act [T·k, F rounded up to 4] and pair_out [T·k, H] floats. It grows (cudaMalloc) only
 * when a call needs more than any earlier call of any op: a graph capture must be preceded by a
 * warm-up call of the largest shape, as for matmul. Steady state allocates nothing.
 *
 * Prefill and large batches run the same kernels (correct, not fast: each group of 4 tokens of
 * an expert re-reads its rows from L2). The fast version would be a grouped GEMM on the tensor
 * cores (tiles of 64-128 tokens of one expert, the activation fused into the gate_up epilogue,
 * the pair buffer in bf16 or the T·k rows in chunks to bound the scratch); the routing and the
 * slot-order reduction stay as they are.
 */
#include "kernels/cuda/cuda_internal.h"

#include <math.h>

static constexpr int MOE_NP = 4;    /* pairs one pass of a warp dots its weight rows with */
static constexpr int MOE_ROWS = 4;  /* weight rows per warp (2 outputs of gate_up, 4 of down) */
static constexpr int MOE_WARPS = 8; /* warps per block of the expert GEMV */
static constexpr int MOE_WARPS_PER_SM = 48; /* warps in all the split choice aims for, per SM */
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

/* One block. active[0 .. n_active) lists the experts with pairs, active[n_active .. n_local) is
 * -1. Experts are counted by local index e - first, only those of the slice
 * [first, first + n_local); every id is checked against [0, E). Shared: counts [n_local + 1]
 * then cursors [n_local]. */
__global__ void moe_route_kernel(const int32_t *__restrict__ ids, int64_t is, int64_t T, int k,
                                 int E, int first, int n_local, int32_t *offsets, int32_t *active,
                                 int32_t *order, long long *info)
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
        for (int s = n; s < n_local; s++)
            active[s] = -1;
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

/* ---- Expert GEMV: the gate_up and down launches ---------------------------------------- */

/* Operands of one expert GEMV launch (see the top of this file). For gate_up: rows of 2F per
 * expert, an output's up row F rows after its gate row, n_out = F, K = H, the input row of pair
 * p is x row p / k, the outputs go to act. For down: rows of H per expert, n_out = H, K = F,
 * input act row p, outputs to pair_out. */
struct moe_gemv_args {
    const void *w;
    int64_t ws;          /* weight row stride (elements) */
    int64_t expert_rows; /* rows of one expert's block of w */
    int64_t up_offset;   /* G = 2: rows from an output's gate row to its up row */
    int64_t n_out;       /* outputs per pair */
    int64_t K;
    const float *in;
    int64_t in_stride;
    int in_div; /* pair p reads input row p / in_div */
    float *out;
    int64_t out_stride; /* pair p writes output row p */
    const int32_t *offsets, *active, *order;
    int splits; /* warps sharing each row group, splitting K (1, 2, 4 or 8) */
};

/* Weight rows of the warp whose outputs are o0 .. o0 + R - 1 of expert e: row j = g·R + i is
 * output o0 + i's gate (g = 0) or up (g = 1) row. Outputs past n_out use output 0's rows (read
 * by nobody: such warps skip the dot). */
template <bool BF16, int G>
__device__ __forceinline__ void moe_warp_rows(const moe_gemv_args &a, int e, int64_t o0,
                                              const char *rows[MOE_ROWS])
{
    constexpr int R = MOE_ROWS / G;
    const size_t welem = BF16 ? 2 : 4;
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int i = 0; i < R; i++) {
            int64_t o = o0 + i < a.n_out ? o0 + i : 0;
            int64_t r = (int64_t)e * a.expert_rows + g * a.up_offset + o;
            rows[g * R + i] = (const char *)a.w + (size_t)(r * a.ws) * welem;
        }
}

/*
 * This warp's share of the dots of its MOE_ROWS weight rows with the inputs of the NP pairs
 * order[i0 .. i0 + NP): lane l of split s reads elements [(s·32 + l)·EL, +EL) of every
 * splits·32·EL-element step of each row with one 16-byte load (VEC), a loop iteration issuing
 * U steps × MOE_ROWS loads before it uses them; each input value is loaded once for all rows.
 * The K % EL tail (all of K without VEC) is read one element per lane. The warp's sums go to
 * partial[q][j].
 */
template <bool BF16, bool VEC, int NP>
__device__ __forceinline__ void moe_dot_group(const moe_gemv_args &a,
                                              const char *const rows[MOE_ROWS], bool live,
                                              bool once, int split, int lane, int i0,
                                              float partial[MOE_NP][MOE_ROWS])
{
    constexpr int EL = BF16 ? 8 : 4, U = NP == 1 ? 2 : 1; /* registers: NP · U · MOE_ROWS */
    const size_t welem = BF16 ? 2 : 4;
    const float *in[NP];
    float acc[NP][MOE_ROWS];
#pragma unroll
    for (int q = 0; q < NP; q++) {
        in[q] = a.in + (int64_t)(a.order[i0 + q] / a.in_div) * a.in_stride;
#pragma unroll
        for (int j = 0; j < MOE_ROWS; j++)
            acc[q][j] = 0.0f;
    }
    const int64_t step = (int64_t)a.splits * 32 * EL;
    int64_t tail = 0;
    if (VEC) {
        const int64_t kvec = a.K / EL * EL;
        for (int64_t k0 = ((int64_t)split * 32 + lane) * EL; live && k0 < kvec; k0 += U * step) {
            uint4 wq[U][MOE_ROWS];
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int j = 0; j < MOE_ROWS; j++)
                    if (k0 + u * step < kvec)
                        wq[u][j] = pk_load_weights16(rows[j] + (size_t)(k0 + u * step) * welem,
                                                    once);
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int64_t k = k0 + u * step;
                if (k >= kvec)
                    break;
#pragma unroll
                for (int q = 0; q < NP; q++) {
                    pk_vec16<BF16> x = pk_load_x16<BF16>(in[q] + k);
#pragma unroll
                    for (int j = 0; j < MOE_ROWS; j++) {
                        acc[q][j] += pk_dot16<BF16>(pk_unpack16<BF16>(wq[u][j]), x);
                    }
                }
            }
        }
        tail = kvec;
    }
    for (int64_t k = tail + (int64_t)split * 32 + lane; live && k < a.K;
         k += (int64_t)a.splits * 32) {
#pragma unroll
        for (int q = 0; q < NP; q++) {
            float xi = __ldg(in[q] + k);
#pragma unroll
            for (int j = 0; j < MOE_ROWS; j++)
                acc[q][j] = fmaf(pk_load(rows[j], BF16, k), xi, acc[q][j]);
        }
    }
#pragma unroll
    for (int q = 0; q < NP; q++)
#pragma unroll
        for (int j = 0; j < MOE_ROWS; j++) {
            float v = pk_warp_sum(acc[q][j]);
            if (lane == 0)
                partial[q][j] = v;
        }
}

/* moe_dot_group for the n (1 .. NPMAX) pairs of a group: no work for absent pairs. */
template <bool BF16, bool VEC, int NPMAX>
__device__ __forceinline__ void moe_dot_pairs(int n, const moe_gemv_args &a,
                                              const char *const rows[MOE_ROWS], bool live,
                                              bool once, int split, int lane, int i0,
                                              float partial[MOE_NP][MOE_ROWS])
{
    static_assert(MOE_NP == 4 && (NPMAX == 1 || NPMAX == MOE_NP), "one case per group size");
    if constexpr (NPMAX == 1) {
        (void)n;
        moe_dot_group<BF16, VEC, 1>(a, rows, live, once, split, lane, i0, partial);
    } else {
        switch (n) {
        case 1: moe_dot_group<BF16, VEC, 1>(a, rows, live, once, split, lane, i0, partial); break;
        case 2: moe_dot_group<BF16, VEC, 2>(a, rows, live, once, split, lane, i0, partial); break;
        case 3: moe_dot_group<BF16, VEC, 3>(a, rows, live, once, split, lane, i0, partial); break;
        default: moe_dot_group<BF16, VEC, 4>(a, rows, live, once, split, lane, i0, partial);
        }
    }
}

/* Lane i of a row group's split-0 warp: output o0 + i of the n pairs of the group, its split
 * sums added in split order; G = 2 applies SwiGLU to the gate and up sums. */
template <int G>
__device__ __forceinline__ void moe_finish_group(const moe_gemv_args &a,
                                                 const float (*partial)[MOE_NP][MOE_ROWS],
                                                 int warp, int i, int i0, int n, int64_t o0)
{
    constexpr int R = MOE_ROWS / G;
    for (int q = 0; q < n; q++) {
        float sum[G];
#pragma unroll
        for (int g = 0; g < G; g++) {
            sum[g] = 0.0f;
            for (int s = 0; s < a.splits; s++)
                sum[g] += partial[warp + s][q][g * R + i];
        }
        float v = G == 2 ? sum[0] / (1.0f + expf(-sum[0])) * sum[G - 1] : sum[0];
        a.out[(int64_t)a.order[i0 + q] * a.out_stride + o0 + i] = v;
    }
}

/*
 * Grid (expert slots) × (blocks of outputs), MOE_WARPS warps. Block x-slot s works for the s-th
 * active expert (slots past n_active, active[s] = -1, exit at once: the weight loads wait on two
 * dependent reads only, active[s] then offsets[e]); within a block, warp w is split w % splits
 * of row group w / splits, which owns R = MOE_ROWS / G consecutive outputs. The expert's pairs
 * are taken NPMAX at a time; every pass streams the warp's weight rows once (from HBM on the
 * first pass, from L1/L2 on later ones). All threads of a block take the same branches around
 * the __syncthreads (slot, pair groups and output blocks depend on the block only).
 */
template <bool BF16, bool VEC, int G, int NPMAX>
__global__ void __launch_bounds__(MOE_WARPS * 32, NPMAX == 1 ? 3 : 2)
    moe_gemv_kernel(moe_gemv_args a)
{
    constexpr int R = MOE_ROWS / G;
    __shared__ float partial[MOE_WARPS][MOE_NP][MOE_ROWS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, split = warp % a.splits;
    const int64_t per_block = (int64_t)(MOE_WARPS / a.splits) * R;
    const int e = a.active[blockIdx.x]; /* gridDim.x <= n_local entries of active */
    if (e < 0)
        return; /* the whole block */
    const int begin = a.offsets[e], end = a.offsets[e + 1];
    const bool once = end - begin <= NPMAX;
    for (int64_t b = blockIdx.y; b * per_block < a.n_out; b += gridDim.y) {
        const int64_t o0 = b * per_block + (int64_t)(warp / a.splits) * R;
        const bool live = o0 < a.n_out;
        const char *rows[MOE_ROWS];
        moe_warp_rows<BF16, G>(a, e, o0, rows);
        for (int i0 = begin; i0 < end; i0 += NPMAX) {
            const int n = end - i0 < NPMAX ? end - i0 : NPMAX;
            moe_dot_pairs<BF16, VEC, NPMAX>(n, a, rows, live, once, split, lane, i0,
                                            partial[warp]);
            __syncthreads();
            if (split == 0 && lane < R && o0 + lane < a.n_out)
                moe_finish_group<G>(a, partial, warp, lane, i0, n, o0);
            __syncthreads(); /* partial is rewritten by the next group */
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

static bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

/* Warps per row group, as the GEMV kernel chooses them: enough warps in all for
 * MOE_WARPS_PER_SM per SM, as long as every split keeps at least two 16-byte steps of each row.
 * Counted for min(n_local, k) experts (a decode step's) whatever T is: a function of the shapes
 * only, so a token's sums are added in the same order in any batch. */
static int moe_splits(int64_t experts, int64_t n_out, int64_t K, int outputs_per_warp,
                      bool bf16, int sm_count)
{
    int64_t per_step = 32 * (bf16 ? 8 : 4);
    int64_t groups = experts * ((n_out + outputs_per_warp - 1) / outputs_per_warp);
    int s = 1;
    while (s < MOE_WARPS && groups * s < (int64_t)sm_count * MOE_WARPS_PER_SM &&
           K >= 2 * s * per_step)
        s *= 2;
    return s;
}

template <int G, int NPMAX>
static void launch_moe_gemv_variant(const moe_gemv_args &a, bool bf16, bool vec, dim3 grid,
                                    cudaStream_t stream)
{
    dim3 block(MOE_WARPS * 32);
    if (bf16 && vec)
        moe_gemv_kernel<true, true, G, NPMAX><<<grid, block, 0, stream>>>(a);
    else if (bf16)
        moe_gemv_kernel<true, false, G, NPMAX><<<grid, block, 0, stream>>>(a);
    else if (vec)
        moe_gemv_kernel<false, true, G, NPMAX><<<grid, block, 0, stream>>>(a);
    else
        moe_gemv_kernel<false, false, G, NPMAX><<<grid, block, 0, stream>>>(a);
}

/* One expert GEMV launch (G = 2: gate_up with SwiGLU, G = 1: down) over `slots` expert slots;
 * vec: weight rows and input rows are 16-byte aligned; one_pair: the pairs of an expert are
 * taken one at a time (launch errors: pk_cuda_check_launch). */
template <int G>
static void launch_moe_gemv(moe_gemv_args a, bool bf16, bool vec, bool one_pair,
                            unsigned slots, int64_t experts, const pk_cuda_state *st)
{
    constexpr int R = MOE_ROWS / G;
    a.splits = moe_splits(experts, a.n_out, a.K, R, bf16, st->sm_count);
    dim3 grid(slots, pk_blocks_for(a.n_out, (MOE_WARPS / a.splits) * R, GRID_CAP));
    if (one_pair)
        launch_moe_gemv_variant<G, 1>(a, bf16, vec, grid, st->stream);
    else
        launch_moe_gemv_variant<G, MOE_NP>(a, bf16, vec, grid, st->stream);
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
    size_t off_order = off_active + align_up((size_t)n_local * 4);
    size_t off_act = off_order + align_up((size_t)n_pairs * 4);
    int64_t act_stride = (F + 3) / 4 * 4; /* 16-byte rows for the down GEMV's input loads */
    size_t off_pair = off_act + align_up((size_t)n_pairs * (size_t)act_stride * 4);
    size_t total = off_pair + align_up((size_t)n_pairs * (size_t)H * 4);
    void *scratch = NULL;
    if ((status = pk_cuda_scratch(ctx, total, op, &scratch, err)) != PIO_OK)
        return status;
    char *base = (char *)scratch;
    int32_t *offsets = (int32_t *)(base + off_offsets);
    int32_t *active = (int32_t *)(base + off_active);
    int32_t *order = (int32_t *)(base + off_order);
    float *act = (float *)(base + off_act);
    float *pair_out = (float *)(base + off_pair);

    size_t route_smem = (size_t)(2 * n_local + 1) * sizeof(int32_t);
    moe_route_kernel<<<1, 1024, route_smem, st->stream>>>(
        (const int32_t *)ids->data, ids->stride, T, (int)k, (int)E, (int)first, (int)n_local,
        offsets, active, order, st->err_info_dev);

    unsigned slots = (unsigned)(n_local < n_pairs ? n_local : n_pairs);
    int64_t experts = n_local < k ? n_local : k; /* a decode step's, for the split choice */
    bool gu_bf16 = pk_is_bf16(gate_up), down_bf16 = pk_is_bf16(down);
    /* About one pair per active expert (decode: T·k <= n_local, e.g. T <= 16 at E = 128, k = 8):
     * the kernel built for one pair at a time, with registers for more weight loads in flight.
     * The choice changes no result: a pair's sums do not depend on the pairs beside it. */
    bool one_pair = n_pairs <= n_local;

    moe_gemv_args gu = {};
    gu.w = gate_up->data;
    gu.ws = gate_up->stride;
    gu.expert_rows = 2 * F;
    gu.up_offset = F;
    gu.n_out = F;
    gu.K = H;
    gu.in = (const float *)x->data;
    gu.in_stride = x->stride;
    gu.in_div = (int)k;
    gu.out = act;
    gu.out_stride = act_stride;
    gu.offsets = offsets;
    gu.active = active;
    gu.order = order;
    bool gu_vec = aligned16(gate_up->data) && gate_up->stride % (gu_bf16 ? 8 : 4) == 0 &&
                  aligned16(x->data) && x->stride % 4 == 0;
    launch_moe_gemv<2>(gu, gu_bf16, gu_vec, one_pair, slots, experts, st);

    moe_gemv_args dn = gu;
    dn.w = down->data;
    dn.ws = down->stride;
    dn.expert_rows = H;
    dn.up_offset = 0;
    dn.n_out = H;
    dn.K = F;
    dn.in = act;
    dn.in_stride = act_stride;
    dn.in_div = 1;
    dn.out = pair_out;
    dn.out_stride = H;
    bool down_vec = aligned16(down->data) && down->stride % (down_bf16 ? 8 : 4) == 0;
    launch_moe_gemv<1>(dn, down_bf16, down_vec, one_pair, slots, experts, st);

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
