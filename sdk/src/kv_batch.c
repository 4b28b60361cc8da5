/* kv_cache.* settings and flattened-batch preparation over the paged KV pool (pio/kv_batch.h). */
#include "pio/kv_batch.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Settings                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static pio_status parse_kv_dtype(const char *text, pio_dtype *dtype, pio_error *err)
{
    static const struct {
        const char *name;
        pio_dtype dtype;
    } names[] = {{"auto", PIO_DTYPE_BF16},    {"bf16", PIO_DTYPE_BF16},
                 {"bfloat16", PIO_DTYPE_BF16}, {"f32", PIO_DTYPE_F32},
                 {"fp32", PIO_DTYPE_F32},      {"float32", PIO_DTYPE_F32}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(text, names[i].name) == 0) {
            *dtype = names[i].dtype;
            return PIO_OK;
        }
    }
    return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                         "kv_cache.dtype: '%s' is not supported (use auto, bf16 or f32)", text);
}

pio_status pio_kv_settings_read(const pio_host_services *sv, void *host, pio_kv_settings *out,
                                pio_error *err)
{
    pio_error_clear(err);
    memset(out, 0, sizeof *out);
    int64_t block_size = 16;
    double memory_gb = 0.0;
    const char *dtype = "auto";
    pio_status status;
    if (PIO_IS_ERROR(status = sv->config_get_i64(host, "kv_cache.block_size", &block_size)) ||
        PIO_IS_ERROR(status = sv->config_get_i64(host, "kv_cache.max_tokens", &out->max_tokens)) ||
        PIO_IS_ERROR(status = sv->config_get_f64(host, "kv_cache.memory_gb", &memory_gb)) ||
        PIO_IS_ERROR(status = sv->config_get_str(host, "kv_cache.dtype", &dtype)))
        return status;
    if (block_size < 1 || block_size > 4096)
        return pio_error_set(err, PIO_ERR_CONFIG, "kv_cache.block_size: %lld is not in 1..4096",
                             (long long)block_size);
    if (out->max_tokens < 0 || memory_gb < 0.0)
        return pio_error_set(err, PIO_ERR_CONFIG,
                             "kv_cache.max_tokens and kv_cache.memory_gb must be positive");
    out->block_size = (int32_t)block_size;
    out->max_bytes = (uint64_t)(memory_gb * 1073741824.0);
    return parse_kv_dtype(dtype, &out->dtype, err);
}

void pio_kv_settings_apply(const pio_kv_settings *s, int64_t default_tokens,
                           pk_kv_pool_config *cfg)
{
    cfg->block_size = s->block_size;
    cfg->dtype = s->dtype;
    cfg->n_blocks = 0;
    cfg->max_tokens = 0;
    cfg->max_bytes = 0;
    if (s->max_tokens > 0)
        cfg->max_tokens = s->max_tokens;
    else if (s->max_bytes > 0)
        cfg->max_bytes = s->max_bytes;
    else
        cfg->max_tokens = default_tokens;
}

/* ------------------------------------------------------------------------------------------ */
/* Batches                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* realloc that leaves *array alone on failure. */
static int resize(void **array, size_t count, size_t element)
{
    void *grown = realloc(*array, count * element);
    if (grown == NULL)
        return 0;
    *array = grown;
    return 1;
}

static pio_status reserve_tokens(pio_kv_batch *b, size_t n_tokens, pio_error *err)
{
    if (n_tokens <= b->token_capacity)
        return PIO_OK;
    size_t count = n_tokens < 64 ? 64 : n_tokens;
    void *positions = b->positions, *seq_rows = b->seq_rows, *seqs = b->seqs,
         *old_lengths = b->old_lengths;
    /* A batch has at most as many sequences as tokens. */
    int ok = resize(&positions, count, sizeof(int32_t)) &&
             resize(&seq_rows, count, sizeof(int32_t)) && resize(&seqs, count, sizeof(int32_t)) &&
             resize(&old_lengths, count, sizeof(int64_t));
    b->positions = positions;
    b->seq_rows = seq_rows;
    b->seqs = seqs;
    b->old_lengths = old_lengths;
    if (!ok)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "batch: out of memory for %zu tokens",
                             n_tokens);
    b->token_capacity = count;
    return PIO_OK;
}

/* Distinct sequences in order of first appearance, each token's row, and the positions that
 * continue each sequence. */
static pio_status assign_rows(pio_kv_batch *b, const pk_kv_pool *pool, const int32_t *seq_ids,
                              size_t n_tokens, pio_error *err)
{
    b->n_seqs = 0;
    for (size_t t = 0; t < n_tokens; t++) {
        int64_t row = 0;
        while (row < b->n_seqs && b->seqs[row] != seq_ids[t])
            row++;
        if (row == b->n_seqs) {
            int64_t length = pk_kv_seq_length(pool, seq_ids[t]);
            if (length < 0)
                return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                     "batch: token %zu names sequence %d, which is not open", t,
                                     (int)seq_ids[t]);
            b->seqs[row] = seq_ids[t];
            b->old_lengths[row] = length;
            b->n_seqs++;
        }
        b->seq_rows[t] = (int32_t)row;
    }
    return PIO_OK;
}

static void fill_positions(pio_kv_batch *b, size_t n_tokens)
{
    for (int64_t s = 0; s < b->n_seqs; s++) {
        int64_t next = b->old_lengths[s];
        for (size_t t = 0; t < n_tokens; t++)
            if (b->seq_rows[t] == s)
                b->positions[t] = (int32_t)next++;
    }
}

static int64_t new_length(const pio_kv_batch *b, int64_t row, size_t n_tokens)
{
    int64_t length = b->old_lengths[row];
    for (size_t t = 0; t < n_tokens; t++)
        length += b->seq_rows[t] == row;
    return length;
}

static void truncate_rows(pio_kv_batch *b, pk_kv_pool *pool, int64_t n_rows)
{
    for (int64_t s = 0; s < n_rows; s++)
        pk_kv_seq_truncate(pool, b->seqs[s], b->old_lengths[s], NULL);
}

static pio_status grow_sequences(pio_kv_batch *b, pk_kv_pool *pool, size_t n_tokens,
                                 int64_t max_positions, pio_error *err)
{
    for (int64_t s = 0; s < b->n_seqs; s++) {
        if (new_length(b, s, n_tokens) > max_positions)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "batch: sequence %d would hold %lld positions, more than the "
                                 "context length of %lld", (int)b->seqs[s],
                                 (long long)new_length(b, s, n_tokens), (long long)max_positions);
    }
    for (int64_t s = 0; s < b->n_seqs; s++) {
        int64_t added = new_length(b, s, n_tokens) - b->old_lengths[s];
        pio_status status = pk_kv_seq_append(pool, b->seqs[s], added, err);
        if (status != PIO_OK) {
            truncate_rows(b, pool, s);
            return status;
        }
    }
    return PIO_OK;
}

static pio_status fill_tables(pio_kv_batch *b, pk_kv_pool *pool, pio_error *err)
{
    b->table_width = 1;
    for (int64_t s = 0; s < b->n_seqs; s++) {
        int64_t n_blocks = 0;
        pk_kv_seq_blocks(pool, b->seqs[s], &n_blocks);
        if (n_blocks > b->table_width)
            b->table_width = n_blocks;
    }
    size_t cells = (size_t)(b->n_seqs * b->table_width);
    if (cells > b->table_capacity) {
        void *tables = b->block_tables;
        if (!resize(&tables, cells, sizeof(int32_t)))
            return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY,
                                 "batch: out of memory for block tables");
        b->block_tables = tables;
        b->table_capacity = cells;
    }
    return pk_kv_fill_block_tables(pool, b->seqs, b->n_seqs, b->table_width, b->block_tables,
                                   err);
}

pio_status pio_kv_batch_prepare(pio_kv_batch *b, pk_kv_pool *pool, const int32_t *seq_ids,
                                size_t n_tokens, int64_t max_positions, pio_error *err)
{
    b->n_tokens = 0;
    b->n_seqs = 0;
    if (n_tokens == 0 || seq_ids == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "batch: no tokens");
    pio_status status = reserve_tokens(b, n_tokens, err);
    if (status == PIO_OK)
        status = assign_rows(b, pool, seq_ids, n_tokens, err);
    if (status == PIO_OK)
        status = grow_sequences(b, pool, n_tokens, max_positions, err);
    if (status != PIO_OK) {
        b->n_seqs = 0;
        return status;
    }
    if ((status = fill_tables(b, pool, err)) != PIO_OK) {
        pio_kv_batch_rollback(b, pool);
        return status;
    }
    fill_positions(b, n_tokens);
    b->n_tokens = (int64_t)n_tokens;
    return PIO_OK;
}

void pio_kv_batch_rollback(pio_kv_batch *b, pk_kv_pool *pool)
{
    truncate_rows(b, pool, b->n_seqs);
    b->n_seqs = 0;
    b->n_tokens = 0;
}

void pio_kv_batch_free(pio_kv_batch *b)
{
    free(b->positions);
    free(b->seq_rows);
    free(b->seqs);
    free(b->old_lengths);
    free(b->block_tables);
    memset(b, 0, sizeof *b);
}
