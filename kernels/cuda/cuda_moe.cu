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
 * slot order by one lane, divided only when positive. moe_route_token is the same with a
 * token's logits in registers (E <= 256, k <= 32): each (p, expert) becomes one 64-bit key
 * whose unsigned order is that total order (moe_order_key), so a round is two warp max
 * reductions (__reduce_max_sync on the key's halves) with no shuffles or branches. It serves
 * moe_topk_regs_kernel and the decode path's in-kernel routing (below): same bits everywhere.
 *
 * Experts: three paths, chosen per call from host-known values only (T·k, the weights' type and
 * alignment), so any can be captured in a graph: the grouped GEMM path for prefill and batches
 * (T >= MOE_GEMM_MIN_T_DEFAULT, BF16 aligned weights), else the decode path while T·k <= 256
 * (fp32 throughout), else the general GEMV path (fp32). PIO_CUDA_MOE_GEMM_MIN_T=N and
 * PIO_CUDA_MOE_DECODE=0|one|grouped, read at every call, move the switches (tests, benchmarks).
 *
 * Decode path (moe_decode_gate_up_kernel, moe_decode_down_kernel): two programmatic launches,
 * no route or reduce kernel. Every block reads the T·k ids itself (one pair a thread) and builds
 * its plan in shared memory: the distinct experts of the slice in order of their first pair
 * (leaders by atomicMin on a per-expert word, numbered with warp ballots) and each one's pairs.
 *   1. gate_up + SwiGLU: warp items (selected expert, 2 outputs = 4 weight rows), item i on
 *      global warp i mod (warps of the grid); the grid is at most the resident blocks, so every
 *      selected expert's rows stream at once. Writes act [T·k, F]. Block 0 reports bad ids.
 *   2. down + weighted sum: block b owns outputs [8b, 8b + 8) of every selected expert (items of
 *      4 rows), keeps each pair's 8 sums in shared memory, then out[t, r] (+)= Σ_j weights[t, j]
 *      · sum[t·k + j][r] in slot order. Its plan happens before the programmatic wait, while
 *      gate_up finishes (see the kernel for why reading the ids there is safe).
 * The dots are moe_dot_group's (below) with K unsplit: 16-byte no-L1 loads, 2 steps x 4 rows in
 * flight a warp. The one-pair variant (T = 1) runs 3 blocks an SM; the grouped one takes up to
 * 4 pairs of an expert a pass (rows from HBM once). A pair's sums are the same fp32 sequence in
 * either variant and any batch: bit-identical between runs, variants and batch sizes of the
 * path. The topk kernel waits and triggers programmatically too, so gate_up is resident when
 * the routing ends. Workspace: act only.
 *   Route mode (pk_moe_topk_experts, T <= 8): no topk launch at all. Every gate_up block routes
 * the batch itself from the router logits (warp w takes token w, moe_route_token) into shared
 * memory and plans from that; block 0 also publishes the ids and weights to global memory. The
 * down kernel's one-pair variant routes again from the logits before its programmatic wait
 * (reading the published ids there would race with gate_up's writes; the logits are settled),
 * so its plan overlaps gate_up as in the ids-given mode; the grouped
 * variant plans after the wait from the published ids. A single token's plan needs no atomics:
 * its k routes are distinct experts (moe_decode_plan_distinct). Where a warp's down rows fit its
 * registers (one routed token, BF16, F <= 768, k <= 8: Qwen3-Coder) the down launch is
 * moe_decode_down_preload_kernel, which also issues every weight load before the wait (the same
 * bits; PIO_CUDA_MOE_DECODE=one keeps the one-pair kernel's loads after the wait).
 *
 * GEMV path (T·k > 256 with F32 or unaligned weights, or PIO_CUDA_MOE_DECODE=0): four launches
 * on the context's stream.
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
 * Expert parallelism (pk_moe_experts_slice): the same launches (either path) over experts
 * [first, first + n_local) of the router's E, whose weights are the slice's own rows (expert e
 * at local index e - first). The route (plan, place) kernels count and list only the slice's
 * experts (by local index, so the expert launches are unchanged) while still checking every
 * id against [0, E); the reduce kernel skips the pairs routed elsewhere and, without
 * accumulate, starts from zero instead of out. The whole call is the slice (0, E, accumulate).
 *
 * Grouped GEMM path (T >= the threshold, BF16 weights with 16-byte aligned rows; anything else
 * takes the GEMV path): five launches.
 *   1. moe_plan_kernel, one block: counts each expert's pairs (ids checked and reported as
 *      above), offsets[n_local + 1], and the tile list: one entry (expert, first row) per 64
 *      sorted pairs of an expert, -1 up to max_tiles = T·k / 64 + min(n_local, T·k), the bound
 *      the host sizes the GEMM grids with.
 *   2. moe_place_kernel: x rounded to bf16 once (xb, rows padded to 16 bytes), and block e lists
 *      expert e's pairs in order[] sorted by pair index (token, then slot): a warp ballot per
 *      chunk of pairs, no atomics, so the order is the same every run.
 *   3. moe_gemm_kernel<gate_up>: tiles of 64 sorted pairs of one expert × 64 outputs (their 64
 *      gate and 64 up rows), mma.sync m16n8k16 bf16 with fp32 accumulation from cp.async
 *      pipelined shared memory; the epilogue applies SwiGLU and writes h [T·k, F] in bf16, row
 *      = sorted position.
 *   4. moe_gemm_kernel<down>: tiles of 64 sorted rows of h × 128 outputs, writing pair_out
 *      [pair, H] in f32 (the pair's row, so no two tiles write the same element).
 *   5. moe_reduce_kernel, as above.
 * Each expert's weights are read once per row tile of 64 of its pairs (once per call up to 64
 * pairs an expert, T <= ~1000 at E = 128, k = 8; later tiles of the same expert run beside the
 * first and mostly hit L2). x and h are rounded to bf16 (the cuBLASLt matmul path does the same
 * to x): about 1e-3 relative error against the fp32 CPU op. Results are deterministic and a
 * token's do not depend on the batch (a tile row's products do not depend on the other rows).
 *   Bytes at T = 512 (Qwen3-Coder-30B-A3B): all 128 experts, 1.2 GB of weights, in about
 * 550 us on an H100 (2.2 TB/s); the workspace is T·k·(4 + 2·F + 4·H) + 2·T·H bytes (170 MB at
 * T = 2048).
 *
 * Scratch: the context's device workspace (pk_cuda_scratch). GEMV path: offsets, active list,
 * order, act [T·k, F rounded up to 4] and pair_out [T·k, H] floats; GEMM path: offsets, tile
 * list, order, xb, h and pair_out. It grows (cudaMalloc) only when a call needs more than any
 * earlier call of any op: a graph capture must be preceded by a warm-up call of the largest
 * shape, as for matmul. Steady state allocates nothing.
 *
 * Left: the pair buffer could be bf16 or the T·k rows processed in chunks to bound the
 * workspace; 128-row tiles (or wgmma) for T >= 2048, where the products dominate (124 TFLOP/s);
 * the decode path at T = 1 is latency-bound (docs/KERNELS.md, "Tenth session": gate_up's routing
 * after its wait, the down kernel's start; bulk copies into shared memory were slower), and one
 * persistent kernel over gate_up and down is untried.
 */
#include "kernels/cuda/cuda_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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

/* Takes (p, e) as this lane's best of a selection round if it comes after the previous round's
 * choice (prev, prev_i; none when prev_i < 0) and before the best so far. */
__device__ __forceinline__ void moe_consider(float p, int e, float prev, int prev_i, float &best,
                                             int &best_i)
{
    if ((prev_i < 0 || moe_before(prev, prev_i, p, e)) && moe_before(p, e, best, best_i)) {
        best = p;
        best_i = e;
    }
}

/* The round's winner over the warp's lanes (every lane ends with it). */
__device__ __forceinline__ void moe_warp_best(float &best, int &best_i)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
        if (moe_before(ob, oi, best, best_i)) {
            best = ob;
            best_i = oi;
        }
    }
}

__global__ void moe_topk_kernel(int32_t *ids, int64_t is, float *weights, int64_t ws,
                                const float *__restrict__ logits, int64_t ls, int64_t T,
                                int E, int k, bool normalize)
{
    pk_pdl_wait(); /* logits */
    pk_pdl_launch_dependents(); /* the decode experts kernel may take its place (it waits) */
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
            for (int e = lane; e < E; e += 32)
                moe_consider(uniform ? inv : expf(x[e] - m) * inv, e, prev, prev_i, best, best_i);
            moe_warp_best(best, best_i);
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

/* The same selection with a token's logits held in registers (V a lane: E <= 32·V, k <= 32):
 * the probabilities are computed once, the k rounds compare registers, lane j keeps slot j's
 * id and weight and the renormalisation adds them in slot order through shuffles. The same
 * float operations as moe_topk_kernel, so the same bits; what changes is the latency of the
 * decode step's routing (no global round trips between rounds: Qwen3-Coder's tg64 265.7 ->
 * 275.1 tok/s on an H100). */
/* moe_before's order as one 64-bit key, the larger first: above, p's bits plus one (p >= 0 here,
 * a softmax output, so its bits order like its value; +inf included) or 0 for NaN (after every
 * number); below, the inverted index (the lower index first among equal p). Every key of a
 * valid expert is above 0. */
__device__ __forceinline__ uint64_t moe_order_key(float p, int e)
{
    const uint32_t hi = isnan(p) ? 0u : __float_as_uint(p) + 1u;
    return (uint64_t)hi << 32 | (uint32_t)~(uint32_t)e;
}

/* Logits a lane holds in the register variant of the routing (E <= 32 · MOE_TOPK_REGS). */
static constexpr int MOE_TOPK_REGS = 8;

/*
 * One token's routing by one warp with its E logits (at x, read through L2) in registers
 * (E <= 32·V, k <= 32): the softmax, order and renormalisation of moe_topk_kernel, the same
 * float operations. The k rounds compare one 64-bit key per expert (moe_order_key) and take
 * the warp's largest with two redux.sync reductions: no shuffles or branches in the selection,
 * which was most of the routing's latency. Lane j < k ends with slot j's expert (*id) and
 * weight (*w, the probability the key holds).
 */
template <int V>
__device__ __forceinline__ void moe_route_token(const float *x, int E, int k, bool normalize,
                                                int32_t *id, float *w)
{
    const int lane = threadIdx.x & 31;
    float p[V];
    float m = -INFINITY;
#pragma unroll
    for (int v = 0; v < V; v++) {
        int e = lane + 32 * v;
        p[v] = e < E ? __ldcg(x + e) : -INFINITY;
        m = p[v] > m ? p[v] : m;
    }
    m = pk_warp_max(m);
    bool uniform = m == -INFINITY; /* no mass anywhere: uniform by convention */
    float inv = 1.0f / (float)E;
    if (!uniform) {
        double s = 0.0;
#pragma unroll
        for (int v = 0; v < V; v++)
            if (lane + 32 * v < E)
                s += (double)expf(p[v] - m);
        s = moe_warp_sum_double(s);
        inv = (float)(1.0 / s);
    }
#pragma unroll
    for (int v = 0; v < V; v++)
        p[v] = uniform ? inv : expf(p[v] - m) * inv;
    uint64_t key[V]; /* the lane's keys, largest first (distinct: each holds its expert) */
#pragma unroll
    for (int v = 0; v < V; v++)
        key[v] = lane + 32 * v < E ? moe_order_key(p[v], lane + 32 * v) : 0u;
#pragma unroll
    for (int i = 0; i < V - 1; i++)
#pragma unroll
        for (int v = V - 1; v > i; v--)
            if (key[v] > key[v - 1]) {
                const uint64_t t = key[v];
                key[v] = key[v - 1];
                key[v - 1] = t;
            }
    uint64_t mine = 0;
    float sum = 0.0f; /* as the CPU: the weights' float sum in slot order */
    for (int j = 0; j < k; j++) { /* round j: the largest key left, which the winner drops */
        const uint64_t cand = key[0];
        const uint32_t hi = __reduce_max_sync(0xffffffffu, (uint32_t)(cand >> 32));
        const uint32_t lo =
            __reduce_max_sync(0xffffffffu, (uint32_t)(cand >> 32) == hi ? (uint32_t)cand : 0u);
        const uint64_t best = (uint64_t)hi << 32 | lo;
        const bool won = cand == best;
#pragma unroll
        for (int v = 0; v < V - 1; v++)
            key[v] = won ? key[v + 1] : key[v];
        key[V - 1] = won ? 0u : key[V - 1];
        if (lane == j)
            mine = best;
        sum += hi != 0u ? __uint_as_float(hi - 1u) : __int_as_float(0x7fffffff);
    }
    const uint32_t mine_hi = (uint32_t)(mine >> 32);
    float my_w = mine_hi != 0u ? __uint_as_float(mine_hi - 1u) : __int_as_float(0x7fffffff);
    if (normalize && sum > 0.0f) /* divided only when positive, as the CPU */
        my_w /= sum;
    *id = (int32_t)~(uint32_t)mine;
    *w = my_w;
}

template <int V>
__global__ void moe_topk_regs_kernel(int32_t *ids, int64_t is, float *weights, int64_t ws,
                                     const float *__restrict__ logits, int64_t ls, int64_t T,
                                     int E, int k, bool normalize)
{
    pk_pdl_wait(); /* logits */
    pk_pdl_launch_dependents(); /* the decode experts kernel may take its place (it waits) */
    int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    int64_t first = (int64_t)blockIdx.x * warps + (threadIdx.x >> 5);
    for (int64_t t = first; t < T; t += (int64_t)gridDim.x * warps) {
        int32_t id;
        float w;
        moe_route_token<V>(logits + t * ls, E, k, normalize, &id, &w);
        if (lane < k) {
            ids[t * is + lane] = id;
            weights[t * ws + lane] = w;
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
    int E = (int)logits->cols, k = (int)ids->cols;
    void (*kernel)(int32_t *, int64_t, float *, int64_t, const float *, int64_t, int64_t, int,
                   int, bool) = k > 32 || E > 32 * MOE_TOPK_REGS ? moe_topk_kernel
                                : E <= 32 * 4                    ? moe_topk_regs_kernel<4>
                                                                 : moe_topk_regs_kernel<MOE_TOPK_REGS>;
    cudaError_t e = pk_cuda_launch_pdl(
        st, kernel, dim3(grid), dim3(warps * 32), 0, (int32_t *)ids->data, ids->stride,
        (float *)weights->data, weights->stride, (const float *)logits->data, logits->stride,
        logits->rows, E, k, normalize != 0);
    if (e != cudaSuccess)
        return pk_cuda_fail(ctx, op, "cudaLaunchKernelEx (moe topk)", e, err);
    return pk_cuda_check_launch(ctx, op, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Experts                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* count[e + 1] = the (token, slot) pairs of local expert e (experts first .. first+n_local-1),
 * count[0] = 0; ids outside [0, E) are reported and skipped. Called by the whole block; ends
 * with a barrier. */
__device__ void moe_count_pairs(int32_t *count, const int32_t *ids, int64_t is, int64_t n_pairs,
                                int k, int E, int first, int n_local, long long *info)
{
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
}

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
    moe_count_pairs(count, ids, is, n_pairs, k, E, first, n_local, info);
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
                                  int k, int first, int n_local, bool accumulate, int64_t H,
                                  int64_t pair_stride)
{
    for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
        float *o = out + t * os;
        for (int64_t c = threadIdx.x; c < H; c += blockDim.x) {
            float acc = accumulate ? o[c] : 0.0f;
            for (int j = 0; j < k; j++) {
                int32_t e = ids[t * is + j];
                if (e >= first && e - first < n_local)
                    acc = fmaf(weights[t * ws + j], pair_out[(t * k + j) * pair_stride + c], acc);
            }
            o[c] = acc;
        }
    }
}

/* ---- Grouped GEMM on the tensor cores: prefill and large batches ----------------------- */

static constexpr int GG_BM = 64;      /* rows (pairs of one expert, in sorted order) per tile */
static constexpr int GG_BN = 128;     /* weight rows per tile: down 128 outputs, gate_up 64 + 64 */
static constexpr int GG_THREADS = 128; /* 4 warps, 2 (rows) × 2 (columns), 32 × 64 each */
static constexpr int GG_PLACE_THREADS = 512;
/* Tokens from which the grouped GEMM beats the GEMV kernels (H100, Qwen3-Coder-30B-A3B: equal
 * at T = 16, the GEMM 16 % faster at T = 24, 27 % at T = 32, 2.1x at T = 64; docs/KERNELS.md). */
static constexpr int64_t MOE_GEMM_MIN_T_DEFAULT = 24;

/* 16 bytes global -> shared, asynchronously; HINT: ask L2 to fetch the 256-byte group around
 * it (the next stages' part of the same weight row). */
template <bool HINT> __device__ __forceinline__ void gg_cp_async16(void *smem, const void *src)
{
    uint32_t addr = (uint32_t)__cvta_generic_to_shared(smem);
    if (HINT)
        asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;" ::"r"(addr), "l"(src)
                     : "memory");
    else
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(addr), "l"(src)
                     : "memory");
}

/* The 8 bf16 at dst from src: `n` of them (0 .. 8) read, the rest zero. Full chunks go through
 * cp.async; a partial one (a K tail) or none is read and stored here, so nothing past the end
 * of a row is ever read. */
template <bool HINT>
__device__ __forceinline__ void gg_copy_chunk(uint16_t *dst, const uint16_t *src, int n)
{
    if (n >= 8) {
        gg_cp_async16<HINT>(dst, src);
        return;
    }
    uint16_t v[8];
#pragma unroll
    for (int q = 0; q < 8; q++)
        v[q] = q < n ? __ldg((const unsigned short *)src + q) : (uint16_t)0;
    *(uint4 *)dst = make_uint4((uint32_t)v[0] | (uint32_t)v[1] << 16,
                               (uint32_t)v[2] | (uint32_t)v[3] << 16,
                               (uint32_t)v[4] | (uint32_t)v[5] << 16,
                               (uint32_t)v[6] | (uint32_t)v[7] << 16);
}

__device__ __forceinline__ void gg_cp_async_commit()
{
    asm volatile("cp.async.commit_group;" ::: "memory");
}

template <int N> __device__ __forceinline__ void gg_cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ void gg_ldmatrix_x4(uint32_t (&r)[4], const uint16_t *smem)
{
    uint32_t addr = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

/* d += a·b: m16n8k16, bf16 inputs, fp32 accumulators. */
__device__ __forceinline__ void gg_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                       uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/*
 * One block: counts the pairs of each local expert (ids checked against [0, E), bad ones
 * reported and dropped, as moe_route_kernel), offsets[n_local + 1] = their exclusive scan, and
 * the tile list: tile i is rows [tile_row0[i], + GG_BM) of expert tile_expert[i]'s sorted pairs,
 * entries past the last tile -1 (max_tiles = T·k / GG_BM + min(n_local, T·k) bounds the
 * count, so the GEMM grids are sized on the host without knowing the routing).
 * Shared: count[n_local + 1].
 */
__global__ void moe_plan_kernel(const int32_t *__restrict__ ids, int64_t is, int64_t T, int k,
                                int E, int first, int n_local, int32_t *offsets,
                                int32_t *tile_expert, int32_t *tile_row0, int max_tiles,
                                long long *info)
{
    extern __shared__ int32_t moe_shared[];
    int32_t *count = moe_shared;
    __shared__ int n_tiles;
    int64_t n_pairs = T * k;
    moe_count_pairs(count, ids, is, n_pairs, k, E, first, n_local, info);
    if (threadIdx.x == 0) {
        int n = 0;
        for (int e = 0; e < n_local; e++) {
            for (int r = 0; r < count[e + 1]; r += GG_BM) {
                tile_expert[n] = e;
                tile_row0[n] = count[e] + r;
                n++;
            }
            count[e + 1] += count[e];
        }
        n_tiles = n;
    }
    __syncthreads();
    for (int e = threadIdx.x; e <= n_local; e += blockDim.x)
        offsets[e] = count[e];
    for (int i = n_tiles + threadIdx.x; i < max_tiles; i += blockDim.x)
        tile_expert[i] = -1;
}

/*
 * Grid-stride over x's rows: xb[t] = x[t] rounded to bf16 (round to nearest even), zeros up to
 * the padded width hp. Then block e < n_local lists local expert e's pairs at
 * order[offsets[e] ..] in increasing pair index p = t·k + j (token, then slot): chunks of
 * blockDim pairs, each thread's rank from a warp ballot and the counts of the warps before it.
 * Deterministic, no atomics; the block stops after its expert's last pair.
 */
__global__ void __launch_bounds__(GG_PLACE_THREADS)
    moe_place_kernel(const int32_t *__restrict__ ids, int64_t is, int64_t T, int k, int first,
                     int n_local, const int32_t *__restrict__ offsets, int32_t *order,
                     const float *__restrict__ x, int64_t xs, int64_t H, uint16_t *xb,
                     int64_t hp)
{
    __shared__ int warp_count[GG_PLACE_THREADS / 32];
    for (int64_t t = blockIdx.x; t < T; t += gridDim.x)
        for (int64_t c = 2 * threadIdx.x; c < hp; c += 2 * blockDim.x) {
            float lo = c < H ? x[t * xs + c] : 0.0f, hi = c + 1 < H ? x[t * xs + c + 1] : 0.0f;
            *(uint32_t *)(xb + t * hp + c) =
                (uint32_t)pk_f32_to_bf16(lo) | (uint32_t)pk_f32_to_bf16(hi) << 16;
        }
    const int e = blockIdx.x;
    if (e >= n_local)
        return;
    const int begin = offsets[e], n = offsets[e + 1] - begin;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t n_pairs = T * k;
    int placed = 0;
    for (int64_t p0 = 0; p0 < n_pairs && placed < n; p0 += blockDim.x) {
        const int64_t p = p0 + threadIdx.x;
        bool mine = false;
        if (p < n_pairs) {
            int32_t id = ids[(p / k) * is + p % k];
            mine = id >= first && id - first == e;
        }
        const unsigned ballot = __ballot_sync(0xffffffffu, mine);
        if (lane == 0)
            warp_count[warp] = __popc(ballot);
        __syncthreads();
        int before = 0, total = 0;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) {
            before += w < warp ? warp_count[w] : 0;
            total += warp_count[w];
        }
        if (mine)
            order[begin + placed + before + __popc(ballot & ((1u << lane) - 1u))] = (int32_t)p;
        placed += total;
        __syncthreads(); /* warp_count is rewritten by the next chunk */
    }
}

/* Operands of one grouped GEMM launch: C[i, c] = Σ_K A[row i] · w[expert row c], i over the
 * expert's sorted pairs. gate_up: A row i is xb[token of order[i]], w rows e·2F + c (gate) and
 * e·2F + F + c (up), n_out = F, K = H; the output h[i, c] = silu(gate)·up in bf16. down: A row
 * i is h[i], w rows e·H + c, n_out = H, K = F; the output pair_out[order[i], c] in f32. */
struct moe_gemm_args {
    const uint16_t *a;
    int64_t a_stride;
    const uint16_t *w;
    int64_t w_stride;
    int64_t expert_rows;
    int64_t n_out;
    int64_t K;
    const int32_t *offsets, *tile_expert, *tile_row0, *order;
    int k; /* slots per token: pair p is token p / k */
    uint16_t *h;
    int64_t h_stride;
    float *pair_out;
    int64_t po_stride;
};

/* Output column of weight row r (0 .. GG_BN) of the tile whose first output is col0: down's
 * row r is output col0 + r; gate_up's rows are laid out so that warp column wn = r / 64 holds
 * the gate rows of outputs col0 + 32·wn .. + 31 (its fragments 0-3) and their up rows (4-7). */
template <bool GATE_UP> __device__ __forceinline__ int64_t gg_out_col(int r, int64_t col0)
{
    return GATE_UP ? col0 + (r >> 6) * 32 + (r & 31) : col0 + r;
}

template <int BK, int STAGES> struct gg_config {
    static constexpr int RS = BK + 8; /* shared row (bf16): ldmatrix rows on distinct banks */
    static constexpr size_t smem = (size_t)STAGES * (GG_BM + GG_BN) * RS * 2;
};

/*
 * Grid (tile slots) × (column blocks), GG_THREADS threads. Tile slot s is entry s of the tile
 * list (-1: the block exits at once). Rows of A past the expert's pairs, weight rows past n_out
 * and K past the end are zero-filled in shared memory (nothing stored for them). Warp (wm, wn)
 * owns rows 32·wm .. + 31 and weight rows 64·wn .. + 63 of the tile; m16 fragments with no
 * pair are skipped (warp-uniform), so a small expert costs about its rows, not GG_BM. K goes
 * in steps of BK through STAGES shared-memory stages filled by cp.async (weight rows with the
 * L2 256-byte prefetch hint), STAGES - 1 steps ahead of the mma.sync m16n8k16 products.
 * Each output element is one fp32 mma accumulation in K order: the same whatever the other rows
 * of its tile are, so a token's result does not depend on the batch around it.
 */
template <bool GATE_UP, int BK, int STAGES>
__global__ void __launch_bounds__(GG_THREADS) moe_gemm_kernel(moe_gemm_args a)
{
    constexpr int RS = gg_config<BK, STAGES>::RS;
    extern __shared__ __align__(16) uint16_t gg_smem[];
    uint16_t *a_s = gg_smem;                        /* [STAGES][GG_BM][RS] */
    uint16_t *b_s = gg_smem + STAGES * GG_BM * RS; /* [STAGES][GG_BN][RS] */
    const int e = a.tile_expert[blockIdx.x];
    if (e < 0)
        return;
    const int row0 = a.tile_row0[blockIdx.x];
    const int rows = min(GG_BM, a.offsets[e + 1] - row0);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp & 1, wn = warp >> 1;
    const int64_t col0 = (int64_t)blockIdx.y * (GATE_UP ? GG_BN / 2 : GG_BN);

    /* This thread's 16-byte chunks: chunk tid % CPR of rows tid / CPR + i·(GG_THREADS / CPR). */
    constexpr int CPR = BK / 8, ROW_STEP = GG_THREADS / CPR;
    constexpr int A_PER = GG_BM / ROW_STEP, B_PER = GG_BN / ROW_STEP;
    const int chunk = (tid % CPR) * 8, row_first = tid / CPR;
    const uint16_t *a_src[A_PER];
    const uint16_t *b_src[B_PER];
#pragma unroll
    for (int i = 0; i < A_PER; i++) {
        const int r = row_first + ROW_STEP * i;
        a_src[i] = NULL; /* no pair: zeros */
        if (r < rows) {
            const int64_t src = GATE_UP ? a.order[row0 + r] / a.k : row0 + r;
            a_src[i] = a.a + src * a.a_stride + chunk;
        }
    }
#pragma unroll
    for (int i = 0; i < B_PER; i++) {
        const int r = row_first + ROW_STEP * i;
        const int64_t c = gg_out_col<GATE_UP>(r, col0);
        const int64_t wr = (int64_t)e * a.expert_rows + (GATE_UP && (r & 32) ? a.n_out : 0) + c;
        b_src[i] = c < a.n_out ? a.w + wr * a.w_stride + chunk : NULL; /* NULL: zeros */
    }
    const int n_k = (int)((a.K + BK - 1) / BK);
    auto load_stage = [&](int kt, int stage) {
        const int64_t k0 = (int64_t)kt * BK;
        const int64_t left = a.K - k0 - chunk; /* elements of this chunk inside K */
        const int n = left >= 8 ? 8 : left > 0 ? (int)left : 0;
#pragma unroll
        for (int i = 0; i < A_PER; i++)
            gg_copy_chunk<false>(a_s + (stage * GG_BM + row_first + ROW_STEP * i) * RS + chunk,
                                 a_src[i] != NULL ? a_src[i] + k0 : a.a, a_src[i] != NULL ? n : 0);
#pragma unroll
        for (int i = 0; i < B_PER; i++)
            gg_copy_chunk<true>(b_s + (stage * GG_BN + row_first + ROW_STEP * i) * RS + chunk,
                                b_src[i] != NULL ? b_src[i] + k0 : a.w, b_src[i] != NULL ? n : 0);
    };

    float acc[2][8][4];
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 8; ni++)
            acc[mi][ni][0] = acc[mi][ni][1] = acc[mi][ni][2] = acc[mi][ni][3] = 0.0f;
    const int warp_rows = rows - 32 * wm; /* rows of this warp's half with a pair */

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < n_k)
            load_stage(s, s);
        gg_cp_async_commit();
    }
    for (int kt = 0; kt < n_k; kt++) {
        gg_cp_async_wait<STAGES - 2>();
        __syncthreads(); /* stage kt is in; everyone is done with stage kt - 1 */
        if (kt + STAGES - 1 < n_k)
            load_stage(kt + STAGES - 1, (kt + STAGES - 1) % STAGES);
        gg_cp_async_commit(); /* possibly empty: keeps the group count per iteration */
        if (warp_rows <= 0)
            continue;
        const uint16_t *as = a_s + (kt % STAGES) * GG_BM * RS;
        const uint16_t *bs = b_s + (kt % STAGES) * GG_BN * RS;
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            uint32_t af[2][4];
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
                if (warp_rows > 16 * mi)
                    gg_ldmatrix_x4(af[mi], as + (32 * wm + 16 * mi + (lane & 15)) * RS +
                                               kk * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int np = 0; np < 4; np++) {
                uint32_t b[4];
                gg_ldmatrix_x4(b, bs + (64 * wn + 16 * np + (lane >> 4) * 8 + (lane & 7)) * RS +
                                      kk * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
                for (int mi = 0; mi < 2; mi++)
                    if (warp_rows > 16 * mi) {
                        gg_mma(acc[mi][2 * np], af[mi], b[0], b[1]);
                        gg_mma(acc[mi][2 * np + 1], af[mi], b[2], b[3]);
                    }
            }
        }
    }
    gg_cp_async_wait<0>(); /* nothing may land in shared memory after the block exits */

    /* Accumulator (mi, ni)[2·half + q]: tile row 32·wm + 16·mi + lane / 4 + 8·half, column
     * 8·ni + 2·(lane % 4) + q of the warp's 64. */
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int r = 32 * wm + 16 * mi + (lane >> 2) + 8 * half;
            if (r >= rows)
                continue;
            if constexpr (GATE_UP) {
                uint16_t *hrow = a.h + (int64_t)(row0 + r) * a.h_stride;
#pragma unroll
                for (int ni = 0; ni < 4; ni++) {
                    const int64_t c = col0 + 32 * wn + 8 * ni + 2 * (lane & 3);
                    float v[2];
#pragma unroll
                    for (int q = 0; q < 2; q++) {
                        const float g = acc[mi][ni][2 * half + q];
                        const float u = acc[mi][ni + 4][2 * half + q];
                        v[q] = g / (1.0f + expf(-g)) * u;
                    }
                    if (c + 1 < a.n_out)
                        *(uint32_t *)(hrow + c) =
                            (uint32_t)pk_f32_to_bf16(v[0]) | (uint32_t)pk_f32_to_bf16(v[1]) << 16;
                    else if (c < a.n_out)
                        hrow[c] = pk_f32_to_bf16(v[0]);
                }
            } else {
                float *orow = a.pair_out + (int64_t)a.order[row0 + r] * a.po_stride;
#pragma unroll
                for (int ni = 0; ni < 8; ni++) {
                    const int64_t c = col0 + 64 * wn + 8 * ni + 2 * (lane & 3);
                    if (c + 1 < a.n_out) {
                        *(float2 *)(orow + c) = make_float2(acc[mi][ni][2 * half],
                                                            acc[mi][ni][2 * half + 1]);
                    } else if (c < a.n_out) {
                        orow[c] = acc[mi][ni][2 * half];
                    }
                }
            }
        }
}

static size_t align_up(size_t n)
{
    return (n + 255) & ~(size_t)255;
}

/* One part of the context's scratch: `bytes` asked for, `at` where it starts. */
struct scratch_part {
    size_t bytes;
    void *at;
};

/* Takes the scratch (pk_cuda_scratch) for the parts, each starting align_up apart, in order. */
static pio_status carve_scratch(pk_context *ctx, const char *op, scratch_part *parts, int n,
                                pio_error *err)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += align_up(parts[i].bytes);
    void *scratch = NULL;
    pio_status status = pk_cuda_scratch(ctx, total, op, &scratch, err);
    size_t offset = 0;
    for (int i = 0; status == PIO_OK && i < n; i++) {
        parts[i].at = (char *)scratch + offset;
        offset += align_up(parts[i].bytes);
    }
    return status;
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
    return pk_k_splits(groups, K, per_step, (int64_t)sm_count * MOE_WARPS_PER_SM, MOE_WARPS);
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

/* What both expert paths share: the call's operands and the launch of the reduction. */
struct moe_call {
    const pk_tensor *out, *x, *gate_up, *down, *ids, *weights;
    int64_t T, k, H, F, E, first, n_local, n_pairs;
    bool accumulate;
    const pk_tensor *logits; /* pk_moe_topk_experts on the decode path: route in the kernels */
    bool normalize;
};

/* out[t] (+)= Σ_j weights[t, j] · pair_out[t·k + j] (moe_reduce_kernel). */
static void launch_moe_reduce(const moe_call &c, const float *pair_out, int64_t pair_stride,
                              const pk_cuda_state *st)
{
    int threads = 32;
    while (threads < 1024 && threads * 4 < c.H)
        threads *= 2;
    moe_reduce_kernel<<<(unsigned)(c.T < (1 << 20) ? c.T : (1 << 20)), threads, 0, st->stream>>>(
        (float *)c.out->data, c.out->stride, pair_out, (const int32_t *)c.ids->data,
        c.ids->stride, (const float *)c.weights->data, c.weights->stride, c.T, (int)c.k,
        (int)c.first, (int)c.n_local, c.accumulate, c.H, pair_stride);
}

/* The GEMV path: route, gate_up, down, reduce (see the top of this file). */
static pio_status run_experts_gemv(pk_context *ctx, const char *op, const moe_call &c,
                                   pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    const int64_t n_local = c.n_local, n_pairs = c.n_pairs, F = c.F, H = c.H, k = c.k;
    int64_t act_stride = (F + 3) / 4 * 4; /* 16-byte rows for the down GEMV's input loads */
    scratch_part parts[] = {{(size_t)(n_local + 1) * 4, NULL},
                            {(size_t)n_local * 4, NULL},
                            {(size_t)n_pairs * 4, NULL},
                            {(size_t)n_pairs * (size_t)act_stride * 4, NULL},
                            {(size_t)n_pairs * (size_t)H * 4, NULL}};
    pio_status status = carve_scratch(ctx, op, parts, 5, err);
    if (status != PIO_OK)
        return status;
    int32_t *offsets = (int32_t *)parts[0].at;
    int32_t *active = (int32_t *)parts[1].at;
    int32_t *order = (int32_t *)parts[2].at;
    float *act = (float *)parts[3].at;
    float *pair_out = (float *)parts[4].at;

    size_t route_smem = (size_t)(2 * n_local + 1) * sizeof(int32_t);
    moe_route_kernel<<<1, 1024, route_smem, st->stream>>>(
        (const int32_t *)c.ids->data, c.ids->stride, c.T, (int)k, (int)c.E, (int)c.first,
        (int)n_local, offsets, active, order, st->err_info_dev);

    unsigned slots = (unsigned)(n_local < n_pairs ? n_local : n_pairs);
    int64_t experts = n_local < k ? n_local : k; /* a decode step's, for the split choice */
    bool gu_bf16 = pk_is_bf16(c.gate_up), down_bf16 = pk_is_bf16(c.down);
    /* About one pair per active expert (decode: T·k <= n_local, e.g. T <= 16 at E = 128, k = 8):
     * the kernel built for one pair at a time, with registers for more weight loads in flight.
     * The choice changes no result: a pair's sums do not depend on the pairs beside it. */
    bool one_pair = n_pairs <= n_local;

    moe_gemv_args gu = {};
    gu.w = c.gate_up->data;
    gu.ws = c.gate_up->stride;
    gu.expert_rows = 2 * F;
    gu.up_offset = F;
    gu.n_out = F;
    gu.K = H;
    gu.in = (const float *)c.x->data;
    gu.in_stride = c.x->stride;
    gu.in_div = (int)k;
    gu.out = act;
    gu.out_stride = act_stride;
    gu.offsets = offsets;
    gu.active = active;
    gu.order = order;
    bool gu_vec = pk_aligned16(c.gate_up->data) && c.gate_up->stride % (gu_bf16 ? 8 : 4) == 0 &&
                  pk_aligned16(c.x->data) && c.x->stride % 4 == 0;
    launch_moe_gemv<2>(gu, gu_bf16, gu_vec, one_pair, slots, experts, st);

    moe_gemv_args dn = gu;
    dn.w = c.down->data;
    dn.ws = c.down->stride;
    dn.expert_rows = H;
    dn.up_offset = 0;
    dn.n_out = H;
    dn.K = F;
    dn.in = act;
    dn.in_stride = act_stride;
    dn.in_div = 1;
    dn.out = pair_out;
    dn.out_stride = H;
    bool down_vec = pk_aligned16(c.down->data) && c.down->stride % (down_bf16 ? 8 : 4) == 0;
    launch_moe_gemv<1>(dn, down_bf16, down_vec, one_pair, slots, experts, st);

    launch_moe_reduce(c, pair_out, H, st);
    return pk_cuda_check_launch(ctx, op, err);
}

/* ---- Decode path: two launches for T·k <= MOE_DECODE_MAX_PAIRS ------------------------- */

static constexpr int MOE_DECODE_THREADS = MOE_WARPS * 32;
static constexpr int MOE_DECODE_MAX_PAIRS = MOE_DECODE_THREADS; /* one pair a thread of the plan */
static constexpr int MOE_DOWN_ROWS = 8; /* down outputs per block (2 row groups of MOE_ROWS) */
static constexpr int MOE_PRELOAD_ITEMS = 2; /* warp items of moe_decode_down_preload_kernel */
static constexpr int MOE_PRELOAD_MAX_K = MOE_PRELOAD_ITEMS * MOE_WARPS * MOE_ROWS / MOE_DOWN_ROWS;
static constexpr int MOE_PRELOAD_STEPS = 3; /* 16-byte steps a lane of a row: K <= 768 */

/* Operands of the two decode launches (see the top of this file). With `route`
 * (pk_moe_topk_experts) the kernels route the tokens themselves from the router logits, and
 * ids / weights are where gate_up's block 0 writes the routes for the caller. */
struct moe_decode_args {
    const int32_t *ids;
    int64_t is;
    const float *weights;
    int64_t ws;
    const float *logits;
    int64_t ls;
    bool route, normalize;
    int T, k, n_pairs, E, first, n_local;
    long long *info;
    moe_gemv_args gu, dn; /* the GEMV operands; order is set to the block's plan in the kernel */
    float *out;
    int64_t os;
    bool accumulate;
};

/* The block's view of the pairs: the distinct experts of the slice among them (u = 0 .. n_u - 1,
 * in order of their first pair) and each one's pairs. */
struct moe_decode_plan {
    int n_u;
    int warp_base[MOE_WARPS];
    int32_t expert[MOE_DECODE_MAX_PAIRS];    /* local expert of u */
    int32_t begin[MOE_DECODE_MAX_PAIRS + 1]; /* u's pairs: list[begin[u] .. begin[u + 1]) */
    int32_t count[MOE_DECODE_MAX_PAIRS];     /* pairs of u, then the placing cursors */
    int32_t list[MOE_DECODE_MAX_PAIRS];      /* pair indices grouped by u */
    int32_t pair_u[MOE_DECODE_MAX_PAIRS];    /* u of pair p; -1: bad id or outside the slice */
    int32_t route_id[MOE_DECODE_MAX_PAIRS];  /* route (gate_up): pair p's expert */
};

/*
 * `route` (gate_up): warp w routes token w (T <= MOE_WARPS, host-checked) into the plan's
 * route_id; `publish` (block 0) also writes the ids and weights to global memory, where the down
 * kernel reads them once gate_up has completed (and the caller after the op).
 */
__device__ __forceinline__ void moe_decode_route(moe_decode_plan &pl, const moe_decode_args &a,
                                                 bool publish)
{
    const int lane = threadIdx.x & 31, t = threadIdx.x >> 5;
    if (t < a.T) {
        int32_t id;
        float w;
        if (a.E <= 32 * 4)
            moe_route_token<4>(a.logits + (int64_t)t * a.ls, a.E, a.k, a.normalize, &id, &w);
        else
            moe_route_token<MOE_TOPK_REGS>(a.logits + (int64_t)t * a.ls, a.E, a.k, a.normalize,
                                           &id, &w);
        if (lane < a.k) {
            pl.route_id[t * a.k + lane] = id;
            if (publish) {
                ((int32_t *)a.ids)[(int64_t)t * a.is + lane] = id;
                ((float *)a.weights)[(int64_t)t * a.ws + lane] = w;
            }
        }
    }
    __syncthreads();
}

/*
 * The plan of one routed token (moe_decode_make_plan's, without its atomics and most of its
 * barriers): its k slots name k distinct experts (moe_route_token takes each at most once), so
 * every local expert has one pair and u counts the local slots in slot order. Warp 0 does it.
 */
__device__ __forceinline__ void moe_decode_plan_distinct(moe_decode_plan &pl,
                                                         const moe_decode_args &a, bool report)
{
    const int tid = threadIdx.x;
    if (tid >= 32) { /* k <= 32: only warp 0 has pairs */
        pl.pair_u[tid] = -1;
    } else {
        int l = -1;
        if (tid < a.k) {
            const int32_t e = pl.route_id[tid];
            if (e < 0 || e >= a.E) {
                if (report)
                    pk_report(a.info, PK_CUDA_OP_MOE_EXPERTS, PK_CUDA_BAD_EXPERT_ID, 0, tid, e,
                              a.E);
            } else if (e >= a.first && e - a.first < a.n_local) {
                l = e - a.first;
            }
        }
        const unsigned local = __ballot_sync(0xffffffffu, l >= 0);
        const int u = l >= 0 ? __popc(local & ((1u << tid) - 1u)) : -1;
        pl.pair_u[tid] = u;
        if (u >= 0) {
            pl.expert[u] = l;
            pl.begin[u] = u;
            pl.list[u] = tid;
        }
        if (tid == 0) {
            pl.n_u = __popc(local);
            pl.begin[pl.n_u] = pl.n_u;
        }
    }
    __syncthreads();
}

/*
 * Every block builds the plan from ids (n_pairs <= MOE_DECODE_MAX_PAIRS = blockDim.x: thread p
 * owns pair p). mark[n_local] (dynamic shared memory) first takes the lowest pair of each local
 * expert (its leader), then the expert's u; leaders are numbered in pair order with warp ballots.
 * Pairs are placed under their u with atomics: the order within an expert varies between runs,
 * which changes no result (a pair's sums do not depend on the pairs beside it). `report`: this
 * block records bad ids.
 */
__device__ __forceinline__ void moe_decode_make_plan(moe_decode_plan &pl, int32_t *mark,
                                                  const moe_decode_args &a, bool report,
                                                  bool route = false)
{
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    if (route && a.T == 1) { /* one token's routes name distinct experts: one pair each */
        moe_decode_plan_distinct(pl, a, report);
        return;
    }
    for (int l = tid; l < a.n_local; l += blockDim.x)
        mark[l] = INT32_MAX;
    pl.count[tid] = 0;
    int l = -1;
    if (tid < a.n_pairs) {
        const int t = tid / a.k, j = tid - t * a.k;
        const int32_t e = route ? pl.route_id[tid]
                                : __ldcg(a.ids + (int64_t)t * a.is + j); /* L2: see down */
        if (e < 0 || e >= a.E) {
            if (report)
                pk_report(a.info, PK_CUDA_OP_MOE_EXPERTS, PK_CUDA_BAD_EXPERT_ID, t, j, e, a.E);
        } else if (e >= a.first && e - a.first < a.n_local) {
            l = e - a.first;
        }
    }
    __syncthreads();
    if (l >= 0)
        atomicMin(&mark[l], tid);
    __syncthreads();
    const bool leader = l >= 0 && mark[l] == tid;
    const unsigned ballot = __ballot_sync(0xffffffffu, leader);
    if (lane == 0)
        pl.warp_base[warp] = __popc(ballot);
    __syncthreads();
    if (tid == 0) {
        int n = 0;
        for (int w = 0; w < MOE_WARPS; w++) {
            int c = pl.warp_base[w];
            pl.warp_base[w] = n;
            n += c;
        }
        pl.n_u = n;
    }
    __syncthreads();
    if (leader) {
        const int u = pl.warp_base[warp] + __popc(ballot & ((1u << lane) - 1u));
        pl.expert[u] = l;
        mark[l] = u;
    }
    __syncthreads();
    const int u = l >= 0 ? mark[l] : -1;
    pl.pair_u[tid] = u;
    if (u >= 0)
        atomicAdd(&pl.count[u], 1);
    __syncthreads();
    if (warp == 0) { /* begin[] = exclusive prefix sum of count[0 .. n_u) */
        int base = 0;
        for (int c0 = 0; c0 < pl.n_u; c0 += 32) {
            const int i = c0 + lane, v = i < pl.n_u ? pl.count[i] : 0;
            int s = v;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                int y = __shfl_up_sync(0xffffffffu, s, o);
                s += lane >= o ? y : 0;
            }
            if (i < pl.n_u)
                pl.begin[i] = base + s - v;
            base += __shfl_sync(0xffffffffu, s, 31);
        }
        if (lane == 0)
            pl.begin[pl.n_u] = base;
    }
    __syncthreads();
    if (u >= 0)
        pl.list[pl.begin[u] + atomicSub(&pl.count[u], 1) - 1] = tid;
    __syncthreads();
}

/* The dots of one warp item: the MOE_ROWS rows (from o0) of u's expert with each of u's pairs,
 * NPMAX pairs a pass; after each pass `finish(i0, n)` runs on the warp (partial[q][j] holds pair
 * list[i0 + q]'s sum of row j). */
template <bool BF16, bool VEC, int G, int NPMAX, typename Finish>
__device__ __forceinline__ void moe_decode_item(const moe_gemv_args &g, const moe_decode_plan &pl,
                                                int u, int64_t o0, int lane,
                                                float partial[MOE_NP][MOE_ROWS], Finish finish)
{
    const char *rows[MOE_ROWS];
    moe_warp_rows<BF16, G>(g, pl.expert[u], o0, rows);
    const int begin = pl.begin[u], end = pl.begin[u + 1];
    const bool once = end - begin <= NPMAX;
    for (int i0 = begin; i0 < end; i0 += NPMAX) {
        const int n = end - i0 < NPMAX ? end - i0 : NPMAX;
        moe_dot_pairs<BF16, VEC, NPMAX>(n, g, rows, o0 < g.n_out, once, 0, lane, i0, partial);
        __syncwarp();
        finish(i0, n);
        __syncwarp(); /* partial is rewritten by the next pass */
    }
}

/*
 * gate_up with SwiGLU: act[p, c] = silu(gate_e[c] · x_t) · (up_e[c] · x_t). A warp item is
 * (u, 2 outputs); item i goes to global warp i mod (warps of the grid), so the grid (at most the
 * resident blocks) streams every selected expert's rows at once. Waits for the routing, then
 * lets the down kernel start (its blocks take the SMs as these finish).
 */
template <bool BF16, bool VEC, int NPMAX>
__global__ void __launch_bounds__(MOE_DECODE_THREADS, NPMAX == 1 ? 3 : 2)
    moe_decode_gate_up_kernel(moe_decode_args a)
{
    extern __shared__ int32_t moe_mark[];
    __shared__ moe_decode_plan pl;
    __shared__ float partial[MOE_WARPS][MOE_NP][MOE_ROWS];
    pk_pdl_wait(); /* ids (route: the logits), x */
    pk_pdl_launch_dependents();
    if (a.route)
        moe_decode_route(pl, a, blockIdx.x == 0);
    moe_decode_make_plan(pl, moe_mark, a, blockIdx.x == 0, a.route);
    constexpr int R = MOE_ROWS / 2;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    moe_gemv_args g = a.gu;
    g.order = pl.list;
    const int64_t groups = (g.n_out + R - 1) / R, items = (int64_t)pl.n_u * groups;
    for (int64_t i = (int64_t)blockIdx.x * MOE_WARPS + warp; i < items;
         i += (int64_t)gridDim.x * MOE_WARPS) {
        const int u = (int)(i / groups);
        const int64_t o0 = (i - u * groups) * R;
        moe_decode_item<BF16, VEC, 2, NPMAX>(g, pl, u, o0, lane, partial[warp],
                                             [&](int i0, int n) {
            if (lane < R && o0 + lane < g.n_out)
                moe_finish_group<2>(g, partial, warp, lane, i0, n, o0);
        });
    }
}

/* The down kernels' last step for outputs [r0, r0 + MOE_DOWN_ROWS): out[t, r] (+)=
 * Σ_j weights[t, j] · sums[t·k + j][r] over the token's local pairs, in slot order (the CPU's
 * order; a token's bits do not depend on the batch). The block's threads take (t, r) in turn. */
__device__ __forceinline__ void moe_down_weighted_sum(const moe_decode_args &a,
                                                      const moe_decode_plan &pl,
                                                      const float (*sums)[MOE_DOWN_ROWS],
                                                      int64_t r0)
{
    for (int idx = threadIdx.x; idx < a.T * MOE_DOWN_ROWS; idx += blockDim.x) {
        const int t = idx / MOE_DOWN_ROWS, r = idx % MOE_DOWN_ROWS;
        if (r0 + r >= a.dn.n_out)
            continue;
        float *o = a.out + (int64_t)t * a.os + r0 + r;
        float acc = a.accumulate ? *o : 0.0f;
        for (int j = 0; j < a.k; j++)
            if (pl.pair_u[t * a.k + j] >= 0)
                acc = fmaf(a.weights[(int64_t)t * a.ws + j], sums[t * a.k + j][r], acc);
        *o = acc;
    }
}

/*
 * down and the weighted sum: block b owns outputs [b·MOE_DOWN_ROWS, +MOE_DOWN_ROWS) of every
 * selected expert (warp items (u, MOE_ROWS outputs)), keeps each pair's sums in shared memory,
 * then adds out[t, r] (+)= Σ_j weights[t, j] · sum[t·k + j][r] in slot order: deterministic, and
 * a token's result does not depend on the batch.
 *   Before waiting for gate_up (act), the block builds its plan (it does not ask L2 for its
 * first rows there: on an H200 that prefetch, which competed with gate_up's stream, cost 3 % of
 * Qwen3-Coder's tg64, docs/KERNELS.md "Tenth session"). Reading ids before the wait is safe:
 * they were written before the routing kernel completed, which every gate_up block waited for
 * before letting this kernel start; they are read through L2 (__ldcg), the point of coherence.
 * With `route` the published ids are gate_up's (its block 0 writes them after its wait), so the
 * one-pair variant routes the tokens again from the logits instead (the grouped one plans after
 * the wait). The logits are settled by the same argument (the router's kernel completed before
 * any gate_up block passed its wait), and the routing is the same code on the same bits, so the
 * plans agree. The weights of the final sum are read after the wait, as gate_up published them.
 */
template <bool BF16, bool VEC, int NPMAX>
__global__ void __launch_bounds__(MOE_DECODE_THREADS, NPMAX == 1 ? 3 : 2)
    moe_decode_down_kernel(moe_decode_args a)
{
    extern __shared__ int32_t moe_mark[];
    __shared__ moe_decode_plan pl;
    __shared__ float partial[MOE_WARPS][MOE_NP][MOE_ROWS];
    __shared__ float sums[MOE_DECODE_MAX_PAIRS][MOE_DOWN_ROWS];
    constexpr int R = MOE_ROWS, GROUPS = MOE_DOWN_ROWS / R;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    moe_gemv_args g = a.dn;
    g.order = pl.list;
    /* route: planned before the wait in the one-pair variant only (in the grouped one the
     * routing's registers made the loop spill: batch 2 -2 %) */
    const bool plan_after_wait = a.route && NPMAX != 1;
    if (!plan_after_wait) {
        if (a.route) /* the logits are settled (see above); the published ids are not */
            moe_decode_route(pl, a, false);
        moe_decode_make_plan(pl, moe_mark, a, false, a.route);
    }
    pk_pdl_wait(); /* act; out may still be read by nothing earlier once this returns */
    pk_pdl_launch_dependents();
    if (plan_after_wait) /* gate_up's published ids, complete now */
        moe_decode_make_plan(pl, moe_mark, a, false);
    const int items = pl.n_u * GROUPS;
    for (int64_t b = blockIdx.x; b * MOE_DOWN_ROWS < g.n_out; b += gridDim.x) {
        const int64_t r0 = b * MOE_DOWN_ROWS;
        for (int i = warp; i < items; i += MOE_WARPS) {
            const int u = i / GROUPS, gr = i % GROUPS;
            const int64_t o0 = r0 + gr * R;
            moe_decode_item<BF16, VEC, 1, NPMAX>(g, pl, u, o0, lane, partial[warp],
                                                 [&](int i0, int n) {
                if (lane < R && o0 + lane < g.n_out)
                    for (int q = 0; q < n; q++)
                        sums[pl.list[i0 + q]][gr * R + lane] = partial[warp][q][lane];
            });
        }
        __syncthreads();
        moe_down_weighted_sum(a, pl, sums, r0);
        __syncthreads(); /* sums is rewritten by the next row block */
    }
}

/*
 * down for one routed token whose warps' weights fit their registers (BF16 rows 16-byte aligned,
 * K <= STEPS·256 with K % 8 == 0, at most MOE_PRELOAD_MAX_K routes, so at most two warp items
 * a warp): every weight load of the block is issued right after the routing, before the
 * programmatic wait, and after it only act is read. The one-pair variant above loads its rows
 * after the wait, two dependent round trips an item, four a warp: most of its time at
 * Qwen3-Coder's shape (docs/KERNELS.md, "Eleventh session"). The items, the per-lane order of
 * the steps, the warp sums and the weighted sum are the one-pair variant's: the same bits.
 */
template <int STEPS>
__global__ void __launch_bounds__(MOE_DECODE_THREADS, 2)
    moe_decode_down_preload_kernel(moe_decode_args a)
{
    constexpr int R = MOE_ROWS, GROUPS = MOE_DOWN_ROWS / R, ITEMS = MOE_PRELOAD_ITEMS;
    __shared__ moe_decode_plan pl;
    __shared__ float sums[MOE_PRELOAD_MAX_K][MOE_DOWN_ROWS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const moe_gemv_args &g = a.dn;
    const int64_t r0 = (int64_t)blockIdx.x * MOE_DOWN_ROWS;
    moe_decode_route(pl, a, false); /* the logits are settled: see moe_decode_down_kernel */
    moe_decode_plan_distinct(pl, a, false);
    const int items = pl.n_u * GROUPS;
    uint4 wq[ITEMS][STEPS][R];
#pragma unroll
    for (int it = 0; it < ITEMS; it++) {
        const int i = warp + it * MOE_WARPS;
        const int64_t o0 = r0 + (i % GROUPS) * R;
        if (i >= items || o0 >= g.n_out)
            continue;
        const char *rows[R];
        moe_warp_rows<true, 1>(g, pl.expert[i / GROUPS], o0, rows);
#pragma unroll
        for (int s = 0; s < STEPS; s++) {
            const int64_t k = (int64_t)(s * 32 + lane) * 8;
#pragma unroll
            for (int j = 0; j < R; j++)
                if (k < g.K)
                    wq[it][s][j] = pk_load_weights16(rows[j] + (size_t)k * 2);
        }
    }
    pk_pdl_wait(); /* act and the published weights; out is read by nothing earlier now */
    pk_pdl_launch_dependents();
#pragma unroll
    for (int it = 0; it < ITEMS; it++) {
        const int i = warp + it * MOE_WARPS, gr = i % GROUPS;
        const int64_t o0 = r0 + gr * R;
        if (i >= items || o0 >= g.n_out)
            continue;
        const int pair = pl.list[pl.begin[i / GROUPS]];
        const float *in = g.in + (int64_t)pair * g.in_stride;
        float acc[R];
#pragma unroll
        for (int j = 0; j < R; j++)
            acc[j] = 0.0f;
#pragma unroll
        for (int s = 0; s < STEPS; s++) {
            const int64_t k = (int64_t)(s * 32 + lane) * 8;
            if (k >= g.K)
                break;
            const pk_vec16<true> x = pk_load_x16<true>(in + k);
#pragma unroll
            for (int j = 0; j < R; j++)
                acc[j] += pk_dot16<true>(pk_unpack16<true>(wq[it][s][j]), x);
        }
#pragma unroll
        for (int j = 0; j < R; j++) {
            const float v = pk_warp_sum(acc[j]);
            if (lane == 0)
                sums[pair][gr * R + j] = v;
        }
    }
    __syncthreads();
    moe_down_weighted_sum(a, pl, sums, r0);
}

/* PIO_CUDA_MOE_DECODE, read at every call (tests and benchmarks): "0" turns the decode path
 * off (the general GEMV kernels run), "one" / "grouped" force its variant ("one" with the
 * one-pair down kernel, never the preloading one), anything else or unset leaves the choice to
 * the backend. */
static const char *moe_decode_setting(void)
{
    const char *text = getenv("PIO_CUDA_MOE_DECODE");
    return text != NULL ? text : "";
}

/* Whether the decode path takes the call: few enough pairs for the plan, and not turned off. */
static bool moe_decode_fits(const moe_call &c)
{
    return c.n_pairs <= MOE_DECODE_MAX_PAIRS && strcmp(moe_decode_setting(), "0") != 0;
}

/* The one-pair variant (one pair a pass, 3 blocks an SM) for one token, the grouped one
 * (groups of up to 4 pairs a pass, 2 blocks an SM) otherwise. Measured on an H100 at
 * Qwen3-Coder-30B-A3B's shape (docs/KERNELS.md): one pair 33.0 against 36.4 us at T = 1; grouped
 * 57.3 against 60.5 us at T = 2, 100.5 / 110.4 at T = 4, 173.7 / 192.2 at T = 8 and 272.8 /
 * 356.8 at T = 16 (where one pair a pass re-reads the rows of every expert with two pairs).
 * Either gives the same bits. */
static bool moe_decode_one_pair(const moe_call &c)
{
    const char *setting = moe_decode_setting();
    if (strcmp(setting, "one") == 0 || strcmp(setting, "grouped") == 0)
        return setting[0] == 'o';
    return c.T == 1;
}

/* Whether the down launch of a one-pair decode call takes moe_decode_down_preload_kernel: one
 * routed token, BF16 rows that fit its registers, one row block a block; not when
 * PIO_CUDA_MOE_DECODE=one asks for the one-pair variant's loads after the wait (tests compare the
 * two bit for bit). */
static bool moe_down_preloads(const moe_call &c, bool one_pair, bool down_vec, unsigned dn_blocks)
{
    return one_pair && c.logits != NULL && c.T == 1 && pk_is_bf16(c.down) && down_vec &&
           c.F % 8 == 0 && c.F <= MOE_PRELOAD_STEPS * 256 && c.k <= MOE_PRELOAD_MAX_K &&
           (int64_t)dn_blocks * MOE_DOWN_ROWS >= c.H && strcmp(moe_decode_setting(), "one") != 0;
}

template <bool BF16, bool VEC, int NPMAX>
static cudaError_t launch_moe_decode_pair(const pk_cuda_state *st, const moe_decode_args &a,
                                          bool down, unsigned blocks, size_t smem)
{
    if (down)
        return pk_cuda_launch_pdl(st, moe_decode_down_kernel<BF16, VEC, NPMAX>, dim3(blocks),
                                  dim3(MOE_DECODE_THREADS), smem, a);
    return pk_cuda_launch_pdl(st, moe_decode_gate_up_kernel<BF16, VEC, NPMAX>, dim3(blocks),
                              dim3(MOE_DECODE_THREADS), smem, a);
}

/* One decode launch (down: the down kernel, else gate_up) with the variant the weights and the
 * pair count ask for. */
static cudaError_t launch_moe_decode(const pk_cuda_state *st, const moe_decode_args &a, bool down,
                                     bool bf16, bool vec, bool one_pair, unsigned blocks,
                                     size_t smem)
{
    if (one_pair) {
        if (bf16)
            return vec ? launch_moe_decode_pair<true, true, 1>(st, a, down, blocks, smem)
                       : launch_moe_decode_pair<true, false, 1>(st, a, down, blocks, smem);
        return vec ? launch_moe_decode_pair<false, true, 1>(st, a, down, blocks, smem)
                   : launch_moe_decode_pair<false, false, 1>(st, a, down, blocks, smem);
    }
    if (bf16)
        return vec ? launch_moe_decode_pair<true, true, MOE_NP>(st, a, down, blocks, smem)
                   : launch_moe_decode_pair<true, false, MOE_NP>(st, a, down, blocks, smem);
    return vec ? launch_moe_decode_pair<false, true, MOE_NP>(st, a, down, blocks, smem)
               : launch_moe_decode_pair<false, false, MOE_NP>(st, a, down, blocks, smem);
}

/* The decode path: gate_up (+ SwiGLU), then down with the weighted sum (top of this file). */
static pio_status run_experts_decode(pk_context *ctx, const char *op, const moe_call &c,
                                     pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    const int64_t F = c.F, H = c.H, n_pairs = c.n_pairs;
    const int64_t act_stride = (F + 3) / 4 * 4; /* 16-byte rows for down's input loads */
    void *scratch = NULL;
    pio_status status = pk_cuda_scratch(ctx, (size_t)n_pairs * (size_t)act_stride * 4, op,
                                        &scratch, err);
    if (status != PIO_OK)
        return status;
    const bool gu_bf16 = pk_is_bf16(c.gate_up), down_bf16 = pk_is_bf16(c.down);
    moe_decode_args a = {};
    a.ids = (const int32_t *)c.ids->data;
    a.is = c.ids->stride;
    a.weights = (const float *)c.weights->data;
    a.ws = c.weights->stride;
    a.route = c.logits != NULL;
    a.logits = a.route ? (const float *)c.logits->data : NULL;
    a.ls = a.route ? c.logits->stride : 0;
    a.normalize = c.normalize;
    a.T = (int)c.T;
    a.k = (int)c.k;
    a.n_pairs = (int)n_pairs;
    a.E = (int)c.E;
    a.first = (int)c.first;
    a.n_local = (int)c.n_local;
    a.info = st->err_info_dev;
    a.out = (float *)c.out->data;
    a.os = c.out->stride;
    a.accumulate = c.accumulate;
    moe_gemv_args &gu = a.gu, &dn = a.dn;
    gu.w = c.gate_up->data;
    gu.ws = c.gate_up->stride;
    gu.expert_rows = 2 * F;
    gu.up_offset = F;
    gu.n_out = F;
    gu.K = H;
    gu.in = (const float *)c.x->data;
    gu.in_stride = c.x->stride;
    gu.in_div = (int)c.k;
    gu.out = (float *)scratch;
    gu.out_stride = act_stride;
    gu.splits = 1;
    dn = gu;
    dn.w = c.down->data;
    dn.ws = c.down->stride;
    dn.expert_rows = H;
    dn.up_offset = 0;
    dn.n_out = H;
    dn.K = F;
    dn.in = (const float *)scratch;
    dn.in_stride = act_stride;
    dn.in_div = 1;
    dn.out = NULL; /* the down kernel keeps its sums in shared memory */
    const bool gu_vec = pk_aligned16(c.gate_up->data) && c.gate_up->stride % (gu_bf16 ? 8 : 4) == 0 &&
                        pk_aligned16(c.x->data) && c.x->stride % 4 == 0;
    const bool down_vec = pk_aligned16(c.down->data) && c.down->stride % (down_bf16 ? 8 : 4) == 0;
    const bool one_pair = moe_decode_one_pair(c);
    const int64_t u_max = c.n_local < n_pairs ? c.n_local : n_pairs;
    const int64_t resident = (int64_t)st->sm_count * (one_pair ? 3 : 2);
    int64_t gu_blocks = (u_max * ((F + 1) / 2) + MOE_WARPS - 1) / MOE_WARPS;
    gu_blocks = gu_blocks < resident ? gu_blocks : resident;
    const unsigned dn_blocks = pk_blocks_for(H, MOE_DOWN_ROWS, GRID_CAP);
    const size_t smem = (size_t)c.n_local * sizeof(int32_t);
    cudaError_t e = launch_moe_decode(st, a, false, gu_bf16, gu_vec, one_pair,
                                      (unsigned)(gu_blocks > 0 ? gu_blocks : 1), smem);
    if (e == cudaSuccess && moe_down_preloads(c, one_pair, down_vec, dn_blocks))
        e = pk_cuda_launch_pdl(st, moe_decode_down_preload_kernel<MOE_PRELOAD_STEPS>,
                               dim3(dn_blocks), dim3(MOE_DECODE_THREADS), 0, a);
    else if (e == cudaSuccess)
        e = launch_moe_decode(st, a, true, down_bf16, down_vec, one_pair, dn_blocks, smem);
    if (e != cudaSuccess)
        return pk_cuda_fail(ctx, op, "cudaLaunchKernelEx (moe decode)", e, err);
    return pk_cuda_check_launch(ctx, op, err);
}

/* Tokens from which the grouped GEMM runs: PIO_CUDA_MOE_GEMM_MIN_T when set (read at every
 * call, so tests and benchmarks can force either path), else MOE_GEMM_MIN_T_DEFAULT. */
static int64_t moe_gemm_min_tokens(void)
{
    const char *text = getenv("PIO_CUDA_MOE_GEMM_MIN_T");
    if (text == NULL || *text == '\0')
        return MOE_GEMM_MIN_T_DEFAULT;
    char *end = NULL;
    long long v = strtoll(text, &end, 10);
    return end != text && *end == '\0' && v >= 0 ? (int64_t)v : MOE_GEMM_MIN_T_DEFAULT;
}

/* Whether the tensor-core path can take the call: bf16 weights whose rows are 16-byte aligned
 * (cp.async), and enough tokens. Anything else runs the GEMV path, which handles every shape. */
static bool moe_gemm_fits(const moe_call &c)
{
    return c.T >= moe_gemm_min_tokens() && pk_is_bf16(c.gate_up) && pk_is_bf16(c.down) &&
           pk_aligned16(c.gate_up->data) && c.gate_up->stride % 8 == 0 &&
           pk_aligned16(c.down->data) && c.down->stride % 8 == 0 &&
           c.n_pairs / GG_BM + c.n_local < INT32_MAX;
}

template <bool GATE_UP, int BK, int STAGES>
static pio_status launch_moe_gemm_config(pk_context *ctx, const char *op, const moe_gemm_args &a,
                                         dim3 grid, pio_error *err)
{
    auto kernel = moe_gemm_kernel<GATE_UP, BK, STAGES>;
    const size_t smem = gg_config<BK, STAGES>::smem;
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem);
    if (e != cudaSuccess)
        return pk_cuda_fail(ctx, op, "cudaFuncSetAttribute (moe gemm)", e, err);
    kernel<<<grid, GG_THREADS, smem, pk_cuda_state_of(ctx)->stream>>>(a);
    return PIO_OK;
}

/*
 * The pipeline of a launch. Measured on an H100 at Qwen3-Coder-30B-A3B's shape (docs/KERNELS.md):
 * with a few pairs per expert the weights stream from HBM once and BK = 32 with the L2 256-byte
 * prefetch hint streams best (2.6 TB/s at T = 64; 1.8 TB/s without the hint); with more, the
 * products count and BK = 64 in two stages (55 KB of shared memory a block: four blocks an SM)
 * wins: at 128 pairs an expert (T = 2048) 28.1k -> 29.4k tok/s against BK 64 in three stages,
 * 27.4k for BK 32 in two; at 32 (T = 512) pp512 21.1k -> 22.2k against BK 32 in three, while at
 * 4 (64 sequences decoding) BK 32 in three stays best (2,458 against 2,395). The switch sits
 * between those, at 16 pairs an expert. The choice depends on T, k and n_local only.
 */
static constexpr int GG_WIDE_K_PAIRS = 16; /* pairs an expert from which BK = 64 runs */

template <bool GATE_UP>
static pio_status launch_moe_gemm(pk_context *ctx, const char *op, const moe_gemm_args &a,
                                  dim3 grid, int64_t n_pairs, int64_t n_local, pio_error *err)
{
    if (n_pairs >= (int64_t)GG_WIDE_K_PAIRS * n_local)
        return launch_moe_gemm_config<GATE_UP, 64, 2>(ctx, op, a, grid, err);
    return launch_moe_gemm_config<GATE_UP, 32, 3>(ctx, op, a, grid, err);
}

/* The grouped GEMM path: plan, place (+ x to bf16), gate_up, down, reduce. */
static pio_status run_experts_gemm(pk_context *ctx, const char *op, const moe_call &c,
                                   pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    const int64_t n_local = c.n_local, n_pairs = c.n_pairs, H = c.H, F = c.F;
    const int64_t max_tiles = n_pairs / GG_BM + (n_local < n_pairs ? n_local : n_pairs);
    const int64_t hp = (H + 7) / 8 * 8, fp = (F + 7) / 8 * 8; /* 16-byte bf16 rows */
    const int64_t po_stride = (H + 1) / 2 * 2;                  /* 8-byte float2 stores */
    scratch_part parts[] = {{(size_t)(n_local + 1) * 4, NULL},
                            {(size_t)max_tiles * 4, NULL},
                            {(size_t)max_tiles * 4, NULL},
                            {(size_t)n_pairs * 4, NULL},
                            {(size_t)c.T * (size_t)hp * 2, NULL},
                            {(size_t)n_pairs * (size_t)fp * 2, NULL},
                            {(size_t)n_pairs * (size_t)po_stride * 4, NULL}};
    pio_status status = carve_scratch(ctx, op, parts, 7, err);
    if (status != PIO_OK)
        return status;
    int32_t *offsets = (int32_t *)parts[0].at;
    int32_t *tile_expert = (int32_t *)parts[1].at;
    int32_t *tile_row0 = (int32_t *)parts[2].at;
    int32_t *order = (int32_t *)parts[3].at;
    uint16_t *xb = (uint16_t *)parts[4].at;
    uint16_t *h = (uint16_t *)parts[5].at;
    float *pair_out = (float *)parts[6].at;
    const int32_t *ids = (const int32_t *)c.ids->data;

    moe_plan_kernel<<<1, 1024, (size_t)(n_local + 1) * sizeof(int32_t), st->stream>>>(
        ids, c.ids->stride, c.T, (int)c.k, (int)c.E, (int)c.first, (int)n_local, offsets,
        tile_expert, tile_row0, (int)max_tiles, st->err_info_dev);
    int64_t place_blocks = c.T < 4 * (int64_t)st->sm_count ? c.T : 4 * (int64_t)st->sm_count;
    place_blocks = place_blocks > n_local ? place_blocks : n_local;
    moe_place_kernel<<<(unsigned)place_blocks, GG_PLACE_THREADS, 0, st->stream>>>(
        ids, c.ids->stride, c.T, (int)c.k, (int)c.first, (int)n_local, offsets, order,
        (const float *)c.x->data, c.x->stride, H, xb, hp);

    moe_gemm_args gu = {};
    gu.a = xb;
    gu.a_stride = hp;
    gu.w = (const uint16_t *)c.gate_up->data;
    gu.w_stride = c.gate_up->stride;
    gu.expert_rows = 2 * F;
    gu.n_out = F;
    gu.K = H;
    gu.offsets = offsets;
    gu.tile_expert = tile_expert;
    gu.tile_row0 = tile_row0;
    gu.order = order;
    gu.k = (int)c.k;
    gu.h = h;
    gu.h_stride = fp;
    dim3 gu_grid((unsigned)max_tiles, pk_blocks_for(F, GG_BN / 2, GRID_CAP));
    if ((status = launch_moe_gemm<true>(ctx, op, gu, gu_grid, n_pairs, n_local, err)) != PIO_OK)
        return status;

    moe_gemm_args dn = gu;
    dn.a = h;
    dn.a_stride = fp;
    dn.w = (const uint16_t *)c.down->data;
    dn.w_stride = c.down->stride;
    dn.expert_rows = H;
    dn.n_out = H;
    dn.K = F;
    dn.pair_out = pair_out;
    dn.po_stride = po_stride;
    dim3 dn_grid((unsigned)max_tiles, pk_blocks_for(H, GG_BN, GRID_CAP));
    if ((status = launch_moe_gemm<false>(ctx, op, dn, dn_grid, n_pairs, n_local, err)) != PIO_OK)
        return status;

    launch_moe_reduce(c, pair_out, po_stride, st);
    return pk_cuda_check_launch(ctx, op, err);
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
    moe_call c = {out, x, gate_up, down, ids, weights, out->rows, ids->cols, out->cols,
                  down->cols, E, first, n_local, out->rows * ids->cols, accumulate, NULL, false};
    if (n_local > MOE_MAX_EXPERTS || c.n_pairs > INT32_MAX)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "%s: the cuda backend handles up to %lld experts and 2^31 token "
                             "slots (got %lld experts, %lld slots)", op,
                             (long long)MOE_MAX_EXPERTS, (long long)n_local, (long long)c.n_pairs);
    if (moe_gemm_fits(c))
        return run_experts_gemm(ctx, op, c, err);
    return moe_decode_fits(c) ? run_experts_decode(ctx, op, c, err)
                              : run_experts_gemv(ctx, op, c, err);
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

/* pk_moe_topk_experts: routed inside the decode kernels where the decode path takes the call
 * and every token has a warp of the plan (T <= MOE_WARPS; E and k within the register routing);
 * otherwise the routing kernel and then the experts. */
pio_status pk_cuda_moe_topk_experts(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                                    const pk_tensor *logits, const pk_tensor *gate_up,
                                    const pk_tensor *down, const pk_tensor *ids,
                                    const pk_tensor *weights, int normalize, pio_error *err)
{
    static const char op[] = "pk_moe_topk_experts";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK || out->rows == 0 || out->cols == 0)
        return status;
    const int64_t E = logits->cols;
    moe_call c = {out, x, gate_up, down, ids, weights, out->rows, ids->cols, out->cols,
                  down->cols, E, 0, E, out->rows * ids->cols, true, logits, normalize != 0};
    if (c.T <= MOE_WARPS && E <= 32 * MOE_TOPK_REGS && c.k <= 32 && E <= MOE_MAX_EXPERTS &&
        !moe_gemm_fits(c) && moe_decode_fits(c))
        return run_experts_decode(ctx, op, c, err);
    if ((status = pk_cuda_moe_topk_softmax(ctx, ids, weights, logits, normalize, err)))
        return status;
    return pk_cuda_moe_experts(ctx, out, x, gate_up, down, ids, weights, E, err);
}
