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

/* The step's inputs and outputs live in one device buffer and one page-locked host buffer of
 * the same layout (I32 words): token ids, positions and sequence rows (MAX each), block tables
 * (MAX rows of table_width), then the argmax ids that come back (MAX). A step copies the
 * inputs in with one transfer. */
enum { IDS = 0, POSITIONS = 1, SEQ_ROWS = 2, TABLES = 3 };

struct pio_decoder_graphs {
    pk_graph *graph[PIO_DECODER_GRAPH_MAX_TOKENS + 1]; /* by token count */
    unsigned char warmed[PIO_DECODER_GRAPH_MAX_TOKENS + 1];
    int disabled;
    int64_t table_width;
    pk_buffer device;        /* the layout above */
    int32_t *host;           /* page-locked, the same layout */
    int64_t words;           /* of each */
};

/* Word offset of the argmax ids in the layout. */
static int64_t argmax_offset(const pio_decoder_graphs *g)
{
    return TABLES * PIO_DECODER_GRAPH_MAX_TOKENS + PIO_DECODER_GRAPH_MAX_TOKENS * g->table_width;
}

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
    g->words = argmax_offset(g) + PIO_DECODER_GRAPH_MAX_TOKENS;
    int wanted = 1; /* YAML runtime.cuda_graphs (default true); false runs every step directly */
    if (m->services->config_get_bool(m->host, "runtime.cuda_graphs", &wanted) == PIO_OK &&
        !wanted)
        g->disabled = 1;
    m->graphs = g;
    size_t bytes = (size_t)g->words * sizeof(int32_t);
    pio_status st = pk_host_alloc(m->ctx, bytes, (void **)&g->host, err);
    if (st == PIO_OK) {
        memset(g->host, 0, bytes);
        st = pk_buffer_alloc(m->ctx, bytes, &g->device, err);
    }
    return st;
}

void pio_decoder_graphs_free(pio_decoder *m)
{
    pio_decoder_graphs *g = m->graphs;
    if (g == NULL)
        return;
    for (int n = 0; n <= PIO_DECODER_GRAPH_MAX_TOKENS; n++)
        pk_graph_destroy(m->ctx, g->graph[n]);
    pk_buffer_free(m->ctx, &g->device);
    pk_host_free(m->ctx, g->host);
    free(g);
    m->graphs = NULL;
}

/* [rows, cols] I32 at word `offset` of the device layout. */
static pk_tensor device_words(const pio_decoder_graphs *g, int64_t offset, int64_t rows,
                              int64_t cols)
{
    return pk_tensor_in(&g->device, (size_t)offset * sizeof(int32_t), PIO_DTYPE_I32, rows, cols);
}

/* The step's ids, positions, sequence rows and block tables (each row padded to table_width)
 * into the host layout, then one copy to the device. */
static pio_status stage_inputs(pio_decoder *m, const pio_textgen_batch *b, int64_t n,
                               pio_error *err)
{
    pio_decoder_graphs *g = m->graphs;
    const pio_kv_batch *kb = &m->kv_batch;
    const int64_t MAX = PIO_DECODER_GRAPH_MAX_TOKENS;
    memcpy(g->host + IDS * MAX, b->tokens, (size_t)n * sizeof(int32_t));
    memcpy(g->host + POSITIONS * MAX, kb->positions, (size_t)n * sizeof(int32_t));
    memcpy(g->host + SEQ_ROWS * MAX, kb->seq_rows, (size_t)n * sizeof(int32_t));
    int32_t *tables = g->host + TABLES * MAX;
    memset(tables, 0, (size_t)(n * g->table_width) * sizeof(int32_t));
    for (int64_t s = 0; s < kb->n_seqs; s++)
        memcpy(tables + s * g->table_width, kb->block_tables + s * kb->table_width,
               (size_t)kb->table_width * sizeof(int32_t));
    int64_t words = TABLES * MAX + n * g->table_width;
    pk_tensor dst = device_words(g, 0, 1, words);
    pk_tensor src = pk_tensor_host(g->host, PIO_DTYPE_I32, 1, words);
    return pk_copy(m->ctx, &dst, &src, err);
}

/* What a step records: the layers, the logits of every token and their argmax (no host
 * copies). */
static pio_status step_ops(pio_decoder *m, int64_t n, pio_error *err)
{
    const pio_decoder_config *c = &m->config;
    const pio_decoder_graphs *g = m->graphs;
    const int64_t MAX = PIO_DECODER_GRAPH_MAX_TOKENS;
    pk_tensor ids = device_words(g, IDS * MAX, 1, n);
    pk_token_batch tb = {.positions = device_words(g, POSITIONS * MAX, 1, n),
                         .seq_rows = device_words(g, SEQ_ROWS * MAX, 1, n),
                         .block_tables = device_words(g, TABLES * MAX, n, g->table_width),
                         .block_size = pk_kv_pool_block_size(m->pool)};
    pk_attention_activations a;
    pio_status st = pio_decoder_run_layers(m, &ids, &tb, n, &a, err);
    if (st != PIO_OK)
        return st;
    pk_tensor hidden = pk_tensor_in(&m->ws.logits_hidden, 0, PIO_DTYPE_F32, n, c->hidden_size);
    pk_tensor logits = pk_tensor_in(&m->ws.logits, 0, PIO_DTYPE_F32, n, c->vocab_size);
    pk_tensor argmax = device_words(g, argmax_offset(g), 1, n);
    if ((st = pk_rmsnorm_matmul(m->ctx, &logits, &hidden, &a.x, &m->final_norm,
                                (float)c->rms_norm_eps, &m->lm_head, err)))
        return st;
    return pk_argmax(m->ctx, &argmax, &logits, err);
}

/* Records the step's ops as the graph for n tokens; on failure graphs are turned off. */
static void record(pio_decoder *m, int64_t n)
{
    pio_decoder_graphs *g = m->graphs;
    pio_error err = {0};
    pio_status st = pk_graph_begin(m->ctx, &err);
    if (st == PIO_OK) {
        pio_status ops = step_ops(m, n, &err);
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

/* The logits (when asked for) and the argmax ids (when asked for) to the caller. */
static pio_status copy_results(pio_decoder *m, const pio_textgen_batch *b, int64_t n,
                               pio_error *err)
{
    pio_decoder_graphs *g = m->graphs;
    int32_t *argmax = pio_decoder_batch_argmax(b);
    pio_status st = PIO_OK;
    if (b->logits != NULL) {
        pk_tensor src = pk_tensor_in(&m->ws.logits, 0, PIO_DTYPE_F32, n, m->config.vocab_size);
        pk_tensor dst = pk_tensor_host(b->logits, PIO_DTYPE_F32, n, m->config.vocab_size);
        st = pk_copy(m->ctx, &dst, &src, err);
    }
    if (st == PIO_OK && argmax != NULL) {
        pk_tensor src = device_words(g, argmax_offset(g), 1, n);
        pk_tensor dst = pk_tensor_host(g->host + argmax_offset(g), PIO_DTYPE_I32, 1, n);
        st = pk_copy(m->ctx, &dst, &src, err);
    }
    if (st == PIO_OK)
        st = pk_synchronize(m->ctx, err);
    if (st == PIO_OK && argmax != NULL)
        memcpy(argmax, g->host + argmax_offset(g), (size_t)n * sizeof(int32_t));
    return st;
}

pio_status pio_decoder_graph_step(pio_decoder *m, const pio_textgen_batch *b, pio_error *err)
{
    pio_status st = PIO_OK;
    if (m->graphs == NULL && (st = create_graphs(m, err)) != PIO_OK)
        return st;
    pio_decoder_graphs *g = m->graphs;
    int64_t n = (int64_t)b->n_tokens;
    if ((st = stage_inputs(m, b, n, err)) != PIO_OK)
        return st;
    if (g->graph[n] != NULL && !pk_graph_is_current(m->ctx, g->graph[n])) {
        /* A workspace moved since (a larger batch grew it): this step runs directly, with
         * the new addresses, and the next one of this size records again. */
        pk_graph_destroy(m->ctx, g->graph[n]);
        g->graph[n] = NULL;
        g->warmed[n] = 0;
    }
    if (g->graph[n] == NULL && g->warmed[n] && !g->disabled)
        record(m, n);
    if (g->graph[n] != NULL && !pk_graph_is_current(m->ctx, g->graph[n])) {
        pk_graph_destroy(m->ctx, g->graph[n]); /* a workspace grew while recording */
        g->graph[n] = NULL;
    }
    if (g->graph[n] != NULL)
        st = pk_graph_launch(m->ctx, g->graph[n], err);
    else
        st = step_ops(m, n, err);
    g->warmed[n] = 1;
    return st == PIO_OK ? copy_results(m, b, n, err) : st;
}
