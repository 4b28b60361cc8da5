/*
 * What the GPU op tests share (tests/gpu/test_*_cuda.c): a seeded random stream, allocations
 * released by each test's teardown, and host/device tensor pairs — the same bytes on the host
 * (for the CPU op) and on the GPU (for the CUDA op), NaN-poisoned outputs and sentinels in the
 * gaps between rows, compared by normalised L2 error. Include once per test program, after
 * cmocka.h; the program sets cpu_ctx, gpu_ctx and rng_state in its group setup.
 */
#ifndef PIO_TESTS_GPU_TEST_H
#define PIO_TESTS_GPU_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"

static pk_context *cpu_ctx, *gpu_ctx;

/* ------------------------------------------------------------------------------------------ */
/* Random numbers                                                                             */
/* ------------------------------------------------------------------------------------------ */

static uint64_t rng_state;

static inline uint64_t next_random(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static inline float uniform(float lo, float hi)
{
    return lo + (hi - lo) * (float)((next_random() >> 40) * 0x1.0p-24);
}

static inline int64_t random_int(int64_t lo, int64_t hi) /* [lo, hi] */
{
    return lo + (int64_t)(next_random() % (uint64_t)(hi - lo + 1));
}

/* ------------------------------------------------------------------------------------------ */
/* Host/device tensor pairs                                                                   */
/* ------------------------------------------------------------------------------------------ */

static const float SENTINEL = 12345.5f;

/* Everything a test allocates, released by the teardown. */
enum { MAX_ALLOCS = 1024 };
static void *host_allocs[MAX_ALLOCS];
static int n_host_allocs;
static pk_buffer dev_allocs[MAX_ALLOCS];
static int n_dev_allocs;

static inline void *host_alloc(size_t bytes)
{
    assert_true(n_host_allocs < MAX_ALLOCS);
    void *p = calloc(1, bytes > 0 ? bytes : 1);
    assert_non_null(p);
    host_allocs[n_host_allocs++] = p;
    return p;
}

static inline void *dev_alloc(size_t bytes)
{
    assert_true(n_dev_allocs < MAX_ALLOCS);
    pio_error err;
    pk_buffer *b = &dev_allocs[n_dev_allocs];
    pio_status st = pk_buffer_alloc(gpu_ctx, bytes > 0 ? bytes : 1, b, &err);
    if (st != PIO_OK)
        print_error("pk_buffer_alloc(%zu): %s\n", bytes, err.message);
    assert_int_equal(st, PIO_OK);
    n_dev_allocs++;
    return b->data;
}

static inline int release_all(void **state)
{
    (void)state;
    for (int i = 0; i < n_host_allocs; i++)
        free(host_allocs[i]);
    n_host_allocs = 0;
    for (int i = 0; i < n_dev_allocs; i++)
        pk_buffer_free(gpu_ctx, &dev_allocs[i]);
    n_dev_allocs = 0;
    return 0;
}

static inline void expect_ok(pio_status st, const pio_error *err, const char *what)
{
    if (st != PIO_OK)
        print_error("%s: %s (%s)\n", what, err->message, pio_status_str(st));
    assert_int_equal(st, PIO_OK);
}

static inline void sync_ctx(pk_context *ctx, const char *what)
{
    pio_error err;
    expect_ok(pk_synchronize(ctx, &err), &err, what);
}

static inline void sync_gpu(const char *what)
{
    sync_ctx(gpu_ctx, what);
}

/*
 * A [rows, cols] tensor with `pad` extra elements after each row, on the host (h, for the CPU
 * op) and on the GPU (d, same bytes), plus a host buffer for what comes back (got).
 */
typedef struct pair {
    pk_tensor h, d;
    void *got;
    size_t span_bytes;
} pair;

typedef enum fill_kind { FILL_UNIFORM, FILL_NAN, FILL_ZERO } fill_kind;

static inline void store_value(void *base, pio_dtype dt, int64_t i, float v)
{
    if (dt == PIO_DTYPE_BF16)
        ((uint16_t *)base)[i] = pio_f32_to_bf16(v);
    else
        ((float *)base)[i] = v;
}

static inline float load_value(const void *base, pio_dtype dt, int64_t i)
{
    return dt == PIO_DTYPE_BF16 ? pio_bf16_to_f32(((const uint16_t *)base)[i])
                                : ((const float *)base)[i];
}

static inline void upload(pair *p)
{
    pio_error err;
    int64_t n = (int64_t)(p->span_bytes / pio_dtype_size(p->h.dtype));
    if (n == 0)
        return;
    pk_tensor src = pk_tensor_host(p->h.data, p->h.dtype, 1, n);
    pk_tensor dst = pk_tensor_make(p->d.data, p->d.dtype, PK_DEVICE_CUDA, 1, n);
    expect_ok(pk_copy(gpu_ctx, &dst, &src, &err), &err, "upload");
}

/* Copies the whole span (gaps included) of the device tensor into p->got. */
static inline void download(pair *p)
{
    pio_error err;
    int64_t n = (int64_t)(p->span_bytes / pio_dtype_size(p->h.dtype));
    if (n > 0) {
        pk_tensor dst = pk_tensor_host(p->got, p->h.dtype, 1, n);
        pk_tensor src = pk_tensor_make(p->d.data, p->d.dtype, PK_DEVICE_CUDA, 1, n);
        expect_ok(pk_copy(gpu_ctx, &dst, &src, &err), &err, "download");
    }
    sync_gpu("download");
}

static inline pair make_pair(pio_dtype dt, int64_t rows, int64_t cols, int64_t pad, fill_kind fill,
                      float lo, float hi)
{
    pair p;
    int64_t stride = cols + pad;
    int64_t n = rows > 0 ? (rows - 1) * stride + cols : 0;
    size_t elem = pio_dtype_size(dt);
    p.span_bytes = (size_t)n * elem;
    void *h = host_alloc(p.span_bytes);
    for (int64_t i = 0; i < n; i++) {
        int in_view = i % stride < cols;
        if (dt == PIO_DTYPE_I32)
            ((int32_t *)h)[i] = in_view ? (int32_t)random_int((int64_t)lo, (int64_t)hi) : -7;
        else if (!in_view)
            store_value(h, dt, i, SENTINEL);
        else
            store_value(h, dt, i, fill == FILL_NAN ? NAN : fill == FILL_ZERO ? 0.0f
                                                                             : uniform(lo, hi));
    }
    p.h = pk_tensor_host(h, dt, rows, cols);
    p.h.stride = stride;
    p.d = pk_tensor_make(dev_alloc(p.span_bytes), dt, PK_DEVICE_CUDA, rows, cols);
    p.d.stride = stride;
    p.got = host_alloc(p.span_bytes);
    upload(&p);
    return p;
}

static inline pair random_pair(pio_dtype dt, int64_t rows, int64_t cols, int64_t pad)
{
    return make_pair(dt, rows, cols, pad, FILL_UNIFORM, -1.0f, 1.0f);
}

static inline pair nan_pair(pio_dtype dt, int64_t rows, int64_t cols, int64_t pad)
{
    return make_pair(dt, rows, cols, pad, FILL_NAN, 0.0f, 0.0f);
}

/* A [1, n] I32 pair holding `values`. */
static inline pair int_pair(const int32_t *values, int64_t n)
{
    pair p = make_pair(PIO_DTYPE_I32, 1, n, 0, FILL_ZERO, 0, 0);
    memcpy(p.h.data, values, (size_t)n * 4);
    upload(&p);
    return p;
}

/* Column view [first, first + count) of both sides (got stays the parent's). */
static inline pair cols_of(const pair *p, int64_t first, int64_t count)
{
    pair v = *p;
    v.h = pk_tensor_cols(&p->h, first, count);
    v.d = pk_tensor_cols(&p->d, first, count);
    return v;
}

/* Offset of view element (r, c) from the start of the span of `parent` (the pair's got). */
static inline int64_t view_index(const pair *parent, const pk_tensor *view, int64_t r, int64_t c)
{
    size_t elem = pio_dtype_size(view->dtype);
    int64_t base = (int64_t)(((const char *)view->data - (const char *)parent->h.data) / elem);
    return base + r * view->stride + c;
}

/*
 * Downloads p and compares the view `hview` (p itself when NULL, or a view of it) with the
 * CPU's result in p->h: normalised L2 error within tol (0: bit-exact; the error is returned),
 * and every element outside the view (in the span) unchanged from `before` (the bytes uploaded
 * before the op, NULL: skip). Rows r of the view with nan_rows[r] set (NULL: none) must be NaN
 * throughout instead (a bad token; the CPU's values there are ignored). want_finite: the CPU's
 * values must be finite (an output that a NaN on both sides would otherwise hide, e.g. read
 * from an unwritten cache slot).
 */
static inline double check_pair_rows(const char *what, pair *p, const pk_tensor *hview,
                                     double tol, const void *before,
                                     const unsigned char *nan_rows, int want_finite)
{
    download(p);
    pio_dtype dt = p->h.dtype;
    const pk_tensor *view = hview != NULL ? hview : &p->h;
    double diff2 = 0.0, ref2 = 0.0;
    for (int64_t r = 0; r < view->rows; r++)
        for (int64_t c = 0; c < view->cols; c++) {
            int64_t i = view_index(p, view, r, c);
            if (dt == PIO_DTYPE_I32) {
                int32_t g = ((int32_t *)p->got)[i], w = ((int32_t *)p->h.data)[i];
                if (g != w) {
                    print_error("%s[%lld, %lld]: got %d, want %d\n", what, (long long)r,
                                (long long)c, g, w);
                    fail();
                }
                continue;
            }
            float g = load_value(p->got, dt, i), w = load_value(p->h.data, dt, i);
            if (nan_rows != NULL && nan_rows[r]) {
                if (!isnan(g)) {
                    print_error("%s[%lld, %lld]: got %.9g, want NaN (bad token)\n", what,
                                (long long)r, (long long)c, g);
                    fail();
                }
                continue;
            }
            if (want_finite && !isfinite(w)) {
                print_error("%s[%lld, %lld]: the cpu's value is %.9g\n", what, (long long)r,
                            (long long)c, w);
                fail();
            }
            if (isnan(w) != isnan(g) || (isfinite(w) && !isfinite(g)) ||
                (isinf(w) && g != w) || (tol == 0.0 && !isnan(w) && g != w)) {
                print_error("%s[%lld, %lld]: got %.9g, want %.9g\n", what, (long long)r,
                            (long long)c, g, w);
                fail();
            }
            if (isfinite(w)) {
                diff2 += ((double)g - w) * ((double)g - w);
                ref2 += (double)w * w;
            }
        }
    double rel = sqrt(diff2) / (ref2 > 0.0 ? sqrt(ref2) : 1.0);
    if (rel > tol) {
        print_error("%s: normalised error %.3g > %.3g\n", what, rel, tol);
        fail();
    }
    if (before != NULL) {
        size_t elem = pio_dtype_size(dt);
        int64_t n = (int64_t)(p->span_bytes / elem);
        int64_t base = view_index(p, view, 0, 0);
        for (int64_t i = 0; i < n; i++) {
            int64_t rel_i = i - base;
            int inside = rel_i >= 0 && rel_i / view->stride < view->rows &&
                         rel_i % view->stride < view->cols;
            if (!inside && memcmp((const char *)p->got + i * elem,
                                  (const char *)before + i * elem, elem) != 0) {
                print_error("%s: element %lld outside the view was written\n", what,
                            (long long)i);
                fail();
            }
        }
    }
    return rel;
}

/* check_pair_rows with no NaN rows and no finiteness demand. */
static inline void check_pair(const char *what, pair *p, const pk_tensor *hview, double tol,
                              const void *before)
{
    (void)check_pair_rows(what, p, hview, tol, before, NULL, 0);
}

static inline void *snapshot(const pair *p)
{
    void *copy = host_alloc(p->span_bytes);
    memcpy(copy, p->h.data, p->span_bytes);
    return copy;
}

/* Whether PIO_KERNELS_BENCH asks for the timing tests; when not, says how to get them (the
 * test then returns without asserting anything). */
static inline int gpu_bench_enabled(void)
{
    const char *env = getenv("PIO_KERNELS_BENCH");
    if (env != NULL && atoi(env) != 0)
        return 1;
    print_message("(skipped: set PIO_KERNELS_BENCH=1)\n");
    return 0;
}

/* PIO_GPU_TEST_FILTER=PATTERN runs only the tests whose names match (e.g. "*decode*" for a
 * sanitizer run, "*benchmark*" for timings alone). Call before cmocka_run_group_tests. */
static inline void apply_test_filter(void)
{
    const char *filter = getenv("PIO_GPU_TEST_FILTER");
    if (filter != NULL && *filter != '\0')
        cmocka_set_test_filter(filter);
}

#endif
