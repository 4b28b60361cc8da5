/*
 * The Qwen3 dense model's own part of the shared decoder (pio/decoder.h): its config key
 * (intermediate_size), its built-in real shape, and its dense SwiGLU MLP. Attention, KV cache,
 * weights table, forward and the plugin vtable are the decoder's.
 */
#ifndef QWEN3_MODEL_H
#define QWEN3_MODEL_H

#include "pio/decoder.h"

typedef struct qwen3_mlp_layer {
    pk_tensor gate_proj; /* [F, H] */
    pk_tensor up_proj;   /* [F, H] */
    pk_tensor down_proj; /* [H, F] */
} qwen3_mlp_layer;

typedef struct qwen3_dense {
    long intermediate_size;   /* F */
    qwen3_mlp_layer *layers;
    pk_buffer gate_up;        /* [chunk, 2F] F32: gate columns, then up */
} qwen3_dense;

/* ---- config.c ----------------------------------------------------------------------------- */
pio_status qwen3_read_config(void *model, const pio_json_doc *doc, pio_error *err);
/* The shape of the real Qwen3-4B-Instruct-2507 (its config.json and generation_config.json). */
void qwen3_builtin_config(void *model, pio_decoder_config *config);

/* ---- mlp.c -------------------------------------------------------------------------------- */
pio_status qwen3_prepare(void *model, const pio_decoder *d, pio_error *err);
size_t qwen3_layer_slots(void *model, const pio_decoder *d, long layer, int from_checkpoint,
                         pio_weight_slot *slots);
pio_status qwen3_shard(void *model, const pio_decoder *d, const void *full_model,
                       const pio_decoder *full, pio_error *err);
size_t qwen3_workspace(void *model, const pio_decoder *d, pio_decoder_buffer *plan);
pio_status qwen3_mlp_block(void *model, pio_decoder *d, int32_t layer,
                           const pk_attention_activations *a, pio_error *err);
void qwen3_release(void *model, pio_decoder *d);

#endif
