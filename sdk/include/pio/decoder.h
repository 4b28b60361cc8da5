/*
 * A decoder-only text model on the op API, for plugins whose layers are Qwen3-style attention
 * (kernels/transformer_blocks.h: GQA, per-head QK-norm, NeoX RoPE, paged KV cache) followed by
 * a feed-forward block of their own (a dense SwiGLU MLP, a mixture of experts, ...).
 *
 * The decoder does what such models share: config.json's common keys and generation_config.json,
 * the weight table of embeddings, attention and norms (bind / dummy / place), the KV pool, the
 * activation workspace, the batched forward over a flattened batch (chunks of
 * PIO_DECODER_CHUNK_TOKENS; a later chunk reads the keys and values an earlier one stored, so
 * chunking is exact; logits only for the rows asked for), and the whole plugin vtable through
 * the text-generation runtime (pio/textgen.h). A plugin describes what is its own in a
 * pio_decoder_spec and writes its descriptor with PIO_DECODER_PLUGIN_DEFINE.
 */
#ifndef PIO_DECODER_H
#define PIO_DECODER_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/comm.h"
#include "kernels/kv_cache.h"
#include "kernels/ops.h"
#include "kernels/transformer_blocks.h"
#include "pio/error.h"
#include "pio/json_util.h"
#include "pio/kv_batch.h"
#include "pio/model_weights.h"
#include "pio/plugin.h"
#include "pio/safetensors.h"
#include "pio/textgen.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Tokens run through the layers together; bounds the activation workspace. */
#define PIO_DECODER_CHUNK_TOKENS 2048
/* Logits rows computed together; bounds the [rows, vocab] logits workspace. */
#define PIO_DECODER_LOGITS_ROWS 64
/* KV capacity when kv_cache.max_tokens and kv_cache.memory_gb are both unset. */
#define PIO_DECODER_DEFAULT_KV_TOKENS 4096

#define PIO_DECODER_SOURCE_MAX 4096 /* bytes of pio_decoder_config.source */

/* The keys every such model has (transformers' defaults for those a config.json may omit). */
typedef struct pio_decoder_config {
    char source[PIO_DECODER_SOURCE_MAX]; /* the config.json read, or a note that the built-in
                                            shape is used */
    long vocab_size;
    long hidden_size;
    long n_layers;
    long n_heads;
    long n_kv_heads;
    long head_dim;
    long max_positions;     /* max_position_embeddings */
    double rms_norm_eps;
    double rope_theta;
    bool tie_word_embeddings;

    pio_sampling_params sampling; /* built-in defaults, then generation_config.json */
    int32_t eos_ids[2 * PIO_TEXTGEN_MAX_EOS]; /* generation_config.json, then config.json */
    size_t n_eos;
} pio_decoder_config;

/* The weights of one layer the decoder binds: attention and the feed-forward block's pre-norm
 * (post_attention_layernorm, which the plugin's block applies). */
typedef struct pio_decoder_layer {
    pk_qk_norm_attention_weights attention;
    pk_tensor post_norm; /* [1, H] */
} pio_decoder_layer;

/* A device buffer of the workspace and its size. */
typedef struct pio_decoder_buffer {
    pk_buffer *buffer;
    uint64_t bytes;
} pio_decoder_buffer;

typedef struct pio_decoder pio_decoder;

/* Tensor parallelism (YAML parallel.tensor_parallel_size = N > 1): the model runs as N rank
 * decoders, one thread each with its own context, KV pool shard and workspace, behind the
 * decoder the plugin vtable sees (which holds the full weights and no pool). Rank r holds q
 * heads [head_offset, head_offset + n_heads) and its k/v heads (n_kv_heads from kv_head_offset;
 * replicated on N / n_kv_heads ranks when there are fewer KV heads than ranks). Without tensor
 * parallelism rank = 0, size = 1 and the counts are the model's. */
typedef struct pio_decoder_shard {
    int rank, size;
    long n_heads, n_kv_heads;
    long head_offset, kv_head_offset;
} pio_decoder_shard;

/* What a plugin adds. `model` is the plugin's state: model_size zeroed bytes the decoder
 * allocates and frees. */
typedef struct pio_decoder_spec {
    const char *architecture;    /* the config.json "architectures" entry served */
    const char *family;          /* for messages, e.g. "Qwen3 dense" */
    pio_chat_format chat_format;
    size_t model_size;

    /* config.json keys of this architecture beyond pio_decoder_config (refusing what is not
     * implemented, naming the file and key). */
    pio_status (*read_config)(void *model, const pio_json_doc *doc, pio_error *err);
    /* The real model's shape, for dummy weights without a model folder. */
    void (*builtin_config)(void *model, pio_decoder_config *config);
    /* Once the config is known: allocates the plugin's per-layer state. */
    pio_status (*prepare)(void *model, const pio_decoder *d, pio_error *err);
    /* The slots of one layer beyond pio_decoder_layer; returns how many (slots may be NULL to
     * count). from_checkpoint: the tensors as the files store them (binding); otherwise as the
     * forward reads them (dummy values, placement). */
    size_t (*layer_slots)(void *model, const pio_decoder *d, long layer, int from_checkpoint,
                          pio_weight_slot *slots);
    /* Called after the checkpoint is bound (e.g. to pack tensors); may be NULL. */
    pio_status (*weights_bound)(void *model, pio_decoder *d, pio_error *err);
    /* The plugin's per-chunk buffers; returns how many (plan may be NULL to count). The decoder
     * allocates and frees them with its own workspace. */
    size_t (*workspace)(void *model, const pio_decoder *d, pio_decoder_buffer *plan);
    /* x += FFN(x) for one layer over the chunk's activations. */
    pio_status (*ffn_block)(void *model, pio_decoder *d, int32_t layer,
                            const pk_attention_activations *a, pio_error *err);
    /* Frees what the hooks allocated (workspace buffers excepted); may be NULL. */
    void (*release)(void *model, pio_decoder *d);
    /* A MoE's routed experts: returns the bytes of all of them (every layer's) and sets
     * *experts to how many a layer routes among and *per_token to how many a token is routed
     * to; NULL when the model routes nothing. The SDK derives pio_model_info's
     * active_weight_bytes (a token reads per_token / experts of them) and its routed_* fields
     * from it. */
    uint64_t (*routed_weights)(void *model, const pio_decoder *d, uint32_t *experts,
                               uint32_t *per_token);
    /* Tensor parallelism: fills `model` (zeroed) as rank d->shard.rank of d->shard.size, its
     * tensors views of the slices of full_model's (no copies): column-parallel projections
     * take rows, row-parallel ones columns. Refuses sizes that do not divide, naming the
     * config.json key and the numbers. NULL: the plugin has no tensor parallelism. */
    pio_status (*shard)(void *model, const pio_decoder *d, const void *full_model,
                        const pio_decoder *full, pio_error *err);
} pio_decoder_spec;

/* Activation buffers of one chunk, allocated once at load. */
typedef struct pio_decoder_workspace {
    pk_buffer x, h, attn;                     /* [chunk, width] F32 each */
    pk_buffer qkv;                            /* [chunk, q + k + v widths]: one fused output */
    pk_buffer ids, positions, seq_rows;       /* [1, chunk] I32 */
    pk_buffer block_tables;                   /* grows with the batch */
    pk_buffer logits_ids, logits_hidden, logits; /* [1, R] I32, [R, H], [R, V] F32 */
    pk_buffer argmax;                         /* [1, R] I32: ids found on the device */
    uint64_t bytes;
} pio_decoder_workspace;

struct pio_decoder {
    const pio_decoder_spec *spec;
    void *model;                          /* the plugin's state */
    pio_decoder_config config;
    const pio_host_services *services;
    void *host;
    pk_context *ctx;

    pk_tensor embed;                      /* [V, H] */
    pk_tensor final_norm;                 /* [1, H] */
    pk_tensor lm_head;                    /* [V, H]; the embedding itself when tied */
    pio_decoder_layer *layers;
    pio_safetensors *checkpoint;          /* the mapped files (load_format auto) */
    pk_buffer device_copy;                /* the weights in the context's memory: dummy ones,
                                             or a copy on a device that is not host memory */
    pio_weight_totals weights;

    pk_kv_pool *pool;
    pio_kv_batch kv_batch;
    pio_decoder_workspace ws;
    pio_decoder_buffer *plugin_buffers;   /* the spec's workspace plan */
    size_t n_plugin_buffers;
    size_t context_length;
    uint64_t reserved_weights, reserved_kv, reserved_workspace; /* bytes told to mem_reserve */
    int device;                           /* mem_reserve device: -1 host RAM, else ordinal */
    pio_textgen_model ops;                /* this model for the text-generation runtime */

    pio_decoder_shard shard;              /* this decoder's heads (all of them without TP) */
    pk_comm *comm;                        /* a rank decoder's communicator; NULL without TP */
    pio_decoder **ranks;                  /* TP > 1, the outer decoder: its shard.size ranks */
    struct pio_decoder_graphs *graphs;    /* recorded decode steps (decoder_graph.c), or NULL */
    struct pio_decoder_workers *workers;  /* the outer decoder with ranks: the persistent rank
                                             threads (decoder_tp.c), or NULL */
    struct pio_decoder_sampling *sampling; /* device sampling's operands (decoder_sample.c),
                                              made on first use, or NULL */
    pk_gemv_tma gemv_tma[2];              /* pio_decoder_load_options.gemv_tma */
    int64_t short_context; /* positions below which a step takes gemv_tma[0]: the context's
                              pk_context_gemv_tma_short_context (0 on the CPU: never) */
};

typedef struct pio_decoder_load_options {
    const char *model_dir;  /* NULL: built-in shape (dummy only) */
    int dummy;              /* seeded random weights instead of files */
    uint64_t seed;          /* model.seed */
    int n_threads;          /* runtime.threads; 0 = all cores */
    int64_t max_context;    /* runtime.max_context; 0 = unset */
    pk_device_kind device;
    int device_index;       /* GPU ordinal for a GPU device */
    int tensor_parallel_size; /* parallel.tensor_parallel_size; 0 or 1 = none */
    /* parallel.devices: rank r's CUDA ordinal is devices[r] (n_devices ranks); n_devices 0: the
     * key is unset and rank r takes device_index + r. Read for the cuda device only. */
    int n_devices;
    int devices[PK_COMM_MAX_RANKS];
    /* parallel.force_ranks: a tensor_parallel_size of 1 runs through the rank machinery too
     * (one rank thread, a communicator of one rank: NCCL on cuda), to check it against the
     * plain path. */
    int force_ranks;
    /* runtime.cuda_gemv_tma, resolved (pio_decoder_gemv_tma): which decode projections a CUDA
     * context streams with tensor-map copies, [0] for steps whose tokens are all at positions
     * below the device's pk_context_gemv_tma_short_context (512 on an H100, 4,096 on an H200),
     * [1] for the others. */
    pk_gemv_tma gemv_tma[2];
} pio_decoder_load_options;

/* runtime.cuda_gemv_tma ("auto", "all", "lm_head" or "off"; NULL: "auto") for a model that
 * routes to experts (`moe`) or not, into out[0] (short contexts) and out[1] (long): "auto" is
 * every projection for a dense model at short contexts and the lm_head only otherwise, the
 * other words one choice for both (docs/KERNELS.md, "Tenth session"). Returns 0, or -1 for any
 * other text (out untouched). */
int pio_decoder_gemv_tma(const char *setting, int moe, pk_gemv_tma out[2]);

/* Reads the config, binds or generates the weights, creates the KV pool and the workspace.
 * On failure *out is NULL and everything taken is released. */
pio_status pio_decoder_load(const pio_decoder_spec *spec, const pio_host_services *services,
                            void *host, const pio_decoder_load_options *options,
                            pio_decoder **out, pio_error *err);
void pio_decoder_free(pio_decoder *d);

/* Reads DIR/config.json (the common keys, then spec->read_config) and
 * DIR/generation_config.json (optional). Every error names the file and the key. */
pio_status pio_decoder_config_load(const pio_decoder_spec *spec, void *model, const char *dir,
                                   pio_decoder_config *config, pio_error *err);

/* The operations of pio_textgen_model (self is the pio_decoder). */
pio_status pio_decoder_seq_open(void *self, int32_t *seq, pio_error *err);
void pio_decoder_seq_close(void *self, int32_t seq);
int64_t pio_decoder_seq_length(void *self, int32_t seq);
pio_status pio_decoder_forward(void *self, const pio_textgen_batch *batch, pio_error *err);

/* ---- The plugin vtable (sdk/src/decoder_plugin.c) ---------------------------------------- */

pio_status pio_decoder_plugin_initialize(const pio_decoder_spec *spec,
                                         const pio_init_params *params, pio_instance **out);
pio_status pio_decoder_plugin_load_model(pio_instance *inst, const pio_load_params *params);
pio_status pio_decoder_plugin_get_model_info(pio_instance *inst, pio_model_info *info);
pio_status pio_decoder_plugin_infer(pio_instance *inst, const pio_infer_request *req,
                                    pio_infer_result *result);
void pio_decoder_plugin_cleanup(pio_instance *inst);
pio_status pio_decoder_plugin_tokenize(pio_instance *inst, const char *text, size_t text_len,
                                       int add_special_tokens, int32_t *ids, size_t capacity,
                                       size_t *n_ids);
pio_status pio_decoder_plugin_detokenize(pio_instance *inst, const int32_t *ids, size_t n_ids,
                                         int skip_special_tokens, char *text, size_t capacity,
                                         size_t *text_len);
pio_status pio_decoder_plugin_generate_text(pio_instance *inst,
                                            const pio_generate_request *request,
                                            pio_generate_response *response);
pio_status pio_decoder_plugin_chat_completion(pio_instance *inst,
                                              const pio_chat_request *request,
                                              pio_generate_response *response);
void pio_decoder_plugin_free_response(pio_instance *inst, pio_generate_response *response);
const void *pio_decoder_plugin_get_extension(pio_instance *inst, const char *name);

/*
 * The descriptor and entry point of a decoder plugin (in place of PIO_PLUGIN_DEFINE):
 *
 *   static const pio_decoder_spec my_spec = {...};
 *   static const char *const my_architectures[] = {"Qwen3ForCausalLM", NULL};
 *   PIO_DECODER_PLUGIN_DEFINE("my_model", "1.0.0", my_architectures,
 *                             PIO_CAP_CPU | PIO_CAP_CHAT, my_spec)
 */
/* What the build adds to every decoder plugin's capabilities: the CUDA backend when the SDK's
 * kernels were built with it. */
#if defined(PIO_HAVE_CUDA) && PIO_HAVE_CUDA
#define PIO_DECODER_BUILD_CAPS PIO_CAP_CUDA
#else
#define PIO_DECODER_BUILD_CAPS 0u
#endif

#define PIO_DECODER_PLUGIN_DEFINE(NAME, VERSION, ARCHITECTURES, CAPABILITIES, SPEC)        \
    static pio_status pio_decoder_initialize_(const pio_init_params *params,               \
                                              pio_instance **out)                          \
    {                                                                                      \
        return pio_decoder_plugin_initialize(&(SPEC), params, out);                        \
    }                                                                                      \
    static const pio_plugin_vtable pio_decoder_vtable_ = {                                 \
        .struct_size = sizeof(pio_plugin_vtable),                                          \
        .initialize = pio_decoder_initialize_,                                             \
        .load_model = pio_decoder_plugin_load_model,                                       \
        .get_model_info = pio_decoder_plugin_get_model_info,                               \
        .infer = pio_decoder_plugin_infer,                                                 \
        .cleanup = pio_decoder_plugin_cleanup,                                             \
        .tokenize = pio_decoder_plugin_tokenize,                                           \
        .detokenize = pio_decoder_plugin_detokenize,                                       \
        .generate_text = pio_decoder_plugin_generate_text,                                 \
        .chat_completion = pio_decoder_plugin_chat_completion,                             \
        .free_response = pio_decoder_plugin_free_response,                                 \
        .get_extension = pio_decoder_plugin_get_extension,                                 \
    };                                                                                     \
    PIO_PLUGIN_DEFINE(NAME, VERSION, ARCHITECTURES, (CAPABILITIES) | PIO_DECODER_BUILD_CAPS,    \
                      pio_decoder_vtable_)

#ifdef __cplusplus
}
#endif

#endif
