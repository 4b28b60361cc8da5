/*
 * Shared by the files of the CPU backend (kernels/cpu/); not part of the op API.
 */
#ifndef PIO_KERNELS_CPU_INTERNAL_H
#define PIO_KERNELS_CPU_INTERNAL_H

#include "kernels/backend.h"

#include <stddef.h>
#include <stdint.h>

typedef struct pk_cpu_state {
    int n_threads;
    int use_avx2;       /* AVX2 + FMA paths are taken (CPU supports them, not forced scalar) */
    float *scratch;     /* workspace shared by ops, n_threads slices of scratch_stride floats */
    size_t scratch_stride;
    int32_t *index_scratch; /* integer workspace (expert grouping), index_capacity values */
    size_t index_capacity;
} pk_cpu_state;

static inline pk_cpu_state *pk_cpu_state_of(const pk_context *ctx)
{
    return (pk_cpu_state *)ctx->state;
}

/* A workspace of n_threads slices, each of at least floats_per_thread floats, 64-byte aligned;
 * slice i starts at the returned pointer + i * (*stride). Grows (and never shrinks) on demand,
 * so steady-state calls allocate nothing. Valid until the next call. */
float *pk_cpu_scratch(pk_context *ctx, size_t floats_per_thread, size_t *stride, pio_error *err);

/* An integer workspace of at least `count` values; grows (never shrinks) like pk_cpu_scratch and
 * is valid until the next call. */
int32_t *pk_cpu_index_scratch(pk_context *ctx, size_t count, pio_error *err);

/* Element i of a BF16 or F32 row, as float. */
static inline float pk_cpu_load(const void *row, pio_dtype dtype, int64_t i)
{
    return dtype == PIO_DTYPE_BF16 ? pio_bf16_to_f32(((const uint16_t *)row)[i])
                                   : ((const float *)row)[i];
}

/* Start of row r of t, as bytes. */
static inline void *pk_cpu_row(const pk_tensor *t, int64_t r)
{
    return (char *)t->data + (size_t)(r * t->stride) * pio_dtype_size(t->dtype);
}

/* Vector kernels (kernels/cpu/cpu_vector.c); `avx2` picks the AVX2 + FMA variant. The second
 * operand is BF16 or F32 as `dtype` says. */
float pk_cpu_dot(int avx2, const float *a, const void *b, pio_dtype dtype, int64_t n);
/* y[i] += alpha * x[i]. */
void pk_cpu_axpy(int avx2, float *y, float alpha, const void *x, pio_dtype dtype, int64_t n);
/* dst[i] = float(src[i]). */
void pk_cpu_to_f32(int avx2, float *dst, const void *src, pio_dtype dtype, int64_t n);

/* Stable softmax of n values (out may be x); an all -inf row becomes uniform. */
void pk_cpu_softmax_row(float *out, const float *x, int64_t n);

/* Whether this CPU runs the AVX2 + FMA paths. */
int pk_cpu_has_avx2(void);

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PK_HAVE_X86 1
/* Functions using AVX2 intrinsics carry this attribute and run only when pk_cpu_has_avx2(). */
#define PK_AVX2 __attribute__((target("avx2,fma")))

/* Eight elements i..i+7 of a BF16 or F32 row as F32 (bf16 is the top half of an f32). */
PK_AVX2 static inline __m256 pk_avx2_load8(const void *row, pio_dtype dtype, int64_t i)
{
    if (dtype == PIO_DTYPE_BF16) {
        __m128i raw = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
    }
    return _mm256_loadu_ps((const float *)row + i);
}

PK_AVX2 static inline float pk_avx2_hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#else
#define PK_HAVE_X86 0
#endif

/* Backend entry points implemented in the files of kernels/cpu/. */
pio_status pk_cpu_matmul(pk_context *ctx, const pk_tensor *y, const pk_tensor *x,
                         const pk_tensor *w, int accumulate, pio_error *err);
pio_status pk_cpu_embedding(pk_context *ctx, const pk_tensor *out, const pk_tensor *table,
                            const pk_tensor *ids, pio_error *err);
pio_status pk_cpu_rmsnorm(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                          const pk_tensor *weight, int64_t group_width, float eps,
                          pio_error *err);
pio_status pk_cpu_rope(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                       const pk_tensor *positions, const pk_rope_params *params, pio_error *err);
pio_status pk_cpu_swiglu(pk_context *ctx, const pk_tensor *out, const pk_tensor *gate,
                         const pk_tensor *up, pio_error *err);
pio_status pk_cpu_add(pk_context *ctx, const pk_tensor *out, const pk_tensor *a,
                      const pk_tensor *b, pio_error *err);
pio_status pk_cpu_softmax(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                          pio_error *err);
pio_status pk_cpu_argmax(pk_context *ctx, const pk_tensor *ids, const pk_tensor *x,
                         pio_error *err);
pio_status pk_cpu_cast(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                       pio_error *err);
pio_status pk_cpu_fill_dummy(pk_context *ctx, const pk_tensor *out, uint64_t seed,
                             uint64_t tensor_id, float scale, float offset, pio_error *err);
pio_status pk_cpu_kv_store(pk_context *ctx, const pk_tensor *k_cache, const pk_tensor *v_cache,
                           const pk_tensor *k_new, const pk_tensor *v_new,
                           const pk_token_batch *batch, const pk_attention_params *params,
                           pio_error *err);
pio_status pk_cpu_attention(pk_context *ctx, const pk_tensor *out, const pk_tensor *q,
                            const pk_tensor *k_cache, const pk_tensor *v_cache,
                            const pk_token_batch *batch, const pk_attention_params *params,
                            pio_error *err);
pio_status pk_cpu_moe_topk_softmax(pk_context *ctx, const pk_tensor *ids,
                                   const pk_tensor *weights, const pk_tensor *logits,
                                   int normalize, pio_error *err);
pio_status pk_cpu_moe_experts(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                              const pk_tensor *gate_up, const pk_tensor *down,
                              const pk_tensor *ids, const pk_tensor *weights, int64_t n_experts,
                              pio_error *err);
pio_status pk_cpu_moe_experts_slice(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                                    const pk_tensor *gate_up, const pk_tensor *down,
                                    const pk_tensor *ids, const pk_tensor *weights,
                                    int64_t n_experts, int64_t first, int64_t n_local,
                                    int accumulate, pio_error *err);
pio_status pk_cpu_sample(pk_context *ctx, const pk_tensor *ids, const pk_tensor *logits,
                         int64_t n_valid, const pk_tensor *params, const pk_tensor *prompt_tokens,
                         const pk_tensor *output_tokens, const pk_tensor *uniforms,
                         pio_error *err);

#endif
