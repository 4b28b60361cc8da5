/*
 * The Qwen3 dense model on the op API: its weights, its paged KV cache, its activation
 * workspace and the batched forward.
 *
 * Forward of a flattened batch (pio_textgen_batch): every sequence grows by its tokens in the
 * KV pool, then the tokens run through the layers in chunks of at most QWEN3_CHUNK_TOKENS (a
 * later chunk reads the keys and values an earlier one stored, so chunking is exact), and the
 * logits of the requested rows are computed from the final hidden states of their chunk.
 */
#ifndef QWEN3_MODEL_H
#define QWEN3_MODEL_H

#include "config.h"
#include "kernels/kv_cache.h"
#include "kernels/ops.h"
#include "pio/kv_batch.h"
#include "pio/plugin.h"
#include "pio/safetensors.h"
#include "pio/textgen.h"

/* Tokens run through the layers together; bounds the activation workspace. */
#define QWEN3_CHUNK_TOKENS 512
/* Logits rows computed together; bounds the [rows, vocab] logits workspace. */
#define QWEN3_LOGITS_ROWS 32
/* KV capacity when kv_cache.max_tokens and kv_cache.memory_gb are both unset. */
#define QWEN3_DEFAULT_KV_TOKENS 4096

typedef struct qwen3_layer_weights {
    pk_tensor input_norm;   /* [1, H] */
    pk_tensor q_proj;       /* [n_heads·head_dim, H] */
    pk_tensor k_proj;       /* [n_kv_heads·head_dim, H] */
    pk_tensor v_proj;       /* [n_kv_heads·head_dim, H] */
    pk_tensor o_proj;       /* [H, n_heads·head_dim] */
    pk_tensor q_norm;       /* [1, head_dim] */
    pk_tensor k_norm;       /* [1, head_dim] */
    pk_tensor post_norm;    /* [1, H] */
    pk_tensor gate_proj;    /* [F, H] */
    pk_tensor up_proj;      /* [F, H] */
    pk_tensor down_proj;    /* [H, F] */
} qwen3_layer_weights;

typedef struct qwen3_weights {
    pk_tensor embed;        /* [V, H] */
    pk_tensor final_norm;   /* [1, H] */
    pk_tensor lm_head;      /* [V, H]; the embedding itself when tied */
    qwen3_layer_weights *layers;
    pio_safetensors *checkpoint; /* the mapped files (load_format auto) */
    void *host_copy;             /* dummy weights in host memory (load_format dummy) */
    pk_buffer device_copy;       /* the weights on a device that is not host memory */
    uint64_t n_parameters;
    uint64_t bytes;
} qwen3_weights;

/* Activation buffers for one chunk of tokens, allocated once at load. */
typedef struct qwen3_workspace {
    pk_buffer x, h, q, k, v, attn, gate, up;  /* [chunk, width] F32 each */
    pk_buffer ids, positions, seq_rows;       /* [1, chunk] I32 */
    pk_buffer block_tables;                   /* grows with the batch */
    pk_buffer logits_ids, logits_hidden, logits; /* [1, R] I32, [R, H], [R, V] F32 */
    uint64_t bytes;
} qwen3_workspace;

typedef struct qwen3_model {
    qwen3_config config;
    const pio_host_services *services;
    void *host;
    pk_context *ctx;
    qwen3_weights weights;
    pk_kv_pool *pool;
    pio_kv_batch kv_batch;
    qwen3_workspace ws;
    size_t context_length;
    uint64_t reserved_weights, reserved_kv, reserved_workspace; /* bytes told to mem_reserve */
    int device;                           /* mem_reserve device: -1 host RAM, else ordinal */
    pio_textgen_model ops;                /* this model for the text-generation runtime */
} qwen3_model;

typedef struct qwen3_load_options {
    const char *model_dir;  /* NULL: built-in shape (dummy only) */
    int dummy;              /* seeded random weights instead of files */
    uint64_t seed;          /* model.seed */
    int n_threads;          /* runtime.threads; 0 = all cores */
    int64_t max_context;    /* runtime.max_context; 0 = unset */
    pk_device_kind device;
    int device_index;       /* GPU ordinal for a GPU device */
} qwen3_load_options;

/* Reads the config, binds or generates the weights, creates the KV pool and the workspace.
 * On failure *out is NULL and everything taken is released. */
pio_status qwen3_model_load(const pio_host_services *services, void *host,
                            const qwen3_load_options *options, qwen3_model **out, pio_error *err);
void qwen3_model_free(qwen3_model *model);

/* ---- weights.c ---------------------------------------------------------------------------- */

/* Binds every tensor of the checkpoint in dir, checking names, shapes and dtypes. */
pio_status qwen3_weights_bind(qwen3_model *model, const char *dir, pio_error *err);
/* Fills every tensor of the real shapes with values drawn from `seed`. */
pio_status qwen3_weights_dummy(qwen3_model *model, uint64_t seed, pio_error *err);
/* Copies the weights into device memory when the context's device is not host memory. */
pio_status qwen3_weights_place(qwen3_model *model, pio_error *err);
void qwen3_weights_free(qwen3_model *model);

/* ---- forward.c ---------------------------------------------------------------------------- */

/* The operations of pio_textgen_model (self is the qwen3_model). */
pio_status qwen3_seq_open(void *self, int32_t *seq, pio_error *err);
void qwen3_seq_close(void *self, int32_t seq);
int64_t qwen3_seq_length(void *self, int32_t seq);
pio_status qwen3_forward(void *self, const pio_textgen_batch *batch, pio_error *err);

/* Activations of `n` tokens: views of the workspace. */
typedef struct qwen3_activations {
    int64_t n;
    pk_tensor x;     /* [n, H] residual stream */
    pk_tensor h;     /* [n, H] normalised input of a block */
    pk_tensor q;     /* [n, n_heads·head_dim] */
    pk_tensor k;     /* [n, n_kv_heads·head_dim] */
    pk_tensor v;     /* [n, n_kv_heads·head_dim] */
    pk_tensor attn;  /* [n, n_heads·head_dim] */
    pk_tensor gate;  /* [n, F] */
    pk_tensor up;    /* [n, F] */
} qwen3_activations;

#endif
