/* Loading a decoder model: config, weights, KV pool, workspace (see pio/decoder.h). */
#include "pio/decoder.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decoder_graph.h"
#include "decoder_internal.h"

/* Tells the host about memory before taking it. A refusal has been recorded by the host
 * already, so err keeps an empty message and the plugin does not overwrite the host's. */
static pio_status reserve(pio_decoder *d, uint64_t bytes, const char *tag, uint64_t *held,
                          pio_error *err)
{
    pio_status status = d->services->mem_reserve(d->host, d->device, bytes, tag);
    if (status != PIO_OK) {
        pio_error_clear(err);
        err->status = status;
        return status;
    }
    *held = bytes;
    return PIO_OK;
}

static pio_status load_config(pio_decoder *d, const pio_decoder_load_options *o,
                              pio_error *err)
{
    if (o->model_dir != NULL)
        return pio_decoder_config_load(d->spec, d->model, o->model_dir, &d->config, err);
    if (!o->dummy)
        return pio_error_set(err, PIO_ERR_CONFIG, "model.path is not set: a model folder is "
                             "needed unless model.load_format is dummy");
    memset(&d->config, 0, sizeof d->config);
    pio_textgen_sampling_init(&d->config.sampling);
    d->spec->builtin_config(d->model, &d->config);
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* The weight table                                                                           */
/* ------------------------------------------------------------------------------------------ */

#define DECODER_SLOTS_PER_LAYER 8

static void attention_slots(pio_decoder *d, long l, pio_weight_slot *s)
{
    const pio_decoder_config *c = &d->config;
    pio_decoder_layer *w = &d->layers[l];
    pk_qk_norm_attention_weights *a = &w->attention;
    int64_t H = c->hidden_size, D = c->head_dim;
    int64_t q_width = c->n_heads * D, kv_width = c->n_kv_heads * D;
    pio_weight_slot_set(s++, &a->input_norm, 1, H, 1, "model.layers.%ld.input_layernorm.weight",
                        l);
    pio_weight_slot_set(s++, &a->q_proj, q_width, H, 0,
                        "model.layers.%ld.self_attn.q_proj.weight", l);
    pio_weight_slot_set(s++, &a->k_proj, kv_width, H, 0,
                        "model.layers.%ld.self_attn.k_proj.weight", l);
    pio_weight_slot_set(s++, &a->v_proj, kv_width, H, 0,
                        "model.layers.%ld.self_attn.v_proj.weight", l);
    pio_weight_slot_set(s++, &a->o_proj, H, q_width, 0,
                        "model.layers.%ld.self_attn.o_proj.weight", l);
    pio_weight_slot_set(s++, &a->q_norm, 1, D, 1, "model.layers.%ld.self_attn.q_norm.weight", l);
    pio_weight_slot_set(s++, &a->k_norm, 1, D, 1, "model.layers.%ld.self_attn.k_norm.weight", l);
    pio_weight_slot_set(s, &w->post_norm, 1, H, 1,
                        "model.layers.%ld.post_attention_layernorm.weight", l);
}

static size_t count_slots(pio_decoder *d, int from_checkpoint)
{
    size_t n = 2 + (d->config.tie_word_embeddings ? 0 : 1);
    for (long l = 0; l < d->config.n_layers; l++)
        n += DECODER_SLOTS_PER_LAYER + d->spec->layer_slots(d->model, d, l, from_checkpoint,
                                                            NULL);
    return n;
}

/* Every weight the model reads, with its Hugging Face name and shape. The caller frees. */
static pio_weight_slot *list_slots(pio_decoder *d, int from_checkpoint, size_t *count,
                                   pio_error *err)
{
    const pio_decoder_config *c = &d->config;
    *count = count_slots(d, from_checkpoint);
    pio_weight_slot *slots = calloc(*count, sizeof *slots);
    if (slots == NULL) {
        pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory for the weight table");
        return NULL;
    }
    pio_weight_slot *s = slots;
    pio_weight_slot_set(s++, &d->embed, c->vocab_size, c->hidden_size, 0,
                        "model.embed_tokens.weight", 0);
    pio_weight_slot_set(s++, &d->final_norm, 1, c->hidden_size, 1, "model.norm.weight", 0);
    if (!c->tie_word_embeddings)
        pio_weight_slot_set(s++, &d->lm_head, c->vocab_size, c->hidden_size, 0,
                            "lm_head.weight", 0);
    for (long l = 0; l < c->n_layers; l++) {
        attention_slots(d, l, s);
        s += DECODER_SLOTS_PER_LAYER;
        s += d->spec->layer_slots(d->model, d, l, from_checkpoint, s);
    }
    return slots;
}

static pio_status bind_weights(pio_decoder *d, const char *dir, pio_error *err)
{
    pio_status status = pio_safetensors_open(dir, &d->checkpoint, err);
    size_t n = 0;
    pio_weight_slot *slots = status == PIO_OK ? list_slots(d, 1, &n, err) : NULL;
    if (slots == NULL)
        return status != PIO_OK ? status : err->status;
    status = pio_weights_bind(d->checkpoint, slots, n, d->services, d->host, &d->weights, err);
    if (status == PIO_OK)
        pio_weights_warn_unused(d->checkpoint, slots, n, d->services, d->host);
    free(slots);
    if (status == PIO_OK && d->spec->weights_bound != NULL)
        status = d->spec->weights_bound(d->model, d, err);
    if (status == PIO_OK)
        status = reserve(d, d->weights.bytes, "weights", &d->reserved_weights, err);
    return status;
}

/* Reserves, then fills every tensor of the real shapes with values drawn from `seed`. */
static pio_status generate_weights(pio_decoder *d, uint64_t seed, pio_error *err)
{
    size_t n = 0;
    pio_weight_slot *slots = list_slots(d, 0, &n, err);
    if (slots == NULL)
        return err->status;
    uint64_t bytes = pio_weights_generated_bytes(slots, n);
    pio_status status = reserve(d, bytes, "weights", &d->reserved_weights, err);
    if (status == PIO_OK)
        status = pk_buffer_alloc(d->ctx, bytes, &d->device_copy, err);
    if (status == PIO_OK)
        status = pio_weights_generate(d->ctx, slots, n, seed, &d->device_copy, d->services,
                                      d->host, &d->weights, err);
    free(slots);
    return status;
}

/* Copies the weights into device memory when the context's device is not host memory (dummy
 * weights are made there already). */
static pio_status place_weights(pio_decoder *d, pio_error *err)
{
    if (pk_context_device(d->ctx) == PK_DEVICE_CPU || d->device_copy.data != NULL)
        return PIO_OK; /* host memory is the CPU backend's device memory: used in place */
    size_t n = 0;
    pio_weight_slot *slots = list_slots(d, 0, &n, err);
    if (slots == NULL)
        return err->status;
    pio_status status = pio_weights_upload(d->ctx, slots, n, &d->device_copy, d->services,
                                           d->host, err);
    free(slots);
    return status;
}

/* A rank on a device that is not host memory: its slices of the full weights (views so far:
 * rows of column-parallel projections are contiguous, columns of row-parallel ones strided,
 * copied row by row) in one device buffer of its own, reserved on its GPU. Only rank 0 computes
 * logits, so an untied lm_head goes to rank 0's GPU alone (the others keep the host view they
 * never read); a tied head is the uploaded embedding again. */
static pio_status upload_rank_weights(pio_decoder *d, pio_error *err)
{
    size_t n = 0, kept = 0;
    pio_weight_slot *slots = list_slots(d, 0, &n, err);
    if (slots == NULL)
        return err->status;
    uint64_t bytes = 0;
    for (size_t i = 0; i < n; i++) {
        if (d->shard.rank > 0 && slots[i].tensor == &d->lm_head)
            continue;
        bytes += (uint64_t)pk_tensor_numel(slots[i].tensor) *
                 pio_dtype_size(slots[i].tensor->dtype);
        slots[kept++] = slots[i];
    }
    pio_status status = reserve(d, bytes, "weights", &d->reserved_weights, err);
    if (status == PIO_OK)
        status = pio_weights_upload(d->ctx, slots, kept, &d->device_copy, d->services,
                                    d->host, err);
    free(slots);
    if (status == PIO_OK && d->config.tie_word_embeddings)
        d->lm_head = d->embed;
    return status;
}

static pio_status load_weights(pio_decoder *d, const pio_decoder_load_options *o,
                               pio_error *err)
{
    d->layers = calloc((size_t)d->config.n_layers, sizeof *d->layers);
    if (d->layers == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory for the layer table");
    pio_status status = d->spec->prepare(d->model, d, err);
    if (status == PIO_OK)
        status = o->dummy ? generate_weights(d, o->seed, err)
                          : bind_weights(d, o->model_dir, err);
    if (status == PIO_OK)
        status = place_weights(d, err);
    if (status == PIO_OK && d->config.tie_word_embeddings)
        d->lm_head = d->embed;
    return status;
}

/* ------------------------------------------------------------------------------------------ */
/* KV pool and workspace                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* The cache entry of a token: its k and v rows, one plane each per layer. */
static pio_status create_kv_pool(pio_decoder *d, pio_error *err)
{
    const pio_decoder_config *c = &d->config;
    pio_kv_settings settings;
    pio_status status = pio_kv_settings_read(d->services, d->host, &settings, err);
    if (status != PIO_OK)
        return status;
    pk_kv_pool_config cfg = {.n_layers = (int32_t)c->n_layers, .n_planes = 2};
    cfg.plane_width[0] = cfg.plane_width[1] = d->shard.n_kv_heads * c->head_dim;
    int64_t default_tokens = c->max_positions < PIO_DECODER_DEFAULT_KV_TOKENS
                                 ? c->max_positions : PIO_DECODER_DEFAULT_KV_TOKENS;
    pio_kv_settings_apply(&settings, default_tokens, &cfg);
    int64_t n_blocks = 0;
    uint64_t bytes = 0;
    if ((status = pk_kv_pool_plan(&cfg, &n_blocks, &bytes, err)) ||
        (status = reserve(d, bytes, "kv_cache", &d->reserved_kv, err)))
        return status;
    return pk_kv_pool_create(d->ctx, &cfg, &d->pool, err);
}

/* Positions one sequence may hold: the model's, the configured cap and the cache's room. */
static void set_context_length(pio_decoder *d, int64_t max_context)
{
    int64_t length = d->config.max_positions;
    int64_t cache_tokens = pk_kv_pool_n_blocks(d->pool) * pk_kv_pool_block_size(d->pool);
    if (max_context > 0 && max_context < length)
        length = max_context;
    if (cache_tokens < length)
        length = cache_tokens;
    d->context_length = (size_t)length;
}

static pio_status plan_plugin_buffers(pio_decoder *d, pio_error *err)
{
    d->n_plugin_buffers = d->spec->workspace(d->model, d, NULL);
    d->plugin_buffers = calloc(d->n_plugin_buffers + 1, sizeof *d->plugin_buffers);
    if (d->plugin_buffers == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory for the workspace plan");
    d->spec->workspace(d->model, d, d->plugin_buffers);
    return PIO_OK;
}

static pio_status allocate_plan(pio_decoder *d, const pio_decoder_buffer *plan, size_t n,
                                pio_error *err)
{
    pio_status status = PIO_OK;
    for (size_t i = 0; status == PIO_OK && i < n; i++)
        status = pk_buffer_alloc(d->ctx, plan[i].bytes, plan[i].buffer, err);
    return status;
}

static pio_status create_workspace(pio_decoder *d, pio_error *err)
{
    const pio_decoder_config *c = &d->config;
    pio_decoder_workspace *ws = &d->ws;
    uint64_t C = PIO_DECODER_CHUNK_TOKENS, R = PIO_DECODER_LOGITS_ROWS, f = sizeof(float);
    uint64_t q = (uint64_t)(d->shard.n_heads * c->head_dim);
    uint64_t kv = (uint64_t)(d->shard.n_kv_heads * c->head_dim);
    uint64_t H = (uint64_t)c->hidden_size;
    pio_decoder_buffer plan[] = {
        {&ws->x, C * H * f}, {&ws->h, C * H * f}, {&ws->qkv, C * (q + 2 * kv) * f},
        {&ws->attn, C * q * f}, {&ws->ids, C * 4},
        {&ws->positions, C * 4}, {&ws->seq_rows, C * 4}, {&ws->logits_ids, R * 4}, {&ws->argmax, R * 4},
        {&ws->logits_hidden, R * H * f}, {&ws->logits, R * (uint64_t)c->vocab_size * f},
    };
    size_t n = sizeof plan / sizeof plan[0];
    pio_status status = plan_plugin_buffers(d, err);
    if (status != PIO_OK)
        return status;
    ws->bytes = 0;
    for (size_t i = 0; i < n; i++)
        ws->bytes += plan[i].bytes;
    for (size_t i = 0; i < d->n_plugin_buffers; i++)
        ws->bytes += d->plugin_buffers[i].bytes;
    if ((status = reserve(d, ws->bytes, "workspace", &d->reserved_workspace, err)) ||
        (status = allocate_plan(d, plan, n, err)))
        return status;
    return allocate_plan(d, d->plugin_buffers, d->n_plugin_buffers, err);
}

static void free_workspace(pio_decoder *d)
{
    pio_decoder_workspace *ws = &d->ws;
    pk_buffer *buffers[] = {&ws->x, &ws->h, &ws->qkv, &ws->attn, &ws->ids,
                            &ws->positions, &ws->seq_rows, &ws->block_tables, &ws->logits_ids,
                            &ws->argmax, &ws->logits_hidden, &ws->logits};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++)
        pk_buffer_free(d->ctx, buffers[i]);
    for (size_t i = 0; d->plugin_buffers != NULL && i < d->n_plugin_buffers; i++)
        pk_buffer_free(d->ctx, d->plugin_buffers[i].buffer);
    free(d->plugin_buffers);
    d->plugin_buffers = NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Load and free                                                                              */
/* ------------------------------------------------------------------------------------------ */

static void describe_ops(pio_decoder *d)
{
    d->ops = (pio_textgen_model){
        .struct_size = sizeof d->ops, .self = d, .vocab_size = (size_t)d->config.vocab_size,
        .context_length = d->context_length, .seq_open = pio_decoder_seq_open,
        .seq_close = pio_decoder_seq_close, .seq_length = pio_decoder_seq_length,
        .forward = pio_decoder_forward,
        .features = PIO_TEXTGEN_FEATURE_ARGMAX | PIO_TEXTGEN_FEATURE_SAMPLE,
    };
}

static pio_status build(pio_decoder *d, const pio_decoder_load_options *o, pio_error *err)
{
    pk_context_options ctx_options = {.n_threads = o->n_threads,
                                      .device_index = o->device_index,
                                      .gemv_tma = o->gemv_tma[0]};
    d->gemv_tma[0] = o->gemv_tma[0];
    d->gemv_tma[1] = o->gemv_tma[1];
    int tp = o->tensor_parallel_size > 1 ? o->tensor_parallel_size : 1;
    int ranks = pio_decoder_uses_ranks(o);
    /* With ranks this decoder holds only the config and the full weights, in host memory (the
     * mapped files or the dummy copy): its context is the CPU's, so nothing is uploaded here;
     * each rank copies its own slices to its GPU. */
    pk_device_kind device = ranks ? PK_DEVICE_CPU : o->device;
    pio_status status;
    if ((status = load_config(d, o, err)))
        return status;
    d->shard = (pio_decoder_shard){.rank = 0, .size = 1, .n_heads = d->config.n_heads,
                                   .n_kv_heads = d->config.n_kv_heads};
    pio_decoder_note_unused_devices(d, o);
    if ((ranks && (status = pio_decoder_check_tp(d, o, tp, err))) ||
        (status = pk_context_create(device, &ctx_options, &d->ctx, err)) ||
        (status = load_weights(d, o, err)))
        return status;
    d->short_context = pk_context_gemv_tma_short_context(d->ctx);
    if (ranks)
        status = pio_decoder_build_ranks(d, o, tp, err);
    else if ((status = create_kv_pool(d, err)) == PIO_OK)
        status = create_workspace(d, err);
    if (status != PIO_OK)
        return status;
    set_context_length(d, o->max_context);
    describe_ops(d);
    return PIO_OK;
}

pio_status pio_decoder_load(const pio_decoder_spec *spec, const pio_host_services *services,
                            void *host, const pio_decoder_load_options *options,
                            pio_decoder **out, pio_error *err)
{
    *out = NULL;
    pio_decoder *d = calloc(1, sizeof *d);
    if (d != NULL)
        d->model = calloc(1, spec->model_size > 0 ? spec->model_size : 1);
    if (d == NULL || d->model == NULL) {
        free(d);
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory");
    }
    d->spec = spec;
    d->services = services;
    d->host = host;
    /* With ranks the full weights stay in host memory: the ranks reserve their GPUs' share. */
    d->device = options->device == PK_DEVICE_CPU || pio_decoder_uses_ranks(options)
                    ? -1 : options->device_index;
    pio_status status = build(d, options, err);
    if (status != PIO_OK) {
        pio_decoder_free(d);
        return status;
    }
    *out = d;
    return PIO_OK;
}

/* One rank of tensor parallelism: its own context, weights (views of its slices of full's, or
 * their copies on its GPU), KV pool shard and workspace; full's config (see pio_decoder_shard). */
pio_status pio_decoder_rank_create(const pio_decoder *full, const pio_decoder_shard *shard,
                                   const pio_decoder_load_options *o, int n_threads,
                                   pio_decoder **out, pio_error *err)
{
    *out = NULL;
    pio_decoder *d = calloc(1, sizeof *d);
    if (d != NULL)
        d->model = calloc(1, full->spec->model_size > 0 ? full->spec->model_size : 1);
    if (d == NULL || d->model == NULL) {
        free(d);
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory");
    }
    d->spec = full->spec;
    d->services = full->services;
    d->host = full->host;
    d->device = o->device == PK_DEVICE_CPU ? -1 : o->device_index;
    d->config = full->config;
    d->shard = *shard;
    d->embed = full->embed;
    d->final_norm = full->final_norm;
    d->lm_head = full->lm_head;
    d->weights = full->weights;
    /* Rank steps run op by op at every context length: the long-context choice throughout. */
    pk_context_options ctx_options = {.n_threads = n_threads, .device_index = o->device_index,
                                      .gemv_tma = o->gemv_tma[1]};
    d->gemv_tma[0] = d->gemv_tma[1] = o->gemv_tma[1];
    int64_t D = d->config.head_dim;
    pio_status status = pk_context_create(o->device, &ctx_options, &d->ctx, err);
    if (status == PIO_OK && (d->layers = calloc((size_t)d->config.n_layers,
                                                 sizeof *d->layers)) == NULL)
        status = pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory for the layer table");
    for (long l = 0; status == PIO_OK && l < d->config.n_layers; l++) {
        const pk_qk_norm_attention_weights *f = &full->layers[l].attention;
        pk_qk_norm_attention_weights *a = &d->layers[l].attention;
        *a = *f; /* the norms are replicated */
        a->q_proj = pk_tensor_rows(&f->q_proj, shard->head_offset * D, shard->n_heads * D);
        a->k_proj = pk_tensor_rows(&f->k_proj, shard->kv_head_offset * D, shard->n_kv_heads * D);
        a->v_proj = pk_tensor_rows(&f->v_proj, shard->kv_head_offset * D, shard->n_kv_heads * D);
        a->o_proj = pk_tensor_cols(&f->o_proj, shard->head_offset * D, shard->n_heads * D);
        d->layers[l].post_norm = full->layers[l].post_norm;
    }
    if (status == PIO_OK)
        status = d->spec->shard(d->model, d, full->model, full, err);
    if (status == PIO_OK && o->device != PK_DEVICE_CPU)
        status = upload_rank_weights(d, err);
    if (status == PIO_OK && (status = create_kv_pool(d, err)) == PIO_OK &&
        (status = create_workspace(d, err)) == PIO_OK)
        set_context_length(d, o->max_context);
    if (status != PIO_OK) {
        pio_decoder_free(d);
        return status;
    }
    *out = d;
    return PIO_OK;
}

void pio_decoder_free(pio_decoder *d)
{
    if (d == NULL)
        return;
    pio_decoder_stop_ranks(d); /* before the ranks its threads drive are freed */
    if (d->ranks != NULL) {
        d->pool = NULL; /* rank 0's */
        for (int r = 0; r < d->shard.size; r++)
            pio_decoder_free(d->ranks[r]);
        free(d->ranks);
        d->ranks = NULL;
    }
    pk_comm_destroy(d->comm);
    d->comm = NULL;
    pio_kv_batch_free(&d->kv_batch);
    pk_kv_pool_destroy(d->pool);
    if (d->ctx != NULL) { /* everything below was allocated after the context */
        pio_decoder_graphs_free(d);
        pio_decoder_sampling_free(d);
        free_workspace(d);
        if (d->spec->release != NULL)
            d->spec->release(d->model, d);
        pk_buffer_free(d->ctx, &d->device_copy);
        pk_context_destroy(d->ctx);
    }
    pio_safetensors_close(d->checkpoint);
    free(d->layers);
    uint64_t held[] = {d->reserved_weights, d->reserved_kv, d->reserved_workspace};
    const char *tags[] = {"weights", "kv_cache", "workspace"};
    for (size_t i = 0; i < 3; i++)
        if (held[i] > 0)
            d->services->mem_release(d->host, d->device, held[i], tags[i]);
    free(d->model);
    free(d);
}
