/*
 * Token sampling on the host from one row of F32 logits, and the seeded generator it draws from.
 *
 * Order of the steps, as Hugging Face's generate applies them:
 *   1. penalties: repetition (HF, multiplicative) on every token of prompt and output; presence
 *      and frequency (OpenAI, additive) on the output tokens;
 *   2. temperature 0 -> greedy: the highest penalised logit, lowest id among ties;
 *   3. logits / temperature; top-k; softmax; top-p; min-p; one draw from what is left.
 * top-k keeps exactly k tokens (ties broken by lower id), so top_k = 1 is greedy. top-p keeps the
 * most probable tokens while the mass of those before them is below top_p (always at least one).
 * min-p keeps tokens whose probability is at least min_p times the largest.
 *
 * The generator is xoshiro256** seeded through splitmix64: the same seed, logits and history give
 * the same token on every machine.
 */
#ifndef PIO_KERNELS_SAMPLER_H
#define PIO_KERNELS_SAMPLER_H

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

#ifdef __cplusplus
}
#endif

#endif
