/* The batched forward of a decoder model and its sequence operations (see pio/decoder.h). */
#include "pio/decoder.h"

#include <stdio.h>

#include "decoder_graph.h"
#include "decoder_internal.h"

pio_status pio_decoder_seq_open(void *self, int32_t *seq, pio_error *err)
{
    pio_decoder *m = self;
    if (m->ranks != NULL)
        return pio_decoder_tp_seq_open(m, seq, err);
    return pk_kv_seq_open(m->pool, seq, err);
}

void pio_decoder_seq_close(void *self, int32_t seq)
{
    pio_decoder *m = self;
    if (m->ranks != NULL) {
        for (int r = 0; r < m->shard.size; r++)
            pk_kv_seq_close(m->ranks[r]->pool, seq);
        return;
    }
    pk_kv_seq_close(m->pool, seq);
}

int64_t pio_decoder_seq_length(void *self, int32_t seq)
{
    const pio_decoder *m = self;
    return pk_kv_seq_length(m->pool, seq);
}

static pio_status check_batch(const pio_decoder *m, const pio_textgen_batch *b, pio_error *err)
{
    if (b == NULL || b->struct_size < sizeof *b || b->n_tokens == 0 || b->tokens == NULL ||
        b->seq_ids == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "forward: the batch is empty, too small or lacks its arrays");
    for (size_t t = 0; t < b->n_tokens; t++)
        if (b->tokens[t] < 0 || b->tokens[t] >= m->config.vocab_size)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "forward: token %zu has id %d, "
                                 "outside the vocabulary [0, %ld)", t, (int)b->tokens[t],
                                 m->config.vocab_size);
    if (b->n_logits_rows > 0 &&
        (b->logits_rows == NULL || (b->logits == NULL && pio_decoder_batch_argmax(b) == NULL &&
                                    pio_decoder_batch_sampled(b) == NULL)))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "forward: logits rows asked for without arrays");
    for (size_t i = 0; i < b->n_logits_rows; i++)
        if (b->logits_rows[i] < 0 || (size_t)b->logits_rows[i] >= b->n_tokens)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "forward: logits row %zu names "
                                 "token %d of a batch of %zu", i, (int)b->logits_rows[i],
                                 b->n_tokens);
    return pio_decoder_check_sampling(m, b, err);
}

int32_t *pio_decoder_batch_argmax(const pio_textgen_batch *b)
{
    return PIO_HAS_FIELD(b, pio_textgen_batch, argmax) ? b->argmax : NULL;
}

pio_status pio_decoder_stage_ids(const pio_decoder *m, const pk_buffer *buf, const int32_t *host,
                                 int64_t n, pk_tensor *out, pio_error *err)
{
    *out = pk_tensor_in(buf, 0, PIO_DTYPE_I32, 1, n);
    pk_tensor src = pk_tensor_host((void *)host, PIO_DTYPE_I32, 1, n);
    return pk_copy(m->ctx, out, &src, err);
}

static pio_status stage_block_tables(pio_decoder *m, pk_tensor *out, pio_error *err)
{
    const pio_kv_batch *kb = &m->kv_batch;
    size_t bytes = (size_t)(kb->n_seqs * kb->table_width) * sizeof(int32_t);
    if (bytes > m->ws.block_tables.bytes) {
        pk_buffer_free(m->ctx, &m->ws.block_tables);
        pio_status status = pk_buffer_alloc(m->ctx, 2 * bytes, &m->ws.block_tables, err);
        if (status != PIO_OK)
            return status;
    }
    *out = pk_tensor_in(&m->ws.block_tables, 0, PIO_DTYPE_I32, kb->n_seqs, kb->table_width);
    pk_tensor src = pk_tensor_host(kb->block_tables, PIO_DTYPE_I32, kb->n_seqs, kb->table_width);
    return pk_copy(m->ctx, out, &src, err);
}

/* The chunk's activations; q, k and v are adjacent column views of one buffer, so a backend
 * can project them with one matmul when the weights are packed back to back. */
static pk_attention_activations activations(const pio_decoder *m, int64_t n)
{
    const pio_decoder_config *c = &m->config;
    const pio_decoder_workspace *ws = &m->ws;
    int64_t q_width = m->shard.n_heads * c->head_dim;
    int64_t kv_width = m->shard.n_kv_heads * c->head_dim;
    pk_tensor qkv = pk_tensor_in(&ws->qkv, 0, PIO_DTYPE_F32, n, q_width + 2 * kv_width);
    return (pk_attention_activations){
        .x = pk_tensor_in(&ws->x, 0, PIO_DTYPE_F32, n, c->hidden_size),
        .h = pk_tensor_in(&ws->h, 0, PIO_DTYPE_F32, n, c->hidden_size),
        .q = pk_tensor_cols(&qkv, 0, q_width),
        .k = pk_tensor_cols(&qkv, q_width, kv_width),
        .v = pk_tensor_cols(&qkv, q_width + kv_width, kv_width),
        .attn = pk_tensor_in(&ws->attn, 0, PIO_DTYPE_F32, n, q_width),
    };
}

static pio_status attention_block(const pio_decoder *m, int32_t layer,
                                  const pk_attention_activations *a, const pk_token_batch *tb,
                                  pio_error *err)
{
    const pio_decoder_config *c = &m->config;
    pk_qk_norm_attention_shape shape = {
        .n_heads = (int32_t)m->shard.n_heads, .n_kv_heads = (int32_t)m->shard.n_kv_heads,
        .head_dim = (int32_t)c->head_dim, .rms_norm_eps = (float)c->rms_norm_eps,
        .rope_theta = (float)c->rope_theta};
    pk_tensor k_cache = pk_kv_pool_plane(m->pool, layer, 0);
    pk_tensor v_cache = pk_kv_pool_plane(m->pool, layer, 1);
    return pk_qk_norm_attention_block_tp(m->ctx, m->comm, &m->layers[layer].attention, &shape,
                                         a, &k_cache, &v_cache, tb, err);
}

/* Logits of up to PIO_DECODER_LOGITS_ROWS tokens of the chunk: their final hidden states are
 * gathered, normalised and projected, then copied to the caller's rows, and the argmax and
 * sampled ids asked for are picked on the device. */
static pio_status logits_group(pio_decoder *m, const pio_textgen_batch *b, const pk_tensor *x,
                               const int32_t *local_rows, const size_t *out_rows, int64_t g,
                               pio_error *err)
{
    const pio_decoder_config *c = &m->config;
    pk_tensor ids;
    pk_tensor hidden = pk_tensor_in(&m->ws.logits_hidden, 0, PIO_DTYPE_F32, g, c->hidden_size);
    pk_tensor logits = pk_tensor_in(&m->ws.logits, 0, PIO_DTYPE_F32, g, c->vocab_size);
    pio_status st;
    /* The chunk's h is free by now: it takes the normalised rows (the op the recorded decode
     * steps use, so both give the same bits). */
    pk_tensor normed = pk_tensor_in(&m->ws.h, 0, PIO_DTYPE_F32, g, c->hidden_size);
    if ((st = pio_decoder_stage_ids(m, &m->ws.logits_ids, local_rows, g, &ids, err)) ||
        (st = pk_embedding(m->ctx, &hidden, x, &ids, err)) ||
        (st = pk_rmsnorm_matmul(m->ctx, &logits, &normed, &hidden, &m->final_norm,
                                (float)c->rms_norm_eps, &m->lm_head, err)))
        return st;
    for (int64_t j = 0; b->logits != NULL && j < g && st == PIO_OK; j++) {
        pk_tensor dst = pk_tensor_host(b->logits + out_rows[j] * (size_t)c->vocab_size,
                                       PIO_DTYPE_F32, 1, c->vocab_size);
        pk_tensor src = pk_tensor_rows(&logits, j, 1);
        st = pk_copy(m->ctx, &dst, &src, err);
    }
    int32_t *argmax = pio_decoder_batch_argmax(b);
    if (argmax != NULL && st == PIO_OK) {
        /* Rows found on the device; only their ids come back. */
        int32_t found[PIO_DECODER_LOGITS_ROWS];
        pk_tensor ids_out = pk_tensor_in(&m->ws.argmax, 0, PIO_DTYPE_I32, 1, g);
        pk_tensor host = pk_tensor_host(found, PIO_DTYPE_I32, 1, g);
        if ((st = pk_argmax(m->ctx, &ids_out, &logits, err)) ||
            (st = pk_copy(m->ctx, &host, &ids_out, err)) || (st = pk_synchronize(m->ctx, err)))
            return st;
        for (int64_t j = 0; j < g; j++)
            argmax[out_rows[j]] = found[j];
    }
    if (pio_decoder_batch_sampled(b) == NULL || st != PIO_OK)
        return st;
    return pio_decoder_sample_rows(m, b, &logits, out_rows, g, err);
}

/* The logits rows of the batch that fall in the chunk [first, first + n). */
static pio_status chunk_logits(pio_decoder *m, const pio_textgen_batch *b, int64_t first,
                               int64_t n, const pk_tensor *x, pio_error *err)
{
    int32_t local_rows[PIO_DECODER_LOGITS_ROWS];
    size_t out_rows[PIO_DECODER_LOGITS_ROWS];
    int64_t g = 0;
    for (size_t i = 0; i < b->n_logits_rows; i++) {
        int64_t row = b->logits_rows[i];
        if (row < first || row >= first + n)
            continue;
        local_rows[g] = (int32_t)(row - first);
        out_rows[g++] = i;
        if (g == PIO_DECODER_LOGITS_ROWS) {
            pio_status st = logits_group(m, b, x, local_rows, out_rows, g, err);
            if (st != PIO_OK)
                return st;
            g = 0;
        }
    }
    return g > 0 ? logits_group(m, b, x, local_rows, out_rows, g, err) : PIO_OK;
}

pio_status pio_decoder_run_layers(pio_decoder *m, const pk_tensor *ids, const pk_token_batch *tb,
                                  int64_t n, pk_attention_activations *a, pio_error *err)
{
    *a = activations(m, n);
    pio_status st = pk_embedding(m->ctx, &a->x, &m->embed, ids, err);
    for (int32_t layer = 0; st == PIO_OK && layer < m->config.n_layers; layer++)
        if ((st = attention_block(m, layer, a, tb, err)) == PIO_OK)
            st = m->spec->ffn_block(m->model, m, layer, a, err);
    return st;
}

/* Tokens [first, first + n) of the batch through every layer. */
static pio_status run_chunk(pio_decoder *m, const pio_textgen_batch *b, int64_t first,
                            int64_t n, const pk_tensor *block_tables, pio_error *err)
{
    const pio_kv_batch *kb = &m->kv_batch;
    pk_tensor ids;
    pk_token_batch tb = {.block_tables = *block_tables,
                         .block_size = pk_kv_pool_block_size(m->pool),
                         .distinct_sequences = kb->n_seqs == (int64_t)b->n_tokens};
    /* The metadata is staged below before the layers run; with one token a sequence every
     * earlier key of it comes from an earlier step. */
    tb.settled = tb.distinct_sequences;
    pk_attention_activations a;
    pio_status st;
    if ((st = pio_decoder_stage_ids(m, &m->ws.ids, b->tokens + first, n, &ids, err)) ||
        (st = pio_decoder_stage_ids(m, &m->ws.positions, kb->positions + first, n,
                                    &tb.positions, err)) ||
        (st = pio_decoder_stage_ids(m, &m->ws.seq_rows, kb->seq_rows + first, n, &tb.seq_rows,
                                    err)) ||
        (st = pio_decoder_run_layers(m, &ids, &tb, n, &a, err)))
        return st;
    /* Tensor parallelism: every rank holds the same x; rank 0 alone computes the logits. */
    return m->shard.rank == 0 ? chunk_logits(m, b, first, n, &a.x, err) : PIO_OK;
}

static pio_status run_chunks(pio_decoder *m, const pio_textgen_batch *b, pio_error *err)
{
    pk_tensor block_tables;
    pio_status st = stage_block_tables(m, &block_tables, err);
    int64_t total = (int64_t)b->n_tokens;
    for (int64_t first = 0; st == PIO_OK && first < total; first += PIO_DECODER_CHUNK_TOKENS) {
        /* Ranks do not ask: they could disagree and leave the others in a collective. */
        if (m->comm == NULL && m->services->should_abort(m->host))
            return pio_error_set(err, PIO_ERR_CANCELLED, "forward: interrupted");
        int64_t n = total - first < PIO_DECODER_CHUNK_TOKENS ? total - first : PIO_DECODER_CHUNK_TOKENS;
        st = run_chunk(m, b, first, n, &block_tables, err);
    }
    return st == PIO_OK ? pk_synchronize(m->ctx, err) : st;
}

int pio_decoder_long_context(const pio_decoder *m)
{
    const pio_kv_batch *kb = &m->kv_batch;
    for (int64_t i = 0; i < kb->n_tokens; i++)
        if (kb->positions[i] >= m->short_context)
            return 1;
    return 0;
}

pio_status pio_decoder_run_batch(pio_decoder *m, const pio_textgen_batch *b, int *ran,
                                 pio_error *err)
{
    *ran = 0;
    pio_status st = pio_kv_batch_prepare(&m->kv_batch, m->pool, b->seq_ids, b->n_tokens,
                                         (int64_t)m->context_length, err);
    if (st != PIO_OK)
        return st;
    *ran = 1;
    pk_context_set_gemv_tma(m->ctx, m->gemv_tma[pio_decoder_long_context(m)]);
    if (pio_decoder_graph_eligible(m, b)) {
        if (m->services->should_abort(m->host))
            st = pio_error_set(err, PIO_ERR_CANCELLED, "forward: interrupted");
        else
            st = pio_decoder_graph_step(m, b, err);
    } else {
        st = run_chunks(m, b, err);
    }
    if (st != PIO_OK)
        pio_kv_batch_rollback(&m->kv_batch, m->pool);
    return st;
}

pio_status pio_decoder_forward(void *self, const pio_textgen_batch *b, pio_error *err)
{
    pio_decoder *m = self;
    pio_status st = check_batch(m, b, err);
    if (st != PIO_OK)
        return st;
    if (m->ranks != NULL)
        return pio_decoder_tp_forward(m, b, err);
    int ran;
    return pio_decoder_run_batch(m, b, &ran, err);
}
