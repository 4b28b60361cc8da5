/*
 * The paged KV cache: a pool of fixed-size blocks, allocated once, shared by every sequence.
 *
 * Storage. For every layer the pool holds n_planes planes (2 for separate K and V; 1 for a
 * latent cache such as GLM's 576-wide MLA entry). A plane is a tensor of
 * [n_blocks · block_size, width] on the context's device: row `slot` holds one token's entry,
 * and a token at position p of a sequence lives in slot
 *     blocks[p / block_size] · block_size + p % block_size
 * of its sequence's block list. For K/V planes an entry is [n_kv_heads][head_dim], which is what
 * pk_kv_store / pk_attention (ops.h) read and write. Entries are BF16 or F32 as configured.
 *
 * Bookkeeping (host memory). Blocks carry reference counts and unused blocks sit on a free list.
 * A sequence is a small integer id with a length and a block list that grows as tokens are
 * appended. A block may be referenced by several sequences (fork, shared prefixes) and by an
 * outside index (pk_kv_block_retain); a sequence that appends into a shared, partly filled block
 * first gets a private copy of it (copy on write), so sharing never changes another sequence's
 * entries. Running out of blocks is PIO_SOFT_KV_FULL and leaves everything as it was.
 *
 * Not thread-safe: one owner drives a pool (the plugin instance's thread).
 */
#ifndef PIO_KERNELS_KV_CACHE_H
#define PIO_KERNELS_KV_CACHE_H

#include <stdint.h>

#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PK_KV_MAX_PLANES 4

typedef struct pk_kv_pool pk_kv_pool;

typedef struct pk_kv_pool_config {
    int32_t block_size;                    /* tokens per block */
    int32_t n_layers;
    int32_t n_planes;                      /* planes per layer, 1..PK_KV_MAX_PLANES */
    int64_t plane_width[PK_KV_MAX_PLANES]; /* elements per token in each plane */
    pio_dtype dtype;                       /* PIO_DTYPE_BF16 or PIO_DTYPE_F32 */
    /* Capacity: the first of these that is non-zero decides. */
    int64_t n_blocks;
    int64_t max_tokens; /* n_blocks = ceil(max_tokens / block_size) */
    uint64_t max_bytes; /* n_blocks = floor(max_bytes / bytes per block) */
} pk_kv_pool_config;

/* Blocks and bytes of device memory a pool of cfg would take, without allocating (to reserve
 * memory with the host before creating it). */
pio_status pk_kv_pool_plan(const pk_kv_pool_config *cfg, int64_t *n_blocks, uint64_t *bytes,
                           pio_error *err);
/* Allocates the planes on ctx's device; ctx must outlive the pool. */
pio_status pk_kv_pool_create(pk_context *ctx, const pk_kv_pool_config *cfg, pk_kv_pool **out,
                             pio_error *err);
void pk_kv_pool_destroy(pk_kv_pool *pool);
/* Closes every sequence and drops every reference: all blocks are free again. */
void pk_kv_pool_reset(pk_kv_pool *pool);

/* Plane `plane` of layer `layer`, [n_blocks · block_size, width]; invalid if out of range. */
pk_tensor pk_kv_pool_plane(const pk_kv_pool *pool, int32_t layer, int32_t plane);
int32_t pk_kv_pool_block_size(const pk_kv_pool *pool);
int64_t pk_kv_pool_n_blocks(const pk_kv_pool *pool);
int64_t pk_kv_pool_free_blocks(const pk_kv_pool *pool);
uint64_t pk_kv_pool_bytes(const pk_kv_pool *pool);

/* ------------------------------------------------------------------------------------------ */
/* Sequences                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* A new empty sequence; ids are small non-negative integers, reused after close. */
pio_status pk_kv_seq_open(pk_kv_pool *pool, int32_t *seq, pio_error *err);
/* Releases the sequence's blocks and its id; unknown ids are ignored. */
void pk_kv_seq_close(pk_kv_pool *pool, int32_t seq);
/* Grows the sequence by n_tokens positions, taking the blocks that needs (and a private copy of
 * a shared last block it will write into). PIO_SOFT_KV_FULL when the free blocks do not suffice;
 * on any failure the sequence and the pool are unchanged. */
pio_status pk_kv_seq_append(pk_kv_pool *pool, int32_t seq, int64_t n_tokens, pio_error *err);
/* Shortens the sequence to `length` tokens, releasing blocks no longer needed. */
pio_status pk_kv_seq_truncate(pk_kv_pool *pool, int32_t seq, int64_t length, pio_error *err);
/* A new sequence sharing all of src's blocks (and its length); no entries are copied. */
pio_status pk_kv_seq_fork(pk_kv_pool *pool, int32_t src, int32_t *seq, pio_error *err);
/* Starts an empty sequence with n already-filled blocks (a cached prefix): each is retained,
 * and the length becomes n · block_size. Every block must be in use (reference count > 0). */
pio_status pk_kv_seq_share_prefix(pk_kv_pool *pool, int32_t seq, const int32_t *blocks,
                                  int64_t n, pio_error *err);

/* Tokens held; -1 for an unknown sequence. */
int64_t pk_kv_seq_length(const pk_kv_pool *pool, int32_t seq);
/* The sequence's block ids in order (*n_blocks of them), valid until the next change to it;
 * NULL with *n_blocks = 0 for an unknown or empty sequence. */
const int32_t *pk_kv_seq_blocks(const pk_kv_pool *pool, int32_t seq, int64_t *n_blocks);
/* Free blocks pk_kv_seq_append(seq, n_tokens) would take; -1 for an unknown sequence. */
int64_t pk_kv_seq_blocks_needed(const pk_kv_pool *pool, int32_t seq, int64_t n_tokens);

/* Fills tables[i · width + j] with block j of seqs[i], padding each row with -1: the
 * block_tables of a pk_token_batch. width must hold the longest block list. */
pio_status pk_kv_fill_block_tables(const pk_kv_pool *pool, const int32_t *seqs, int64_t n_seqs,
                                   int64_t width, int32_t *tables, pio_error *err);

/* ------------------------------------------------------------------------------------------ */
/* Block references (for a prefix index that keeps blocks alive beyond their sequences)        */
/* ------------------------------------------------------------------------------------------ */

/* Adds a reference to an in-use block. */
pio_status pk_kv_block_retain(pk_kv_pool *pool, int32_t block, pio_error *err);
/* Drops a reference; the block returns to the free list at zero. */
pio_status pk_kv_block_release(pk_kv_pool *pool, int32_t block, pio_error *err);
/* Current reference count (0 = free); -1 for an id outside the pool. */
int32_t pk_kv_block_refs(const pk_kv_pool *pool, int32_t block);

#ifdef __cplusplus
}
#endif

#endif
