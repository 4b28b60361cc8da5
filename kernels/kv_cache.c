/*
 * Paged KV cache block pool (see kv_cache.h). Invariants kept by every function:
 *   - a sequence of length L holds exactly ceil(L / block_size) blocks;
 *   - refs[b] counts the sequences' block lists and outside retains naming block b;
 *     the free list holds exactly the blocks with refs == 0;
 *   - a function that fails leaves every sequence, count and list as it found them.
 */
#include "kernels/kv_cache.h"

#include <stdlib.h>
#include <string.h>

typedef struct kv_seq {
    int in_use;
    int64_t length;
    int32_t *blocks;
    int64_t n_blocks;
    int64_t capacity; /* entries allocated in blocks */
} kv_seq;

struct pk_kv_pool {
    pk_context *ctx;
    pk_kv_pool_config cfg;
    int64_t n_blocks;
    uint64_t bytes;
    pk_buffer storage;
    int32_t *refs;      /* per block */
    int32_t *free_list; /* stack of free block ids; the top is taken next */
    int64_t free_count;
    kv_seq *seqs;
    int32_t n_seq_slots;
};

/* ------------------------------------------------------------------------------------------ */
/* Sizing                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static pio_status check_config(const pk_kv_pool_config *cfg, pio_error *err)
{
    if (cfg == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "kv pool: config is NULL");
    if (cfg->block_size <= 0 || cfg->n_layers <= 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "kv pool: block_size (%d) and n_layers (%d) must be positive",
                             (int)cfg->block_size, (int)cfg->n_layers);
    if (cfg->n_planes <= 0 || cfg->n_planes > PK_KV_MAX_PLANES)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "kv pool: n_planes %d not in 1..%d",
                             (int)cfg->n_planes, PK_KV_MAX_PLANES);
    for (int32_t p = 0; p < cfg->n_planes; p++)
        if (cfg->plane_width[p] <= 0)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "kv pool: plane %d has width %lld", (int)p,
                                 (long long)cfg->plane_width[p]);
    if (cfg->dtype != PIO_DTYPE_BF16 && cfg->dtype != PIO_DTYPE_F32)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "kv pool: dtype %s is not BF16 or F32", pio_dtype_name(cfg->dtype));
    if (cfg->n_blocks < 0 || cfg->max_tokens < 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "kv pool: negative capacity");
    return PIO_OK;
}

/* Bytes one block takes across all layers and planes; 0 on overflow. */
static uint64_t bytes_per_block(const pk_kv_pool_config *cfg)
{
    uint64_t per_token = 0, total;
    for (int32_t p = 0; p < cfg->n_planes; p++)
        if (__builtin_add_overflow(per_token, (uint64_t)cfg->plane_width[p], &per_token))
            return 0;
    if (__builtin_mul_overflow(per_token, (uint64_t)pio_dtype_size(cfg->dtype), &total) ||
        __builtin_mul_overflow(total, (uint64_t)cfg->n_layers, &total) ||
        __builtin_mul_overflow(total, (uint64_t)cfg->block_size, &total))
        return 0;
    return total;
}

pio_status pk_kv_pool_plan(const pk_kv_pool_config *cfg, int64_t *n_blocks, uint64_t *bytes,
                           pio_error *err)
{
    pio_status st = check_config(cfg, err);
    if (st != PIO_OK)
        return st;
    uint64_t block_bytes = bytes_per_block(cfg);
    if (block_bytes == 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "kv pool: block size overflows");
    int64_t blocks;
    if (cfg->n_blocks > 0)
        blocks = cfg->n_blocks;
    else if (cfg->max_tokens > 0)
        blocks = (cfg->max_tokens - 1) / cfg->block_size + 1;
    else if (cfg->max_bytes > 0)
        blocks = (int64_t)(cfg->max_bytes / block_bytes < (uint64_t)INT64_MAX
                               ? cfg->max_bytes / block_bytes
                               : (uint64_t)INT64_MAX);
    else
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "kv pool: set one of n_blocks, max_tokens or max_bytes");
    if (blocks < 1)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "kv pool: a budget of %llu bytes holds no block of %llu bytes",
                             (unsigned long long)cfg->max_bytes,
                             (unsigned long long)block_bytes);
    uint64_t total;
    if (blocks > INT32_MAX || __builtin_mul_overflow((uint64_t)blocks, block_bytes, &total))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "kv pool: %lld blocks is too many",
                             (long long)blocks);
    if (n_blocks != NULL)
        *n_blocks = blocks;
    if (bytes != NULL)
        *bytes = total;
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Pool                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* Pushes every block on the free list so that block 0 is taken first. */
static void free_all_blocks(pk_kv_pool *pool)
{
    for (int64_t i = 0; i < pool->n_blocks; i++) {
        pool->refs[i] = 0;
        pool->free_list[i] = (int32_t)(pool->n_blocks - 1 - i);
    }
    pool->free_count = pool->n_blocks;
}

pio_status pk_kv_pool_create(pk_context *ctx, const pk_kv_pool_config *cfg, pk_kv_pool **out,
                             pio_error *err)
{
    if (out == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "kv pool: out is NULL");
    *out = NULL;
    if (ctx == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "kv pool: ctx is NULL");
    int64_t n_blocks;
    uint64_t bytes;
    pio_status st = pk_kv_pool_plan(cfg, &n_blocks, &bytes, err);
    if (st != PIO_OK)
        return st;
    if (bytes > SIZE_MAX)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "kv pool: %llu bytes is too large",
                             (unsigned long long)bytes);
    pk_kv_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "kv pool: out of memory");
    pool->ctx = ctx;
    pool->cfg = *cfg;
    pool->n_blocks = n_blocks;
    pool->bytes = bytes;
    pool->refs = calloc((size_t)n_blocks, sizeof *pool->refs);
    pool->free_list = calloc((size_t)n_blocks, sizeof *pool->free_list);
    if (pool->refs == NULL || pool->free_list == NULL) {
        pk_kv_pool_destroy(pool);
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY,
                             "kv pool: cannot allocate bookkeeping for %lld blocks",
                             (long long)n_blocks);
    }
    st = pk_buffer_alloc(ctx, (size_t)bytes, &pool->storage, err);
    if (st != PIO_OK) {
        pk_kv_pool_destroy(pool);
        return st;
    }
    free_all_blocks(pool);
    *out = pool;
    return PIO_OK;
}

void pk_kv_pool_destroy(pk_kv_pool *pool)
{
    if (pool == NULL)
        return;
    for (int32_t s = 0; s < pool->n_seq_slots; s++)
        free(pool->seqs[s].blocks);
    free(pool->seqs);
    pk_buffer_free(pool->ctx, &pool->storage);
    free(pool->refs);
    free(pool->free_list);
    free(pool);
}

void pk_kv_pool_reset(pk_kv_pool *pool)
{
    for (int32_t s = 0; s < pool->n_seq_slots; s++) {
        kv_seq *seq = &pool->seqs[s];
        seq->in_use = 0;
        seq->length = 0;
        seq->n_blocks = 0;
    }
    free_all_blocks(pool);
}

pk_tensor pk_kv_pool_plane(const pk_kv_pool *pool, int32_t layer, int32_t plane)
{
    const pk_kv_pool_config *cfg = &pool->cfg;
    if (layer < 0 || layer >= cfg->n_layers || plane < 0 || plane >= cfg->n_planes)
        return pk_tensor_in(NULL, 0, PIO_DTYPE_INVALID, 0, 0);
    int64_t slots = pool->n_blocks * cfg->block_size;
    int64_t layer_width = 0, offset_width = 0;
    for (int32_t p = 0; p < cfg->n_planes; p++) {
        if (p < plane)
            offset_width += cfg->plane_width[p];
        layer_width += cfg->plane_width[p];
    }
    /* Layer-major, then plane: each plane is one contiguous [slots, width] array. */
    size_t elems = (size_t)slots * (size_t)(layer_width * layer + offset_width);
    return pk_tensor_in(&pool->storage, elems * pio_dtype_size(cfg->dtype), cfg->dtype, slots,
                        cfg->plane_width[plane]);
}

int32_t pk_kv_pool_block_size(const pk_kv_pool *pool)
{
    return pool->cfg.block_size;
}

int64_t pk_kv_pool_n_blocks(const pk_kv_pool *pool)
{
    return pool->n_blocks;
}

int64_t pk_kv_pool_free_blocks(const pk_kv_pool *pool)
{
    return pool->free_count;
}

uint64_t pk_kv_pool_bytes(const pk_kv_pool *pool)
{
    return pool->bytes;
}

/* ------------------------------------------------------------------------------------------ */
/* Blocks                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* The caller has checked free_count > 0. */
static int32_t take_block(pk_kv_pool *pool)
{
    int32_t block = pool->free_list[--pool->free_count];
    pool->refs[block] = 1;
    return block;
}

static void drop_block(pk_kv_pool *pool, int32_t block)
{
    if (--pool->refs[block] == 0)
        pool->free_list[pool->free_count++] = block;
}

static int block_in_use(const pk_kv_pool *pool, int32_t block)
{
    return block >= 0 && block < pool->n_blocks && pool->refs[block] > 0;
}

pio_status pk_kv_block_retain(pk_kv_pool *pool, int32_t block, pio_error *err)
{
    if (!block_in_use(pool, block))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "kv pool: block %d is not in use and cannot be retained",
                             (int)block);
    if (pool->refs[block] == INT32_MAX)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "kv pool: block %d has too many "
                             "references", (int)block);
    pool->refs[block]++;
    return PIO_OK;
}

pio_status pk_kv_block_release(pk_kv_pool *pool, int32_t block, pio_error *err)
{
    if (!block_in_use(pool, block))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "kv pool: block %d is not in use and cannot be released",
                             (int)block);
    drop_block(pool, block);
    return PIO_OK;
}

int32_t pk_kv_block_refs(const pk_kv_pool *pool, int32_t block)
{
    return block >= 0 && block < pool->n_blocks ? pool->refs[block] : -1;
}

/* Copies every plane's entries of block `from` into block `to` (on the device). */
static pio_status copy_block(pk_kv_pool *pool, int32_t to, int32_t from, pio_error *err)
{
    int32_t bs = pool->cfg.block_size;
    for (int32_t layer = 0; layer < pool->cfg.n_layers; layer++)
        for (int32_t plane = 0; plane < pool->cfg.n_planes; plane++) {
            pk_tensor all = pk_kv_pool_plane(pool, layer, plane);
            pk_tensor dst = pk_tensor_rows(&all, (int64_t)to * bs, bs);
            pk_tensor src = pk_tensor_rows(&all, (int64_t)from * bs, bs);
            pio_status st = pk_copy(pool->ctx, &dst, &src, err);
            if (st != PIO_OK)
                return st;
        }
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Sequences                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static kv_seq *find_seq(const pk_kv_pool *pool, int32_t id)
{
    if (id < 0 || id >= pool->n_seq_slots || !pool->seqs[id].in_use)
        return NULL;
    return &pool->seqs[id];
}

static pio_status unknown_seq(pio_error *err, int32_t id)
{
    return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "kv pool: no open sequence %d", (int)id);
}

static int64_t blocks_for(const pk_kv_pool *pool, int64_t tokens)
{
    return (tokens + pool->cfg.block_size - 1) / pool->cfg.block_size;
}

/* Makes room for `count` block ids in seq's list; leaves it untouched on failure. */
static pio_status reserve_block_list(kv_seq *seq, int64_t count, pio_error *err)
{
    if (count <= seq->capacity)
        return PIO_OK;
    int64_t capacity = seq->capacity > 0 ? seq->capacity : 8;
    while (capacity < count)
        capacity *= 2;
    int32_t *grown = realloc(seq->blocks, (size_t)capacity * sizeof *grown);
    if (grown == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "kv pool: out of memory for a block "
                             "table of %lld entries", (long long)capacity);
    seq->blocks = grown;
    seq->capacity = capacity;
    return PIO_OK;
}

/* Id of an unused sequence slot, growing the table when all are taken. */
static pio_status free_seq_slot(pk_kv_pool *pool, int32_t *id, pio_error *err)
{
    for (int32_t s = 0; s < pool->n_seq_slots; s++)
        if (!pool->seqs[s].in_use) {
            *id = s;
            return PIO_OK;
        }
    if (pool->n_seq_slots > INT32_MAX / 2)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "kv pool: too many sequences");
    int32_t slots = pool->n_seq_slots > 0 ? pool->n_seq_slots * 2 : 8;
    kv_seq *grown = realloc(pool->seqs, (size_t)slots * sizeof *grown);
    if (grown == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "kv pool: out of memory for sequences");
    memset(grown + pool->n_seq_slots, 0, (size_t)(slots - pool->n_seq_slots) * sizeof *grown);
    *id = pool->n_seq_slots;
    pool->seqs = grown;
    pool->n_seq_slots = slots;
    return PIO_OK;
}

pio_status pk_kv_seq_open(pk_kv_pool *pool, int32_t *seq, pio_error *err)
{
    if (pool == NULL || seq == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "kv pool: NULL argument");
    int32_t id = -1;
    pio_status st = free_seq_slot(pool, &id, err);
    if (st != PIO_OK)
        return st;
    kv_seq *s = &pool->seqs[id];
    s->in_use = 1;
    s->length = 0;
    s->n_blocks = 0;
    *seq = id;
    return PIO_OK;
}

void pk_kv_seq_close(pk_kv_pool *pool, int32_t seq)
{
    kv_seq *s = pool != NULL ? find_seq(pool, seq) : NULL;
    if (s == NULL)
        return;
    for (int64_t i = 0; i < s->n_blocks; i++)
        drop_block(pool, s->blocks[i]);
    s->in_use = 0;
    s->length = 0;
    s->n_blocks = 0;
}

/* Whether appending to s writes into a partly filled last block that others also reference. */
static int append_needs_private_copy(const pk_kv_pool *pool, const kv_seq *s, int64_t n_tokens)
{
    return n_tokens > 0 && s->length % pool->cfg.block_size != 0 &&
           pool->refs[s->blocks[s->n_blocks - 1]] > 1;
}

int64_t pk_kv_seq_blocks_needed(const pk_kv_pool *pool, int32_t seq, int64_t n_tokens)
{
    const kv_seq *s = find_seq(pool, seq);
    if (s == NULL || n_tokens < 0)
        return -1;
    return blocks_for(pool, s->length + n_tokens) - s->n_blocks +
           append_needs_private_copy(pool, s, n_tokens);
}

/* Replaces s's shared last block with a private copy taken from the free list. */
static pio_status make_last_block_private(pk_kv_pool *pool, kv_seq *s, pio_error *err)
{
    int32_t shared = s->blocks[s->n_blocks - 1];
    int32_t fresh = take_block(pool);
    pio_status st = copy_block(pool, fresh, shared, err);
    if (st != PIO_OK) {
        drop_block(pool, fresh);
        return st;
    }
    drop_block(pool, shared);
    s->blocks[s->n_blocks - 1] = fresh;
    return PIO_OK;
}

pio_status pk_kv_seq_append(pk_kv_pool *pool, int32_t seq, int64_t n_tokens, pio_error *err)
{
    kv_seq *s = pool != NULL ? find_seq(pool, seq) : NULL;
    if (s == NULL)
        return unknown_seq(err, seq);
    if (n_tokens < 0 || n_tokens > INT32_MAX - s->length)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "kv pool: cannot append %lld tokens "
                             "to sequence %d of length %lld", (long long)n_tokens, (int)seq,
                             (long long)s->length);
    int64_t total = blocks_for(pool, s->length + n_tokens);
    int64_t needed = pk_kv_seq_blocks_needed(pool, seq, n_tokens);
    if (needed > pool->free_count)
        return pio_error_set(err, PIO_SOFT_KV_FULL,
                             "KV cache full: sequence %d needs %lld more blocks, %lld of %lld "
                             "free", (int)seq, (long long)needed, (long long)pool->free_count,
                             (long long)pool->n_blocks);
    pio_status st = reserve_block_list(s, total, err);
    if (st != PIO_OK)
        return st;
    if (append_needs_private_copy(pool, s, n_tokens) &&
        (st = make_last_block_private(pool, s, err)) != PIO_OK)
        return st;
    while (s->n_blocks < total)
        s->blocks[s->n_blocks++] = take_block(pool);
    s->length += n_tokens;
    return PIO_OK;
}

pio_status pk_kv_seq_truncate(pk_kv_pool *pool, int32_t seq, int64_t length, pio_error *err)
{
    kv_seq *s = pool != NULL ? find_seq(pool, seq) : NULL;
    if (s == NULL)
        return unknown_seq(err, seq);
    if (length < 0 || length > s->length)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "kv pool: cannot truncate sequence %d of length %lld to %lld",
                             (int)seq, (long long)s->length, (long long)length);
    int64_t keep = blocks_for(pool, length);
    while (s->n_blocks > keep)
        drop_block(pool, s->blocks[--s->n_blocks]);
    s->length = length;
    return PIO_OK;
}

pio_status pk_kv_seq_fork(pk_kv_pool *pool, int32_t src, int32_t *seq, pio_error *err)
{
    if (pool == NULL || seq == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "kv pool: NULL argument");
    if (find_seq(pool, src) == NULL)
        return unknown_seq(err, src);
    int32_t id = -1;
    pio_status st = pk_kv_seq_open(pool, &id, err); /* may move pool->seqs */
    if (st != PIO_OK)
        return st;
    kv_seq *from = &pool->seqs[src], *to = &pool->seqs[id];
    if ((st = reserve_block_list(to, from->n_blocks, err)) != PIO_OK) {
        pk_kv_seq_close(pool, id);
        return st;
    }
    for (int64_t i = 0; i < from->n_blocks; i++) {
        to->blocks[i] = from->blocks[i];
        pool->refs[from->blocks[i]]++;
    }
    to->n_blocks = from->n_blocks;
    to->length = from->length;
    *seq = id;
    return PIO_OK;
}

pio_status pk_kv_seq_share_prefix(pk_kv_pool *pool, int32_t seq, const int32_t *blocks,
                                  int64_t n, pio_error *err)
{
    kv_seq *s = pool != NULL ? find_seq(pool, seq) : NULL;
    if (s == NULL)
        return unknown_seq(err, seq);
    if (s->length != 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "kv pool: sequence %d is not empty; a prefix goes first", (int)seq);
    if (n < 0 || (n > 0 && blocks == NULL) || n > INT32_MAX / pool->cfg.block_size)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "kv pool: bad prefix of %lld blocks",
                             (long long)n);
    for (int64_t i = 0; i < n; i++)
        if (!block_in_use(pool, blocks[i]))
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "kv pool: prefix block %d is not in use", (int)blocks[i]);
    pio_status st = reserve_block_list(s, n, err);
    if (st != PIO_OK)
        return st;
    for (int64_t i = 0; i < n; i++) {
        s->blocks[i] = blocks[i];
        pool->refs[blocks[i]]++;
    }
    s->n_blocks = n;
    s->length = n * pool->cfg.block_size;
    return PIO_OK;
}

int64_t pk_kv_seq_length(const pk_kv_pool *pool, int32_t seq)
{
    const kv_seq *s = find_seq(pool, seq);
    return s != NULL ? s->length : -1;
}

const int32_t *pk_kv_seq_blocks(const pk_kv_pool *pool, int32_t seq, int64_t *n_blocks)
{
    const kv_seq *s = find_seq(pool, seq);
    int64_t n = s != NULL ? s->n_blocks : 0;
    if (n_blocks != NULL)
        *n_blocks = n;
    return n > 0 ? s->blocks : NULL;
}

pio_status pk_kv_fill_block_tables(const pk_kv_pool *pool, const int32_t *seqs, int64_t n_seqs,
                                   int64_t width, int32_t *tables, pio_error *err)
{
    if (pool == NULL || n_seqs < 0 || width < 0 || (n_seqs > 0 && (seqs == NULL || tables == NULL)))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "kv pool: bad block table request");
    for (int64_t i = 0; i < n_seqs; i++) {
        const kv_seq *s = find_seq(pool, seqs[i]);
        if (s == NULL)
            return unknown_seq(err, seqs[i]);
        if (s->n_blocks > width)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "kv pool: sequence %d holds %lld blocks, the table is %lld wide",
                                 (int)seqs[i], (long long)s->n_blocks, (long long)width);
    }
    for (int64_t i = 0; i < n_seqs; i++) {
        const kv_seq *s = find_seq(pool, seqs[i]);
        int32_t *row = tables + i * width;
        for (int64_t j = 0; j < width; j++)
            row[j] = j < s->n_blocks ? s->blocks[j] : -1;
    }
    return PIO_OK;
}
