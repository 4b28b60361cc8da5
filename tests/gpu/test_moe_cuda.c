/*
 * The mixture-of-experts ops of the CUDA backend (kernels/cuda/cuda_moe.cu) against their CPU
 * twins: pk_moe_topk_softmax, pk_moe_topk_experts (routing inside the decode kernels), and
 * pk_moe_experts / pk_moe_experts_slice on its three paths —
 * the decode kernels (T·k <= 256, two launches, fp32), the general GEMV kernels (fp32, the
 * fallback at any T) and the grouped tensor-core GEMM (prefill and batches: x and the SwiGLU
 * activations rounded to bf16). Run by `make test-gpu` on a machine with a GPU; not part of
 * `make test`. PIO_GPU_TEST_FILTER=PATTERN runs only the tests whose names match.
 * PIO_CUDA_MOE_DECODE=one|grouped forces the decode path's variant (the benchmark, the
 * determinism test, the down-preload test: "one" also keeps the one-pair down kernel).
 *
 * The path is forced per test with PIO_CUDA_MOE_GEMM_MIN_T and PIO_CUDA_MOE_DECODE, which the op
 * reads at every call (GEMM_MIN_T 1: the GEMM whenever the weights allow it; a huge value: the
 * decode kernels for T·k <= 256, else the GEMV kernels; DECODE=0 as well: always the general
 * GEMV kernels).
 *
 * Tolerances (‖gpu − cpu‖₂ / ‖cpu‖₂ over the view; docs/KERNELS.md, "CUDA backend"):
 *   TOL_F32     2e-5  GEMV and decode paths, routing weights: fp32 dots over the same
 *                     products, in another order
 *   TOL_BF16_X  1e-2  GEMM path: x rounded to bf16 (about 1.1e-3 relative per product) and the
 *                     activation h rounded to bf16 before down (as much again); a wrong layout,
 *                     a dropped K chunk or tail, or a wrong expert gives errors of 3e-2 to 1
 *   exact             routing ids; a GEMM- or decode-path token alone or in any batch (of the
 *                     same path), graph replay
 *
 * Seeds: PIO_GPU_TEST_SEED=N repeats a run (the seed is printed); otherwise the clock picks one.
 * PIO_GPU_TEST_SANITIZER=1 (under compute-sanitizer) drops the largest shapes.
 * PIO_KERNELS_BENCH=1 also times pk_moe_experts at Qwen3-Coder-30B-A3B's shape on every path.
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

static int sanitizer; /* PIO_GPU_TEST_SANITIZER=1: smaller shapes */

#include "tests/gpu/gpu_setup.h"
#include "tests/gpu/gpu_test.h"

/* ------------------------------------------------------------------------------------------ */
/* Setup                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    rng_state = gpu_test_seed("test_moe_cuda");
    sanitizer = gpu_test_under_sanitizer();
    return gpu_test_contexts(&cpu_ctx, &gpu_ctx);
}

static int group_teardown(void **state)
{
    (void)state;
    unsetenv("PIO_CUDA_MOE_GEMM_MIN_T");
    unsetenv("PIO_CUDA_MOE_DECODE");
    return gpu_test_release_contexts(cpu_ctx, gpu_ctx);
}

/* Which expert path pk_moe_experts takes from now on: GEMM_PATH wherever the weights allow it
 * (bf16, 16-byte aligned rows), GEMV_PATH (the general GEMV kernels) always, DECODE_PATH (the
 * two decode launches) whenever T·k <= 256, else the GEMV kernels, DEFAULT_PATH by the
 * backend's own choice. */
typedef enum moe_path { GEMV_PATH, GEMM_PATH, DECODE_PATH, DEFAULT_PATH } moe_path;

static void force_path(moe_path path)
{
    if (path == DEFAULT_PATH)
        unsetenv("PIO_CUDA_MOE_GEMM_MIN_T");
    else
        setenv("PIO_CUDA_MOE_GEMM_MIN_T", path == GEMM_PATH ? "1" : "2000000000", 1);
    if (path == GEMV_PATH)
        setenv("PIO_CUDA_MOE_DECODE", "0", 1);
    else
        unsetenv("PIO_CUDA_MOE_DECODE");
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------------------------ */
/* Routing, and the experts on the GEMV path (fp32 throughout)                                */
/* ------------------------------------------------------------------------------------------ */

static const int64_t MOE_TOKENS[] = {1, 7, 64};
static const int64_t MOE_EXPERTS[] = {12, 128};
static const int64_t MOE_TOP_K[] = {1, 3, 8};

/* Routing: logits on a grid of 1/4 in [-4, 4], so a row holds many exact ties (which both
 * backends must break towards the lower index) and distinct values are far apart (no near tie
 * that 1-2 ulp of expf could flip); the last row is on a grid of 1/64 (few ties). ids must
 * match exactly,
 * weights within TOL_F32; outputs start NaN (weights) or -999 (ids). */
/* Router logits of t tokens and e experts on those grids (see the comment above). */
static pair grid_logits(int64_t t, int64_t e)
{
    pair logits = make_pair(PIO_DTYPE_F32, t, e, 1, FILL_UNIFORM, -4.0f, 4.0f);
    for (int64_t r = 0; r < t; r++) {
        float *row = (float *)logits.h.data + r * logits.h.stride;
        float grid = r == t - 1 && t > 1 ? 64.0f : 4.0f;
        for (int64_t i = 0; i < e; i++)
            row[i] = roundf(row[i] * grid) / grid;
        if (r == 0) /* the largest value tied at both ends of the row */
            row[0] = row[e - 1] = 5.0f;
    }
    upload(&logits);
    return logits;
}

static void test_moe_topk_softmax(void **state)
{
    (void)state;
    /* Beyond the experts tests' sizes: E = 200 and 300 take the register kernel's wider variant
     * and the plain kernel, k = 40 the plain kernel. */
    static const int64_t experts[] = {12, 128, 200, 300};
    static const int64_t top_k[] = {1, 3, 8, 40};
    pio_error err;
    for (size_t a = 0; a < sizeof MOE_TOKENS / sizeof *MOE_TOKENS; a++)
        for (size_t b = 0; b < sizeof experts / sizeof *experts; b++)
            for (size_t c = 0; c < sizeof top_k / sizeof *top_k; c++)
                for (int normalize = 0; normalize < 2; normalize++) {
                    int64_t t = MOE_TOKENS[a], e = experts[b], k = top_k[c];
                    if (k > e)
                        continue;
                    pair logits = grid_logits(t, e);
                    pair ids = make_pair(PIO_DTYPE_I32, t, k, 1, FILL_ZERO, -999, -999);
                    pair weights = nan_pair(PIO_DTYPE_F32, t, k, 2);
                    void *ids_before = snapshot(&ids), *w_before = snapshot(&weights);
                    expect_ok(pk_moe_topk_softmax(gpu_ctx, &ids.d, &weights.d, &logits.d,
                                                  normalize, &err), &err, "moe_topk_softmax");
                    expect_ok(pk_moe_topk_softmax(cpu_ctx, &ids.h, &weights.h, &logits.h,
                                                  normalize, &err), &err, "moe_topk_softmax");
                    char what[96];
                    snprintf(what, sizeof what, "pk_moe_topk_softmax T=%lld E=%lld k=%lld n=%d",
                             (long long)t, (long long)e, (long long)k, normalize);
                    check_pair(what, &ids, NULL, 0.0, ids_before);
                    check_pair(what, &weights, NULL, TOL_F32, w_before);
                }
}

/* Random ids: k distinct experts per token. */
static pair moe_random_ids(int64_t t, int64_t k, int64_t e)
{
    pair ids = make_pair(PIO_DTYPE_I32, t, k, 1, FILL_ZERO, 0, 0);
    int32_t *perm = host_alloc((size_t)e * sizeof *perm);
    for (int64_t r = 0; r < t; r++) {
        for (int64_t i = 0; i < e; i++)
            perm[i] = (int32_t)i;
        for (int64_t j = 0; j < k; j++) {
            int64_t s = random_int(j, e - 1);
            int32_t tmp = perm[j];
            perm[j] = perm[s];
            perm[s] = tmp;
            ((int32_t *)ids.h.data)[r * ids.h.stride + j] = perm[j];
        }
    }
    upload(&ids);
    return ids;
}

/* Experts (GEMV path): out (random, accumulated into) within TOL_F32 of the CPU, gaps
 * untouched; odd H and F so no warp loop divides evenly; BF16 and F32 weights. */
static void test_moe_experts(void **state)
{
    (void)state;
    force_path(GEMV_PATH);
    const int64_t H = 72, F = 40;
    pio_error err;
    for (size_t a = 0; a < sizeof MOE_TOKENS / sizeof *MOE_TOKENS; a++)
        for (size_t b = 0; b < sizeof MOE_EXPERTS / sizeof *MOE_EXPERTS; b++)
            for (size_t c = 0; c < sizeof MOE_TOP_K / sizeof *MOE_TOP_K; c++)
                for (int bf16 = 0; bf16 < 2; bf16++) {
                    int64_t t = MOE_TOKENS[a], e = MOE_EXPERTS[b], k = MOE_TOP_K[c];
                    pio_dtype wdt = bf16 ? PIO_DTYPE_BF16 : PIO_DTYPE_F32;
                    pair gate_up = random_pair(wdt, e * 2 * F, H, 0);
                    pair down = random_pair(wdt, e * H, F, 0);
                    pair x = random_pair(PIO_DTYPE_F32, t, H, 2);
                    pair ids = moe_random_ids(t, k, e);
                    pair weights = make_pair(PIO_DTYPE_F32, t, k, 1, FILL_UNIFORM, 0.0f, 1.0f);
                    pair out = make_pair(PIO_DTYPE_F32, t, H, 3, FILL_UNIFORM, -1.0f, 1.0f);
                    void *before = snapshot(&out);
                    expect_ok(pk_moe_experts(gpu_ctx, &out.d, &x.d, &gate_up.d, &down.d, &ids.d,
                                             &weights.d, e, &err), &err, "moe_experts");
                    expect_ok(pk_moe_experts(cpu_ctx, &out.h, &x.h, &gate_up.h, &down.h, &ids.h,
                                             &weights.h, e, &err), &err, "moe_experts");
                    char what[96];
                    snprintf(what, sizeof what, "pk_moe_experts T=%lld E=%lld k=%lld %s",
                             (long long)t, (long long)e, (long long)k, bf16 ? "bf16" : "f32");
                    check_pair(what, &out, NULL, TOL_F32, before);
                }
}

/* Experts (GEMV path) at shapes that take the 16-byte loads: Qwen3-Coder-30B-A3B's widths
 * (H 2048, F 768; 16 experts, top-8) and rows padded to a multiple of 8 elements with K % 8
 * tails (H 1030, F 300; 12 experts, top-3). T from 1 (one pair per expert) to 64 (groups of 4
 * pairs per expert, re-read rows); K split over 1 to 8 warps. Within TOL_F32 of the CPU. */
static void test_moe_experts_vector_shapes(void **state)
{
    (void)state;
    force_path(GEMV_PATH);
    static const struct { int64_t h, f, e, k, pad_h, pad_f; } shapes[] = {
        {2048, 768, 16, 8, 0, 0}, {1030, 300, 12, 3, 2, 4},
    };
    static const int64_t tokens[] = {1, 2, 16, 64};
    pio_error err;
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
        for (int bf16 = 0; bf16 < 2; bf16++) {
            int64_t h = shapes[si].h, f = shapes[si].f, e = shapes[si].e, k = shapes[si].k;
            pio_dtype wdt = bf16 ? PIO_DTYPE_BF16 : PIO_DTYPE_F32;
            pair gate_up = random_pair(wdt, e * 2 * f, h, shapes[si].pad_h);
            pair down = random_pair(wdt, e * h, f, shapes[si].pad_f);
            for (size_t ti = 0; ti < sizeof tokens / sizeof *tokens; ti++) {
                int64_t t = tokens[ti];
                if (sanitizer && si == 0 && t > 16)
                    continue;
                pair x = random_pair(PIO_DTYPE_F32, t, h, shapes[si].pad_h);
                pair ids = moe_random_ids(t, k, e);
                pair weights = make_pair(PIO_DTYPE_F32, t, k, 1, FILL_UNIFORM, 0.0f, 1.0f);
                pair out = make_pair(PIO_DTYPE_F32, t, h, 3, FILL_UNIFORM, -1.0f, 1.0f);
                void *before = snapshot(&out);
                expect_ok(pk_moe_experts(gpu_ctx, &out.d, &x.d, &gate_up.d, &down.d, &ids.d,
                                         &weights.d, e, &err), &err, "moe_experts");
                expect_ok(pk_moe_experts(cpu_ctx, &out.h, &x.h, &gate_up.h, &down.h, &ids.h,
                                         &weights.h, e, &err), &err, "moe_experts");
                char what[112];
                snprintf(what, sizeof what, "pk_moe_experts T=%lld H=%lld F=%lld E=%lld k=%lld %s",
                         (long long)t, (long long)h, (long long)f, (long long)e, (long long)k,
                         bf16 ? "bf16" : "f32");
                check_pair(what, &out, NULL, TOL_F32, before);
            }
            release_all(NULL);
        }
}

/* Routing and experts (GEMV path) chained on the device, then: a token's result does not depend
 * on the batch (bit for bit the same when run alone), and the chain matches the CPU's. */
static void test_moe_chain_and_batch_independence(void **state)
{
    (void)state;
    force_path(GEMV_PATH);
    const int64_t T = 64, E = 128, K = 8, H = 96, F = 48;
    pio_error err;
    pair gate_up = random_pair(PIO_DTYPE_BF16, E * 2 * F, H, 0);
    pair down = random_pair(PIO_DTYPE_BF16, E * H, F, 0);
    pair x = random_pair(PIO_DTYPE_F32, T, H, 0);
    pair logits = make_pair(PIO_DTYPE_F32, T, E, 0, FILL_UNIFORM, -4.0f, 4.0f);
    for (int64_t i = 0; i < T * E; i++) /* no near ties that 1-2 ulp of expf could flip */
        ((float *)logits.h.data)[i] = roundf(((float *)logits.h.data)[i] * 32.0f) / 32.0f;
    upload(&logits);
    pair ids = make_pair(PIO_DTYPE_I32, T, K, 0, FILL_ZERO, -999, -999);
    pair weights = nan_pair(PIO_DTYPE_F32, T, K, 0);
    pair out = make_pair(PIO_DTYPE_F32, T, H, 0, FILL_ZERO, 0.0f, 0.0f);
    expect_ok(pk_moe_topk_softmax(gpu_ctx, &ids.d, &weights.d, &logits.d, 1, &err), &err, "r");
    expect_ok(pk_moe_experts(gpu_ctx, &out.d, &x.d, &gate_up.d, &down.d, &ids.d, &weights.d, E,
                             &err), &err, "experts");
    expect_ok(pk_moe_topk_softmax(cpu_ctx, &ids.h, &weights.h, &logits.h, 1, &err), &err, "r");
    expect_ok(pk_moe_experts(cpu_ctx, &out.h, &x.h, &gate_up.h, &down.h, &ids.h, &weights.h, E,
                             &err), &err, "experts");
    check_pair("moe chain ids", &ids, NULL, 0.0, NULL);
    check_pair("moe chain out", &out, NULL, TOL_F32, NULL);
    float *batch = host_alloc((size_t)(T * H) * sizeof(float));
    memcpy(batch, out.got, (size_t)(T * H) * sizeof(float));
    for (int64_t t = 0; t < T; t += 9) {
        pair one = make_pair(PIO_DTYPE_F32, 1, H, 0, FILL_ZERO, 0.0f, 0.0f);
        pk_tensor xr = pk_tensor_rows(&x.d, t, 1), ir = pk_tensor_rows(&ids.d, t, 1);
        pk_tensor wr = pk_tensor_rows(&weights.d, t, 1);
        expect_ok(pk_moe_experts(gpu_ctx, &one.d, &xr, &gate_up.d, &down.d, &ir, &wr, E, &err),
                  &err, "experts alone");
        download(&one);
        if (memcmp(one.got, batch + t * H, (size_t)H * sizeof(float)) != 0) {
            print_error("pk_moe_experts: token %lld alone differs from the batch\n",
                        (long long)t);
            fail();
        }
    }
}

static void test_moe_bad_expert_id_is_reported(void **state)
{
    (void)state;
    force_path(GEMV_PATH);
    const int64_t E = 12, H = 40, F = 24;
    pio_error err;
    pair gate_up = random_pair(PIO_DTYPE_F32, E * 2 * F, H, 0);
    pair down = random_pair(PIO_DTYPE_F32, E * H, F, 0);
    pair x = random_pair(PIO_DTYPE_F32, 2, H, 0);
    int32_t id_values[4] = {3, 5, 11, 12};
    pair ids = int_pair(id_values, 4);
    pk_tensor ids2 = pk_tensor_reshape(&ids.d, 2, 2);
    pair weights = random_pair(PIO_DTYPE_F32, 2, 2, 0);
    pair out = make_pair(PIO_DTYPE_F32, 2, H, 0, FILL_ZERO, 0.0f, 0.0f);
    expect_ok(pk_moe_experts(gpu_ctx, &out.d, &x.d, &gate_up.d, &down.d, &ids2, &weights.d, E,
                             &err), &err, "experts");
    assert_int_equal(pk_synchronize(gpu_ctx, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "pk_moe_experts"));
    assert_non_null(strstr(err.message, "ids[1, 1] is 12, outside [0, 12)"));
    sync_gpu("after the reported error"); /* reported once; the context still works */
}


/* ------------------------------------------------------------------------------------------ */
/* The grouped GEMM path (prefill and batches)                                                */
/* ------------------------------------------------------------------------------------------ */

/* One pk_moe_experts case: weights [E·2F, H + pad_h] and [E·H, F + pad_f] of type wdt, x with
 * rows padded like gate_up's, random ids (k distinct experts a token) and weights in [0, 1],
 * out random (accumulated into) with gaps between rows. */
typedef struct moe_world {
    int64_t T, E, k, H, F;
    pair gate_up, down, x, ids, weights, out;
} moe_world;

/* T tokens of fresh inputs, ids, routing weights and out over the given experts' weights. */
static moe_world world_on(pair gate_up, pair down, int64_t T, int64_t E, int64_t k, int64_t H,
                          int64_t F, int64_t pad_h)
{
    moe_world w;
    w.T = T;
    w.E = E;
    w.k = k;
    w.H = H;
    w.F = F;
    w.gate_up = gate_up;
    w.down = down;
    w.x = random_pair(PIO_DTYPE_F32, T, H, pad_h);
    w.ids = moe_random_ids(T, k, E);
    w.weights = make_pair(PIO_DTYPE_F32, T, k, 1, FILL_UNIFORM, 0.0f, 1.0f);
    w.out = make_pair(PIO_DTYPE_F32, T, H, 3, FILL_UNIFORM, -1.0f, 1.0f);
    return w;
}

static moe_world make_world(int64_t T, int64_t E, int64_t k, int64_t H, int64_t F, int64_t pad_h,
                            int64_t pad_f, pio_dtype wdt)
{
    pair gate_up = random_pair(wdt, E * 2 * F, H, pad_h);
    pair down = random_pair(wdt, E * H, F, pad_f);
    return world_on(gate_up, down, T, E, k, H, F, pad_h);
}

/* Runs the op on both backends (ids and weights as they are on each side) and compares out. */
static void check_world(moe_world *w, const char *what, double tol)
{
    pio_error err;
    void *before = snapshot(&w->out);
    expect_ok(pk_moe_experts(gpu_ctx, &w->out.d, &w->x.d, &w->gate_up.d, &w->down.d, &w->ids.d,
                             &w->weights.d, w->E, &err), &err, what);
    expect_ok(pk_moe_experts(cpu_ctx, &w->out.h, &w->x.h, &w->gate_up.h, &w->down.h, &w->ids.h,
                             &w->weights.h, w->E, &err), &err, what);
    check_pair(what, &w->out, NULL, tol, before);
}

/* check_world, named by the path and the world's shape and weight type. */
static void check_world_shape(moe_world *w, const char *path, double tol)
{
    char what[112];
    snprintf(what, sizeof what, "%s T=%lld H=%lld F=%lld E=%lld k=%lld %s", path,
             (long long)w->T, (long long)w->H, (long long)w->F, (long long)w->E,
             (long long)w->k, pio_dtype_name(w->gate_up.h.dtype));
    check_world(w, what, tol);
}

static int32_t *ids_at(moe_world *w, int64_t t, int64_t j)
{
    return (int32_t *)w->ids.h.data + t * w->ids.h.stride + j;
}

static float *weight_at(moe_world *w, int64_t t, int64_t j)
{
    return (float *)w->weights.h.data + t * w->weights.h.stride + j;
}

/* The GEMM path against the CPU at T = 17 .. 2048, E = 8 and 128, k = 2 and 8, over widths
 * that leave partial tiles everywhere: H 72 and F 40 (partial output and K tiles), H 1030 and
 * F 300 with rows padded to 16 bytes (a K tail of 6 elements read with a partial copy, F not a
 * multiple of the 64 outputs of a gate_up tile), and Qwen3-Coder-30B-A3B's 2048 and 768. */
static void test_moe_gemm_against_cpu(void **state)
{
    (void)state;
    static const struct { int64_t h, f, pad_h, pad_f, max_t, max_e; } shapes[] = {
        {72, 40, 0, 0, 2048, 128}, {1030, 300, 2, 4, 300, 128}, {2048, 768, 0, 0, 300, 16},
    };
    static const int64_t tokens[] = {17, 64, 300, 2048};
    static const int64_t experts[] = {8, 16, 128};
    static const int64_t top_k[] = {2, 8};
    force_path(GEMM_PATH);
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
        for (size_t ei = 0; ei < sizeof experts / sizeof *experts; ei++) {
            int64_t h = shapes[si].h, f = shapes[si].f, e = experts[ei];
            if (e > shapes[si].max_e || (e == 16) != (si == 2) || (sanitizer && si == 2))
                continue; /* 8 and 128 experts at the small widths, 16 at the real ones */
            pair gate_up = random_pair(PIO_DTYPE_BF16, e * 2 * f, h, shapes[si].pad_h);
            pair down = random_pair(PIO_DTYPE_BF16, e * h, f, shapes[si].pad_f);
            for (size_t ti = 0; ti < sizeof tokens / sizeof *tokens; ti++)
                for (size_t ki = 0; ki < sizeof top_k / sizeof *top_k; ki++) {
                    int64_t t = tokens[ti], k = top_k[ki];
                    if (t > shapes[si].max_t || (sanitizer && t > 64))
                        continue;
                    moe_world w = world_on(gate_up, down, t, e, k, h, f, shapes[si].pad_h);
                    check_world_shape(&w, "gemm", TOL_BF16_X);
                }
            release_all(NULL);
        }
}

/* Weights the tensor-core path cannot read (F32, or BF16 rows not 16-byte aligned) run the GEMV
 * kernels at any T: within TOL_F32 of the CPU, which the GEMM's bf16 rounding of x (about 1e-3)
 * would miss. */
static void test_moe_gemm_falls_back(void **state)
{
    (void)state;
    force_path(GEMM_PATH);
    moe_world w = make_world(64, 8, 2, 72, 40, 0, 0, PIO_DTYPE_F32);
    check_world(&w, "f32 weights (gemv fallback)", TOL_F32);
    w = make_world(64, 8, 2, 1030, 300, 0, 0, PIO_DTYPE_BF16); /* 2060- and 600-byte rows */
    check_world(&w, "unaligned bf16 rows (gemv fallback)", TOL_F32);
    w = make_world(64, 8, 2, 72, 40, 0, 1, PIO_DTYPE_BF16); /* only down's rows unaligned */
    check_world(&w, "unaligned down rows (gemv fallback)", TOL_F32);
}

/* Routing extremes on the GEMM path: one expert in every token (300 pairs: 5 tiles, the last
 * partial), experts no token chose, weights exactly 0; then every token choosing the same 8
 * experts of 128. */
static void test_moe_gemm_routing_extremes(void **state)
{
    (void)state;
    force_path(GEMM_PATH);
    moe_world w = make_world(300, 16, 4, 72, 40, 0, 0, PIO_DTYPE_BF16);
    for (int64_t t = 0; t < w.T; t++) {
        int32_t others[7] = {0, 1, 2, 3, 4, 6, 7}; /* experts 8 .. 15: nobody's */
        *ids_at(&w, t, 0) = 5;
        for (int64_t j = 1; j < w.k; j++) {
            int64_t s = random_int(j - 1, 6);
            int32_t tmp = others[j - 1];
            others[j - 1] = others[s];
            others[s] = tmp;
            *ids_at(&w, t, j) = others[j - 1];
        }
        for (int64_t j = 0; j < w.k; j++)
            if ((t + j) % 3 == 0)
                *weight_at(&w, t, j) = 0.0f;
    }
    upload(&w.ids);
    upload(&w.weights);
    check_world(&w, "gemm: expert 5 everywhere, 8-15 never, zero weights", TOL_BF16_X);

    w = make_world(200, 128, 8, 72, 40, 0, 0, PIO_DTYPE_BF16);
    for (int64_t t = 0; t < w.T; t++)
        for (int64_t j = 0; j < w.k; j++)
            *ids_at(&w, t, j) = (int32_t)(120 - 7 * j);
    upload(&w.ids);
    check_world(&w, "gemm: the same 8 experts for every token", TOL_BF16_X);
}

/* pk_moe_experts_slice on the GEMM path: slices of 16 experts (whole, middle, end, one expert),
 * accumulating or overwriting (rows with no expert in the slice become 0). */
static void test_moe_gemm_slice(void **state)
{
    (void)state;
    static const struct { int64_t first, n; int accumulate; } slices[] = {
        {0, 16, 1}, {4, 8, 0}, {12, 4, 1}, {3, 1, 0},
    };
    pio_error err;
    force_path(GEMM_PATH);
    moe_world w = make_world(300, 16, 4, 72, 40, 0, 0, PIO_DTYPE_BF16);
    for (size_t i = 0; i < sizeof slices / sizeof *slices; i++) {
        int64_t first = slices[i].first, n = slices[i].n, F = w.F, H = w.H;
        pk_tensor gu_d = pk_tensor_rows(&w.gate_up.d, first * 2 * F, n * 2 * F);
        pk_tensor gu_h = pk_tensor_rows(&w.gate_up.h, first * 2 * F, n * 2 * F);
        pk_tensor dn_d = pk_tensor_rows(&w.down.d, first * H, n * H);
        pk_tensor dn_h = pk_tensor_rows(&w.down.h, first * H, n * H);
        pair out = make_pair(PIO_DTYPE_F32, w.T, H, 3, FILL_UNIFORM, -1.0f, 1.0f);
        void *before = snapshot(&out);
        expect_ok(pk_moe_experts_slice(gpu_ctx, &out.d, &w.x.d, &gu_d, &dn_d, &w.ids.d,
                                       &w.weights.d, w.E, first, n, slices[i].accumulate, &err),
                  &err, "moe_experts_slice");
        expect_ok(pk_moe_experts_slice(cpu_ctx, &out.h, &w.x.h, &gu_h, &dn_h, &w.ids.h,
                                       &w.weights.h, w.E, first, n, slices[i].accumulate, &err),
                  &err, "moe_experts_slice");
        char what[96];
        snprintf(what, sizeof what, "gemm slice first=%lld n=%lld accumulate=%d",
                 (long long)first, (long long)n, slices[i].accumulate);
        check_pair(what, &out, NULL, TOL_BF16_X, before);
    }
}

/* out = the experts' sum over a zeroed out (downloaded into a host copy). */
static float *gpu_experts_rows(moe_world *w, int64_t first, int64_t count)
{
    pio_error err;
    pair out = make_pair(PIO_DTYPE_F32, count, w->H, 0, FILL_ZERO, 0.0f, 0.0f);
    pk_tensor x = pk_tensor_rows(&w->x.d, first, count);
    pk_tensor ids = pk_tensor_rows(&w->ids.d, first, count);
    pk_tensor weights = pk_tensor_rows(&w->weights.d, first, count);
    expect_ok(pk_moe_experts(gpu_ctx, &out.d, &x, &w->gate_up.d, &w->down.d, &ids, &weights,
                             w->E, &err), &err, "moe_experts rows");
    download(&out);
    return (float *)out.got;
}

/* GEMM path: bit for bit the same result on a second run, and for a token whatever batch it is
 * in (tiles hold other tokens, the expert's pairs fall into other tiles). */
static void test_moe_gemm_deterministic_and_batch_independent(void **state)
{
    (void)state;
    force_path(GEMM_PATH);
    moe_world w = make_world(300, 128, 8, 96, 48, 0, 0, PIO_DTYPE_BF16);
    size_t row_bytes = (size_t)w.H * sizeof(float);
    const float *batch = gpu_experts_rows(&w, 0, w.T);
    const float *again = gpu_experts_rows(&w, 0, w.T);
    assert_memory_equal(batch, again, (size_t)w.T * row_bytes);
    static const struct { int64_t first, count; } parts[] = {{40, 64}, {299, 1}, {0, 17}};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        const float *part = gpu_experts_rows(&w, parts[i].first, parts[i].count);
        if (memcmp(part, batch + parts[i].first * w.H, (size_t)parts[i].count * row_bytes) != 0) {
            print_error("gemm: tokens %lld .. +%lld alone differ from the batch\n",
                        (long long)parts[i].first, (long long)parts[i].count);
            fail();
        }
    }
}

/* Routing and the experts on `path` recorded as a graph replay what running them directly gives,
 * bit for bit, with whatever logits and x hold at replay (the routing changes every time). */
/* Routing then experts on the GPU: the two ops, or pk_moe_topk_experts (fused). */
static void gpu_route_and_experts(int fused, const pair *out, const pair *x, const pair *logits,
                                  const pair *gate_up, const pair *down, const pair *ids,
                                  const pair *weights, const char *what)
{
    pio_error err;
    if (fused) {
        expect_ok(pk_moe_topk_experts(gpu_ctx, &out->d, &x->d, &logits->d, &gate_up->d, &down->d,
                                      &ids->d, &weights->d, 1, &err), &err, what);
        return;
    }
    expect_ok(pk_moe_topk_softmax(gpu_ctx, &ids->d, &weights->d, &logits->d, 1, &err), &err,
              what);
    expect_ok(pk_moe_experts(gpu_ctx, &out->d, &x->d, &gate_up->d, &down->d, &ids->d,
                             &weights->d, logits->h.cols, &err), &err, what);
}

static void check_graph_replay(moe_path path, int64_t T, int fused)
{
    const int64_t E = 128, K = 8, H = 256, F = 128;
    pio_error err;
    force_path(path);
    pair gate_up = random_pair(PIO_DTYPE_BF16, E * 2 * F, H, 0);
    pair down = random_pair(PIO_DTYPE_BF16, E * H, F, 0);
    pair x = random_pair(PIO_DTYPE_F32, T, H, 0);
    pair logits = random_pair(PIO_DTYPE_F32, T, E, 0);
    pair ids = make_pair(PIO_DTYPE_I32, T, K, 0, FILL_ZERO, 0, 0);
    pair weights = nan_pair(PIO_DTYPE_F32, T, K, 0);
    pair out = make_pair(PIO_DTYPE_F32, T, H, 0, FILL_ZERO, 0.0f, 0.0f);
    pair direct = make_pair(PIO_DTYPE_F32, T, H, 0, FILL_ZERO, 0.0f, 0.0f);
    /* Warm-up of the shape: the workspace grows before the recording, not during it. */
    gpu_route_and_experts(fused, &out, &x, &logits, &gate_up, &down, &ids, &weights, "warm-up");
    sync_gpu("warm-up");
    pk_graph *graph = NULL;
    expect_ok(pk_graph_begin(gpu_ctx, &err), &err, "pk_graph_begin");
    gpu_route_and_experts(fused, &out, &x, &logits, &gate_up, &down, &ids, &weights, "recorded");
    expect_ok(pk_graph_end(gpu_ctx, &graph, &err), &err, "pk_graph_end");
    assert_non_null(graph);
    for (int rep = 0; rep < 3; rep++) {
        for (int64_t i = 0; i < T * E; i++)
            ((float *)logits.h.data)[i] = uniform(-4.0f, 4.0f);
        for (int64_t i = 0; i < T * H; i++)
            ((float *)x.h.data)[i] = uniform(-1.0f, 1.0f);
        upload(&logits);
        upload(&x);
        upload(&out); /* zeros (out.h is never written) */
        expect_ok(pk_graph_launch(gpu_ctx, graph, &err), &err, "pk_graph_launch");
        download(&out);
        upload(&direct);
        gpu_route_and_experts(fused, &direct, &x, &logits, &gate_up, &down, &ids, &weights,
                              "direct");
        download(&direct);
        assert_memory_equal(out.got, direct.got, out.span_bytes);
    }
    pk_graph_destroy(gpu_ctx, graph);
}

static void test_moe_gemm_graph_replay(void **state)
{
    (void)state;
    check_graph_replay(GEMM_PATH, 256, 0);
}

/* Bad ids on `path` (T tokens, E = 12, k = 2) are reported, their pairs dropped, and every other
 * pair still counts: the CPU reference gives the bad pairs weight 0 (and a valid id). Tokens 3
 * (slot 1: id 12) and `second` (slot 0: id -1) are the bad ones. */
static void check_bad_expert_ids(int path, int64_t T, int64_t second, double tol, const char *what)
{
    pio_error err;
    force_path(path);
    moe_world w = make_world(T, 12, 2, 40, 24, 0, 0, PIO_DTYPE_BF16);
    *ids_at(&w, 3, 1) = 12;
    *ids_at(&w, second, 0) = -1;
    upload(&w.ids);
    void *before = snapshot(&w.out);
    expect_ok(pk_moe_experts(gpu_ctx, &w.out.d, &w.x.d, &w.gate_up.d, &w.down.d, &w.ids.d,
                             &w.weights.d, w.E, &err), &err, "experts");
    assert_int_equal(pk_synchronize(gpu_ctx, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "pk_moe_experts"));
    assert_non_null(strstr(err.message, "outside [0, 12)"));
    sync_gpu("after the reported error"); /* reported once; the context still works */
    *ids_at(&w, 3, 1) = *ids_at(&w, second, 0) = 0;
    *weight_at(&w, 3, 1) = *weight_at(&w, second, 0) = 0.0f;
    expect_ok(pk_moe_experts(cpu_ctx, &w.out.h, &w.x.h, &w.gate_up.h, &w.down.h, &w.ids.h,
                             &w.weights.h, w.E, &err), &err, "experts (cpu)");
    check_pair(what, &w.out, NULL, tol, before);
}

static void test_moe_gemm_bad_expert_id_is_reported(void **state)
{
    (void)state;
    check_bad_expert_ids(GEMM_PATH, 64, 10, TOL_BF16_X, "gemm with bad ids");
}

/* ------------------------------------------------------------------------------------------ */
/* The decode path (T·k <= 256: two launches, the routing read on the device)                 */
/* ------------------------------------------------------------------------------------------ */

/* The decode path against the CPU at T = 1, 2, 5, 16, E = 8 and 128, k = 2 and 8, within
 * TOL_F32: odd widths (H 75, F 37: rows not 16-byte aligned, scalar loads) in BF16 and F32,
 * rows padded to 16 bytes with K % 8 tails (H 1030, F 300), and Qwen3-Coder-30B-A3B's 2048 and
 * 768 (8 experts). T·k <= E takes the one-pair variant, larger T·k the grouped one. */
static void test_moe_decode_against_cpu(void **state)
{
    (void)state;
    static const struct { int64_t h, f, pad_h, pad_f, max_e; pio_dtype wdt; } shapes[] = {
        {75, 37, 0, 0, 128, PIO_DTYPE_BF16}, {75, 37, 0, 0, 128, PIO_DTYPE_F32},
        {1030, 300, 2, 4, 128, PIO_DTYPE_BF16}, {2048, 768, 0, 0, 8, PIO_DTYPE_BF16},
    };
    static const int64_t tokens[] = {1, 2, 5, 16};
    static const int64_t experts[] = {8, 128};
    static const int64_t top_k[] = {2, 8};
    force_path(DECODE_PATH);
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
        for (size_t ei = 0; ei < sizeof experts / sizeof *experts; ei++) {
            int64_t h = shapes[si].h, f = shapes[si].f, e = experts[ei];
            if (e > shapes[si].max_e || (sanitizer && si >= 2 && e > 8))
                continue;
            pio_dtype wdt = shapes[si].wdt;
            pair gate_up = random_pair(wdt, e * 2 * f, h, shapes[si].pad_h);
            pair down = random_pair(wdt, e * h, f, shapes[si].pad_f);
            for (size_t ti = 0; ti < sizeof tokens / sizeof *tokens; ti++)
                for (size_t ki = 0; ki < sizeof top_k / sizeof *top_k; ki++) {
                    moe_world w = world_on(gate_up, down, tokens[ti], e, top_k[ki], h, f,
                                           shapes[si].pad_h);
                    check_world_shape(&w, "decode", TOL_F32);
                }
            release_all(NULL);
        }
}

/* Routing extremes on the decode path: one expert in every token with experts no token chose
 * and zero weights; all 16 tokens choosing the same 8 experts of 128 (16 pairs an expert); the
 * most pairs the path takes (T = 32, k = 8: 256 pairs, two an expert on average). */
static void test_moe_decode_routing_extremes(void **state)
{
    (void)state;
    force_path(DECODE_PATH);
    moe_world w = make_world(16, 16, 4, 72, 40, 0, 0, PIO_DTYPE_BF16);
    for (int64_t t = 0; t < w.T; t++) {
        *ids_at(&w, t, 0) = 5;
        for (int64_t j = 1; j < w.k; j++)
            *ids_at(&w, t, j) = (int32_t)((t + j) % 5); /* experts 6 .. 15: nobody's */
        for (int64_t j = 0; j < w.k; j++)
            if ((t + j) % 3 == 0)
                *weight_at(&w, t, j) = 0.0f;
    }
    upload(&w.ids);
    upload(&w.weights);
    check_world(&w, "decode: expert 5 everywhere, 6-15 never, zero weights", TOL_F32);

    w = make_world(16, 128, 8, 72, 40, 0, 0, PIO_DTYPE_BF16);
    for (int64_t t = 0; t < w.T; t++)
        for (int64_t j = 0; j < w.k; j++)
            *ids_at(&w, t, j) = (int32_t)(120 - 7 * j);
    upload(&w.ids);
    check_world(&w, "decode: the same 8 experts for every token", TOL_F32);

    w = make_world(32, 128, 8, 1030, 300, 2, 4, PIO_DTYPE_BF16);
    check_world(&w, "decode: 256 pairs", TOL_F32);
}

/* pk_moe_experts_slice on the decode path: slices of 16 experts (whole, middle, end, one
 * expert), accumulating or overwriting (rows with no expert in the slice become 0), with one
 * pair an expert or fewer (T = 2) and more (T = 16). */
static void test_moe_decode_slice(void **state)
{
    (void)state;
    static const struct { int64_t first, n; int accumulate; } slices[] = {
        {0, 16, 1}, {4, 8, 0}, {12, 4, 1}, {3, 1, 0},
    };
    static const int64_t tokens[] = {2, 16};
    pio_error err;
    force_path(DECODE_PATH);
    for (size_t ti = 0; ti < sizeof tokens / sizeof *tokens; ti++) {
        moe_world w = make_world(tokens[ti], 16, 4, 72, 40, 0, 0, PIO_DTYPE_BF16);
        for (size_t i = 0; i < sizeof slices / sizeof *slices; i++) {
            int64_t first = slices[i].first, n = slices[i].n, F = w.F, H = w.H;
            pk_tensor gu_d = pk_tensor_rows(&w.gate_up.d, first * 2 * F, n * 2 * F);
            pk_tensor gu_h = pk_tensor_rows(&w.gate_up.h, first * 2 * F, n * 2 * F);
            pk_tensor dn_d = pk_tensor_rows(&w.down.d, first * H, n * H);
            pk_tensor dn_h = pk_tensor_rows(&w.down.h, first * H, n * H);
            pair out = make_pair(PIO_DTYPE_F32, w.T, H, 3, FILL_UNIFORM, -1.0f, 1.0f);
            void *before = snapshot(&out);
            expect_ok(pk_moe_experts_slice(gpu_ctx, &out.d, &w.x.d, &gu_d, &dn_d, &w.ids.d,
                                           &w.weights.d, w.E, first, n, slices[i].accumulate,
                                           &err), &err, "moe_experts_slice");
            expect_ok(pk_moe_experts_slice(cpu_ctx, &out.h, &w.x.h, &gu_h, &dn_h, &w.ids.h,
                                           &w.weights.h, w.E, first, n, slices[i].accumulate,
                                           &err), &err, "moe_experts_slice");
            char what[112];
            snprintf(what, sizeof what, "decode slice T=%lld first=%lld n=%lld accumulate=%d",
                     (long long)w.T, (long long)first, (long long)n, slices[i].accumulate);
            check_pair(what, &out, NULL, TOL_F32, before);
        }
    }
}

/* Decode path: bit for bit the same result on a second run, with either variant (one pair or
 * groups of pairs a pass) and for a token alone as in a batch of 16 (its expert's other pairs,
 * the number of experts and of blocks differ). */
static void test_moe_decode_deterministic_and_batch_independent(void **state)
{
    (void)state;
    force_path(DECODE_PATH);
    moe_world w = make_world(16, 128, 8, 1030, 300, 2, 4, PIO_DTYPE_BF16);
    size_t row_bytes = (size_t)w.H * sizeof(float);
    const float *batch = gpu_experts_rows(&w, 0, w.T);
    const float *again = gpu_experts_rows(&w, 0, w.T);
    assert_memory_equal(batch, again, (size_t)w.T * row_bytes);
    static const char *const variants[] = {"one", "grouped"};
    for (int v = 0; v < 2; v++) {
        setenv("PIO_CUDA_MOE_DECODE", variants[v], 1);
        const float *forced = gpu_experts_rows(&w, 0, w.T);
        if (memcmp(forced, batch, (size_t)w.T * row_bytes) != 0) {
            print_error("decode: the %s variant differs from the default\n", variants[v]);
            fail();
        }
    }
    force_path(DECODE_PATH);
    static const struct { int64_t first, count; } parts[] = {{0, 1}, {7, 1}, {15, 1}, {3, 5}};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        const float *part = gpu_experts_rows(&w, parts[i].first, parts[i].count);
        if (memcmp(part, batch + parts[i].first * w.H, (size_t)parts[i].count * row_bytes) != 0) {
            print_error("decode: tokens %lld .. +%lld alone differ from the batch\n",
                        (long long)parts[i].first, (long long)parts[i].count);
            fail();
        }
    }
}

/* Decode path, recorded with the routing (programmatic launches inside the graph), T = 1 and
 * 16: replay equals direct runs bit for bit. */
static void test_moe_decode_graph_replay(void **state)
{
    (void)state;
    check_graph_replay(DECODE_PATH, 1, 0);
    check_graph_replay(DECODE_PATH, 16, 0);
    check_graph_replay(DECODE_PATH, 1, 1); /* routed inside the decode kernels */
    check_graph_replay(DECODE_PATH, 8, 1);
}

/* The same on the decode path (5 tokens). */
static void test_moe_decode_bad_expert_id_is_reported(void **state)
{
    (void)state;
    check_bad_expert_ids(DECODE_PATH, 5, 1, TOL_F32, "decode with bad ids");
}

/* ------------------------------------------------------------------------------------------ */
/* Routing and experts in one call (pk_moe_topk_experts)                                      */
/* ------------------------------------------------------------------------------------------ */

/*
 * pk_moe_topk_experts against the CPU's (its two ops): ids exactly, routing weights and out
 * within TOL_F32, on router logits with exact ties (the routing test's grids). Up to 8 tokens on
 * the decode path the CUDA backend routes inside the experts kernels (E 128: four logits a
 * lane, E 200: eight); 9 and 16 tokens, and E 300, run the routing kernel first. Qwen3-Coder's
 * widths (H 2048, F 768) and unaligned ones (H 75, F 37). One token (its own plan, see
 * moe_decode_plan_distinct) with E 128 and 200, and with every expert chosen (k = E = 12).
 */
static void test_moe_topk_experts(void **state)
{
    (void)state;
    static const struct { int64_t t, e, k, h, f; } cases[] = {
        {1, 128, 8, 2048, 768}, {2, 128, 8, 2048, 768}, {8, 128, 8, 2048, 768},
        {3, 200, 6, 75, 37},    {8, 12, 2, 75, 37},     {9, 128, 8, 256, 128},
        {16, 128, 8, 256, 128}, {2, 300, 4, 75, 37},    {1, 200, 6, 75, 37},
        {1, 12, 12, 75, 37},
    };
    pio_error err;
    force_path(DEFAULT_PATH);
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int64_t t = cases[c].t, e = cases[c].e, k = cases[c].k, h = cases[c].h, f = cases[c].f;
        if (sanitizer && h > 256)
            continue;
        moe_world w = make_world(t, e, k, h, f, 0, 0, PIO_DTYPE_BF16);
        pair logits = grid_logits(t, e);
        for (int normalize = 0; normalize < 2; normalize++) {
            pair ids = make_pair(PIO_DTYPE_I32, t, k, 1, FILL_ZERO, -999, -999);
            pair weights = nan_pair(PIO_DTYPE_F32, t, k, 2);
            void *ids_before = snapshot(&ids), *w_before = snapshot(&weights);
            void *out_before = snapshot(&w.out);
            expect_ok(pk_moe_topk_experts(gpu_ctx, &w.out.d, &w.x.d, &logits.d, &w.gate_up.d,
                                          &w.down.d, &ids.d, &weights.d, normalize, &err),
                      &err, "pk_moe_topk_experts (gpu)");
            expect_ok(pk_moe_topk_experts(cpu_ctx, &w.out.h, &w.x.h, &logits.h, &w.gate_up.h,
                                          &w.down.h, &ids.h, &weights.h, normalize, &err),
                      &err, "pk_moe_topk_experts (cpu)");
            char what[112];
            snprintf(what, sizeof what, "pk_moe_topk_experts T=%lld E=%lld k=%lld H=%lld n=%d",
                     (long long)t, (long long)e, (long long)k, (long long)h, normalize);
            check_pair(what, &ids, NULL, 0.0, ids_before);
            check_pair(what, &weights, NULL, TOL_F32, w_before);
            check_pair_rows(what, &w.out, NULL, TOL_F32, out_before, NULL, 1);
        }
        release_all(NULL);
    }
}

/* One GPU run of pk_moe_topk_experts for w's token: out, ids and weights downloaded into their
 * got buffers, out uploaded first (the op accumulates into it). */
static void run_routed_token(moe_world *w, pair *logits, pair *ids, pair *weights,
                             const char *what)
{
    pio_error err;
    upload(&w->out);
    expect_ok(pk_moe_topk_experts(gpu_ctx, &w->out.d, &w->x.d, &logits->d, &w->gate_up.d,
                                  &w->down.d, &ids->d, &weights->d, 1, &err),
              &err, what);
    download(&w->out);
    download(ids);
    download(weights);
}

/*
 * One routed token where the down kernel loads its weights before its wait
 * (moe_decode_down_preload_kernel: BF16 rows 16-byte aligned, F a multiple of 8 up to 768, k up
 * to 8) against the one-pair variant that loads them after it (PIO_CUDA_MOE_DECODE=one): out,
 * ids and weights bit for bit, then out against the CPU within TOL_F32. Qwen3-Coder's widths;
 * padded rows of either matrix; F below one 16-byte step a lane (40) and between steps (136);
 * H not a multiple of the block's 8 outputs (75: a partial last block); fewer routes than a
 * block has warps (k 2, 4).
 */
static void test_moe_decode_down_preload(void **state)
{
    (void)state;
    static const struct { int64_t e, k, h, f, pad_h, pad_f; } cases[] = {
        {128, 8, 2048, 768, 0, 0}, {128, 8, 256, 136, 8, 16}, {12, 8, 64, 40, 0, 8},
        {16, 4, 75, 64, 0, 0},     {16, 2, 1024, 256, 16, 0},
    };
    pio_error err;
    force_path(DEFAULT_PATH);
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        if (sanitizer && cases[c].h > 256)
            continue;
        moe_world w = make_world(1, cases[c].e, cases[c].k, cases[c].h, cases[c].f,
                                 cases[c].pad_h, cases[c].pad_f, PIO_DTYPE_BF16);
        pair logits = grid_logits(1, cases[c].e);
        pair ids = make_pair(PIO_DTYPE_I32, 1, cases[c].k, 0, FILL_ZERO, -999, -999);
        pair weights = nan_pair(PIO_DTYPE_F32, 1, cases[c].k, 0);
        char what[112];
        snprintf(what, sizeof what, "down preload E=%lld k=%lld H=%lld F=%lld pads %lld/%lld",
                 (long long)cases[c].e, (long long)cases[c].k, (long long)cases[c].h,
                 (long long)cases[c].f, (long long)cases[c].pad_h, (long long)cases[c].pad_f);
        void *out_before = snapshot(&w.out);
        run_routed_token(&w, &logits, &ids, &weights, what);
        void *pre_out = snapshot(&w.out), *pre_ids = snapshot(&ids);
        void *pre_weights = snapshot(&weights);
        memcpy(pre_out, w.out.got, w.out.span_bytes);
        memcpy(pre_ids, ids.got, ids.span_bytes);
        memcpy(pre_weights, weights.got, weights.span_bytes);
        setenv("PIO_CUDA_MOE_DECODE", "one", 1);
        run_routed_token(&w, &logits, &ids, &weights, what);
        unsetenv("PIO_CUDA_MOE_DECODE");
        assert_memory_equal(pre_out, w.out.got, w.out.span_bytes);
        assert_memory_equal(pre_ids, ids.got, ids.span_bytes);
        assert_memory_equal(pre_weights, weights.got, weights.span_bytes);
        expect_ok(pk_moe_topk_experts(cpu_ctx, &w.out.h, &w.x.h, &logits.h, &w.gate_up.h,
                                      &w.down.h, &ids.h, &weights.h, 1, &err),
                  &err, "pk_moe_topk_experts (cpu)");
        check_pair(what, &ids, NULL, 0.0, NULL);
        check_pair(what, &weights, NULL, TOL_F32, NULL);
        check_pair_rows(what, &w.out, NULL, TOL_F32, out_before, NULL, 1);
        release_all(NULL);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Benchmark                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* Distinct experts among ids rows [first, first + count) (host side). */
static int moe_distinct_experts(const pair *ids, int64_t first, int64_t count)
{
    char used[4096] = {0}; /* ids below 4096 */
    int n = 0;
    for (int64_t i = first; i < first + count; i++)
        for (int64_t j = 0; j < ids->h.cols; j++) {
            int32_t e = ((const int32_t *)ids->h.data)[i * ids->h.stride + j];
            n += !used[e];
            used[e] = 1;
        }
    return n;
}

/* Times pk_moe_experts at Qwen3-Coder-30B-A3B's shape (H 2048, F 768, 128 BF16 experts, top-8)
 * (PIO_KERNELS_BENCH=1) for T tokens on every path (the decode path up to T·k = 256):
 * TFLOP/s of the experts' products (6·T·k·H·F) and GB/s of the selected experts' weights (the
 * distinct experts of a call × their gate_up and down bytes). Every call has its own random
 * ids, so the weights come from HBM (1.2 GB of experts against a 50 MB L2). */
static void test_moe_benchmark(void **state)
{
    (void)state;
    if (!gpu_bench_enabled())
        return;
    enum { H = 2048, F = 768, E = 128, K = 8 };
    static const int64_t tokens[] = {1, 2, 4, 8, 16, 24, 32, 64, 512, 1024, 2048};
    pio_error err;
    pair gate_up1 = random_pair(PIO_DTYPE_BF16, 2 * F, H, 0); /* one expert, copied E times */
    pair down1 = random_pair(PIO_DTYPE_BF16, H, F, 0);
    pk_tensor gate_up = pk_tensor_make(dev_alloc((size_t)E * 2 * F * H * 2), PIO_DTYPE_BF16,
                                       PK_DEVICE_CUDA, E * 2 * F, H);
    pk_tensor down = pk_tensor_make(dev_alloc((size_t)E * H * F * 2), PIO_DTYPE_BF16,
                                    PK_DEVICE_CUDA, E * H, F);
    for (int64_t e = 0; e < E; e++) {
        pk_tensor g = pk_tensor_rows(&gate_up, e * 2 * F, 2 * F);
        pk_tensor d = pk_tensor_rows(&down, e * H, H);
        expect_ok(pk_copy(gpu_ctx, &g, &gate_up1.d, &err), &err, "bench copy");
        expect_ok(pk_copy(gpu_ctx, &d, &down1.d, &err), &err, "bench copy");
    }
    for (size_t ti = 0; ti < sizeof tokens / sizeof *tokens; ti++) {
        int64_t t = tokens[ti];
        int reps = t >= 512 ? 10 : 50;
        pair ids = moe_random_ids(reps * t, K, E);
        pair weights = make_pair(PIO_DTYPE_F32, reps * t, K, 0, FILL_UNIFORM, 0.0f, 1.0f);
        pair x = random_pair(PIO_DTYPE_F32, t, H, 0);
        pair out = make_pair(PIO_DTYPE_F32, t, H, 0, FILL_ZERO, 0.0f, 0.0f);
        double experts = 0.0; /* distinct experts per call, on average */
        for (int r = 0; r < reps; r++)
            experts += moe_distinct_experts(&ids, r * t, t) / (double)reps;
        /* gemv, gemm, decode (its own variant choice), then decode's two variants forced */
        static const char *const names[] = {"gemv", "gemm", "decode", "dec-1", "dec-4"};
        for (int run = 0; run < 5; run++) {
            if ((run >= 2 && t * K > 256) || (run >= 3 && t > 16))
                continue;
            force_path(run == 0 ? GEMV_PATH : run == 1 ? GEMM_PATH : DECODE_PATH);
            if (run >= 3)
                setenv("PIO_CUDA_MOE_DECODE", run == 3 ? "one" : "grouped", 1);
            pk_tensor ir = pk_tensor_rows(&ids.d, (reps - 1) * t, t);
            pk_tensor wr = pk_tensor_rows(&weights.d, (reps - 1) * t, t);
            expect_ok(pk_moe_experts(gpu_ctx, &out.d, &x.d, &gate_up, &down, &ir, &wr, E, &err),
                      &err, "bench moe_experts"); /* warm-up: the workspace */
            sync_gpu("bench moe warm-up");
            double t0 = seconds_now();
            for (int r = 0; r < reps; r++) {
                ir = pk_tensor_rows(&ids.d, r * t, t);
                wr = pk_tensor_rows(&weights.d, r * t, t);
                expect_ok(pk_moe_experts(gpu_ctx, &out.d, &x.d, &gate_up, &down, &ir, &wr, E,
                                         &err), &err, "bench moe_experts");
            }
            sync_gpu("bench moe");
            double per = (seconds_now() - t0) / reps, bytes = experts * (3.0 * F * H) * 2;
            double flops = 6.0 * (double)t * K * H * F;
            print_message("moe_experts %-6s T=%-4lld H=%d F=%d E=%d k=%d: %8.1f us  %6.1f TFLOP/s"
                          "  %7.1f GB/s of the selected experts' weights (%.1f experts a "
                          "call)\n", names[run], (long long)t, H, F, E,
                          K, per * 1e6, flops / per * 1e-12, bytes / per * 1e-9, experts);
        }
    }
    force_path(DEFAULT_PATH);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_moe_topk_softmax, release_all),
        cmocka_unit_test_teardown(test_moe_experts, release_all),
        cmocka_unit_test_teardown(test_moe_experts_vector_shapes, release_all),
        cmocka_unit_test_teardown(test_moe_chain_and_batch_independence, release_all),
        cmocka_unit_test_teardown(test_moe_bad_expert_id_is_reported, release_all),
        cmocka_unit_test_teardown(test_moe_gemm_against_cpu, release_all),
        cmocka_unit_test_teardown(test_moe_gemm_falls_back, release_all),
        cmocka_unit_test_teardown(test_moe_gemm_routing_extremes, release_all),
        cmocka_unit_test_teardown(test_moe_gemm_slice, release_all),
        cmocka_unit_test_teardown(test_moe_gemm_deterministic_and_batch_independent, release_all),
        cmocka_unit_test_teardown(test_moe_gemm_graph_replay, release_all),
        cmocka_unit_test_teardown(test_moe_gemm_bad_expert_id_is_reported, release_all),
        cmocka_unit_test_teardown(test_moe_decode_against_cpu, release_all),
        cmocka_unit_test_teardown(test_moe_decode_down_preload, release_all),
        cmocka_unit_test_teardown(test_moe_decode_routing_extremes, release_all),
        cmocka_unit_test_teardown(test_moe_decode_slice, release_all),
        cmocka_unit_test_teardown(test_moe_decode_deterministic_and_batch_independent,
                                  release_all),
        cmocka_unit_test_teardown(test_moe_decode_graph_replay, release_all),
        cmocka_unit_test_teardown(test_moe_decode_bad_expert_id_is_reported, release_all),
        cmocka_unit_test_teardown(test_moe_topk_experts, release_all),
        cmocka_unit_test_teardown(test_moe_benchmark, release_all),
    };
    apply_test_filter();
    return cmocka_run_group_tests_name("cuda moe ops vs cpu backend", tests, group_setup,
                                       group_teardown);
}
