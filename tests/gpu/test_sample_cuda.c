/*
 * pk_sample on the CUDA backend against the CPU backend (which runs the host sampler,
 * pk_sampler_sample, on each row): the same logits, parameters, histories and uniforms must give
 * the same ids, exactly. Run by `make test-gpu` on a machine with a GPU; not part of `make test`.
 *
 * Rows come in several shapes of logits (uniform, peaked like a language model's, rounded to
 * bf16 so that ties abound, all equal, mostly -inf, NaN/inf/-0, ramps, and "striped" rows whose
 * large logits all sit in the ids of a few GPU threads, which defeats the kernel's first bound
 * and takes its bisection path), at the real vocabulary (151936) and at small widths, with
 * padding past n_valid, padded row strides, and every combination of temperature, top-k, top-p,
 * min-p and penalties. ids start poisoned, so a row the GPU did not write fails.
 *
 * The CUDA op may differ from the host where a sum in another order rounds across a boundary
 * (docs/KERNELS.md): about 1e-16 of the total, so a random test never sees it; a mismatch here
 * is a bug.
 *
 * Seeds: PIO_GPU_TEST_SEED=N repeats a run (the seed is printed); otherwise the clock picks one.
 * PIO_GPU_TEST_SANITIZER=1 (under compute-sanitizer) runs fewer and smaller rows.
 * PIO_KERNELS_BENCH=1 also times the op at R = 1, 8, 64 rows of 151936 logits.
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
#include "kernels/sampler.h"
#include "tests/gpu/gpu_setup.h"

enum { QWEN3_VOCAB = 151936, MAX_BUFFERS = 64 };

static pk_context *cpu_ctx, *gpu_ctx;
static int sanitizer;
static pk_rng rng;

/* ------------------------------------------------------------------------------------------ */
/* Memory                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static pk_buffer buffers[MAX_BUFFERS];
static int n_buffers;

static void *dev_alloc(size_t bytes)
{
    pio_error err;
    assert_true(n_buffers < MAX_BUFFERS);
    pio_status st = pk_buffer_alloc(gpu_ctx, bytes > 0 ? bytes : 1, &buffers[n_buffers], &err);
    if (st != PIO_OK)
        print_error("pk_buffer_alloc(%zu): %s\n", bytes, err.message);
    assert_int_equal(st, PIO_OK);
    return buffers[n_buffers++].data;
}

static int release_all(void **state)
{
    (void)state;
    for (int i = 0; i < n_buffers; i++)
        pk_buffer_free(gpu_ctx, &buffers[i]);
    n_buffers = 0;
    return 0;
}

static void expect_ok(pio_status st, const pio_error *err, const char *what)
{
    if (st != PIO_OK)
        print_error("%s: %s (%s)\n", what, err->message, pio_status_str(st));
    assert_int_equal(st, PIO_OK);
}

/* Copies a whole host tensor's span to or from its device twin (same shape and stride). */
static void copy_span(pk_tensor *dst, const pk_tensor *src)
{
    int64_t n = dst->rows > 0 ? (dst->rows - 1) * dst->stride + dst->cols : 0;
    if (n == 0)
        return;
    pk_tensor d = pk_tensor_make(dst->data, dst->dtype, dst->device, 1, n);
    pk_tensor s = pk_tensor_make(src->data, src->dtype, src->device, 1, n);
    pio_error err;
    expect_ok(pk_copy(gpu_ctx, &d, &s, &err), &err, "copy");
}

/* A host tensor [rows, cols] with `pad` spare elements after each row, and its device twin. */
typedef struct twin {
    pk_tensor h, d;
} twin;

static twin make_twin(pio_dtype dt, int64_t rows, int64_t cols, int64_t pad)
{
    twin t;
    int64_t stride = cols + pad, n = rows > 0 ? (rows - 1) * stride + cols : 0;
    size_t bytes = (size_t)(n > 0 ? n : 1) * pio_dtype_size(dt);
    void *h = calloc(1, bytes);
    assert_non_null(h);
    t.h = pk_tensor_host(h, dt, rows, cols);
    t.h.stride = stride;
    t.d = pk_tensor_make(dev_alloc(bytes), dt, PK_DEVICE_CUDA, rows, cols);
    t.d.stride = stride;
    return t;
}

static void free_twin(twin *t)
{
    free(t->h.data);
    t->h.data = NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Batches                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct batch {
    int64_t rows, width, n_valid;
    twin ids, logits, params, prompt, output, uniforms;
    int use_prompt, use_output;
} batch;

static batch make_batch(int64_t rows, int64_t width, int64_t n_valid, int64_t n_prompt,
                        int64_t n_output)
{
    batch b;
    memset(&b, 0, sizeof b);
    b.rows = rows;
    b.width = width;
    b.n_valid = n_valid;
    b.ids = make_twin(PIO_DTYPE_I32, 1, rows, 0);
    b.logits = make_twin(PIO_DTYPE_F32, rows, width, rows % 2 ? 5 : 0);
    b.params = make_twin(PIO_DTYPE_F32, rows, PK_SAMPLE_PARAM_COUNT, rows % 3 ? 1 : 0);
    b.prompt = make_twin(PIO_DTYPE_I32, rows, n_prompt, 2);
    b.output = make_twin(PIO_DTYPE_I32, rows, n_output, 0);
    b.uniforms = make_twin(PIO_DTYPE_I64, 1, rows, 0);
    b.use_prompt = n_prompt > 0;
    b.use_output = n_output > 0;
    return b;
}

static void free_batch(batch *b)
{
    free_twin(&b->ids);
    free_twin(&b->logits);
    free_twin(&b->params);
    free_twin(&b->prompt);
    free_twin(&b->output);
    free_twin(&b->uniforms);
}

static float *logits_row(batch *b, int64_t r)
{
    return (float *)b->logits.h.data + r * b->logits.h.stride;
}

static float *params_row(batch *b, int64_t r)
{
    return (float *)b->params.h.data + r * b->params.h.stride;
}

static double uniform01(void)
{
    return pk_rng_uniform(&rng);
}

enum { SHAPES = 10 };

/* Logits of one shape; columns past n_valid get values that would win if they took part. */
static void fill_logits(float *x, int64_t width, int64_t n_valid, int shape)
{
    int64_t stripe = (int64_t)(pk_rng_next(&rng) % 1024);
    for (int64_t i = 0; i < width; i++) {
        double u = uniform01();
        float v;
        switch (shape) {
        case 0: v = (float)(u * 20.0 - 10.0); break;
        case 1: /* a language model's: most mass low, a few clear peaks */
            v = (float)(u * 6.0 - 6.0);
            if (pk_rng_next(&rng) % 3000 == 0)
                v = (float)(8.0 + 12.0 * uniform01());
            break;
        case 2: v = pio_bf16_to_f32(pio_f32_to_bf16((float)(u * 8.0 - 4.0))); break;
        case 3: v = 0.5f; break;
        case 4: v = u < 0.97 ? -INFINITY : (float)(u * 4.0); break;
        case 5:
            v = u < 0.03 ? NAN : u < 0.04 ? INFINITY : u < 0.1 ? -INFINITY
                : u < 0.2 ? -0.0f : u < 0.3 ? 0.0f : (float)(u * 2.0 - 1.0);
            break;
        case 6: v = (float)i * 1e-3f; break;
        case 7: /* one GPU thread's ids hold the large logits */
            v = i % 1024 == stripe ? (float)(5.0 + u) : (float)(u - 5.0);
            break;
        case 8: /* 300 threads' ids hold them: more than a round can gather */
            v = (i + stripe) % 1024 < 300 ? (float)(5.0 + u) : (float)(u - 5.0);
            break;
        default: v = (float)((u - 0.5) * 0.2); break; /* nearly flat: long top-p lists */
        }
        x[i] = i < n_valid ? v : 1e30f;
    }
}

typedef struct combo {
    float temperature, top_p, min_p;
    int32_t top_k;
    int penalties;
} combo;

static const float TEMPERATURES[] = {0.0f, 0.6f, 1.0f, 1.7f};
static const float TOP_PS[] = {1.0f, 0.9f, 0.5f, 0.999f};
static const float MIN_PS[] = {0.0f, 0.05f, 0.3f};
enum { N_TEMPERATURES = 4, N_TOP_KS = 6, N_TOP_PS = 4, N_MIN_PS = 3,
       N_COMBOS = N_TEMPERATURES * N_TOP_KS * N_TOP_PS * N_MIN_PS * 2 };

/* Combination i of every temperature, top-k, top-p, min-p and penalties on or off. */
static combo combo_at(int i, int64_t n_valid)
{
    const int32_t top_ks[N_TOP_KS] = {0, 1, 2, 40, 600, (int32_t)n_valid + 1};
    combo c;
    c.temperature = TEMPERATURES[i % N_TEMPERATURES];
    i /= N_TEMPERATURES;
    c.top_k = top_ks[i % N_TOP_KS];
    i /= N_TOP_KS;
    c.top_p = TOP_PS[i % N_TOP_PS];
    i /= N_TOP_PS;
    c.min_p = MIN_PS[i % N_MIN_PS];
    i /= N_MIN_PS;
    c.penalties = i % 2;
    return c;
}

static void set_row_params(batch *b, int64_t r, const combo *c)
{
    pk_sampling p = pk_sampling_default();
    p.temperature = c->temperature;
    p.top_k = c->top_k;
    p.top_p = c->top_p;
    p.min_p = c->min_p;
    if (c->penalties) {
        p.repetition_penalty = r % 2 ? 1.3f : 0.8f;
        p.presence_penalty = 0.5f;
        p.frequency_penalty = 0.25f;
    }
    pio_error err;
    expect_ok(pk_sampling_to_row(&p, params_row(b, r), &err), &err, "pk_sampling_to_row");
    int64_t *u = b->uniforms.h.data;
    u[r] = pk_sampling_uniform_bits(&p, &rng);
}

/* Histories with repeated ids, -1 padding and ids beyond n_valid; some rows use few entries. */
static void fill_history(batch *b, int64_t r)
{
    int32_t *prompt = (int32_t *)b->prompt.h.data + r * b->prompt.h.stride;
    int32_t *output = (int32_t *)b->output.h.data + r * b->output.h.stride;
    int64_t used_prompt = b->prompt.h.cols ? (int64_t)(pk_rng_next(&rng) % (b->prompt.h.cols + 1))
                                           : 0;
    for (int64_t j = 0; j < b->prompt.h.cols; j++)
        prompt[j] = j < used_prompt ? (int32_t)(pk_rng_next(&rng) % (b->n_valid + 3)) - 1 : -1;
    for (int64_t j = 0; j < b->output.h.cols; j++) /* few distinct ids: repeats */
        output[j] = j % 5 == 4 ? -1 : (int32_t)(pk_rng_next(&rng) % 7 * (b->n_valid / 7));
}

/* Runs the op on both backends and requires the same ids. */
static void run_and_compare(batch *b, const char *what)
{
    pio_error err;
    int32_t *want = b->ids.h.data;
    for (int64_t r = 0; r < b->rows; r++)
        want[r] = -7;
    copy_span(&b->logits.d, &b->logits.h);
    copy_span(&b->params.d, &b->params.h);
    copy_span(&b->prompt.d, &b->prompt.h);
    copy_span(&b->output.d, &b->output.h);
    copy_span(&b->uniforms.d, &b->uniforms.h);
    copy_span(&b->ids.d, &b->ids.h); /* poison */
    expect_ok(pk_sample(cpu_ctx, &b->ids.h, &b->logits.h, b->n_valid, &b->params.h,
                        b->use_prompt ? &b->prompt.h : NULL,
                        b->use_output ? &b->output.h : NULL, &b->uniforms.h, &err),
              &err, "pk_sample (cpu)");
    expect_ok(pk_sample(gpu_ctx, &b->ids.d, &b->logits.d, b->n_valid, &b->params.d,
                        b->use_prompt ? &b->prompt.d : NULL,
                        b->use_output ? &b->output.d : NULL, &b->uniforms.d, &err),
              &err, "pk_sample (cuda)");
    int32_t *got = malloc((size_t)b->rows * sizeof *got);
    assert_non_null(got);
    pk_tensor host_got = pk_tensor_host(got, PIO_DTYPE_I32, 1, b->rows);
    expect_ok(pk_copy(gpu_ctx, &host_got, &b->ids.d, &err), &err, "download");
    expect_ok(pk_synchronize(gpu_ctx, &err), &err, "synchronize");
    int bad = 0;
    for (int64_t r = 0; r < b->rows; r++) {
        if (got[r] == want[r])
            continue;
        const float *p = params_row(b, r);
        if (bad++ < 10)
            print_error("%s: row %lld of %lld (width %lld, n_valid %lld): cuda %d, cpu %d "
                        "(temperature %g top_k %g top_p %g min_p %g repetition %g)\n",
                        what, (long long)r, (long long)b->rows, (long long)b->width,
                        (long long)b->n_valid, got[r], want[r], p[PK_SAMPLE_TEMPERATURE],
                        p[PK_SAMPLE_TOP_K], p[PK_SAMPLE_TOP_P], p[PK_SAMPLE_MIN_P],
                        p[PK_SAMPLE_REPETITION_PENALTY]);
    }
    free(got);
    if (bad > 0)
        fail_msg("%s: %d of %lld rows differ", what, bad, (long long)b->rows);
}

/* rows rows of `width` (n_valid a little less when `padded`), each combination of parameters
 * in turn from `first_combo`, shapes in turn. */
static void random_rows(int64_t rows, int64_t width, int padded, int first_combo,
                        const char *what)
{
    int64_t n_valid = padded ? width - width / 16 : width;
    batch b = make_batch(rows, width, n_valid, 12, 20);
    for (int64_t r = 0; r < rows; r++) {
        fill_logits(logits_row(&b, r), width, n_valid, (int)((r + first_combo) % SHAPES));
        combo c = combo_at((int)((first_combo + r) % N_COMBOS), n_valid);
        set_row_params(&b, r, &c);
        fill_history(&b, r);
    }
    run_and_compare(&b, what);
    free_batch(&b);
}

/* ------------------------------------------------------------------------------------------ */
/* Tests                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    pk_rng_seed(&rng, gpu_test_seed("test_sample_cuda"));
    sanitizer = gpu_test_under_sanitizer();
    return gpu_test_contexts(&cpu_ctx, &gpu_ctx);
}

static int group_teardown(void **state)
{
    (void)state;
    return gpu_test_release_contexts(cpu_ctx, gpu_ctx);
}

/* Every parameter combination on every shape at the real vocabulary, padded (n_valid < V). */
static void test_full_vocabulary(void **state)
{
    (void)state;
    int batches = sanitizer ? 1 : (2 * N_COMBOS + 127) / 128;
    for (int i = 0; i < batches; i++)
        random_rows(sanitizer ? 8 : 128, QWEN3_VOCAB, i % 2, i * 128, "V=151936");
}

/* Thousands of rows at small widths, where the GPU's block has more threads than ids. */
static void test_small_vocabularies(void **state)
{
    (void)state;
    static const int64_t widths[] = {1, 2, 7, 33, 300, 1024, 1500, 5000, 40000};
    for (size_t w = 0; w < sizeof widths / sizeof *widths; w++) {
        int64_t rows = sanitizer ? 16 : widths[w] > 5000 ? 256 : 1024;
        for (int padded = 0; padded < 2; padded++)
            random_rows(rows, widths[w], padded && widths[w] > 1,
                        (int)(pk_rng_next(&rng) % N_COMBOS), "small vocabulary");
        release_all(NULL); /* each width's buffers, before the next */
    }
}

/* Rows the op must mark -1: bad parameters, no finite logit, a uniform out of range. */
static void test_rows_that_cannot_be_sampled(void **state)
{
    (void)state;
    batch b = make_batch(8, 50, 50, 0, 0);
    combo c = {1.0f, 1.0f, 0.0f, 0, 0};
    for (int64_t r = 0; r < 8; r++) {
        fill_logits(logits_row(&b, r), 50, 50, 0);
        set_row_params(&b, r, &c);
    }
    params_row(&b, 1)[PK_SAMPLE_TOP_K] = 2.5f;
    params_row(&b, 2)[PK_SAMPLE_MIN_P] = 1.0f;
    params_row(&b, 3)[PK_SAMPLE_TEMPERATURE] = NAN;
    for (int64_t i = 0; i < 50; i++)
        logits_row(&b, 4)[i] = i % 2 ? NAN : -INFINITY;
    ((int64_t *)b.uniforms.h.data)[5] = (int64_t)1 << 53;
    ((int64_t *)b.uniforms.h.data)[6] = -3;
    params_row(&b, 7)[PK_SAMPLE_TEMPERATURE] = 0.0f; /* greedy: the bad uniform is ignored */
    ((int64_t *)b.uniforms.h.data)[7] = -3;
    run_and_compare(&b, "unsampleable rows");
    const int32_t *ids = b.ids.h.data;
    for (int r = 1; r <= 6; r++)
        assert_int_equal(ids[r], -1);
    assert_true(ids[0] >= 0 && ids[7] >= 0);
    free_batch(&b);
}

/* Recorded once, replayed with new contents in the same buffers: the same ids as the CPU. */
static void test_graph_replay(void **state)
{
    (void)state;
    pio_error err;
    int64_t rows = 8, width = sanitizer ? 4096 : QWEN3_VOCAB;
    batch b = make_batch(rows, width, width - 3, 12, 20);
    for (int round = 0; round < 3; round++) {
        for (int64_t r = 0; r < rows; r++) {
            fill_logits(logits_row(&b, r), width, width - 3, (int)((r + round) % SHAPES));
            combo c = combo_at((int)(pk_rng_next(&rng) % N_COMBOS), width - 3);
            set_row_params(&b, r, &c);
            fill_history(&b, r);
        }
        run_and_compare(&b, "graph warm-up"); /* eager; sizes the workspace */
    }
    pk_graph *graph = NULL;
    expect_ok(pk_graph_begin(gpu_ctx, &err), &err, "graph_begin");
    expect_ok(pk_sample(gpu_ctx, &b.ids.d, &b.logits.d, b.n_valid, &b.params.d, &b.prompt.d,
                        &b.output.d, &b.uniforms.d, &err), &err, "pk_sample (recording)");
    expect_ok(pk_graph_end(gpu_ctx, &graph, &err), &err, "graph_end");
    for (int replay = 0; replay < 3; replay++) {
        for (int64_t r = 0; r < rows; r++) {
            fill_logits(logits_row(&b, r), width, width - 3, (int)((r + replay) % SHAPES));
            combo c = combo_at((int)(pk_rng_next(&rng) % N_COMBOS), width - 3);
            set_row_params(&b, r, &c);
            fill_history(&b, r);
        }
        copy_span(&b.logits.d, &b.logits.h);
        copy_span(&b.params.d, &b.params.h);
        copy_span(&b.prompt.d, &b.prompt.h);
        copy_span(&b.output.d, &b.output.h);
        copy_span(&b.uniforms.d, &b.uniforms.h);
        expect_ok(pk_graph_launch(gpu_ctx, graph, &err), &err, "graph_launch");
        int32_t got[8], *want = b.ids.h.data;
        pk_tensor host_got = pk_tensor_host(got, PIO_DTYPE_I32, 1, rows);
        expect_ok(pk_copy(gpu_ctx, &host_got, &b.ids.d, &err), &err, "download");
        expect_ok(pk_sample(cpu_ctx, &b.ids.h, &b.logits.h, b.n_valid, &b.params.h, &b.prompt.h,
                            &b.output.h, &b.uniforms.h, &err), &err, "pk_sample (cpu)");
        expect_ok(pk_synchronize(gpu_ctx, &err), &err, "synchronize");
        for (int64_t r = 0; r < rows; r++)
            assert_int_equal(got[r], want[r]);
    }
    pk_graph_destroy(gpu_ctx, graph);
    free_batch(&b);
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Times the op at R = 1, 8, 64 rows of 151936 logits (PIO_KERNELS_BENCH=1), for the usual
 * settings: greedy, Qwen3's defaults (T 0.7, top-k 20, top-p 0.8), top-p alone, pure sampling,
 * and Qwen3's defaults with penalties over a 4096-token history. */
static void test_benchmark(void **state)
{
    (void)state;
    const char *env = getenv("PIO_KERNELS_BENCH");
    if (env == NULL || atoi(env) == 0) {
        print_message("(skipped: set PIO_KERNELS_BENCH=1)\n");
        return;
    }
    static const struct {
        const char *name;
        combo c;
    } settings[] = {
        {"greedy", {0.0f, 1.0f, 0.0f, 0, 0}},
        {"T0.7 k20 p0.8", {0.7f, 0.8f, 0.0f, 20, 0}},
        {"T1 p0.95", {1.0f, 0.95f, 0.0f, 0, 0}},
        {"T1 (pure)", {1.0f, 1.0f, 0.0f, 0, 0}},
        {"T1 min_p0.05", {1.0f, 1.0f, 0.05f, 0, 0}},
        {"T0.7 k20 p0.8 +pen", {0.7f, 0.8f, 0.0f, 20, 1}},
    };
    static const int64_t row_counts[] = {1, 8, 64};
    enum { REPS = 50 };
    pio_error err;
    for (size_t rc = 0; rc < 3; rc++) {
        int64_t rows = row_counts[rc];
        batch b = make_batch(rows, QWEN3_VOCAB, QWEN3_VOCAB, 1024, 3072);
        for (int64_t r = 0; r < rows; r++) {
            fill_logits(logits_row(&b, r), QWEN3_VOCAB, QWEN3_VOCAB, 1);
            fill_history(&b, r);
        }
        copy_span(&b.logits.d, &b.logits.h);
        copy_span(&b.prompt.d, &b.prompt.h);
        copy_span(&b.output.d, &b.output.h);
        for (size_t s = 0; s < sizeof settings / sizeof *settings; s++) {
            for (int64_t r = 0; r < rows; r++)
                set_row_params(&b, r, &settings[s].c);
            copy_span(&b.params.d, &b.params.h);
            copy_span(&b.uniforms.d, &b.uniforms.h);
            const pk_tensor *prompt = settings[s].c.penalties ? &b.prompt.d : NULL;
            const pk_tensor *output = settings[s].c.penalties ? &b.output.d : NULL;
            expect_ok(pk_sample(gpu_ctx, &b.ids.d, &b.logits.d, b.n_valid, &b.params.d, prompt,
                                output, &b.uniforms.d, &err), &err, "bench warm-up");
            expect_ok(pk_synchronize(gpu_ctx, &err), &err, "bench warm-up");
            double t0 = seconds_now();
            for (int i = 0; i < REPS; i++)
                expect_ok(pk_sample(gpu_ctx, &b.ids.d, &b.logits.d, b.n_valid, &b.params.d,
                                    prompt, output, &b.uniforms.d, &err), &err, "bench");
            expect_ok(pk_synchronize(gpu_ctx, &err), &err, "bench");
            double per = (seconds_now() - t0) / REPS;
            print_message("pk_sample R=%-3lld V=%d %-20s %8.1f us  (%.1f us/row)\n",
                          (long long)rows, QWEN3_VOCAB, settings[s].name, per * 1e6,
                          per * 1e6 / (double)rows);
        }
        free_batch(&b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_full_vocabulary, release_all),
        cmocka_unit_test_teardown(test_small_vocabularies, release_all),
        cmocka_unit_test_teardown(test_rows_that_cannot_be_sampled, release_all),
        cmocka_unit_test_teardown(test_graph_replay, release_all),
        cmocka_unit_test_teardown(test_benchmark, release_all),
    };
    return cmocka_run_group_tests_name("pk_sample: cuda backend vs cpu backend", tests,
                                       group_setup, group_teardown);
}
