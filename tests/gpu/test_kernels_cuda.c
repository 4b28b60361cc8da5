/*
 * Every op of the CUDA backend against its CPU twin (the CPU backend), on fresh random inputs at
 * several shapes. Run by `make test-gpu` on a machine with a GPU; not part of `make test`.
 *
 * Each check builds its inputs on the host, runs the op on a CPU context over host tensors and on
 * a CUDA context over device copies of the same bytes, and compares. Outputs start as NaN inside
 * the view and as a sentinel in the gaps between rows (column views with padding), so an element
 * the GPU did not write, or one it wrote outside the view, fails the check.
 *
 * Error measure: ‖gpu − cpu‖₂ / ‖cpu‖₂ over the view, and every element must be finite where the
 * CPU's is (NaN where the CPU's is NaN). Thresholds (docs/KERNELS.md, "CUDA backend"):
 *   TOL_F32     2e-5  fp32 math on both sides, differing only in summation order and 1-2 ulp of
 *                     expf/sinf/cosf (matmul GEMV and fp32 GEMM, norms, rope, softmax, swiglu,
 *                     attention over BF16 or F32 caches: both backends round the cache alike)
 *   TOL_BF16_X  1e-2  cuBLASLt with BF16 weights (every M on lt_ctx, M > 8 on gemv_ctx): x is
 *                     rounded to bf16 first, a relative error of about 2^-9/sqrt(3) = 1.1e-3
 *                     per product; up to 2^-9 for a single product (K = 1), more relative to a
 *                     sum that cancels against the accumulated y (seen: 5.1e-3 at [1 x 1 x 1])
 *   TOL_BF16_TC 1e-4  the same product against the CPU fed the bf16-rounded x: what is left is
 *                     the tensor cores' fp32 accumulation order (a wrong layout or transpose
 *                     gives errors of order 1)
 *               (also pk_moe_topk_softmax weights and pk_moe_experts: fp32 dots over the same
 *               products, warp-strided sums on the GPU against AVX2 lanes on the CPU)
 *   TOL_CHAIN   1e-4  three layers of fp32 GEMVs feeding each other (test_gemv_chain): the
 *                     TOL_F32 differences of each compound through the residual
 *   exact             add, cast, copy, embedding, argmax, kv_store, pk_moe_topk_softmax ids
 *                     (bit for bit)
 *
 * Seeds: PIO_GPU_TEST_SEED=N repeats a run (the seed is printed); otherwise the clock picks one.
 * PIO_GPU_TEST_SANITIZER=1 (under compute-sanitizer) drops the largest shapes, the deliberate
 * out-of-memory allocation and the deliberately refused wait inside a graph recording, which
 * the sanitizer would count as API errors.
 * PIO_KERNELS_BENCH=1 also times matmul (both paths) and attention at Qwen3-4B shapes.
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

#include "kernels/ops.h"

#define TOL_F32 2e-5
#define TOL_BF16_X 1e-2
#define TOL_BF16_TC 1e-4
#define TOL_CHAIN 1e-4
#define PK_TEST_GEMV_MAX_M 2 /* gpu_ctx's default (PK_CUDA_GEMV_MAX_M_DEFAULT) */

/* The same device with the matmul path forced: GEMV up to M = 8, or cuBLASLt for every M. */
static pk_context *gemv_ctx, *lt_ctx;
static int sanitizer; /* PIO_GPU_TEST_SANITIZER=1: smaller shapes, no deliberate API errors */

#include "tests/gpu/gpu_setup.h"
#include "tests/gpu/gpu_test.h"

/* ------------------------------------------------------------------------------------------ */
/* Setup                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    rng_state = gpu_test_seed("test_kernels_cuda");
    sanitizer = gpu_test_under_sanitizer();
    /* gpu_ctx streams the weights of every one-row GEMV that can through shared memory
     * (gemv_tma_kernel, whatever their size); gemv_ctx keeps the default rule (many-wave
     * matrices only), so the test shapes take gemv_kernel there. The variables are read at
     * creation. */
    setenv("PIO_CUDA_GEMV_TMA", "all", 1);
    int contexts = gpu_test_contexts(&cpu_ctx, &gpu_ctx);
    unsetenv("PIO_CUDA_GEMV_TMA");
    if (contexts != 0)
        return -1;
    /* The same device with the matmul path forced. */
    pio_error err;
    pk_context_options options = {0};
    setenv("PIO_CUDA_GEMV_MAX_M", "8", 1);
    pio_status st = pk_context_create(PK_DEVICE_CUDA, &options, &gemv_ctx, &err);
    setenv("PIO_CUDA_GEMV_MAX_M", "0", 1);
    if (st == PIO_OK)
        st = pk_context_create(PK_DEVICE_CUDA, &options, &lt_ctx, &err);
    unsetenv("PIO_CUDA_GEMV_MAX_M");
    if (st != PIO_OK) {
        fprintf(stderr, "cuda context: %s (%s)\n", err.message, pio_status_str(st));
        pk_context_destroy(gemv_ctx);
        gpu_test_release_contexts(cpu_ctx, gpu_ctx);
        cpu_ctx = gpu_ctx = gemv_ctx = lt_ctx = NULL;
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    pk_context_destroy(lt_ctx);
    pk_context_destroy(gemv_ctx);
    return gpu_test_release_contexts(cpu_ctx, gpu_ctx);
}

/* ------------------------------------------------------------------------------------------ */
/* Context, memory, copies                                                                    */
/* ------------------------------------------------------------------------------------------ */

static void test_context_and_buffers(void **state)
{
    (void)state;
    assert_true(pk_backend_available(PK_DEVICE_CUDA));
    assert_int_equal(pk_context_device(gpu_ctx), PK_DEVICE_CUDA);
    assert_string_equal(pk_context_backend_name(gpu_ctx), "cuda");
    assert_int_equal(pk_context_threads(gpu_ctx), 1);
    pk_buffer buf;
    pio_error err;
    expect_ok(pk_buffer_alloc(gpu_ctx, 1000, &buf, &err), &err, "alloc");
    assert_int_equal((uintptr_t)buf.data % 64, 0);
    assert_int_equal(buf.device, PK_DEVICE_CUDA);
    pk_buffer_free(gpu_ctx, &buf);
    assert_null(buf.data);
    pk_buffer_free(gpu_ctx, &buf);
    expect_ok(pk_buffer_alloc(gpu_ctx, 0, &buf, &err), &err, "alloc 0");
    pk_buffer_free(gpu_ctx, &buf);
    /* Too much memory: out of memory, and the context keeps working. */
    if (!sanitizer) {
        assert_int_equal(pk_buffer_alloc(gpu_ctx, SIZE_MAX - 8, &buf, &err),
                         PIO_ERR_OUT_OF_MEMORY);
        assert_null(buf.data);
        sync_gpu("after a failed allocation");
    }
    /* A device context with an ordinal that does not exist. */
    pk_context_options options = {.device_index = 4096};
    pk_context *bad = NULL;
    assert_int_not_equal(pk_context_create(PK_DEVICE_CUDA, &options, &bad, &err), PIO_OK);
    assert_null(bad);
    /* Host tensors are refused by ops on the CUDA context. */
    float x[4] = {0};
    pk_tensor host = pk_tensor_host(x, PIO_DTYPE_F32, 1, 4);
    assert_int_equal(pk_add(gpu_ctx, &host, &host, &host, &err), PIO_ERR_INVALID_ARGUMENT);
}

static void test_copy(void **state)
{
    (void)state;
    pio_error err;
    for (int d = 0; d < 2; d++) {
        pio_dtype dt = d ? PIO_DTYPE_BF16 : PIO_DTYPE_F32;
        /* host view -> device view -> device view -> host view, strides differing at each step */
        pair a = random_pair(dt, 7, 13, 3), b = nan_pair(dt, 7, 13, 0), c = nan_pair(dt, 7, 13, 5);
        void *c_before = snapshot(&c);
        expect_ok(pk_copy(gpu_ctx, &b.d, &a.h, &err), &err, "h2d");
        expect_ok(pk_copy(gpu_ctx, &c.d, &b.d, &err), &err, "d2d");
        float *back = host_alloc(7 * 20 * 4);
        pk_tensor back_t = pk_tensor_host(back, dt, 7, 13);
        back_t.stride = 20;
        expect_ok(pk_copy(gpu_ctx, &back_t, &c.d, &err), &err, "d2h");
        /* a host-to-host copy through the CUDA context, in stream order */
        float *back2 = host_alloc(7 * 13 * 4);
        pk_tensor back2_t = pk_tensor_host(back2, dt, 7, 13);
        expect_ok(pk_copy(gpu_ctx, &back2_t, &back_t, &err), &err, "h2h");
        sync_gpu("copies");
        size_t elem = pio_dtype_size(dt);
        for (int64_t r = 0; r < 7; r++)
            for (int64_t col = 0; col < 13; col++) {
                const char *want = (const char *)a.h.data + (r * 16 + col) * elem;
                assert_memory_equal((const char *)back + (r * 20 + col) * elem, want, elem);
                assert_memory_equal((const char *)back2 + (r * 13 + col) * elem, want, elem);
            }
        memcpy(c.h.data, c_before, c.span_bytes);
        for (int64_t r = 0; r < 7; r++)
            memcpy((char *)c.h.data + r * 18 * elem, (const char *)a.h.data + r * 16 * elem,
                   13 * elem);
        check_pair("copy", &c, NULL, 0.0, c_before);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Matmul                                                                                     */
/* ------------------------------------------------------------------------------------------ */

typedef struct matmul_case {
    int64_t m, n, k;
    int64_t x_pad, w_pad, y_pad;
} matmul_case;

static const matmul_case matmul_cases[] = {
    /* GEMV (M <= 8): aligned rows take the 16-byte path, odd strides the scalar one */
    {1, 1024, 2560, 0, 0, 0}, {1, 257, 515, 0, 0, 1}, {1, 300, 64, 4, 8, 0},
    {2, 333, 1000, 4, 8, 3},  {3, 77, 129, 1, 0, 0},  {5, 96, 2048, 0, 0, 0},
    {8, 130, 520, 0, 0, 2},   {1, 1, 1, 0, 0, 0},     {7, 40, 13, 0, 0, 0},
    {1, 300, 512, 0, 8, 0},   {1, 3, 256, 0, 0, 0},     {1, 1001, 776, 0, 8, 0},
    /* cuBLASLt (M > 8) */
    {9, 300, 200, 0, 0, 0},   {16, 512, 768, 0, 0, 4}, {64, 1000, 1024, 0, 0, 0},
    {40, 256, 512, 4, 8, 0},  {130, 96, 72, 0, 0, 0},  {33, 129, 257, 3, 1, 1},
    {512, 384, 640, 0, 0, 0},
};

/* Whether cuBLASLt certainly takes this case (16-byte aligned rows of W and y; x goes through
 * the backend's own aligned bf16 copy): then its bf16 product is also checked tightly against
 * the CPU fed the bf16-rounded x. */
static int lt_aligned(const matmul_case *c)
{
    return (c->k + c->w_pad) % 8 == 0 && (c->n + c->y_pad) % 4 == 0;
}

/* On gemv_ctx (GEMV for M <= 8) or lt_ctx (cuBLASLt for every M). */
static void check_matmul(pk_context *ctx, const matmul_case *c, pio_dtype wt, int accumulate)
{
    char what[160];
    snprintf(what, sizeof what, "%s %s [%lld x %lld x %lld] (%s)",
             accumulate ? "pk_matmul_add" : "pk_matmul", pio_dtype_name(wt), (long long)c->m,
             (long long)c->n, (long long)c->k,
             ctx == gemv_ctx ? "gemv up to M=8" : ctx == lt_ctx ? "cuBLASLt" : "default");
    pio_error err;
    pair x = random_pair(PIO_DTYPE_F32, c->m, c->k, c->x_pad);
    pair w = random_pair(wt, c->n, c->k, c->w_pad);
    /* The accumulated y starts in [2, 3]: with K = 1 a y near -x·w would cancel, and the bf16
     * rounding of x would then be a large part of the small result (a flaky comparison). */
    pair y = accumulate ? make_pair(PIO_DTYPE_F32, c->m, c->n, c->y_pad, FILL_UNIFORM, 2.0f, 3.0f)
                        : nan_pair(PIO_DTYPE_F32, c->m, c->n, c->y_pad);
    void *y_before = snapshot(&y);
    sync_gpu("uploads"); /* ctx has its own stream: the uploads on gpu_ctx's must be done */
    pio_status st = accumulate ? pk_matmul_add(ctx, &y.d, &x.d, &w.d, &err)
                               : pk_matmul(ctx, &y.d, &x.d, &w.d, &err);
    expect_ok(st, &err, what);
    sync_ctx(ctx, what); /* before check_pair reads through gpu_ctx */
    st = accumulate ? pk_matmul_add(cpu_ctx, &y.h, &x.h, &w.h, &err)
                    : pk_matmul(cpu_ctx, &y.h, &x.h, &w.h, &err);
    expect_ok(st, &err, what);
    int tensor_cores = wt == PIO_DTYPE_BF16 &&
                       (ctx == lt_ctx || c->m > (ctx == gemv_ctx ? 8 : PK_TEST_GEMV_MAX_M));
    check_pair(what, &y, NULL, tensor_cores ? TOL_BF16_X : TOL_F32, y_before);

    if (tensor_cores && lt_aligned(c)) {
        /* The same product with x rounded to bf16 on the CPU side: only summation order
         * differs. */
        for (int64_t r = 0; r < c->m; r++)
            for (int64_t k = 0; k < c->k; k++) {
                float *v = (float *)x.h.data + r * x.h.stride + k;
                *v = pio_bf16_to_f32(pio_f32_to_bf16(*v));
            }
        memcpy(y.h.data, y_before, y.span_bytes);
        st = accumulate ? pk_matmul_add(cpu_ctx, &y.h, &x.h, &w.h, &err)
                        : pk_matmul(cpu_ctx, &y.h, &x.h, &w.h, &err);
        expect_ok(st, &err, what);
        strncat(what, " vs bf16-rounded x", sizeof what - strlen(what) - 1);
        check_pair(what, &y, NULL, TOL_BF16_TC, NULL);
    }
}

static void test_matmul(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof matmul_cases / sizeof *matmul_cases; i++) {
        const matmul_case *c = &matmul_cases[i];
        if (sanitizer && c->m * c->n * c->k > 50000000)
            continue;
        for (int acc = 0; acc < 2; acc++)
            for (int path = 0; path < 3; path++) { /* gemv_kernel, cuBLASLt, gemv_tma_kernel */
                pk_context *ctx = path == 0 ? gemv_ctx : path == 1 ? lt_ctx : gpu_ctx;
                if ((path == 1 && c->m > 8) || (path == 2 && c->m != 1))
                    continue; /* the same as gemv_ctx */
                if (path == 1 && c->n < 8 && !lt_aligned(c))
                    continue; /* cuBLASLt's bf16 x over a few outputs, no tight check: a
                                 cancelling sum can pass TOL_BF16_X (0.0112 at [1 x 3 x 256]) */
                check_matmul(ctx, c, PIO_DTYPE_BF16, acc);
                check_matmul(ctx, c, PIO_DTYPE_F32, acc);
            }
        release_all(NULL);
    }
}

static void test_matmul_empty_k(void **state)
{
    (void)state;
    pio_error err;
    for (int64_t m = 1; m <= 12; m += 11) {
        pair y = random_pair(PIO_DTYPE_F32, m, 3, 0);
        pair x = random_pair(PIO_DTYPE_F32, m, 0, 0);
        pair w = random_pair(PIO_DTYPE_BF16, 3, 0, 0);
        x.d.data = w.d.data = dev_alloc(16); /* empty views still need an address */
        x.h.data = w.h.data = host_alloc(16);
        expect_ok(pk_matmul_add(gpu_ctx, &y.d, &x.d, &w.d, &err), &err, "matmul_add K=0");
        expect_ok(pk_matmul_add(cpu_ctx, &y.h, &x.h, &w.h, &err), &err, "matmul_add K=0");
        check_pair("pk_matmul_add K=0", &y, NULL, 0.0, NULL);
        expect_ok(pk_matmul(gpu_ctx, &y.d, &x.d, &w.d, &err), &err, "matmul K=0");
        expect_ok(pk_matmul(cpu_ctx, &y.h, &x.h, &w.h, &err), &err, "matmul K=0");
        check_pair("pk_matmul K=0", &y, NULL, 0.0, NULL);
    }
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Times y = x·W^T at Qwen3-4B shapes (PIO_KERNELS_BENCH=1), small M on both paths (GEMV and
 * cuBLASLt) to place the switch between them. W rotates among copies that together exceed the
 * L2 cache, so every call reads its weights from HBM. */
static void test_matmul_benchmark(void **state)
{
    (void)state;
    if (!gpu_bench_enabled())
        return;
    static const struct { int64_t n, k; const char *name; } weights[] = {
        {19456, 2560, "gate_up"}, {2560, 9728, "down"}, {6144, 2560, "qkv"},
        {151936, 2560, "lm_head"},
    };
    static const int64_t small_m[] = {1, 2, 3, 4, 6, 8};
    static const int64_t large_m[] = {16, 64, 512, 2048};
    enum { COPIES = 4, REPS = 40 };
    pio_error err;
    for (size_t s = 0; s < sizeof weights / sizeof *weights; s++) {
        int64_t n = weights[s].n, k = weights[s].k;
        pair w = random_pair(PIO_DTYPE_BF16, n, k, 0);
        pk_tensor copies[COPIES];
        for (int c = 0; c < COPIES; c++) { /* random once, copied on the device */
            copies[c] = w.d;
            if (c > 0) {
                copies[c].data = dev_alloc(w.span_bytes);
                expect_ok(pk_copy(gpu_ctx, &copies[c], &w.d, &err), &err, "bench copy");
            }
        }
        pair x = random_pair(PIO_DTYPE_F32, 2048, k, 0), y = nan_pair(PIO_DTYPE_F32, 2048, n, 0);
        sync_gpu("bench uploads");
        for (size_t mi = 0; mi < 6 + (s < 2 ? 4 : 0); mi++) {
            int64_t m = mi < 6 ? small_m[mi] : large_m[mi - 6];
            pk_tensor xm = pk_tensor_rows(&x.d, 0, m), ym = pk_tensor_rows(&y.d, 0, m);
            for (int path = 0; path < (m <= 8 ? 2 : 1); path++) {
                pk_context *ctx = m > 8 ? gpu_ctx : path ? lt_ctx : gemv_ctx;
                for (int c = 0; c < COPIES; c++) /* warm-up: plans, workspace */
                    expect_ok(pk_matmul(ctx, &ym, &xm, &copies[c], &err), &err, "bench");
                sync_ctx(ctx, "bench warm-up");
                double t0 = seconds_now();
                for (int r = 0; r < REPS; r++)
                    expect_ok(pk_matmul(ctx, &ym, &xm, &copies[r % COPIES], &err), &err, "bench");
                sync_ctx(ctx, "bench");
                double per = (seconds_now() - t0) / REPS;
                double bytes = (double)n * k * 2 + (double)m * k * 4 + (double)m * n * 4;
                print_message("matmul %-8s %-8s M=%-5lld N=%-6lld K=%-5lld %8.1f us  %7.1f GB/s"
                              "  %7.1f TFLOP/s\n", weights[s].name,
                              ctx == lt_ctx || m > 8 ? "cublasLt" : "gemv", (long long)m,
                              (long long)n, (long long)k, per * 1e6, bytes / per * 1e-9,
                              2.0 * m * n * k / per * 1e-12);
            }
        }
        release_all(NULL);
    }
}

/* Qwen3-4B's projection shapes for the decode chain below. */
enum { CHAIN_LAYERS = 36, CHAIN_HIDDEN = 2560, CHAIN_QKV = 6144, CHAIN_Q = 4096, CHAIN_FF = 9728 };

/* Seconds per step of the decode chain for `rows` rows of x, issued directly or replayed from
 * one recorded graph (mean of 20 after 2 warm-ups). */
static double decode_chain_seconds(pk_tensor (*w)[4], int64_t rows, int graph)
{
    enum { REPS = 20 };
    pio_error err;
    pair g = make_pair(PIO_DTYPE_BF16, 1, CHAIN_HIDDEN, 0, FILL_UNIFORM, 0.5f, 1.5f);
    pair resid = random_pair(PIO_DTYPE_F32, rows, CHAIN_HIDDEN, 0);
    pair h = nan_pair(PIO_DTYPE_F32, rows, CHAIN_HIDDEN, 0);
    pair qkv = random_pair(PIO_DTYPE_F32, rows, CHAIN_QKV, 0);
    pair gate_up = nan_pair(PIO_DTYPE_F32, rows, 2 * CHAIN_FF, 0);
    pk_tensor attn = pk_tensor_cols(&qkv.d, 0, CHAIN_Q); /* stands in for the attention output */
    pk_tensor act = pk_tensor_cols(&gate_up.d, 0, CHAIN_FF);
    sync_gpu("chain uploads");
    pk_graph *recorded = NULL;
    if (graph)
        expect_ok(pk_graph_begin(gpu_ctx, &err), &err, "chain record");
    double t0 = 0.0;
    for (int r = 0; r < (graph ? 1 : REPS + 2); r++) {
        if (!graph && r == 2) {
            sync_gpu("chain warm-up");
            t0 = seconds_now();
        }
        for (int l = 0; l < CHAIN_LAYERS; l++) {
            expect_ok(pk_rmsnorm_matmul(gpu_ctx, &qkv.d, &h.d, &resid.d, &g.d, 1e-6f, &w[l][0],
                                        &err), &err, "chain qkv");
            expect_ok(pk_matmul_add(gpu_ctx, &resid.d, &attn, &w[l][1], &err), &err, "chain o");
            expect_ok(pk_rmsnorm_matmul_swiglu(gpu_ctx, &act, &gate_up.d, &h.d, &resid.d, &g.d,
                                               1e-6f, &w[l][2], &err), &err, "chain gate_up");
            expect_ok(pk_matmul_add(gpu_ctx, &resid.d, &act, &w[l][3], &err), &err,
                      "chain down");
        }
    }
    if (graph) {
        expect_ok(pk_graph_end(gpu_ctx, &recorded, &err), &err, "chain record");
        for (int r = 0; r < REPS + 2; r++) {
            if (r == 2) {
                sync_gpu("chain warm-up");
                t0 = seconds_now();
            }
            expect_ok(pk_graph_launch(gpu_ctx, recorded, &err), &err, "chain replay");
        }
    }
    sync_gpu("chain");
    double per = (seconds_now() - t0) / REPS;
    if (recorded != NULL)
        pk_graph_destroy(gpu_ctx, recorded);
    return per;
}

/*
 * The matmuls of 36 Qwen3-4B decode layers back to back (PIO_KERNELS_BENCH=1): per layer the
 * qkv projection with its norm, o_proj added to the residual, gate/up with its norm and SwiGLU,
 * down added to the residual; one and two rows of x, every layer its own weights (7.3 GB, so
 * nothing stays in L2), recorded as one graph and replayed, and also issued directly. What the
 * projections of a decode step cost without attention and sampling: the boundaries between
 * kernels count here, which the single-kernel timings above leave out.
 */
static void test_decode_chain_benchmark(void **state)
{
    (void)state;
    if (!gpu_bench_enabled())
        return;
    static const int64_t shapes[4][2] = {{CHAIN_QKV, CHAIN_HIDDEN}, {CHAIN_HIDDEN, CHAIN_Q},
                                         {2 * CHAIN_FF, CHAIN_HIDDEN}, {CHAIN_HIDDEN, CHAIN_FF}};
    pio_error err;
    pk_tensor w[CHAIN_LAYERS][4];
    double bytes = 0.0;
    for (int l = 0; l < CHAIN_LAYERS; l++)
        for (int j = 0; j < 4; j++) {
            int64_t n = shapes[j][0], k = shapes[j][1];
            w[l][j] = pk_tensor_make(dev_alloc((size_t)(n * k * 2)), PIO_DTYPE_BF16,
                                     PK_DEVICE_CUDA, n, k);
            expect_ok(pk_fill_dummy(gpu_ctx, &w[l][j], 7, (uint64_t)(l * 4 + j), 0.02f, 0.0f,
                                    &err), &err, "chain weights");
            bytes += (double)n * k * 2;
        }
    for (int64_t rows = 1; rows <= 2; rows++)
        for (int graph = 0; graph < 2; graph++) {
            double per = decode_chain_seconds(w, rows, graph);
            print_message("decode chain %-6s 36 x (qkv+norm, o, gate_up+norm+SwiGLU, down) "
                          "M=%lld: %8.1f us  %7.1f GB/s of W\n", graph ? "graph" : "direct",
                          (long long)rows, per * 1e6, bytes / per * 1e-9);
        }
}

/* ------------------------------------------------------------------------------------------ */
/* Row ops                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static void test_embedding(void **state)
{
    (void)state;
    static const int64_t widths[] = {1, 257, 2560};
    pio_error err;
    for (int d = 0; d < 2; d++)
        for (size_t i = 0; i < 3; i++)
            for (int64_t t = 1; t <= 7; t += 6) {
                pio_dtype dt = d ? PIO_DTYPE_BF16 : PIO_DTYPE_F32;
                int64_t v = 1000, h = widths[i];
                pair table = random_pair(dt, v, h, d ? 0 : 3);
                int32_t id_values[7];
                for (int64_t j = 0; j < t; j++)
                    id_values[j] = (int32_t)random_int(0, v - 1);
                id_values[0] = (int32_t)(v - 1);
                pair ids = int_pair(id_values, t);
                pair out = nan_pair(PIO_DTYPE_F32, t, h, 2);
                void *before = snapshot(&out);
                expect_ok(pk_embedding(gpu_ctx, &out.d, &table.d, &ids.d, &err), &err, "emb");
                expect_ok(pk_embedding(cpu_ctx, &out.h, &table.h, &ids.h, &err), &err, "emb");
                check_pair("pk_embedding", &out, NULL, 0.0, before);
            }
}

static void test_embedding_bad_id_is_reported(void **state)
{
    (void)state;
    pio_error err;
    pair table = random_pair(PIO_DTYPE_BF16, 50, 16, 0);
    int32_t id_values[4] = {3, 49, 50, 7};
    pair ids = int_pair(id_values, 4);
    pair out = nan_pair(PIO_DTYPE_F32, 4, 16, 0);
    /* The id is checked on the device: the op is queued, pk_synchronize reports it. */
    expect_ok(pk_embedding(gpu_ctx, &out.d, &table.d, &ids.d, &err), &err, "emb");
    assert_int_equal(pk_synchronize(gpu_ctx, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "pk_embedding"));
    assert_non_null(strstr(err.message, "token id 50 at index 2"));
    /* Reported once; the context still works and the good rows were written. */
    sync_gpu("after the reported error");
    id_values[2] = 0;
    ids = int_pair(id_values, 4);
    expect_ok(pk_embedding(gpu_ctx, &out.d, &table.d, &ids.d, &err), &err, "emb");
    expect_ok(pk_embedding(cpu_ctx, &out.h, &table.h, &ids.h, &err), &err, "emb");
    check_pair("pk_embedding after an error", &out, NULL, 0.0, NULL);
}

static void test_rmsnorm(void **state)
{
    (void)state;
    static const int64_t shapes[][2] = {{1, 1}, {3, 7}, {5, 128}, {2, 2560}, {4, 4099}, {1, 33}};
    pio_error err;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int d = 0; d < 2; d++)
            for (int inplace = 0; inplace < 2; inplace++) {
                int64_t t = shapes[s][0], h = shapes[s][1];
                pair w = make_pair(d ? PIO_DTYPE_BF16 : PIO_DTYPE_F32, 1, h, 0, FILL_UNIFORM,
                                   0.5f, 1.5f);
                pair x = make_pair(PIO_DTYPE_F32, t, h, 3, FILL_UNIFORM, -3.0f, 3.0f);
                pair out = inplace ? x : nan_pair(PIO_DTYPE_F32, t, h, 1);
                void *before = snapshot(&out);
                expect_ok(pk_rmsnorm(gpu_ctx, &out.d, &x.d, &w.d, 1e-6f, &err), &err, "rms");
                expect_ok(pk_rmsnorm(cpu_ctx, &out.h, &x.h, &w.h, 1e-6f, &err), &err, "rms");
                check_pair("pk_rmsnorm", &out, NULL, TOL_F32, before);
            }
}

static void test_head_rmsnorm(void **state)
{
    (void)state;
    static const int64_t shapes[][3] = {{3, 32, 128}, {5, 3, 64}, {1, 8, 128}, {2, 2, 7}};
    pio_error err;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int d = 0; d < 2; d++) {
            int64_t t = shapes[s][0], heads = shapes[s][1], hd = shapes[s][2];
            pair w = make_pair(d ? PIO_DTYPE_BF16 : PIO_DTYPE_F32, 1, hd, 0, FILL_UNIFORM,
                               0.5f, 1.5f);
            /* x is the middle part of a fused [q | k | v] row, normalised in place */
            pair qkv = random_pair(PIO_DTYPE_F32, t, 3 * heads * hd, 0);
            pair k = cols_of(&qkv, heads * hd, heads * hd);
            void *before = snapshot(&qkv);
            expect_ok(pk_head_rmsnorm(gpu_ctx, &k.d, &k.d, &w.d, hd, 1e-6f, &err), &err, "hrms");
            expect_ok(pk_head_rmsnorm(cpu_ctx, &k.h, &k.h, &w.h, hd, 1e-6f, &err), &err, "hrms");
            check_pair("pk_head_rmsnorm", &qkv, &k.h, TOL_F32, before);
        }
}

typedef struct rope_case {
    pk_rope_layout layout;
    int32_t heads, head_dim, rotary_dim, offset;
    float theta;
    int32_t max_pos;
    int inplace;
} rope_case;

static void test_rope(void **state)
{
    (void)state;
    static const rope_case cases[] = {
        {PK_ROPE_NEOX, 4, 128, 128, 0, 1000000.0f, 40000, 0},
        {PK_ROPE_NEOX, 2, 64, 32, 16, 10000.0f, 100, 1},
        {PK_ROPE_INTERLEAVED, 3, 64, 64, 0, 10000.0f, 5000, 0},
        {PK_ROPE_INTERLEAVED, 2, 576, 64, 512, 10000.0f, 200000, 1},
        {PK_ROPE_NEOX, 32, 128, 128, 0, 5000000.0f, 262143, 1},
        {PK_ROPE_NEOX, 1, 6, 2, 4, 10000.0f, 3, 0},
    };
    pio_error err;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const rope_case *c = &cases[i];
        int64_t t = 9, cols = (int64_t)c->heads * c->head_dim;
        int32_t pos[9];
        for (int j = 0; j < 9; j++)
            pos[j] = (int32_t)random_int(0, c->max_pos);
        pos[0] = c->max_pos;
        pos[1] = 0;
        pair positions = int_pair(pos, t);
        pair x = random_pair(PIO_DTYPE_F32, t, cols, 2);
        pair out = c->inplace ? x : nan_pair(PIO_DTYPE_F32, t, cols, 1);
        void *before = snapshot(&out);
        pk_rope_params p = {c->layout, c->head_dim, c->rotary_dim, c->offset, c->theta};
        expect_ok(pk_rope(gpu_ctx, &out.d, &x.d, &positions.d, &p, &err), &err, "rope");
        expect_ok(pk_rope(cpu_ctx, &out.h, &x.h, &positions.h, &p, &err), &err, "rope");
        check_pair("pk_rope", &out, NULL, TOL_F32, before);
    }
}

static void test_swiglu(void **state)
{
    (void)state;
    static const int64_t shapes[][2] = {{1, 1}, {3, 9728}, {7, 1000}, {1, 4097}};
    pio_error err;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int64_t t = shapes[s][0], f = shapes[s][1];
        /* separate tensors, out != gate */
        pair g = make_pair(PIO_DTYPE_F32, t, f, 1, FILL_UNIFORM, -8.0f, 8.0f);
        pair u = random_pair(PIO_DTYPE_F32, t, f, 0);
        pair out = nan_pair(PIO_DTYPE_F32, t, f, 2);
        void *before = snapshot(&out);
        expect_ok(pk_swiglu(gpu_ctx, &out.d, &g.d, &u.d, &err), &err, "swiglu");
        expect_ok(pk_swiglu(cpu_ctx, &out.h, &g.h, &u.h, &err), &err, "swiglu");
        check_pair("pk_swiglu", &out, NULL, TOL_F32, before);
        /* fused [gate | up], out written over the gate half */
        pair gu = make_pair(PIO_DTYPE_F32, t, 2 * f, 0, FILL_UNIFORM, -8.0f, 8.0f);
        pair gate = cols_of(&gu, 0, f);
        void *gu_before = snapshot(&gu);
        expect_ok(pk_swiglu_fused(gpu_ctx, &gate.d, &gu.d, &err), &err, "swiglu_fused");
        expect_ok(pk_swiglu_fused(cpu_ctx, &gate.h, &gu.h, &err), &err, "swiglu_fused");
        check_pair("pk_swiglu_fused", &gu, &gate.h, TOL_F32, gu_before);
    }
}

static void test_add(void **state)
{
    (void)state;
    static const int64_t shapes[][2] = {{1, 1}, {5, 2560}, {3, 1001}};
    pio_error err;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int64_t t = shapes[s][0], h = shapes[s][1];
        pair a = random_pair(PIO_DTYPE_F32, t, h, 1), b = random_pair(PIO_DTYPE_F32, t, h, 0);
        pair out = nan_pair(PIO_DTYPE_F32, t, h, 3);
        void *before = snapshot(&out);
        expect_ok(pk_add(gpu_ctx, &out.d, &a.d, &b.d, &err), &err, "add");
        expect_ok(pk_add(cpu_ctx, &out.h, &a.h, &b.h, &err), &err, "add");
        check_pair("pk_add", &out, NULL, 0.0, before);
        /* in place: the residual add */
        expect_ok(pk_add(gpu_ctx, &a.d, &a.d, &b.d, &err), &err, "add");
        expect_ok(pk_add(cpu_ctx, &a.h, &a.h, &b.h, &err), &err, "add");
        check_pair("pk_add in place", &a, NULL, 0.0, NULL);
    }
}

static void test_softmax(void **state)
{
    (void)state;
    static const int64_t shapes[][2] = {{3, 1}, {4, 33}, {2, 151936}, {5, 1000}};
    pio_error err;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int inplace = 0; inplace < 2; inplace++) {
            int64_t t = shapes[s][0], n = shapes[s][1];
            pair x = make_pair(PIO_DTYPE_F32, t, n, 2, FILL_UNIFORM, -20.0f, 20.0f);
            float *row1 = (float *)x.h.data + x.h.stride;
            for (int64_t i = 0; i < n; i++) /* row 1: all -inf (uniform by convention) */
                row1[i] = -INFINITY;
            if (t > 2 && n > 3) { /* row 2: some -inf */
                float *row2 = (float *)x.h.data + 2 * x.h.stride;
                row2[0] = row2[n - 1] = -INFINITY;
            }
            upload(&x);
            pair out = inplace ? x : nan_pair(PIO_DTYPE_F32, t, n, 0);
            void *before = snapshot(&out);
            expect_ok(pk_softmax(gpu_ctx, &out.d, &x.d, &err), &err, "softmax");
            expect_ok(pk_softmax(cpu_ctx, &out.h, &x.h, &err), &err, "softmax");
            check_pair("pk_softmax", &out, NULL, TOL_F32, before);
        }
}

static void test_argmax(void **state)
{
    (void)state;
    static const int64_t widths[] = {1, 50, 151936, 4097};
    pio_error err;
    for (size_t s = 0; s < sizeof widths / sizeof *widths; s++) {
        int64_t t = 6, n = widths[s];
        pair x = make_pair(PIO_DTYPE_F32, t, n, 1, FILL_UNIFORM, -5.0f, 5.0f);
        float *rows = x.h.data;
        int64_t st = x.h.stride;
        if (n > 10) {
            rows[1 * st + 7] = rows[1 * st + n - 2] = 6.0f; /* tie: the lower index wins */
            rows[2 * st + 0] = NAN;                         /* NaN first and in the middle */
            rows[2 * st + n / 2] = NAN;
            rows[2 * st + n / 3] = 7.0f;
        }
        for (int64_t i = 0; i < n; i++) {
            rows[3 * st + i] = NAN;       /* all NaN: 0 */
            rows[4 * st + i] = -INFINITY; /* all -inf: 0 */
        }
        rows[5 * st + n - 1] = 100.0f; /* the last element */
        upload(&x);
        pair ids = make_pair(PIO_DTYPE_I32, 1, t, 0, FILL_ZERO, -1, -1);
        expect_ok(pk_argmax(gpu_ctx, &ids.d, &x.d, &err), &err, "argmax");
        expect_ok(pk_argmax(cpu_ctx, &ids.h, &x.h, &err), &err, "argmax");
        check_pair("pk_argmax", &ids, NULL, 0.0, NULL);
    }
}

/* pk_fill_dummy: the same values bit for bit on both backends (dummy weights made on the GPU
 * equal the CPU's), rows of a strided view only. */
static void test_fill_dummy(void **state)
{
    (void)state;
    pio_error err;
    static const int64_t shapes[][2] = {{1, 1}, {7, 33}, {130, 2560}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        for (int d = 0; d < 2; d++) {
            pio_dtype dt = d ? PIO_DTYPE_BF16 : PIO_DTYPE_F32;
            pair out = nan_pair(dt, shapes[i][0], shapes[i][1], 3);
            void *before = snapshot(&out);
            expect_ok(pk_fill_dummy(gpu_ctx, &out.d, 42, 7 + i, 0.0346f, 0.5f, &err), &err,
                      "pk_fill_dummy");
            expect_ok(pk_fill_dummy(cpu_ctx, &out.h, 42, 7 + i, 0.0346f, 0.5f, &err), &err,
                      "pk_fill_dummy");
            check_pair("pk_fill_dummy", &out, NULL, 0.0, before);
        }
}

static void test_cast(void **state)
{
    (void)state;
    static const pio_dtype types[] = {PIO_DTYPE_F32, PIO_DTYPE_BF16};
    pio_error err;
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++) {
            pair x = make_pair(types[a], 9, 301, 3, FILL_UNIFORM, -1000.0f, 1000.0f);
            if (types[a] == PIO_DTYPE_F32) { /* rounding ties, NaN, infinities, tiny values */
                float *v = x.h.data;
                uint32_t tie = 0x3f808000u; /* exactly between two bf16 values: to even */
                memcpy(&v[0], &tie, 4);
                tie = 0x3f818000u;
                memcpy(&v[1], &tie, 4);
                v[2] = NAN;
                v[3] = INFINITY;
                v[4] = -INFINITY;
                v[5] = 1e-40f;
                v[6] = -0.0f;
                upload(&x);
            }
            pair out = nan_pair(types[b], 9, 301, 2);
            void *before = snapshot(&out);
            expect_ok(pk_cast(gpu_ctx, &out.d, &x.d, &err), &err, "cast");
            expect_ok(pk_cast(cpu_ctx, &out.h, &x.h, &err), &err, "cast");
            check_pair("pk_cast", &out, NULL, 0.0, before);
            download(&out); /* bit for bit, NaN payloads too */
            for (int64_t r = 0; r < 9; r++)
                assert_memory_equal((char *)out.got + r * out.h.stride * pio_dtype_size(types[b]),
                                    (char *)out.h.data + r * out.h.stride * pio_dtype_size(types[b]),
                                    301 * pio_dtype_size(types[b]));
        }
}

/* ------------------------------------------------------------------------------------------ */
/* KV cache and attention                                                                     */
/* ------------------------------------------------------------------------------------------ */

enum { N_SEQS = 3 };

typedef struct attention_case {
    int32_t n_q, n_kv, head_dim, v_head_dim, block_size;
    pio_dtype cache_dtype;
    int latent; /* one plane; values are the first v_head_dim columns of the key entry (MLA) */
} attention_case;

/* Cached positions and new tokens of each sequence: a chunked prefill after a cached prefix, a
 * prefill from scratch, and a decode step deep in a sequence. */
static const int32_t plan_cached[N_SEQS] = {37, 0, 70};
static const int32_t plan_fresh[N_SEQS] = {5, 19, 1};

typedef struct attn_world {
    const attention_case *c;
    int32_t kw, vw, qw, ow;
    int64_t n_blocks, width;
    pair k_plane, v_plane; /* v_plane unused when latent */
    pk_tensor k_cache_h, k_cache_d, v_cache_h, v_cache_d;
    pair tables;
    float *k[N_SEQS], *v[N_SEQS]; /* every position's K/V rows, as the model computed them */
} attn_world;

static void make_world(attn_world *w, const attention_case *c)
{
    memset(w, 0, sizeof *w);
    w->c = c;
    w->kw = c->n_kv * c->head_dim;
    w->vw = c->n_kv * c->v_head_dim;
    w->qw = c->n_q * c->head_dim;
    w->ow = c->n_q * c->v_head_dim;
    /* Block ids handed out from a shuffled list, so a sequence's blocks are scattered. */
    int64_t need[N_SEQS], total = 0;
    for (int s = 0; s < N_SEQS; s++) {
        need[s] = (plan_cached[s] + plan_fresh[s] + c->block_size - 1) / c->block_size;
        total += need[s];
        if (need[s] + 1 > w->width)
            w->width = need[s] + 1;
    }
    w->n_blocks = total + 5;
    int32_t *ids = host_alloc((size_t)w->n_blocks * 4);
    for (int64_t i = 0; i < w->n_blocks; i++)
        ids[i] = (int32_t)i;
    for (int64_t i = w->n_blocks - 1; i > 0; i--) {
        int64_t j = random_int(0, i);
        int32_t tmp = ids[i];
        ids[i] = ids[j];
        ids[j] = tmp;
    }
    int32_t *tab = host_alloc((size_t)(N_SEQS * w->width) * 4);
    int64_t next = 0;
    for (int s = 0; s < N_SEQS; s++)
        for (int64_t j = 0; j < w->width; j++)
            tab[s * w->width + j] = j < need[s] ? ids[next++] : -1;
    w->tables = make_pair(PIO_DTYPE_I32, N_SEQS, w->width, 0, FILL_ZERO, 0, 0);
    memcpy(w->tables.h.data, tab, (size_t)(N_SEQS * w->width) * 4);
    upload(&w->tables);

    /* Planes start as NaN: reading a slot nobody stored shows up in the output. */
    int64_t slots = w->n_blocks * c->block_size;
    w->k_plane = nan_pair(c->cache_dtype, slots, w->kw, 0);
    w->k_cache_h = w->k_plane.h;
    w->k_cache_d = w->k_plane.d;
    if (c->latent) {
        w->v_cache_h = pk_tensor_cols(&w->k_plane.h, 0, c->v_head_dim);
        w->v_cache_d = pk_tensor_cols(&w->k_plane.d, 0, c->v_head_dim);
    } else {
        w->v_plane = nan_pair(c->cache_dtype, slots, w->vw, 0);
        w->v_cache_h = w->v_plane.h;
        w->v_cache_d = w->v_plane.d;
    }
    for (int s = 0; s < N_SEQS; s++) {
        int64_t len = plan_cached[s] + plan_fresh[s];
        w->k[s] = host_alloc((size_t)(len * w->kw) * 4);
        w->v[s] = host_alloc((size_t)(len * w->vw) * 4);
        for (int64_t i = 0; i < len * w->kw; i++)
            w->k[s][i] = uniform(-1.0f, 1.0f);
        for (int64_t i = 0; i < len * w->vw; i++)
            w->v[s][i] = uniform(-1.0f, 1.0f);
    }
}

/* A batch of tokens (seq, position) with their K/V rows; order as given. */
typedef struct token_list {
    int32_t seq[256], pos[256];
    int64_t n;
} token_list;

typedef struct batch_pair {
    pair positions, rows, k_new, v_new;
    pk_token_batch h, d;
} batch_pair;

static batch_pair make_batch(attn_world *w, const token_list *tl)
{
    batch_pair b;
    int32_t rows[256];
    for (int64_t i = 0; i < tl->n; i++)
        rows[i] = tl->seq[i];
    b.positions = int_pair(tl->pos, tl->n);
    b.rows = int_pair(rows, tl->n);
    b.k_new = random_pair(PIO_DTYPE_F32, tl->n, w->kw, 1);
    b.v_new = random_pair(PIO_DTYPE_F32, tl->n, w->vw, 0);
    for (int64_t i = 0; i < tl->n; i++) {
        if (tl->pos[i] < 0)
            continue; /* a bad token: its rows stay random */
        memcpy((float *)b.k_new.h.data + i * b.k_new.h.stride,
               w->k[tl->seq[i]] + (int64_t)tl->pos[i] * w->kw, (size_t)w->kw * 4);
        memcpy((float *)b.v_new.h.data + i * b.v_new.h.stride,
               w->v[tl->seq[i]] + (int64_t)tl->pos[i] * w->vw, (size_t)w->vw * 4);
    }
    upload(&b.k_new);
    upload(&b.v_new);
    b.h = (pk_token_batch){b.positions.h, b.rows.h, w->tables.h, w->c->block_size, 0, 0};
    b.d = (pk_token_batch){b.positions.d, b.rows.d, w->tables.d, w->c->block_size, 0, 0};
    return b;
}

static pk_attention_params params_of(const attention_case *c)
{
    pk_attention_params p = {c->n_q, c->n_kv, c->head_dim, c->v_head_dim,
                             1.0f / sqrtf((float)c->head_dim)};
    return p;
}

static void check_planes(attn_world *w, const char *what)
{
    char name[160];
    snprintf(name, sizeof name, "%s: k plane", what);
    check_pair(name, &w->k_plane, NULL, 0.0, NULL);
    if (!w->c->latent) {
        snprintf(name, sizeof name, "%s: v plane", what);
        check_pair(name, &w->v_plane, NULL, 0.0, NULL);
    }
}

static void run_attention_case(const attention_case *c)
{
    char what[160];
    snprintf(what, sizeof what, "attention n_q %d n_kv %d hd %d vhd %d bs %d %s%s", c->n_q,
             c->n_kv, c->head_dim, c->v_head_dim, c->block_size, pio_dtype_name(c->cache_dtype),
             c->latent ? " latent" : "");
    attn_world w;
    make_world(&w, c);
    pk_attention_params p = params_of(c);
    pio_error err;

    /* 1. The cached prefixes, through pk_kv_store. */
    token_list cached = {.n = 0};
    for (int s = 0; s < N_SEQS; s++)
        for (int32_t i = 0; i < plan_cached[s]; i++) {
            cached.seq[cached.n] = s;
            cached.pos[cached.n++] = i;
        }
    batch_pair cb = make_batch(&w, &cached);
    const pk_tensor *vn_d = c->latent ? NULL : &cb.v_new.d, *vn_h = c->latent ? NULL : &cb.v_new.h;
    expect_ok(pk_kv_store(gpu_ctx, &w.k_cache_d, c->latent ? NULL : &w.v_cache_d, &cb.k_new.d,
                          vn_d, &cb.d, &p, &err), &err, "kv_store");
    expect_ok(pk_kv_store(cpu_ctx, &w.k_cache_h, c->latent ? NULL : &w.v_cache_h, &cb.k_new.h,
                          vn_h, &cb.h, &p, &err), &err, "kv_store");
    check_planes(&w, "pk_kv_store");

    /* 2. The fresh tokens of all three sequences in one flattened batch, interleaved, storing
     * their own K/V first. */
    token_list fresh = {.n = 0};
    for (int32_t i = 0; i < 19; i++)
        for (int s = N_SEQS - 1; s >= 0; s--)
            if (i < plan_fresh[s]) {
                fresh.seq[fresh.n] = s;
                fresh.pos[fresh.n++] = plan_cached[s] + i;
            }
    batch_pair fb = make_batch(&w, &fresh);
    pair q = random_pair(PIO_DTYPE_F32, fresh.n, w.qw, 2);
    pair out = nan_pair(PIO_DTYPE_F32, fresh.n, w.ow, 1);
    void *out_before = snapshot(&out);
    vn_d = c->latent ? NULL : &fb.v_new.d;
    vn_h = c->latent ? NULL : &fb.v_new.h;
    expect_ok(pk_attention(gpu_ctx, &out.d, &q.d, &fb.k_new.d, vn_d, &w.k_cache_d, &w.v_cache_d,
                           &fb.d, &p, &err), &err, what);
    expect_ok(pk_attention(cpu_ctx, &out.h, &q.h, &fb.k_new.h, vn_h, &w.k_cache_h, &w.v_cache_h,
                           &fb.h, &p, &err), &err, what);
    check_pair(what, &out, NULL, TOL_F32, out_before);
    check_planes(&w, what);

    /* 3. Attention only (k_new NULL): the last token of every sequence again, decode style. */
    token_list last = {.n = N_SEQS};
    for (int s = 0; s < N_SEQS; s++) {
        last.seq[s] = s;
        last.pos[s] = plan_cached[s] + plan_fresh[s] - 1;
    }
    batch_pair lb = make_batch(&w, &last);
    pair q2 = random_pair(PIO_DTYPE_F32, N_SEQS, w.qw, 0);
    pair out2 = nan_pair(PIO_DTYPE_F32, N_SEQS, w.ow, 0);
    expect_ok(pk_attention(gpu_ctx, &out2.d, &q2.d, NULL, NULL, &w.k_cache_d, &w.v_cache_d, &lb.d,
                           &p, &err), &err, what);
    expect_ok(pk_attention(cpu_ctx, &out2.h, &q2.h, NULL, NULL, &w.k_cache_h, &w.v_cache_h, &lb.h,
                           &p, &err), &err, what);
    strncat(what, " (decode, stored)", sizeof what - strlen(what) - 1);
    check_pair(what, &out2, NULL, TOL_F32, NULL);
    release_all(NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Fused ops                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/*
 * The GEMV (M <= 2) adds the partial sums of the warps that split a row group's K in a fixed
 * order, so the same product run again gives the same bits whatever the timing of the warps,
 * and agrees with the CPU. Shapes: few long rows (the most splits), the decode shapes (row
 * groups of 8 and 4 rows with a partial last group), many row groups (several waves), and the
 * fused norm and SwiGLU epilogues.
 */
static void test_gemv_repeats_bitwise(void **state)
{
    (void)state;
    static const int64_t shapes[][3] = {{1, 5, 4096},    {2, 9, 9728},   {1, 6146, 2560},
                                        {2, 1022, 2560}, {1, 2560, 9728}, {1, 20000, 2048}};
    pio_error err;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int epi = 0; epi < 3; epi++) {
            int64_t m = shapes[s][0], n = shapes[s][1] * (epi == 2 ? 2 : 1), k = shapes[s][2];
            if (sanitizer && n * k > 4000000)
                continue;
            pair x = make_pair(PIO_DTYPE_F32, m, k, 0, FILL_UNIFORM, -2.0f, 2.0f);
            pair w = random_pair(PIO_DTYPE_BF16, n, k, 0);
            pair g = make_pair(PIO_DTYPE_BF16, 1, k, 0, FILL_UNIFORM, 0.5f, 1.5f);
            pair h = nan_pair(PIO_DTYPE_F32, m, k, 0);
            pair y = nan_pair(PIO_DTYPE_F32, m, n, 0);
            pair out = nan_pair(PIO_DTYPE_F32, m, n / 2, 0);
            pair *result = epi == 2 ? &out : &y;
            void *before = snapshot(result);
            char what[128];
            snprintf(what, sizeof what, "%s [%lld x %lld x %lld] repeated",
                     epi == 0 ? "pk_matmul" : epi == 1 ? "pk_rmsnorm_matmul"
                                                       : "pk_rmsnorm_matmul_swiglu",
                     (long long)m, (long long)n, (long long)k);
            void *first = NULL;
            for (int run = 0; run < 4; run++) {
                pio_status st =
                    epi == 0 ? pk_matmul(gpu_ctx, &y.d, &x.d, &w.d, &err)
                    : epi == 1 ? pk_rmsnorm_matmul(gpu_ctx, &y.d, &h.d, &x.d, &g.d, 1e-6f,
                                                   &w.d, &err)
                               : pk_rmsnorm_matmul_swiglu(gpu_ctx, &out.d, &y.d, &h.d, &x.d,
                                                          &g.d, 1e-6f, &w.d, &err);
                expect_ok(st, &err, what);
                download(result);
                if (first == NULL)
                    first = memcpy(host_alloc(result->span_bytes), result->got,
                                   result->span_bytes);
                else if (memcmp(first, result->got, result->span_bytes) != 0)
                    fail_msg("%s: run %d differs from run 0", what, run);
            }
            pio_status st =
                epi == 0 ? pk_matmul(cpu_ctx, &y.h, &x.h, &w.h, &err)
                : epi == 1 ? pk_rmsnorm_matmul(cpu_ctx, &y.h, &h.h, &x.h, &g.h, 1e-6f, &w.h,
                                               &err)
                           : pk_rmsnorm_matmul_swiglu(cpu_ctx, &out.h, &y.h, &h.h, &x.h, &g.h,
                                                      1e-6f, &w.h, &err);
            expect_ok(st, &err, what);
            check_pair(what, result, NULL, TOL_F32, before);
            release_all(NULL);
        }
}

/* One Qwen3-like decode layer's projections at small sizes (see test_gemv_chain). */
enum { CH_LAYERS = 3, CH_HID = 512, CH_QKV = 1280, CH_Q = 1024, CH_FF = 768 };

static void run_gemv_chain(pk_context *ctx, int side, pair (*w)[4], pair *resid, pair *h,
                           pair *qkv, pair *gate_up, pair *act, pair *g)
{
    pio_error err;
#define SIDE(p) (side ? &(p)->d : &(p)->h)
    pk_tensor attn = pk_tensor_cols(SIDE(qkv), 0, CH_Q); /* stands in for the attention output */
    for (int l = 0; l < CH_LAYERS; l++) {
        expect_ok(pk_rmsnorm_matmul(ctx, SIDE(qkv), SIDE(h), SIDE(resid), SIDE(g), 1e-6f,
                                    SIDE(&w[l][0]), &err), &err, "chain qkv");
        expect_ok(pk_matmul_add(ctx, SIDE(resid), &attn, SIDE(&w[l][1]), &err), &err, "chain o");
        expect_ok(pk_rmsnorm_matmul_swiglu(ctx, SIDE(act), SIDE(gate_up), SIDE(h), SIDE(resid),
                                           SIDE(g), 1e-6f, SIDE(&w[l][2]), &err), &err,
                  "chain gate_up");
        expect_ok(pk_matmul_add(ctx, SIDE(resid), SIDE(act), SIDE(&w[l][3]), &err), &err,
                  "chain down");
    }
#undef SIDE
}

/*
 * A chain of dependent decode GEMVs (M = 1, BF16) against the CPU: per layer
 * qkv = rmsnorm(resid)·Wqkvᵀ, resid += qkv[:, :Q]·Woᵀ, act = SwiGLU(rmsnorm(resid)·Wguᵀ),
 * resid += act·Wdownᵀ. Each GEMV is a programmatic launch that loads weights before waiting for
 * the one before it and lets the next one start early, so a wrong wait (x read early, y written
 * early) shows as a wrong residual. Issued directly, then recorded and replayed from a graph
 * (the same bits).
 */
static void test_gemv_chain(void **state)
{
    (void)state;
    static const int64_t shapes[4][2] = {
        {CH_QKV, CH_HID}, {CH_HID, CH_Q}, {2 * CH_FF, CH_HID}, {CH_HID, CH_FF}};
    pio_error err;
    pair w[CH_LAYERS][4];
    for (int l = 0; l < CH_LAYERS; l++)
        for (int j = 0; j < 4; j++)
            w[l][j] = random_pair(PIO_DTYPE_BF16, shapes[j][0], shapes[j][1], 0);
    pair g = make_pair(PIO_DTYPE_BF16, 1, CH_HID, 0, FILL_UNIFORM, 0.5f, 1.5f);
    pair resid = make_pair(PIO_DTYPE_F32, 1, CH_HID, 0, FILL_UNIFORM, -2.0f, 2.0f);
    pair h = nan_pair(PIO_DTYPE_F32, 1, CH_HID, 0);
    pair qkv = nan_pair(PIO_DTYPE_F32, 1, CH_QKV, 0);
    pair gate_up = nan_pair(PIO_DTYPE_F32, 1, 2 * CH_FF, 0);
    pair act = nan_pair(PIO_DTYPE_F32, 1, CH_FF, 0);
    pk_tensor start = pk_tensor_host(snapshot(&resid), PIO_DTYPE_F32, 1, CH_HID);
    sync_gpu("chain uploads");

    run_gemv_chain(cpu_ctx, 0, w, &resid, &h, &qkv, &gate_up, &act, &g);
    run_gemv_chain(gpu_ctx, 1, w, &resid, &h, &qkv, &gate_up, &act, &g);
    check_pair("decode GEMV chain, direct", &resid, NULL, TOL_CHAIN, NULL);
    void *direct = host_alloc(resid.span_bytes);
    memcpy(direct, resid.got, resid.span_bytes);

    pk_graph *graph = NULL;
    expect_ok(pk_graph_begin(gpu_ctx, &err), &err, "chain record");
    run_gemv_chain(gpu_ctx, 1, w, &resid, &h, &qkv, &gate_up, &act, &g);
    expect_ok(pk_graph_end(gpu_ctx, &graph, &err), &err, "chain record");
    expect_ok(pk_copy(gpu_ctx, &resid.d, &start, &err), &err, "chain reset");
    expect_ok(pk_graph_launch(gpu_ctx, graph, &err), &err, "chain replay");
    download(&resid);
    if (memcmp(direct, resid.got, resid.span_bytes) != 0)
        fail_msg("decode GEMV chain: the graph replay differs from the direct run");
    pk_graph_destroy(gpu_ctx, graph);
}

/* pk_rmsnorm_matmul against the CPU's (which runs pk_rmsnorm then pk_matmul): the fused GEMV up
 * to gemv_max_m rows (normalising on the fly: only the order of fp32 roundings differs), the
 * norm kernel + cuBLASLt above (bf16-rounded x: TOL_BF16_X). */
static void test_rmsnorm_matmul(void **state)
{
    (void)state;
    static const int64_t shapes[][3] = {{1, 6144, 2560}, {2, 300, 1000}, {1, 77, 129},
                                        {3, 64, 512},    {9, 200, 256},  {1, 151, 8},
                                        {1, 1001, 776}};
    pio_error err;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int wd = 0; wd < 2; wd++)
            for (int gd = 0; gd < 2; gd++) {
                int64_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
                pio_dtype wt = wd ? PIO_DTYPE_BF16 : PIO_DTYPE_F32;
                pair g = make_pair(gd ? PIO_DTYPE_BF16 : PIO_DTYPE_F32, 1, k, 0, FILL_UNIFORM,
                                   0.5f, 1.5f);
                pair x = make_pair(PIO_DTYPE_F32, m, k, 4, FILL_UNIFORM, -3.0f, 3.0f);
                pair w = random_pair(wt, n, k, 0);
                pair h = nan_pair(PIO_DTYPE_F32, m, k, 4);
                pair y = nan_pair(PIO_DTYPE_F32, m, n, 1);
                void *y_before = snapshot(&y), *h_before = snapshot(&h);
                char what[128];
                snprintf(what, sizeof what, "pk_rmsnorm_matmul %s [%lld x %lld x %lld]",
                         pio_dtype_name(wt), (long long)m, (long long)n, (long long)k);
                expect_ok(pk_rmsnorm_matmul(gpu_ctx, &y.d, &h.d, &x.d, &g.d, 1e-6f, &w.d, &err),
                          &err, what);
                expect_ok(pk_rmsnorm_matmul(cpu_ctx, &y.h, &h.h, &x.h, &g.h, 1e-6f, &w.h, &err),
                          &err, what);
                int lt = m > PK_TEST_GEMV_MAX_M && wt == PIO_DTYPE_BF16;
                check_pair(what, &y, NULL, lt ? TOL_BF16_X : TOL_F32, y_before);
                check_pair("pk_rmsnorm_matmul h", &h, NULL, TOL_F32, h_before);
                release_all(NULL);
            }
}

/* pk_rmsnorm_matmul_swiglu against the CPU's (norm, matmul, SwiGLU): the GEMV with the norm
 * prologue and the SwiGLU epilogue for M <= 2, above it the norm, cuBLASLt and SwiGLU — with
 * BF16 weights and 16-byte aligned rows of out the product held as bf16 in scratch (gate_up
 * rows 2F + 3 apart are not aligned, 2F apart are: both are run). out is the gate half of
 * gate_up, as the MLP block passes it. gate_up beyond out and h are unspecified: not compared. */
static void test_rmsnorm_matmul_swiglu(void **state)
{
    (void)state;
    static const int64_t shapes[][4] = {{1, 19456, 2560, 3}, {2, 300, 1000, 3}, {1, 78, 129, 3},
                                        {3, 64, 512, 3},     {1, 2, 8, 3},      {2, 38, 256, 3},
                                        {3, 64, 512, 0},     {37, 200, 256, 0}, {9, 300, 72, 0},
                                        {5, 66, 96, 0},      {1, 202, 264, 3}};
    pio_error err;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int wd = 0; wd < 2; wd++) {
            int64_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2], pad = shapes[s][3];
            pio_dtype wt = wd ? PIO_DTYPE_BF16 : PIO_DTYPE_F32;
            pair g = make_pair(PIO_DTYPE_BF16, 1, k, 0, FILL_UNIFORM, 0.5f, 1.5f);
            pair x = make_pair(PIO_DTYPE_F32, m, k, 4, FILL_UNIFORM, -3.0f, 3.0f);
            pair w = random_pair(wt, n, k, 0);
            pair h = nan_pair(PIO_DTYPE_F32, m, k, 0);
            pair gate_up = nan_pair(PIO_DTYPE_F32, m, n, pad);
            pair out = cols_of(&gate_up, 0, n / 2);
            char what[128];
            snprintf(what, sizeof what, "pk_rmsnorm_matmul_swiglu %s [%lld x %lld x %lld]",
                     pio_dtype_name(wt), (long long)m, (long long)n, (long long)k);
            expect_ok(pk_rmsnorm_matmul_swiglu(gpu_ctx, &out.d, &gate_up.d, &h.d, &x.d, &g.d,
                                               1e-6f, &w.d, &err),
                      &err, what);
            expect_ok(pk_rmsnorm_matmul_swiglu(cpu_ctx, &out.h, &gate_up.h, &h.h, &x.h, &g.h,
                                               1e-6f, &w.h, &err),
                      &err, what);
            int lt = m > PK_TEST_GEMV_MAX_M && wt == PIO_DTYPE_BF16;
            check_pair(what, &gate_up, &out.h, lt ? TOL_BF16_X : TOL_F32, NULL);
            release_all(NULL);
        }
}

/* Times the pre-norm + projection fusions at Qwen3-4B decode shapes (PIO_KERNELS_BENCH=1): the
 * fused op against its unfused ops, M = 1, inside a recorded graph (as a decode step runs them),
 * weights rotating among copies larger than L2. */
static void test_fused_norm_benchmark(void **state)
{
    (void)state;
    if (!gpu_bench_enabled())
        return;
    enum { COPIES = 4, REPS = 40 };
    static const struct { int64_t n, k; int swiglu; const char *name; } shapes[] = {
        {6144, 2560, 0, "qkv"}, {19456, 2560, 1, "gate_up"}};
    pio_error err;
    for (size_t s = 0; s < 2; s++) {
        int64_t n = shapes[s].n, k = shapes[s].k;
        pair w = random_pair(PIO_DTYPE_BF16, n, k, 0);
        pk_tensor copies[COPIES];
        for (int c = 0; c < COPIES; c++) {
            copies[c] = w.d;
            if (c > 0) {
                copies[c].data = dev_alloc(w.span_bytes);
                expect_ok(pk_copy(gpu_ctx, &copies[c], &w.d, &err), &err, "bench copy");
            }
        }
        pair g = make_pair(PIO_DTYPE_BF16, 1, k, 0, FILL_UNIFORM, 0.5f, 1.5f);
        pair x = random_pair(PIO_DTYPE_F32, 1, k, 0), h = nan_pair(PIO_DTYPE_F32, 1, k, 0);
        pair y = nan_pair(PIO_DTYPE_F32, 1, n, 0);
        pk_tensor out = pk_tensor_cols(&y.d, 0, n / 2), gate = out;
        pk_tensor up = pk_tensor_cols(&y.d, n / 2, n / 2);
        for (int fused = 0; fused < 2; fused++) {
            pk_graph *graph = NULL;
            for (int rec = 0; rec < 2; rec++) { /* a direct run (warm-up), then the recording */
                if (rec)
                    expect_ok(pk_graph_begin(gpu_ctx, &err), &err, "bench record");
                for (int r = 0; r < REPS; r++) {
                    const pk_tensor *wc = &copies[r % COPIES];
                    if (fused && shapes[s].swiglu)
                        expect_ok(pk_rmsnorm_matmul_swiglu(gpu_ctx, &out, &y.d, &h.d, &x.d, &g.d,
                                                           1e-6f, wc, &err), &err, "bench");
                    else if (fused)
                        expect_ok(pk_rmsnorm_matmul(gpu_ctx, &y.d, &h.d, &x.d, &g.d, 1e-6f, wc,
                                                    &err), &err, "bench");
                    else {
                        expect_ok(pk_rmsnorm(gpu_ctx, &h.d, &x.d, &g.d, 1e-6f, &err), &err,
                                  "bench");
                        expect_ok(pk_matmul(gpu_ctx, &y.d, &h.d, wc, &err), &err, "bench");
                        if (shapes[s].swiglu)
                            expect_ok(pk_swiglu(gpu_ctx, &gate, &gate, &up, &err), &err, "bench");
                    }
                }
                if (rec)
                    expect_ok(pk_graph_end(gpu_ctx, &graph, &err), &err, "bench record");
            }
            sync_gpu("bench warm-up");
            expect_ok(pk_graph_launch(gpu_ctx, graph, &err), &err, "bench");
            sync_gpu("bench warm-up");
            double t0 = seconds_now();
            expect_ok(pk_graph_launch(gpu_ctx, graph, &err), &err, "bench");
            sync_gpu("bench");
            double per = (seconds_now() - t0) / REPS;
            pk_graph_destroy(gpu_ctx, graph);
            print_message("%-22s %-7s M=1 N=%-6lld K=%-5lld %8.1f us  %7.1f GB/s of W\n",
                          shapes[s].swiglu ? "rmsnorm_matmul_swiglu" : "rmsnorm_matmul",
                          fused ? "fused" : shapes[s].swiglu ? "3 ops" : "2 ops",
                          (long long)n, (long long)k, per * 1e6, (double)n * k * 2 / per * 1e-9);
        }
        release_all(NULL);
    }
}

/* pk_qk_norm_rope_store on q/k/v column views of one fused row, against the CPU's five ops:
 * q and k normalised and rotated in place (fp32: TOL_F32), v untouched, the cache rows of k and
 * v stored (a bf16 rounding of values equal to TOL_F32 may differ by one ulp: small tolerance). */
static void test_qk_norm_rope_store(void **state)
{
    (void)state;
    static const attention_case cases[] = {
        {32, 8, 128, 128, 16, PIO_DTYPE_BF16, 0},
        {4, 2, 64, 64, 3, PIO_DTYPE_F32, 0},
        {8, 8, 128, 128, 16, PIO_DTYPE_F32, 0},
        {4, 2, 256, 256, 16, PIO_DTYPE_BF16, 0},
        {4, 2, 96, 96, 16, PIO_DTYPE_F32, 0}, /* not a multiple of 64: the shared-memory kernel */
    };
    /* NEOX over whole heads (the register kernel for widths 64/128/256: every third position,
     * 45 tokens, a head per warp; every position, 132 tokens, several heads per warp), then
     * interleaved and a partial rotary range (the general kernel). */
    static const struct { pk_rope_layout layout; int rotary_num, rotary_den, step; } ropes[] = {
        {PK_ROPE_NEOX, 1, 1, 3},
        {PK_ROPE_NEOX, 1, 1, 1},
        {PK_ROPE_INTERLEAVED, 1, 1, 3},
        {PK_ROPE_NEOX, 1, 2, 3}};
    enum { N_ROPES = sizeof ropes / sizeof *ropes };
    pio_error err;
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases * N_ROPES; ci++) {
        size_t i = ci / N_ROPES, ri = ci % N_ROPES;
        const attention_case *c = &cases[i];
        attn_world w;
        make_world(&w, c);
        pk_attention_params p = params_of(c);
        token_list tl = {.n = 0};
        for (int s = 0; s < N_SEQS; s++)
            for (int32_t j = 0; j < plan_cached[s] + plan_fresh[s]; j += ropes[ri].step) {
                tl.seq[tl.n] = s;
                tl.pos[tl.n++] = j;
            }
        batch_pair b = make_batch(&w, &tl);
        pair qkv = random_pair(PIO_DTYPE_F32, tl.n, w.qw + 2 * w.kw, 0);
        pair q = cols_of(&qkv, 0, w.qw), k = cols_of(&qkv, w.qw, w.kw);
        pair v = cols_of(&qkv, w.qw + w.kw, w.kw);
        pair qn = make_pair(PIO_DTYPE_BF16, 1, c->head_dim, 0, FILL_UNIFORM, 0.5f, 1.5f);
        pair kn = make_pair(PIO_DTYPE_F32, 1, c->head_dim, 0, FILL_UNIFORM, 0.5f, 1.5f);
        pk_rope_params rope = {ropes[ri].layout, c->head_dim,
                               c->head_dim * ropes[ri].rotary_num / ropes[ri].rotary_den, 0,
                               1000000.0f};
        expect_ok(pk_qk_norm_rope_store(gpu_ctx, &q.d, &k.d, &v.d, &qn.d, &kn.d, 1e-6f, &rope,
                                        &w.k_cache_d, &w.v_cache_d, &b.d, &p, &err),
                  &err, "pk_qk_norm_rope_store");
        expect_ok(pk_qk_norm_rope_store(cpu_ctx, &q.h, &k.h, &v.h, &qn.h, &kn.h, 1e-6f, &rope,
                                        &w.k_cache_h, &w.v_cache_h, &b.h, &p, &err),
                  &err, "pk_qk_norm_rope_store");
        check_pair("pk_qk_norm_rope_store qkv", &qkv, NULL, TOL_F32, NULL);
        check_pair("pk_qk_norm_rope_store k plane", &w.k_plane, NULL, 1e-4, NULL);
        check_pair("pk_qk_norm_rope_store v plane", &w.v_plane, NULL, 0.0, NULL);
        release_all(NULL);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Graphs                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* download, for a result written on ctx's own stream: that stream is waited for first (the
 * copy runs on gpu_ctx's). */
static void download_from(pk_context *ctx, pair *p)
{
    sync_ctx(ctx, "download_from");
    download(p);
}

/* The device's short-context limit for the TMA GEMVs is one of the rule's two values
 * (pk_gemv_tma_short_context_for, tested on the CPU), the same on every context of the GPU. */
static void test_gemv_tma_short_context(void **state)
{
    (void)state;
    const int positions = pk_context_gemv_tma_short_context(gpu_ctx);
    print_message("gemv_tma short context on this GPU: %d positions\n", positions);
    assert_true(positions == 512 || positions == 4096);
    assert_int_equal(pk_context_gemv_tma_short_context(gemv_ctx), positions);
}

/* pk_context_set_gemv_tma switches a context's one-row GEMVs between gemv_kernel and
 * gemv_tma_kernel for the launches that follow, and a graph keeps its recording's kernel. At
 * N = 16384, K = 2048 the two split K differently on GPUs of 65 to 256 SMs (their split rules
 * aim at 32 and 16 warps an SM: 4 and 2 splits on 132 SMs), so their sums differ in the last
 * bits: the switch shows in the output, switching back gives the first bits again, and the two
 * agree within TOL_F32. */
static void test_gemv_tma_switch(void **state)
{
    (void)state;
    enum { N = 16384, K = 2048 };
    pio_error err;
    pair x = random_pair(PIO_DTYPE_F32, 1, K, 0);
    pair w = random_pair(PIO_DTYPE_BF16, N, K, 0);
    pair y = nan_pair(PIO_DTYPE_F32, 1, N, 0);
    sync_gpu("uploads"); /* gemv_ctx has its own stream: the uploads on gpu_ctx's must be done */
    const size_t bytes = y.span_bytes;
    void *registers = host_alloc(bytes), *tma = host_alloc(bytes);
    expect_ok(pk_matmul(gemv_ctx, &y.d, &x.d, &w.d, &err), &err, "gemv_kernel");
    download_from(gemv_ctx, &y);
    memcpy(registers, y.got, bytes);
    pk_context_set_gemv_tma(gemv_ctx, PK_GEMV_TMA_ALL);
    expect_ok(pk_matmul(gemv_ctx, &y.d, &x.d, &w.d, &err), &err, "gemv_tma_kernel");
    download_from(gemv_ctx, &y);
    memcpy(tma, y.got, bytes);
    pk_graph *graph = NULL;
    expect_ok(pk_graph_begin(gemv_ctx, &err), &err, "pk_graph_begin");
    expect_ok(pk_matmul(gemv_ctx, &y.d, &x.d, &w.d, &err), &err, "recorded gemv_tma_kernel");
    expect_ok(pk_graph_end(gemv_ctx, &graph, &err), &err, "pk_graph_end");
    pk_context_set_gemv_tma(gemv_ctx, PK_GEMV_TMA_DEFAULT);
    expect_ok(pk_matmul(gemv_ctx, &y.d, &x.d, &w.d, &err), &err, "gemv_kernel again");
    download_from(gemv_ctx, &y);
    assert_memory_equal(y.got, registers, bytes);
    expect_ok(pk_graph_launch(gemv_ctx, graph, &err), &err, "pk_graph_launch");
    download_from(gemv_ctx, &y);
    assert_memory_equal(y.got, tma, bytes); /* the recording's kernel */
    pk_graph_destroy(gemv_ctx, graph);
    assert_memory_not_equal(registers, tma, bytes);
    memcpy(y.h.data, registers, bytes); /* the register kernel's sums as the reference */
    check_pair("gemv_tma_kernel against gemv_kernel", &y, NULL, TOL_F32, NULL);
}

/* A recorded chain replays what running it directly gives, with whatever the input holds at
 * replay; a host copy while recording fails the recording and leaves the context usable. */
static void test_graph_replay(void **state)
{
    (void)state;
    pio_error err;
    assert_true(pk_graph_supported(gpu_ctx));
    assert_false(pk_graph_supported(cpu_ctx));
    pair x = random_pair(PIO_DTYPE_F32, 1, 2560, 0);
    pair g = make_pair(PIO_DTYPE_BF16, 1, 2560, 0, FILL_UNIFORM, 0.5f, 1.5f);
    pair w = random_pair(PIO_DTYPE_BF16, 1024, 2560, 0);
    pair h = nan_pair(PIO_DTYPE_F32, 1, 2560, 0);
    pair y = nan_pair(PIO_DTYPE_F32, 1, 1024, 0);
    pair y2 = nan_pair(PIO_DTYPE_F32, 1, 1024, 0);
    sync_gpu("uploads");
    pk_graph *graph = NULL;
    expect_ok(pk_graph_begin(gpu_ctx, &err), &err, "pk_graph_begin");
    expect_ok(pk_rmsnorm_matmul(gpu_ctx, &y.d, &h.d, &x.d, &g.d, 1e-6f, &w.d, &err), &err,
              "recorded rmsnorm_matmul");
    expect_ok(pk_softmax(gpu_ctx, &y.d, &y.d, &err), &err, "recorded softmax");
    expect_ok(pk_graph_end(gpu_ctx, &graph, &err), &err, "pk_graph_end");
    assert_non_null(graph);
    for (int rep = 0; rep < 3; rep++) {
        for (int64_t i = 0; i < 2560; i++) /* a new input each time, replayed by the graph */
            ((float *)x.h.data)[i] = uniform(-2.0f, 2.0f);
        upload(&x);
        expect_ok(pk_graph_launch(gpu_ctx, graph, &err), &err, "pk_graph_launch");
        expect_ok(pk_rmsnorm_matmul(gpu_ctx, &y2.d, &h.d, &x.d, &g.d, 1e-6f, &w.d, &err), &err,
                  "direct rmsnorm_matmul");
        expect_ok(pk_softmax(gpu_ctx, &y2.d, &y2.d, &err), &err, "direct softmax");
        download(&y2);
        memcpy(y.h.data, y2.got, y.span_bytes); /* the direct run is the reference: bit-exact */
        check_pair("graph replay", &y, NULL, 0.0, NULL);
    }
    pk_graph_destroy(gpu_ctx, graph);

    /* Waiting for the device cannot be recorded: the recording fails, nothing is kept, the
     * context works. (Not under compute-sanitizer, which counts the refused calls as errors.) */
    if (sanitizer)
        return;
    pair z = random_pair(PIO_DTYPE_F32, 1, 64, 0);
    sync_gpu("uploads");
    expect_ok(pk_graph_begin(gpu_ctx, &err), &err, "pk_graph_begin");
    expect_ok(pk_softmax(gpu_ctx, &z.d, &z.d, &err), &err, "recorded softmax");
    assert_int_not_equal(pk_synchronize(gpu_ctx, &err), PIO_OK);
    graph = NULL;
    assert_int_not_equal(pk_graph_end(gpu_ctx, &graph, &err), PIO_OK);
    assert_null(graph);
    expect_ok(pk_copy(gpu_ctx, &z.d, &z.h, &err), &err, "copy after a failed recording");
    sync_gpu("after a failed recording");
}

static void test_attention_gqa4(void **state)
{
    (void)state;
    const int32_t block_sizes[2] = {16, 3};
    const pio_dtype dtypes[2] = {PIO_DTYPE_BF16, PIO_DTYPE_F32};
    for (int b = 0; b < 2; b++)
        for (int d = 0; d < 2; d++) {
            attention_case c = {8, 2, 64, 64, block_sizes[b], dtypes[d], 0};
            run_attention_case(&c);
        }
    attention_case qwen3 = {32, 8, 128, 128, 16, PIO_DTYPE_BF16, 0}; /* Qwen3-4B's heads */
    run_attention_case(&qwen3);
}

static void test_attention_gqa1(void **state)
{
    (void)state;
    const int32_t block_sizes[2] = {16, 3};
    for (int b = 0; b < 2; b++) {
        attention_case c = {3, 3, 32, 32, block_sizes[b], PIO_DTYPE_BF16, 0};
        run_attention_case(&c);
        attention_case odd = {4, 4, 13, 13, block_sizes[b], PIO_DTYPE_F32, 0};
        run_attention_case(&odd);
    }
}

static void test_attention_value_width_and_latent(void **state)
{
    (void)state;
    attention_case wide_v = {4, 2, 12, 24, 4, PIO_DTYPE_F32, 0};
    run_attention_case(&wide_v);
    attention_case narrow_v = {8, 2, 64, 32, 16, PIO_DTYPE_BF16, 0};
    run_attention_case(&narrow_v);
    /* Absorbed MLA (GLM-4.7): one 576-wide latent entry, values = its first 512 columns. */
    attention_case latent = {16, 1, 576, 512, 16, PIO_DTYPE_BF16, 1};
    if (sanitizer)
        latent.n_q = 4;
    run_attention_case(&latent);
    attention_case latent3 = {5, 1, 40, 32, 3, PIO_DTYPE_F32, 1};
    run_attention_case(&latent3);
}

static void test_attention_bad_block_is_reported(void **state)
{
    (void)state;
    attention_case c = {4, 2, 16, 16, 4, PIO_DTYPE_BF16, 0};
    attn_world w;
    make_world(&w, &c);
    pk_attention_params p = params_of(&c);
    pio_error err;
    token_list tl = {.n = 2, .seq = {0, 1}, .pos = {9, 2}};
    batch_pair b = make_batch(&w, &tl);
    /* Sequence 0's second block (positions 4..7, before token 0's own block) is out of range. */
    ((int32_t *)w.tables.h.data)[1] = (int32_t)w.n_blocks + 3;
    upload(&w.tables);
    pair q = random_pair(PIO_DTYPE_F32, 2, c.n_q * c.head_dim, 0);
    pair out = nan_pair(PIO_DTYPE_F32, 2, c.n_q * c.head_dim, 0);
    expect_ok(pk_attention(gpu_ctx, &out.d, &q.d, &b.k_new.d, &b.v_new.d, &w.k_cache_d,
                           &w.v_cache_d, &b.d, &p, &err), &err, "attention");
    assert_int_equal(pk_synchronize(gpu_ctx, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "pk_attention"));
    assert_non_null(strstr(err.message, "uses block id"));
    sync_gpu("after the reported error");
    /* A negative position is reported by pk_kv_store. */
    tl.pos[1] = -1;
    b = make_batch(&w, &tl);
    expect_ok(pk_kv_store(gpu_ctx, &w.k_cache_d, &w.v_cache_d, &b.k_new.d, &b.v_new.d, &b.d, &p,
                          &err), &err, "kv_store");
    assert_int_equal(pk_synchronize(gpu_ctx, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "pk_kv_store"));
    sync_gpu("after the reported error");
    release_all(NULL);
}

/* Times pk_attention at Qwen3-4B's heads (32 q / 8 kv, head_dim 128, BF16 cache, block 16)
 * (PIO_KERNELS_BENCH=1): decode of B sequences at depth `ctx_len`, and a 512-token prefill. */
static void test_attention_benchmark(void **state)
{
    (void)state;
    if (!gpu_bench_enabled())
        return;
    enum { BS = 16, NQ = 32, NKV = 8, HD = 128, CTX = 4096, MAX_B = 8, REPS = 20 };
    static const struct { int b; int prefill; } runs[] = {{1, 0}, {8, 0}, {1, 512}};
    pio_error err;
    int64_t blocks_per_seq = CTX / BS, n_blocks = MAX_B * blocks_per_seq;
    pair k_plane = random_pair(PIO_DTYPE_BF16, n_blocks * BS, NKV * HD, 0);
    pair v_plane = random_pair(PIO_DTYPE_BF16, n_blocks * BS, NKV * HD, 0);
    pair tables = make_pair(PIO_DTYPE_I32, MAX_B, blocks_per_seq, 0, FILL_ZERO, 0, 0);
    for (int64_t i = 0; i < n_blocks; i++)
        ((int32_t *)tables.h.data)[i] = (int32_t)i;
    upload(&tables);
    pk_attention_params p = {NQ, NKV, HD, HD, 1.0f / sqrtf((float)HD)};
    for (size_t r = 0; r < sizeof runs / sizeof *runs; r++) {
        int64_t t = runs[r].prefill ? runs[r].prefill : runs[r].b;
        int32_t pos[512], rows[512];
        for (int64_t i = 0; i < t; i++) {
            pos[i] = runs[r].prefill ? (int32_t)i : CTX - 1;
            rows[i] = runs[r].prefill ? 0 : (int32_t)i;
        }
        pair positions = int_pair(pos, t), seq_rows = int_pair(rows, t);
        pair q = random_pair(PIO_DTYPE_F32, t, NQ * HD, 0);
        pair out = nan_pair(PIO_DTYPE_F32, t, NQ * HD, 0);
        pk_token_batch batch = {positions.d, seq_rows.d, tables.d, BS, 1, 1};
        expect_ok(pk_attention(gpu_ctx, &out.d, &q.d, NULL, NULL, &k_plane.d, &v_plane.d, &batch,
                               &p, &err), &err, "bench attention");
        sync_gpu("bench attention warm-up");
        double t0 = seconds_now();
        for (int i = 0; i < REPS; i++)
            expect_ok(pk_attention(gpu_ctx, &out.d, &q.d, NULL, NULL, &k_plane.d, &v_plane.d,
                                   &batch, &p, &err), &err, "bench attention");
        sync_gpu("bench attention");
        double per = (seconds_now() - t0) / REPS;
        /* bytes a kernel must read: each sequence's K and V once (decode), or the prompt's */
        double keys = runs[r].prefill ? (double)runs[r].prefill : (double)runs[r].b * CTX;
        double bytes = keys * NKV * HD * 2 * 2;
        print_message("attention %s B=%d T=%lld depth %d: %8.1f us  %7.1f GB/s of K/V\n",
                      runs[r].prefill ? "prefill" : "decode ", runs[r].b, (long long)t,
                      runs[r].prefill ? 0 : CTX, per * 1e6, bytes / per * 1e-9);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_context_and_buffers, release_all),
        cmocka_unit_test_teardown(test_copy, release_all),
        cmocka_unit_test_teardown(test_matmul, release_all),
        cmocka_unit_test_teardown(test_matmul_empty_k, release_all),
        cmocka_unit_test_teardown(test_embedding, release_all),
        cmocka_unit_test_teardown(test_embedding_bad_id_is_reported, release_all),
        cmocka_unit_test_teardown(test_rmsnorm, release_all),
        cmocka_unit_test_teardown(test_head_rmsnorm, release_all),
        cmocka_unit_test_teardown(test_rope, release_all),
        cmocka_unit_test_teardown(test_swiglu, release_all),
        cmocka_unit_test_teardown(test_add, release_all),
        cmocka_unit_test_teardown(test_softmax, release_all),
        cmocka_unit_test_teardown(test_argmax, release_all),
        cmocka_unit_test_teardown(test_cast, release_all),
        cmocka_unit_test_teardown(test_fill_dummy, release_all),
        cmocka_unit_test_teardown(test_attention_gqa4, release_all),
        cmocka_unit_test_teardown(test_attention_gqa1, release_all),
        cmocka_unit_test_teardown(test_attention_value_width_and_latent, release_all),
        cmocka_unit_test_teardown(test_attention_bad_block_is_reported, release_all),
        cmocka_unit_test_teardown(test_gemv_repeats_bitwise, release_all),
        cmocka_unit_test_teardown(test_gemv_chain, release_all),
        cmocka_unit_test_teardown(test_rmsnorm_matmul, release_all),
        cmocka_unit_test_teardown(test_rmsnorm_matmul_swiglu, release_all),
        cmocka_unit_test_teardown(test_qk_norm_rope_store, release_all),
        cmocka_unit_test_teardown(test_gemv_tma_switch, release_all),
        cmocka_unit_test_teardown(test_gemv_tma_short_context, release_all),
        cmocka_unit_test_teardown(test_graph_replay, release_all),
        cmocka_unit_test_teardown(test_matmul_benchmark, release_all),
        cmocka_unit_test_teardown(test_fused_norm_benchmark, release_all),
        cmocka_unit_test_teardown(test_decode_chain_benchmark, release_all),
        cmocka_unit_test_teardown(test_attention_benchmark, release_all),
    };
    apply_test_filter();
    return cmocka_run_group_tests_name("cuda backend vs cpu backend", tests, group_setup,
                                       group_teardown);
}
