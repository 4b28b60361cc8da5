/*
 * The paged KV cache block pool: sizing, allocation and release, exhaustion as a soft status that
 * changes nothing, reuse after release, reference counts, fork and shared prefixes with copy on
 * write, and block tables for a batch.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "kernels/kv_cache.h"

typedef struct fixture {
    pk_context *ctx;
    pk_kv_pool *pool;
} fixture;

enum { BLOCK = 4, BLOCKS = 6, LAYERS = 2, WIDTH_K = 3, WIDTH_V = 5 };

static pk_kv_pool_config small_config(void)
{
    pk_kv_pool_config cfg = {.block_size = BLOCK, .n_layers = LAYERS, .n_planes = 2,
                             .plane_width = {WIDTH_K, WIDTH_V}, .dtype = PIO_DTYPE_F32,
                             .n_blocks = BLOCKS};
    return cfg;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (f == NULL || pk_context_create(PK_DEVICE_CPU, NULL, &f->ctx, NULL) != PIO_OK)
        return -1;
    pk_kv_pool_config cfg = small_config();
    if (pk_kv_pool_create(f->ctx, &cfg, &f->pool, NULL) != PIO_OK)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    pk_kv_pool_destroy(f->pool);
    pk_context_destroy(f->ctx);
    free(f);
    return 0;
}

static pk_kv_pool *pool_of(void **state)
{
    return ((fixture *)*state)->pool;
}

static int32_t open_seq(pk_kv_pool *pool)
{
    int32_t seq = -1;
    assert_int_equal(pk_kv_seq_open(pool, &seq, NULL), PIO_OK);
    return seq;
}

/* The sum of all reference counts equals blocks held by sequences plus outside retains, and
 * free blocks are exactly those at zero. */
static void assert_free_count_consistent(pk_kv_pool *pool)
{
    int64_t zero = 0;
    for (int32_t b = 0; b < pk_kv_pool_n_blocks(pool); b++)
        zero += pk_kv_block_refs(pool, b) == 0;
    assert_int_equal(zero, pk_kv_pool_free_blocks(pool));
}

/* ------------------------------------------------------------------------------------------ */

static void test_sizing(void **state)
{
    pk_kv_pool_config cfg = small_config();
    int64_t blocks;
    uint64_t bytes, per_block = (uint64_t)BLOCK * LAYERS * (WIDTH_K + WIDTH_V) * 4;
    assert_int_equal(pk_kv_pool_plan(&cfg, &blocks, &bytes, NULL), PIO_OK);
    assert_int_equal(blocks, BLOCKS);
    assert_int_equal(bytes, BLOCKS * per_block);
    assert_int_equal(pk_kv_pool_bytes(pool_of(state)), bytes);

    cfg.n_blocks = 0;
    cfg.max_tokens = 9; /* ceil(9 / 4) */
    assert_int_equal(pk_kv_pool_plan(&cfg, &blocks, NULL, NULL), PIO_OK);
    assert_int_equal(blocks, 3);
    cfg.max_tokens = 0;
    cfg.max_bytes = 5 * per_block + per_block / 2; /* whole blocks only */
    assert_int_equal(pk_kv_pool_plan(&cfg, &blocks, NULL, NULL), PIO_OK);
    assert_int_equal(blocks, 5);

    /* Qwen3-4B: 36 layers x (K, V) x 8 heads x 128 dims, bf16 = 147456 bytes per token. */
    pk_kv_pool_config qwen = {.block_size = 16, .n_layers = 36, .n_planes = 2,
                              .plane_width = {1024, 1024}, .dtype = PIO_DTYPE_BF16,
                              .max_tokens = 4096};
    assert_int_equal(pk_kv_pool_plan(&qwen, &blocks, &bytes, NULL), PIO_OK);
    assert_int_equal(blocks, 256);
    assert_int_equal(bytes, 4096ull * 147456ull);
    /* GLM-4.7-Flash latent cache: 47 layers x 576, bf16 = 54144 bytes per token. */
    pk_kv_pool_config glm = {.block_size = 64, .n_layers = 47, .n_planes = 1,
                             .plane_width = {576}, .dtype = PIO_DTYPE_BF16, .n_blocks = 2};
    assert_int_equal(pk_kv_pool_plan(&glm, &blocks, &bytes, NULL), PIO_OK);
    assert_int_equal(bytes, 2ull * 64 * 54144);
}

static void test_rejects_bad_configs(void **state)
{
    (void)state;
    pio_error err;
    pk_kv_pool_config cfg = small_config();
    cfg.block_size = 0;
    assert_int_equal(pk_kv_pool_plan(&cfg, NULL, NULL, &err), PIO_ERR_INVALID_ARGUMENT);
    cfg = small_config();
    cfg.n_planes = PK_KV_MAX_PLANES + 1;
    assert_int_equal(pk_kv_pool_plan(&cfg, NULL, NULL, &err), PIO_ERR_INVALID_ARGUMENT);
    cfg = small_config();
    cfg.plane_width[1] = 0;
    assert_int_equal(pk_kv_pool_plan(&cfg, NULL, NULL, &err), PIO_ERR_INVALID_ARGUMENT);
    cfg = small_config();
    cfg.dtype = PIO_DTYPE_I32;
    assert_int_equal(pk_kv_pool_plan(&cfg, NULL, NULL, &err), PIO_ERR_INVALID_ARGUMENT);
    cfg = small_config();
    cfg.n_blocks = 0; /* no capacity given */
    assert_int_equal(pk_kv_pool_plan(&cfg, NULL, NULL, &err), PIO_ERR_INVALID_ARGUMENT);
    cfg.max_bytes = 10; /* less than one block */
    assert_int_equal(pk_kv_pool_plan(&cfg, NULL, NULL, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "holds no block"));
    cfg = small_config();
    cfg.n_blocks = (int64_t)INT32_MAX + 1;
    assert_int_equal(pk_kv_pool_plan(&cfg, NULL, NULL, &err), PIO_ERR_INVALID_ARGUMENT);
    cfg = small_config();
    cfg.plane_width[0] = INT64_MAX / 2;
    assert_int_equal(pk_kv_pool_plan(&cfg, NULL, NULL, &err), PIO_ERR_INVALID_ARGUMENT);
}

static void test_planes_tile_the_storage(void **state)
{
    pk_kv_pool *pool = pool_of(state);
    int64_t slots = (int64_t)BLOCKS * BLOCK;
    char *previous_end = NULL;
    for (int32_t layer = 0; layer < LAYERS; layer++)
        for (int32_t plane = 0; plane < 2; plane++) {
            pk_tensor t = pk_kv_pool_plane(pool, layer, plane);
            assert_non_null(t.data);
            assert_int_equal(t.rows, slots);
            assert_int_equal(t.cols, plane == 0 ? WIDTH_K : WIDTH_V);
            assert_int_equal(t.dtype, PIO_DTYPE_F32);
            if (previous_end != NULL)
                assert_ptr_equal(t.data, previous_end);
            previous_end = (char *)t.data + pk_tensor_span_bytes(&t);
            memset(t.data, 0x7f, pk_tensor_span_bytes(&t)); /* ASan checks the bounds */
        }
    assert_null(pk_kv_pool_plane(pool, LAYERS, 0).data);
    assert_null(pk_kv_pool_plane(pool, 0, 2).data);
    assert_null(pk_kv_pool_plane(pool, -1, 0).data);
}

static void test_append_allocates_blocks(void **state)
{
    pk_kv_pool *pool = pool_of(state);
    int32_t seq = open_seq(pool);
    assert_int_equal(pk_kv_seq_length(pool, seq), 0);
    int64_t n;
    assert_null(pk_kv_seq_blocks(pool, seq, &n));
    assert_int_equal(n, 0);

    assert_int_equal(pk_kv_seq_blocks_needed(pool, seq, 1), 1);
    assert_int_equal(pk_kv_seq_append(pool, seq, 1, NULL), PIO_OK);
    assert_int_equal(pk_kv_seq_blocks_needed(pool, seq, 3), 0); /* fits the partial block */
    assert_int_equal(pk_kv_seq_append(pool, seq, 3, NULL), PIO_OK);
    assert_int_equal(pk_kv_seq_blocks_needed(pool, seq, 1), 1);
    assert_int_equal(pk_kv_seq_append(pool, seq, 6, NULL), PIO_OK); /* 10 tokens: 3 blocks */
    const int32_t *blocks = pk_kv_seq_blocks(pool, seq, &n);
    assert_int_equal(n, 3);
    assert_int_equal(pk_kv_seq_length(pool, seq), 10);
    /* A fresh pool hands out blocks 0, 1, 2, ... */
    for (int32_t i = 0; i < 3; i++) {
        assert_int_equal(blocks[i], i);
        assert_int_equal(pk_kv_block_refs(pool, blocks[i]), 1);
    }
    assert_int_equal(pk_kv_pool_free_blocks(pool), BLOCKS - 3);
    assert_int_equal(pk_kv_seq_append(pool, seq, 0, NULL), PIO_OK);
    assert_int_equal(pk_kv_seq_length(pool, seq), 10);
    assert_free_count_consistent(pool);
    pk_kv_seq_close(pool, seq);
    assert_int_equal(pk_kv_pool_free_blocks(pool), BLOCKS);
    assert_int_equal(pk_kv_seq_length(pool, seq), -1);
}

static void test_exhaustion_is_soft_and_changes_nothing(void **state)
{
    pk_kv_pool *pool = pool_of(state);
    int32_t a = open_seq(pool), b = open_seq(pool);
    assert_int_equal(pk_kv_seq_append(pool, a, 13, NULL), PIO_OK); /* 4 blocks */
    assert_int_equal(pk_kv_seq_append(pool, b, 2, NULL), PIO_OK);  /* 1 block */
    assert_int_equal(pk_kv_pool_free_blocks(pool), 1);

    int64_t n_before;
    const int32_t *blocks = pk_kv_seq_blocks(pool, b, &n_before);
    int32_t before[8];
    memcpy(before, blocks, (size_t)n_before * sizeof *before);

    pio_error err;
    /* b has 2 tokens in one block: 10 more need 3 blocks, only 1 is free. */
    assert_int_equal(pk_kv_seq_append(pool, b, 10, &err), PIO_SOFT_KV_FULL);
    assert_int_equal(err.status, PIO_SOFT_KV_FULL);
    assert_non_null(strstr(err.message, "KV cache full"));
    int64_t n_after;
    blocks = pk_kv_seq_blocks(pool, b, &n_after);
    assert_int_equal(n_after, n_before);
    assert_memory_equal(blocks, before, (size_t)n_before * sizeof *before);
    assert_int_equal(pk_kv_seq_length(pool, b), 2);
    assert_int_equal(pk_kv_pool_free_blocks(pool), 1);
    assert_free_count_consistent(pool);

    /* What fits still works: 6 more tokens = 1 more block, the last free one. */
    assert_int_equal(pk_kv_seq_append(pool, b, 6, NULL), PIO_OK);
    assert_int_equal(pk_kv_pool_free_blocks(pool), 0);
    assert_int_equal(pk_kv_seq_append(pool, b, 1, NULL), PIO_SOFT_KV_FULL);
    assert_int_equal(pk_kv_seq_append(pool, a, 3, NULL), PIO_OK); /* a's last block has room */
    assert_int_equal(pk_kv_seq_append(pool, a, 1, NULL), PIO_SOFT_KV_FULL);
    assert_int_equal(pk_kv_seq_length(pool, a), 16);
}

static void test_release_and_reuse(void **state)
{
    pk_kv_pool *pool = pool_of(state);
    int32_t a = open_seq(pool), b = open_seq(pool);
    assert_int_equal(pk_kv_seq_append(pool, a, 8, NULL), PIO_OK); /* blocks 0, 1 */
    assert_int_equal(pk_kv_seq_append(pool, b, 16, NULL), PIO_OK); /* blocks 2..5 */
    assert_int_equal(pk_kv_seq_append(pool, b, 1, NULL), PIO_SOFT_KV_FULL);
    pk_kv_seq_close(pool, a);
    assert_int_equal(pk_kv_pool_free_blocks(pool), 2);
    assert_int_equal(pk_kv_seq_append(pool, b, 5, NULL), PIO_OK);
    int64_t n;
    const int32_t *blocks = pk_kv_seq_blocks(pool, b, &n);
    assert_int_equal(n, 6);
    /* The released blocks came back, most recently released first. */
    assert_true((blocks[4] == 0 && blocks[5] == 1) || (blocks[4] == 1 && blocks[5] == 0));

    /* Ids are reused too. */
    int32_t c = open_seq(pool);
    assert_int_equal(c, a);
    pk_kv_seq_close(pool, c);
    pk_kv_seq_close(pool, c); /* closing twice is harmless */
    pk_kv_seq_close(pool, 999);
    assert_free_count_consistent(pool);
}

static void test_truncate(void **state)
{
    pk_kv_pool *pool = pool_of(state);
    int32_t seq = open_seq(pool);
    assert_int_equal(pk_kv_seq_append(pool, seq, 11, NULL), PIO_OK); /* 3 blocks */
    assert_int_equal(pk_kv_seq_truncate(pool, seq, 8, NULL), PIO_OK);
    assert_int_equal(pk_kv_seq_length(pool, seq), 8);
    assert_int_equal(pk_kv_pool_free_blocks(pool), BLOCKS - 2);
    assert_int_equal(pk_kv_seq_truncate(pool, seq, 5, NULL), PIO_OK);
    assert_int_equal(pk_kv_pool_free_blocks(pool), BLOCKS - 2);
    assert_int_equal(pk_kv_seq_truncate(pool, seq, 9, NULL), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_kv_seq_truncate(pool, seq, -1, NULL), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_kv_seq_truncate(pool, seq, 0, NULL), PIO_OK);
    assert_int_equal(pk_kv_pool_free_blocks(pool), BLOCKS);
    assert_int_equal(pk_kv_seq_append(pool, seq, 3, NULL), PIO_OK);
    assert_free_count_consistent(pool);
}

static void test_reference_counts(void **state)
{
    pk_kv_pool *pool = pool_of(state);
    int32_t seq = open_seq(pool);
    assert_int_equal(pk_kv_seq_append(pool, seq, 8, NULL), PIO_OK);
    const int32_t *blocks = pk_kv_seq_blocks(pool, seq, NULL);
    int32_t first = blocks[0], second = blocks[1];

    /* A prefix index keeps the first block alive after the sequence goes. */
    assert_int_equal(pk_kv_block_retain(pool, first, NULL), PIO_OK);
    assert_int_equal(pk_kv_block_refs(pool, first), 2);
    pk_kv_seq_close(pool, seq);
    assert_int_equal(pk_kv_block_refs(pool, first), 1);
    assert_int_equal(pk_kv_block_refs(pool, second), 0);
    assert_int_equal(pk_kv_pool_free_blocks(pool), BLOCKS - 1);
    assert_free_count_consistent(pool);

    pio_error err;
    assert_int_equal(pk_kv_block_retain(pool, second, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_kv_block_release(pool, second, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_kv_block_retain(pool, BLOCKS, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_kv_block_refs(pool, -1), -1);

    /* A new sequence starts from the cached block: no new block for its first 4 tokens. */
    int32_t reuse = open_seq(pool);
    assert_int_equal(pk_kv_seq_share_prefix(pool, reuse, &first, 1, NULL), PIO_OK);
    assert_int_equal(pk_kv_seq_length(pool, reuse), BLOCK);
    assert_int_equal(pk_kv_block_refs(pool, first), 2);
    assert_int_equal(pk_kv_seq_share_prefix(pool, reuse, &first, 1, &err),
                     PIO_ERR_INVALID_ARGUMENT); /* not empty any more */
    int32_t other = open_seq(pool);
    assert_int_equal(pk_kv_seq_share_prefix(pool, other, &second, 1, &err),
                     PIO_ERR_INVALID_ARGUMENT); /* a free block holds nothing to share */
    assert_int_equal(pk_kv_seq_length(pool, other), 0);

    assert_int_equal(pk_kv_block_release(pool, first, NULL), PIO_OK); /* the index lets go */
    assert_int_equal(pk_kv_block_refs(pool, first), 1);
    pk_kv_seq_close(pool, reuse);
    assert_int_equal(pk_kv_block_refs(pool, first), 0);
    assert_int_equal(pk_kv_pool_free_blocks(pool), BLOCKS);
    assert_free_count_consistent(pool);
}

/* Fills the entries of `seq` at positions [first, first + n) of every plane with `value`. */
static void write_entries(pk_kv_pool *pool, int32_t seq, int64_t first, int64_t n, float value)
{
    const int32_t *blocks = pk_kv_seq_blocks(pool, seq, NULL);
    for (int32_t layer = 0; layer < LAYERS; layer++)
        for (int32_t plane = 0; plane < 2; plane++) {
            pk_tensor t = pk_kv_pool_plane(pool, layer, plane);
            for (int64_t p = first; p < first + n; p++) {
                float *row = (float *)t.data + (blocks[p / BLOCK] * BLOCK + p % BLOCK) * t.stride;
                for (int64_t c = 0; c < t.cols; c++)
                    row[c] = value;
            }
        }
}

static float entry_of(pk_kv_pool *pool, int32_t seq, int64_t p, int32_t layer, int32_t plane)
{
    const int32_t *blocks = pk_kv_seq_blocks(pool, seq, NULL);
    pk_tensor t = pk_kv_pool_plane(pool, layer, plane);
    return ((float *)t.data)[(blocks[p / BLOCK] * BLOCK + p % BLOCK) * t.stride + t.cols - 1];
}

static void test_fork_copies_on_write(void **state)
{
    pk_kv_pool *pool = pool_of(state);
    int32_t parent = open_seq(pool);
    assert_int_equal(pk_kv_seq_append(pool, parent, 6, NULL), PIO_OK); /* 1 full + 1 partial */
    write_entries(pool, parent, 0, 6, 1.0f);
    int32_t child = -1;
    assert_int_equal(pk_kv_seq_fork(pool, parent, &child, NULL), PIO_OK);
    assert_int_equal(pk_kv_seq_length(pool, child), 6);
    assert_int_equal(pk_kv_pool_free_blocks(pool), BLOCKS - 2);
    const int32_t *pb = pk_kv_seq_blocks(pool, parent, NULL);
    int32_t shared_full = pb[0], shared_partial = pb[1];
    assert_int_equal(pk_kv_block_refs(pool, shared_full), 2);
    assert_int_equal(pk_kv_block_refs(pool, shared_partial), 2);

    /* The child writes into the shared partial block: it gets a private copy first. */
    assert_int_equal(pk_kv_seq_blocks_needed(pool, child, 1), 1);
    assert_int_equal(pk_kv_seq_append(pool, child, 1, NULL), PIO_OK);
    const int32_t *cb = pk_kv_seq_blocks(pool, child, NULL);
    assert_int_equal(cb[0], shared_full);
    assert_int_not_equal(cb[1], shared_partial);
    assert_int_equal(pk_kv_block_refs(pool, shared_partial), 1);
    for (int32_t layer = 0; layer < LAYERS; layer++)
        for (int32_t plane = 0; plane < 2; plane++)
            for (int64_t p = 0; p < 6; p++)
                assert_true(entry_of(pool, child, p, layer, plane) == 1.0f); /* copied */
    write_entries(pool, child, 6, 1, 2.0f);
    write_entries(pool, child, 5, 1, 3.0f);
    assert_true(entry_of(pool, parent, 5, 1, 1) == 1.0f); /* the parent is untouched */
    assert_int_equal(pk_kv_pool_free_blocks(pool), BLOCKS - 3);

    /* Now the parent's partial block is its own again: appending copies nothing. */
    assert_int_equal(pk_kv_seq_blocks_needed(pool, parent, 2), 0);
    assert_int_equal(pk_kv_seq_append(pool, parent, 2, NULL), PIO_OK);
    assert_int_equal(pk_kv_seq_blocks(pool, parent, NULL)[1], shared_partial);
    pk_kv_seq_close(pool, parent);
    pk_kv_seq_close(pool, child);
    assert_int_equal(pk_kv_pool_free_blocks(pool), BLOCKS);
    assert_free_count_consistent(pool);
}

static void test_copy_on_write_needs_a_free_block(void **state)
{
    pk_kv_pool *pool = pool_of(state);
    int32_t parent = open_seq(pool), filler = open_seq(pool), child = -1;
    assert_int_equal(pk_kv_seq_append(pool, parent, 5, NULL), PIO_OK); /* 2 blocks */
    assert_int_equal(pk_kv_seq_fork(pool, parent, &child, NULL), PIO_OK);
    assert_int_equal(pk_kv_seq_append(pool, filler, 16, NULL), PIO_OK); /* the other 4 */
    pio_error err;
    assert_int_equal(pk_kv_seq_append(pool, child, 1, &err), PIO_SOFT_KV_FULL);
    assert_int_equal(pk_kv_seq_length(pool, child), 5);
    assert_int_equal(pk_kv_block_refs(pool, pk_kv_seq_blocks(pool, child, NULL)[1]), 2);
    assert_free_count_consistent(pool);
    /* Truncating the shared tail and regrowing also copies before writing. */
    pk_kv_seq_close(pool, filler);
    assert_int_equal(pk_kv_seq_truncate(pool, child, 3, NULL), PIO_OK);
    assert_int_equal(pk_kv_seq_append(pool, child, 1, NULL), PIO_OK);
    assert_int_not_equal(pk_kv_seq_blocks(pool, child, NULL)[0],
                         pk_kv_seq_blocks(pool, parent, NULL)[0]);
    assert_free_count_consistent(pool);
}

static void test_block_tables(void **state)
{
    pk_kv_pool *pool = pool_of(state);
    int32_t a = open_seq(pool), b = open_seq(pool), c = open_seq(pool);
    assert_int_equal(pk_kv_seq_append(pool, a, 9, NULL), PIO_OK); /* 0 1 2 */
    assert_int_equal(pk_kv_seq_append(pool, b, 1, NULL), PIO_OK); /* 3 */
    int32_t seqs[3] = {b, a, c}, tables[3 * 4];
    assert_int_equal(pk_kv_fill_block_tables(pool, seqs, 3, 4, tables, NULL), PIO_OK);
    const int32_t want[12] = {3, -1, -1, -1, 0, 1, 2, -1, -1, -1, -1, -1};
    assert_memory_equal(tables, want, sizeof want);
    pio_error err;
    assert_int_equal(pk_kv_fill_block_tables(pool, seqs, 3, 2, tables, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    seqs[2] = 77;
    assert_int_equal(pk_kv_fill_block_tables(pool, seqs, 3, 4, tables, &err),
                     PIO_ERR_INVALID_ARGUMENT);
}

static void test_many_sequences_and_reset(void **state)
{
    pk_kv_pool *pool = pool_of(state);
    int32_t ids[40];
    for (int i = 0; i < 40; i++) { /* the sequence table grows past its first size */
        ids[i] = open_seq(pool);
        assert_int_equal(ids[i], i);
    }
    for (int i = 0; i < BLOCKS; i++)
        assert_int_equal(pk_kv_seq_append(pool, ids[i], 1, NULL), PIO_OK);
    assert_int_equal(pk_kv_seq_append(pool, ids[BLOCKS], 1, NULL), PIO_SOFT_KV_FULL);
    assert_int_equal(pk_kv_block_retain(pool, 0, NULL), PIO_OK);
    pk_kv_pool_reset(pool);
    assert_int_equal(pk_kv_pool_free_blocks(pool), BLOCKS);
    assert_int_equal(pk_kv_block_refs(pool, 0), 0);
    assert_int_equal(pk_kv_seq_length(pool, ids[3]), -1);
    assert_int_equal(open_seq(pool), 0);
    assert_int_equal(pk_kv_seq_append(pool, 0, BLOCKS * BLOCK, NULL), PIO_OK);
}

static void test_rejects_bad_calls(void **state)
{
    pk_kv_pool *pool = pool_of(state);
    pio_error err;
    assert_int_equal(pk_kv_seq_append(pool, 5, 1, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "no open sequence 5"));
    int32_t seq = open_seq(pool);
    assert_int_equal(pk_kv_seq_append(pool, seq, -1, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_kv_seq_append(pool, seq, (int64_t)INT32_MAX + 1, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_kv_seq_blocks_needed(pool, 9, 1), -1);
    int32_t out;
    assert_int_equal(pk_kv_seq_fork(pool, 9, &out, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_kv_seq_open(pool, NULL, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pk_kv_pool_create(NULL, NULL, NULL, &err), PIO_ERR_INVALID_ARGUMENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sizing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejects_bad_configs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_planes_tile_the_storage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_append_allocates_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exhaustion_is_soft_and_changes_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_release_and_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reference_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fork_copies_on_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_copy_on_write_needs_a_free_block, setup, teardown),
        cmocka_unit_test_setup_teardown(test_block_tables, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_sequences_and_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejects_bad_calls, setup, teardown),
    };
    return cmocka_run_group_tests_name("kv_cache", tests, NULL, NULL);
}
