/*
 * The host sampler and its generator: greedy, top-k, top-p and min-p boundaries, penalties,
 * seeded reproducibility and the sampled distribution; pk_sample on the CPU backend against it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "kernels/sampler.h"
#include "kernels/sampler_math.h"

enum { VOCAB = 64 };

static int setup(void **state)
{
    pk_sampler *s = NULL;
    if (pk_sampler_create(VOCAB, &s, NULL) != PIO_OK)
        return -1;
    *state = s;
    return 0;
}

static int teardown(void **state)
{
    pk_sampler_destroy(*state);
    return 0;
}

static int32_t sample(void **state, const pk_sampling *p, const float *logits, int32_t n,
                      const pk_token_history *h, pk_rng *rng)
{
    int32_t token = -1;
    pio_error err;
    pio_status st = pk_sampler_sample(*state, p, logits, n, h, rng, &token, &err);
    if (st != PIO_OK)
        print_error("sample: %s\n", err.message);
    assert_int_equal(st, PIO_OK);
    assert_in_range(token, 0, n - 1);
    return token;
}

static pk_sampling greedy(void)
{
    pk_sampling p = pk_sampling_default();
    p.temperature = 0.0f;
    return p;
}

static void random_logits(pk_rng *rng, float *logits, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        logits[i] = (float)(pk_rng_uniform(rng) * 10.0 - 5.0);
}

static int32_t argmax(const float *x, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Logits whose softmax is exactly proportional to `probs`. */
static void logits_from_probs(const double *probs, float *logits, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        logits[i] = (float)log(probs[i]);
}

/* Which tokens appear in `draws` samples. */
static void tokens_seen(void **state, const pk_sampling *p, const float *logits, int32_t n,
                        int draws, uint64_t seed, int *seen)
{
    pk_rng rng;
    pk_rng_seed(&rng, seed);
    memset(seen, 0, (size_t)n * sizeof *seen);
    for (int i = 0; i < draws; i++)
        seen[sample(state, p, logits, n, NULL, &rng)]++;
}

/* ------------------------------------------------------------------------------------------ */

static void test_rng_reference_values(void **state)
{
    (void)state;
    /* splitmix64 from state 0: the published first outputs. */
    pk_rng rng;
    pk_rng_seed(&rng, 0);
    assert_true(rng.s[0] == 0xe220a8397b1dcdafull);
    assert_true(rng.s[1] == 0x6e789e6aa1b965f4ull);
    assert_true(rng.s[2] == 0x06c45d188009454full);
    assert_true(rng.s[3] == 0xf88bb8a8724c81ecull);
    /* xoshiro256** from state {1, 2, 3, 4}: rotl(2 * 5, 7) * 9 = 11520, then 0, 1509978240. */
    pk_rng known = {{1, 2, 3, 4}};
    assert_true(pk_rng_next(&known) == 11520ull);
    assert_true(pk_rng_next(&known) == 0ull);
    assert_true(pk_rng_next(&known) == 1509978240ull);
}

static void test_rng_seeded_and_uniform(void **state)
{
    (void)state;
    pk_rng a, b, c;
    pk_rng_seed(&a, 42);
    pk_rng_seed(&b, 42);
    pk_rng_seed(&c, 43);
    int differs = 0;
    double sum = 0.0;
    for (int i = 0; i < 10000; i++) {
        uint64_t va = pk_rng_next(&a);
        assert_true(va == pk_rng_next(&b));
        differs |= va != pk_rng_next(&c);
        double u = pk_rng_uniform(&a);
        pk_rng_uniform(&b);
        assert_true(u >= 0.0 && u < 1.0);
        sum += u;
    }
    assert_true(differs);
    assert_true(fabs(sum / 10000.0 - 0.5) < 0.02);
}

static void test_greedy_is_argmax(void **state)
{
    pk_rng rng;
    pk_rng_seed(&rng, 7);
    float logits[VOCAB];
    pk_sampling p = greedy();
    for (int trial = 0; trial < 50; trial++) {
        random_logits(&rng, logits, VOCAB);
        assert_int_equal(sample(state, &p, logits, VOCAB, NULL, NULL), argmax(logits, VOCAB));
    }
    /* Ties: the lowest id. */
    float tied[4] = {1.0f, 3.0f, 3.0f, -2.0f};
    assert_int_equal(sample(state, &p, tied, 4, NULL, NULL), 1);
}

static void test_top_k_one_is_greedy(void **state)
{
    pk_rng rng, draw;
    pk_rng_seed(&rng, 8);
    pk_rng_seed(&draw, 9);
    float logits[VOCAB];
    pk_sampling p = pk_sampling_default();
    p.top_k = 1;
    p.temperature = 1.3f;
    for (int trial = 0; trial < 50; trial++) {
        random_logits(&rng, logits, VOCAB);
        assert_int_equal(sample(state, &p, logits, VOCAB, NULL, &draw), argmax(logits, VOCAB));
    }
    /* top_k = 1 on a tie also picks the lowest id, like greedy. */
    float tied[3] = {0.5f, 2.0f, 2.0f};
    assert_int_equal(sample(state, &p, tied, 3, NULL, &draw), 1);
}

static void test_seeded_sampling_is_reproducible(void **state)
{
    pk_rng input;
    pk_rng_seed(&input, 11);
    float logits[VOCAB];
    random_logits(&input, logits, VOCAB);
    pk_sampling p = {0.8f, 20, 0.9f, 0.01f, 1.1f, 0.2f, 0.1f};
    int32_t history_out[5] = {3, 3, 9, 60, 1};
    pk_token_history h = {history_out, 2, history_out, 5};
    int32_t first[200];
    pk_rng rng;
    pk_rng_seed(&rng, 1234);
    for (int i = 0; i < 200; i++)
        first[i] = sample(state, &p, logits, VOCAB, &h, &rng);
    pk_rng_seed(&rng, 1234);
    for (int i = 0; i < 200; i++)
        assert_int_equal(sample(state, &p, logits, VOCAB, &h, &rng), first[i]);
    pk_rng_seed(&rng, 1235);
    int differs = 0;
    for (int i = 0; i < 200; i++)
        differs |= sample(state, &p, logits, VOCAB, &h, &rng) != first[i];
    assert_true(differs);
}

static void test_distribution_follows_softmax(void **state)
{
    const double probs[4] = {0.1, 0.2, 0.3, 0.4};
    float logits[4];
    logits_from_probs(probs, logits, 4);
    pk_sampling p = pk_sampling_default();
    int seen[4];
    const int draws = 40000;
    tokens_seen(state, &p, logits, 4, draws, 5, seen);
    for (int i = 0; i < 4; i++)
        assert_true(fabs((double)seen[i] / draws - probs[i]) < 0.01);
    /* Temperature 2 flattens: p_i ∝ sqrt(probs_i). */
    p.temperature = 2.0f;
    tokens_seen(state, &p, logits, 4, draws, 6, seen);
    double norm = 0.0;
    for (int i = 0; i < 4; i++)
        norm += sqrt(probs[i]);
    for (int i = 0; i < 4; i++)
        assert_true(fabs((double)seen[i] / draws - sqrt(probs[i]) / norm) < 0.01);
}

static void test_top_k(void **state)
{
    const double probs[5] = {0.05, 0.3, 0.1, 0.35, 0.2};
    float logits[5];
    logits_from_probs(probs, logits, 5);
    pk_sampling p = pk_sampling_default();
    p.top_k = 2;
    int seen[5];
    tokens_seen(state, &p, logits, 5, 4000, 12, seen);
    assert_true(seen[1] > 0 && seen[3] > 0);
    assert_int_equal(seen[0] + seen[2] + seen[4], 0);
    /* Renormalised over the two: 0.35 / 0.65. */
    assert_true(fabs(seen[3] / 4000.0 - 0.35 / 0.65) < 0.03);
    /* Exactly k survive a tie at the boundary, lower ids first. */
    float tied[4] = {1.0f, 2.0f, 1.0f, 1.0f};
    p.top_k = 2;
    tokens_seen(state, &p, tied, 4, 2000, 13, seen);
    assert_true(seen[0] > 0 && seen[1] > 0);
    assert_int_equal(seen[2] + seen[3], 0);
    /* k beyond the vocabulary keeps everything. */
    p.top_k = 100;
    tokens_seen(state, &p, tied, 4, 2000, 14, seen);
    for (int i = 0; i < 4; i++)
        assert_true(seen[i] > 0);
}

/* Which of probs {0.5, 0.3, 0.15, 0.05} survive top_p. */
static void assert_top_p_keeps(void **state, float top_p, int kept)
{
    const double probs[4] = {0.5, 0.3, 0.15, 0.05};
    float logits[4];
    logits_from_probs(probs, logits, 4);
    pk_sampling p = pk_sampling_default();
    p.top_p = top_p;
    int seen[4];
    tokens_seen(state, &p, logits, 4, 3000, 21, seen);
    for (int i = 0; i < 4; i++) {
        if (i < kept)
            assert_true(seen[i] > 0);
        else
            assert_int_equal(seen[i], 0);
    }
}

static void test_top_p_boundaries(void **state)
{
    /* A token is kept while the mass before it is below top_p. */
    assert_top_p_keeps(state, 1e-6f, 1);
    assert_top_p_keeps(state, 0.499f, 1);
    assert_top_p_keeps(state, 0.501f, 2);
    assert_top_p_keeps(state, 0.799f, 2);
    assert_top_p_keeps(state, 0.801f, 3);
    assert_top_p_keeps(state, 0.949f, 3);
    assert_top_p_keeps(state, 0.951f, 4);
    assert_top_p_keeps(state, 1.0f, 4);
}

static void test_top_p_after_top_k(void **state)
{
    /* top_k = 2 leaves {0.5, 0.3}, renormalised {0.625, 0.375}: top_p 0.6 keeps the first only. */
    const double probs[4] = {0.5, 0.3, 0.15, 0.05};
    float logits[4];
    logits_from_probs(probs, logits, 4);
    pk_sampling p = pk_sampling_default();
    p.top_k = 2;
    p.top_p = 0.6f;
    int seen[4];
    tokens_seen(state, &p, logits, 4, 1000, 22, seen);
    assert_int_equal(seen[0], 1000);
}

static void test_min_p(void **state)
{
    const double probs[4] = {0.5, 0.3, 0.15, 0.05};
    float logits[4];
    logits_from_probs(probs, logits, 4);
    pk_sampling p = pk_sampling_default();
    int seen[4];
    p.min_p = 0.2f; /* threshold 0.1: drops 0.05 */
    tokens_seen(state, &p, logits, 4, 3000, 31, seen);
    assert_true(seen[0] > 0 && seen[1] > 0 && seen[2] > 0);
    assert_int_equal(seen[3], 0);
    p.min_p = 0.5f; /* threshold 0.25: keeps 0.5 and 0.3 */
    tokens_seen(state, &p, logits, 4, 3000, 32, seen);
    assert_true(seen[0] > 0 && seen[1] > 0);
    assert_int_equal(seen[2] + seen[3], 0);
}

static void test_repetition_penalty(void **state)
{
    pk_sampling p = greedy();
    p.repetition_penalty = 2.0f;
    float logits[3] = {2.0f, -1.0f, 1.9f};
    int32_t prompt[3] = {0, 0, 0}; /* repeated ids are penalised once: 2.0 -> 1.0 */
    pk_token_history h = {prompt, 3, NULL, 0};
    assert_int_equal(sample(state, &p, logits, 3, &h, NULL), 2);
    /* A negative logit is multiplied: -1 -> -2, below the other candidates either way. */
    float negative[3] = {-1.0f, -1.5f, -3.0f};
    int32_t out[1] = {0};
    pk_token_history ho = {NULL, 0, out, 1};
    assert_int_equal(sample(state, &p, negative, 3, &ho, NULL), 1);
    /* The marks are cleared between calls: without history, no penalty. */
    assert_int_equal(sample(state, &p, logits, 3, NULL, NULL), 0);
    /* logits itself is not modified. */
    assert_true(logits[0] == 2.0f && negative[0] == -1.0f);
}

static void test_presence_and_frequency_penalties(void **state)
{
    float logits[2] = {1.0f, 0.8f};
    int32_t once[1] = {0}, twice[2] = {0, 0};
    pk_sampling p = greedy();
    p.presence_penalty = 0.5f;
    pk_token_history out_once = {NULL, 0, once, 1};
    assert_int_equal(sample(state, &p, logits, 2, &out_once, NULL), 1);
    /* Presence and frequency look at the output only. */
    pk_token_history prompt_only = {twice, 2, NULL, 0};
    assert_int_equal(sample(state, &p, logits, 2, &prompt_only, NULL), 0);

    p = greedy();
    p.frequency_penalty = 0.15f;
    assert_int_equal(sample(state, &p, logits, 2, &out_once, NULL), 0);  /* 0.85 > 0.8 */
    pk_token_history out_twice = {NULL, 0, twice, 2};
    assert_int_equal(sample(state, &p, logits, 2, &out_twice, NULL), 1); /* 0.7 < 0.8 */
    /* Ids outside the row are ignored. */
    int32_t strange[3] = {-5, 2, 1000};
    pk_token_history odd = {strange, 3, strange, 3};
    assert_int_equal(sample(state, &p, logits, 2, &odd, NULL), 0);
}

static void test_padding_nan_and_infinity(void **state)
{
    pk_rng rng;
    pk_rng_seed(&rng, 3);
    float logits[8] = {0.1f, NAN, 0.2f, -INFINITY, 0.0f, 0.3f, 50.0f, 60.0f};
    pk_sampling p = pk_sampling_default();
    int seen[6];
    /* The last two rows are "padding": passing n_logits = 6 keeps them out. */
    tokens_seen(state, &p, logits, 6, 3000, 4, seen);
    assert_int_equal(seen[1], 0);
    assert_int_equal(seen[3], 0);
    assert_true(seen[0] > 0 && seen[2] > 0 && seen[4] > 0 && seen[5] > 0);
    pk_sampling g = greedy();
    assert_int_equal(sample(state, &g, logits, 6, NULL, NULL), 5);

    float dead[3] = {NAN, -INFINITY, NAN};
    int32_t token;
    pio_error err;
    assert_int_equal(pk_sampler_sample(*state, &p, dead, 3, NULL, &rng, &token, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "no finite logit"));
}

static void test_extreme_temperature_and_infinity(void **state)
{
    float logits[4] = {1.0f, 3.0f, 2.0f, -1.0f};
    pk_sampling p = pk_sampling_default();
    p.temperature = 1e-30f; /* (logit - max) / T: no inf - inf, so this is greedy */
    int seen[4];
    tokens_seen(state, &p, logits, 4, 200, 41, seen);
    assert_int_equal(seen[1], 200);
    p.temperature = 1e30f; /* almost uniform */
    tokens_seen(state, &p, logits, 4, 4000, 42, seen);
    for (int i = 0; i < 4; i++)
        assert_true(fabs(seen[i] / 4000.0 - 0.25) < 0.03);
    float with_inf[3] = {1.0f, INFINITY, 2.0f};
    p = pk_sampling_default();
    tokens_seen(state, &p, with_inf, 3, 100, 43, seen);
    assert_int_equal(seen[1], 100);
}

static void test_rejects_bad_arguments(void **state)
{
    float logits[4] = {0, 1, 2, 3};
    int32_t token;
    pk_rng rng;
    pk_rng_seed(&rng, 1);
    pk_sampling bad[6] = {pk_sampling_default(), pk_sampling_default(), pk_sampling_default(),
                          pk_sampling_default(), pk_sampling_default(), pk_sampling_default()};
    bad[0].temperature = -1.0f;
    bad[1].top_p = 0.0f;
    bad[2].top_p = 1.5f;
    bad[3].min_p = 1.0f;
    bad[4].repetition_penalty = 0.0f;
    bad[5].top_k = -1;
    for (int i = 0; i < 6; i++)
        assert_int_equal(pk_sampler_sample(*state, &bad[i], logits, 4, NULL, &rng, &token, NULL),
                         PIO_ERR_INVALID_ARGUMENT);
    pk_sampling p = pk_sampling_default();
    assert_int_equal(pk_sampler_sample(*state, &p, logits, VOCAB + 1, NULL, &rng, &token, NULL),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_sampler_sample(*state, &p, logits, 0, NULL, &rng, &token, NULL),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_sampler_sample(*state, &p, logits, 4, NULL, NULL, &token, NULL),
                     PIO_ERR_INVALID_ARGUMENT); /* sampling needs a generator */
    pk_sampler *none = NULL;
    assert_int_equal(pk_sampler_create(0, &none, NULL), PIO_ERR_INVALID_ARGUMENT);
    assert_null(none);
}

/* ------------------------------------------------------------------------------------------ */
/* pk_sample on the CPU backend: the op against pk_sampler_sample                             */
/* ------------------------------------------------------------------------------------------ */

/* A batch of rows for pk_sample, on the host (the CPU backend's memory). */
typedef struct sample_batch {
    int64_t rows, width, n_valid, n_prompt, n_output;
    float *logits, *params;
    int32_t *prompt, *output, *ids;
    int64_t *uniforms;
} sample_batch;

static sample_batch batch_alloc(int64_t rows, int64_t width, int64_t n_valid, int64_t n_prompt,
                                int64_t n_output)
{
    sample_batch b = {rows, width, n_valid, n_prompt, n_output, NULL, NULL, NULL, NULL, NULL,
                      NULL};
    b.logits = calloc((size_t)(rows * width), sizeof *b.logits);
    b.params = calloc((size_t)(rows * PK_SAMPLE_PARAM_COUNT), sizeof *b.params);
    b.prompt = calloc((size_t)(rows * n_prompt + 1), sizeof *b.prompt);
    b.output = calloc((size_t)(rows * n_output + 1), sizeof *b.output);
    b.ids = calloc((size_t)rows, sizeof *b.ids);
    b.uniforms = calloc((size_t)rows, sizeof *b.uniforms);
    assert_true(b.logits && b.params && b.prompt && b.output && b.ids && b.uniforms);
    return b;
}

static void batch_free(sample_batch *b)
{
    free(b->logits);
    free(b->params);
    free(b->prompt);
    free(b->output);
    free(b->ids);
    free(b->uniforms);
}

static pio_status run_op(pk_context *ctx, sample_batch *b, pio_error *err)
{
    pk_tensor ids = pk_tensor_host(b->ids, PIO_DTYPE_I32, 1, b->rows);
    pk_tensor logits = pk_tensor_host(b->logits, PIO_DTYPE_F32, b->rows, b->width);
    pk_tensor params = pk_tensor_host(b->params, PIO_DTYPE_F32, b->rows, PK_SAMPLE_PARAM_COUNT);
    pk_tensor prompt = pk_tensor_host(b->prompt, PIO_DTYPE_I32, b->rows, b->n_prompt);
    pk_tensor output = pk_tensor_host(b->output, PIO_DTYPE_I32, b->rows, b->n_output);
    pk_tensor uniforms = pk_tensor_host(b->uniforms, PIO_DTYPE_I64, 1, b->rows);
    return pk_sample(ctx, &ids, &logits, b->n_valid, &params, b->n_prompt ? &prompt : NULL,
                     b->n_output ? &output : NULL, &uniforms, err);
}

/* Logits of a few shapes: uniform, peaked like a language model's, rounded to bf16 (ties),
 * all equal, mostly -inf, with NaN/inf/-0, ramps. Columns past n_valid get huge values that
 * must never win. */
static void fill_row(pk_rng *rng, float *x, int64_t width, int64_t n_valid, int kind)
{
    for (int64_t i = 0; i < width; i++) {
        double u = pk_rng_uniform(rng);
        float v = (float)(u * 20.0 - 10.0);
        switch (kind) {
        case 1: v = (float)(u * 6.0 - 4.0) + (pk_rng_next(rng) % 50 == 0 ? 12.0f : 0.0f); break;
        case 2: v = pio_bf16_to_f32(pio_f32_to_bf16((float)(u * 8.0 - 4.0))); break;
        case 3: v = 0.25f; break;
        case 4: v = u < 0.85 ? -INFINITY : v; break;
        case 5: v = u < 0.05 ? NAN : u < 0.07 ? INFINITY : u < 0.1 ? -INFINITY : u < 0.2 ? -0.0f
                                                                                   : v; break;
        case 6: v = (float)i * 0.01f; break;
        default: break;
        }
        x[i] = i < n_valid ? v : 1e30f;
    }
}

static void random_sampling(pk_rng *rng, pk_sampling *p, int64_t n_valid)
{
    static const float temps[] = {0.0f, 0.3f, 0.7f, 1.0f, 1.5f, 1e-30f};
    static const float top_ps[] = {1.0f, 1.0f, 0.95f, 0.5f, 0.999f, 0.2f};
    static const float min_ps[] = {0.0f, 0.0f, 0.05f, 0.5f};
    const int32_t top_ks[] = {0, 0, 1, 2, 5, 20, (int32_t)n_valid - 1, (int32_t)n_valid + 7};
    *p = pk_sampling_default();
    p->temperature = temps[pk_rng_next(rng) % 6];
    p->top_k = top_ks[pk_rng_next(rng) % 8];
    p->top_p = top_ps[pk_rng_next(rng) % 6];
    p->min_p = min_ps[pk_rng_next(rng) % 4];
    if (pk_rng_next(rng) % 2) {
        p->repetition_penalty = pk_rng_next(rng) % 2 ? 1.3f : 0.8f;
        p->presence_penalty = 0.4f;
        p->frequency_penalty = 0.3f;
    }
}

/* Random rows, parameters and histories (repeated ids, -1 padding, ids beyond n_valid); the
 * uniforms drawn by pk_sampling_uniform_bits, and for each row the token pk_sampler_sample
 * picks from the same generator state, which must also leave the generator in step. */
static void random_batch(pk_rng *rng, sample_batch *b, int32_t *want)
{
    pk_sampler *ref = NULL;
    assert_int_equal(pk_sampler_create((int32_t)b->n_valid, &ref, NULL), PIO_OK);
    for (int64_t r = 0; r < b->rows; r++) {
        float *row = b->logits + r * b->width;
        fill_row(rng, row, b->width, b->n_valid, (int)(pk_rng_next(rng) % 8));
        int32_t *prompt = b->prompt + r * b->n_prompt, *output = b->output + r * b->n_output;
        for (int64_t j = 0; j < b->n_prompt; j++)
            prompt[j] = (int32_t)(pk_rng_next(rng) % (uint64_t)(b->n_valid + 4)) - 2;
        int32_t spacing = (int32_t)(b->n_valid / 6); /* few distinct ids: repeats */
        for (int64_t j = 0; j < b->n_output; j++)
            output[j] = j % 4 == 3 ? -1 : (int32_t)(pk_rng_next(rng) % 6) * spacing;
        pk_sampling p;
        random_sampling(rng, &p, b->n_valid);
        assert_int_equal(pk_sampling_to_row(&p, b->params + r * PK_SAMPLE_PARAM_COUNT, NULL),
                         PIO_OK);
        pk_rng before = *rng;
        b->uniforms[r] = pk_sampling_uniform_bits(&p, rng);
        pk_token_history h = {prompt, b->n_prompt, output, b->n_output};
        pio_status st = pk_sampler_sample(ref, &p, row, (int32_t)b->n_valid, &h, &before,
                                          &want[r], NULL);
        if (st != PIO_OK)
            want[r] = -1;
        else
            assert_memory_equal(before.s, rng->s, sizeof rng->s); /* drew in step */
    }
    pk_sampler_destroy(ref);
}

static void test_op_matches_sampler(void **state)
{
    (void)state;
    pk_context *ctx = NULL;
    assert_int_equal(pk_context_create(PK_DEVICE_CPU, NULL, &ctx, NULL), PIO_OK);
    pk_rng rng;
    pk_rng_seed(&rng, 2024);
    static const int64_t widths[] = {1, 7, 64, 1000, 5000};
    int invalid = 0;
    for (size_t w = 0; w < sizeof widths / sizeof *widths; w++)
        for (int rep = 0; rep < 4; rep++) {
            int64_t width = widths[w], n_valid = width - (rep % 2) * (width / 8);
            sample_batch b = batch_alloc(40, width, n_valid, rep * 3, rep * 5);
            int32_t want[40];
            random_batch(&rng, &b, want);
            pio_error err;
            pio_status st = run_op(ctx, &b, &err);
            if (st != PIO_OK)
                print_error("pk_sample: %s\n", err.message);
            assert_int_equal(st, PIO_OK);
            for (int64_t r = 0; r < b.rows; r++) {
                if (b.ids[r] != want[r])
                    print_error("width %lld row %lld: got %d, want %d\n", (long long)width,
                                (long long)r, b.ids[r], want[r]);
                assert_int_equal(b.ids[r], want[r]);
                assert_true(b.ids[r] < n_valid);
                invalid += want[r] < 0;
            }
            batch_free(&b);
        }
    assert_true(invalid > 0); /* rows of -inf (kind 4, a width of 1) cannot be sampled */
    pk_context_destroy(ctx);
}

/* One row through the op; ids[0] comes back. */
static int32_t op_one(pk_context *ctx, const float *logits, int64_t width, int64_t n_valid,
                      const pk_sampling *p, const int32_t *prompt, int64_t n_prompt,
                      const int32_t *output, int64_t n_output, int64_t uniform)
{
    sample_batch b = batch_alloc(1, width, n_valid, n_prompt, n_output);
    memcpy(b.logits, logits, (size_t)width * sizeof *logits);
    if (n_prompt)
        memcpy(b.prompt, prompt, (size_t)n_prompt * sizeof *prompt);
    if (n_output)
        memcpy(b.output, output, (size_t)n_output * sizeof *output);
    assert_int_equal(pk_sampling_to_row(p, b.params, NULL), PIO_OK);
    b.uniforms[0] = uniform;
    assert_int_equal(run_op(ctx, &b, NULL), PIO_OK);
    int32_t id = b.ids[0];
    batch_free(&b);
    return id;
}

static void test_op_rules(void **state)
{
    (void)state;
    pk_context *ctx = NULL;
    assert_int_equal(pk_context_create(PK_DEVICE_CPU, NULL, &ctx, NULL), PIO_OK);
    pk_sampling g = greedy(), p = pk_sampling_default();
    const int64_t half = (int64_t)1 << 52; /* u = 0.5 */
    /* Ties go to the lower id; the padding past n_valid never wins. */
    float tied[6] = {1.0f, 3.0f, 3.0f, -2.0f, 99.0f, 99.0f};
    assert_int_equal(op_one(ctx, tied, 6, 4, &g, NULL, 0, NULL, 0, 0), 1);
    /* NaN reads as -inf, +inf as the largest float. */
    float odd[4] = {NAN, 1.0f, INFINITY, 2.0f};
    assert_int_equal(op_one(ctx, odd, 4, 4, &g, NULL, 0, NULL, 0, 0), 2);
    p.top_k = 2;
    assert_int_equal(op_one(ctx, odd, 4, 4, &p, NULL, 0, NULL, 0, half), 2);
    /* Repeated history ids are penalised once: 2.0 / 2 = 1.0 < 1.9; -1 pads. */
    g.repetition_penalty = 2.0f;
    float pen[3] = {2.0f, -1.0f, 1.9f};
    int32_t history[5] = {0, 0, -1, 0, 7};
    assert_int_equal(op_one(ctx, pen, 3, 3, &g, history, 5, NULL, 0, 0), 2);
    /* Frequency counts output occurrences: 1.0 - 2 * 0.15 = 0.7 < 0.8. */
    g = greedy();
    g.frequency_penalty = 0.15f;
    float two[2] = {1.0f, 0.8f};
    int32_t twice[3] = {0, -1, 0};
    assert_int_equal(op_one(ctx, two, 2, 2, &g, NULL, 0, twice, 1, 0), 0);
    assert_int_equal(op_one(ctx, two, 2, 2, &g, NULL, 0, twice, 3, 0), 1);
    assert_int_equal(op_one(ctx, two, 2, 2, &g, twice, 3, NULL, 0, 0), 0); /* prompt: no */
    /* Rows that cannot be sampled come back as -1, without failing the op. */
    float dead[2] = {NAN, -INFINITY};
    p = pk_sampling_default();
    assert_int_equal(op_one(ctx, dead, 2, 2, &p, NULL, 0, NULL, 0, half), -1);
    assert_int_equal(op_one(ctx, two, 2, 2, &p, NULL, 0, NULL, 0, (int64_t)1 << 53), -1);
    assert_int_equal(op_one(ctx, two, 2, 2, &p, NULL, 0, NULL, 0, -1), -1);
    g = greedy(); /* greedy rows ignore the uniform */
    assert_int_equal(op_one(ctx, two, 2, 2, &g, NULL, 0, NULL, 0, -1), 0);
    /* The draw: u = 0 takes the first candidate in id order, u just below 1 the last. */
    float flat[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    assert_int_equal(op_one(ctx, flat, 4, 4, &p, NULL, 0, NULL, 0, 0), 0);
    assert_int_equal(op_one(ctx, flat, 4, 4, &p, NULL, 0, NULL, 0, ((int64_t)1 << 53) - 1), 3);
    pk_context_destroy(ctx);
}

static void test_op_bad_params_rows(void **state)
{
    (void)state;
    pk_context *ctx = NULL;
    assert_int_equal(pk_context_create(PK_DEVICE_CPU, NULL, &ctx, NULL), PIO_OK);
    sample_batch b = batch_alloc(6, 3, 3, 0, 0);
    for (int64_t r = 0; r < 6; r++) {
        pk_sampling p = greedy();
        assert_int_equal(pk_sampling_to_row(&p, b.params + r * PK_SAMPLE_PARAM_COUNT, NULL),
                         PIO_OK);
        b.logits[r * 3 + 1] = 1.0f;
    }
    b.params[1 * PK_SAMPLE_PARAM_COUNT + PK_SAMPLE_TOP_K] = 2.5f;
    b.params[2 * PK_SAMPLE_PARAM_COUNT + PK_SAMPLE_TEMPERATURE] = -1.0f;
    b.params[3 * PK_SAMPLE_PARAM_COUNT + PK_SAMPLE_TOP_P] = NAN;
    b.params[4 * PK_SAMPLE_PARAM_COUNT + PK_SAMPLE_REPETITION_PENALTY] = 0.0f;
    b.params[5 * PK_SAMPLE_PARAM_COUNT + PK_SAMPLE_TOP_K] = 3e9f; /* huge k: keeps all, valid */
    assert_int_equal(run_op(ctx, &b, NULL), PIO_OK);
    const int32_t want[6] = {1, -1, -1, -1, -1, 1};
    for (int r = 0; r < 6; r++)
        assert_int_equal(b.ids[r], want[r]);
    batch_free(&b);
    pk_context_destroy(ctx);
}

static void test_op_argument_checks(void **state)
{
    (void)state;
    pk_context *ctx = NULL;
    assert_int_equal(pk_context_create(PK_DEVICE_CPU, NULL, &ctx, NULL), PIO_OK);
    float logits[8] = {0}, params[2 * PK_SAMPLE_PARAM_COUNT] = {0};
    int32_t ids[2], history[4] = {0};
    int64_t uniforms[2] = {0};
    pk_tensor t_ids = pk_tensor_host(ids, PIO_DTYPE_I32, 1, 2);
    pk_tensor t_logits = pk_tensor_host(logits, PIO_DTYPE_F32, 2, 4);
    pk_tensor t_params = pk_tensor_host(params, PIO_DTYPE_F32, 2, PK_SAMPLE_PARAM_COUNT);
    pk_tensor t_hist = pk_tensor_host(history, PIO_DTYPE_I32, 2, 2);
    pk_tensor t_uni = pk_tensor_host(uniforms, PIO_DTYPE_I64, 1, 2);
    pk_tensor wrong_uni = pk_tensor_host(uniforms, PIO_DTYPE_I32, 1, 2);
    pk_tensor short_params = pk_tensor_host(params, PIO_DTYPE_F32, 2, PK_SAMPLE_PARAM_COUNT - 1);
    pk_tensor ids_over_hist = pk_tensor_host(history, PIO_DTYPE_I32, 1, 2);
    pio_error err;
    for (int r = 0; r < 2; r++) {
        pk_sampling g = greedy();
        pk_sampling_to_row(&g, params + r * PK_SAMPLE_PARAM_COUNT, NULL);
    }
    assert_int_equal(pk_sample(ctx, &t_ids, &t_logits, 4, &t_params, &t_hist, &t_hist, &t_uni,
                               &err), PIO_OK);
    assert_int_equal(pk_sample(ctx, &t_ids, &t_logits, 5, &t_params, NULL, NULL, &t_uni, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "n_valid"));
    assert_int_equal(pk_sample(ctx, &t_ids, &t_logits, 0, &t_params, NULL, NULL, &t_uni, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_sample(ctx, &t_ids, &t_logits, 4, &t_params, NULL, NULL, &wrong_uni,
                               &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_sample(ctx, &t_ids, &t_logits, 4, &short_params, NULL, NULL, &t_uni,
                               &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_sample(ctx, &ids_over_hist, &t_logits, 4, &t_params, &t_hist, NULL,
                               &t_uni, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "overlaps"));
    pk_tensor none = pk_tensor_host(ids, PIO_DTYPE_I32, 1, 0);
    pk_tensor no_rows = pk_tensor_host(logits, PIO_DTYPE_F32, 0, 4);
    pk_tensor no_params = pk_tensor_host(params, PIO_DTYPE_F32, 0, PK_SAMPLE_PARAM_COUNT);
    pk_tensor no_uni = pk_tensor_host(uniforms, PIO_DTYPE_I64, 1, 0);
    assert_int_equal(pk_sample(ctx, &none, &no_rows, 4, &no_params, NULL, NULL, &no_uni, &err),
                     PIO_OK);
    pk_context_destroy(ctx);
}

/* Row packing round-trips; pk_sample_key orders like the host sampler's comparison. */
static void test_param_rows_and_keys(void **state)
{
    (void)state;
    pk_sampling p = {0.7f, 40, 0.9f, 0.05f, 1.1f, 0.2f, 0.3f}, back;
    float row[PK_SAMPLE_PARAM_COUNT];
    assert_int_equal(pk_sampling_to_row(&p, row, NULL), PIO_OK);
    assert_true(pk_sampling_from_row(row, &back));
    assert_memory_equal(&p, &back, sizeof p);
    p.top_p = 0.0f;
    assert_int_equal(pk_sampling_to_row(&p, row, NULL), PIO_ERR_INVALID_ARGUMENT);
    pk_rng rng;
    pk_rng_seed(&rng, 77);
    pk_sampling g = greedy();
    assert_true(pk_sampling_uniform_bits(&g, &rng) == 0); /* greedy draws nothing */
    pk_rng copy = rng;
    assert_true(pk_sampling_uniform_bits(&back, &rng) == (int64_t)pk_rng_uniform_bits(&copy));

    static const float values[] = {-INFINITY, -FLT_MAX, -3.5f, -1e-40f, -0.0f, 0.0f, 1e-40f,
                                   2.0f, 2.0f, FLT_MAX};
    const int n = (int)(sizeof values / sizeof *values);
    for (int a = 0; a < n; a++)
        for (int b = 0; b < n; b++)
            for (int32_t ia = 0; ia < 3; ia++)
                for (int32_t ib = 0; ib < 3; ib++) {
                    float x = values[a], y = values[b];
                    int first = x > y || (x == y && ia < ib); /* sampler.c's `better` */
                    uint64_t kx = pk_sample_key(x, ia), ky = pk_sample_key(y, ib);
                    assert_int_equal(kx > ky, first);
                    assert_true(kx != 0);
                    assert_int_equal(pk_sample_key_id(kx), ia);
                    assert_true(pk_sample_key_logit(kx) == x);
                }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rng_reference_values),
        cmocka_unit_test(test_rng_seeded_and_uniform),
        cmocka_unit_test(test_greedy_is_argmax),
        cmocka_unit_test(test_top_k_one_is_greedy),
        cmocka_unit_test(test_seeded_sampling_is_reproducible),
        cmocka_unit_test(test_distribution_follows_softmax),
        cmocka_unit_test(test_top_k),
        cmocka_unit_test(test_top_p_boundaries),
        cmocka_unit_test(test_top_p_after_top_k),
        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_repetition_penalty),
        cmocka_unit_test(test_presence_and_frequency_penalties),
        cmocka_unit_test(test_padding_nan_and_infinity),
        cmocka_unit_test(test_extreme_temperature_and_infinity),
        cmocka_unit_test(test_rejects_bad_arguments),
        cmocka_unit_test(test_op_matches_sampler),
        cmocka_unit_test(test_op_rules),
        cmocka_unit_test(test_op_bad_params_rows),
        cmocka_unit_test(test_op_argument_checks),
        cmocka_unit_test(test_param_rows_and_keys),
    };
    return cmocka_run_group_tests_name("kernels_sampler", tests, setup, teardown);
}
