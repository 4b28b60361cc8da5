/*
 * Sampling where the logits are (PIO_TEXTGEN_FEATURE_SAMPLE): a forward's rows picked with
 * pk_sample (or pk_argmax over the sampled ids when every row is plain greedy) on the decoder's
 * context, so only the chosen ids come back to the host.
 *
 * The operands live in device buffers made on first use: parameters [R, PK_SAMPLE_PARAM_COUNT],
 * uniforms [1, R] and, for rows with penalties, the prompt and output histories as two planes of
 * R rows (R = PIO_DECODER_LOGITS_ROWS, one row per sampled row of a logits group). Each plane
 * has a host mirror of what its device rows hold (the history, then -1 padding); a call
 * compares a row's history with the mirror and uploads only from the first difference, so a
 * sequence decoding in the same row from step to step sends the one new token.
 */
#include <stdlib.h>
#include <string.h>

#include "decoder_internal.h"
#include "kernels/sampler.h"
#include "kernels/sampler_math.h"

enum { SAMPLE_ROWS = PIO_DECODER_LOGITS_ROWS, MIN_HISTORY_WIDTH = 256 };
enum { PROMPT_PLANE = 0, OUTPUT_PLANE = 1, PLANES = 2 };

/* One history plane: [SAMPLE_ROWS, width] I32 on the device and its host mirror. */
typedef struct history_plane {
    pk_buffer device;
    int32_t *mirror;
    int64_t width;                /* entries per row */
    int64_t length[SAMPLE_ROWS];  /* history entries of the mirror row; -1 after them */
    int64_t synced[SAMPLE_ROWS];  /* leading entries of the device row equal to the mirror's */
} history_plane;

struct pio_decoder_sampling {
    pk_buffer params;   /* [SAMPLE_ROWS, PK_SAMPLE_PARAM_COUNT] F32 */
    pk_buffer uniforms; /* [1, SAMPLE_ROWS] I64 */
    history_plane planes[PLANES];
};

int32_t *pio_decoder_batch_sampled(const pio_textgen_batch *b)
{
    return PIO_HAS_FIELD(b, pio_textgen_batch, sample_vocab) ? b->sampled : NULL;
}

int64_t pio_decoder_sample_vocab(const pio_decoder *m, const pio_textgen_batch *b)
{
    return b->sample_vocab > 0 ? (int64_t)b->sample_vocab : m->config.vocab_size;
}

/* The batch row of the group's j-th row (rows NULL: the j-th). */
static const pio_textgen_sample_row *group_row(const pio_textgen_batch *b, const size_t *rows,
                                               int64_t j)
{
    return &b->sample[rows != NULL ? rows[j] : (size_t)j];
}

static pk_sampling row_params(const pio_textgen_sample_row *row)
{
    return (pk_sampling){.temperature = row->temperature, .top_k = row->top_k,
                         .top_p = row->top_p, .min_p = row->min_p,
                         .repetition_penalty = row->repetition_penalty,
                         .presence_penalty = row->presence_penalty,
                         .frequency_penalty = row->frequency_penalty};
}

/* Whether the row's penalties read its history. */
static int needs_history(const pio_textgen_sample_row *row)
{
    pk_sampling p = row_params(row);
    return !pk_sample_penalties_off(&p) && row->n_prompt + row->n_output > 0;
}

static pio_status check_row(const pio_textgen_sample_row *row, size_t i, pio_error *err)
{
    pk_sampling p = row_params(row);
    float packed[PK_SAMPLE_PARAM_COUNT];
    pio_error why = {0};
    if (pk_sampling_to_row(&p, packed, &why) != PIO_OK)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "forward: sample row %zu: %s", i,
                             why.message);
    if (pk_sampling_draws(&p) && row->uniform_bits >> PK_SAMPLE_UNIFORM_BITS != 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "forward: sample row %zu: "
                             "uniform_bits 0x%llx has more than %d bits", i,
                             (unsigned long long)row->uniform_bits, PK_SAMPLE_UNIFORM_BITS);
    if ((row->n_prompt > 0 && row->prompt == NULL) || (row->n_output > 0 && row->output == NULL))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "forward: sample row %zu: a "
                             "history of %zu prompt and %zu output ids without its array", i,
                             row->n_prompt, row->n_output);
    if (row->n_prompt >= INT32_MAX || row->n_output >= (size_t)1 << 30)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "forward: sample row %zu: a "
                             "history of %zu prompt and %zu output ids is too long", i,
                             row->n_prompt, row->n_output);
    return PIO_OK;
}

pio_status pio_decoder_check_sampling(const pio_decoder *m, const pio_textgen_batch *b,
                                      pio_error *err)
{
    if (pio_decoder_batch_sampled(b) == NULL || b->n_logits_rows == 0)
        return PIO_OK;
    if (b->sample == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "forward: sampled ids asked for without the sample rows");
    if (b->sample_vocab > (size_t)m->config.vocab_size)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "forward: sample_vocab %zu is "
                             "larger than the vocabulary (%ld)", b->sample_vocab,
                             m->config.vocab_size);
    for (size_t i = 0; i < b->n_logits_rows; i++) {
        pio_status st = check_row(&b->sample[i], i, err);
        if (st != PIO_OK)
            return st;
    }
    return PIO_OK;
}

pio_decoder_sample_kind pio_decoder_sample_kind_of(const pio_textgen_batch *b,
                                                   const size_t *rows, int64_t g)
{
    pio_decoder_sample_kind kind = PIO_DECODER_SAMPLE_GREEDY;
    for (int64_t j = 0; j < g; j++) {
        const pio_textgen_sample_row *row = group_row(b, rows, j);
        pk_sampling p = row_params(row);
        if (needs_history(row))
            return PIO_DECODER_SAMPLE_HISTORY;
        if (pk_sampling_draws(&p) || !pk_sample_penalties_off(&p))
            kind = PIO_DECODER_SAMPLE_PLAIN;
    }
    return kind;
}

void pio_decoder_sample_pack(const pio_textgen_batch *b, const size_t *rows, int64_t g,
                             float *params, int64_t *uniforms)
{
    for (int64_t j = 0; j < g; j++) {
        const pio_textgen_sample_row *row = group_row(b, rows, j);
        pk_sampling p = row_params(row);
        (void)pk_sampling_to_row(&p, params + j * PK_SAMPLE_PARAM_COUNT, NULL); /* checked */
        uniforms[j] = pk_sampling_draws(&p) ? (int64_t)row->uniform_bits : 0;
    }
}

/* ---- State --------------------------------------------------------------------------------- */

static void free_plane(pio_decoder *m, history_plane *plane)
{
    pk_buffer_free(m->ctx, &plane->device);
    free(plane->mirror);
    memset(plane, 0, sizeof *plane);
}

void pio_decoder_sampling_free(pio_decoder *m)
{
    pio_decoder_sampling *s = m->sampling;
    if (s == NULL)
        return;
    pk_buffer_free(m->ctx, &s->params);
    pk_buffer_free(m->ctx, &s->uniforms);
    for (int p = 0; p < PLANES; p++)
        free_plane(m, &s->planes[p]);
    free(s);
    m->sampling = NULL;
}

static pio_status create_sampling(pio_decoder *m, pio_error *err)
{
    m->sampling = calloc(1, sizeof *m->sampling);
    if (m->sampling == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory for device sampling");
    pio_status st = pk_buffer_alloc(
        m->ctx, SAMPLE_ROWS * PK_SAMPLE_PARAM_COUNT * sizeof(float), &m->sampling->params, err);
    if (st == PIO_OK)
        st = pk_buffer_alloc(m->ctx, SAMPLE_ROWS * sizeof(int64_t), &m->sampling->uniforms, err);
    return st;
}

/* Makes rows of at least `width` entries: the mirror keeps what it held, the device rows are
 * sent again as calls need them. */
static pio_status grow_plane(pio_decoder *m, history_plane *plane, int64_t width, pio_error *err)
{
    if (width <= plane->width)
        return PIO_OK;
    int64_t grown = plane->width > 0 ? 2 * plane->width : MIN_HISTORY_WIDTH;
    while (grown < width)
        grown *= 2;
    size_t entries = (size_t)SAMPLE_ROWS * (size_t)grown;
    int32_t *mirror = malloc(entries * sizeof *mirror);
    if (mirror == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory for sampling histories");
    for (size_t i = 0; i < entries; i++)
        mirror[i] = -1;
    for (int64_t r = 0; r < SAMPLE_ROWS; r++) {
        if (plane->length[r] > 0)
            memcpy(mirror + r * grown, plane->mirror + r * plane->width,
                   (size_t)plane->length[r] * sizeof *mirror);
        plane->synced[r] = 0;
    }
    pk_buffer_free(m->ctx, &plane->device);
    free(plane->mirror);
    plane->mirror = mirror;
    plane->width = grown;
    return pk_buffer_alloc(m->ctx, entries * sizeof *mirror, &plane->device, err);
}

/* Makes the first `cols` entries of device row r hold ids[0, n) and -1 after them. */
static pio_status sync_row(pio_decoder *m, history_plane *plane, int64_t r, const int32_t *ids,
                           int64_t n, int64_t cols, pio_error *err)
{
    int32_t *mirror = plane->mirror + r * plane->width;
    int64_t same = 0, old = plane->length[r];
    while (same < n && same < old && mirror[same] == ids[same])
        same++;
    if (n > same)
        memcpy(mirror + same, ids + same, (size_t)(n - same) * sizeof *mirror);
    for (int64_t i = n; i < old; i++)
        mirror[i] = -1;
    plane->length[r] = n;
    if (plane->synced[r] > same)
        plane->synced[r] = same;
    if (plane->synced[r] >= cols)
        return PIO_OK;
    int64_t from = plane->synced[r];
    pk_tensor dst = pk_tensor_in(&plane->device,
                                 (size_t)(r * plane->width + from) * sizeof(int32_t),
                                 PIO_DTYPE_I32, 1, cols - from);
    pk_tensor src = pk_tensor_host(mirror + from, PIO_DTYPE_I32, 1, cols - from);
    pio_status st = pk_copy(m->ctx, &dst, &src, err);
    if (st == PIO_OK)
        plane->synced[r] = cols;
    return st;
}

/* The history operand of one plane for the group: [g, cols] where cols is the longest
 * history of a row with penalties; *out NULL-data when no row has one in this plane. */
static pio_status stage_plane(pio_decoder *m, int plane_index, const pio_textgen_batch *b,
                              const size_t *rows, int64_t g, pk_tensor *out, int *present,
                              pio_error *err)
{
    history_plane *plane = &m->sampling->planes[plane_index];
    int64_t cols = 0;
    for (int64_t j = 0; j < g; j++) {
        const pio_textgen_sample_row *row = group_row(b, rows, j);
        size_t n = plane_index == PROMPT_PLANE ? row->n_prompt : row->n_output;
        if (needs_history(row) && (int64_t)n > cols)
            cols = (int64_t)n;
    }
    *present = cols > 0;
    if (cols == 0)
        return PIO_OK;
    pio_status st = grow_plane(m, plane, cols, err);
    for (int64_t j = 0; st == PIO_OK && j < g; j++) {
        const pio_textgen_sample_row *row = group_row(b, rows, j);
        if (!needs_history(row))
            continue; /* its penalties are off: the op does not read its history */
        if (plane_index == PROMPT_PLANE)
            st = sync_row(m, plane, j, row->prompt, (int64_t)row->n_prompt, cols, err);
        else
            st = sync_row(m, plane, j, row->output, (int64_t)row->n_output, cols, err);
    }
    pk_tensor whole = pk_tensor_in(&plane->device, 0, PIO_DTYPE_I32, g, plane->width);
    *out = pk_tensor_cols(&whole, 0, cols);
    return st;
}

/* ---- A group of rows ------------------------------------------------------------------------ */

pio_status pio_decoder_sample_results(const pio_textgen_batch *b, const size_t *rows, int64_t g,
                                      const int32_t *found, pio_error *err)
{
    int32_t *sampled = pio_decoder_batch_sampled(b);
    for (int64_t j = 0; j < g; j++) {
        size_t i = rows != NULL ? rows[j] : (size_t)j;
        if (found[j] < 0)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "forward: sample row %zu has "
                                 "no finite logit to choose from (after its penalties)", i);
        sampled[i] = found[j];
    }
    return PIO_OK;
}

/* The op of the group into ids_out: pk_argmax over the ids that may be chosen when every row
 * is plain greedy, else pk_sample with the parameters, uniforms and histories staged. */
static pio_status sample_op(pio_decoder *m, const pio_textgen_batch *b, const pk_tensor *logits,
                            const size_t *rows, int64_t g, const pk_tensor *ids_out,
                            pio_error *err)
{
    int64_t n_valid = pio_decoder_sample_vocab(m, b);
    pio_decoder_sample_kind kind = pio_decoder_sample_kind_of(b, rows, g);
    if (kind == PIO_DECODER_SAMPLE_GREEDY) {
        pk_tensor valid = pk_tensor_cols(logits, 0, n_valid);
        return pk_argmax(m->ctx, ids_out, &valid, err);
    }
    pio_status st = m->sampling == NULL ? create_sampling(m, err) : PIO_OK;
    if (st != PIO_OK)
        return st;
    float params[SAMPLE_ROWS * PK_SAMPLE_PARAM_COUNT];
    int64_t uniforms[SAMPLE_ROWS];
    pio_decoder_sample_pack(b, rows, g, params, uniforms);
    pk_tensor params_t = pk_tensor_in(&m->sampling->params, 0, PIO_DTYPE_F32, g,
                                      PK_SAMPLE_PARAM_COUNT);
    pk_tensor uniforms_t = pk_tensor_in(&m->sampling->uniforms, 0, PIO_DTYPE_I64, 1, g);
    pk_tensor params_src = pk_tensor_host(params, PIO_DTYPE_F32, g, PK_SAMPLE_PARAM_COUNT);
    pk_tensor uniforms_src = pk_tensor_host(uniforms, PIO_DTYPE_I64, 1, g);
    pk_tensor history[PLANES];
    int present[PLANES] = {0, 0};
    if ((st = pk_copy(m->ctx, &params_t, &params_src, err)) ||
        (st = pk_copy(m->ctx, &uniforms_t, &uniforms_src, err)))
        return st;
    for (int p = 0; kind == PIO_DECODER_SAMPLE_HISTORY && p < PLANES && st == PIO_OK; p++)
        st = stage_plane(m, p, b, rows, g, &history[p], &present[p], err);
    if (st != PIO_OK)
        return st;
    return pk_sample(m->ctx, ids_out, logits, n_valid, &params_t,
                     present[PROMPT_PLANE] ? &history[PROMPT_PLANE] : NULL,
                     present[OUTPUT_PLANE] ? &history[OUTPUT_PLANE] : NULL, &uniforms_t, err);
}

pio_status pio_decoder_sample_rows(pio_decoder *m, const pio_textgen_batch *b,
                                   const pk_tensor *logits, const size_t *rows, int64_t g,
                                   pio_error *err)
{
    int32_t found[SAMPLE_ROWS];
    pk_tensor ids_out = pk_tensor_in(&m->ws.argmax, 0, PIO_DTYPE_I32, 1, g);
    pk_tensor host = pk_tensor_host(found, PIO_DTYPE_I32, 1, g);
    pio_status st;
    if ((st = sample_op(m, b, logits, rows, g, &ids_out, err)) ||
        (st = pk_copy(m->ctx, &host, &ids_out, err)) || (st = pk_synchronize(m->ctx, err)))
        return st;
    return pio_decoder_sample_results(b, rows, g, found, err);
}
