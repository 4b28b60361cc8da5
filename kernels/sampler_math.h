/*
 * The arithmetic of one sampling step, shared by the host sampler (sampler.c, which the CPU
 * backend's pk_sample runs) and the CUDA backend's pk_sample (kernels/cuda/cuda_sample.cu), so
 * that both compute the same penalised logits, candidate order and weights operation for
 * operation. Private to the compute layer (not installed).
 *
 * The header is C11 and CUDA C++: every function is static inline, and __host__ __device__
 * under nvcc. Device code spells its float products and sums with the _rn intrinsics, which
 * nvcc never contracts into an FMA; the host compiles with -std=c11, where GCC does not
 * contract either, and keeps one operation per statement for compilers that contract within
 * an expression.
 */
#ifndef PIO_KERNELS_SAMPLER_MATH_H
#define PIO_KERNELS_SAMPLER_MATH_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/ops.h"
#include "kernels/sampler.h"

#ifdef __CUDACC__
#define PK_SAMPLE_FN static inline __host__ __device__
#else
#define PK_SAMPLE_FN static inline
#endif

/* Neither infinite nor NaN. */
PK_SAMPLE_FN int pk_sample_is_finite(float v)
{
    return fabsf(v) <= FLT_MAX;
}

/* How the sampler reads a logit: NaN counts as -inf and +inf as the largest float. */
PK_SAMPLE_FN float pk_sample_sanitize(float v)
{
    return v != v ? -INFINITY : v == INFINITY ? FLT_MAX : v;
}

/*
 * The penalties of one token that occurs in the history (prompt or output), applied once
 * however often it occurs: Hugging Face's repetition penalty (a negative logit is multiplied,
 * a positive one divided, both towards "less likely"), then for `output_count` > 0 occurrences
 * in the output OpenAI's presence and frequency penalties. The result is sanitised again, since
 * a penalty can overflow a float (a logit near FLT_MAX divided by a penalty below 1).
 */
PK_SAMPLE_FN float pk_sample_penalise(float v, float repetition, float presence, float frequency,
                                      int32_t output_count)
{
#ifdef __CUDA_ARCH__
    v = v < 0.0f ? __fmul_rn(v, repetition) : __fdiv_rn(v, repetition);
    if (output_count > 0)
        v = __fsub_rn(v, __fadd_rn(presence, __fmul_rn(frequency, (float)output_count)));
#else
    v = v < 0.0f ? v * repetition : v / repetition;
    if (output_count > 0) {
        float by_count = frequency * (float)output_count;
        float penalty = presence + by_count;
        v -= penalty;
    }
#endif
    return pk_sample_sanitize(v);
}

/* Whether the penalties leave every logit as it is (repetition 1, presence and frequency 0):
 * then the history need not be read. */
PK_SAMPLE_FN int pk_sample_penalties_off(const pk_sampling *p)
{
    return p->repetition_penalty == 1.0f && p->presence_penalty == 0.0f &&
           p->frequency_penalty == 0.0f;
}

/* Unnormalised probability exp((logit - max_logit) / temperature), in double. Subtracting
 * before dividing keeps the exponent <= 0 however small the temperature; the max_logit
 * candidate weighs exactly 1. */
PK_SAMPLE_FN double pk_sample_weight(float logit, float max_logit, float temperature)
{
    double shifted = (double)logit - (double)max_logit;
    return exp(shifted / (double)temperature);
}

/* Whether sampling with p draws a uniform: temperature 0 and top_k 1 are greedy and don't. */
PK_SAMPLE_FN int pk_sampling_draws(const pk_sampling *p)
{
    return p->temperature > 0.0f && p->top_k != 1;
}

/* The ranges pk_sampler_sample accepts. */
PK_SAMPLE_FN int pk_sampling_is_valid(const pk_sampling *p)
{
    return p->temperature >= 0.0f && pk_sample_is_finite(p->temperature) && p->top_k >= 0 &&
           p->top_p > 0.0f && p->top_p <= 1.0f && p->min_p >= 0.0f && p->min_p < 1.0f &&
           p->repetition_penalty > 0.0f && pk_sample_is_finite(p->repetition_penalty) &&
           pk_sample_is_finite(p->presence_penalty) && pk_sample_is_finite(p->frequency_penalty);
}

/*
 * One row of pk_sample's params tensor (PK_SAMPLE_PARAM_COUNT floats) as pk_sampling: 1, or 0
 * when a value is out of the ranges pk_sampler_sample accepts or top_k is not a whole number.
 * A top_k of 2^31 or more is INT32_MAX (keeps every token, as any k >= the vocabulary does).
 */
PK_SAMPLE_FN int pk_sampling_from_row(const float *row, pk_sampling *out)
{
    float k = row[PK_SAMPLE_TOP_K];
    out->temperature = row[PK_SAMPLE_TEMPERATURE];
    out->top_p = row[PK_SAMPLE_TOP_P];
    out->min_p = row[PK_SAMPLE_MIN_P];
    out->repetition_penalty = row[PK_SAMPLE_REPETITION_PENALTY];
    out->presence_penalty = row[PK_SAMPLE_PRESENCE_PENALTY];
    out->frequency_penalty = row[PK_SAMPLE_FREQUENCY_PENALTY];
    out->top_k = 0;
    if (!(k >= 0.0f) || !pk_sample_is_finite(k))
        return 0;
    if (k >= 2147483648.0f) {
        out->top_k = INT32_MAX;
    } else {
        out->top_k = (int32_t)k;
        if ((float)out->top_k != k)
            return 0;
    }
    return pk_sampling_is_valid(out);
}

/* The uniform in [0, 1) that 53 random bits stand for (pk_rng_uniform's mapping). */
PK_SAMPLE_FN double pk_sample_uniform_from_bits(uint64_t bits)
{
    return (double)bits * 0x1.0p-53;
}

enum { PK_SAMPLE_UNIFORM_BITS = 53 };

/*
 * A 64-bit key that orders candidates as the host sampler does: a larger logit first, the lower
 * id among equal logits (so -0 and +0 are the same logit). High word: the logit's bits mapped
 * to an unsigned order; low word: ~id. Every key of a logit other than NaN is non-zero, so 0
 * can mean "none". The GPU selects and sorts with these keys.
 */
PK_SAMPLE_FN uint64_t pk_sample_key(float logit, int32_t id)
{
    uint32_t bits;
    if (logit == 0.0f)
        logit = 0.0f; /* -0 -> +0 */
    memcpy(&bits, &logit, sizeof bits);
    uint32_t ordered = (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
    return ((uint64_t)ordered << 32) | (uint32_t) ~(uint32_t)id;
}

PK_SAMPLE_FN float pk_sample_key_logit(uint64_t key)
{
    uint32_t ordered = (uint32_t)(key >> 32);
    uint32_t bits = (ordered & 0x80000000u) ? ordered & 0x7fffffffu : ~ordered;
    float logit;
    memcpy(&logit, &bits, sizeof logit);
    return logit;
}

PK_SAMPLE_FN int32_t pk_sample_key_id(uint64_t key)
{
    return (int32_t) ~(uint32_t)key;
}

#endif
