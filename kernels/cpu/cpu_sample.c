/*
 * pk_sample on the CPU backend: each row goes through the host sampler (sampler.c) with the
 * uniform the caller drew, so the op chooses what pk_sampler_sample chooses by construction.
 * Rows run in parallel, each thread with its own sampler placed in the backend's workspace.
 */
#include "kernels/cpu_internal.h"

#include <omp.h>

#include "kernels/sampler.h"
#include "kernels/sampler_math.h"

/* The history of row r: its prompt and output rows, -1 padding included (the sampler ignores
 * ids outside the vocabulary). */
static pk_token_history row_history(const pk_tensor *prompt, const pk_tensor *output, int64_t r)
{
    pk_token_history h = {NULL, 0, NULL, 0};
    if (prompt != NULL) {
        h.prompt = pk_cpu_row(prompt, r);
        h.n_prompt = prompt->cols;
    }
    if (output != NULL) {
        h.output = pk_cpu_row(output, r);
        h.n_output = output->cols;
    }
    return h;
}

/* The id for row r, -1 when the row cannot be sampled. */
static int32_t sample_one(pk_sampler *sampler, const pk_tensor *logits, int32_t n_valid,
                          const pk_tensor *params, const pk_tensor *prompt,
                          const pk_tensor *output, const int64_t *uniforms, int64_t r)
{
    pk_sampling p;
    if (!pk_sampling_from_row(pk_cpu_row(params, r), &p))
        return -1;
    uint64_t bits = (uint64_t)uniforms[r];
    if (pk_sampling_draws(&p) && bits >> PK_SAMPLE_UNIFORM_BITS != 0)
        return -1;
    pk_token_history history = row_history(prompt, output, r);
    int32_t token = -1;
    pio_status st = pk_sampler_sample_uniform(sampler, &p, pk_cpu_row(logits, r), n_valid,
                                              &history, pk_sample_uniform_from_bits(bits),
                                              &token, NULL);
    return st == PIO_OK ? token : -1;
}

pio_status pk_cpu_sample(pk_context *ctx, const pk_tensor *ids, const pk_tensor *logits,
                         int64_t n_valid, const pk_tensor *params, const pk_tensor *prompt_tokens,
                         const pk_tensor *output_tokens, const pk_tensor *uniforms,
                         pio_error *err)
{
    pk_cpu_state *state = pk_cpu_state_of(ctx);
    int32_t n = (int32_t)n_valid;
    int threads = logits->rows < state->n_threads ? (int)logits->rows : state->n_threads;
    /* One sampler per thread that runs (a few MB each at a large vocabulary, so not one per
     * backend thread as pk_cpu_scratch would give), in the integer workspace: it is plain
     * memory, aligned by malloc as the sampler needs. */
    size_t slice = (pk_sampler_bytes(n) + 63) / 64 * 64 / sizeof(int32_t);
    int32_t *workspace = pk_cpu_index_scratch(ctx, slice * (size_t)threads, err);
    if (workspace == NULL)
        return PIO_ERR_OUT_OF_MEMORY;
    int32_t *out = ids->data;
    const int64_t *draws = uniforms->data;
#pragma omp parallel num_threads(threads)
    {
        /* init also clears the sampler's marks, which this call's rows rely on. */
        pk_sampler *sampler = pk_sampler_init(workspace + (size_t)omp_get_thread_num() * slice, n);
#pragma omp for schedule(dynamic)
        for (int64_t r = 0; r < logits->rows; r++)
            out[r] = sample_one(sampler, logits, n, params, prompt_tokens, output_tokens, draws, r);
    }
    return PIO_OK;
}
