/*
 * y[M, N] (+)= x[M, K] · w[N, K]^T on the GPU. x and y are F32, w BF16 or F32 in the Hugging
 * Face Linear layout.
 *
 * Two algorithms:
 *   - M <= gemv_max_m (decode; PK_CUDA_GEMV_MAX_M_DEFAULT unless PIO_CUDA_GEMV_MAX_M says
 *     otherwise): a GEMV kernel that streams W once with 16-byte loads (8 bf16 or 4 f32 per
 *     lane), each warp dotting a few rows of W with every row of x in fp32 registers (see
 *     gemv_kernel): bound by memory bandwidth at M = 1, and the numerics are the CPU
 *     backend's (fp32 products and sums, only the order differs). With one row of x and BF16
 *     weights of many waves of blocks (the lm_head; pk_cuda_gemv_tma), gemv_tma_kernel does the
 *     same arithmetic on weights the copy engine streams into shared memory (2-D tensor-map
 *     boxes), which keeps twice the bytes in flight.
 *   - Larger M (prefill, big batches): cuBLASLt. With BF16 W, x is first rounded to bf16 (round
 *     to nearest even) into a workspace and the product runs on the tensor cores with fp32
 *     accumulation and an F32 output; `accumulate` is beta = 1 on y, so the residual add is
 *     fused. The bf16 rounding of x is the only numerical difference from the CPU backend
 *     (relative error about 1e-3, what Hugging Face's bf16 models do anyway). With F32 W the
 *     product is a plain fp32 GEMM (CUBLAS_COMPUTE_32F, no TF32).
 * cuBLASLt is column-major, so the row-major product is computed as y^T = W · x^T ("TN"):
 * A = W seen as [K, N] (ld = w stride) transposed, B = x seen as [K, M], D = y seen as [N, M].
 * Layouts and the heuristic's choice are cached per shape, stride and alignment.
 *
 * The fused pre-norm ops (pk_rmsnorm_matmul, pk_rmsnorm_matmul_swiglu; end of the file) use the
 * same two paths: at decode the GEMV with the norm (and the SwiGLU epilogue) inside, in prefill
 * the RMSNorm kernel writing the bf16 cuBLASLt operand directly. GEMVs are programmatic
 * dependent launches that request their first weights before waiting for the previous kernel.
 */
#include "kernels/cuda/cuda_internal.h"

#include <cuda.h> /* CUtensorMap */
#include <cudaTypedefs.h> /* PFN_cuTensorMapEncodeTiled */

#include <stdlib.h>
#include <string.h>

static constexpr int GEMV_MAX_M = PK_CUDA_GEMV_ROWS; /* rows of x per GEMV launch */
static constexpr int GEMV_WARPS = 8; /* warps per block */

/* ------------------------------------------------------------------------------------------ */
/* GEMV                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* Operands of one GEMV launch. */
struct gemv_args {
    float *y;
    int64_t ys;
    const float *x;
    int64_t xs;
    const void *w;
    int64_t ws;
    int64_t N, K; /* N: rows of W (2F for the SwiGLU epilogue, whose y has F columns) */
    int accumulate;
    int splits; /* warps per row group (gemv_splits) */
    /* The fused norm (GEMV_NORM, GEMV_NORM_SWIGLU): y = rmsnorm(x) · Wᵀ with the norm weight
     * norm_w (16-byte aligned); block 0 also writes rmsnorm(x) to h unless h is NULL. */
    const void *norm_w;
    bool norm_bf16;
    float eps;
    float *h;
    int64_t hs;
};

/* What a GEMV launch does around the dot products. */
enum gemv_epilogue {
    GEMV_PLAIN = 0,       /* y (+)= x · Wᵀ */
    GEMV_NORM = 1,        /* y = rmsnorm(x) · Wᵀ */
    GEMV_NORM_SWIGLU = 2, /* y = silu(g) · u with [g | u] = rmsnorm(x) · Wᵀ, W = [gate; up] */
};

/* Rows of W one warp dots, 16-byte steps along K it loads per loop iteration, and the blocks
 * per SM its registers are capped for. x comes from L1/L2 next to every weight load and each x
 * value a lane loads serves ROWS rows, so more rows keep the load/store pipe from being the
 * limit; more resident warps keep more loads in flight. One row of x (decode) takes 8 rows ×
 * 1 step and two rows 4 × 1, all at 3 blocks (24 warps) per SM: measured best over 12 and
 * 9 shapes on 36 layers of Qwen3-4B projections in a graph (docs/KERNELS.md, "GEMV shape
 * sweep"). More rows of x hold more accumulators: 2 × 1 (faster than the 2 × 2 at one block
 * it replaced at every M from 3 to 8). */
template <int M> struct gemv_shape {
    static constexpr int ROWS = M == 1 ? 8 : M == 2 ? 4 : 2;
    static constexpr int STEPS = 1;
    static constexpr int MIN_BLOCKS = 3;
};

/* Row r of a warp's row group `group`: consecutive rows, or for the SwiGLU epilogue R/2 gate
 * rows and the R/2 up rows that pair with them (gate row j with up row N/2 + j). */
template <int R, int EPI>
__device__ __forceinline__ int64_t gemv_row(int64_t group, int r, int64_t N)
{
    if constexpr (EPI == GEMV_NORM_SWIGLU)
        return (r < R / 2 ? 0 : N / 2) + group * (R / 2) + r % (R / 2);
    else
        return group * R + r;
}

/* The norm weights matching one 16-byte weight load (E of them), as floats. */
template <bool BF16>
__device__ __forceinline__ pk_vec16<BF16> gemv_load_norm16(const void *norm_w, bool norm_bf16,
                                                         int64_t k)
{
    constexpr int E = BF16 ? 8 : 4;
    pk_vec16<BF16> r;
    if (norm_bf16) {
        const uint16_t *p = (const uint16_t *)norm_w + k;
        uint32_t u[E / 2];
        if constexpr (E == 8) {
            uint4 q = __ldg((const uint4 *)p);
            u[0] = q.x, u[1] = q.y, u[2] = q.z, u[3] = q.w;
        } else {
            uint2 q = __ldg((const uint2 *)p);
            u[0] = q.x, u[1] = q.y;
        }
#pragma unroll
        for (int i = 0; i < E / 2; i++) {
            r.v[2 * i] = __uint_as_float(u[i] << 16);
            r.v[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
        }
    } else {
        r = pk_load_x16<BF16>((const float *)norm_w + k);
    }
    return r;
}

/* The weights of U 16-byte steps from k0 (those before kvec) of each of the R rows. */
template <int U, int R>
__device__ __forceinline__ void gemv_load_steps(uint4 (&wq)[U][R], const char *const (&wrow)[R],
                                                int64_t k0, int64_t step, int64_t kvec,
                                                size_t welem, bool active)
{
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
        for (int r = 0; r < R; r++)
            if (active && k0 + u * step < kvec)
                wq[u][r] = pk_load_weights16(wrow[r] + (size_t)(k0 + u * step) * welem);
}

/* One 16-byte step of every row at column k (E elements): acc[m][r] += W[r] · x[m] over the
 * step, with x scaled by the norm weights (and x² summed into ss) for the fused norm. */
template <int M, int R, bool BF16, bool NORM>
__device__ __forceinline__ void gemv_dot_step(float (&acc)[M][R], float (&ss)[M],
                                              const uint4 (&wq)[R], const gemv_args &a, int64_t k)
{
    constexpr int E = BF16 ? 8 : 4;
    pk_vec16<BF16> g;
    if constexpr (NORM)
        g = gemv_load_norm16<BF16>(a.norm_w, a.norm_bf16, k);
#pragma unroll
    for (int m = 0; m < M; m++) {
        pk_vec16<BF16> xv = pk_load_x16<BF16>(a.x + m * a.xs + k);
        if constexpr (NORM) {
#pragma unroll
            for (int e = 0; e < E; e++) {
                ss[m] = fmaf(xv.v[e], xv.v[e], ss[m]);
                xv.v[e] *= g.v[e];
            }
        }
#pragma unroll
        for (int r = 0; r < R; r++)
            acc[m][r] += pk_dot16<BF16>(pk_unpack16<BF16>(wq[r]), xv);
    }
}

/*
 * The end of a GEMV block: each warp's sums over its lanes, the row group's splits added in
 * split order through shared memory, the norm's scale, and lane r of each row group's split-0
 * warp writing output r (silu(g) · u for the SwiGLU epilogue).
 */
template <int M, int R, int EPI>
__device__ __forceinline__ void gemv_finish(const gemv_args &a, float (&acc)[M][R],
                                            float (&ss)[M], int64_t n0, int64_t rows)
{
    constexpr bool NORM = EPI != GEMV_PLAIN;
    __shared__ float partial[GEMV_WARPS][M][R];
    __shared__ float partial_ss[GEMV_WARPS][M];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, S = a.splits;
    const int split = warp % S;
#pragma unroll
    for (int m = 0; m < M; m++) {
#pragma unroll
        for (int r = 0; r < R; r++) {
            float v = pk_warp_sum(acc[m][r]);
            if (lane == 0)
                partial[warp][m][r] = v;
        }
        if constexpr (NORM) {
            float v = pk_warp_sum(ss[m]);
            if (lane == 0)
                partial_ss[warp][m] = v;
        }
    }
    __syncthreads();
    float inv_rms[M]; /* of this warp's row group, from its splits in split order */
#pragma unroll
    for (int m = 0; m < M; m++) {
        inv_rms[m] = 1.0f;
        if constexpr (NORM) {
            const int first = warp - split;
            float total = 0.0f;
            for (int s = 0; s < S; s++)
                total += partial_ss[first + s][m];
            inv_rms[m] = 1.0f / sqrtf(total / (float)a.K + a.eps);
        }
    }
    if (NORM && blockIdx.x == 0 && a.h != NULL) { /* rmsnorm(x) itself, as rmsnorm_kernel */
        for (int m = 0; m < M; m++) {
            float inv = 0.0f; /* row group 0's (warps 0 .. S-1): every row group sees all K */
            for (int s = 0; s < S; s++)
                inv += partial_ss[s][m];
            inv = 1.0f / sqrtf(inv / (float)a.K + a.eps);
            for (int64_t k = threadIdx.x; k < a.K; k += blockDim.x)
                a.h[m * a.hs + k] = (a.x[m * a.xs + k] * inv) * pk_load(a.norm_w, a.norm_bf16, k);
        }
    }
    if (split != 0)
        return;
    /* lane r of each row group's split-0 warp finishes its row r */
#pragma unroll
    for (int m = 0; m < M; m++) {
        float total = 0.0f; /* in split order */
        if (lane < R)
            for (int s = 0; s < S; s++)
                total += partial[warp + s][m][lane];
        total *= inv_rms[m];
        if constexpr (EPI == GEMV_NORM_SWIGLU) {
            float up = __shfl_down_sync(0xffffffffu, total, R / 2);
            if (lane < R / 2 && n0 + lane < rows)
                a.y[m * a.ys + n0 + lane] = pk_silu_mul(total, up);
        } else if (lane < R && n0 + lane < rows) {
            float *dst = a.y + m * a.ys + n0 + lane;
            *dst = a.accumulate ? *dst + total : total;
        }
    }
}

/*
 * A warp computes ROWS output columns (rows gemv_row(group, 0 .. ROWS - 1) of W) over its share
 * of K; `splits` warps of one block share each row group (splits = 1, 2, 4 or 8), their lanes
 * interleaving over K: lane l of split s reads elements [(s·32 + l)·E, +E) of every
 * splits·32·E-element step with one 16-byte load per row (VEC: W rows, x rows and g start
 * 16-byte aligned; the K % E tail is read one element per lane). A loop iteration first issues
 * STEPS × ROWS loads, then loads each x value once for all ROWS rows. Splitting K gives short
 * matrices enough warps to keep the memory system busy; partial sums meet in shared memory and
 * are added in split order, so results do not depend on timing.
 *
 * The fused norm (EPI != GEMV_PLAIN; M <= 2, VEC) has no prologue, so the weight loads start at
 * once: the warps of a row group see every x value exactly once between them, so they dot W
 * with x · norm_w and sum x² on the way; the totals are then scaled by rsqrt(mean(x²) + eps)
 * (Σ w·(x·inv)·g = inv · Σ w·x·g: the same value up to fp32 rounding order). The SwiGLU
 * epilogue pairs each gate row with its up row in one warp, so the finishing lane writes
 * silu(g) · u.
 */
template <int M, bool BF16, bool VEC, int EPI>
__global__ void __launch_bounds__(GEMV_WARPS * 32, gemv_shape<M>::MIN_BLOCKS) gemv_kernel(gemv_args a)
{
    constexpr int E = BF16 ? 8 : 4;
    constexpr int R = gemv_shape<M>::ROWS, U = gemv_shape<M>::STEPS;
    constexpr bool NORM = EPI != GEMV_PLAIN;
    const size_t welem = BF16 ? 2 : 4;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, S = a.splits;
    const int split = warp % S;
    const int64_t group = (int64_t)blockIdx.x * (GEMV_WARPS / S) + warp / S;
    const int64_t rows = EPI == GEMV_NORM_SWIGLU ? a.N / 2 : a.N;      /* outputs */
    const int64_t n0 = group * (EPI == GEMV_NORM_SWIGLU ? R / 2 : R); /* first output */
    const int64_t step = (int64_t)S * 32 * E;
    const char *wrow[R];
#pragma unroll
    for (int r = 0; r < R; r++) { /* rows past the end read row 0 and are not written */
        int64_t n = gemv_row<R, EPI>(group, r, a.N);
        wrow[r] = (const char *)a.w + (size_t)((n0 < rows && n < a.N ? n : 0) * a.ws) * welem;
    }
    float acc[M][R], ss[M];
#pragma unroll
    for (int m = 0; m < M; m++) {
        ss[m] = 0.0f;
#pragma unroll
        for (int r = 0; r < R; r++)
            acc[m][r] = 0.0f;
    }

    pk_pdl_launch_dependents();
    int64_t tail_start = 0;
    if (VEC) {
        /* The first weights are loaded before waiting for the previous kernel (the weights are
         * read-only): under a programmatic launch they stream while it finishes. */
        const int64_t kvec = a.K / E * E;
        int64_t k0 = ((int64_t)split * 32 + lane) * E;
        uint4 wq[U][R];
        gemv_load_steps<U, R>(wq, wrow, k0, step, kvec, welem, n0 < rows);
        pk_pdl_wait();
        for (; n0 < rows && k0 < kvec; k0 += U * step) {
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int64_t k = k0 + u * step;
                if (k >= kvec)
                    break;
                gemv_dot_step<M, R, BF16, NORM>(acc, ss, wq[u], a, k);
            }
            gemv_load_steps<U, R>(wq, wrow, k0 + U * step, step, kvec, welem, true);
        }
        tail_start = kvec;
    } else {
        pk_pdl_wait();
    }
    for (int64_t k = tail_start + (int64_t)split * 32 + lane; n0 < rows && k < a.K;
         k += (int64_t)S * 32) {
#pragma unroll
        for (int m = 0; m < M; m++) {
            float xi = __ldg(a.x + m * a.xs + k);
            if constexpr (NORM) {
                ss[m] = fmaf(xi, xi, ss[m]);
                xi *= pk_load(a.norm_w, a.norm_bf16, k);
            }
#pragma unroll
            for (int r = 0; r < R; r++)
                acc[m][r] = fmaf(pk_load(wrow[r], BF16, k), xi, acc[m][r]);
        }
    }
    gemv_finish<M, R, EPI>(a, acc, ss, n0, rows);
}

/*
 * gemv_kernel for one row of x and BF16 weights, with the weights streamed through shared
 * memory by the copy engine instead of registers. A warp's 16-byte steps (splits as in
 * gemv_kernel) cover 8 rows × GEMV_TMA_COLS columns of W — its 32 lanes' 512 bytes of each row —
 * which is one box of a 2-D tensor map over W (two boxes of 4 rows for the SwiGLU epilogue:
 * the gate rows and the up rows that pair with them). Lane 0 keeps D boxes in flight in the
 * warp's ring of D × 4 KB; the first D are requested before the programmatic wait, so they
 * stream while the kernel before finishes. No register holds a load in flight, so an SM keeps
 * 3 blocks × 8 warps × D boxes in flight (192 KB at D = 2) where gemv_kernel's registers hold
 * 96 KB. Boxes past K or N arrive as zeros; the lanes past K skip their step.
 */
static constexpr int GEMV_TMA_COLS = 256;                       /* columns of W in a box */
static constexpr int GEMV_TMA_ROWS = 8;                         /* rows of W in a warp's step */
static constexpr int GEMV_TMA_BOX = GEMV_TMA_ROWS * GEMV_TMA_COLS * 2; /* bytes */
static constexpr int GEMV_TMA_DEPTH = 2; /* boxes in flight a warp */
static constexpr int GEMV_TMA_SMEM = GEMV_WARPS * GEMV_TMA_DEPTH * GEMV_TMA_BOX; /* a block's */
/* gemv_tma_kernel's warps per SM for the split rule (gemv_splits): its loads in flight do not
 * depend on its warps, so fewer, longer warps lose nothing; measured on an H200 in a Qwen3-4B
 * step with every projection on it (docs/KERNELS.md, "Tenth session"): at 16 the gate/up
 * projection is one wave of 304 blocks and streams its 99.6 MB in 24.2 us after its wait,
 * against 27.2 us for 608 blocks at gemv_kernel's 32. */
static constexpr int GEMV_TMA_TARGET = 16;

template <int EPI>
__global__ void __launch_bounds__(GEMV_WARPS * 32, 3)
    gemv_tma_kernel(const __grid_constant__ CUtensorMap wmap, gemv_args a)
{
    constexpr int R = GEMV_TMA_ROWS, D = GEMV_TMA_DEPTH, BOX = GEMV_TMA_BOX;
    constexpr bool NORM = EPI != GEMV_PLAIN;
    extern __shared__ __align__(128) unsigned char gemv_ring[];
    __shared__ uint64_t box_ready[GEMV_WARPS][D];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, S = a.splits;
    const int split = warp % S;
    const int64_t group = (int64_t)blockIdx.x * (GEMV_WARPS / S) + warp / S;
    const int64_t rows = EPI == GEMV_NORM_SWIGLU ? a.N / 2 : a.N;      /* outputs */
    const int64_t n0 = group * (EPI == GEMV_NORM_SWIGLU ? R / 2 : R); /* first output */
    const int boxes_k = (int)((a.K + GEMV_TMA_COLS - 1) / GEMV_TMA_COLS);
    /* this warp's boxes: columns (split + j·S)·GEMV_TMA_COLS for j = 0 .. boxes - 1 */
    const int boxes = n0 < rows && split < boxes_k ? (boxes_k - split + S - 1) / S : 0;
    unsigned char *ring = gemv_ring + (size_t)warp * D * BOX;
    uint64_t *ready = box_ready[warp];
    auto request = [&](int j) { /* lane 0: box j into slot j % D */
        const int slot = j % D, c0 = (split + j * S) * GEMV_TMA_COLS;
        unsigned char *dst = ring + slot * BOX;
        pk_mbar_expect_bytes(&ready[slot], BOX);
        if constexpr (EPI == GEMV_NORM_SWIGLU) {
            pk_tensor_load_2d(dst, &wmap, c0, (int)n0, &ready[slot]);
            pk_tensor_load_2d(dst + BOX / 2, &wmap, c0, (int)(a.N / 2 + n0), &ready[slot]);
        } else {
            pk_tensor_load_2d(dst, &wmap, c0, (int)n0, &ready[slot]);
        }
    };

    pk_pdl_launch_dependents();
    if (lane == 0) {
        for (int slot = 0; slot < D; slot++)
            pk_mbar_init(&ready[slot], 1);
        pk_mbar_init_fence();
        for (int j = 0; j < D && j < boxes; j++)
            request(j);
    }
    __syncwarp();
    float acc[1][R], ss[1] = {0.0f};
#pragma unroll
    for (int r = 0; r < R; r++)
        acc[0][r] = 0.0f;
    pk_pdl_wait();
    for (int j = 0; j < boxes; j++) {
        const int slot = j % D;
        pk_mbar_wait(&ready[slot], (unsigned)(j / D) & 1u);
        const unsigned char *mine = ring + slot * BOX + lane * 16;
        uint4 wq[R];
#pragma unroll
        for (int r = 0; r < R; r++)
            wq[r] = *(const uint4 *)(mine + r * GEMV_TMA_COLS * 2);
        const int64_t k = (int64_t)(split + j * S) * GEMV_TMA_COLS + lane * 8;
        if (k < a.K) /* K % 8 == 0: a lane's 8 columns are all in or all out */
            gemv_dot_step<1, R, true, NORM>(acc, ss, wq, a, k);
        __syncwarp(); /* the slot is read: refill it */
        if (lane == 0 && j + D < boxes)
            request(j + D);
    }
    gemv_finish<1, R, EPI>(a, acc, ss, n0, rows);
}

/*
 * Warps per row group: K is split until there are about `target` warps per SM in all, as long
 * as every split still gets at least two 16-byte steps of each row. The targets were measured
 * on an H100 at Qwen3-4B's decode shapes (docs/KERNELS.md, "GEMV split sweep"): one row of x
 * wants 32 warps per SM for matrices of up to 32 row groups per SM (fewer, longer blocks) and
 * 96 above (short blocks even out the tail of many waves); two rows of x hold twice the
 * accumulators and want 16. With the 8-row groups of one row of x every Qwen3-4B projection
 * but the lm_head is under the 32 (gate/up included), and the targets 24 and 32 tie and 48
 * loses on the decode chain.
 */
template <int M>
static int gemv_splits(int64_t N, int64_t K, bool bf16, int sm_count, int target_override)
{
    int64_t per_step = 32 * (bf16 ? 8 : 4);
    int64_t groups = (N + gemv_shape<M>::ROWS - 1) / gemv_shape<M>::ROWS;
    int64_t target = target_override > 0 ? target_override
                     : M >= 2                                                  ? 16
                     : groups >= PK_CUDA_GEMV_MANY_WAVES * (int64_t)sm_count ? 96
                                                                               : 32;
    return pk_k_splits(groups, K, per_step, (int64_t)sm_count * target, GEMV_WARPS);
}

/* The tensor map of gemv_tma_kernel over W (BF16, [N, K], rows ws elements apart), or false
 * where st->gemv_tma leaves this matrix to gemv_kernel or the driver cannot encode one. */
static bool gemv_tensor_map(const pk_cuda_state *st, const gemv_args &a, int box_rows,
                            CUtensorMap *map)
{
    const int64_t groups = (a.N + GEMV_TMA_ROWS - 1) / GEMV_TMA_ROWS;
    const bool many_waves = groups >= PK_CUDA_GEMV_MANY_WAVES * (int64_t)st->sm_count;
    if (st->encode_tensor_map == NULL || st->gemv_tma == PK_CUDA_GEMV_TMA_OFF ||
        (st->gemv_tma == PK_CUDA_GEMV_TMA_MANY_WAVES && !many_waves) ||
        a.K % 8 != 0 || a.K < GEMV_TMA_COLS ||
        a.N < GEMV_TMA_ROWS || a.N > INT32_MAX || a.K > INT32_MAX || a.ws % 8 != 0 ||
        !pk_aligned16(a.w))
        return false;
    cuuint64_t dims[2] = {(cuuint64_t)a.K, (cuuint64_t)a.N};
    cuuint64_t row_bytes[1] = {(cuuint64_t)a.ws * 2};
    cuuint32_t box[2] = {GEMV_TMA_COLS, (cuuint32_t)box_rows};
    cuuint32_t elem_strides[2] = {1, 1};
    PFN_cuTensorMapEncodeTiled_v12000 encode =
        (PFN_cuTensorMapEncodeTiled_v12000)st->encode_tensor_map;
    return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void *)a.w, dims, row_bytes, box,
                  elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                  CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <int M, bool BF16, int EPI>
static cudaError_t launch_gemv_m(bool vec, gemv_args a, const pk_cuda_state *st)
{
    CUtensorMap map;
    static_assert(gemv_shape<1>::ROWS == GEMV_TMA_ROWS, "gemv_tma_kernel's row groups");
    const bool tma =
        M == 1 && BF16 && vec &&
        gemv_tensor_map(st, a, EPI == GEMV_NORM_SWIGLU ? GEMV_TMA_ROWS / 2 : GEMV_TMA_ROWS, &map);
    const int target = st->gemv_target > 0 ? st->gemv_target : tma ? GEMV_TMA_TARGET : 0;
    a.splits = gemv_splits<M>(a.N, a.K, BF16, st->sm_count, target);
    int64_t rows_per_block = (int64_t)(GEMV_WARPS / a.splits) * gemv_shape<M>::ROWS;
    dim3 blocks((unsigned)((a.N + rows_per_block - 1) / rows_per_block));
    dim3 threads(GEMV_WARPS * 32);
    if (tma)
        return pk_cuda_launch_pdl(st, gemv_tma_kernel<EPI>, blocks, threads, GEMV_TMA_SMEM, map,
                                  a);
    if (EPI != GEMV_PLAIN || vec)
        return pk_cuda_launch_pdl(st, gemv_kernel<M, BF16, true, EPI>, blocks, threads, 0, a);
    return pk_cuda_launch_pdl(st, gemv_kernel<M, BF16, false, GEMV_PLAIN>, blocks, threads, 0, a);
}

template <bool BF16>
static cudaError_t launch_gemv(int m, bool vec, const gemv_args &a, const pk_cuda_state *st)
{
    switch (m) {
    case 1: return launch_gemv_m<1, BF16, GEMV_PLAIN>(vec, a, st);
    case 2: return launch_gemv_m<2, BF16, GEMV_PLAIN>(vec, a, st);
    case 3: return launch_gemv_m<3, BF16, GEMV_PLAIN>(vec, a, st);
    case 4: return launch_gemv_m<4, BF16, GEMV_PLAIN>(vec, a, st);
    case 5: return launch_gemv_m<5, BF16, GEMV_PLAIN>(vec, a, st);
    case 6: return launch_gemv_m<6, BF16, GEMV_PLAIN>(vec, a, st);
    case 7: return launch_gemv_m<7, BF16, GEMV_PLAIN>(vec, a, st);
    default: return launch_gemv_m<8, BF16, GEMV_PLAIN>(vec, a, st);
    }
}

/* The operands of y = x · wᵀ as a GEMV launch takes them (no epilogue, no accumulation). */
static gemv_args make_gemv_args(const pk_tensor *y, const pk_tensor *x, const pk_tensor *w)
{
    gemv_args a = {};
    a.y = (float *)y->data;
    a.ys = y->stride;
    a.x = (const float *)x->data;
    a.xs = x->stride;
    a.w = w->data;
    a.ws = w->stride;
    a.N = y->cols;
    a.K = x->cols;
    return a;
}

/* Rows of x in chunks of GEMV_MAX_M (one chunk for decode); the first launch error, or
 * cudaSuccess. */
static cudaError_t run_gemv(pk_cuda_state *st, const pk_tensor *y, const pk_tensor *x,
                            const pk_tensor *w, int accumulate)
{
    bool bf16 = pk_is_bf16(w);
    int64_t per16 = bf16 ? 8 : 4;
    bool vec = pk_aligned16(w->data) && w->stride % per16 == 0 && pk_aligned16(x->data) &&
               x->stride % 4 == 0;
    cudaError_t e = cudaSuccess;
    for (int64_t m0 = 0; m0 < y->rows && e == cudaSuccess; m0 += GEMV_MAX_M) {
        int m = (int)(y->rows - m0 < GEMV_MAX_M ? y->rows - m0 : GEMV_MAX_M);
        pk_tensor ym = pk_tensor_rows(y, m0, m), xm = pk_tensor_rows(x, m0, m);
        gemv_args a = make_gemv_args(&ym, &xm, w);
        a.accumulate = accumulate;
        e = bf16 ? launch_gemv<true>(m, vec, a, st) : launch_gemv<false>(m, vec, a, st);
    }
    return e;
}

/* ------------------------------------------------------------------------------------------ */
/* cuBLASLt                                                                                   */
/* ------------------------------------------------------------------------------------------ */

struct pk_cuda_matmul_plan {
    bool used;
    bool has_algo; /* false: the heuristic found nothing, the GEMV kernel serves this shape */
    int64_t m, n, k, lda, ldb, ldc;
    int w_dtype, accumulate;
    int c_bf16; /* the product is written as bf16 (else f32) */
    unsigned align_a, align_b, align_c;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};

static void destroy_plan(pk_cuda_matmul_plan *p)
{
    if (p->a != NULL)
        cublasLtMatrixLayoutDestroy(p->a);
    if (p->b != NULL)
        cublasLtMatrixLayoutDestroy(p->b);
    if (p->c != NULL)
        cublasLtMatrixLayoutDestroy(p->c);
    memset(p, 0, sizeof *p);
}

/* Lets gemv_tma_kernel's blocks use their shared memory (over the 48 KB default). */
template <int EPI> static cudaError_t gemv_tma_allow_smem(void)
{
    return cudaFuncSetAttribute(gemv_tma_kernel<EPI>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                GEMV_TMA_SMEM);
}

pio_status pk_cuda_matmul_init(pk_context *ctx, pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    st->plans = (pk_cuda_matmul_plan *)calloc(PK_CUDA_PLAN_CACHE, sizeof *st->plans);
    if (st->plans == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "pk_context_create: out of memory");
    /* A GPU that cannot give gemv_tma_kernel its shared memory runs every GEMV on gemv_kernel. */
    if (st->encode_tensor_map != NULL &&
        (GEMV_TMA_SMEM > st->max_smem_optin || gemv_tma_allow_smem<GEMV_PLAIN>() ||
         gemv_tma_allow_smem<GEMV_NORM>() || gemv_tma_allow_smem<GEMV_NORM_SWIGLU>())) {
        (void)cudaGetLastError();
        st->encode_tensor_map = NULL;
    }
    cublasStatus_t cs = cublasLtMatmulDescCreate(&st->lt_desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    if (cs == CUBLAS_STATUS_SUCCESS)
        cs = cublasLtMatmulDescSetAttribute(st->lt_desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta,
                                            sizeof ta);
    if (cs == CUBLAS_STATUS_SUCCESS)
        cs = cublasLtMatmulDescSetAttribute(st->lt_desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb,
                                            sizeof tb);
    if (cs != CUBLAS_STATUS_SUCCESS)
        return pio_error_set(err, PIO_ERR_DEVICE, "pk_context_create: cuBLASLt matmul "
                             "descriptor: %s", cublasLtGetStatusString(cs));
    return PIO_OK;
}

void pk_cuda_matmul_fini(pk_context *ctx)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    if (st->plans != NULL) {
        for (int i = 0; i < PK_CUDA_PLAN_CACHE; i++)
            if (st->plans[i].used)
                destroy_plan(&st->plans[i]);
        free(st->plans);
        st->plans = NULL;
    }
    if (st->lt_desc != NULL)
        cublasLtMatmulDescDestroy(st->lt_desc);
    st->lt_desc = NULL;
}

/* The largest power of two up to 256 dividing the address: what cuBLASLt may assume. */
static unsigned alignment_of(const void *p)
{
    uintptr_t v = (uintptr_t)p;
    unsigned a = 256;
    while (a > 1 && v % a != 0)
        a >>= 1;
    return a;
}

static cublasStatus_t make_plan(pk_cuda_state *st, pk_cuda_matmul_plan *p)
{
    cudaDataType_t wt = p->w_dtype == PIO_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasStatus_t cs =
        cublasLtMatrixLayoutCreate(&p->a, wt, (uint64_t)p->k, (uint64_t)p->n, p->lda);
    if (cs == CUBLAS_STATUS_SUCCESS)
        cs = cublasLtMatrixLayoutCreate(&p->b, wt, (uint64_t)p->k, (uint64_t)p->m, p->ldb);
    if (cs == CUBLAS_STATUS_SUCCESS)
        cs = cublasLtMatrixLayoutCreate(&p->c, p->c_bf16 ? CUDA_R_16BF : CUDA_R_32F,
                                        (uint64_t)p->n, (uint64_t)p->m, p->ldc);
    cublasLtMatmulPreference_t pref = NULL;
    if (cs == CUBLAS_STATUS_SUCCESS)
        cs = cublasLtMatmulPreferenceCreate(&pref);
    uint64_t ws = st->lt_workspace_bytes;
    uint32_t aa = p->align_a, ab = p->align_b, ac = p->align_c;
    if (cs == CUBLAS_STATUS_SUCCESS)
        cs = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                  &ws, sizeof ws);
    if (cs == CUBLAS_STATUS_SUCCESS)
        cs = cublasLtMatmulPreferenceSetAttribute(
            pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof aa);
    if (cs == CUBLAS_STATUS_SUCCESS)
        cs = cublasLtMatmulPreferenceSetAttribute(
            pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof ab);
    if (cs == CUBLAS_STATUS_SUCCESS)
        cs = cublasLtMatmulPreferenceSetAttribute(
            pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof ac);
    if (cs == CUBLAS_STATUS_SUCCESS)
        cs = cublasLtMatmulPreferenceSetAttribute(
            pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof ac);
    if (cs == CUBLAS_STATUS_SUCCESS) {
        cublasLtMatmulHeuristicResult_t result;
        int found = 0;
        cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(st->lt, st->lt_desc, p->a, p->b, p->c,
                                                           p->c, pref, 1, &result, &found);
        p->has_algo = hs == CUBLAS_STATUS_SUCCESS && found > 0;
        if (p->has_algo)
            p->algo = result.algo;
    }
    if (pref != NULL)
        cublasLtMatmulPreferenceDestroy(pref);
    return cs;
}

/* The cached plan of this problem, made on first use; NULL with err set on failure. */
static pk_cuda_matmul_plan *plan_for(pk_cuda_state *st, const pk_cuda_matmul_plan *key,
                                     pio_error *err, const char *op)
{
    for (int i = 0; i < PK_CUDA_PLAN_CACHE; i++) {
        pk_cuda_matmul_plan *p = &st->plans[i];
        if (p->used && p->m == key->m && p->n == key->n && p->k == key->k &&
            p->lda == key->lda && p->ldb == key->ldb && p->ldc == key->ldc &&
            p->w_dtype == key->w_dtype && p->accumulate == key->accumulate &&
            p->c_bf16 == key->c_bf16 && p->align_a == key->align_a && p->align_b == key->align_b &&
            p->align_c == key->align_c)
            return p;
    }
    pk_cuda_matmul_plan *p = &st->plans[st->next_plan];
    st->next_plan = (st->next_plan + 1) % PK_CUDA_PLAN_CACHE;
    if (p->used)
        destroy_plan(p);
    *p = *key;
    p->a = p->b = p->c = NULL;
    p->used = true;
    cublasStatus_t cs = make_plan(st, p);
    if (cs != CUBLAS_STATUS_SUCCESS) {
        destroy_plan(p);
        pio_error_set(err, PIO_ERR_DEVICE, "%s: cuBLASLt layout setup failed: %s", op,
                      cublasLtGetStatusString(cs));
        return NULL;
    }
    return p;
}

/* x [M, K] F32 -> xb [M, ld] BF16, round to nearest even. */
__global__ void f32_to_bf16_rows(uint16_t *__restrict__ xb, int64_t ld,
                                 const float *__restrict__ x, int64_t xs, int64_t rows,
                                 int64_t cols)
{
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
        for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols;
             c += (int64_t)gridDim.x * blockDim.x)
            xb[r * ld + c] = pk_f32_to_bf16(x[r * xs + c]);
}

/* The same four columns at a time (x rows as float4, ld and xs in elements, multiples of 4):
 * a prefill's operands are tens of MB, and scalar accesses reach about a third of HBM's rate. */
__global__ void f32_to_bf16_rows4(uint16_t *__restrict__ xb, int64_t ld,
                                  const float *__restrict__ x, int64_t xs, int64_t rows,
                                  int64_t cols4)
{
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
        for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols4;
             c += (int64_t)gridDim.x * blockDim.x)
            ((uint2 *)(xb + r * ld))[c] = pk_bf16x4(((const float4 *)(x + r * xs))[c]);
}

/* The bf16 operand of a cuBLASLt product of M rows of K: scratch of M rows padded to 16
 * bytes (*ld elements apart), followed by `extra` bytes for the caller at *extra_at (256-byte
 * aligned; may be NULL when extra is 0). */
static pio_status bf16_operand(pk_context *ctx, int64_t M, int64_t K, size_t extra,
                               const char *op, uint16_t **xb, int64_t *ld, void **extra_at,
                               pio_error *err)
{
    *ld = (K + 7) / 8 * 8; /* 16-byte rows for the tensor-core kernels */
    size_t operand = ((size_t)(M * *ld) * 2 + 255) / 256 * 256;
    void *scratch = NULL;
    pio_status status = pk_cuda_scratch(ctx, operand + extra, op, &scratch, err);
    *xb = (uint16_t *)scratch;
    if (extra_at != NULL)
        *extra_at = (char *)scratch + operand;
    return status;
}

/* The cached cuBLASLt plan of d (+)= b · wᵀ: [m, n] results ldc apart (bf16 with c_bf16, else
 * f32), b [m, k] ldb apart, w's rows; NULL with err set on failure. */
static pk_cuda_matmul_plan *lt_plan(pk_cuda_state *st, const char *op, int64_t m, int64_t n,
                                    int64_t k, const pk_tensor *w, const void *b_data,
                                    int64_t ldb, const void *d_data, int64_t ldc, int c_bf16,
                                    int accumulate, pio_error *err)
{
    pk_cuda_matmul_plan key;
    memset(&key, 0, sizeof key);
    key.m = m;
    key.n = n;
    key.k = k;
    key.lda = w->stride;
    key.ldb = ldb;
    key.ldc = ldc;
    key.w_dtype = w->dtype;
    key.accumulate = accumulate;
    key.c_bf16 = c_bf16;
    key.align_a = alignment_of(w->data);
    key.align_b = alignment_of(b_data);
    key.align_c = alignment_of(d_data);
    return plan_for(st, &key, err, op);
}

/* Runs a plan that has an algorithm: d (+)= b · wᵀ. */
static pio_status lt_run(pk_context *ctx, const char *op, const pk_cuda_matmul_plan *plan,
                         const pk_tensor *w, const void *b_data, void *d_data, int accumulate,
                         pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    cublasStatus_t cs = cublasLtMatmul(st->lt, st->lt_desc, &alpha, w->data, plan->a, b_data,
                                       plan->b, &beta, d_data, plan->c, d_data, plan->c,
                                       &plan->algo, st->lt_workspace, st->lt_workspace_bytes,
                                       st->stream);
    if (cs != CUBLAS_STATUS_SUCCESS) {
        pio_status status = pk_cuda_check_launch(ctx, op, err); /* a sticky CUDA error? */
        if (status != PIO_OK)
            return status;
        return pio_error_set(err, PIO_ERR_DEVICE, "%s: cublasLtMatmul [%lld x %lld x %lld] "
                             "failed: %s", op, (long long)plan->m, (long long)plan->n,
                             (long long)plan->k, cublasLtGetStatusString(cs));
    }
    return pk_cuda_check_launch(ctx, op, err);
}

/* y (+)= b · wᵀ with cuBLASLt, b the [M, K] operand at b_data (row stride ldb; bf16 when w is,
 * else x itself); x, the F32 activations b came from, serves the GEMV fallback when the
 * heuristic has no algorithm for the layout. */
static pio_status lt_matmul(pk_context *ctx, const char *op, const pk_tensor *y,
                            const pk_tensor *x, const void *b_data, int64_t ldb,
                            const pk_tensor *w, int accumulate, pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    pk_cuda_matmul_plan *plan = lt_plan(st, op, y->rows, y->cols, x->cols, w, b_data, ldb,
                                        y->data, y->stride, 0, accumulate, err);
    if (plan == NULL)
        return PIO_ERR_DEVICE;
    if (!plan->has_algo) { /* odd strides or alignment cuBLASLt will not take */
        return pk_cuda_fail(ctx, op, "GEMV launch", run_gemv(st, y, x, w, accumulate),
                            err);
    }
    return lt_run(ctx, op, plan, w, b_data, y->data, accumulate, err);
}

pio_status pk_cuda_matmul(pk_context *ctx, const pk_tensor *y, const pk_tensor *x,
                          const pk_tensor *w, int accumulate, pio_error *err)
{
    const char *op = accumulate ? "pk_matmul_add" : "pk_matmul";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK)
        return status;
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    int64_t M = y->rows, N = y->cols, K = x->cols;
    if (M == 0 || N == 0)
        return PIO_OK;
    if (K == 0) { /* an empty sum: y = 0, or y unchanged */
        if (accumulate)
            return PIO_OK;
        return pk_cuda_fail(ctx, op, "cudaMemset2DAsync",
                            cudaMemset2DAsync(y->data, (size_t)y->stride * 4, 0, (size_t)N * 4,
                                              (size_t)M, st->stream),
                            err);
    }
    if (M <= st->gemv_max_m) {
        return pk_cuda_fail(ctx, op, "GEMV launch", run_gemv(st, y, x, w, accumulate),
                            err);
    }
    if (!pk_is_bf16(w))
        return lt_matmul(ctx, op, y, x, x->data, x->stride, w, accumulate, err);
    uint16_t *xb = NULL;
    int64_t ld = 0;
    if ((status = bf16_operand(ctx, M, K, 0, op, &xb, &ld, NULL, err)) != PIO_OK)
        return status;
    const unsigned rows = (unsigned)(M < 65535 ? M : 65535);
    if (pk_rows_vec4(x) && K % 4 == 0) /* ld is a multiple of 8 */
        f32_to_bf16_rows4<<<dim3(pk_blocks_for(K / 4, 256, 64), rows), 256, 0, st->stream>>>(
            xb, ld, (const float *)x->data, x->stride, M, K / 4);
    else
        f32_to_bf16_rows<<<dim3(pk_blocks_for(K, 256, 64), rows), 256, 0, st->stream>>>(
            xb, ld, (const float *)x->data, x->stride, M, K);
    if ((status = pk_cuda_check_launch(ctx, op, err)) != PIO_OK)
        return status;
    return lt_matmul(ctx, op, y, x, xb, ld, w, accumulate, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Fused pre-norm + projection (+ SwiGLU)                                                     */
/* ------------------------------------------------------------------------------------------ */

/* Whether the GEMV with the fused norm takes this call: decode-sized M, 16-byte aligned weight
 * rows, x rows and norm weights, and h (written by block 0 while every block reads x) apart
 * from x. */
static bool fused_norm_gemv_fits(const pk_cuda_state *st, const pk_tensor *out,
                                 const pk_tensor *y, const pk_tensor *h, const pk_tensor *x,
                                 const pk_tensor *norm_weight, const pk_tensor *w)
{
    int64_t M = y->rows, K = x->cols;
    int64_t per16 = pk_is_bf16(w) ? 8 : 4;
    if (M < 1 || M > 2 || M > st->gemv_max_m || K == 0 || y->cols == 0)
        return false;
    if (!pk_aligned16(w->data) || w->stride % per16 != 0 || !pk_aligned16(x->data) ||
        x->stride % 4 != 0 || !pk_aligned16(norm_weight->data))
        return false;
    if (out != NULL)
        return y->cols % 2 == 0;
    return pk_tensor_span_bytes(h) == 0 || pk_tensor_span_bytes(x) == 0 ||
           (uintptr_t)h->data + pk_tensor_span_bytes(h) <= (uintptr_t)x->data ||
           (uintptr_t)x->data + pk_tensor_span_bytes(x) <= (uintptr_t)h->data;
}

/* out[r, c] = silu(gate) · up of a [gate | up] product held as bf16 (rows gus elements apart,
 * up F = 4·f4 columns after gate), four columns at a time. */
__global__ void swiglu_bf16_rows4(float *__restrict__ out, int64_t os,
                                  const uint16_t *__restrict__ gu, int64_t gus, int64_t rows,
                                  int64_t f4)
{
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
        for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < f4;
             c += (int64_t)gridDim.x * blockDim.x) {
            const uint2 g = ((const uint2 *)(gu + r * gus))[c];
            const uint2 u = ((const uint2 *)(gu + r * gus + 4 * f4))[c];
            ((float4 *)(out + r * os))[c] = make_float4(
                pk_silu_mul(__uint_as_float(g.x << 16), __uint_as_float(u.x << 16)),
                pk_silu_mul(__uint_as_float(g.x & 0xffff0000u), __uint_as_float(u.x & 0xffff0000u)),
                pk_silu_mul(__uint_as_float(g.y << 16), __uint_as_float(u.y << 16)),
                pk_silu_mul(__uint_as_float(g.y & 0xffff0000u), __uint_as_float(u.y & 0xffff0000u)));
        }
}

/*
 * The prefill path of pk_rmsnorm_matmul_swiglu with BF16 weights: the norm writes the bf16
 * operand, cuBLASLt writes [gate | up] as bf16 into scratch after it (the op leaves gate_up's
 * contents unspecified, so gate_up itself is not written), and one pass applies SwiGLU. Per
 * element of out the product's f32 writes and SwiGLU's f32 reads (16 bytes) become bf16 (8);
 * gate and up are rounded to bf16 once, as a bf16 model's reference does. *taken = false (and
 * nothing done) where the shapes do not fit the four-column pass or cuBLASLt has no algorithm
 * for the bf16 layout: the caller takes the f32 path.
 */
static pio_status norm_matmul_swiglu_bf16(pk_context *ctx, const char *op, const pk_tensor *out,
                                          const pk_tensor *h, const pk_tensor *x,
                                          const pk_tensor *norm_weight, float eps,
                                          const pk_tensor *w, bool *taken, pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    const int64_t M = out->rows, F = out->cols, K = x->cols;
    *taken = false;
    if (M <= st->gemv_max_m || !pk_is_bf16(w) || F == 0 || F % 4 != 0 || !pk_rows_vec4(out))
        return PIO_OK;
    uint16_t *xb = NULL;
    void *gu = NULL;
    int64_t ld = 0;
    pio_status status =
        bf16_operand(ctx, M, K, (size_t)(M * 2 * F) * 2, op, &xb, &ld, &gu, err);
    if (status != PIO_OK)
        return status;
    pk_cuda_matmul_plan *plan = lt_plan(st, op, M, 2 * F, K, w, xb, ld, gu, 2 * F, 1, 0, err);
    if (plan == NULL)
        return PIO_ERR_DEVICE;
    if (!plan->has_algo)
        return PIO_OK;
    *taken = true;
    if ((status = pk_cuda_rmsnorm_bf16(ctx, op, h, x, norm_weight, eps, xb, ld, err)) != PIO_OK ||
        (status = lt_run(ctx, op, plan, w, xb, gu, 0, err)) != PIO_OK)
        return status;
    dim3 grid(pk_blocks_for(F / 4, 256, 64), (unsigned)(M < 65535 ? M : 65535));
    swiglu_bf16_rows4<<<grid, 256, 0, st->stream>>>((float *)out->data, out->stride,
                                                   (const uint16_t *)gu, 2 * F, M, F / 4);
    return pk_cuda_check_launch(ctx, op, err);
}

/* The unfused pair: for a cuBLASLt product with BF16 weights the norm also writes the bf16
 * operand (no conversion pass); otherwise the two ops. */
static pio_status norm_then_matmul(pk_context *ctx, const char *op, const pk_tensor *y,
                                   const pk_tensor *h, const pk_tensor *x,
                                   const pk_tensor *norm_weight, float eps, const pk_tensor *w,
                                   pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    if (y->rows <= st->gemv_max_m || !pk_is_bf16(w) || y->cols == 0) {
        pio_status status = pk_cuda_rmsnorm(ctx, h, x, norm_weight, h->cols, eps, err);
        return status != PIO_OK ? status : pk_cuda_matmul(ctx, y, h, w, 0, err);
    }
    uint16_t *xb = NULL;
    int64_t ld = 0;
    pio_status status = bf16_operand(ctx, y->rows, h->cols, 0, op, &xb, &ld, NULL, err);
    if (status == PIO_OK)
        status = pk_cuda_rmsnorm_bf16(ctx, op, h, x, norm_weight, eps, xb, ld, err);
    return status != PIO_OK ? status : lt_matmul(ctx, op, y, h, xb, ld, w, 0, err);
}

pio_status pk_cuda_rmsnorm_matmul(pk_context *ctx, const pk_tensor *out, const pk_tensor *y,
                                  const pk_tensor *h, const pk_tensor *x,
                                  const pk_tensor *norm_weight, float eps, const pk_tensor *w,
                                  pio_error *err)
{
    const char *op = out != NULL ? "pk_rmsnorm_matmul_swiglu" : "pk_rmsnorm_matmul";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK)
        return status;
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    if (!fused_norm_gemv_fits(st, out, y, h, x, norm_weight, w)) {
        bool taken = false;
        if (out != NULL &&
            ((status = norm_matmul_swiglu_bf16(ctx, op, out, h, x, norm_weight, eps, w, &taken,
                                               err)) != PIO_OK ||
             taken))
            return status;
        if ((status = norm_then_matmul(ctx, op, y, h, x, norm_weight, eps, w, err)) ||
            out == NULL)
            return status;
        pk_tensor gate = pk_tensor_cols(y, 0, out->cols);
        pk_tensor up = pk_tensor_cols(y, out->cols, out->cols);
        return pk_cuda_swiglu(ctx, out, &gate, &up, err);
    }
    gemv_args a = make_gemv_args(y, x, w);
    if (out != NULL) { /* the SwiGLU epilogue writes out, N stays W's rows */
        a.y = (float *)out->data;
        a.ys = out->stride;
    }
    a.norm_w = norm_weight->data;
    a.norm_bf16 = pk_is_bf16(norm_weight);
    a.eps = eps;
    a.h = out != NULL ? NULL : (float *)h->data;
    a.hs = h->stride;
    bool bf16 = pk_is_bf16(w);
    int M = (int)y->rows;
    cudaError_t e;
    if (out != NULL)
        e = M == 1 ? (bf16 ? launch_gemv_m<1, true, GEMV_NORM_SWIGLU>(true, a, st)
                           : launch_gemv_m<1, false, GEMV_NORM_SWIGLU>(true, a, st))
                   : (bf16 ? launch_gemv_m<2, true, GEMV_NORM_SWIGLU>(true, a, st)
                           : launch_gemv_m<2, false, GEMV_NORM_SWIGLU>(true, a, st));
    else
        e = M == 1 ? (bf16 ? launch_gemv_m<1, true, GEMV_NORM>(true, a, st)
                           : launch_gemv_m<1, false, GEMV_NORM>(true, a, st))
                   : (bf16 ? launch_gemv_m<2, true, GEMV_NORM>(true, a, st)
                           : launch_gemv_m<2, false, GEMV_NORM>(true, a, st));
    return pk_cuda_fail(ctx, op, "GEMV launch", e, err);
}
