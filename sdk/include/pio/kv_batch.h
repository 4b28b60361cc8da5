/*
 * Paged-KV plumbing that every text model needs around kernels/kv_cache.h:
 *   - the kv_cache.* keys of the YAML config, read through the host services;
 *   - turning a flattened batch (one sequence id per token) into what the attention op reads:
 *     each sequence grows by its tokens in the pool, the tokens get the positions that continue
 *     their sequence, and the block tables of the sequences involved are filled. A failure
 *     leaves every sequence as it was, and a forward that fails afterwards can undo the growth.
 *
 * What a model's cache entry is (K/V heads, a latent vector) stays with the model: it fills
 * the plane widths of its pk_kv_pool_config itself.
 */
#ifndef PIO_KV_BATCH_H
#define PIO_KV_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kv_cache.h"
#include "pio/error.h"
#include "pio/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pio_kv_settings {
    int32_t block_size;  /* kv_cache.block_size; 16 when not set */
    int64_t max_tokens;  /* kv_cache.max_tokens; 0 when not set */
    uint64_t max_bytes;  /* kv_cache.memory_gb in bytes; 0 when not set */
    pio_dtype dtype;     /* kv_cache.dtype: "auto", "bf16", "bfloat16" -> BF16;
                            "f32", "fp32", "float32" -> F32 */
} pio_kv_settings;

/* Reads the kv_cache.* keys. A dtype this code cannot store is PIO_ERR_UNSUPPORTED naming the
 * key; a wrong type is PIO_ERR_CONFIG recorded by the host (err->message left empty). */
pio_status pio_kv_settings_read(const pio_host_services *services, void *host,
                                pio_kv_settings *out, pio_error *err);

/* Sets block_size, dtype and the capacity of cfg: max_tokens when set, else the memory
 * budget, else default_tokens. */
void pio_kv_settings_apply(const pio_kv_settings *settings, int64_t default_tokens,
                           pk_kv_pool_config *cfg);

/* The host arrays of one prepared batch, reused (grown as needed) from call to call. */
typedef struct pio_kv_batch {
    int64_t n_tokens;
    int64_t n_seqs;        /* distinct sequences, in order of first appearance */
    int64_t table_width;   /* blocks of the longest sequence */
    int32_t *positions;    /* [n_tokens] position of each token in its sequence */
    int32_t *seq_rows;     /* [n_tokens] row of block_tables (index into seqs) */
    int32_t *seqs;         /* [n_seqs] sequence ids */
    int64_t *old_lengths;  /* [n_seqs] lengths before the batch */
    int32_t *block_tables; /* [n_seqs, table_width], rows padded with -1 */
    size_t token_capacity, table_capacity;
} pio_kv_batch;

/*
 * Grows every sequence of seq_ids by its tokens and fills *batch. PIO_SOFT_KV_FULL when the
 * pool lacks blocks; PIO_ERR_INVALID_ARGUMENT for an unknown sequence or one that would pass
 * max_positions (the message names both). On failure no sequence changed.
 */
pio_status pio_kv_batch_prepare(pio_kv_batch *batch, pk_kv_pool *pool, const int32_t *seq_ids,
                                size_t n_tokens, int64_t max_positions, pio_error *err);

/* Shrinks the sequences of the last prepared batch back to their earlier lengths. */
void pio_kv_batch_rollback(pio_kv_batch *batch, pk_kv_pool *pool);

void pio_kv_batch_free(pio_kv_batch *batch);

#ifdef __cplusplus
}
#endif

#endif
