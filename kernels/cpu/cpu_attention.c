/*
 * Paged-cache attention on the CPU: storing new keys/values into their slots, and causal GQA
 * attention of each token over its own sequence's cache.
 *
 * Work is split into (token, kv head) items. An item serves the group of query heads that share
 * the kv head, so each cached key and value row is read once per group: for every key the group's
 * scores are computed, each score row gets a softmax, then the value rows are summed.
 */
#include "kernels/cpu_internal.h"

#include <omp.h>
#include <string.h>

/* Where cache entries of the batch's sequences live. */
typedef struct slot_map {
    const int32_t *positions;
    const int32_t *seq_rows;
    const int32_t *tables;
    int64_t table_stride;
    int64_t table_rows;
    int64_t table_width;
    int32_t block_size;
    int64_t n_blocks; /* blocks in the cache planes */
} slot_map;

static slot_map make_slot_map(const pk_token_batch *b, const pk_tensor *cache)
{
    slot_map map = {
        .positions = b->positions.data,
        .seq_rows = b->seq_rows.data,
        .tables = b->block_tables.data,
        .table_stride = b->block_tables.stride,
        .table_rows = b->block_tables.rows,
        .table_width = b->block_tables.cols,
        .block_size = b->block_size,
        .n_blocks = cache->rows / b->block_size,
    };
    return map;
}

static const int32_t *table_of(const slot_map *map, int64_t t)
{
    return map->tables + (int64_t)map->seq_rows[t] * map->table_stride;
}

/* Cache row of position j of token t's sequence. */
static int64_t slot_of(const slot_map *map, int64_t t, int64_t j)
{
    return (int64_t)table_of(map, t)[j / map->block_size] * map->block_size + j % map->block_size;
}

/*
 * Checks that token t's sequence row, position and block ids are usable: the block holding its
 * own position, and with `whole_prefix` every block before it too (attention reads them all).
 */
static pio_status check_token(const slot_map *map, int64_t t, int whole_prefix, const char *op,
                              pio_error *err)
{
    int32_t pos = map->positions[t], row = map->seq_rows[t];
    if (pos < 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: token %lld has position %d",
                             op, (long long)t, (int)pos);
    if (row < 0 || row >= map->table_rows)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: token %lld names block table row %d of %lld", op,
                             (long long)t, (int)row, (long long)map->table_rows);
    int64_t last = pos / map->block_size;
    if (last >= map->table_width)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: token %lld at position %d needs block %lld of a %lld-wide "
                             "block table", op, (long long)t, (int)pos, (long long)last,
                             (long long)map->table_width);
    const int32_t *table = table_of(map, t);
    for (int64_t i = whole_prefix ? 0 : last; i <= last; i++)
        if (table[i] < 0 || table[i] >= map->n_blocks)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "%s: token %lld uses block id %d, the cache has %lld blocks",
                                 op, (long long)t, (int)table[i], (long long)map->n_blocks);
    return PIO_OK;
}

static void store_row(void *dst, pio_dtype dst_type, const float *src, int64_t n)
{
    if (dst_type == PIO_DTYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++)
        d[i] = pio_f32_to_bf16(src[i]);
}

pio_status pk_cpu_kv_store(pk_context *ctx, const pk_tensor *k_cache, const pk_tensor *v_cache,
                           const pk_tensor *k_new, const pk_tensor *v_new,
                           const pk_token_batch *batch, const pk_attention_params *params,
                           pio_error *err)
{
    (void)params;
    slot_map map = make_slot_map(batch, k_cache);
    pio_status st;
    for (int64_t t = 0; t < k_new->rows; t++)
        if ((st = check_token(&map, t, 0, "pk_kv_store", err)) != PIO_OK)
            return st;
    pk_cpu_state *state = pk_cpu_state_of(ctx);
#pragma omp parallel for num_threads(state->n_threads) if (k_new->rows > 1)
    for (int64_t t = 0; t < k_new->rows; t++) {
        int64_t slot = slot_of(&map, t, map.positions[t]);
        store_row(pk_cpu_row(k_cache, slot), k_cache->dtype, (const float *)pk_cpu_row(k_new, t),
                  k_new->cols);
        if (v_new != NULL)
            store_row(pk_cpu_row(v_cache, slot), v_cache->dtype,
                      (const float *)pk_cpu_row(v_new, t), v_new->cols);
    }
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */

typedef struct attention_job {
    const pk_tensor *out, *q, *k_cache, *v_cache;
    const pk_attention_params *p;
    slot_map map;
    int32_t group; /* query heads per kv head */
    int avx2;
} attention_job;

static const void *cache_entry(const pk_tensor *cache, int64_t slot, int64_t first_col)
{
    return (const char *)pk_cpu_row(cache, slot) + (size_t)first_col * pio_dtype_size(cache->dtype);
}

/* Query heads kv_head*group .. +group of token t; scores holds group rows of n_keys floats. */
static void attend_group(const attention_job *job, int64_t t, int32_t kv_head, float *scores)
{
    const pk_attention_params *p = job->p;
    int64_t n_keys = (int64_t)job->map.positions[t] + 1;
    int64_t first_head = (int64_t)kv_head * job->group;
    const float *q_row = (const float *)pk_cpu_row(job->q, t);
    float *out_row = (float *)pk_cpu_row(job->out, t);

    for (int64_t j = 0; j < n_keys; j++) {
        const void *key = cache_entry(job->k_cache, slot_of(&job->map, t, j),
                                      (int64_t)kv_head * p->head_dim);
        for (int32_t g = 0; g < job->group; g++) {
            const float *qh = q_row + (first_head + g) * p->head_dim;
            scores[g * n_keys + j] =
                p->scale * pk_cpu_dot(job->avx2, qh, key, job->k_cache->dtype, p->head_dim);
        }
    }
    for (int32_t g = 0; g < job->group; g++)
        pk_cpu_softmax_row(scores + g * n_keys, scores + g * n_keys, n_keys);

    memset(out_row + first_head * p->v_head_dim, 0,
           (size_t)job->group * (size_t)p->v_head_dim * sizeof(float));
    for (int64_t j = 0; j < n_keys; j++) {
        const void *value = cache_entry(job->v_cache, slot_of(&job->map, t, j),
                                        (int64_t)kv_head * p->v_head_dim);
        for (int32_t g = 0; g < job->group; g++)
            pk_cpu_axpy(job->avx2, out_row + (first_head + g) * p->v_head_dim,
                        scores[g * n_keys + j], value, job->v_cache->dtype, p->v_head_dim);
    }
}

pio_status pk_cpu_attention(pk_context *ctx, const pk_tensor *out, const pk_tensor *q,
                            const pk_tensor *k_cache, const pk_tensor *v_cache,
                            const pk_token_batch *batch, const pk_attention_params *params,
                            pio_error *err)
{
    pk_cpu_state *state = pk_cpu_state_of(ctx);
    attention_job job = {
        .out = out, .q = q, .k_cache = k_cache, .v_cache = v_cache, .p = params,
        .map = make_slot_map(batch, k_cache),
        .group = params->n_q_heads / params->n_kv_heads,
        .avx2 = state->use_avx2,
    };
    int64_t max_keys = 0;
    pio_status st;
    for (int64_t t = 0; t < q->rows; t++) {
        if ((st = check_token(&job.map, t, 1, "pk_attention", err)) != PIO_OK)
            return st;
        if ((int64_t)job.map.positions[t] + 1 > max_keys)
            max_keys = (int64_t)job.map.positions[t] + 1;
    }
    if (q->rows == 0)
        return PIO_OK;
    size_t stride;
    float *scratch = pk_cpu_scratch(ctx, (size_t)job.group * (size_t)max_keys, &stride, err);
    if (scratch == NULL)
        return PIO_ERR_OUT_OF_MEMORY;
    int64_t items = q->rows * params->n_kv_heads;
#pragma omp parallel num_threads(state->n_threads) if (items > 1)
    {
        float *scores = scratch + (size_t)omp_get_thread_num() * stride;
        /* Items differ in length (prefill vs decode, long vs short sequences). */
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; item++)
            attend_group(&job, item / params->n_kv_heads, (int32_t)(item % params->n_kv_heads),
                         scores);
    }
    return PIO_OK;
}
