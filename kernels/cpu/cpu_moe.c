/*
 * Mixture-of-experts ops of the CPU backend: softmax top-k routing and the routed SwiGLU experts.
 *
 * The experts op groups the (token, slot) pairs of the batch by expert (a counting sort), then
 * runs each selected expert once over all of its tokens: every weight row is read once per call
 * and dotted with each of the expert's tokens, as the grouped GEMM of a GPU backend does. Each
 * pair's output row is kept apart and the rows of a token are summed in slot order at the end,
 * so a token's result does not depend on which other tokens share the batch.
 */
#include "kernels/cpu_internal.h"

#include <math.h>
#include <omp.h>

static const float *f32_row(const pk_tensor *t, int64_t r)
{
    return (const float *)pk_cpu_row(t, r);
}

/* ------------------------------------------------------------------------------------------ */
/* Routing                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* The k largest of p (E values >= 0), descending, the lower index first among equal values.
 * Chosen entries are overwritten with -1 (below any probability) so they are not picked again. */
static void select_top_k(float *p, int64_t n_experts, int64_t k, int32_t *ids, float *weights)
{
    for (int64_t j = 0; j < k; j++) {
        int64_t best = -1;
        for (int64_t e = 0; e < n_experts; e++)
            if (p[e] >= 0.0f && (best < 0 || p[e] > p[best]))
                best = e;
        if (best < 0) /* only NaN left: take the lowest expert not chosen yet */
            for (int64_t e = 0; e < n_experts && best < 0; e++)
                best = p[e] == -1.0f ? -1 : e;
        ids[j] = (int32_t)best;
        weights[j] = p[best];
        p[best] = -1.0f;
    }
}

static void renormalise(float *weights, int64_t k)
{
    float sum = 0.0f;
    for (int64_t j = 0; j < k; j++)
        sum += weights[j];
    for (int64_t j = 0; j < k && sum > 0.0f; j++)
        weights[j] /= sum;
}

pio_status pk_cpu_moe_topk_softmax(pk_context *ctx, const pk_tensor *ids,
                                   const pk_tensor *weights, const pk_tensor *logits,
                                   int normalize, pio_error *err)
{
    size_t stride = 0;
    int64_t n_experts = logits->cols, k = ids->cols;
    float *scratch = pk_cpu_scratch(ctx, (size_t)n_experts, &stride, err);
    if (scratch == NULL)
        return err != NULL ? err->status : PIO_ERR_OUT_OF_MEMORY;
#pragma omp parallel for num_threads(pk_cpu_state_of(ctx)->n_threads) schedule(static)
    for (int64_t t = 0; t < logits->rows; t++) {
        float *p = scratch + (size_t)omp_get_thread_num() * stride;
        int32_t *row_ids = (int32_t *)pk_cpu_row(ids, t);
        float *row_weights = (float *)pk_cpu_row(weights, t);
        pk_cpu_softmax_row(p, f32_row(logits, t), n_experts);
        select_top_k(p, n_experts, k, row_ids, row_weights);
        if (normalize)
            renormalise(row_weights, k);
    }
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Experts                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* The pairs p = t·k + j grouped by expert: pairs of expert e are order[start[e] .. start[e+1]),
 * in increasing p. start has n_experts + 1 entries. */
typedef struct expert_groups {
    int32_t *start;
    int32_t *order;
} expert_groups;

static pio_status group_by_expert(const pk_tensor *ids, int64_t n_experts, int64_t first,
                                  int64_t n_local, expert_groups *g, pio_error *err)
{
    int64_t k = ids->cols, n_pairs = ids->rows * k;
    for (int64_t e = 0; e <= n_local; e++)
        g->start[e] = 0;
    for (int64_t p = 0; p < n_pairs; p++) {
        int32_t e = ((const int32_t *)pk_cpu_row(ids, p / k))[p % k];
        if (e < 0 || e >= n_experts)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pk_moe_experts: ids[%lld, %lld] "
                                 "is %d, outside [0, %lld)", (long long)(p / k),
                                 (long long)(p % k), (int)e, (long long)n_experts);
        if (e >= first && e < first + n_local) /* other experts are another rank's */
            g->start[e - first + 1]++;
    }
    for (int64_t e = 0; e < n_local; e++)
        g->start[e + 1] += g->start[e];
    /* Place the pairs; start[e] runs ahead while placing and is shifted back afterwards. */
    for (int64_t p = 0; p < n_pairs; p++) {
        int32_t e = ((const int32_t *)pk_cpu_row(ids, p / k))[p % k];
        if (e >= first && e < first + n_local)
            g->order[g->start[e - first]++] = (int32_t)p;
    }
    for (int64_t e = n_local; e > 0; e--)
        g->start[e] = g->start[e - 1];
    g->start[0] = 0;
    return PIO_OK;
}

/* Where one expert's work happens: its tokens' inputs and the scratch rows it fills. */
typedef struct expert_job {
    const pk_tensor *x;
    const pk_tensor *gate_up, *down;
    const int32_t *pairs;  /* the expert's pairs t·k + j */
    int64_t n, k;          /* pairs of this expert; slots per token */
    int64_t expert, hidden, inner;
    float *gate_up_out;    /* [n, 2F] */
    float *pair_out;       /* [T·k, H]: row p is pair p's expert output */
    int avx2, n_threads;
} expert_job;

/* gate_up_out[i] = x[token of pair i] · W_gate_up(e)ᵀ, each weight row read once. */
static void expert_gate_up(const expert_job *j)
{
    int64_t width = 2 * j->inner;
#pragma omp parallel for num_threads(j->n_threads) schedule(static)
    for (int64_t r = 0; r < width; r++) {
        const void *w = pk_cpu_row(j->gate_up, j->expert * width + r);
        for (int64_t i = 0; i < j->n; i++)
            j->gate_up_out[i * width + r] =
                pk_cpu_dot(j->avx2, f32_row(j->x, j->pairs[i] / j->k), w, j->gate_up->dtype,
                           j->hidden);
    }
}

/* In place: the first F values of each row become silu(gate) · up. */
static void expert_activation(const expert_job *j)
{
    int64_t width = 2 * j->inner;
    for (int64_t i = 0; i < j->n; i++) {
        float *g = j->gate_up_out + i * width;
        for (int64_t c = 0; c < j->inner; c++)
            g[c] = g[c] / (1.0f + expf(-g[c])) * g[j->inner + c];
    }
}

/* pair_out[pair i] = activation_i · W_down(e)ᵀ, each weight row read once. */
static void expert_down(const expert_job *j)
{
    int64_t width = 2 * j->inner;
#pragma omp parallel for num_threads(j->n_threads) schedule(static)
    for (int64_t r = 0; r < j->hidden; r++) {
        const void *w = pk_cpu_row(j->down, j->expert * j->hidden + r);
        for (int64_t i = 0; i < j->n; i++)
            j->pair_out[(int64_t)j->pairs[i] * j->hidden + r] =
                pk_cpu_dot(j->avx2, j->gate_up_out + i * width, w, j->down->dtype, j->inner);
    }
}

/* out[t] (+)= Σ_j weights[t, j] · pair_out[t·k + j], in slot order, over the pairs whose expert
 * is in [first, first + n_local) (the others' pair_out rows were not written). */
static void weighted_sum(const pk_tensor *out, const pk_tensor *ids, const pk_tensor *weights,
                         const float *pair_out, int64_t first, int64_t n_local, int accumulate,
                         int avx2, int n_threads)
{
    int64_t k = weights->cols, hidden = out->cols;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t t = 0; t < out->rows; t++) {
        const float *w = f32_row(weights, t);
        const int32_t *e = (const int32_t *)pk_cpu_row(ids, t);
        float *o = (float *)pk_cpu_row(out, t);
        if (!accumulate)
            for (int64_t c = 0; c < hidden; c++)
                o[c] = 0.0f;
        for (int64_t j = 0; j < k; j++)
            if (e[j] >= first && e[j] < first + n_local)
                pk_cpu_axpy(avx2, o, w[j], pair_out + (t * k + j) * hidden, PIO_DTYPE_F32,
                            hidden);
    }
}

pio_status pk_cpu_moe_experts(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                              const pk_tensor *gate_up, const pk_tensor *down,
                              const pk_tensor *ids, const pk_tensor *weights, int64_t n_experts,
                              pio_error *err)
{
    return pk_cpu_moe_experts_slice(ctx, out, x, gate_up, down, ids, weights, n_experts, 0,
                                    n_experts, 1, err);
}

pio_status pk_cpu_moe_experts_slice(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                                    const pk_tensor *gate_up, const pk_tensor *down,
                                    const pk_tensor *ids, const pk_tensor *weights,
                                    int64_t n_experts, int64_t first, int64_t n_local,
                                    int accumulate, pio_error *err)
{
    pk_cpu_state *state = pk_cpu_state_of(ctx);
    int64_t T = out->rows, k = ids->cols, H = out->cols, F = down->cols;
    int32_t *index = pk_cpu_index_scratch(ctx, (size_t)(n_local + 1 + T * k), err);
    /* pair outputs [T·k, H], then one expert's gate|up rows [T, 2F] */
    size_t floats = (size_t)(T * k * H + T * 2 * F), stride = 0;
    size_t per_thread = (floats + (size_t)state->n_threads - 1) / (size_t)state->n_threads;
    float *scratch = index != NULL ? pk_cpu_scratch(ctx, per_thread, &stride, err) : NULL;
    if (scratch == NULL)
        return err != NULL ? err->status : PIO_ERR_OUT_OF_MEMORY;
    expert_groups groups = {.start = index, .order = index + n_local + 1};
    pio_status st = group_by_expert(ids, n_experts, first, n_local, &groups, err);
    if (st != PIO_OK)
        return st;
    expert_job job = {.x = x, .gate_up = gate_up, .down = down, .k = k, .hidden = H, .inner = F,
                      .pair_out = scratch, .gate_up_out = scratch + T * k * H,
                      .avx2 = state->use_avx2, .n_threads = state->n_threads};
    for (int64_t e = 0; e < n_local; e++) {
        job.expert = e;
        job.pairs = groups.order + groups.start[e];
        job.n = groups.start[e + 1] - groups.start[e];
        if (job.n == 0)
            continue; /* an expert no token chose is never read */
        expert_gate_up(&job);
        expert_activation(&job);
        expert_down(&job);
    }
    weighted_sum(out, ids, weights, scratch, first, n_local, accumulate, state->use_avx2,
                 state->n_threads);
    return PIO_OK;
}
