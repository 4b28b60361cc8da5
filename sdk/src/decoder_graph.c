/*
 * Decode steps as recorded graphs (kernels/ops.h, "Graphs"): on a backend that can record, a
 * step of n tokens whose logits are all wanted (n sequences decoding one token each, up to
 * PIO_DECODER_GRAPH_MAX_TOKENS) replays one graph per n. Everything a step varies in lives in
 * device buffers whose addresses and shapes do not change between steps: token ids, positions,
 * sequence rows and block tables (a fixed [n, table_width] view, table_width covering the
 * longest context) are copied in before the replay, and the kernels read positions and block
 * ids from there, so one recording serves every later step of that size.
 *
 * The first step of a size runs directly, growing any workspace the ops need; the second is
 * recorded, then replayed. If recording fails (an op that cannot be recorded, e.g. one that
 * copies to the host), graphs are turned off for the decoder with a log line and steps run
 * directly: nothing ran while recording, so the step is simply run again. YAML
 * runtime.cuda_graphs: false turns them off from the start.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decoder_graph.h"

struct pio_decoder_graphs {
    pk_graph *graph[PIO_DECODER_GRAPH_MAX_TOKENS + 1]; /* by token count */
    unsigned char warmed[PIO_DECODER_GRAPH_MAX_TOKENS + 1];
    int disabled;
    int64_t table_width;
    pk_buffer tables;        /* [MAX_TOKENS, table_width] I32 */
    int32_t *host_tables;    /* staging for it */
};

int pio_decoder_graph_eligible(const pio_decoder *m, const pio_textgen_batch *b)
{
    if (m->comm != NULL || m->ranks != NULL || !pk_graph_supported(m->ctx) ||
        (m->graphs != NULL && m->graphs->disabled) || b->n_tokens > PIO_DECODER_GRAPH_MAX_TOKENS ||
        b->n_logits_rows != b->n_tokens || m->kv_batch.n_seqs > (int64_t)b->n_tokens)
        return 0;
    for (size_t i = 0; i < b->n_logits_rows; i++)
        if (b->logits_rows[i] != (int32_t)i)
            return 0;
    return 1;
}

static pio_status create_graphs(pio_decoder *m, pio_error *err)
{
    pio_decoder_graphs *g = calloc(1, sizeof *g);
    if (g == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory for the decode graphs");
    int64_t block = pk_kv_pool_block_size(m->pool);
    g->table_width = ((int64_t)m->context_length + block - 1) / block;
    size_t bytes = (size_t)(PIO_DECODER_GRAPH_MAX_TOKENS * g->table_width) * sizeof(int32_t);
    g->host_tables = calloc(1, bytes);
    int wanted = 1; /* YAML runtime.cuda_graphs (default true); false runs every step directly */
    if (m->services->config_get_bool(m->host, "runtime.cuda_graphs", &wanted) == PIO_OK &&
        !wanted)
        g->disabled = 1;
    m->graphs = g;
    if (g->host_tables == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory for the decode graphs");
    return pk_buffer_alloc(m->ctx, bytes, &g->tables, err);
}

void pio_decoder_graphs_free(pio_decoder *m)
{
    pio_decoder_graphs *g = m->graphs;
    if (g == NULL)
        return;
    for (int n = 0; n <= PIO_DECODER_GRAPH_MAX_TOKENS; n++)
        pk_graph_destroy(m->ctx, g->graph[n]);
    pk_buffer_free(m->ctx, &g->tables);
    free(g->host_tables);
    free(g);
    m->graphs = NULL;
}

/* The batch's block tables, each row padded to table_width, into the fixed device buffer. */
static pio_status stage_tables(pio_decoder *m, int64_t n, pk_tensor *out, pio_error *err)
{
    pio_decoder_graphs *g = m->graphs;
    const pio_kv_batch *kb = &m->kv_batch;
    memset(g->host_tables, 0, (size_t)(n * g->table_width) * sizeof(int32_t));
    for (int64_t s = 0; s < kb->n_seqs; s++)
        memcpy(g->host_tables + s * g->table_width, kb->block_tables + s * kb->table_width,
               (size_t)kb->table_width * sizeof(int32_t));
    *out = pk_tensor_in(&g->tables, 0, PIO_DTYPE_I32, n, g->table_width);
    pk_tensor src = pk_tensor_host(g->host_tables, PIO_DTYPE_I32, n, g->table_width);
    return pk_copy(m->ctx, out, &src, err);
}

/* What a step records: the layers, then the logits of every token (no host copies). */
static pio_status step_ops(pio_decoder *m, const pk_tensor *ids, const pk_token_batch *tb,
                           int64_t n, pio_error *err)
{
    const pio_decoder_config *c = &m->config;
    pk_attention_activations a;
    pio_status st = pio_decoder_run_layers(m, ids, tb, n, &a, err);
    if (st != PIO_OK)
        return st;
    pk_tensor hidden = pk_tensor_in(&m->ws.logits_hidden, 0, PIO_DTYPE_F32, n, c->hidden_size);
    pk_tensor logits = pk_tensor_in(&m->ws.logits, 0, PIO_DTYPE_F32, n, c->vocab_size);
    return pk_rmsnorm_matmul(m->ctx, &logits, &hidden, &a.x, &m->final_norm,
                             (float)c->rms_norm_eps, &m->lm_head, err);
}

/* Records the step's ops as the graph for n tokens; on failure graphs are turned off. */
static void record(pio_decoder *m, const pk_tensor *ids, const pk_token_batch *tb, int64_t n)
{
    pio_decoder_graphs *g = m->graphs;
    pio_error err = {0};
    pio_status st = pk_graph_begin(m->ctx, &err);
    if (st == PIO_OK) {
        pio_status ops = step_ops(m, ids, tb, n, &err);
        pio_error end_err = {0};
        st = pk_graph_end(m->ctx, &g->graph[n], &end_err);
        if (ops != PIO_OK)
            st = ops;
        else if (st != PIO_OK)
            err = end_err;
    }
    if (st != PIO_OK) {
        pk_graph_destroy(m->ctx, g->graph[n]);
        g->graph[n] = NULL;
        g->disabled = 1;
        char line[sizeof err.message + 64];
        snprintf(line, sizeof line, "decode steps run without graphs: %s", err.message);
        m->services->log(m->host, PIO_LOG_WARN, line);
    }
}

static pio_status copy_logits(pio_decoder *m, const pio_textgen_batch *b, int64_t n,
                              pio_error *err)
{
    pk_tensor src = pk_tensor_in(&m->ws.logits, 0, PIO_DTYPE_F32, n, m->config.vocab_size);
    pk_tensor dst = pk_tensor_host(b->logits, PIO_DTYPE_F32, n, m->config.vocab_size);
    pio_status st = pk_copy(m->ctx, &dst, &src, err);
    return st == PIO_OK ? pk_synchronize(m->ctx, err) : st;
}

pio_status pio_decoder_graph_step(pio_decoder *m, const pio_textgen_batch *b, pio_error *err)
{
    pio_status st = PIO_OK;
    if (m->graphs == NULL && (st = create_graphs(m, err)) != PIO_OK)
        return st;
    pio_decoder_graphs *g = m->graphs;
    const pio_kv_batch *kb = &m->kv_batch;
    int64_t n = (int64_t)b->n_tokens;
    pk_tensor ids;
    pk_token_batch tb = {.block_size = pk_kv_pool_block_size(m->pool)};
    if ((st = pio_decoder_stage_ids(m, &m->ws.ids, b->tokens, n, &ids, err)) ||
        (st = pio_decoder_stage_ids(m, &m->ws.positions, kb->positions, n, &tb.positions, err)) ||
        (st = pio_decoder_stage_ids(m, &m->ws.seq_rows, kb->seq_rows, n, &tb.seq_rows, err)) ||
        (st = stage_tables(m, n, &tb.block_tables, err)))
        return st;
    if (g->graph[n] == NULL && g->warmed[n] && !g->disabled)
        record(m, &ids, &tb, n);
    if (g->graph[n] != NULL)
        st = pk_graph_launch(m->ctx, g->graph[n], err);
    else
        st = step_ops(m, &ids, &tb, n, err);
    g->warmed[n] = 1;
    return st == PIO_OK ? copy_logits(m, b, n, err) : st;
}
