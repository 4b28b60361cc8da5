/* Loading the Qwen3 dense model: config, weights, KV pool, workspace (see model.h). */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Tells the host about memory before taking it. A refusal has been recorded by the host
 * already, so err keeps an empty message and the plugin does not overwrite the host's. */
static pio_status reserve(qwen3_model *m, uint64_t bytes, const char *tag, uint64_t *held,
                          pio_error *err)
{
    pio_status status = m->services->mem_reserve(m->host, m->device, bytes, tag);
    if (status != PIO_OK) {
        pio_error_clear(err);
        err->status = status;
        return status;
    }
    *held = bytes;
    return PIO_OK;
}

static pio_status load_config(qwen3_model *m, const qwen3_load_options *o, pio_error *err)
{
    if (o->model_dir != NULL)
        return qwen3_config_load(o->model_dir, &m->config, err);
    if (!o->dummy)
        return pio_error_set(err, PIO_ERR_CONFIG, "model.path is not set: a model folder is "
                             "needed unless model.load_format is dummy");
    qwen3_config_builtin(&m->config);
    return PIO_OK;
}

static uint64_t count_parameters(const qwen3_config *c)
{
    uint64_t H = (uint64_t)c->hidden_size, D = (uint64_t)c->head_dim;
    uint64_t q = (uint64_t)c->n_heads * D, kv = (uint64_t)c->n_kv_heads * D;
    uint64_t per_layer = 2 * H + 2 * D + q * H * 2 + kv * H * 2 +
                         3 * H * (uint64_t)c->intermediate_size;
    uint64_t vocab = (uint64_t)c->vocab_size * H * (c->tie_word_embeddings ? 1 : 2);
    return vocab + H + per_layer * (uint64_t)c->n_layers;
}

static pio_status load_weights(qwen3_model *m, const qwen3_load_options *o, pio_error *err)
{
    pio_status status;
    if (o->dummy) {
        /* Reserve before allocating: bf16 values of the real shapes. */
        if ((status = reserve(m, 2 * count_parameters(&m->config), "weights",
                              &m->reserved_weights, err)) ||
            (status = qwen3_weights_dummy(m, o->seed, err)))
            return status;
    } else {
        if ((status = qwen3_weights_bind(m, o->model_dir, err)) ||
            (status = reserve(m, m->weights.bytes, "weights", &m->reserved_weights, err)))
            return status;
    }
    return qwen3_weights_place(m, err);
}

/* The Qwen3 cache entry of a token: its k and v rows, one plane each per layer. */
static pio_status create_kv_pool(qwen3_model *m, pio_error *err)
{
    const qwen3_config *c = &m->config;
    pio_kv_settings settings;
    pio_status status = pio_kv_settings_read(m->services, m->host, &settings, err);
    if (status != PIO_OK)
        return status;
    pk_kv_pool_config cfg = {.n_layers = (int32_t)c->n_layers, .n_planes = 2};
    cfg.plane_width[0] = cfg.plane_width[1] = c->n_kv_heads * c->head_dim;
    int64_t default_tokens = c->max_positions < QWEN3_DEFAULT_KV_TOKENS
                                 ? c->max_positions : QWEN3_DEFAULT_KV_TOKENS;
    pio_kv_settings_apply(&settings, default_tokens, &cfg);
    int64_t n_blocks = 0;
    uint64_t bytes = 0;
    if ((status = pk_kv_pool_plan(&cfg, &n_blocks, &bytes, err)) ||
        (status = reserve(m, bytes, "kv_cache", &m->reserved_kv, err)))
        return status;
    return pk_kv_pool_create(m->ctx, &cfg, &m->pool, err);
}

/* Positions one sequence may hold: the model's, the configured cap and the cache's room. */
static void set_context_length(qwen3_model *m, int64_t max_context)
{
    int64_t length = m->config.max_positions;
    int64_t cache_tokens = pk_kv_pool_n_blocks(m->pool) * pk_kv_pool_block_size(m->pool);
    if (max_context > 0 && max_context < length)
        length = max_context;
    if (cache_tokens < length)
        length = cache_tokens;
    m->context_length = (size_t)length;
}

static pio_status create_workspace(qwen3_model *m, pio_error *err)
{
    const qwen3_config *c = &m->config;
    qwen3_workspace *ws = &m->ws;
    uint64_t C = QWEN3_CHUNK_TOKENS, R = QWEN3_LOGITS_ROWS, f = sizeof(float);
    uint64_t q = (uint64_t)(c->n_heads * c->head_dim), kv = (uint64_t)(c->n_kv_heads * c->head_dim);
    uint64_t H = (uint64_t)c->hidden_size, F = (uint64_t)c->intermediate_size;
    struct {
        pk_buffer *buffer;
        uint64_t bytes;
    } plan[] = {
        {&ws->x, C * H * f}, {&ws->h, C * H * f}, {&ws->q, C * q * f}, {&ws->k, C * kv * f},
        {&ws->v, C * kv * f}, {&ws->attn, C * q * f}, {&ws->gate, C * F * f},
        {&ws->up, C * F * f}, {&ws->ids, C * 4}, {&ws->positions, C * 4},
        {&ws->seq_rows, C * 4}, {&ws->logits_ids, R * 4}, {&ws->logits_hidden, R * H * f},
        {&ws->logits, R * (uint64_t)c->vocab_size * f},
    };
    size_t n = sizeof plan / sizeof plan[0];
    ws->bytes = 0;
    for (size_t i = 0; i < n; i++)
        ws->bytes += plan[i].bytes;
    pio_status status = reserve(m, ws->bytes, "workspace", &m->reserved_workspace, err);
    for (size_t i = 0; status == PIO_OK && i < n; i++)
        status = pk_buffer_alloc(m->ctx, plan[i].bytes, plan[i].buffer, err);
    return status;
}

static void free_workspace(qwen3_model *m)
{
    qwen3_workspace *ws = &m->ws;
    pk_buffer *buffers[] = {&ws->x,   &ws->h,    &ws->q,         &ws->k,
                            &ws->v,   &ws->attn, &ws->gate,      &ws->up,
                            &ws->ids, &ws->positions, &ws->seq_rows, &ws->block_tables,
                            &ws->logits_ids, &ws->logits_hidden, &ws->logits};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++)
        pk_buffer_free(m->ctx, buffers[i]);
}

static void describe_ops(qwen3_model *m)
{
    m->ops = (pio_textgen_model){
        .struct_size = sizeof m->ops, .self = m, .vocab_size = (size_t)m->config.vocab_size,
        .context_length = m->context_length, .seq_open = qwen3_seq_open,
        .seq_close = qwen3_seq_close, .seq_length = qwen3_seq_length, .forward = qwen3_forward,
    };
}

static pio_status build(qwen3_model *m, const qwen3_load_options *o, pio_error *err)
{
    pk_context_options ctx_options = {.n_threads = o->n_threads,
                                      .device_index = o->device_index};
    pio_status status;
    if ((status = load_config(m, o, err)) ||
        (status = pk_context_create(o->device, &ctx_options, &m->ctx, err)) ||
        (status = load_weights(m, o, err)) || (status = create_kv_pool(m, err)) ||
        (status = create_workspace(m, err)))
        return status;
    set_context_length(m, o->max_context);
    describe_ops(m);
    return PIO_OK;
}

pio_status qwen3_model_load(const pio_host_services *services, void *host,
                            const qwen3_load_options *options, qwen3_model **out, pio_error *err)
{
    *out = NULL;
    qwen3_model *m = calloc(1, sizeof *m);
    if (m == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory");
    m->services = services;
    m->host = host;
    m->device = options->device == PK_DEVICE_CPU ? -1 : options->device_index;
    pio_status status = build(m, options, err);
    if (status != PIO_OK) {
        qwen3_model_free(m);
        return status;
    }
    *out = m;
    return PIO_OK;
}

void qwen3_model_free(qwen3_model *m)
{
    if (m == NULL)
        return;
    pio_kv_batch_free(&m->kv_batch);
    pk_kv_pool_destroy(m->pool);
    if (m->ctx != NULL) { /* everything below was allocated after the context */
        free_workspace(m);
        qwen3_weights_free(m);
        pk_context_destroy(m->ctx);
    }
    uint64_t held[] = {m->reserved_weights, m->reserved_kv, m->reserved_workspace};
    const char *tags[] = {"weights", "kv_cache", "workspace"};
    for (size_t i = 0; i < 3; i++)
        if (held[i] > 0)
            m->services->mem_release(m->host, m->device, held[i], tags[i]);
    free(m);
}
