/*
 * The op layer on the CPU backend, op by op, against plain reference loops written here with
 * fresh random inputs at several shapes. Every test runs twice: with the AVX2 paths (when the
 * machine has them) and with the portable C paths only.
 *
 * PIO_KERNELS_BENCH=1 also times the Qwen3-4B MLP projections (test_matmul_benchmark).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/backend.h" /* pk_gemv_tma_short_context_for */
#include "kernels/kv_cache.h"
#include "kernels/ops.h"

/* ------------------------------------------------------------------------------------------ */
/* Random inputs and small helpers                                                            */
/* ------------------------------------------------------------------------------------------ */

static uint64_t test_rng_state = 0x1234567887654321ull;

static uint64_t next_random(void)
{
    test_rng_state ^= test_rng_state << 13;
    test_rng_state ^= test_rng_state >> 7;
    test_rng_state ^= test_rng_state << 17;
    return test_rng_state;
}

static float uniform(float lo, float hi)
{
    return lo + (hi - lo) * (float)((next_random() >> 40) * 0x1.0p-24);
}

static float *random_floats(int64_t n, float lo, float hi)
{
    float *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    assert_non_null(v);
    for (int64_t i = 0; i < n; i++)
        v[i] = uniform(lo, hi);
    return v;
}

/* Random bf16 values; *as_f32 receives the exact same values widened. */
static uint16_t *random_bf16(int64_t n, float lo, float hi, float **as_f32)
{
    uint16_t *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    float *wide = malloc((size_t)(n > 0 ? n : 1) * sizeof *wide);
    assert_non_null(v);
    assert_non_null(wide);
    for (int64_t i = 0; i < n; i++) {
        v[i] = pio_f32_to_bf16(uniform(lo, hi));
        wide[i] = pio_bf16_to_f32(v[i]);
    }
    *as_f32 = wide;
    return v;
}

static float round_bf16(float v)
{
    return pio_bf16_to_f32(pio_f32_to_bf16(v));
}

static void assert_close(double got, double want, double tolerance, const char *what, int64_t i)
{
    if (fabs(got - want) <= tolerance)
        return;
    print_error("%s[%lld]: got %.9g, want %.9g (tolerance %.3g)\n", what, (long long)i, got,
                want, tolerance);
    fail();
}

static pk_context *ctx_of(void **state)
{
    return *state;
}

static int setup_context(void **state, int force_scalar)
{
    pk_context_options options = {.n_threads = 2, .cpu_force_scalar = force_scalar};
    pk_context *ctx = NULL;
    if (pk_context_create(PK_DEVICE_CPU, &options, &ctx, NULL) != PIO_OK)
        return -1;
    *state = ctx;
    return 0;
}

static int setup_simd(void **state)
{
    return setup_context(state, 0);
}

static int setup_portable(void **state)
{
    return setup_context(state, 1);
}

static int teardown_context(void **state)
{
    pk_context_destroy(ctx_of(state));
    return 0;
}

static pk_tensor host_f32(float *data, int64_t rows, int64_t cols)
{
    return pk_tensor_host(data, PIO_DTYPE_F32, rows, cols);
}

/* ------------------------------------------------------------------------------------------ */
/* Matmul                                                                                     */
/* ------------------------------------------------------------------------------------------ */

typedef struct matmul_case {
    int64_t m, n, k;
} matmul_case;

static const matmul_case matmul_cases[] = {
    {1, 1, 1},   {1, 7, 13},   {1, 33, 64},   {2, 5, 300},  {3, 17, 29},   {4, 16, 256},
    {5, 31, 300}, {6, 16, 8},  {7, 40, 513},  {13, 50, 77}, {64, 37, 260}, {9, 1, 1000},
    {1, 130, 2051}, {20, 129, 40}, {400, 19, 70},
};

/*
 * Checks y (+)= x·w^T at one shape. x is a column view of a wider tensor and y a column view too,
 * so strides are exercised; `accumulate` starts y from random values.
 */
static void check_matmul(pk_context *ctx, matmul_case c, pio_dtype wt, int accumulate)
{
    int64_t x_pad = 3, y_pad = 2;
    float *x = random_floats(c.m * (c.k + x_pad), -1.0f, 1.0f);
    float *w_f32 = NULL;
    void *w;
    if (wt == PIO_DTYPE_BF16) {
        w = random_bf16(c.n * c.k, -1.0f, 1.0f, &w_f32);
    } else {
        w_f32 = random_floats(c.n * c.k, -1.0f, 1.0f);
        w = w_f32;
    }
    float *y = random_floats(c.m * (c.n + y_pad), -1.0f, 1.0f);
    float *y_before = malloc((size_t)(c.m * (c.n + y_pad)) * sizeof *y_before);
    assert_non_null(y_before);
    memcpy(y_before, y, (size_t)(c.m * (c.n + y_pad)) * sizeof *y);

    pk_tensor xt_full = host_f32(x, c.m, c.k + x_pad);
    pk_tensor xt = pk_tensor_cols(&xt_full, x_pad, c.k);
    pk_tensor wt_t = pk_tensor_host(w, wt, c.n, c.k);
    pk_tensor yt_full = host_f32(y, c.m, c.n + y_pad);
    pk_tensor yt = pk_tensor_cols(&yt_full, 1, c.n);
    pio_error err;
    pio_status st = accumulate ? pk_matmul_add(ctx, &yt, &xt, &wt_t, &err)
                               : pk_matmul(ctx, &yt, &xt, &wt_t, &err);
    assert_int_equal(st, PIO_OK);

    for (int64_t m = 0; m < c.m; m++) {
        for (int64_t n = 0; n < c.n; n++) {
            double want = accumulate ? y_before[m * (c.n + y_pad) + 1 + n] : 0.0, scale = 0.0;
            for (int64_t k = 0; k < c.k; k++) {
                double term = (double)x[m * (c.k + x_pad) + x_pad + k] * w_f32[n * c.k + k];
                want += term;
                scale += fabs(term);
            }
            assert_close(y[m * (c.n + y_pad) + 1 + n], want, 2e-6 * scale + 1e-6, "matmul", n);
        }
        /* Columns outside the view are untouched. */
        assert_true(y[m * (c.n + y_pad)] == y_before[m * (c.n + y_pad)]);
        assert_true(y[m * (c.n + y_pad) + c.n + 1] == y_before[m * (c.n + y_pad) + c.n + 1]);
    }
    free(x);
    free(y);
    free(y_before);
    if (w != (void *)w_f32)
        free(w);
    free(w_f32);
}

static void test_matmul_bf16(void **state)
{
    for (size_t i = 0; i < sizeof matmul_cases / sizeof *matmul_cases; i++)
        check_matmul(ctx_of(state), matmul_cases[i], PIO_DTYPE_BF16, 0);
}

static void test_matmul_f32(void **state)
{
    for (size_t i = 0; i < sizeof matmul_cases / sizeof *matmul_cases; i++)
        check_matmul(ctx_of(state), matmul_cases[i], PIO_DTYPE_F32, 0);
}

static void test_matmul_add(void **state)
{
    for (size_t i = 0; i < sizeof matmul_cases / sizeof *matmul_cases; i++) {
        check_matmul(ctx_of(state), matmul_cases[i], PIO_DTYPE_BF16, 1);
        check_matmul(ctx_of(state), matmul_cases[i], PIO_DTYPE_F32, 1);
    }
}

static void test_matmul_empty_k(void **state)
{
    float y[6] = {1, 2, 3, 4, 5, 6}, x[1] = {0};
    uint16_t w[1] = {0};
    pk_tensor yt = host_f32(y, 2, 3);
    pk_tensor xt = pk_tensor_host(x, PIO_DTYPE_F32, 2, 0);
    pk_tensor wt = pk_tensor_host(w, PIO_DTYPE_BF16, 3, 0);
    assert_int_equal(pk_matmul_add(ctx_of(state), &yt, &xt, &wt, NULL), PIO_OK);
    assert_true(y[5] == 6.0f);
    assert_int_equal(pk_matmul(ctx_of(state), &yt, &xt, &wt, NULL), PIO_OK);
    for (int i = 0; i < 6; i++)
        assert_true(y[i] == 0.0f);
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* GFLOP/s of y = x·W^T for Qwen3-4B's gate/up (W 9728x2560) and down (W 2560x9728) weights. */
static void test_matmul_benchmark(void **state)
{
    if (getenv("PIO_KERNELS_BENCH") == NULL)
        skip();
    static const int64_t shapes[][2] = {{9728, 2560}, {2560, 9728}};
    static const int64_t ms[] = {1, 2, 4, 8, 16, 64, 512};
    for (size_t s = 0; s < 2; s++) {
        int64_t n = shapes[s][0], k = shapes[s][1];
        float *w_f32;
        uint16_t *w = random_bf16(n * k, -1.0f, 1.0f, &w_f32);
        free(w_f32);
        for (size_t i = 0; i < sizeof ms / sizeof *ms; i++) {
            int64_t m = ms[i];
            float *x = random_floats(m * k, -1.0f, 1.0f);
            float *y = random_floats(m * n, 0.0f, 0.0f);
            pk_tensor xt = host_f32(x, m, k), yt = host_f32(y, m, n);
            pk_tensor wt = pk_tensor_host(w, PIO_DTYPE_BF16, n, k);
            assert_int_equal(pk_matmul(ctx_of(state), &yt, &xt, &wt, NULL), PIO_OK);
            int reps = 0;
            double start = seconds_now(), elapsed;
            do {
                assert_int_equal(pk_matmul(ctx_of(state), &yt, &xt, &wt, NULL), PIO_OK);
                reps++;
                elapsed = seconds_now() - start;
            } while (elapsed < 1.0);
            double per_call = elapsed / reps;
            printf("matmul W[%lld x %lld] bf16, M=%-3lld %2d threads: %8.3f ms  %7.1f GFLOP/s  "
                   "%6.1f GB/s of W\n",
                   (long long)n, (long long)k, (long long)m, pk_context_threads(ctx_of(state)),
                   per_call * 1e3, 2.0 * (double)(m * n * k) / per_call * 1e-9,
                   (double)(n * k * 2) / per_call * 1e-9);
            free(x);
            free(y);
        }
        free(w);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Embedding, norms                                                                           */
/* ------------------------------------------------------------------------------------------ */

static void test_embedding(void **state)
{
    const int64_t vocab = 37, hidden = 19, tokens = 6;
    float *table_f32;
    uint16_t *table = random_bf16(vocab * hidden, -2.0f, 2.0f, &table_f32);
    int32_t ids[6] = {0, 36, 5, 5, 17, 1};
    float out[6 * 19];
    pk_tensor out_t = host_f32(out, tokens, hidden);
    pk_tensor ids_t = pk_tensor_host(ids, PIO_DTYPE_I32, 1, tokens);
    pk_tensor bf16_t = pk_tensor_host(table, PIO_DTYPE_BF16, vocab, hidden);
    pk_tensor f32_t = host_f32(table_f32, vocab, hidden);

    const pk_tensor *tables[2] = {&bf16_t, &f32_t};
    for (int which = 0; which < 2; which++) {
        memset(out, 0, sizeof out);
        assert_int_equal(pk_embedding(ctx_of(state), &out_t, tables[which], &ids_t, NULL), PIO_OK);
        for (int64_t t = 0; t < tokens; t++)
            for (int64_t h = 0; h < hidden; h++)
                assert_true(out[t * hidden + h] == table_f32[ids[t] * hidden + h]);
    }

    pio_error err;
    ids[3] = 37;
    assert_int_equal(pk_embedding(ctx_of(state), &out_t, &bf16_t, &ids_t, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "token id 37"));
    ids[3] = -1;
    assert_int_equal(pk_embedding(ctx_of(state), &out_t, &bf16_t, &ids_t, NULL),
                     PIO_ERR_INVALID_ARGUMENT);
    free(table);
    free(table_f32);
}

/* out = x / sqrt(mean(x²) + eps) * w, in double. */
static void reference_rmsnorm(double *out, const float *x, const float *w, int64_t n, float eps)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)x[i] * x[i];
    double inv = 1.0 / sqrt(sum / (double)n + eps);
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * inv * w[i];
}

static void test_rmsnorm(void **state)
{
    static const int64_t shapes[][2] = {{1, 1}, {1, 64}, {3, 17}, {5, 2560}, {33, 100}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int64_t rows = shapes[s][0], cols = shapes[s][1];
        float *x = random_floats(rows * cols, -3.0f, 3.0f);
        float *w_f32;
        uint16_t *w = random_bf16(cols, 0.5f, 1.5f, &w_f32);
        float *out = random_floats(rows * cols, 0.0f, 0.0f);
        double *want = malloc((size_t)cols * sizeof *want);
        assert_non_null(want);
        pk_tensor xt = host_f32(x, rows, cols), ot = host_f32(out, rows, cols);
        pk_tensor wt = pk_tensor_host(w, PIO_DTYPE_BF16, 1, cols);
        assert_int_equal(pk_rmsnorm(ctx_of(state), &ot, &xt, &wt, 1e-6f, NULL), PIO_OK);
        for (int64_t r = 0; r < rows; r++) {
            reference_rmsnorm(want, x + r * cols, w_f32, cols, 1e-6f);
            for (int64_t c = 0; c < cols; c++)
                assert_close(out[r * cols + c], want[c], 1e-5 * fabs(want[c]) + 1e-6, "rmsnorm",
                             c);
        }
        /* In place, F32 weight: the same values. */
        pk_tensor wf = host_f32(w_f32, 1, cols);
        assert_int_equal(pk_rmsnorm(ctx_of(state), &xt, &xt, &wf, 1e-6f, NULL), PIO_OK);
        for (int64_t i = 0; i < rows * cols; i++)
            assert_true(x[i] == out[i]);
        free(x);
        free(w);
        free(w_f32);
        free(out);
        free(want);
    }
}

static void test_rmsnorm_zero_row_uses_eps(void **state)
{
    float x[4] = {0, 0, 0, 0}, w[4] = {1, 1, 1, 1}, out[4] = {9, 9, 9, 9};
    pk_tensor xt = host_f32(x, 1, 4), ot = host_f32(out, 1, 4), wt = host_f32(w, 1, 4);
    assert_int_equal(pk_rmsnorm(ctx_of(state), &ot, &xt, &wt, 1e-6f, NULL), PIO_OK);
    for (int i = 0; i < 4; i++)
        assert_true(out[i] == 0.0f);
}

static void test_head_rmsnorm(void **state)
{
    const int64_t tokens = 3, heads = 5, head_dim = 12, cols = heads * head_dim;
    float *x = random_floats(tokens * cols, -2.0f, 2.0f);
    float *w_f32;
    uint16_t *w = random_bf16(head_dim, 0.5f, 1.5f, &w_f32);
    float *out = random_floats(tokens * cols, 0.0f, 0.0f);
    double want[12];
    pk_tensor xt = host_f32(x, tokens, cols), ot = host_f32(out, tokens, cols);
    pk_tensor wt = pk_tensor_host(w, PIO_DTYPE_BF16, 1, head_dim);
    assert_int_equal(pk_head_rmsnorm(ctx_of(state), &ot, &xt, &wt, head_dim, 1e-6f, NULL),
                     PIO_OK);
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t h = 0; h < heads; h++) {
            const float *slice = x + t * cols + h * head_dim;
            reference_rmsnorm(want, slice, w_f32, head_dim, 1e-6f);
            for (int64_t d = 0; d < head_dim; d++)
                assert_close(out[t * cols + h * head_dim + d], want[d],
                             1e-5 * fabs(want[d]) + 1e-6, "head_rmsnorm", d);
        }
    pio_error err;
    assert_int_equal(pk_head_rmsnorm(ctx_of(state), &ot, &xt, &wt, 7, 1e-6f, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    free(x);
    free(w);
    free(w_f32);
    free(out);
}

/* ------------------------------------------------------------------------------------------ */
/* RoPE                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* Index of the partner pair member and frequency of dim d of the rotary range. */
static void rope_pair(pk_rope_layout layout, int32_t rotary_dim, int32_t d, int32_t *first,
                      int32_t *second, int32_t *freq)
{
    int32_t half = rotary_dim / 2;
    if (layout == PK_ROPE_NEOX) {
        *freq = d % half;
        *first = *freq;
        *second = *freq + half;
    } else {
        *freq = d / 2;
        *first = 2 * *freq;
        *second = 2 * *freq + 1;
    }
}

/* The textbook formula in double: x'[a] = x[a]cos − x[b]sin, x'[b] = x[b]cos + x[a]sin. */
static double reference_rope(const float *head, const pk_rope_params *p, int32_t pos, int32_t d)
{
    int32_t r = d - p->rotary_offset;
    if (r < 0 || r >= p->rotary_dim)
        return head[d];
    int32_t a, b, i;
    rope_pair(p->layout, p->rotary_dim, r, &a, &b, &i);
    double angle = pos * pow(p->theta, -2.0 * i / p->rotary_dim);
    double xa = head[p->rotary_offset + a], xb = head[p->rotary_offset + b];
    return r == a ? xa * cos(angle) - xb * sin(angle) : xb * cos(angle) + xa * sin(angle);
}

static void check_rope(pk_context *ctx, const pk_rope_params *p, int64_t tokens, int64_t heads)
{
    int64_t cols = heads * p->head_dim;
    float *x = random_floats(tokens * cols, -1.0f, 1.0f);
    float *out = random_floats(tokens * cols, 0.0f, 0.0f);
    int32_t *pos = malloc((size_t)tokens * sizeof *pos);
    assert_non_null(pos);
    for (int64_t t = 0; t < tokens; t++)
        pos[t] = t == 0 ? 0 : (int32_t)(next_random() % 2000);
    pk_tensor xt = host_f32(x, tokens, cols), ot = host_f32(out, tokens, cols);
    pk_tensor pt = pk_tensor_host(pos, PIO_DTYPE_I32, 1, tokens);
    assert_int_equal(pk_rope(ctx, &ot, &xt, &pt, p, NULL), PIO_OK);
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t h = 0; h < heads; h++) {
            const float *head = x + t * cols + h * p->head_dim;
            for (int32_t d = 0; d < p->head_dim; d++) {
                double want = reference_rope(head, p, pos[t], d);
                /* fp32 angles of positions up to 2000 are off by ~1e-4 rad */
                assert_close(out[t * cols + h * p->head_dim + d], want, 1e-3, "rope", d);
            }
        }
    /* Position 0 is the identity, exactly. */
    for (int64_t c = 0; c < cols; c++)
        assert_true(out[c] == x[c]);
    /* In place gives the same bits. */
    assert_int_equal(pk_rope(ctx, &xt, &xt, &pt, p, NULL), PIO_OK);
    assert_memory_equal(x, out, (size_t)(tokens * cols) * sizeof *x);
    free(x);
    free(out);
    free(pos);
}

static void test_rope_neox(void **state)
{
    pk_rope_params qwen = {PK_ROPE_NEOX, 128, 128, 0, 5e6f};
    check_rope(ctx_of(state), &qwen, 5, 3);
    pk_rope_params partial = {PK_ROPE_NEOX, 24, 16, 0, 10000.0f};
    check_rope(ctx_of(state), &partial, 4, 2);
}

static void test_rope_interleaved(void **state)
{
    pk_rope_params full = {PK_ROPE_INTERLEAVED, 64, 64, 0, 1e6f};
    check_rope(ctx_of(state), &full, 5, 2);
    /* MLA: the rotary part is the last 64 of 256 dims. */
    pk_rope_params mla = {PK_ROPE_INTERLEAVED, 256, 64, 192, 1e6f};
    check_rope(ctx_of(state), &mla, 3, 2);
}

/*
 * Rotate-half and interleaved differ by a permutation: moving dim 2i to i and 2i+1 to i+d/2
 * turns an interleaved rotation into a rotate-half one, bit for bit.
 */
static void test_rope_layouts_differ_by_permutation(void **state)
{
    const int64_t tokens = 4, head_dim = 32, half = 16;
    float *x = random_floats(tokens * head_dim, -1.0f, 1.0f);
    float *permuted = malloc((size_t)(tokens * head_dim) * sizeof *permuted);
    assert_non_null(permuted);
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t i = 0; i < half; i++) {
            permuted[t * head_dim + i] = x[t * head_dim + 2 * i];
            permuted[t * head_dim + half + i] = x[t * head_dim + 2 * i + 1];
        }
    int32_t pos[4] = {0, 1, 77, 4095};
    pk_tensor pt = pk_tensor_host(pos, PIO_DTYPE_I32, 1, tokens);
    pk_tensor xt = host_f32(x, tokens, head_dim), yt = host_f32(permuted, tokens, head_dim);
    pk_rope_params inter = {PK_ROPE_INTERLEAVED, 32, 32, 0, 10000.0f};
    pk_rope_params neox = {PK_ROPE_NEOX, 32, 32, 0, 10000.0f};
    assert_int_equal(pk_rope(ctx_of(state), &xt, &xt, &pt, &inter, NULL), PIO_OK);
    assert_int_equal(pk_rope(ctx_of(state), &yt, &yt, &pt, &neox, NULL), PIO_OK);
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t i = 0; i < half; i++) {
            assert_true(permuted[t * head_dim + i] == x[t * head_dim + 2 * i]);
            assert_true(permuted[t * head_dim + half + i] == x[t * head_dim + 2 * i + 1]);
        }
    free(x);
    free(permuted);
}

static void test_rope_rejects_bad_params(void **state)
{
    float x[8] = {0};
    int32_t pos[1] = {0};
    pk_tensor xt = host_f32(x, 1, 8), pt = pk_tensor_host(pos, PIO_DTYPE_I32, 1, 1);
    pk_rope_params odd = {PK_ROPE_NEOX, 8, 5, 0, 1e4f};
    pk_rope_params too_wide = {PK_ROPE_NEOX, 8, 8, 2, 1e4f};
    pk_rope_params bad_theta = {PK_ROPE_NEOX, 8, 8, 0, 0.0f};
    pk_rope_params bad_head = {PK_ROPE_NEOX, 3, 2, 0, 1e4f};
    assert_int_equal(pk_rope(ctx_of(state), &xt, &xt, &pt, &odd, NULL), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_rope(ctx_of(state), &xt, &xt, &pt, &too_wide, NULL),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_rope(ctx_of(state), &xt, &xt, &pt, &bad_theta, NULL),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_rope(ctx_of(state), &xt, &xt, &pt, &bad_head, NULL),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_rope(ctx_of(state), &xt, &xt, &pt, NULL, NULL), PIO_ERR_INVALID_ARGUMENT);
}

/* ------------------------------------------------------------------------------------------ */
/* SwiGLU, add, softmax, argmax, cast, copy                                                   */
/* ------------------------------------------------------------------------------------------ */

static double reference_silu_mul(double g, double u)
{
    return g / (1.0 + exp(-g)) * u;
}

static void test_swiglu(void **state)
{
    const int64_t rows = 3, f = 45;
    float *gate_up = random_floats(rows * 2 * f, -6.0f, 6.0f);
    float *gate = malloc((size_t)(rows * f) * sizeof *gate);
    float *up = malloc((size_t)(rows * f) * sizeof *up);
    float *out = random_floats(rows * f, 0.0f, 0.0f), *out2 = random_floats(rows * f, 0.0f, 0.0f);
    assert_non_null(gate);
    assert_non_null(up);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < f; i++) {
            gate[r * f + i] = gate_up[r * 2 * f + i];
            up[r * f + i] = gate_up[r * 2 * f + f + i];
        }
    pk_tensor gt = host_f32(gate, rows, f), ut = host_f32(up, rows, f);
    pk_tensor ot = host_f32(out, rows, f), o2 = host_f32(out2, rows, f);
    pk_tensor fused = host_f32(gate_up, rows, 2 * f);
    assert_int_equal(pk_swiglu(ctx_of(state), &ot, &gt, &ut, NULL), PIO_OK);
    assert_int_equal(pk_swiglu_fused(ctx_of(state), &o2, &fused, NULL), PIO_OK);
    for (int64_t i = 0; i < rows * f; i++) {
        double want = reference_silu_mul(gate[i], up[i]);
        assert_close(out[i], want, 1e-5 * fabs(want) + 1e-6, "swiglu", i);
        assert_true(out[i] == out2[i]);
    }
    /* Writing over the gate half of the fused input is allowed (same view). */
    pk_tensor gate_half = pk_tensor_cols(&fused, 0, f);
    assert_int_equal(pk_swiglu_fused(ctx_of(state), &gate_half, &fused, NULL), PIO_OK);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < f; i++)
            assert_true(gate_up[r * 2 * f + i] == out[r * f + i]);
    free(gate_up);
    free(gate);
    free(up);
    free(out);
    free(out2);
}

/* The pre-norm + projection fusions: on the CPU they run the plain ops, so they equal them bit
 * for bit (h written by pk_rmsnorm_matmul; out may be gate_up's gate half), and they refuse
 * what the plain ops would not take plus their own overlap rules. */
static void test_rmsnorm_matmul_fusions(void **state)
{
    pk_context *ctx = ctx_of(state);
    const int64_t m = 3, k = 37, f = 11;
    float *x = random_floats(m * k, -2.0f, 2.0f), *norm = random_floats(k, 0.5f, 1.5f);
    float *w = random_floats(2 * f * k, -1.0f, 1.0f);
    float *h = random_floats(m * k, 0.0f, 0.0f), *h2 = random_floats(m * k, 0.0f, 0.0f);
    float *gu = random_floats(m * 2 * f, 0.0f, 0.0f), *gu2 = random_floats(m * 2 * f, 0.0f, 0.0f);
    float *out = random_floats(m * f, 0.0f, 0.0f);
    pk_tensor xt = host_f32(x, m, k), nt = host_f32(norm, 1, k), wt = host_f32(w, 2 * f, k);
    pk_tensor ht = host_f32(h, m, k), h2t = host_f32(h2, m, k), out_t = host_f32(out, m, f);
    pk_tensor gut = host_f32(gu, m, 2 * f), gu2t = host_f32(gu2, m, 2 * f);
    pk_tensor gate2 = pk_tensor_cols(&gu2t, 0, f), up2 = pk_tensor_cols(&gu2t, f, f);
    /* Reference: the plain ops. */
    assert_int_equal(pk_rmsnorm(ctx, &h2t, &xt, &nt, 1e-6f, NULL), PIO_OK);
    assert_int_equal(pk_matmul(ctx, &gu2t, &h2t, &wt, NULL), PIO_OK);
    assert_int_equal(pk_rmsnorm_matmul(ctx, &gut, &ht, &xt, &nt, 1e-6f, &wt, NULL), PIO_OK);
    assert_memory_equal(h, h2, (size_t)(m * k) * sizeof *h);
    assert_memory_equal(gu, gu2, (size_t)(m * 2 * f) * sizeof *gu);
    assert_int_equal(pk_swiglu(ctx, &out_t, &gate2, &up2, NULL), PIO_OK);
    pk_tensor gate = pk_tensor_cols(&gut, 0, f);
    assert_int_equal(pk_rmsnorm_matmul_swiglu(ctx, &gate, &gut, &ht, &xt, &nt, 1e-6f, &wt, NULL),
                     PIO_OK);
    for (int64_t r = 0; r < m; r++)
        assert_memory_equal(gu + r * 2 * f, out + r * f, (size_t)f * sizeof *out);
    /* Refused: out over the up half, an odd gate_up, out of the wrong width, h too narrow. */
    pio_error err;
    pk_tensor up = pk_tensor_cols(&gut, f, f);
    assert_int_equal(pk_rmsnorm_matmul_swiglu(ctx, &up, &gut, &ht, &xt, &nt, 1e-6f, &wt, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "gate half"));
    pk_tensor odd = pk_tensor_cols(&gut, 0, 2 * f - 1), w_odd = pk_tensor_rows(&wt, 0, 2 * f - 1);
    assert_int_equal(pk_rmsnorm_matmul_swiglu(ctx, &out_t, &odd, &ht, &xt, &nt, 1e-6f, &w_odd,
                                              &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "even"));
    pk_tensor narrow = pk_tensor_cols(&out_t, 0, f - 1);
    assert_int_equal(pk_rmsnorm_matmul_swiglu(ctx, &narrow, &gu2t, &ht, &xt, &nt, 1e-6f, &wt,
                                              &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "out is ["));
    pk_tensor h_narrow = pk_tensor_cols(&ht, 0, k - 1);
    assert_int_equal(pk_rmsnorm_matmul(ctx, &gut, &h_narrow, &xt, &nt, 1e-6f, &wt, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    free(x);
    free(norm);
    free(w);
    free(h);
    free(h2);
    free(gu);
    free(gu2);
    free(out);
}

static void test_add(void **state)
{
    const int64_t rows = 4, cols = 33;
    float *a = random_floats(rows * cols, -1.0f, 1.0f);
    float *b = random_floats(rows * cols, -1.0f, 1.0f);
    float *sum = random_floats(rows * cols, 0.0f, 0.0f);
    pk_tensor at = host_f32(a, rows, cols), bt = host_f32(b, rows, cols);
    pk_tensor st = host_f32(sum, rows, cols);
    assert_int_equal(pk_add(ctx_of(state), &st, &at, &bt, NULL), PIO_OK);
    for (int64_t i = 0; i < rows * cols; i++)
        assert_true(sum[i] == a[i] + b[i]);
    assert_int_equal(pk_add(ctx_of(state), &at, &at, &bt, NULL), PIO_OK); /* residual in place */
    assert_memory_equal(a, sum, (size_t)(rows * cols) * sizeof *a);
    free(a);
    free(b);
    free(sum);
}

static void test_softmax(void **state)
{
    static const int64_t shapes[][2] = {{1, 1}, {1, 10}, {3, 257}, {2, 151936}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int64_t rows = shapes[s][0], cols = shapes[s][1];
        float *x = random_floats(rows * cols, -20.0f, 20.0f);
        x[0] = 1000.0f; /* stability: exp(1000) overflows unless the max is subtracted */
        float *out = random_floats(rows * cols, 0.0f, 0.0f);
        pk_tensor xt = host_f32(x, rows, cols), ot = host_f32(out, rows, cols);
        assert_int_equal(pk_softmax(ctx_of(state), &ot, &xt, NULL), PIO_OK);
        for (int64_t r = 0; r < rows; r++) {
            double max_v = -INFINITY, total = 0.0, sum = 0.0;
            for (int64_t c = 0; c < cols; c++)
                max_v = fmax(max_v, x[r * cols + c]);
            for (int64_t c = 0; c < cols; c++)
                total += exp(x[r * cols + c] - max_v);
            for (int64_t c = 0; c < cols; c++) {
                double want = exp(x[r * cols + c] - max_v) / total;
                assert_close(out[r * cols + c], want, 1e-5 * want + 1e-9, "softmax", c);
                sum += out[r * cols + c];
            }
            assert_close(sum, 1.0, 1e-4, "softmax sum", r);
        }
        free(x);
        free(out);
    }
    float minus_inf[3] = {-INFINITY, -INFINITY, -INFINITY}, p[3];
    pk_tensor mt = host_f32(minus_inf, 1, 3), pt = host_f32(p, 1, 3);
    assert_int_equal(pk_softmax(ctx_of(state), &pt, &mt, NULL), PIO_OK);
    assert_close(p[0] + p[1] + p[2], 1.0, 1e-6, "uniform", 0);
}

static void test_argmax(void **state)
{
    float x[4 * 5] = {
        1, 5, 3, 5, 2,                   /* tie: lowest index wins */
        NAN, -1, -2, -3, -4,             /* NaN is never chosen */
        -INFINITY, -INFINITY, -INFINITY, -INFINITY, -7,
        NAN, NAN, NAN, NAN, NAN,         /* all NaN: index 0 */
    };
    int32_t ids[4] = {-1, -1, -1, -1};
    pk_tensor xt = host_f32(x, 4, 5), it = pk_tensor_host(ids, PIO_DTYPE_I32, 1, 4);
    assert_int_equal(pk_argmax(ctx_of(state), &it, &xt, NULL), PIO_OK);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 1);
    assert_int_equal(ids[2], 4);
    assert_int_equal(ids[3], 0);

    const int64_t rows = 3, cols = 1000;
    float *big = random_floats(rows * cols, -5.0f, 5.0f);
    int32_t got[3];
    pk_tensor bt = host_f32(big, rows, cols), gt = pk_tensor_host(got, PIO_DTYPE_I32, 1, rows);
    assert_int_equal(pk_argmax(ctx_of(state), &gt, &bt, NULL), PIO_OK);
    for (int64_t r = 0; r < rows; r++) {
        int64_t best = 0;
        for (int64_t c = 1; c < cols; c++)
            if (big[r * cols + c] > big[r * cols + best])
                best = c;
        assert_int_equal(got[r], best);
    }
    free(big);
}

static void test_cast_and_copy(void **state)
{
    const int64_t rows = 3, cols = 21;
    float *x = random_floats(rows * cols, -100.0f, 100.0f);
    uint16_t bf[3 * 21];
    float back[3 * 21];
    pk_tensor xt = host_f32(x, rows, cols), bt = pk_tensor_host(bf, PIO_DTYPE_BF16, rows, cols);
    pk_tensor back_t = host_f32(back, rows, cols);
    assert_int_equal(pk_cast(ctx_of(state), &bt, &xt, NULL), PIO_OK);
    assert_int_equal(pk_cast(ctx_of(state), &back_t, &bt, NULL), PIO_OK);
    for (int64_t i = 0; i < rows * cols; i++) {
        assert_int_equal(bf[i], pio_f32_to_bf16(x[i]));
        assert_true(back[i] == round_bf16(x[i]));
    }

    /* A strided copy moves only the viewed columns. */
    float wide[3 * 8], narrow[3 * 4];
    for (int i = 0; i < 24; i++)
        wide[i] = (float)i;
    pk_tensor wt = host_f32(wide, 3, 8), nt = host_f32(narrow, 3, 4);
    pk_tensor middle = pk_tensor_cols(&wt, 2, 4);
    assert_int_equal(pk_copy(ctx_of(state), &nt, &middle, NULL), PIO_OK);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++)
            assert_true(narrow[r * 4 + c] == (float)(r * 8 + 2 + c));
    pio_error err;
    assert_int_equal(pk_copy(ctx_of(state), &nt, &bt, &err), PIO_ERR_INVALID_ARGUMENT);
    free(x);
}

/* ------------------------------------------------------------------------------------------ */
/* Argument checking                                                                          */
/* ------------------------------------------------------------------------------------------ */

static void test_rejects_bad_operands(void **state)
{
    pk_context *ctx = ctx_of(state);
    float y[12], x[12];
    uint16_t w[12];
    pk_tensor yt = host_f32(y, 3, 4), xt = host_f32(x, 3, 4);
    pk_tensor wt = pk_tensor_host(w, PIO_DTYPE_BF16, 4, 3);
    pio_error err;

    /* Shape: x has 4 columns, w 3. */
    assert_int_equal(pk_matmul(ctx, &yt, &xt, &wt, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "pk_matmul"));
    /* Dtype: x must be F32. */
    pk_tensor x_bf16 = pk_tensor_host(w, PIO_DTYPE_BF16, 3, 4);
    pk_tensor w4 = pk_tensor_host(w, PIO_DTYPE_BF16, 3, 4);
    assert_int_equal(pk_matmul(ctx, &yt, &x_bf16, &w4, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "dtype"));
    /* Device: a tensor tagged as GPU memory never reaches the CPU backend. */
    pk_tensor on_gpu = pk_tensor_make(x, PIO_DTYPE_F32, PK_DEVICE_CUDA, 3, 4);
    assert_int_equal(pk_add(ctx, &yt, &on_gpu, &yt, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "cuda"));
    /* Invalid views and NULL. */
    pk_tensor bad = pk_tensor_cols(&xt, 3, 2);
    assert_null(bad.data);
    assert_int_equal(pk_add(ctx, &yt, &bad, &yt, NULL), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_add(ctx, &yt, NULL, &yt, NULL), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_add(NULL, &yt, &xt, &xt, NULL), PIO_ERR_INVALID_ARGUMENT);
    /* Overlap: matmul output over its input, and a shifted in-place add. */
    pk_tensor w_f32 = host_f32(x, 4, 4);
    pk_tensor y_over_x = host_f32(x, 1, 4);
    pk_tensor x1 = pk_tensor_rows(&w_f32, 0, 1);
    assert_int_equal(pk_matmul(ctx, &y_over_x, &x1, &w_f32, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "overlaps"));
    pk_tensor shifted = pk_tensor_make(x + 1, PIO_DTYPE_F32, PK_DEVICE_CPU, 3, 3);
    pk_tensor first = pk_tensor_make(x, PIO_DTYPE_F32, PK_DEVICE_CPU, 3, 3);
    assert_int_equal(pk_add(ctx, &shifted, &first, &first, NULL), PIO_ERR_INVALID_ARGUMENT);
    /* Interleaved column views of one tensor do not overlap. */
    pk_tensor left = pk_tensor_cols(&xt, 0, 2), right = pk_tensor_cols(&xt, 2, 2);
    assert_int_equal(pk_add(ctx, &left, &right, &right, NULL), PIO_OK);
    /* Bad eps. */
    pk_tensor norm_w = host_f32(y, 1, 4);
    assert_int_equal(pk_rmsnorm(ctx, &yt, &xt, &norm_w, -1.0f, NULL), PIO_ERR_INVALID_ARGUMENT);
}

static void test_tensor_views(void **state)
{
    (void)state;
    float data[6 * 10];
    pk_tensor t = host_f32(data, 6, 10);
    pk_tensor rows = pk_tensor_rows(&t, 2, 3);
    assert_ptr_equal(rows.data, data + 20);
    assert_int_equal(rows.rows, 3);
    pk_tensor cols = pk_tensor_cols(&rows, 4, 5);
    assert_ptr_equal(cols.data, data + 24);
    assert_int_equal(cols.stride, 10);
    assert_false(pk_tensor_is_contiguous(&cols));
    assert_int_equal(pk_tensor_span_bytes(&cols), (2 * 10 + 5) * sizeof(float));
    pk_tensor reshaped = pk_tensor_reshape(&t, 12, 5);
    assert_int_equal(reshaped.cols, 5);
    assert_null(pk_tensor_reshape(&cols, 1, 15).data);
    assert_null(pk_tensor_rows(&t, 5, 2).data);
    assert_null(pk_tensor_make(data, PIO_DTYPE_INVALID, PK_DEVICE_CPU, 1, 1).data);

    pk_buffer buf = {data, sizeof data, PK_DEVICE_CPU};
    assert_non_null(pk_tensor_in(&buf, 40, PIO_DTYPE_F32, 5, 10).data);
    assert_null(pk_tensor_in(&buf, 44, PIO_DTYPE_F32, 5, 10).data);
    assert_null(pk_tensor_in(&buf, 2, PIO_DTYPE_F32, 1, 1).data);
    assert_null(pk_tensor_in(&buf, 0, PIO_DTYPE_F32, INT64_MAX / 2, 4).data);
}

static void test_context_and_buffers(void **state)
{
    pk_context *ctx = ctx_of(state);
    assert_int_equal(pk_context_device(ctx), PK_DEVICE_CPU);
    assert_string_equal(pk_context_backend_name(ctx), "cpu");
    assert_int_equal(pk_context_threads(ctx), 2);
    assert_int_equal(pk_context_gemv_tma_short_context(ctx), 0); /* no such choice on the CPU */
    assert_true(pk_backend_available(PK_DEVICE_CPU));
    pk_buffer buf;
    assert_int_equal(pk_buffer_alloc(ctx, 1000, &buf, NULL), PIO_OK);
    assert_int_equal((uintptr_t)buf.data % 64, 0);
    assert_int_equal(buf.device, PK_DEVICE_CPU);
    memset(buf.data, 1, 1000);
    pk_buffer_free(ctx, &buf);
    assert_null(buf.data);
    pk_buffer_free(ctx, &buf); /* twice is harmless */
    assert_int_equal(pk_synchronize(ctx, NULL), PIO_OK);

    pio_error err;
    assert_int_equal(pk_buffer_alloc(ctx, SIZE_MAX - 8, &buf, &err), PIO_ERR_OUT_OF_MEMORY);
    assert_null(buf.data);
    if (!pk_backend_available(PK_DEVICE_CUDA)) {
        pk_context *gpu = NULL;
        assert_int_equal(pk_context_create(PK_DEVICE_CUDA, NULL, &gpu, &err), PIO_ERR_UNSUPPORTED);
        assert_null(gpu);
        assert_non_null(strstr(err.message, "cuda"));
    }
}

/* The CUDA backend's short-context rule for the TMA GEMVs (pk_context_gemv_tma_short_context):
 * 512 positions for memory below 4 TB/s (an H100's 3,350 GB/s), 4,096 from there (an H200's
 * 4,800); a driver that reports no bandwidth (0) gets the cautious 512. */
static void test_gemv_tma_short_context_rule(void **state)
{
    (void)state;
    assert_int_equal(pk_gemv_tma_short_context_for(0.0), 512);
    assert_int_equal(pk_gemv_tma_short_context_for(3352.3), 512);
    assert_int_equal(pk_gemv_tma_short_context_for(3999.9), 512);
    assert_int_equal(pk_gemv_tma_short_context_for(4000.0), 4096);
    assert_int_equal(pk_gemv_tma_short_context_for(4915.2), 4096);
}

/* ------------------------------------------------------------------------------------------ */
/* Attention over the paged cache                                                             */
/* ------------------------------------------------------------------------------------------ */

enum { MAX_SEQS = 3 };

typedef struct attention_case {
    int32_t n_q, n_kv, head_dim, v_head_dim, block_size;
    pio_dtype cache_dtype;
    int latent; /* values are the first v_head_dim columns of the key entry (MLA) */
} attention_case;

/* One sequence of the batch: `cached` positions stored before, `fresh` in this batch. */
typedef struct seq_plan {
    int32_t cached, fresh;
} seq_plan;

/* Keys and values of every position of every sequence, as F32 rows (what the model computes). */
typedef struct seq_data {
    float *k, *v; /* [length, n_kv·head_dim], [length, n_kv·v_head_dim] */
    int32_t kv_seq;
} seq_data;

/* Dense causal attention for one token over a sequence's first `keys` positions, reading keys
 * and values rounded as the cache stores them. */
static void reference_attention(const attention_case *c, const seq_data *s, const float *q_row,
                                int32_t keys, double *out_row)
{
    int32_t group = c->n_q / c->n_kv, kw = c->n_kv * c->head_dim, vw = c->n_kv * c->v_head_dim;
    double scale = 1.0 / sqrt((double)c->head_dim);
    double *scores = malloc((size_t)keys * sizeof *scores);
    assert_non_null(scores);
    for (int32_t h = 0; h < c->n_q; h++) {
        int32_t kvh = h / group;
        double max_s = -INFINITY, total = 0.0;
        for (int32_t j = 0; j < keys; j++) {
            double dot = 0.0;
            for (int32_t d = 0; d < c->head_dim; d++) {
                float key = s->k[j * kw + kvh * c->head_dim + d];
                if (c->cache_dtype == PIO_DTYPE_BF16)
                    key = round_bf16(key);
                dot += (double)q_row[h * c->head_dim + d] * key;
            }
            scores[j] = dot * scale;
            max_s = fmax(max_s, scores[j]);
        }
        for (int32_t j = 0; j < keys; j++)
            total += (scores[j] = exp(scores[j] - max_s));
        for (int32_t d = 0; d < c->v_head_dim; d++) {
            double acc = 0.0;
            for (int32_t j = 0; j < keys; j++) {
                float value = c->latent ? s->k[j * kw + kvh * c->head_dim + d]
                                        : s->v[j * vw + kvh * c->v_head_dim + d];
                if (c->cache_dtype == PIO_DTYPE_BF16)
                    value = round_bf16(value);
                acc += scores[j] / total * value;
            }
            out_row[h * c->v_head_dim + d] = acc;
        }
    }
    free(scores);
}

/* Stores positions [first, first + count) of sequence s through pk_kv_store. */
static void store_positions(pk_context *ctx, pk_kv_pool *pool, const attention_case *c,
                            const seq_data *s, int32_t first, int32_t count,
                            const pk_tensor *k_cache, const pk_tensor *v_cache)
{
    if (count == 0)
        return;
    int32_t kw = c->n_kv * c->head_dim, vw = c->n_kv * c->v_head_dim;
    int32_t *pos = malloc((size_t)count * sizeof *pos), *rows = calloc((size_t)count, 4);
    int32_t table[64];
    assert_non_null(pos);
    assert_non_null(rows);
    for (int32_t i = 0; i < count; i++)
        pos[i] = first + i;
    assert_int_equal(pk_kv_fill_block_tables(pool, &s->kv_seq, 1, 64, table, NULL), PIO_OK);
    pk_token_batch batch = {
        .positions = pk_tensor_host(pos, PIO_DTYPE_I32, 1, count),
        .seq_rows = pk_tensor_host(rows, PIO_DTYPE_I32, 1, count),
        .block_tables = pk_tensor_host(table, PIO_DTYPE_I32, 1, 64),
        .block_size = c->block_size,
    };
    pk_attention_params p = {c->n_q, c->n_kv, c->head_dim, c->v_head_dim, 0.0f};
    pk_tensor kt = host_f32(s->k + (int64_t)first * kw, count, kw);
    pk_tensor vt = host_f32(s->v + (int64_t)first * vw, count, vw);
    pio_error err;
    pio_status st = pk_kv_store(ctx, k_cache, c->latent ? NULL : v_cache, &kt,
                                c->latent ? NULL : &vt, &batch, &p, &err);
    if (st != PIO_OK)
        print_error("pk_kv_store: %s\n", err.message);
    assert_int_equal(st, PIO_OK);
    free(pos);
    free(rows);
}

static void run_attention_case(pk_context *ctx, const attention_case *c, const seq_plan *plan,
                               int n_seqs)
{
    int32_t kw = c->n_kv * c->head_dim, vw = c->n_kv * c->v_head_dim;
    int32_t qw = c->n_q * c->head_dim, ow = c->n_q * c->v_head_dim;
    pk_kv_pool_config cfg = {.block_size = c->block_size, .n_layers = 2,
                             .n_planes = c->latent ? 1 : 2, .plane_width = {kw, vw},
                             .dtype = c->cache_dtype, .max_tokens = 200};
    pk_kv_pool *pool = NULL;
    assert_int_equal(pk_kv_pool_create(ctx, &cfg, &pool, NULL), PIO_OK);
    /* Layer 1, so plane offsets are exercised. */
    pk_tensor k_cache = pk_kv_pool_plane(pool, 1, 0);
    pk_tensor v_plane = c->latent ? k_cache : pk_kv_pool_plane(pool, 1, 1);
    pk_tensor v_cache = c->latent ? pk_tensor_cols(&k_cache, 0, vw) : v_plane;

    seq_data seqs[MAX_SEQS];
    int32_t n_tokens = 0;
    for (int s = 0; s < n_seqs; s++) {
        int32_t length = plan[s].cached + plan[s].fresh;
        seqs[s].k = random_floats((int64_t)length * kw, -1.0f, 1.0f);
        seqs[s].v = random_floats((int64_t)length * vw, -1.0f, 1.0f);
        assert_int_equal(pk_kv_seq_open(pool, &seqs[s].kv_seq, NULL), PIO_OK);
        n_tokens += plan[s].fresh;
    }
    /* Grow the sequences a little at a time, in turn, so their blocks interleave in the pool. */
    for (int32_t step = 0; step < 64; step++)
        for (int s = 0; s < n_seqs; s++) {
            int32_t length = plan[s].cached + plan[s].fresh;
            int64_t have = pk_kv_seq_length(pool, seqs[s].kv_seq);
            int64_t grow = length - have < 5 ? length - have : 5;
            assert_int_equal(pk_kv_seq_append(pool, seqs[s].kv_seq, grow, NULL), PIO_OK);
        }
    for (int s = 0; s < n_seqs; s++)
        store_positions(ctx, pool, c, &seqs[s], 0, plan[s].cached, &k_cache, &v_plane);

    /* The batch: every sequence's fresh tokens, flattened in sequence order. */
    float *q = random_floats((int64_t)n_tokens * qw, -1.0f, 1.0f);
    float *k_new = random_floats((int64_t)n_tokens * kw, 0.0f, 0.0f);
    float *v_new = random_floats((int64_t)n_tokens * vw, 0.0f, 0.0f);
    float *out = random_floats((int64_t)n_tokens * ow, 0.0f, 0.0f);
    int32_t *pos = malloc((size_t)n_tokens * sizeof *pos);
    int32_t *rows = malloc((size_t)n_tokens * sizeof *rows);
    int32_t seq_ids[MAX_SEQS], tables[MAX_SEQS * 40];
    assert_non_null(pos);
    assert_non_null(rows);
    int32_t t = 0;
    for (int s = 0; s < n_seqs; s++) {
        seq_ids[s] = seqs[s].kv_seq;
        for (int32_t i = 0; i < plan[s].fresh; i++, t++) {
            pos[t] = plan[s].cached + i;
            rows[t] = s;
            memcpy(k_new + (int64_t)t * kw, seqs[s].k + (int64_t)pos[t] * kw, (size_t)kw * 4);
            memcpy(v_new + (int64_t)t * vw, seqs[s].v + (int64_t)pos[t] * vw, (size_t)vw * 4);
        }
    }
    assert_int_equal(pk_kv_fill_block_tables(pool, seq_ids, n_seqs, 40, tables, NULL), PIO_OK);
    pk_token_batch batch = {
        .positions = pk_tensor_host(pos, PIO_DTYPE_I32, 1, n_tokens),
        .seq_rows = pk_tensor_host(rows, PIO_DTYPE_I32, 1, n_tokens),
        .block_tables = pk_tensor_host(tables, PIO_DTYPE_I32, n_seqs, 40),
        .block_size = c->block_size,
    };
    pk_attention_params p = {c->n_q, c->n_kv, c->head_dim, c->v_head_dim,
                             1.0f / sqrtf((float)c->head_dim)};
    pk_tensor qt = host_f32(q, n_tokens, qw), ot = host_f32(out, n_tokens, ow);
    pk_tensor kt = host_f32(k_new, n_tokens, kw), vt = host_f32(v_new, n_tokens, vw);
    pio_error err;
    pio_status st = pk_attention(ctx, &ot, &qt, &kt, c->latent ? NULL : &vt, &k_cache, &v_cache,
                                 &batch, &p, &err);
    if (st != PIO_OK)
        print_error("pk_attention: %s\n", err.message);
    assert_int_equal(st, PIO_OK);

    double *want = malloc((size_t)ow * sizeof *want);
    assert_non_null(want);
    for (t = 0; t < n_tokens; t++) {
        reference_attention(c, &seqs[rows[t]], q + (int64_t)t * qw, pos[t] + 1, want);
        for (int32_t i = 0; i < ow; i++)
            assert_close(out[(int64_t)t * ow + i], want[i], 2e-5, "attention", i);
    }

    free(want);
    free(q);
    free(k_new);
    free(v_new);
    free(out);
    free(pos);
    free(rows);
    for (int s = 0; s < n_seqs; s++) {
        free(seqs[s].k);
        free(seqs[s].v);
    }
    pk_kv_pool_destroy(pool);
}

/* Prefill from scratch, a decode step deep in a sequence, and a chunked prefill after a cached
 * prefix, in one batch. */
static const seq_plan mixed_batch[MAX_SEQS] = {{0, 7}, {20, 1}, {5, 4}};

static void test_attention_gqa4(void **state)
{
    const int32_t block_sizes[2] = {16, 3};
    const pio_dtype dtypes[2] = {PIO_DTYPE_F32, PIO_DTYPE_BF16};
    for (int b = 0; b < 2; b++)
        for (int d = 0; d < 2; d++) {
            attention_case c = {8, 2, 16, 16, block_sizes[b], dtypes[d], 0};
            run_attention_case(ctx_of(state), &c, mixed_batch, MAX_SEQS);
        }
}

static void test_attention_gqa1(void **state)
{
    const int32_t block_sizes[2] = {16, 3};
    for (int b = 0; b < 2; b++) {
        attention_case c = {3, 3, 20, 20, block_sizes[b], PIO_DTYPE_F32, 0};
        run_attention_case(ctx_of(state), &c, mixed_batch, MAX_SEQS);
        c.cache_dtype = PIO_DTYPE_BF16;
        c.head_dim = 13; /* odd width: vector tails */
        c.v_head_dim = 13;
        run_attention_case(ctx_of(state), &c, mixed_batch, MAX_SEQS);
    }
}

static void test_attention_value_width_and_latent(void **state)
{
    attention_case wide_v = {4, 2, 12, 24, 4, PIO_DTYPE_F32, 0};
    run_attention_case(ctx_of(state), &wide_v, mixed_batch, MAX_SEQS);
    /* MLA-like: one latent entry of 40 per token, 5 query heads, values = its first 32 columns. */
    attention_case latent = {5, 1, 40, 32, 3, PIO_DTYPE_BF16, 1};
    run_attention_case(ctx_of(state), &latent, mixed_batch, MAX_SEQS);
}

static void test_attention_single_decode(void **state)
{
    const seq_plan decode[1] = {{40, 1}};
    attention_case c = {32, 8, 128, 128, 16, PIO_DTYPE_BF16, 0};
    run_attention_case(ctx_of(state), &c, decode, 1);
}

static void test_attention_rejects_bad_batches(void **state)
{
    pk_context *ctx = ctx_of(state);
    enum { BS = 4, NB = 3, W = 8 };
    float k_cache[NB * BS * W], v_cache[NB * BS * W], q[2 * W], out[2 * W], kn[2 * W], vn[2 * W];
    memset(k_cache, 0, sizeof k_cache);
    memset(v_cache, 0, sizeof v_cache);
    memset(q, 0, sizeof q);
    memset(kn, 0, sizeof kn);
    memset(vn, 0, sizeof vn);
    int32_t pos[2] = {0, 1}, rows[2] = {0, 0}, table[2] = {2, 0};
    pk_tensor kc = host_f32(k_cache, NB * BS, W), vc = host_f32(v_cache, NB * BS, W);
    pk_tensor qt = host_f32(q, 2, W), ot = host_f32(out, 2, W);
    pk_tensor kt = host_f32(kn, 2, W), vt = host_f32(vn, 2, W);
    pk_token_batch batch = {
        .positions = pk_tensor_host(pos, PIO_DTYPE_I32, 1, 2),
        .seq_rows = pk_tensor_host(rows, PIO_DTYPE_I32, 1, 2),
        .block_tables = pk_tensor_host(table, PIO_DTYPE_I32, 1, 2),
        .block_size = BS,
    };
    pk_attention_params p = {1, 1, 8, 0, 0.35f};
    pio_error err;
    assert_int_equal(pk_attention(ctx, &ot, &qt, &kt, &vt, &kc, &vc, &batch, &p, &err), PIO_OK);

    table[0] = 3; /* block id beyond the cache */
    assert_int_equal(pk_attention(ctx, &ot, &qt, &kt, &vt, &kc, &vc, &batch, &p, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "block id 3"));
    table[0] = 2;
    pos[1] = 8; /* needs block 2 of a 2-wide table */
    assert_int_equal(pk_attention(ctx, &ot, &qt, &kt, &vt, &kc, &vc, &batch, &p, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    pos[1] = -1;
    assert_int_equal(pk_kv_store(ctx, &kc, &vc, &kt, &vt, &batch, &p, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    pos[1] = 1;
    rows[1] = 1; /* only one table row */
    assert_int_equal(pk_attention(ctx, &ot, &qt, &kt, &vt, &kc, &vc, &batch, &p, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    rows[1] = 0;

    pk_attention_params bad_gqa = {3, 2, 8, 0, 0.35f};
    assert_int_equal(pk_attention(ctx, &ot, &qt, &kt, &vt, &kc, &vc, &batch, &bad_gqa, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    pk_tensor short_cache = pk_tensor_rows(&kc, 0, 10); /* not whole blocks */
    assert_int_equal(pk_attention(ctx, &ot, &qt, &kt, &vt, &short_cache, &vc, &batch, &p, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_attention(ctx, &ot, &qt, NULL, &vt, &kc, &vc, &batch, &p, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    /* out over q */
    assert_int_equal(pk_attention(ctx, &qt, &qt, &kt, &vt, &kc, &vc, &batch, &p, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    /* Values stored through a view of the key plane would overwrite keys. */
    assert_int_equal(pk_kv_store(ctx, &kc, &kc, &kt, &vt, &batch, &p, &err),
                     PIO_ERR_INVALID_ARGUMENT);
}

/*
 * pk_qk_norm_rope_attention against its definition, pk_qk_norm_rope_store then pk_attention, on
 * copies of the same inputs: the outputs and both cache planes bit for bit (the CPU backend runs
 * the two; this checks the op's plumbing and that it reaches the store and the attention with
 * the right operands). Two sequences decoding one token each (distinct_sequences), then a
 * two-token chunk of one sequence; with v NULL only keys are stored. Errors name the op.
 */
enum { QA_NQ = 4, QA_NKV = 2, QA_HD = 8, QA_BS = 4, QA_BLOCKS = 6, QA_T = 2 };
enum { QA_QW = QA_NQ * QA_HD, QA_KW = QA_NKV * QA_HD, QA_SLOTS = QA_BLOCKS * QA_BS };

typedef struct qa_inputs {
    float q[QA_T * QA_QW], k[QA_T * QA_KW], v[QA_T * QA_KW];
    float k_cache[QA_SLOTS * QA_KW], v_cache[QA_SLOTS * QA_KW], out[QA_T * QA_QW];
} qa_inputs;

/* Runs the fused op (fused != 0) or its two ops on in, with v given or not. */
static pio_status qa_run(pk_context *ctx, qa_inputs *in, int fused, int with_v,
                         const pk_token_batch *batch, pio_error *err)
{
    static const float q_norm[QA_HD] = {1.0f, 0.5f, 1.5f, 1.25f, 0.75f, 1.0f, 2.0f, 0.25f};
    static const float k_norm[QA_HD] = {0.5f, 1.0f, 1.0f, 1.5f, 0.25f, 2.0f, 0.75f, 1.25f};
    pk_tensor q = host_f32(in->q, QA_T, QA_QW), k = host_f32(in->k, QA_T, QA_KW);
    pk_tensor v = host_f32(in->v, QA_T, QA_KW), out = host_f32(in->out, QA_T, QA_QW);
    pk_tensor kc = host_f32(in->k_cache, QA_SLOTS, QA_KW);
    pk_tensor vc = host_f32(in->v_cache, QA_SLOTS, QA_KW);
    pk_tensor qn = host_f32((float *)q_norm, 1, QA_HD), kn = host_f32((float *)k_norm, 1, QA_HD);
    pk_rope_params rope = {.layout = PK_ROPE_NEOX, .head_dim = QA_HD, .rotary_dim = QA_HD,
                           .rotary_offset = 0, .theta = 10000.0f};
    pk_attention_params p = {QA_NQ, QA_NKV, QA_HD, 0, 0.35f};
    const pk_tensor *vp = with_v ? &v : NULL;
    if (fused)
        return pk_qk_norm_rope_attention(ctx, &out, &q, &k, vp, &qn, &kn, 1e-6f, &rope, &kc, &vc,
                                         batch, &p, err);
    pio_status st = pk_qk_norm_rope_store(ctx, &q, &k, vp, &qn, &kn, 1e-6f, &rope, &kc,
                                          with_v ? &vc : NULL, batch, &p, err);
    return st != PIO_OK ? st
                        : pk_attention(ctx, &out, &q, NULL, NULL, &kc, &vc, batch, &p, err);
}

static void qa_check(pk_context *ctx, const int32_t *pos, const int32_t *rows, int distinct,
                     int with_v)
{
    static const int32_t table[2 * 3] = {4, 1, -1, 0, 5, 2};
    int32_t pos_c[QA_T], rows_c[QA_T], table_c[6];
    memcpy(pos_c, pos, sizeof pos_c);
    memcpy(rows_c, rows, sizeof rows_c);
    memcpy(table_c, table, sizeof table_c);
    pk_token_batch batch = {.positions = pk_tensor_host(pos_c, PIO_DTYPE_I32, 1, QA_T),
                            .seq_rows = pk_tensor_host(rows_c, PIO_DTYPE_I32, 1, QA_T),
                            .block_tables = pk_tensor_host(table_c, PIO_DTYPE_I32, 2, 3),
                            .block_size = QA_BS,
                            .distinct_sequences = distinct};
    qa_inputs *a = malloc(sizeof *a), *b = malloc(sizeof *b);
    assert_non_null(a);
    assert_non_null(b);
    float *r = random_floats(sizeof *a / sizeof(float), -1.0f, 1.0f);
    memcpy(a, r, sizeof *a);
    memcpy(b, r, sizeof *b);
    pio_error err;
    assert_int_equal(qa_run(ctx, a, 1, with_v, &batch, &err), PIO_OK);
    assert_int_equal(qa_run(ctx, b, 0, with_v, &batch, &err), PIO_OK);
    assert_memory_equal(a->out, b->out, sizeof a->out);
    assert_memory_equal(a->k_cache, b->k_cache, sizeof a->k_cache);
    assert_memory_equal(a->v_cache, b->v_cache, sizeof a->v_cache);
    /* It did attend: the output is not the poison it started as. */
    assert_memory_not_equal(a->out, r + offsetof(qa_inputs, out) / sizeof(float),
                            sizeof a->out);
    free(r);
    free(a);
    free(b);
}

static void test_qk_norm_rope_attention(void **state)
{
    pk_context *ctx = ctx_of(state);
    const int32_t decode_pos[QA_T] = {6, 9}, decode_rows[QA_T] = {0, 1};
    qa_check(ctx, decode_pos, decode_rows, 1, 1);
    qa_check(ctx, decode_pos, decode_rows, 1, 0);
    const int32_t chunk_pos[QA_T] = {3, 4}, chunk_rows[QA_T] = {1, 1};
    qa_check(ctx, chunk_pos, chunk_rows, 0, 1);

    qa_inputs *in = calloc(1, sizeof *in);
    assert_non_null(in);
    int32_t pos[QA_T] = {0, 1}, rows[QA_T] = {0, 1}, table[2] = {0, 1};
    pk_token_batch batch = {.positions = pk_tensor_host(pos, PIO_DTYPE_I32, 1, QA_T),
                            .seq_rows = pk_tensor_host(rows, PIO_DTYPE_I32, 1, QA_T),
                            .block_tables = pk_tensor_host(table, PIO_DTYPE_I32, 2, 1),
                            .block_size = QA_BS};
    pk_tensor q = host_f32(in->q, QA_T, QA_QW), k = host_f32(in->k, QA_T, QA_KW);
    pk_tensor kc = host_f32(in->k_cache, QA_SLOTS, QA_KW);
    pk_tensor vc = host_f32(in->v_cache, QA_SLOTS, QA_KW);
    float norm[QA_HD] = {1, 1, 1, 1, 1, 1, 1, 1};
    pk_tensor nt = host_f32(norm, 1, QA_HD);
    pk_rope_params rope = {.layout = PK_ROPE_NEOX, .head_dim = QA_HD, .rotary_dim = QA_HD,
                           .theta = 10000.0f};
    pk_attention_params p = {QA_NQ, QA_NKV, QA_HD, 0, 0.35f};
    pio_error err;
    pk_tensor k_as_out = host_f32(in->k, QA_T, QA_KW * 2);
    assert_int_equal(pk_qk_norm_rope_attention(ctx, &k_as_out, &q, &k, NULL, &nt, &nt, 1e-6f,
                                               &rope, &kc, &vc, &batch, &p, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "pk_qk_norm_rope_attention"));
    pos[1] = 4; /* past the one-block table */
    pk_tensor out = host_f32(in->out, QA_T, QA_QW);
    assert_int_equal(pk_qk_norm_rope_attention(ctx, &out, &q, &k, NULL, &nt, &nt, 1e-6f, &rope,
                                               &kc, &vc, &batch, &p, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    free(in);
}

/* Run against both the SIMD and the portable paths. */
#define OP_TESTS                                                                                \
    cmocka_unit_test(test_tensor_views), cmocka_unit_test(test_context_and_buffers),            \
        cmocka_unit_test(test_matmul_bf16), cmocka_unit_test(test_matmul_f32),                  \
        cmocka_unit_test(test_matmul_add), cmocka_unit_test(test_matmul_empty_k),               \
        cmocka_unit_test(test_embedding), cmocka_unit_test(test_rmsnorm),                       \
        cmocka_unit_test(test_rmsnorm_zero_row_uses_eps), cmocka_unit_test(test_head_rmsnorm),  \
        cmocka_unit_test(test_rope_neox), cmocka_unit_test(test_rope_interleaved),              \
        cmocka_unit_test(test_rope_layouts_differ_by_permutation),                              \
        cmocka_unit_test(test_rope_rejects_bad_params), cmocka_unit_test(test_swiglu),          \
        cmocka_unit_test(test_rmsnorm_matmul_fusions), cmocka_unit_test(test_add),              \
        cmocka_unit_test(test_softmax), cmocka_unit_test(test_qk_norm_rope_attention),         \
        cmocka_unit_test(test_argmax), cmocka_unit_test(test_cast_and_copy),                    \
        cmocka_unit_test(test_rejects_bad_operands), cmocka_unit_test(test_attention_gqa4),     \
        cmocka_unit_test(test_attention_gqa1),                                                  \
        cmocka_unit_test(test_attention_value_width_and_latent),                                \
        cmocka_unit_test(test_attention_single_decode),                                         \
        cmocka_unit_test(test_attention_rejects_bad_batches)

int main(void)
{
    const struct CMUnitTest simd[] = {OP_TESTS, cmocka_unit_test(test_gemv_tma_short_context_rule),
                                      cmocka_unit_test(test_matmul_benchmark)};
    const struct CMUnitTest portable[] = {OP_TESTS};
    int failed = cmocka_run_group_tests_name("kernels_cpu_simd", simd, setup_simd,
                                             teardown_context);
    failed += cmocka_run_group_tests_name("kernels_cpu_portable", portable, setup_portable,
                                          teardown_context);
    return failed;
}
