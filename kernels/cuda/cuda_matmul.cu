/*
 * y[M, N] (+)= x[M, K] · w[N, K]^T on the GPU. x and y are F32, w BF16 or F32 in the Hugging
 * Face Linear layout.
 *
 * Two algorithms:
 *   - M <= gemv_max_m (decode; PK_CUDA_GEMV_MAX_M_DEFAULT unless PIO_CUDA_GEMV_MAX_M says
 *     otherwise): a GEMV kernel. One warp per row of W, which it streams once with 16-byte
 *     loads (8 bf16 or 4 f32 per lane, four loads in flight), dotting it with every row of x in
 *     fp32 registers: bound by memory bandwidth at M = 1, and the numerics are the CPU
 *     backend's (fp32 products and sums, only the order differs).
 *   - Larger M (prefill, big batches): cuBLASLt. With BF16 W, x is first rounded to bf16 (round
 *     to nearest even) into a workspace and the product runs on the tensor cores with fp32
 *     accumulation and an F32 output; `accumulate` is beta = 1 on y, so the residual add is
 *     fused. The bf16 rounding of x is the only numerical difference from the CPU backend
 *     (relative error about 1e-3, what Hugging Face's bf16 models do anyway). With F32 W the
 *     product is a plain fp32 GEMM (CUBLAS_COMPUTE_32F, no TF32).
 * cuBLASLt is column-major, so the row-major product is computed as y^T = W · x^T ("TN"):
 * A = W seen as [K, N] (ld = w stride) transposed, B = x seen as [K, M], D = y seen as [N, M].
 * Layouts and the heuristic's choice are cached per shape, stride and alignment.
 */
#include "kernels/cuda/cuda_internal.h"

#include <stdlib.h>
#include <string.h>

static constexpr int GEMV_MAX_M = PK_CUDA_GEMV_MAX_M_LIMIT; /* rows of x per GEMV launch */
static constexpr int GEMV_WARPS = 8;  /* warps (rows of W) per block */
static constexpr int GEMV_UNROLL = 4; /* 16-byte loads in flight per lane */

/* ------------------------------------------------------------------------------------------ */
/* GEMV                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* Eight bf16 values packed in 16 bytes, multiplied with x[k..k+8) and added to acc. */
__device__ __forceinline__ float dot8_bf16(uint4 w, const float *x)
{
    float4 a = __ldg((const float4 *)x), b = __ldg((const float4 *)x + 1);
    float s = __uint_as_float(w.x << 16) * a.x;
    s = fmaf(__uint_as_float(w.x & 0xffff0000u), a.y, s);
    s = fmaf(__uint_as_float(w.y << 16), a.z, s);
    s = fmaf(__uint_as_float(w.y & 0xffff0000u), a.w, s);
    s = fmaf(__uint_as_float(w.z << 16), b.x, s);
    s = fmaf(__uint_as_float(w.z & 0xffff0000u), b.y, s);
    s = fmaf(__uint_as_float(w.w << 16), b.z, s);
    s = fmaf(__uint_as_float(w.w & 0xffff0000u), b.w, s);
    return s;
}

__device__ __forceinline__ float dot4_f32(uint4 w, const float *x)
{
    float4 a = __ldg((const float4 *)x);
    float s = __uint_as_float(w.x) * a.x;
    s = fmaf(__uint_as_float(w.y), a.y, s);
    s = fmaf(__uint_as_float(w.z), a.z, s);
    s = fmaf(__uint_as_float(w.w), a.w, s);
    return s;
}

/*
 * One warp per output column n (a row of W). VEC: W rows and x rows start 16-byte aligned, so
 * lane l reads elements [l·E, l·E + E) of every 32·E-element step with one 16-byte load; the
 * K % E tail is read one element per lane.
 */
template <int M, bool BF16, bool VEC>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_kernel(float *__restrict__ y, int64_t ys, const float *__restrict__ x, int64_t xs,
                const void *__restrict__ wv, int64_t ws, int64_t N, int64_t K, int accumulate)
{
    int64_t n = (int64_t)blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (n >= N)
        return;
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; m++)
        acc[m] = 0.0f;

    int64_t tail_start = 0;
    if (VEC) {
        constexpr int E = BF16 ? 8 : 4;
        constexpr int64_t STEP = 32 * E;
        const char *wrow = (const char *)wv + (size_t)(n * ws) * (BF16 ? 2 : 4);
        int64_t kvec = K / E * E;
        int64_t k = (int64_t)lane * E;
        for (; k + (GEMV_UNROLL - 1) * STEP < kvec; k += GEMV_UNROLL * STEP) {
            uint4 wq[GEMV_UNROLL];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++)
                wq[u] = __ldg((const uint4 *)(wrow + (size_t)(k + u * STEP) * (BF16 ? 2 : 4)));
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++)
#pragma unroll
                for (int m = 0; m < M; m++)
                    acc[m] += BF16 ? dot8_bf16(wq[u], x + m * xs + k + u * STEP)
                                   : dot4_f32(wq[u], x + m * xs + k + u * STEP);
        }
        for (; k < kvec; k += STEP) {
            uint4 wq = __ldg((const uint4 *)(wrow + (size_t)k * (BF16 ? 2 : 4)));
#pragma unroll
            for (int m = 0; m < M; m++)
                acc[m] += BF16 ? dot8_bf16(wq, x + m * xs + k) : dot4_f32(wq, x + m * xs + k);
        }
        tail_start = kvec;
    }
    const void *wrow = (const char *)wv + (size_t)(n * ws) * (BF16 ? 2 : 4);
    for (int64_t k = tail_start + lane; k < K; k += 32) {
        float wk = pk_load(wrow, BF16, k);
#pragma unroll
        for (int m = 0; m < M; m++)
            acc[m] = fmaf(wk, __ldg(x + m * xs + k), acc[m]);
    }
#pragma unroll
    for (int m = 0; m < M; m++)
        acc[m] = pk_warp_sum(acc[m]);
    if (lane == 0) {
#pragma unroll
        for (int m = 0; m < M; m++) {
            float *dst = y + m * ys + n;
            *dst = accumulate ? *dst + acc[m] : acc[m];
        }
    }
}

template <int M, bool BF16>
static void launch_gemv_m(bool vec, float *y, int64_t ys, const float *x, int64_t xs,
                          const void *w, int64_t ws, int64_t N, int64_t K, int accumulate,
                          cudaStream_t stream)
{
    unsigned blocks = (unsigned)((N + GEMV_WARPS - 1) / GEMV_WARPS);
    if (vec)
        gemv_kernel<M, BF16, true><<<blocks, GEMV_WARPS * 32, 0, stream>>>(y, ys, x, xs, w, ws,
                                                                           N, K, accumulate);
    else
        gemv_kernel<M, BF16, false><<<blocks, GEMV_WARPS * 32, 0, stream>>>(y, ys, x, xs, w, ws,
                                                                            N, K, accumulate);
}

template <bool BF16>
static void launch_gemv(int m, bool vec, float *y, int64_t ys, const float *x, int64_t xs,
                        const void *w, int64_t ws, int64_t N, int64_t K, int accumulate,
                        cudaStream_t s)
{
    switch (m) {
    case 1: launch_gemv_m<1, BF16>(vec, y, ys, x, xs, w, ws, N, K, accumulate, s); break;
    case 2: launch_gemv_m<2, BF16>(vec, y, ys, x, xs, w, ws, N, K, accumulate, s); break;
    case 3: launch_gemv_m<3, BF16>(vec, y, ys, x, xs, w, ws, N, K, accumulate, s); break;
    case 4: launch_gemv_m<4, BF16>(vec, y, ys, x, xs, w, ws, N, K, accumulate, s); break;
    case 5: launch_gemv_m<5, BF16>(vec, y, ys, x, xs, w, ws, N, K, accumulate, s); break;
    case 6: launch_gemv_m<6, BF16>(vec, y, ys, x, xs, w, ws, N, K, accumulate, s); break;
    case 7: launch_gemv_m<7, BF16>(vec, y, ys, x, xs, w, ws, N, K, accumulate, s); break;
    default: launch_gemv_m<8, BF16>(vec, y, ys, x, xs, w, ws, N, K, accumulate, s); break;
    }
}

static bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

/* Rows of x in chunks of GEMV_MAX_M (one chunk for decode). */
static void run_gemv(pk_cuda_state *st, const pk_tensor *y, const pk_tensor *x,
                     const pk_tensor *w, int accumulate)
{
    bool bf16 = pk_is_bf16(w);
    int64_t per16 = bf16 ? 8 : 4;
    bool vec = aligned16(w->data) && w->stride % per16 == 0 && aligned16(x->data) &&
               x->stride % 4 == 0;
    for (int64_t m0 = 0; m0 < y->rows; m0 += GEMV_MAX_M) {
        int m = (int)(y->rows - m0 < GEMV_MAX_M ? y->rows - m0 : GEMV_MAX_M);
        float *yp = (float *)y->data + m0 * y->stride;
        const float *xp = (const float *)x->data + m0 * x->stride;
        if (bf16)
            launch_gemv<true>(m, vec, yp, y->stride, xp, x->stride, w->data, w->stride, y->cols,
                              x->cols, accumulate, st->stream);
        else
            launch_gemv<false>(m, vec, yp, y->stride, xp, x->stride, w->data, w->stride,
                               y->cols, x->cols, accumulate, st->stream);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* cuBLASLt                                                                                   */
/* ------------------------------------------------------------------------------------------ */

struct pk_cuda_matmul_plan {
    bool used;
    bool has_algo; /* false: the heuristic found nothing, the GEMV kernel serves this shape */
    int64_t m, n, k, lda, ldb, ldc;
    int w_dtype, accumulate;
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

pio_status pk_cuda_matmul_init(pk_context *ctx, pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    st->plans = (pk_cuda_matmul_plan *)calloc(PK_CUDA_PLAN_CACHE, sizeof *st->plans);
    if (st->plans == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "pk_context_create: out of memory");
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
        cs = cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, (uint64_t)p->n, (uint64_t)p->m,
                                        p->ldc);
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
            p->align_a == key->align_a && p->align_b == key->align_b &&
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
        run_gemv(st, y, x, w, accumulate);
        return pk_cuda_check_launch(ctx, op, err);
    }

    bool bf16 = pk_is_bf16(w);
    const void *b_data = x->data;
    int64_t ldb = x->stride;
    if (bf16) {
        int64_t ld = (K + 7) / 8 * 8; /* 16-byte rows for the tensor-core kernels */
        void *scratch = NULL;
        if ((status = pk_cuda_scratch(ctx, (size_t)(M * ld) * 2, op, &scratch, err)) != PIO_OK)
            return status;
        uint16_t *xb = (uint16_t *)scratch;
        dim3 grid(pk_blocks_for(K, 256, 64), (unsigned)(M < 65535 ? M : 65535));
        f32_to_bf16_rows<<<grid, 256, 0, st->stream>>>(xb, ld, (const float *)x->data, x->stride,
                                                        M, K);
        if ((status = pk_cuda_check_launch(ctx, op, err)) != PIO_OK)
            return status;
        b_data = xb;
        ldb = ld;
    }
    pk_cuda_matmul_plan key;
    memset(&key, 0, sizeof key);
    key.m = M;
    key.n = N;
    key.k = K;
    key.lda = w->stride;
    key.ldb = ldb;
    key.ldc = y->stride;
    key.w_dtype = w->dtype;
    key.accumulate = accumulate;
    key.align_a = alignment_of(w->data);
    key.align_b = alignment_of(b_data);
    key.align_c = alignment_of(y->data);
    pk_cuda_matmul_plan *plan = plan_for(st, &key, err, op);
    if (plan == NULL)
        return PIO_ERR_DEVICE;
    if (!plan->has_algo) { /* odd strides or alignment cuBLASLt will not take */
        run_gemv(st, y, x, w, accumulate);
        return pk_cuda_check_launch(ctx, op, err);
    }
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    cublasStatus_t cs = cublasLtMatmul(st->lt, st->lt_desc, &alpha, w->data, plan->a, b_data,
                                       plan->b, &beta, y->data, plan->c, y->data, plan->c,
                                       &plan->algo, st->lt_workspace, st->lt_workspace_bytes,
                                       st->stream);
    if (cs != CUBLAS_STATUS_SUCCESS) {
        status = pk_cuda_check_launch(ctx, op, err); /* a sticky CUDA error underneath? */
        if (status != PIO_OK)
            return status;
        return pio_error_set(err, PIO_ERR_DEVICE, "%s: cublasLtMatmul [%lld x %lld x %lld] "
                             "failed: %s", op, (long long)M, (long long)N, (long long)K,
                             cublasLtGetStatusString(cs));
    }
    return pk_cuda_check_launch(ctx, op, err);
}
