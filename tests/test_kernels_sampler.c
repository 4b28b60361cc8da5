/*
 * The host sampler and its generator: greedy, top-k, top-p and min-p boundaries, penalties,
 * seeded reproducibility and the sampled distribution.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/sampler.h"

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
    };
    return cmocka_run_group_tests_name("kernels_sampler", tests, setup, teardown);
}
