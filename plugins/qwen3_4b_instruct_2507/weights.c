/*
 * The weights of a Qwen3 dense model: bound by name from a safetensors checkpoint (every shape
 * and dtype checked), or filled with seeded random values of the real shapes (load_format
 * dummy), then placed on the context's device.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

#define WEIGHT_NAME_MAX 96
#define WEIGHTS_PER_LAYER 11

typedef struct weight_slot {
    char name[WEIGHT_NAME_MAX];
    pk_tensor *tensor;
    int64_t rows, cols;
    int is_norm; /* stored 1-D ([cols]) in the files; a [1, cols] row here */
} weight_slot;

static void set_slot(weight_slot *slot, pk_tensor *tensor, int64_t rows, int64_t cols,
                     int is_norm, const char *format, long layer)
{
    snprintf(slot->name, sizeof slot->name, format, layer);
    slot->tensor = tensor;
    slot->rows = rows;
    slot->cols = cols;
    slot->is_norm = is_norm;
}

static size_t count_slots(const qwen3_config *c)
{
    return 2 + (c->tie_word_embeddings ? 0 : 1) + WEIGHTS_PER_LAYER * (size_t)c->n_layers;
}

static void layer_slots(qwen3_config *c, qwen3_layer_weights *w, long l, weight_slot *s)
{
    int64_t H = c->hidden_size, F = c->intermediate_size, D = c->head_dim;
    int64_t q_width = c->n_heads * D, kv_width = c->n_kv_heads * D;
    set_slot(s++, &w->input_norm, 1, H, 1, "model.layers.%ld.input_layernorm.weight", l);
    set_slot(s++, &w->q_proj, q_width, H, 0, "model.layers.%ld.self_attn.q_proj.weight", l);
    set_slot(s++, &w->k_proj, kv_width, H, 0, "model.layers.%ld.self_attn.k_proj.weight", l);
    set_slot(s++, &w->v_proj, kv_width, H, 0, "model.layers.%ld.self_attn.v_proj.weight", l);
    set_slot(s++, &w->o_proj, H, q_width, 0, "model.layers.%ld.self_attn.o_proj.weight", l);
    set_slot(s++, &w->q_norm, 1, D, 1, "model.layers.%ld.self_attn.q_norm.weight", l);
    set_slot(s++, &w->k_norm, 1, D, 1, "model.layers.%ld.self_attn.k_norm.weight", l);
    set_slot(s++, &w->post_norm, 1, H, 1, "model.layers.%ld.post_attention_layernorm.weight", l);
    set_slot(s++, &w->gate_proj, F, H, 0, "model.layers.%ld.mlp.gate_proj.weight", l);
    set_slot(s++, &w->up_proj, F, H, 0, "model.layers.%ld.mlp.up_proj.weight", l);
    set_slot(s, &w->down_proj, H, F, 0, "model.layers.%ld.mlp.down_proj.weight", l);
}

/* Every weight the model reads, with its Hugging Face name and shape. The caller frees. */
static weight_slot *list_slots(qwen3_model *m, size_t *count, pio_error *err)
{
    qwen3_config *c = &m->config;
    qwen3_weights *w = &m->weights;
    *count = count_slots(c);
    weight_slot *slots = calloc(*count, sizeof *slots);
    if (w->layers == NULL)
        w->layers = calloc((size_t)c->n_layers, sizeof *w->layers);
    if (slots == NULL || w->layers == NULL) {
        free(slots);
        pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory for the weight table");
        return NULL;
    }
    weight_slot *s = slots;
    set_slot(s++, &w->embed, c->vocab_size, c->hidden_size, 0, "model.embed_tokens.weight", 0);
    set_slot(s++, &w->final_norm, 1, c->hidden_size, 1, "model.norm.weight", 0);
    if (!c->tie_word_embeddings)
        set_slot(s++, &w->lm_head, c->vocab_size, c->hidden_size, 0, "lm_head.weight", 0);
    for (long l = 0; l < c->n_layers; l++, s += WEIGHTS_PER_LAYER)
        layer_slots(c, &w->layers[l], l, s);
    return slots;
}

/* Tensors are laid out 64-byte aligned in the memory this file allocates, as the safetensors
 * writer aligns them in files. */
static uint64_t padded(uint64_t bytes)
{
    return (bytes + 63) / 64 * 64;
}

static void account(qwen3_weights *w, const pk_tensor *t)
{
    w->n_parameters += (uint64_t)pk_tensor_numel(t);
    w->bytes += pk_tensor_span_bytes(t);
}

static int slot_named(const weight_slot *slots, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(slots[i].name, name) == 0)
            return 1;
    return 0;
}

/* Tensors of the checkpoint that nothing reads are worth a warning (a mismatched model). */
static void warn_unused(const qwen3_model *m, const weight_slot *slots, size_t n_slots)
{
    const pio_safetensors *st = m->weights.checkpoint;
    size_t unused = 0;
    const char *first = NULL;
    for (size_t i = 0; i < pio_safetensors_count(st); i++) {
        const char *name = pio_safetensors_at(st, i)->name;
        if (!slot_named(slots, n_slots, name)) {
            unused++;
            first = first ? first : name;
        }
    }
    if (unused == 0)
        return;
    char message[256];
    snprintf(message, sizeof message, "%zu tensor(s) of the checkpoint are not used (first: %s)",
             unused, first);
    m->services->log(m->host, PIO_LOG_WARN, message);
}

static pio_status bind_slot(qwen3_model *m, const weight_slot *slot, pio_error *err)
{
    const pio_safetensors *st = m->weights.checkpoint;
    int64_t shape[2] = {slot->rows, slot->cols};
    const pio_safetensors_tensor *t = NULL;
    pio_status status = pio_safetensors_get(st, slot->name, PIO_DTYPE_INVALID,
                                            slot->is_norm ? 1 : 2,
                                            slot->is_norm ? &slot->cols : shape, &t, err);
    if (status != PIO_OK)
        return status;
    const char *file = pio_safetensors_file(st, t->file_index)->path;
    if (t->dtype != PIO_DTYPE_BF16 && t->dtype != PIO_DTYPE_F32)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: %s: dtype %s is not supported "
                             "(BF16 or F32)", file, slot->name, pio_dtype_name(t->dtype));
    if ((uintptr_t)t->data % pio_dtype_size(t->dtype) != 0)
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: %s: data at byte %llu is not aligned to "
                             "its element size", file, slot->name,
                             (unsigned long long)t->file_offset);
    *slot->tensor = pk_tensor_host((void *)t->data, t->dtype, slot->rows, slot->cols);
    account(&m->weights, slot->tensor);
    return PIO_OK;
}

static pio_status bind_all(qwen3_model *m, const weight_slot *slots, size_t n, pio_error *err)
{
    for (size_t i = 0; i < n; i++) {
        pio_status status = bind_slot(m, &slots[i], err);
        if (status != PIO_OK)
            return status;
        m->services->progress(m->host, "weights", i + 1, n);
    }
    return PIO_OK;
}

pio_status qwen3_weights_bind(qwen3_model *m, const char *dir, pio_error *err)
{
    pio_status status = pio_safetensors_open(dir, &m->weights.checkpoint, err);
    if (status != PIO_OK)
        return status;
    size_t n = 0;
    weight_slot *slots = list_slots(m, &n, err);
    if (slots == NULL)
        return err->status;
    status = bind_all(m, slots, n, err);
    if (status == PIO_OK) {
        if (m->config.tie_word_embeddings)
            m->weights.lm_head = m->weights.embed;
        warn_unused(m, slots, n);
    }
    free(slots);
    return status;
}

/* ------------------------------------------------------------------------------------------ */
/* Dummy weights                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* A value in [-1, 1) that depends only on (seed, tensor, element): the same weights for any
 * number of threads. */
static float dummy_uniform(uint64_t seed, uint64_t tensor, uint64_t element)
{
    uint64_t z = seed ^ (tensor * 0x9e3779b97f4a7c15ull) ^ (element * 0xd1b54a32d192ed03ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) * 0x1.0p-52 - 1.0);
}

/* Norm weights near 1, matrices with the spread of initializer_range 0.02 (uniform of the
 * same standard deviation). */
static void fill_dummy(uint16_t *data, int64_t count, uint64_t seed, uint64_t tensor,
                       int is_norm, int n_threads)
{
    const float scale = is_norm ? 0.05f : 0.0346f, offset = is_norm ? 1.0f : 0.0f;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t i = 0; i < count; i++)
        data[i] = pio_f32_to_bf16(offset + scale * dummy_uniform(seed, tensor, (uint64_t)i));
}

static pio_status generate_all(qwen3_model *m, const weight_slot *slots, size_t n,
                               uint64_t seed, pio_error *err)
{
    uint16_t *next = m->weights.host_copy;
    int n_threads = pk_context_threads(m->ctx);
    for (size_t i = 0; i < n; i++) {
        if (m->services->should_abort(m->host))
            return pio_error_set(err, PIO_ERR_CANCELLED, "loading was interrupted");
        int64_t count = slots[i].rows * slots[i].cols;
        fill_dummy(next, count, seed, i, slots[i].is_norm, n_threads);
        *slots[i].tensor = pk_tensor_host(next, PIO_DTYPE_BF16, slots[i].rows, slots[i].cols);
        account(&m->weights, slots[i].tensor);
        next += padded((uint64_t)count * 2) / 2;
        m->services->progress(m->host, "weights", i + 1, n);
    }
    return PIO_OK;
}

pio_status qwen3_weights_dummy(qwen3_model *m, uint64_t seed, pio_error *err)
{
    size_t n = 0;
    weight_slot *slots = list_slots(m, &n, err);
    if (slots == NULL)
        return err->status;
    uint64_t bytes = 0; /* bf16 values */
    for (size_t i = 0; i < n; i++)
        bytes += padded((uint64_t)(slots[i].rows * slots[i].cols) * 2);
    pio_status status = PIO_OK;
    m->weights.host_copy = aligned_alloc(64, bytes);
    if (m->weights.host_copy == NULL)
        status = pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "dummy weights: out of memory for "
                               "%llu bytes", (unsigned long long)bytes);
    if (status == PIO_OK)
        status = generate_all(m, slots, n, seed, err);
    if (status == PIO_OK && m->config.tie_word_embeddings)
        m->weights.lm_head = m->weights.embed;
    free(slots);
    return status;
}

/* ------------------------------------------------------------------------------------------ */
/* Placement                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static pio_status upload_slots(qwen3_model *m, const weight_slot *slots, size_t n,
                               pio_error *err)
{
    size_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        pk_tensor host = *slots[i].tensor;
        pk_tensor device = pk_tensor_in(&m->weights.device_copy, offset, host.dtype, host.rows,
                                        host.cols);
        pio_status status = pk_copy(m->ctx, &device, &host, err);
        if (status != PIO_OK)
            return status;
        *slots[i].tensor = device;
        offset += padded(pk_tensor_span_bytes(&host));
    }
    return pk_synchronize(m->ctx, err);
}

pio_status qwen3_weights_place(qwen3_model *m, pio_error *err)
{
    if (pk_context_device(m->ctx) == PK_DEVICE_CPU)
        return PIO_OK; /* host memory is the CPU backend's device memory: used in place */
    size_t n = 0;
    weight_slot *slots = list_slots(m, &n, err);
    if (slots == NULL)
        return err->status;
    uint64_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += padded(pk_tensor_span_bytes(slots[i].tensor));
    pio_status status = pk_buffer_alloc(m->ctx, bytes, &m->weights.device_copy, err);
    if (status == PIO_OK)
        status = upload_slots(m, slots, n, err);
    if (status == PIO_OK && m->config.tie_word_embeddings)
        m->weights.lm_head = m->weights.embed;
    free(slots);
    return status;
}

void qwen3_weights_free(qwen3_model *m)
{
    qwen3_weights *w = &m->weights;
    pk_buffer_free(m->ctx, &w->device_copy);
    pio_safetensors_close(w->checkpoint);
    free(w->host_copy);
    free(w->layers);
    memset(w, 0, sizeof *w);
}
