/*
 * Token sampling on the host from one row of F32 logits, and the seeded generator it draws from.
 *
 * Order of the steps, as Hugging Face's generate applies them:
 *   1. penalties: repetition (HF, multiplicative) on every token of prompt and output; presence
 *      and frequency (OpenAI, additive) on the output tokens (a penalised logit that overflows
 *      reads like an input logit: NaN as -inf, +inf as the largest float);
 *   2. temperature 0 -> greedy: the highest penalised logit, lowest id among ties;
 *   3. logits / temperature; top-k; softmax; top-p; min-p; one draw from what is left.
 * top-k keeps exactly k tokens (ties broken by lower id), so top_k = 1 is greedy. top-p keeps the
 * most probable tokens while the mass of those before them is below top_p (always at least one).
 * min-p keeps tokens whose probability is at least min_p times the largest.
 *
 * The generator is xoshiro256** seeded through splitmix64: the same seed, logits and history give
 * the same token on every machine.
 *
 * pk_sample (ops.h) runs the same step for a batch of rows on a compute backend, the uniforms
 * drawn by the caller (pk_sampling_uniform_bits); the CPU backend runs this sampler.
 */
#ifndef PIO_KERNELS_SAMPLER_H
#define PIO_KERNELS_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "pio/error.h"
#include "pio/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pk_rng {
    uint64_t s[4];
} pk_rng;

void pk_rng_seed(pk_rng *rng, uint64_t seed);
uint64_t pk_rng_next(pk_rng *rng);
/* Uniform in [0, 1) with 53 random bits. */
double pk_rng_uniform(pk_rng *rng);
/* The 53 random bits pk_rng_uniform would use (it returns them times 2^-53). */
uint64_t pk_rng_uniform_bits(pk_rng *rng);

typedef struct pk_sampling {
    float temperature;        /* 0 = greedy; otherwise > 0 */
    int32_t top_k;            /* 0 = off */
    float top_p;              /* (0, 1]; 1 = off */
    float min_p;              /* [0, 1); 0 = off */
    float repetition_penalty; /* > 0; 1 = off */
    float presence_penalty;   /* 0 = off */
    float frequency_penalty;  /* 0 = off */
} pk_sampling;

/* Temperature 1 and every filter and penalty off (pure sampling from softmax(logits)). */
pk_sampling pk_sampling_default(void);

/* Tokens the penalties look at; ids outside the logits row are ignored. */
typedef struct pk_token_history {
    const int32_t *prompt;
    int64_t n_prompt;
    const int32_t *output;
    int64_t n_output;
} pk_token_history;

typedef struct pk_sampler pk_sampler;

/* Working memory for rows of up to n_vocab logits, allocated once. */
pio_status pk_sampler_create(int32_t n_vocab, pk_sampler **out, pio_error *err);
void pk_sampler_destroy(pk_sampler *sampler);

/*
 * Picks a token id in [0, n_logits) (n_logits <= the sampler's n_vocab; pass the real vocabulary
 * size so padding rows of the embedding are never chosen). logits is not modified; NaN counts as
 * -inf and +inf as the largest float. history may be NULL. rng may be NULL only for greedy
 * sampling. A row without a finite logit, or parameters out of range, is
 * PIO_ERR_INVALID_ARGUMENT.
 */
pio_status pk_sampler_sample(pk_sampler *sampler, const pk_sampling *params, const float *logits,
                             int32_t n_logits, const pk_token_history *history, pk_rng *rng,
                             int32_t *token, pio_error *err);

/*
 * The same with the uniform given rather than drawn: u in [0, 1) is what pk_rng_uniform would
 * have returned at the draw (greedy parameters ignore it). pk_sampler_sample is this function
 * with u drawn from rng.
 */
pio_status pk_sampler_sample_uniform(pk_sampler *sampler, const pk_sampling *params,
                                     const float *logits, int32_t n_logits,
                                     const pk_token_history *history, double u, int32_t *token,
                                     pio_error *err);

/* A sampler in memory the caller provides (the CPU backend keeps one per thread in its
 * workspace): pk_sampler_bytes(n_vocab) bytes, 16-byte aligned, owned by the caller and valid
 * while the sampler is used; no pk_sampler_destroy. */
size_t pk_sampler_bytes(int32_t n_vocab);
pk_sampler *pk_sampler_init(void *memory, int32_t n_vocab);

/* ------------------------------------------------------------------------------------------ */
/* Filling the operands of pk_sample (ops.h), the batched sampling op of the compute layer    */
/* ------------------------------------------------------------------------------------------ */

/* Packs params into one row of pk_sample's params tensor (PK_SAMPLE_PARAM_COUNT floats, in the
 * column order of ops.h's pk_sample_param); PIO_ERR_INVALID_ARGUMENT for parameters
 * pk_sampler_sample would refuse. top_k travels as a float: exact below 2^24. */
pio_status pk_sampling_to_row(const pk_sampling *params, float *row, pio_error *err);

/* A row's entry of pk_sample's uniforms tensor, drawn in step with pk_sampler_sample: the 53
 * random bits of the uniform pk_sampler_sample would draw with these parameters, or 0, leaving
 * rng untouched, when they are greedy (temperature 0 or top_k 1), which draw nothing. */
int64_t pk_sampling_uniform_bits(const pk_sampling *params, pk_rng *rng);

#ifdef __cplusplus
}
#endif

#endif
