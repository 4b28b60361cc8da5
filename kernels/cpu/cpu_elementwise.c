/*
 * Row-wise ops of the CPU backend: embedding, RMSNorm, RoPE, SwiGLU, add, softmax, argmax,
 * cast. Rows are independent, so each op spreads rows over the threads when there is enough
 * work to pay for waking them.
 */
#include "kernels/cpu_internal.h"

#include <math.h>
#include <omp.h>

#include "kernels/dummy_values.h"
#include <string.h>

enum { PARALLEL_MIN_ELEMENTS = 1 << 15 };

static int worth_threads(const pk_tensor *t)
{
    return t->rows > 1 && t->rows * t->cols >= PARALLEL_MIN_ELEMENTS;
}

static float *row_f32(const pk_tensor *t, int64_t r)
{
    return (float *)pk_cpu_row(t, r);
}

pio_status pk_cpu_embedding(pk_context *ctx, const pk_tensor *out, const pk_tensor *table,
                            const pk_tensor *ids, pio_error *err)
{
    pk_cpu_state *state = pk_cpu_state_of(ctx);
    const int32_t *id = ids->data;
    for (int64_t t = 0; t < out->rows; t++)
        if (id[t] < 0 || id[t] >= table->rows)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "pk_embedding: token id %d at index %lld is outside [0, %lld)",
                                 (int)id[t], (long long)t, (long long)table->rows);
#pragma omp parallel for num_threads(state->n_threads) if (worth_threads(out))
    for (int64_t t = 0; t < out->rows; t++)
        pk_cpu_to_f32(state->use_avx2, row_f32(out, t), pk_cpu_row(table, id[t]), table->dtype,
                      out->cols);
    return PIO_OK;
}

/* HF order: the row is scaled by rsqrt(mean of squares + eps) first, then by the weight. */
static void rmsnorm_slice(float *out, const float *x, const void *weight, pio_dtype wt,
                          int64_t n, float eps)
{
    double sum_sq = 0.0; /* double: the mean does not drift with the row width */
    for (int64_t i = 0; i < n; i++)
        sum_sq += (double)x[i] * x[i];
    float inv_rms = 1.0f / sqrtf((float)(sum_sq / (double)n) + eps);
    for (int64_t i = 0; i < n; i++)
        out[i] = (x[i] * inv_rms) * pk_cpu_load(weight, wt, i);
}

pio_status pk_cpu_rmsnorm(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                          const pk_tensor *weight, int64_t group_width, float eps,
                          pio_error *err)
{
    (void)err;
    pk_cpu_state *state = pk_cpu_state_of(ctx);
    int64_t groups = out->cols / group_width;
#pragma omp parallel for num_threads(state->n_threads) if (worth_threads(out))
    for (int64_t r = 0; r < out->rows; r++)
        for (int64_t g = 0; g < groups; g++)
            rmsnorm_slice(row_f32(out, r) + g * group_width, row_f32(x, r) + g * group_width,
                          weight->data, weight->dtype, group_width, eps);
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* RoPE                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* cos/sin of every frequency at `position`, each step in fp32 as Hugging Face computes it:
 * inv_freq = 1 / theta^(2i/d), angle = float(position) * inv_freq. */
static void rope_angles(int32_t position, const pk_rope_params *p, float *cos_out,
                        float *sin_out)
{
    int32_t half = p->rotary_dim / 2;
    for (int32_t i = 0; i < half; i++) {
        float exponent = (float)(2 * i) / (float)p->rotary_dim;
        float inv_freq = 1.0f / powf(p->theta, exponent);
        float angle = (float)position * inv_freq;
        cos_out[i] = cosf(angle);
        sin_out[i] = sinf(angle);
    }
}

/* Rotates one head's rotary dims in place. Pair i is (i, i + half) for NeoX and (2i, 2i + 1)
 * for interleaved; both turn by the angle of frequency i. */
static void rope_head(float *v, const pk_rope_params *p, const float *cos_v, const float *sin_v)
{
    int32_t half = p->rotary_dim / 2;
    for (int32_t i = 0; i < half; i++) {
        int32_t a = p->layout == PK_ROPE_NEOX ? i : 2 * i;
        int32_t b = p->layout == PK_ROPE_NEOX ? i + half : 2 * i + 1;
        float x0 = v[a], x1 = v[b];
        v[a] = x0 * cos_v[i] - x1 * sin_v[i];
        v[b] = x1 * cos_v[i] + x0 * sin_v[i];
    }
}

pio_status pk_cpu_rope(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                       const pk_tensor *positions, const pk_rope_params *params, pio_error *err)
{
    pk_cpu_state *state = pk_cpu_state_of(ctx);
    size_t stride;
    float *scratch = pk_cpu_scratch(ctx, (size_t)params->rotary_dim, &stride, err);
    if (scratch == NULL)
        return PIO_ERR_OUT_OF_MEMORY;
    const int32_t *pos = positions->data;
    int64_t heads = out->cols / params->head_dim;
    size_t row_bytes = (size_t)out->cols * sizeof(float);
#pragma omp parallel num_threads(state->n_threads) if (worth_threads(out))
    {
        float *cos_v = scratch + (size_t)omp_get_thread_num() * stride;
        float *sin_v = cos_v + params->rotary_dim / 2;
#pragma omp for
        for (int64_t t = 0; t < out->rows; t++) {
            float *dst = row_f32(out, t);
            if (dst != row_f32(x, t))
                memcpy(dst, row_f32(x, t), row_bytes);
            rope_angles(pos[t], params, cos_v, sin_v);
            for (int64_t h = 0; h < heads; h++)
                rope_head(dst + h * params->head_dim + params->rotary_offset, params, cos_v,
                          sin_v);
        }
    }
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */

pio_status pk_cpu_swiglu(pk_context *ctx, const pk_tensor *out, const pk_tensor *gate,
                         const pk_tensor *up, pio_error *err)
{
    (void)err;
    pk_cpu_state *state = pk_cpu_state_of(ctx);
#pragma omp parallel for num_threads(state->n_threads) if (worth_threads(out))
    for (int64_t r = 0; r < out->rows; r++) {
        float *o = row_f32(out, r);
        const float *g = row_f32(gate, r), *u = row_f32(up, r);
        for (int64_t i = 0; i < out->cols; i++)
            o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
    return PIO_OK;
}

pio_status pk_cpu_add(pk_context *ctx, const pk_tensor *out, const pk_tensor *a,
                      const pk_tensor *b, pio_error *err)
{
    (void)err;
    pk_cpu_state *state = pk_cpu_state_of(ctx);
#pragma omp parallel for num_threads(state->n_threads) if (worth_threads(out))
    for (int64_t r = 0; r < out->rows; r++) {
        float *o = row_f32(out, r);
        const float *ra = row_f32(a, r), *rb = row_f32(b, r);
        for (int64_t i = 0; i < out->cols; i++)
            o[i] = ra[i] + rb[i];
    }
    return PIO_OK;
}

/* Subtracting the row maximum keeps every exponent <= 0, so nothing overflows. */
void pk_cpu_softmax_row(float *out, const float *x, int64_t n)
{
    float max_v = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        max_v = x[i] > max_v ? x[i] : max_v;
    if (max_v == -INFINITY) { /* an all -inf row has no mass anywhere: uniform by convention */
        for (int64_t i = 0; i < n; i++)
            out[i] = 1.0f / (float)n;
        return;
    }
    double sum = 0.0; /* a float sum of a vocabulary-sized row drifts by ~1e-4 */
    for (int64_t i = 0; i < n; i++) {
        out[i] = expf(x[i] - max_v);
        sum += out[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++)
        out[i] *= inv;
}

pio_status pk_cpu_softmax(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                          pio_error *err)
{
    (void)err;
    pk_cpu_state *state = pk_cpu_state_of(ctx);
#pragma omp parallel for num_threads(state->n_threads) if (worth_threads(out))
    for (int64_t r = 0; r < out->rows; r++)
        pk_cpu_softmax_row(row_f32(out, r), row_f32(x, r), out->cols);
    return PIO_OK;
}

static int32_t argmax_row(const float *x, int64_t n)
{
    int64_t best = -1;
    for (int64_t i = 0; i < n; i++)
        if (!isnan(x[i]) && (best < 0 || x[i] > x[best]))
            best = i;
    return best < 0 ? 0 : (int32_t)best;
}

pio_status pk_cpu_argmax(pk_context *ctx, const pk_tensor *ids, const pk_tensor *x,
                         pio_error *err)
{
    (void)err;
    pk_cpu_state *state = pk_cpu_state_of(ctx);
    int32_t *out = ids->data;
#pragma omp parallel for num_threads(state->n_threads) if (worth_threads(x))
    for (int64_t r = 0; r < x->rows; r++)
        out[r] = argmax_row(row_f32(x, r), x->cols);
    return PIO_OK;
}

static void cast_row(void *dst, pio_dtype dst_type, const void *src, pio_dtype src_type,
                     int64_t n)
{
    if (dst_type == src_type) {
        memcpy(dst, src, (size_t)n * pio_dtype_size(dst_type));
    } else if (dst_type == PIO_DTYPE_BF16) {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++)
            d[i] = pio_f32_to_bf16(((const float *)src)[i]);
    } else {
        float *d = dst;
        for (int64_t i = 0; i < n; i++)
            d[i] = pio_bf16_to_f32(((const uint16_t *)src)[i]);
    }
}

pio_status pk_cpu_cast(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                       pio_error *err)
{
    (void)err;
    pk_cpu_state *state = pk_cpu_state_of(ctx);
#pragma omp parallel for num_threads(state->n_threads) if (worth_threads(out))
    for (int64_t r = 0; r < out->rows; r++)
        cast_row(pk_cpu_row(out, r), out->dtype, pk_cpu_row(x, r), x->dtype, out->cols);
    return PIO_OK;
}

pio_status pk_cpu_fill_dummy(pk_context *ctx, const pk_tensor *out, uint64_t seed,
                             uint64_t tensor_id, float scale, float offset, pio_error *err)
{
    (void)err;
    pk_cpu_state *state = pk_cpu_state_of(ctx);
    int bf16 = out->dtype == PIO_DTYPE_BF16;
#pragma omp parallel for num_threads(state->n_threads) if (worth_threads(out))
    for (int64_t r = 0; r < out->rows; r++) {
        void *row = pk_cpu_row(out, r);
        for (int64_t c = 0; c < out->cols; c++) {
            float v = pk_dummy_value(seed, tensor_id, (uint64_t)(r * out->cols + c), scale,
                                     offset);
            if (bf16)
                ((uint16_t *)row)[c] = pio_f32_to_bf16(v);
            else
                ((float *)row)[c] = v;
        }
    }
    return PIO_OK;
}
