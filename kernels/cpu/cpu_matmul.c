/*
 * y[M, N] (+)= x[M, K] · w[N, K]^T on the CPU, fp32 accumulation, w BF16 or F32.
 *
 * Two algorithms, each in portable C and AVX2 + FMA:
 *   - few rows of x (decode): every row of w is streamed once and dotted with each row of x,
 *     four rows of w at a time. This is bound by reading w, so it converts BF16 in registers.
 *   - many rows of x (prefill): w is packed panel by panel (PANEL_N rows by KC columns, converted
 *     to F32 and transposed so each k gives PANEL_N consecutive values) into a per-thread buffer
 *     that stays in L1, and a PANEL_M x PANEL_N register tile of y is accumulated from it with
 *     broadcasts of x. Packing costs one pass over w per MC rows of x.
 * Threads split the N dimension (contiguous ranges of panels), so each writes its own columns
 * of y and no two threads write the same cache line except at range edges.
 */
#include "kernels/cpu_internal.h"

#include <omp.h>


enum {
    PANEL_N = 16,       /* columns of y per packed panel (two AVX2 vectors) */
    PANEL_M = 6,        /* rows of y per register tile: 6 x 2 accumulators + 2 loads fit 16 ymm */
    KC = 256,           /* k-extent of a packed panel: 16 KiB of F32, L1-resident */
    MC = 384,           /* rows of x per pass over the panels of w */
    GEMV_GROUP = 4,     /* rows of w dotted together in the few-rows path */
    PACKED_MIN_M = 4,   /* from this many rows of x on, packing pays for itself */
    PARALLEL_MIN_WORK = 1 << 16 /* multiply-adds below which threads cost more than they save */
};

typedef struct matmul_args {
    const float *x;
    int64_t ldx;
    const void *w;
    int64_t ldw;
    pio_dtype wt;
    float *y;
    int64_t ldy;
    int64_t m, n, k;
    int accumulate;
    int avx2;
} matmul_args;

static const void *w_row(const matmul_args *a, int64_t n)
{
    return (const char *)a->w + (size_t)(n * a->ldw) * pio_dtype_size(a->wt);
}

static void store_result(const matmul_args *a, int64_t m, int64_t n, float value, int overwrite)
{
    float *dst = a->y + m * a->ldy + n;
    *dst = overwrite ? value : *dst + value;
}

/* ------------------------------------------------------------------------------------------ */
/* Few rows of x                                                                              */
/* ------------------------------------------------------------------------------------------ */

#if PK_HAVE_X86
/* out[r] = x · w_rows[r] for four rows of w. Inlined into one caller per dtype so the dtype test
 * leaves the loop; the unroll pragmas keep the accumulators in registers. */
PK_AVX2 static inline __attribute__((always_inline)) void
dot4_avx2(const float *x, const void *const w_rows[GEMV_GROUP], pio_dtype wt, int64_t k,
          float out[GEMV_GROUP])
{
    __m256 acc[GEMV_GROUP];
#pragma GCC unroll 4
    for (int r = 0; r < GEMV_GROUP; r++)
        acc[r] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        __m256 xv = _mm256_loadu_ps(x + i);
#pragma GCC unroll 4
        for (int r = 0; r < GEMV_GROUP; r++)
            acc[r] = _mm256_fmadd_ps(xv, pk_avx2_load8(w_rows[r], wt, i), acc[r]);
    }
    for (int r = 0; r < GEMV_GROUP; r++) {
        out[r] = pk_avx2_hsum8(acc[r]);
        for (int64_t j = i; j < k; j++)
            out[r] += x[j] * pk_cpu_load(w_rows[r], wt, j);
    }
}

PK_AVX2 static void dot4_avx2_bf16(const float *x, const void *const w_rows[GEMV_GROUP],
                                   int64_t k, float out[GEMV_GROUP])
{
    dot4_avx2(x, w_rows, PIO_DTYPE_BF16, k, out);
}

PK_AVX2 static void dot4_avx2_f32(const float *x, const void *const w_rows[GEMV_GROUP],
                                  int64_t k, float out[GEMV_GROUP])
{
    dot4_avx2(x, w_rows, PIO_DTYPE_F32, k, out);
}
#endif

static void dot4(const matmul_args *a, const float *x, const void *const w_rows[GEMV_GROUP],
                 float out[GEMV_GROUP])
{
#if PK_HAVE_X86
    if (a->avx2) {
        if (a->wt == PIO_DTYPE_BF16)
            dot4_avx2_bf16(x, w_rows, a->k, out);
        else
            dot4_avx2_f32(x, w_rows, a->k, out);
        return;
    }
#endif
    for (int r = 0; r < GEMV_GROUP; r++)
        out[r] = pk_cpu_dot(0, x, w_rows[r], a->wt, a->k);
}

/* Rows [n0, n0 + GEMV_GROUP) of w (fewer at the end) against every row of x. */
static void gemv_group(const matmul_args *a, int64_t n0)
{
    int64_t count = a->n - n0 < GEMV_GROUP ? a->n - n0 : GEMV_GROUP;
    const void *rows[GEMV_GROUP];
    for (int r = 0; r < GEMV_GROUP; r++)
        rows[r] = w_row(a, n0 + (r < count ? r : 0)); /* a short group repeats its first row */
    for (int64_t m = 0; m < a->m; m++) {
        float out[GEMV_GROUP];
        dot4(a, a->x + m * a->ldx, rows, out);
        for (int64_t r = 0; r < count; r++)
            store_result(a, m, n0 + r, out[r], !a->accumulate);
    }
}

static void matmul_few_rows(const matmul_args *a, int threads)
{
    int64_t groups = (a->n + GEMV_GROUP - 1) / GEMV_GROUP;
    int parallel = a->m * a->n * a->k >= PARALLEL_MIN_WORK;
#pragma omp parallel for num_threads(threads) schedule(static) if (parallel)
    for (int64_t g = 0; g < groups; g++)
        gemv_group(a, g * GEMV_GROUP);
}

/* ------------------------------------------------------------------------------------------ */
/* Many rows of x: packed panels                                                              */
/* ------------------------------------------------------------------------------------------ */

/* panel[kk * PANEL_N + j] = w[n0 + j, k0 + kk] as F32; columns j >= nr are zero. */
static void pack_portable(const matmul_args *a, int64_t n0, int64_t nr, int64_t k0, int64_t kc,
                          float *panel)
{
    for (int64_t j = 0; j < PANEL_N; j++) {
        const void *row = j < nr ? w_row(a, n0 + j) : NULL;
        for (int64_t kk = 0; kk < kc; kk++)
            panel[kk * PANEL_N + j] = row != NULL ? pk_cpu_load(row, a->wt, k0 + kk) : 0.0f;
    }
}

/* dst[i * ld + j] (+)= Σ_kk x_rows[i][kk] · panel[kk * PANEL_N + j] for a whole
 * PANEL_M x PANEL_N tile; `overwrite` replaces dst instead of adding to it. */
static void tile_portable(const float *const x_rows[PANEL_M], int64_t kc, const float *panel,
                          float *dst, int64_t ld, int overwrite)
{
    float acc[PANEL_M * PANEL_N] = {0};
    for (int64_t kk = 0; kk < kc; kk++) {
        const float *b = panel + kk * PANEL_N;
        for (int i = 0; i < PANEL_M; i++) {
            float xv = x_rows[i][kk];
            for (int j = 0; j < PANEL_N; j++)
                acc[i * PANEL_N + j] += xv * b[j];
        }
    }
    for (int i = 0; i < PANEL_M; i++)
        for (int j = 0; j < PANEL_N; j++)
            dst[i * ld + j] = acc[i * PANEL_N + j] + (overwrite ? 0.0f : dst[i * ld + j]);
}

#if PK_HAVE_X86
/* Transposes the 8x8 block held in r[0..7] (row i = r[i]) in place. */
PK_AVX2 static inline void transpose8(__m256 r[8])
{
    __m256 t[8], u[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
#pragma GCC unroll 8
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

/* pack_portable with 8x8 blocks converted and transposed in registers. */
PK_AVX2 static void pack_avx2(const matmul_args *a, int64_t n0, int64_t nr, int64_t k0,
                              int64_t kc, float *panel)
{
    if (nr < PANEL_N || kc % 8 != 0) {
        pack_portable(a, n0, nr, k0, kc, panel);
        return;
    }
    for (int64_t j0 = 0; j0 < PANEL_N; j0 += 8) {
        const void *rows[8];
        for (int j = 0; j < 8; j++)
            rows[j] = w_row(a, n0 + j0 + j);
        for (int64_t kk = 0; kk < kc; kk += 8) {
            __m256 block[8];
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++)
                block[j] = pk_avx2_load8(rows[j], a->wt, k0 + kk);
            transpose8(block);
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++)
                _mm256_store_ps(panel + (kk + i) * PANEL_N + j0, block[i]);
        }
    }
}

/* tile_portable with the tile in twelve registers. */
PK_AVX2 static void tile_avx2(const float *const x_rows[PANEL_M], int64_t kc,
                              const float *panel, float *dst, int64_t ld, int overwrite)
{
    /* The unroll pragmas let the accumulators live in registers rather than on the stack. */
    __m256 c[PANEL_M][2];
#pragma GCC unroll 8
    for (int i = 0; i < PANEL_M; i++)
        c[i][0] = c[i][1] = _mm256_setzero_ps();
    for (int64_t kk = 0; kk < kc; kk++) {
        __m256 b0 = _mm256_load_ps(panel + kk * PANEL_N);
        __m256 b1 = _mm256_load_ps(panel + kk * PANEL_N + 8);
#pragma GCC unroll 8
        for (int i = 0; i < PANEL_M; i++) {
            __m256 xv = _mm256_broadcast_ss(x_rows[i] + kk);
            c[i][0] = _mm256_fmadd_ps(xv, b0, c[i][0]);
            c[i][1] = _mm256_fmadd_ps(xv, b1, c[i][1]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < PANEL_M; i++) {
        float *row = dst + i * ld;
        if (!overwrite) {
            c[i][0] = _mm256_add_ps(c[i][0], _mm256_loadu_ps(row));
            c[i][1] = _mm256_add_ps(c[i][1], _mm256_loadu_ps(row + 8));
        }
        _mm256_storeu_ps(row, c[i][0]);
        _mm256_storeu_ps(row + 8, c[i][1]);
    }
}
#endif

static void pack_panel(const matmul_args *a, int64_t n0, int64_t nr, int64_t k0, int64_t kc,
                       float *panel)
{
#if PK_HAVE_X86
    if (a->avx2) {
        pack_avx2(a, n0, nr, k0, kc, panel);
        return;
    }
#endif
    pack_portable(a, n0, nr, k0, kc, panel);
}

static void compute_tile(const matmul_args *a, const float *const x_rows[PANEL_M], int64_t kc,
                         const float *panel, float *dst, int64_t ld, int overwrite)
{
#if PK_HAVE_X86
    if (a->avx2) {
        tile_avx2(x_rows, kc, panel, dst, ld, overwrite);
        return;
    }
#endif
    tile_portable(x_rows, kc, panel, dst, ld, overwrite);
}

/* Rows [m0, m0 + mr) x columns [n0, n0 + nr) of y from one packed panel. A whole tile goes
 * straight into y; a partial one through a local tile, of which only the valid part is kept. */
static void panel_rows(const matmul_args *a, int64_t m0, int64_t mr, int64_t n0, int64_t nr,
                       int64_t k0, int64_t kc, const float *panel, int overwrite)
{
    const float *x_rows[PANEL_M];
    for (int64_t i = 0; i < PANEL_M; i++) /* missing rows repeat row m0; their sums are dropped */
        x_rows[i] = a->x + (m0 + (i < mr ? i : 0)) * a->ldx + k0;
    if (mr == PANEL_M && nr == PANEL_N) {
        compute_tile(a, x_rows, kc, panel, a->y + m0 * a->ldy + n0, a->ldy, overwrite);
        return;
    }
    _Alignas(64) float tile[PANEL_M * PANEL_N];
    compute_tile(a, x_rows, kc, panel, tile, PANEL_N, 1);
    for (int64_t i = 0; i < mr; i++)
        for (int64_t j = 0; j < nr; j++)
            store_result(a, m0 + i, n0 + j, tile[i * PANEL_N + j], overwrite);
}

/* Columns [n0, n0 + PANEL_N) of y (fewer at the end), rows [m_begin, m_end), k-chunk k0. */
static void panel_chunk(const matmul_args *a, int64_t n0, int64_t m_begin, int64_t m_end,
                        int64_t k0, float *panel)
{
    int64_t nr = a->n - n0 < PANEL_N ? a->n - n0 : PANEL_N;
    int64_t kc = a->k - k0 < KC ? a->k - k0 : KC;
    pack_panel(a, n0, nr, k0, kc, panel);
    int overwrite = k0 == 0 && !a->accumulate;
    for (int64_t m0 = m_begin; m0 < m_end; m0 += PANEL_M) {
        int64_t mr = m_end - m0 < PANEL_M ? m_end - m0 : PANEL_M;
        panel_rows(a, m0, mr, n0, nr, k0, kc, panel, overwrite);
    }
}

/*
 * One thread's share: panels [p_begin, p_end). Each panel runs through all of k before the next,
 * so w is read row by row in long sequential runs; MC bounds how much of x one panel pass reads
 * (measured: this order and a k-outer order are within noise at M = 64..512, this one is faster
 * at small M).
 */
static void packed_columns(const matmul_args *a, int64_t p_begin, int64_t p_end, float *panel)
{
    for (int64_t m0 = 0; m0 < a->m; m0 += MC) {
        int64_t m_end = a->m - m0 < MC ? a->m : m0 + MC;
        for (int64_t p = p_begin; p < p_end; p++)
            for (int64_t k0 = 0; k0 < a->k; k0 += KC)
                panel_chunk(a, p * PANEL_N, m0, m_end, k0, panel);
    }
}

static void matmul_packed(const matmul_args *a, float *scratch, size_t stride, int threads)
{
    int64_t panels = (a->n + PANEL_N - 1) / PANEL_N;
    int parallel = a->m * a->n * a->k >= PARALLEL_MIN_WORK;
#pragma omp parallel num_threads(threads) if (parallel)
    {
        int64_t tid = omp_get_thread_num(), nth = omp_get_num_threads();
        float *panel = scratch + (size_t)tid * stride;
        packed_columns(a, panels * tid / nth, panels * (tid + 1) / nth, panel);
    }
}

pio_status pk_cpu_matmul(pk_context *ctx, const pk_tensor *y, const pk_tensor *x,
                         const pk_tensor *w, int accumulate, pio_error *err)
{
    pk_cpu_state *state = pk_cpu_state_of(ctx);
    matmul_args a = {
        .x = x->data, .ldx = x->stride, .w = w->data, .ldw = w->stride, .wt = w->dtype,
        .y = y->data, .ldy = y->stride, .m = y->rows, .n = y->cols, .k = x->cols,
        .accumulate = accumulate, .avx2 = state->use_avx2,
    };
    if (a.m == 0 || a.n == 0)
        return PIO_OK;
    if (a.k == 0) { /* an empty sum: y = 0, or y unchanged when accumulating */
        for (int64_t m = 0; m < a.m && !accumulate; m++)
            for (int64_t n = 0; n < a.n; n++)
                store_result(&a, m, n, 0.0f, 1);
        return PIO_OK;
    }
    if (a.m < PACKED_MIN_M) {
        matmul_few_rows(&a, state->n_threads);
        return PIO_OK;
    }
    size_t stride;
    float *scratch = pk_cpu_scratch(ctx, (size_t)KC * PANEL_N, &stride, err);
    if (scratch == NULL)
        return PIO_ERR_OUT_OF_MEMORY;
    matmul_packed(&a, scratch, stride, state->n_threads);
    return PIO_OK;
}
