/*
 * pk_attention on the CUDA backend against the CPU backend, kernel by kernel: the tensor-core
 * decode kernel (BF16 caches, head_dim = v_head_dim 64/128, batches up to 64 tokens; fp32
 * results through q and P split into three bf16 terms, with its fused merge of the splits), the
 * split-KV kernel (fp32; the other decode shapes, and every F32 cache), the tensor-core prefill
 * kernel (BF16 caches, more than 64 tokens, head_dim 64/128) with its per-token fallback for
 * mixed tiles, and the general kernel (absorbed MLA, unaligned or very wide heads). Run by
 * `make test-gpu` on a machine with a GPU; not part of `make test`.
 *
 * Each check fills paged caches with random K/V behind shuffled (non-contiguous) block tables,
 * leaves every slot nobody stored as NaN (a read past a token's position shows up in its
 * output), runs pk_attention on a CPU context over host tensors and on the CUDA context over
 * device copies of the same bytes, and compares. Outputs start as NaN inside the view and as a
 * sentinel in the gaps between rows, so an element the GPU did not write, or one written
 * outside the view, fails.
 *
 * Error measure: ‖gpu − cpu‖₂ / ‖cpu‖₂ over the output, and every element must be finite where
 * the CPU's is (NaN where a bad token's is expected). Thresholds:
 *   TOL_F32 2e-5  split-KV, general and tensor-core decode kernels: fp32 on both sides (BF16
 *                 caches are widened exactly; the decode kernel's three bf16 terms carry q and
 *                 P to fp32 precision and each tile starts its tensor-core sums from zero),
 *                 differing in summation order and exp2f vs expf only.
 *   TOL_TC  1e-2  tensor-core prefill: q and the softmax weights P are rounded to bf16 before
 *                 the tensor cores multiply them (what a bf16 model does); each rounding is a
 *                 relative error of at most 2^-9 (about 1.1e-3 rms for uniform rounding), and
 *                 the output, a P-weighted mean of V rows, keeps that order: measured in
 *                 emulation at 1-2e-3. 1e-2 leaves room for unlucky seeds while a wrong
 *                 fragment layout, mask or key tile still gives errors of order 1.
 *   exact         the cache planes after the op stored k_new/v_new (bit for bit).
 *
 * Seeds: PIO_GPU_TEST_SEED=N repeats a run (the seed is printed); otherwise the clock picks one.
 * PIO_GPU_TEST_SANITIZER=1 (under compute-sanitizer) drops the deepest and longest shapes.
 * PIO_KERNELS_BENCH=1 also times decode (B=1 at depths 1..16384, B=8 at 512..16384, B=64 at
 * 640) and prefill (512/2048 tokens) at Qwen3-4B's heads.
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
#define TOL_TC 1e-2

/* The kernel choice the tests aim at (kernels/cuda/cuda_attention.cu): more tokens than this
 * take the tensor-core kernel when the caches are BF16. */
#define DECODE_MAX_TOKENS 64
/* The tensor-core decode kernel's fewest keys per split by default for one token (the
 * environment variable PIO_CUDA_DECODE_SPLIT_MIN_KEYS overrides it at every call), the context
 * up to which it takes one split whatever the minimum, and its split granule for one token (16
 * keys a warp of its 8), which is also the smallest minimum (every split as short as it can
 * be); batches take 4 warps, a granule of 64. */
#define DEC_MIN_SPLIT_KEYS_ONE_TOKEN 128
#define DEC_ONE_SPLIT_KEYS 128
#define DEC_SPLIT_KEYS_ONE_TOKEN 128

static int sanitizer; /* PIO_GPU_TEST_SANITIZER=1: smaller shapes */

#include "tests/gpu/gpu_setup.h"
#include "tests/gpu/gpu_test.h"

/* ------------------------------------------------------------------------------------------ */
/* Setup                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    rng_state = gpu_test_seed("test_attention_cuda");
    sanitizer = gpu_test_under_sanitizer();
    return gpu_test_contexts(&cpu_ctx, &gpu_ctx);
}

static int group_teardown(void **state)
{
    (void)state;
    return gpu_test_release_contexts(cpu_ctx, gpu_ctx);
}

/* ------------------------------------------------------------------------------------------ */
/* Paged caches                                                                               */
/* ------------------------------------------------------------------------------------------ */

typedef struct shape {
    int32_t n_q, n_kv, head_dim, v_head_dim, block_size;
    pio_dtype dtype;
    int latent;    /* one plane; values are its first v_head_dim columns (absorbed MLA) */
    int pad;       /* extra elements per cache row (1 misaligns bf16 rows: general kernel) */
} shape;

enum { MAX_SEQS = 96, MAX_TOKENS = 2600 };

/*
 * Sequences 0..n_seqs-1 with room for len[s] positions each, blocks handed out from a shuffled
 * list (so a sequence's blocks are scattered) plus spare blocks nobody uses; table entries past
 * a sequence's blocks are -1. Planes start as NaN.
 */
typedef struct world {
    shape s;
    int n_seqs;
    int32_t len[MAX_SEQS];
    int64_t width, n_blocks;
    int32_t kw, vw, qw, ow;
    pair tables, k_plane, v_plane;
    pk_tensor k_cache_h, k_cache_d, v_cache_h, v_cache_d;
} world;

static int32_t *table_row(world *w, int seq)
{
    return (int32_t *)w->tables.h.data + (int64_t)seq * w->width;
}

static void world_make(world *w, const shape *s, int n_seqs, const int32_t *len)
{
    memset(w, 0, sizeof *w);
    assert_true(n_seqs <= MAX_SEQS);
    w->s = *s;
    w->n_seqs = n_seqs;
    w->kw = s->n_kv * s->head_dim;
    w->vw = s->n_kv * s->v_head_dim;
    w->qw = s->n_q * s->head_dim;
    w->ow = s->n_q * s->v_head_dim;
    int64_t total = 0;
    for (int i = 0; i < n_seqs; i++) {
        w->len[i] = len[i];
        int64_t need = (len[i] + s->block_size - 1) / s->block_size;
        total += need;
        if (need + 1 > w->width)
            w->width = need + 1;
    }
    w->n_blocks = total + 3;
    int32_t *ids = host_alloc((size_t)w->n_blocks * 4);
    for (int64_t i = 0; i < w->n_blocks; i++)
        ids[i] = (int32_t)i;
    for (int64_t i = w->n_blocks - 1; i > 0; i--) {
        int64_t j = random_int(0, i);
        int32_t t = ids[i];
        ids[i] = ids[j];
        ids[j] = t;
    }
    w->tables = make_pair(PIO_DTYPE_I32, n_seqs, w->width, 0, FILL_ZERO, 0, 0);
    int64_t next = 0;
    for (int i = 0; i < n_seqs; i++) {
        int64_t need = (len[i] + s->block_size - 1) / s->block_size;
        for (int64_t j = 0; j < w->width; j++)
            table_row(w, i)[j] = j < need ? ids[next++] : -1;
    }
    upload(&w->tables);
    int64_t slots = w->n_blocks * s->block_size;
    w->k_plane = make_pair(s->dtype, slots, w->kw, s->pad, FILL_NAN, 0, 0);
    w->k_cache_h = w->k_plane.h;
    w->k_cache_d = w->k_plane.d;
    if (s->latent) {
        w->v_cache_h = pk_tensor_cols(&w->k_plane.h, 0, s->v_head_dim);
        w->v_cache_d = pk_tensor_cols(&w->k_plane.d, 0, s->v_head_dim);
    } else {
        w->v_plane = make_pair(s->dtype, slots, w->vw, s->pad, FILL_NAN, 0, 0);
        w->v_cache_h = w->v_plane.h;
        w->v_cache_d = w->v_plane.d;
    }
}

/* Random K/V for positions [0, upto) of sequence seq, written into the host planes (then
 * world_upload): the "already cached" part of a sequence. */
static void world_fill(world *w, int seq, int32_t upto)
{
    assert_true(upto <= w->len[seq]);
    int32_t bs = w->s.block_size;
    for (int32_t p = 0; p < upto; p++) {
        int64_t slot = (int64_t)table_row(w, seq)[p / bs] * bs + p % bs;
        for (int32_t c = 0; c < w->kw; c++)
            store_value(w->k_plane.h.data, w->s.dtype, slot * w->k_plane.h.stride + c,
                        uniform(-1, 1));
        if (!w->s.latent)
            for (int32_t c = 0; c < w->vw; c++)
                store_value(w->v_plane.h.data, w->s.dtype, slot * w->v_plane.h.stride + c,
                            uniform(-1, 1));
    }
}

static void world_upload(world *w)
{
    upload(&w->k_plane);
    if (!w->s.latent)
        upload(&w->v_plane);
    upload(&w->tables);
}

static pk_attention_params params_of(const shape *s)
{
    pk_attention_params p = {s->n_q, s->n_kv, s->head_dim, s->v_head_dim,
                             1.0f / sqrtf((float)s->head_dim)};
    return p;
}

/* Tokens of a flattened batch, in order. */
typedef struct tokens {
    int32_t seq[MAX_TOKENS], pos[MAX_TOKENS];
    int n;
} tokens;

static void add_token(tokens *tl, int seq, int32_t pos)
{
    assert_true(tl->n < MAX_TOKENS);
    tl->seq[tl->n] = seq;
    tl->pos[tl->n++] = pos;
}

static void add_run(tokens *tl, int seq, int32_t first, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        add_token(tl, seq, first + i);
}

typedef struct batch {
    pair positions, rows;
    pk_token_batch h, d;
} batch;

static batch make_batch(world *w, const tokens *tl)
{
    batch b;
    b.positions = int_pair(tl->pos, tl->n);
    b.rows = int_pair(tl->seq, tl->n);
    b.h = (pk_token_batch){b.positions.h, b.rows.h, w->tables.h, w->s.block_size, 0, 0};
    b.d = (pk_token_batch){b.positions.d, b.rows.d, w->tables.d, w->s.block_size, 0, 0};
    return b;
}

/* The tolerance of the kernel a batch of n tokens over this shape takes. */
static double tolerance_for(const shape *s, int n)
{
    int group = s->n_q / s->n_kv;
    int tensor_cores = n > DECODE_MAX_TOKENS && s->dtype == PIO_DTYPE_BF16 && !s->latent &&
                       s->pad == 0 && s->head_dim == s->v_head_dim &&
                       (s->head_dim == 64 || s->head_dim == 128) && 64 % group == 0;
    return tensor_cores ? TOL_TC : TOL_F32;
}

/*
 * Runs the batch on both backends and compares. store: the tokens' K/V are new (random k_new,
 * v_new stored by the op itself, as a prefill does) and the planes are compared afterwards bit
 * for bit; otherwise they must be in the planes already (world_fill). Returns the error.
 */
static double run_batch(world *w, const tokens *tl, int store, const char *what)
{
    char name[256];
    pk_attention_params p = params_of(&w->s);
    pio_error err;
    batch b = make_batch(w, tl);
    pair q = make_pair(PIO_DTYPE_F32, tl->n, w->qw, 3, FILL_UNIFORM, -1, 1);
    pair out = make_pair(PIO_DTYPE_F32, tl->n, w->ow, 1, FILL_NAN, 0, 0);
    void *before = snapshot(&out);
    pair k_new, v_new;
    const pk_tensor *kn_h = NULL, *kn_d = NULL, *vn_h = NULL, *vn_d = NULL;
    if (store) {
        k_new = make_pair(PIO_DTYPE_F32, tl->n, w->kw, 0, FILL_UNIFORM, -1, 1);
        kn_h = &k_new.h;
        kn_d = &k_new.d;
        if (!w->s.latent) {
            v_new = make_pair(PIO_DTYPE_F32, tl->n, w->vw, 0, FILL_UNIFORM, -1, 1);
            vn_h = &v_new.h;
            vn_d = &v_new.d;
        }
    }
    snprintf(name, sizeof name, "%s (gpu)", what);
    expect_ok(pk_attention(gpu_ctx, &out.d, &q.d, kn_d, vn_d, &w->k_cache_d, &w->v_cache_d, &b.d,
                           &p, &err), &err, name);
    snprintf(name, sizeof name, "%s (cpu)", what);
    expect_ok(pk_attention(cpu_ctx, &out.h, &q.h, kn_h, vn_h, &w->k_cache_h, &w->v_cache_h, &b.h,
                           &p, &err), &err, name);
    double rel =
        check_pair_rows(what, &out, NULL, tolerance_for(&w->s, tl->n), before, NULL, 1);
    if (store) {
        snprintf(name, sizeof name, "%s: k plane", what);
        check_pair_rows(name, &w->k_plane, NULL, 0.0, NULL, NULL, 0);
        if (!w->s.latent) {
            snprintf(name, sizeof name, "%s: v plane", what);
            check_pair_rows(name, &w->v_plane, NULL, 0.0, NULL, NULL, 0);
        }
    }
    return rel;
}

static void describe(char *buf, size_t size, const shape *s, const char *what)
{
    snprintf(buf, size, "%s: n_q %d n_kv %d hd %d vhd %d bs %d %s%s%s", what, s->n_q, s->n_kv,
             s->head_dim, s->v_head_dim, s->block_size, pio_dtype_name(s->dtype),
             s->latent ? " latent" : "", s->pad ? " padded" : "");
}

/* ------------------------------------------------------------------------------------------ */
/* Decode                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* T tokens, each the next position of its own sequence, at the given depths (keys seen). */
static void run_decode(const shape *s, int t, const int32_t *depths, const char *what)
{
    world w;
    world_make(&w, s, t, depths);
    tokens tl = {.n = 0};
    for (int i = 0; i < t; i++) {
        world_fill(&w, i, depths[i]);
        add_token(&tl, i, depths[i] - 1);
    }
    world_upload(&w);
    char name[256];
    describe(name, sizeof name, s, what);
    double rel = run_batch(&w, &tl, 0, name);
    print_message("%-80s T=%-3d err %.2e\n", name, t, rel);
    release_all(NULL);
}

static const shape QWEN3 = {32, 8, 128, 128, 16, PIO_DTYPE_BF16, 0, 0};

static void test_decode_depths(void **state)
{
    (void)state;
    static const int32_t depths[] = {1, 17, 500, 4096, 16384};
    int n = sanitizer ? 3 : 5;
    for (int i = 0; i < n; i++) {
        char what[64];
        snprintf(what, sizeof what, "decode depth %d", depths[i]);
        run_decode(&QWEN3, 1, &depths[i], what);
        shape f32 = {8, 2, 64, 64, 3, PIO_DTYPE_F32, 0, 0};
        if (depths[i] <= 4096)
            run_decode(&f32, 1, &depths[i], what);
    }
    /* Qwen3-4B at batch 8, mixed depths. */
    int32_t d8[8];
    for (int i = 0; i < 8; i++)
        d8[i] = (int32_t)random_int(1, sanitizer ? 300 : 3000);
    run_decode(&QWEN3, 8, d8, "decode batch 8");
}

static void test_decode_batches(void **state)
{
    (void)state;
    static const int batch_sizes[] = {2, 7, 33, 64};
    static const int groups[] = {1, 4, 8};
    static const int32_t block_sizes[] = {16, 3};
    static const pio_dtype dtypes[] = {PIO_DTYPE_BF16, PIO_DTYPE_F32};
    int32_t depths[64];
    for (int g = 0; g < 3; g++)
        for (int b = 0; b < 2; b++)
            for (int d = 0; d < 2; d++) {
                shape s = {2 * groups[g], 2, 64, 64, block_sizes[b], dtypes[d], 0, 0};
                for (int i = 0; i < 4; i++) {
                    int t = batch_sizes[i];
                    if (sanitizer && t > 7)
                        continue;
                    for (int k = 0; k < t; k++)
                        depths[k] = (int32_t)random_int(1, 700);
                    depths[0] = sanitizer ? 300 : 2500; /* one deep sequence */
                    char what[64];
                    snprintf(what, sizeof what, "decode batch %d", t);
                    run_decode(&s, t, depths, what);
                }
            }
}

/* Head shapes: every lane/chunk/heads-per-block variant of the split kernel, then shapes that
 * take the general kernel. */
static void test_decode_head_shapes(void **state)
{
    (void)state;
    static const shape shapes[] = {
        {16, 2, 256, 256, 16, PIO_DTYPE_BF16, 0, 0}, /* 32 lanes per key, 8 heads per block */
        {8, 2, 64, 32, 16, PIO_DTYPE_BF16, 0, 0},    /* values narrower than keys */
        {4, 2, 32, 64, 4, PIO_DTYPE_F32, 0, 0},      /* values wider than keys */
        {12, 2, 256, 256, 16, PIO_DTYPE_F32, 0, 0},  /* 2 chunks per lane, group 6 in 2 blocks */
        {4, 1, 512, 512, 16, PIO_DTYPE_BF16, 0, 0},  /* 2 chunks per lane */
        {32, 2, 80, 80, 16, PIO_DTYPE_BF16, 0, 0},   /* group 16: two blocks of 8 heads */
        {32, 2, 128, 128, 16, PIO_DTYPE_BF16, 0, 0}, /* tensor-core decode, group 16: 2 chunks */
        {6, 2, 64, 64, 5, PIO_DTYPE_BF16, 0, 0},     /* tensor-core decode, group 3, odd blocks */
        {6, 3, 40, 40, 5, PIO_DTYPE_BF16, 0, 0},     /* 5 chunks, idle lanes */
        {4, 4, 13, 13, 3, PIO_DTYPE_F32, 0, 0},      /* general: unaligned heads */
        {8, 2, 64, 64, 16, PIO_DTYPE_BF16, 0, 1},    /* general: unaligned rows */
        {4, 2, 640, 640, 16, PIO_DTYPE_F32, 0, 0},   /* general: too wide for the registers */
        {16, 1, 576, 512, 16, PIO_DTYPE_BF16, 1, 0}, /* general: absorbed MLA latent */
        {5, 1, 40, 32, 3, PIO_DTYPE_F32, 1, 0},      /* general: latent, odd sizes */
    };
    int32_t depths[5];
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        for (int k = 0; k < 5; k++)
            depths[k] = (int32_t)random_int(1, 300);
        run_decode(&shapes[i], 5, depths, "decode shapes");
    }
}

/* tc_decode_kernel's fused merge for one token at depths that leave 1..32 splits holding keys,
 * so every count of partials is merged by the last split to finish: two kv heads (one token's
 * splits are as many as one wave of its one-an-SM blocks holds, so 32 on GPUs of 64 SMs or
 * more), with the smallest fewest keys a split (128: one 16-key tile a warp of 8; up to
 * DEC_ONE_SPLIT_KEYS keys one split) and with 512 (four tiles a warp); then a malformed
 * override. */
static void test_decode_split_counts(void **state)
{
    (void)state;
    static const shape two_kv_heads = {8, 2, 128, 128, 16, PIO_DTYPE_BF16, 0, 0};
    static const int32_t min_keys[] = {DEC_SPLIT_KEYS_ONE_TOKEN, 4 * DEC_SPLIT_KEYS_ONE_TOKEN};
    for (int i = 0; i < 2; i++) {
        char value[16];
        snprintf(value, sizeof value, "%d", min_keys[i]);
        assert_int_equal(setenv("PIO_CUDA_DECODE_SPLIT_MIN_KEYS", value, 1), 0);
        for (int32_t k = 0; k < 32; k++) {
            if (sanitizer && k % 4 != 3)
                continue;
            int32_t depth = min_keys[i] * k + (int32_t)random_int(1, min_keys[i]);
            char what[64];
            snprintf(what, sizeof what, "decode %d splits of >= %d keys", k + 1, min_keys[i]);
            run_decode(&two_kv_heads, 1, &depth, what);
        }
    }
    assert_int_equal(setenv("PIO_CUDA_DECODE_SPLIT_MIN_KEYS", "12x", 1), 0);
    int32_t depth = 10;
    world w;
    world_make(&w, &QWEN3, 1, &depth);
    tokens tl = {.n = 0};
    add_token(&tl, 0, depth - 1);
    batch b = make_batch(&w, &tl);
    pair q = make_pair(PIO_DTYPE_F32, 1, w.qw, 0, FILL_UNIFORM, -1, 1);
    pair out = make_pair(PIO_DTYPE_F32, 1, w.ow, 0, FILL_NAN, 0, 0);
    pk_attention_params p = params_of(&QWEN3);
    pio_error err;
    assert_int_equal(pk_attention(gpu_ctx, &out.d, &q.d, NULL, NULL, &w.k_cache_d, &w.v_cache_d,
                                  &b.d, &p, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "PIO_CUDA_DECODE_SPLIT_MIN_KEYS=\"12x\""));
    assert_int_equal(unsetenv("PIO_CUDA_DECODE_SPLIT_MIN_KEYS"), 0);
    release_all(NULL);
}

/* Sequences of very different lengths in one batch: one token's splits all hold keys while
 * another's are nearly all empty. */
static void test_decode_uneven_batch(void **state)
{
    (void)state;
    static const int32_t full[16] = {1,    16384, 2,   5000, 17, 64,   65,   3000,
                                     1,    700,   129, 2048, 33, 2049, 8191, 4};
    int32_t depths[16];
    for (int i = 0; i < 16; i++)
        depths[i] = sanitizer && full[i] > 2100 ? full[i] % 2100 + 1 : full[i];
    run_decode(&QWEN3, 16, depths, "decode uneven batch");
    const shape g8 = {16, 2, 64, 64, 3, PIO_DTYPE_BF16, 0, 0};
    run_decode(&g8, 16, depths, "decode uneven batch");
}

/* ------------------------------------------------------------------------------------------ */
/* Prefill                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* n tokens of one sequence at positions start..start+n-1, positions before start cached; the
 * op stores the new tokens' K/V itself. */
static void run_prefill(const shape *s, int32_t n, int32_t start)
{
    world w;
    int32_t len = start + n;
    world_make(&w, s, 1, &len);
    world_fill(&w, 0, start);
    world_upload(&w);
    tokens *tl = host_alloc(sizeof *tl);
    add_run(tl, 0, start, n);
    char name[256], what[64];
    snprintf(what, sizeof what, "prefill %d from %d", n, start);
    describe(name, sizeof name, s, what);
    double rel = run_batch(&w, tl, 1, name);
    print_message("%-80s err %.2e\n", name, rel);
    release_all(NULL);
}

static void test_prefill_lengths(void **state)
{
    (void)state;
    /* around the 32-token row tiles of group 4 (128 rows), and long */
    static const int32_t lengths[] = {1, 63, 64, 65, 97, 160, 512, 2048};
    static const int32_t starts[] = {0, 300};
    const shape g4 = {8, 2, 128, 128, 16, PIO_DTYPE_BF16, 0, 0};
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 2; j++)
            if (!sanitizer || lengths[i] <= 128)
                run_prefill(&g4, lengths[i], starts[j]);
    /* fp32 caches: the split kernel at every length */
    const shape f32 = {8, 2, 128, 128, 16, PIO_DTYPE_F32, 0, 0};
    run_prefill(&f32, 65, 0);
    run_prefill(&f32, sanitizer ? 100 : 300, 50);
}

/* Under the sanitizers: no longer than 96 tokens (still more than DECODE_MAX_TOKENS). */
static int32_t shorter(int32_t n)
{
    return sanitizer && n > 96 ? 96 : n;
}

static void test_prefill_groups_and_heads(void **state)
{
    (void)state;
    const shape g1 = {4, 4, 64, 64, 16, PIO_DTYPE_BF16, 0, 0};
    run_prefill(&g1, 65, 0);
    run_prefill(&g1, shorter(200), 37);
    const shape g8 = {8, 1, 64, 64, 3, PIO_DTYPE_BF16, 0, 0}; /* odd block size */
    run_prefill(&g8, 100, 70);
    const shape g16 = {32, 2, 128, 128, 16, PIO_DTYPE_BF16, 0, 0};
    run_prefill(&g16, shorter(150), 0);
    const shape g2_64 = {4, 2, 64, 64, 1, PIO_DTYPE_BF16, 0, 0}; /* a block per token */
    run_prefill(&g2_64, shorter(129), 5);
    /* Not for the tensor cores (group 3, v_head_dim != head_dim): the split kernel, fp32. */
    const shape g3 = {6, 2, 64, 64, 16, PIO_DTYPE_BF16, 0, 0};
    run_prefill(&g3, 100, 10);
    const shape narrow_v = {8, 2, 128, 64, 16, PIO_DTYPE_BF16, 0, 0};
    run_prefill(&narrow_v, 100, 10);
    if (!sanitizer)
        run_prefill(&QWEN3, 512, 0);
    run_prefill(&QWEN3, sanitizer ? 70 : 300, 1000);
}

/* A prefill chunk in the middle of decode tokens of other sequences (tiles mixing sequences go
 * to the per-token fallback), and two prefill chunks back to back. */
static void test_mixed_batches(void **state)
{
    (void)state;
    static const pio_dtype dtypes[] = {PIO_DTYPE_BF16, PIO_DTYPE_F32};
    for (int d = 0; d < 2; d++) {
        shape s = {8, 2, 128, 128, 16, dtypes[d], 0, 0};
        enum { DECODES = 20 };
        int32_t len[DECODES + 1];
        len[0] = 250; /* chunk of 200 after 50 cached */
        for (int i = 1; i <= DECODES; i++)
            len[i] = (int32_t)random_int(1, sanitizer ? 200 : 1500);
        world w;
        world_make(&w, &s, DECODES + 1, len);
        world_fill(&w, 0, 50);
        for (int i = 1; i <= DECODES; i++)
            world_fill(&w, i, len[i] - 1); /* the decode token brings its own entry */
        world_upload(&w);
        tokens *tl = host_alloc(sizeof *tl);
        for (int i = 1; i <= 7; i++)
            add_token(tl, i, len[i] - 1);
        add_run(tl, 0, 50, 200);
        for (int i = 8; i <= DECODES; i++)
            add_token(tl, i, len[i] - 1);
        char name[256];
        describe(name, sizeof name, &s, "mixed batch: 7 decodes, chunk of 200, 13 decodes");
        double rel = run_batch(&w, tl, 1, name);
        print_message("%-80s err %.2e\n", name, rel);
        release_all(NULL);

        /* Two chunks back to back (one tile holds both), after three decode tokens. */
        int32_t len2[5] = {90, 90, 30, 700, 5};
        world_make(&w, &s, 5, len2);
        world_fill(&w, 1, 20);
        for (int i = 2; i < 5; i++)
            world_fill(&w, i, len2[i] - 1);
        world_upload(&w);
        tl = host_alloc(sizeof *tl); /* release_all freed the first list */
        for (int i = 2; i < 5; i++)
            add_token(tl, i, len2[i] - 1);
        add_run(tl, 0, 0, 90);
        add_run(tl, 1, 20, 70);
        describe(name, sizeof name, &s, "mixed batch: 3 decodes, chunks of 90 and 70");
        rel = run_batch(&w, tl, 1, name);
        print_message("%-80s err %.2e\n", name, rel);
        release_all(NULL);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Bad tokens                                                                                 */
/* ------------------------------------------------------------------------------------------ */

typedef enum corruption {
    BAD_BLOCK_OF_DECODE, /* a block id before a decode token's own block */
    BAD_BLOCK_IN_CHUNK,  /* a block in the middle of the prefill chunk */
    BAD_POSITION,        /* a negative position */
    BAD_SEQ_ROW,         /* a table row that does not exist */
    BAD_TABLE_SPAN,      /* a position past the table's width */
} corruption;

/*
 * The CPU computes the good batch; the GPU gets the batch with one corruption and must report
 * it by pk_synchronize, write NaN for the affected tokens and the CPU's values for the others.
 * prefill: a chunk of 150 tokens of sequence 0 from position 40 plus decode tokens of sequences
 * 1..3 (the tensor-core path and its fallback); otherwise three decode tokens (split-KV with
 * several splits).
 */
static void run_bad(corruption kind, int prefill, const char *want)
{
    shape s = {8, 2, 128, 128, 16, PIO_DTYPE_BF16, 0, 0};
    int32_t len[4] = {190, 900, 40, 2000};
    world w;
    world_make(&w, &s, 4, len);
    for (int i = 0; i < 4; i++) /* the chunk's own K/V included: attention only */
        world_fill(&w, i, len[i]);
    world_upload(&w);
    tokens *tl = host_alloc(sizeof *tl);
    for (int i = 1; i < 4; i++)
        add_token(tl, i, len[i] - 1);
    if (prefill)
        add_run(tl, 0, 40, 150);
    pk_attention_params p = params_of(&s);
    pio_error err;
    batch good = make_batch(&w, tl);
    pair q = make_pair(PIO_DTYPE_F32, tl->n, w.qw, 0, FILL_UNIFORM, -1, 1);
    pair out = make_pair(PIO_DTYPE_F32, tl->n, w.ow, 0, FILL_NAN, 0, 0);
    expect_ok(pk_attention(cpu_ctx, &out.h, &q.h, NULL, NULL, &w.k_cache_h, &w.v_cache_h,
                           &good.h, &p, &err), &err, "bad tokens: cpu reference");

    unsigned char *nan_rows = host_alloc((size_t)tl->n);
    tokens *bad = host_alloc(sizeof *bad);
    *bad = *tl;
    switch (kind) {
    case BAD_BLOCK_OF_DECODE: /* sequence 3 (depth 2000): block 5 of 125 */
        table_row(&w, 3)[5] = (int32_t)w.n_blocks + 3;
        nan_rows[2] = 1;
        break;
    case BAD_BLOCK_IN_CHUNK: /* sequence 0: block 6 holds positions 96..111 */
        table_row(&w, 0)[6] = -2;
        for (int i = 0; i < tl->n; i++)
            nan_rows[i] = tl->seq[i] == 0 && tl->pos[i] >= 96;
        break;
    case BAD_POSITION:
        bad->pos[1] = -1;
        nan_rows[1] = 1;
        break;
    case BAD_SEQ_ROW:
        bad->seq[0] = 4;
        nan_rows[0] = 1;
        break;
    case BAD_TABLE_SPAN: /* sequence 2 has 3 blocks of room, a table row 126 wide */
        bad->pos[1] = (int32_t)(w.width * s.block_size);
        nan_rows[1] = 1;
        break;
    }
    upload(&w.tables);
    batch b = make_batch(&w, bad);
    expect_ok(pk_attention(gpu_ctx, &out.d, &q.d, NULL, NULL, &w.k_cache_d, &w.v_cache_d, &b.d,
                           &p, &err), &err, "bad tokens: gpu");
    assert_int_equal(pk_synchronize(gpu_ctx, &err), PIO_ERR_INVALID_ARGUMENT);
    if (strstr(err.message, "pk_attention") == NULL || strstr(err.message, want) == NULL) {
        print_error("bad tokens (%d, %s): message \"%s\" lacks \"%s\"\n", (int)kind,
                    prefill ? "prefill" : "decode", err.message, want);
        fail();
    }
    sync_gpu("after the reported error");
    char name[96];
    snprintf(name, sizeof name, "bad tokens (%d, %s)", (int)kind, prefill ? "prefill" : "decode");
    check_pair_rows(name, &out, NULL, prefill ? TOL_TC : TOL_F32, NULL, nan_rows, 1);
    release_all(NULL);
}

static void test_bad_tokens_are_reported(void **state)
{
    (void)state;
    for (int prefill = 0; prefill < 2; prefill++) {
        run_bad(BAD_BLOCK_OF_DECODE, prefill, "uses block id");
        run_bad(BAD_POSITION, prefill, "has position");
        run_bad(BAD_SEQ_ROW, prefill, "names block table row");
        run_bad(BAD_TABLE_SPAN, prefill, "needs block");
    }
    run_bad(BAD_BLOCK_IN_CHUNK, 1, "uses block id");
}

/* ------------------------------------------------------------------------------------------ */
/* QK-norm, RoPE, store and attention in one op (pk_qk_norm_rope_attention)                   */
/* ------------------------------------------------------------------------------------------ */

/*
 * The raw projections of every token and the norms. The op normalises and rotates q and k,
 * stores k and v at each token's position and attends; with distinct_sequences the CUDA
 * backend does all of it in the decode attention kernel. The CPU backend writes the normalised
 * q and k back into its inputs; the raw ones are kept to restore them.
 */
typedef struct fused_io {
    pair q, k, v, q_norm, k_norm, out;
    void *q_raw, *k_raw, *out_before;
} fused_io;

static fused_io fused_make(const world *w, int n, pio_dtype norm_dtype)
{
    fused_io io;
    io.q = make_pair(PIO_DTYPE_F32, n, w->qw, 3, FILL_UNIFORM, -1, 1);
    io.k = make_pair(PIO_DTYPE_F32, n, w->kw, 1, FILL_UNIFORM, -1, 1);
    io.v = make_pair(PIO_DTYPE_F32, n, w->vw, 0, FILL_UNIFORM, -1, 1);
    io.q_norm = make_pair(norm_dtype, 1, w->s.head_dim, 0, FILL_UNIFORM, 0.5f, 1.5f);
    io.k_norm = make_pair(norm_dtype, 1, w->s.head_dim, 0, FILL_UNIFORM, 0.5f, 1.5f);
    io.out = make_pair(PIO_DTYPE_F32, n, w->ow, 1, FILL_NAN, 0, 0);
    io.q_raw = snapshot(&io.q);
    io.k_raw = snapshot(&io.k);
    io.out_before = snapshot(&io.out);
    return io;
}

static pio_status fused_op(pk_context *ctx, world *w, fused_io *io, const batch *b,
                           pio_error *err)
{
    int gpu = ctx == gpu_ctx;
    pk_rope_params rope = {.layout = PK_ROPE_NEOX, .head_dim = w->s.head_dim,
                           .rotary_dim = w->s.head_dim, .theta = 1000000.0f};
    pk_attention_params p = params_of(&w->s);
    return pk_qk_norm_rope_attention(
        ctx, gpu ? &io->out.d : &io->out.h, gpu ? &io->q.d : &io->q.h, gpu ? &io->k.d : &io->k.h,
        gpu ? &io->v.d : &io->v.h, gpu ? &io->q_norm.d : &io->q_norm.h,
        gpu ? &io->k_norm.d : &io->k_norm.h, 1e-6f, &rope, gpu ? &w->k_cache_d : &w->k_cache_h,
        gpu ? &w->v_cache_d : &w->v_cache_h, gpu ? &b->d : &b->h, &p, err);
}

/*
 * After the op ran on both sides (the CPU's on io's host inputs): the cache planes as stored
 * (k: a bf16 rounding of values equal to fp32 precision may differ by one ulp; v: exact), unless
 * `planes` is 0. The GPU's output is then compared with the CPU's attention over the GPU's own
 * planes and the CPU's normalised q, so that such a one-ulp key cannot move the output past
 * TOL_F32. Rows with nan_rows set must be NaN.
 */
static void fused_compare(world *w, fused_io *io, const batch *b, int planes,
                          const unsigned char *nan_rows, const char *what)
{
    char name[300];
    if (planes) {
        snprintf(name, sizeof name, "%s: k plane", what);
        check_pair_rows(name, &w->k_plane, NULL, 1e-4, NULL, NULL, 0);
        snprintf(name, sizeof name, "%s: v plane", what);
        check_pair_rows(name, &w->v_plane, NULL, 0.0, NULL, NULL, 0);
    } else {
        download(&w->k_plane);
        download(&w->v_plane);
    }
    memcpy(w->k_plane.h.data, w->k_plane.got, w->k_plane.span_bytes);
    memcpy(w->v_plane.h.data, w->v_plane.got, w->v_plane.span_bytes);
    pk_attention_params p = params_of(&w->s);
    pio_error err;
    snprintf(name, sizeof name, "%s: cpu attention over the gpu's planes", what);
    expect_ok(pk_attention(cpu_ctx, &io->out.h, &io->q.h, NULL, NULL, &w->k_cache_h,
                           &w->v_cache_h, &b->h, &p, &err), &err, name);
    check_pair_rows(what, &io->out, NULL, TOL_F32, io->out_before, nan_rows, 1);
}

/* The tokens of tl (positions [0, pos) of each sequence already cached) through the op. The
 * cache and the metadata are uploaded by copies first, so the batch may promise `settled`. */
static void run_fused(const shape *s, const tokens *tl, int distinct, int settled,
                      pio_dtype norm_dtype, const char *what)
{
    int32_t len[MAX_SEQS] = {0};
    int n_seqs = 0;
    for (int i = 0; i < tl->n; i++) {
        n_seqs = tl->seq[i] + 1 > n_seqs ? tl->seq[i] + 1 : n_seqs;
        len[tl->seq[i]] = tl->pos[i] + 1 > len[tl->seq[i]] ? tl->pos[i] + 1 : len[tl->seq[i]];
    }
    world w;
    world_make(&w, s, n_seqs, len);
    for (int i = 0; i < tl->n; i++) /* each sequence's keys before its first token */
        if (i == 0 || tl->seq[i] != tl->seq[i - 1])
            world_fill(&w, tl->seq[i], tl->pos[i]);
    world_upload(&w);
    fused_io io = fused_make(&w, tl->n, norm_dtype);
    batch b = make_batch(&w, tl);
    b.h.distinct_sequences = b.d.distinct_sequences = distinct;
    b.h.settled = b.d.settled = settled;
    char name[256];
    describe(name, sizeof name, s, what);
    pio_error err;
    expect_ok(fused_op(gpu_ctx, &w, &io, &b, &err), &err, name);
    expect_ok(fused_op(cpu_ctx, &w, &io, &b, &err), &err, name);
    fused_compare(&w, &io, &b, 1, NULL, name);
    print_message("%-80s T=%d\n", name, tl->n);
    release_all(NULL);
}

static void test_qk_norm_rope_attention(void **state)
{
    (void)state;
    static const int32_t depths[] = {0, 1, 127, 128, 129, 600, 5000};
    int n_depths = sanitizer ? 5 : 7;
    for (int i = 0; i < n_depths; i++) /* one token across the split boundaries */
        for (int settled = 0; settled < 2; settled++) {
            tokens tl = {.n = 0};
            add_token(&tl, 0, depths[i]);
            char what[64];
            snprintf(what, sizeof what, "fused, position %d%s", depths[i],
                     settled ? ", settled" : "");
            run_fused(&QWEN3, &tl, 1, settled, PIO_DTYPE_BF16, what);
        }
    static const shape shapes[] = {
        {32, 4, 128, 128, 16, PIO_DTYPE_BF16, 0, 0}, /* Qwen3-Coder: groups of 8 */
        {16, 8, 128, 128, 16, PIO_DTYPE_BF16, 0, 0}, /* Qwen3-VL-2B: groups of 2 */
        {8, 2, 64, 64, 3, PIO_DTYPE_BF16, 0, 0},     /* head_dim 64, blocks of 3 */
        {6, 2, 128, 128, 16, PIO_DTYPE_BF16, 0, 0},  /* groups of 3 */
    };
    /* odd entries settled: the backend reads ahead of its wait up to its GEMV batch size (2) */
    static const int sizes[] = {8, 3, 5, 64, 2, 2};
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++)
        for (size_t n = 0; n < sizeof sizes / sizeof *sizes; n++) {
            tokens tl = {.n = 0};
            for (int i = 0; i < sizes[n]; i++)
                add_token(&tl, i, (int32_t)random_int(0, sanitizer ? 300 : 2500));
            run_fused(&shapes[c], &tl, 1, (int)(n % 2), c % 2 ? PIO_DTYPE_F32 : PIO_DTYPE_BF16,
                      n % 2 ? "fused, a settled batch of sequences"
                            : "fused, a batch of sequences");
        }
    /* Two tokens of one sequence: no promise, the unfused kernels (the second token reads the
     * first one's key). Groups of 16 and F32 caches are not fused either. */
    tokens chunk = {.n = 0};
    add_run(&chunk, 0, 10, 2);
    add_token(&chunk, 1, 300);
    run_fused(&QWEN3, &chunk, 0, 0, PIO_DTYPE_BF16, "not fused, a chunk of two tokens");
    const shape wide_group = {32, 2, 128, 128, 16, PIO_DTYPE_BF16, 0, 0};
    const shape f32 = {8, 2, 64, 64, 16, PIO_DTYPE_F32, 0, 0};
    tokens three = {.n = 0};
    for (int i = 0; i < 3; i++)
        add_token(&three, i, 100 * i + 7);
    run_fused(&wide_group, &three, 1, 0, PIO_DTYPE_BF16, "not fused, groups of 16");
    /* settled: the attention reads the keys before each position ahead of its wait, the key at
     * the position (stored by the kernel before) after it */
    run_fused(&wide_group, &three, 1, 1, PIO_DTYPE_BF16, "not fused, groups of 16, settled");
    run_fused(&f32, &three, 1, 1, PIO_DTYPE_BF16, "not fused, f32 caches");
}

/* A token whose block at its position is out of range: NaN outputs, nothing stored, the error
 * reported; the other tokens of the batch are right. */
static void test_qk_norm_rope_attention_bad_block(void **state)
{
    (void)state;
    int32_t len[3] = {200, 700, 40};
    world w;
    world_make(&w, &QWEN3, 3, len);
    tokens tl = {.n = 0};
    for (int i = 0; i < 3; i++) {
        world_fill(&w, i, len[i] - 1);
        add_token(&tl, i, len[i] - 1);
    }
    int32_t *bad_entry = &table_row(&w, 1)[(len[1] - 1) / QWEN3.block_size];
    int32_t good_id = *bad_entry;
    *bad_entry = (int32_t)w.n_blocks + 5;
    world_upload(&w);
    *bad_entry = good_id; /* the CPU's table is the good one */
    fused_io io = fused_make(&w, tl.n, PIO_DTYPE_BF16);
    batch b = make_batch(&w, &tl);
    b.h.distinct_sequences = b.d.distinct_sequences = 1;
    b.h.settled = b.d.settled = 1;
    pio_error err;
    expect_ok(fused_op(gpu_ctx, &w, &io, &b, &err), &err, "bad block: gpu");
    assert_int_equal(pk_synchronize(gpu_ctx, &err), PIO_ERR_INVALID_ARGUMENT);
    if (strstr(err.message, "uses block id") == NULL) {
        print_error("bad block: message \"%s\" lacks \"uses block id\"\n", err.message);
        fail();
    }
    sync_gpu("after the reported error");
    expect_ok(fused_op(cpu_ctx, &w, &io, &b, &err), &err, "bad block: cpu");
    static const unsigned char nan_rows[3] = {0, 1, 0};
    fused_compare(&w, &io, &b, 0, nan_rows, "fused, a bad block id");
    int64_t slot = (int64_t)good_id * QWEN3.block_size + (len[1] - 1) % QWEN3.block_size;
    for (int32_t c = 0; c < w.kw; c++) /* the GPU stored nothing for token 1 */
        assert_true(isnan(load_value(w.k_plane.got, QWEN3.dtype, slot * w.k_plane.h.stride + c)));
    release_all(NULL);
}

/* Recorded once, replayed at new positions: each replay stores the token's key and value at
 * its new position and attends over them; the CPU runs the same steps. */
static void test_qk_norm_rope_attention_graph(void **state)
{
    (void)state;
    if (!pk_graph_supported(gpu_ctx)) {
        print_message("(skipped: no graphs)\n");
        return;
    }
    const shape coder = {32, 4, 128, 128, 16, PIO_DTYPE_BF16, 0, 0};
    int32_t len[2] = {3000, 3000};
    world w;
    world_make(&w, &coder, 2, len);
    world_fill(&w, 0, len[0]);
    world_fill(&w, 1, len[1]);
    world_upload(&w);
    tokens tl = {.n = 0};
    add_token(&tl, 0, 5);
    add_token(&tl, 1, 70);
    fused_io io = fused_make(&w, tl.n, PIO_DTYPE_BF16);
    batch b = make_batch(&w, &tl);
    b.h.distinct_sequences = b.d.distinct_sequences = 1;
    pio_error err;
    expect_ok(fused_op(gpu_ctx, &w, &io, &b, &err), &err, "graph warm-up");
    sync_gpu("graph warm-up");
    pk_graph *graph = NULL;
    expect_ok(pk_graph_begin(gpu_ctx, &err), &err, "pk_graph_begin");
    expect_ok(fused_op(gpu_ctx, &w, &io, &b, &err), &err, "recorded op");
    expect_ok(pk_graph_end(gpu_ctx, &graph, &err), &err, "pk_graph_end");
    /* The warm-up stored both tokens on the GPU only: the CPU's planes follow. */
    download(&w.k_plane);
    download(&w.v_plane);
    memcpy(w.k_plane.h.data, w.k_plane.got, w.k_plane.span_bytes);
    memcpy(w.v_plane.h.data, w.v_plane.got, w.v_plane.span_bytes);
    static const int32_t positions[][2] = {{6, 71}, {127, 128}, {128, 2999}, {640, 0}, {1, 1}};
    for (size_t r = 0; r < sizeof positions / sizeof *positions; r++) {
        memcpy(b.positions.h.data, positions[r], sizeof positions[r]);
        upload(&b.positions);
        memcpy(io.q.h.data, io.q_raw, io.q.span_bytes); /* the CPU normalised them */
        memcpy(io.k.h.data, io.k_raw, io.k.span_bytes);
        memcpy(io.out.h.data, io.out_before, io.out.span_bytes);
        upload(&io.out);
        expect_ok(pk_graph_launch(gpu_ctx, graph, &err), &err, "pk_graph_launch");
        expect_ok(fused_op(cpu_ctx, &w, &io, &b, &err), &err, "cpu");
        char name[96];
        snprintf(name, sizeof name, "fused graph replay at positions %d, %d", positions[r][0],
                 positions[r][1]);
        fused_compare(&w, &io, &b, 1, NULL, name);
    }
    pk_graph_destroy(gpu_ctx, graph);
    release_all(NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Graph replay                                                                               */
/* ------------------------------------------------------------------------------------------ */

/*
 * The split count comes from host-known numbers only and the workspace is sized for every
 * decode batch at the first call, so a recorded decode attention stays right when replayed at
 * other positions, also after other batch sizes ran directly.
 */
static void test_graph_replay_at_new_positions(void **state)
{
    (void)state;
    if (!pk_graph_supported(gpu_ctx)) {
        print_message("(skipped: no graphs)\n");
        return;
    }
    int32_t len[2] = {3000, 64};
    world w;
    world_make(&w, &QWEN3, 2, len);
    world_fill(&w, 0, len[0]);
    world_fill(&w, 1, len[1]);
    world_upload(&w);
    pk_attention_params p = params_of(&QWEN3);
    pio_error err;
    tokens tl = {.n = 0};
    add_token(&tl, 0, 9);
    add_token(&tl, 1, 40);
    batch b = make_batch(&w, &tl);
    pair q = make_pair(PIO_DTYPE_F32, 2, w.qw, 0, FILL_UNIFORM, -1, 1);
    pair out = make_pair(PIO_DTYPE_F32, 2, w.ow, 0, FILL_NAN, 0, 0);
    expect_ok(pk_attention(gpu_ctx, &out.d, &q.d, NULL, NULL, &w.k_cache_d, &w.v_cache_d, &b.d, &p,
                           &err), &err, "graph warm-up");
    sync_gpu("graph warm-up");
    pk_graph *graph = NULL;
    expect_ok(pk_graph_begin(gpu_ctx, &err), &err, "pk_graph_begin");
    expect_ok(pk_attention(gpu_ctx, &out.d, &q.d, NULL, NULL, &w.k_cache_d, &w.v_cache_d, &b.d, &p,
                           &err), &err, "recorded attention");
    expect_ok(pk_graph_end(gpu_ctx, &graph, &err), &err, "pk_graph_end");

    static const int32_t positions[][2] = {{2999, 63}, {0, 0}, {1234, 17}};
    for (int r = 0; r < 3; r++) {
        /* Another batch size directly in between (must not move the workspace). */
        if (r == 1) {
            tokens many = {.n = 0};
            for (int i = 0; i < DECODE_MAX_TOKENS; i++)
                add_token(&many, i % 2, (int32_t)random_int(0, 63));
            batch mb = make_batch(&w, &many);
            pair mq = make_pair(PIO_DTYPE_F32, many.n, w.qw, 0, FILL_UNIFORM, -1, 1);
            pair mo = make_pair(PIO_DTYPE_F32, many.n, w.ow, 0, FILL_NAN, 0, 0);
            expect_ok(pk_attention(gpu_ctx, &mo.d, &mq.d, NULL, NULL, &w.k_cache_d, &w.v_cache_d,
                                   &mb.d, &p, &err), &err, "other batch size");
            sync_gpu("other batch size");
        }
        memcpy(b.positions.h.data, positions[r], sizeof positions[r]);
        upload(&b.positions);
        memset(out.h.data, 0xff, out.span_bytes); /* NaN */
        upload(&out);
        expect_ok(pk_graph_launch(gpu_ctx, graph, &err), &err, "pk_graph_launch");
        expect_ok(pk_attention(cpu_ctx, &out.h, &q.h, NULL, NULL, &w.k_cache_h, &w.v_cache_h, &b.h,
                               &p, &err), &err, "cpu");
        char name[64];
        snprintf(name, sizeof name, "graph replay at positions %d, %d", positions[r][0],
                 positions[r][1]);
        check_pair_rows(name, &out, NULL, TOL_F32, NULL, NULL, 1);
    }
    pk_graph_destroy(gpu_ctx, graph);
    release_all(NULL);
}

/*
 * One recorded decode token replayed at growing positions (and back): the number of splits with
 * keys changes from 1 to 12 between replays (16 splits of 8 kv heads on 132 SMs), so the split
 * counters must be back at 0 after every launch for the last split to find itself and write the
 * output.
 */
static void test_graph_replay_growing_positions(void **state)
{
    (void)state;
    if (!pk_graph_supported(gpu_ctx)) {
        print_message("(skipped: no graphs)\n");
        return;
    }
    int32_t len = 3000;
    world w;
    world_make(&w, &QWEN3, 1, &len);
    world_fill(&w, 0, len);
    world_upload(&w);
    pk_attention_params p = params_of(&QWEN3);
    pio_error err;
    tokens tl = {.n = 0};
    add_token(&tl, 0, 0);
    batch b = make_batch(&w, &tl);
    pair q = make_pair(PIO_DTYPE_F32, 1, w.qw, 0, FILL_UNIFORM, -1, 1);
    pair out = make_pair(PIO_DTYPE_F32, 1, w.ow, 0, FILL_NAN, 0, 0);
    expect_ok(pk_attention(gpu_ctx, &out.d, &q.d, NULL, NULL, &w.k_cache_d, &w.v_cache_d, &b.d, &p,
                           &err), &err, "graph warm-up");
    sync_gpu("graph warm-up");
    pk_graph *graph = NULL;
    expect_ok(pk_graph_begin(gpu_ctx, &err), &err, "pk_graph_begin");
    expect_ok(pk_attention(gpu_ctx, &out.d, &q.d, NULL, NULL, &w.k_cache_d, &w.v_cache_d, &b.d, &p,
                           &err), &err, "recorded attention");
    expect_ok(pk_graph_end(gpu_ctx, &graph, &err), &err, "pk_graph_end");
    static const int32_t positions[] = {0, 1, 63, 64, 65, 127, 128, 640, 2047, 2048, 2999, 100, 5};
    for (size_t r = 0; r < sizeof positions / sizeof *positions; r++) {
        memcpy(b.positions.h.data, &positions[r], sizeof positions[r]);
        upload(&b.positions);
        memset(out.h.data, 0xff, out.span_bytes); /* NaN */
        upload(&out);
        expect_ok(pk_graph_launch(gpu_ctx, graph, &err), &err, "pk_graph_launch");
        expect_ok(pk_attention(cpu_ctx, &out.h, &q.h, NULL, NULL, &w.k_cache_h, &w.v_cache_h, &b.h,
                               &p, &err), &err, "cpu");
        char name[64];
        snprintf(name, sizeof name, "graph replay at position %d", positions[r]);
        check_pair_rows(name, &out, NULL, TOL_F32, NULL, NULL, 1);
    }
    pk_graph_destroy(gpu_ctx, graph);
    release_all(NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Timings                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/*
 * Decode: B sequences at depth D in planes rotated among enough copies to exceed the L2
 * cache, so K/V come from HBM; REPS calls recorded into one graph (when the backend records)
 * and replayed, so launch overhead is out of the time as in the decoder's graphs. GB/s = K/V
 * bytes (B·D·n_kv·(hd + vhd)·2) per call / time.
 *
 * Timing is the host clock around the replays or calls, with pk_synchronize on both sides, as
 * in test_kernels_cuda.c: the context's stream is private to the backend (cudaEvents recorded
 * on another stream would not order with it), and the test is plain C without CUDA headers.
 */
static void bench_decode(int b_seqs, int32_t depth, int general)
{
    enum { REPS = 80 };
    shape s = QWEN3;
    s.pad = general; /* misaligned rows: the general kernel, for comparison */
    double seq_bytes = (double)depth * s.n_kv * (s.head_dim + s.v_head_dim) * 2;
    int sets = (int)ceil(160e6 / (seq_bytes * b_seqs));
    if (sets < 1)
        sets = 1;
    if (sets > REPS)
        sets = REPS;
    int n_seqs = sets * b_seqs;
    assert_true(n_seqs <= MAX_SEQS);
    int32_t len[MAX_SEQS];
    for (int i = 0; i < n_seqs; i++)
        len[i] = depth;
    world w;
    world_make(&w, &s, n_seqs, len);
    for (int i = 0; i < n_seqs; i++)
        world_fill(&w, i, depth);
    world_upload(&w);
    pk_attention_params p = params_of(&s);
    pio_error err;
    pair q = make_pair(PIO_DTYPE_F32, b_seqs, w.qw, 0, FILL_UNIFORM, -1, 1);
    pair out = make_pair(PIO_DTYPE_F32, b_seqs, w.ow, 0, FILL_NAN, 0, 0);
    batch bt[REPS];
    for (int r = 0; r < sets; r++) {
        tokens tl = {.n = 0};
        for (int i = 0; i < b_seqs; i++)
            add_token(&tl, r * b_seqs + i, depth - 1);
        bt[r] = make_batch(&w, &tl);
    }
    for (int r = 0; r < sets; r++) /* warm-up: workspace */
        expect_ok(pk_attention(gpu_ctx, &out.d, &q.d, NULL, NULL, &w.k_cache_d, &w.v_cache_d,
                               &bt[r].d, &p, &err), &err, "bench decode");
    sync_gpu("bench decode warm-up");
    pk_graph *graph = NULL;
    int graphs = pk_graph_supported(gpu_ctx) && !general;
    if (graphs) {
        expect_ok(pk_graph_begin(gpu_ctx, &err), &err, "bench graph");
        for (int r = 0; r < REPS; r++)
            expect_ok(pk_attention(gpu_ctx, &out.d, &q.d, NULL, NULL, &w.k_cache_d, &w.v_cache_d,
                                   &bt[r % sets].d, &p, &err), &err, "bench decode");
        expect_ok(pk_graph_end(gpu_ctx, &graph, &err), &err, "bench graph");
        expect_ok(pk_graph_launch(gpu_ctx, graph, &err), &err, "bench graph"); /* warm */
        sync_gpu("bench graph warm-up");
    }
    int rounds = general ? 1 : 4;
    double t0 = seconds_now();
    for (int k = 0; k < rounds; k++) {
        if (graphs)
            expect_ok(pk_graph_launch(gpu_ctx, graph, &err), &err, "bench graph");
        else
            for (int r = 0; r < REPS; r++)
                expect_ok(pk_attention(gpu_ctx, &out.d, &q.d, NULL, NULL, &w.k_cache_d,
                                       &w.v_cache_d, &bt[r % sets].d, &p, &err), &err, "bench");
    }
    sync_gpu("bench decode");
    double per = (seconds_now() - t0) / (rounds * REPS);
    if (graph != NULL)
        pk_graph_destroy(gpu_ctx, graph);
    print_message("attention decode  %-7s B=%d depth %-6d %9.1f us  %7.1f GB/s of K/V%s\n",
                  general ? "general" : "split", b_seqs, depth, per * 1e6,
                  seq_bytes * b_seqs / per * 1e-9, graphs ? " (graph)" : "");
    release_all(NULL);
}

/* Prefill of n tokens from position 0 (K/V already stored); TFLOP/s counts the causal work,
 * 2·Σ_t (t + 1)·n_q·(hd + vhd). */
static void bench_prefill(int32_t n, int general)
{
    shape s = QWEN3;
    s.pad = general;
    world w;
    world_make(&w, &s, 1, &n);
    world_fill(&w, 0, n);
    world_upload(&w);
    tokens *tl = host_alloc(sizeof *tl);
    add_run(tl, 0, 0, n);
    batch b = make_batch(&w, tl);
    pk_attention_params p = params_of(&s);
    pio_error err;
    pair q = make_pair(PIO_DTYPE_F32, n, w.qw, 0, FILL_UNIFORM, -1, 1);
    pair out = make_pair(PIO_DTYPE_F32, n, w.ow, 0, FILL_NAN, 0, 0);
    expect_ok(pk_attention(gpu_ctx, &out.d, &q.d, NULL, NULL, &w.k_cache_d, &w.v_cache_d, &b.d, &p,
                           &err), &err, "bench prefill");
    sync_gpu("bench prefill warm-up");
    int reps = general ? 2 : 10;
    double t0 = seconds_now();
    for (int r = 0; r < reps; r++)
        expect_ok(pk_attention(gpu_ctx, &out.d, &q.d, NULL, NULL, &w.k_cache_d, &w.v_cache_d,
                               &b.d, &p, &err), &err, "bench prefill");
    sync_gpu("bench prefill");
    double per = (seconds_now() - t0) / reps;
    double flops = 2.0 * ((double)n * (n + 1) / 2) * s.n_q * (s.head_dim + s.v_head_dim);
    print_message("attention prefill %-7s T=%-5d from 0   %9.1f us  %7.1f TFLOP/s\n",
                  general ? "general" : "tc", n, per * 1e6, flops / per * 1e-12);
    release_all(NULL);
}

static void test_attention_benchmark(void **state)
{
    (void)state;
    if (!gpu_bench_enabled())
        return;
    static const int32_t depths[] = {512, 4096, 16384};
    /* B = 1 at the short contexts of a tg128 run, by the fewest keys a split (the default is
     * DEC_MIN_SPLIT_KEYS_ONE_TOKEN, every split as short as it can be, past the one-split
     * contexts of up to DEC_ONE_SPLIT_KEYS keys). */
    static const int32_t short_depths[] = {1, 64, 128, 256, 512, 640};
    static const char *const min_keys[] = {"64", "128", "256", "640"};
    for (int m = 0; m < 4; m++) {
        assert_int_equal(setenv("PIO_CUDA_DECODE_SPLIT_MIN_KEYS", min_keys[m], 1), 0);
        print_message("fewest keys a split: %s\n", min_keys[m]);
        for (int i = 0; i < 6; i++)
            bench_decode(1, short_depths[i], 0);
    }
    assert_int_equal(unsetenv("PIO_CUDA_DECODE_SPLIT_MIN_KEYS"), 0);
    print_message("fewest keys a split: default (%d for one token, one split up to %d)\n",
                  DEC_MIN_SPLIT_KEYS_ONE_TOKEN, DEC_ONE_SPLIT_KEYS);
    bench_decode(1, 1, 0);
    bench_decode(1, 64, 0);
    for (int i = 0; i < 3; i++) {
        bench_decode(1, depths[i], 0);
        bench_decode(8, depths[i], 0);
    }
    bench_decode(64, 640, 0); /* batched decode: 168 MB of K/V */
    bench_decode(1, 4096, 1);
    bench_prefill(512, 0);
    bench_prefill(2048, 0);
    bench_prefill(512, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_decode_depths, release_all),
        cmocka_unit_test_teardown(test_decode_batches, release_all),
        cmocka_unit_test_teardown(test_decode_head_shapes, release_all),
        cmocka_unit_test_teardown(test_decode_split_counts, release_all),
        cmocka_unit_test_teardown(test_decode_uneven_batch, release_all),
        cmocka_unit_test_teardown(test_prefill_lengths, release_all),
        cmocka_unit_test_teardown(test_prefill_groups_and_heads, release_all),
        cmocka_unit_test_teardown(test_mixed_batches, release_all),
        cmocka_unit_test_teardown(test_bad_tokens_are_reported, release_all),
        cmocka_unit_test_teardown(test_qk_norm_rope_attention, release_all),
        cmocka_unit_test_teardown(test_qk_norm_rope_attention_bad_block, release_all),
        cmocka_unit_test_teardown(test_qk_norm_rope_attention_graph, release_all),
        cmocka_unit_test_teardown(test_graph_replay_at_new_positions, release_all),
        cmocka_unit_test_teardown(test_graph_replay_growing_positions, release_all),
        cmocka_unit_test_teardown(test_attention_benchmark, release_all),
    };
    return cmocka_run_group_tests_name("cuda attention vs cpu attention", tests, group_setup,
                                       group_teardown);
}
