/*
 * Decode steps as recorded graphs (kernels/ops.h, "Graphs"): on a backend that can record, a
 * step of n tokens whose logits are all wanted (n sequences decoding one token each, up to
 * PIO_DECODER_GRAPH_MAX_TOKENS) replays one graph per n. Its ops are recorded with the batch's
 * distinct_sequences promise (ops.h), so a step with two tokens of one sequence never takes a
 * graph. Everything a step varies in lives in
 * device buffers whose addresses and shapes do not change between steps: token ids, positions,
 * sequence rows and block tables (a fixed [n, table_width] view, table_width covering the
 * longest context) are copied in before the replay, and the kernels read positions and block
 * ids from there, so one recording serves every later step of that size.
 *
 * A step ends with the op that picks its ids, recorded with the rest: pk_argmax over whole rows
 * (pio_textgen_batch.argmax), pk_argmax over the ids that may be sampled (sampled ids, every row
 * plain greedy) or pk_sample without histories (sampled ids, no penalties to apply), its
 * parameters and uniforms staged with the other inputs. One graph is kept per context length
 * (under pio_decoder.short_context positions or not: the steps of each record with their own
 * runtime.cuda_gemv_tma choice), pick, size and width (the argmax's columns or pk_sample's
 * n_valid). Sampled rows with penalties read histories whose length changes every step: such a
 * step replays the argmax graph and then runs pk_sample directly on its logits
 * (decoder_sample.c).
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
#include "decoder_internal.h"
#include "kernels/sampler.h"

/* The step's inputs and outputs live in one device buffer and one page-locked host buffer of
 * the same layout (I32 words): token ids, positions and sequence rows (MAX each), pk_sample's
 * parameters (MAX rows of PK_SAMPLE_PARAM_COUNT F32) and uniforms (MAX I64, at an even word),
 * block tables (MAX rows of table_width), then the picked ids that come back (MAX). A step
 * copies the inputs in with one transfer. */
enum { MAX = PIO_DECODER_GRAPH_MAX_TOKENS };
enum { IDS = 0, POSITIONS = MAX, SEQ_ROWS = 2 * MAX, PARAMS = 3 * MAX,
       UNIFORMS = PARAMS + MAX * PK_SAMPLE_PARAM_COUNT, TABLES = UNIFORMS + 2 * MAX };
_Static_assert(UNIFORMS % 2 == 0, "the I64 uniforms need 8-byte alignment");

/* The op that ends a step. */
typedef enum pick { PICK_ARGMAX, PICK_SAMPLE, PICKS } pick;

struct pio_decoder_graphs {
    /* by context length (pio_decoder_long_context: the steps of each run with their own
     * runtime.cuda_gemv_tma choice, which a recording keeps), pick and token count */
    pk_graph *graph[2][PICKS][MAX + 1];
    unsigned char warmed[2][PICKS][MAX + 1];
    int64_t width[2][PICKS][MAX + 1];       /* columns the pick was recorded over */
    int disabled;
    int64_t table_width;
    pk_buffer device;        /* the layout above */
    int32_t *host;           /* page-locked, the same layout */
    int64_t words;           /* of each */
};

/* Word offset of the picked ids in the layout. */
static int64_t picked_offset(const pio_decoder_graphs *g)
{
    return TABLES + MAX * g->table_width;
}

int pio_decoder_graph_eligible(const pio_decoder *m, const pio_textgen_batch *b)
{
    if (m->comm != NULL || m->ranks != NULL || !pk_graph_supported(m->ctx) ||
        (m->graphs != NULL && m->graphs->disabled) || b->n_tokens > MAX ||
        b->n_logits_rows != b->n_tokens || m->kv_batch.n_seqs != (int64_t)b->n_tokens)
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
    g->words = picked_offset(g) + MAX;
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
    for (int c = 0; c < 2; c++)
        for (int p = 0; p < PICKS; p++)
            for (int n = 0; n <= MAX; n++)
                pk_graph_destroy(m->ctx, g->graph[c][p][n]);
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

/* How a step picks its ids: the op recorded at its end, the columns it reads, and whether
 * sampled ids are then found by a direct pk_sample (rows with penalties). */
typedef struct step_plan {
    pick pick;
    int64_t width;
    int sample_after;
    int context; /* pio_decoder_long_context */
} step_plan;

static step_plan plan_step(const pio_decoder *m, const pio_textgen_batch *b, int64_t n)
{
    step_plan plan = {PICK_ARGMAX, m->config.vocab_size, 0, pio_decoder_long_context(m)};
    if (pio_decoder_batch_sampled(b) == NULL)
        return plan;
    pio_decoder_sample_kind kind = pio_decoder_sample_kind_of(b, NULL, n);
    if (pio_decoder_batch_argmax(b) != NULL || kind == PIO_DECODER_SAMPLE_HISTORY) {
        plan.sample_after = 1;
        return plan;
    }
    plan.width = pio_decoder_sample_vocab(m, b);
    plan.pick = kind == PIO_DECODER_SAMPLE_GREEDY ? PICK_ARGMAX : PICK_SAMPLE;
    return plan;
}

/* The step's ids, positions, sequence rows, sampling operands and block tables (each row
 * padded to table_width) into the host layout, then one copy to the device. */
static pio_status stage_inputs(pio_decoder *m, const pio_textgen_batch *b, int64_t n,
                               const step_plan *plan, pio_error *err)
{
    pio_decoder_graphs *g = m->graphs;
    const pio_kv_batch *kb = &m->kv_batch;
    memcpy(g->host + IDS, b->tokens, (size_t)n * sizeof(int32_t));
    memcpy(g->host + POSITIONS, kb->positions, (size_t)n * sizeof(int32_t));
    memcpy(g->host + SEQ_ROWS, kb->seq_rows, (size_t)n * sizeof(int32_t));
    if (plan->pick == PICK_SAMPLE)
        pio_decoder_sample_pack(b, NULL, n, (float *)(void *)(g->host + PARAMS),
                                (int64_t *)(void *)(g->host + UNIFORMS));
    int32_t *tables = g->host + TABLES;
    memset(tables, 0, (size_t)(n * g->table_width) * sizeof(int32_t));
    for (int64_t s = 0; s < kb->n_seqs; s++)
        memcpy(tables + s * g->table_width, kb->block_tables + s * kb->table_width,
               (size_t)kb->table_width * sizeof(int32_t));
    int64_t words = TABLES + n * g->table_width;
    pk_tensor dst = device_words(g, 0, 1, words);
    pk_tensor src = pk_tensor_host(g->host, PIO_DTYPE_I32, 1, words);
    return pk_copy(m->ctx, &dst, &src, err);
}

/* What a step records: the layers, the logits of every token and the pick (no host copies). */
static pio_status step_ops(pio_decoder *m, int64_t n, const step_plan *plan, pio_error *err)
{
    const pio_decoder_config *c = &m->config;
    const pio_decoder_graphs *g = m->graphs;
    pk_tensor ids = device_words(g, IDS, 1, n);
    pk_token_batch tb = {.positions = device_words(g, POSITIONS, 1, n),
                         .seq_rows = device_words(g, SEQ_ROWS, 1, n),
                         .block_tables = device_words(g, TABLES, n, g->table_width),
                         .block_size = pk_kv_pool_block_size(m->pool),
                         .distinct_sequences = 1, /* graph steps: one token a sequence */
                         .settled = 1}; /* the metadata is copied before the replay */
    pk_attention_activations a;
    pio_status st = pio_decoder_run_layers(m, &ids, &tb, n, &a, err);
    if (st != PIO_OK)
        return st;
    pk_tensor hidden = pk_tensor_in(&m->ws.logits_hidden, 0, PIO_DTYPE_F32, n, c->hidden_size);
    pk_tensor logits = pk_tensor_in(&m->ws.logits, 0, PIO_DTYPE_F32, n, c->vocab_size);
    pk_tensor picked = device_words(g, picked_offset(g), 1, n);
    if ((st = pk_rmsnorm_matmul(m->ctx, &logits, &hidden, &a.x, &m->final_norm,
                                (float)c->rms_norm_eps, &m->lm_head, err)))
        return st;
    if (plan->pick == PICK_ARGMAX) {
        pk_tensor columns = pk_tensor_cols(&logits, 0, plan->width);
        return pk_argmax(m->ctx, &picked, &columns, err);
    }
    pk_tensor params = pk_tensor_in(&g->device, PARAMS * sizeof(int32_t), PIO_DTYPE_F32, n,
                                    PK_SAMPLE_PARAM_COUNT);
    pk_tensor uniforms = pk_tensor_in(&g->device, UNIFORMS * sizeof(int32_t), PIO_DTYPE_I64, 1,
                                      n);
    return pk_sample(m->ctx, &picked, &logits, plan->width, &params, NULL, NULL, &uniforms, err);
}

/* Records the step's ops as the graph for its pick and n tokens; on failure graphs are turned
 * off. */
static void record(pio_decoder *m, int64_t n, const step_plan *plan)
{
    pio_decoder_graphs *g = m->graphs;
    pk_graph **graph = &g->graph[plan->context][plan->pick][n];
    pio_error err = {0};
    pio_status st = pk_graph_begin(m->ctx, &err);
    if (st == PIO_OK) {
        pio_status ops = step_ops(m, n, plan, &err);
        pio_error end_err = {0};
        st = pk_graph_end(m->ctx, graph, &end_err);
        if (ops != PIO_OK)
            st = ops;
        else if (st != PIO_OK)
            err = end_err;
    }
    if (st != PIO_OK) {
        pk_graph_destroy(m->ctx, *graph);
        *graph = NULL;
        g->disabled = 1;
        char line[sizeof err.message + 64];
        snprintf(line, sizeof line, "decode steps run without graphs: %s", err.message);
        m->services->log(m->host, PIO_LOG_WARN, line);
    }
}

/* The logits (when asked for) and the picked ids (argmax or sampled, when asked for) to the
 * caller; sampled rows with penalties are sampled from the logits now. */
static pio_status copy_results(pio_decoder *m, const pio_textgen_batch *b, int64_t n,
                               const step_plan *plan, pio_error *err)
{
    pio_decoder_graphs *g = m->graphs;
    int32_t *argmax = pio_decoder_batch_argmax(b);
    /* The recorded pick answers argmax, or else the sampled ids unless they come after. */
    int picked_wanted = argmax != NULL ||
                        (pio_decoder_batch_sampled(b) != NULL && !plan->sample_after);
    int32_t *picked = g->host + picked_offset(g);
    pk_tensor logits = pk_tensor_in(&m->ws.logits, 0, PIO_DTYPE_F32, n, m->config.vocab_size);
    pio_status st = PIO_OK;
    if (b->logits != NULL) {
        pk_tensor dst = pk_tensor_host(b->logits, PIO_DTYPE_F32, n, m->config.vocab_size);
        st = pk_copy(m->ctx, &dst, &logits, err);
    }
    if (st == PIO_OK && picked_wanted) {
        pk_tensor src = device_words(g, picked_offset(g), 1, n);
        pk_tensor dst = pk_tensor_host(picked, PIO_DTYPE_I32, 1, n);
        st = pk_copy(m->ctx, &dst, &src, err);
    }
    if (st == PIO_OK)
        st = pk_synchronize(m->ctx, err);
    if (st != PIO_OK)
        return st;
    if (argmax != NULL)
        memcpy(argmax, picked, (size_t)n * sizeof(int32_t));
    else if (picked_wanted)
        st = pio_decoder_sample_results(b, NULL, n, picked, err);
    if (st == PIO_OK && plan->sample_after)
        st = pio_decoder_sample_rows(m, b, &logits, NULL, n, err);
    return st;
}

/* Drops the graph of the plan's pick and size when it cannot serve this step: recorded over
 * other columns, or a workspace moved since (a larger batch grew it). The step then runs
 * directly, with the new addresses, and the next one records again. */
static void drop_stale_graph(pio_decoder *m, int64_t n, const step_plan *plan)
{
    pio_decoder_graphs *g = m->graphs;
    const int c = plan->context;
    pk_graph **graph = &g->graph[c][plan->pick][n];
    if (g->width[c][plan->pick][n] != plan->width) {
        pk_graph_destroy(m->ctx, *graph);
        *graph = NULL;
        g->warmed[c][plan->pick][n] = 0;
        g->width[c][plan->pick][n] = plan->width;
    }
    if (*graph != NULL && !pk_graph_is_current(m->ctx, *graph)) {
        pk_graph_destroy(m->ctx, *graph);
        *graph = NULL;
        g->warmed[c][plan->pick][n] = 0;
    }
}

pio_status pio_decoder_graph_step(pio_decoder *m, const pio_textgen_batch *b, pio_error *err)
{
    pio_status st = PIO_OK;
    if (m->graphs == NULL && (st = create_graphs(m, err)) != PIO_OK)
        return st;
    pio_decoder_graphs *g = m->graphs;
    int64_t n = (int64_t)b->n_tokens;
    step_plan plan = plan_step(m, b, n);
    if ((st = stage_inputs(m, b, n, &plan, err)) != PIO_OK)
        return st;
    drop_stale_graph(m, n, &plan);
    pk_graph **graph = &g->graph[plan.context][plan.pick][n];
    if (*graph == NULL && g->warmed[plan.context][plan.pick][n] && !g->disabled)
        record(m, n, &plan);
    if (*graph != NULL && !pk_graph_is_current(m->ctx, *graph)) {
        pk_graph_destroy(m->ctx, *graph); /* a workspace grew while recording */
        *graph = NULL;
    }
    if (*graph != NULL)
        st = pk_graph_launch(m->ctx, *graph, err);
    else
        st = step_ops(m, n, &plan, err);
    g->warmed[plan.context][plan.pick][n] = 1;
    return st == PIO_OK ? copy_results(m, b, n, &plan, err) : st;
}
