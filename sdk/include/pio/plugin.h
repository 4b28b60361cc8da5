/*
 * Inference-PIO plugin ABI.
 *
 * This header is the whole contract between the `pio` host and a model plugin (.so).
 * It is plain C99 and includes only <stdint.h> and <stddef.h>.
 *
 * Rules that hold for every struct below:
 *   - It starts with `uint32_t struct_size`, set by whoever fills it to sizeof() of the struct
 *     as that side was compiled.
 *   - It grows only at its end. A reader checks that a field lies inside struct_size before
 *     touching it: PIO_HAS_FIELD(ptr, type, field). Fields beyond struct_size read as absent.
 *   - Arrays of structs never cross; arrays of pointers to structs do, so each element
 *     carries its own struct_size.
 *
 * Versioning: PIO_ABI_MAJOR changes break compatibility (the host refuses plugins of another
 * major). PIO_ABI_MINOR grows when fields or vtable slots are appended; the host refuses a
 * plugin built for a newer minor than its own, and handles an older one by checking
 * struct_size before using appended members.
 *
 * Threading: an instance (pio_instance) is driven by one thread at a time; the host serialises
 * calls on one instance. Different instances may be driven from different threads. Host
 * services may be called from any thread.
 *
 * Ownership: strings and arrays passed *into* a call are owned by the caller and valid only for
 * the duration of that call unless stated otherwise. Memory returned in a response is owned by
 * the plugin until the host hands it back with the matching free call.
 */
#ifndef PIO_PLUGIN_H
#define PIO_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PIO_ABI_MAJOR 1
#define PIO_ABI_MINOR 1

/* SDK release this header belongs to. */
#define PIO_SDK_VERSION_MAJOR 0
#define PIO_SDK_VERSION_MINOR 1
#define PIO_SDK_VERSION_PATCH 0
#define PIO_SDK_VERSION_STRING "0.1.0"

/* The one symbol a plugin exports. */
#define PIO_PLUGIN_ENTRY_NAME pio_plugin_entry
#define PIO_PLUGIN_ENTRY_SYMBOL "pio_plugin_entry"

/* True when `field` lies entirely inside the struct_size the writer of *ptr declared. */
#define PIO_HAS_FIELD(ptr, type, field)                                                         \
    ((ptr) != NULL && (size_t)(ptr)->struct_size >= offsetof(type, field) + sizeof(((type *)0)->field))

/* ------------------------------------------------------------------------------------------ */
/* Status codes: 0 ok, negative errors, positive soft conditions.                             */
/* ------------------------------------------------------------------------------------------ */
typedef enum pio_status {
    PIO_OK = 0,

    PIO_ERR_INVALID_ARGUMENT = -1, /* a caller broke the contract (NULL, bad size, bad value) */
    PIO_ERR_OUT_OF_MEMORY = -2,    /* host or device allocation failed                        */
    PIO_ERR_IO = -3,               /* a file could not be opened, read or mapped              */
    PIO_ERR_FORMAT = -4,           /* a file's contents are malformed                         */
    PIO_ERR_UNSUPPORTED = -5,      /* valid request this plugin/build cannot serve            */
    PIO_ERR_ABI = -6,              /* version or struct-size mismatch across the ABI          */
    PIO_ERR_NOT_FOUND = -7,        /* a required item (tensor, key, plugin) does not exist    */
    PIO_ERR_STATE = -8,            /* call made in the wrong lifecycle state                  */
    PIO_ERR_DEVICE = -9,           /* accelerator error; the instance may now be failed       */
    PIO_ERR_CANCELLED = -10,       /* aborted through should_abort or a callback              */
    PIO_ERR_CONFIG = -11,          /* a configuration value is wrong                          */
    PIO_ERR_INTERNAL = -12,        /* a bug: an invariant did not hold                        */

    PIO_SOFT_ABSENT = 1,           /* optional item not present (e.g. config key unset)       */
    PIO_SOFT_KV_FULL = 2,          /* no free KV-cache blocks right now; retry later          */
    PIO_SOFT_TRUNCATED = 3,        /* output buffer too small; the needed size was reported   */
    PIO_SOFT_BUSY = 4              /* nothing can be scheduled now; try again                 */
} pio_status;

#define PIO_IS_ERROR(status) ((int)(status) < 0)

static inline const char *pio_status_str(int status)
{
    switch (status) {
    case PIO_OK: return "ok";
    case PIO_ERR_INVALID_ARGUMENT: return "invalid argument";
    case PIO_ERR_OUT_OF_MEMORY: return "out of memory";
    case PIO_ERR_IO: return "I/O error";
    case PIO_ERR_FORMAT: return "malformed input";
    case PIO_ERR_UNSUPPORTED: return "unsupported";
    case PIO_ERR_ABI: return "ABI mismatch";
    case PIO_ERR_NOT_FOUND: return "not found";
    case PIO_ERR_STATE: return "wrong state";
    case PIO_ERR_DEVICE: return "device error";
    case PIO_ERR_CANCELLED: return "cancelled";
    case PIO_ERR_CONFIG: return "configuration error";
    case PIO_ERR_INTERNAL: return "internal error";
    case PIO_SOFT_ABSENT: return "absent";
    case PIO_SOFT_KV_FULL: return "KV cache full";
    case PIO_SOFT_TRUNCATED: return "output truncated";
    case PIO_SOFT_BUSY: return "busy";
    default: return "unknown status";
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Host services: what the host offers a plugin.                                              */
/* ------------------------------------------------------------------------------------------ */
typedef enum pio_log_level {
    PIO_LOG_ERROR = 0,
    PIO_LOG_WARN = 1,
    PIO_LOG_INFO = 2,
    PIO_LOG_DEBUG = 3
} pio_log_level;

/*
 * Every member is required (the host fills all of them) and may be called from any thread.
 * `host` is the opaque handle from pio_host_context / pio_init_params; pass it back unchanged.
 */
typedef struct pio_host_services {
    uint32_t struct_size;

    /* One line of text, no trailing newline needed. `message` is copied before return. */
    void (*log)(void *host, pio_log_level level, const char *message);

    /* Records the text of the error the plugin is about to return; the host copies it.
     * The host prints it next to pio_status_str(status). */
    void (*set_error)(void *host, pio_status status, const char *message);

    /*
     * Configuration by dotted key ("kv_cache.block_size"). Plugins never see YAML.
     * Return PIO_OK and set *value; PIO_SOFT_ABSENT and leave *value untouched when the key is
     * not set (so the caller pre-loads its default); PIO_ERR_CONFIG when the value has the wrong
     * type (the host has then recorded an error naming the YAML file, line and column).
     * config_get_str: *value points into host memory valid until the instance's cleanup().
     */
    pio_status (*config_get_str)(void *host, const char *key, const char **value);
    pio_status (*config_get_i64)(void *host, const char *key, int64_t *value);
    pio_status (*config_get_f64)(void *host, const char *key, double *value);
    pio_status (*config_get_bool)(void *host, const char *key, int *value);

    /* Progress of a long operation (load_model). `stage` is a short label ("weights");
     * `total` may be 0 when unknown. */
    void (*progress)(void *host, const char *stage, uint64_t done, uint64_t total);

    /* Non-zero when the user asked to stop (Ctrl-C); long loops poll it and return
     * PIO_ERR_CANCELLED. */
    int (*should_abort)(void *host);

    /*
     * Device-memory accounting. A plugin reports every device allocation and release with a
     * short tag ("weights", "kv_cache", "workspace"). mem_reserve returns PIO_ERR_OUT_OF_MEMORY
     * (with an error recorded) when the configured budget for that device would be exceeded,
     * in which case the plugin must not allocate. device is the CUDA ordinal; -1 = host RAM.
     */
    pio_status (*mem_reserve)(void *host, int device, uint64_t bytes, const char *tag);
    void (*mem_release)(void *host, int device, uint64_t bytes, const char *tag);

    /*
     * Lists of scalars by dotted key ("generation.stop"; a single scalar reads as a list of
     * one). config_get_list_size: PIO_OK and *count, or PIO_SOFT_ABSENT with *count untouched.
     * config_get_list_str: item `index` as text (host memory valid until the instance's
     * cleanup()); PIO_ERR_INVALID_ARGUMENT past the end. PIO_ERR_CONFIG as for the getters
     * above.
     */
    pio_status (*config_get_list_size)(void *host, const char *key, size_t *count);
    pio_status (*config_get_list_str)(void *host, const char *key, size_t index,
                                      const char **value);
} pio_host_services;

/* What the host passes to the entry point. Valid while the plugin stays loaded. */
typedef struct pio_host_context {
    uint32_t struct_size;
    uint16_t abi_major;
    uint16_t abi_minor;
    const pio_host_services *services; /* required, host-owned */
    void *host;                        /* opaque host handle for services, host-owned */
} pio_host_context;

/* ------------------------------------------------------------------------------------------ */
/* Requests and responses                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* Which members of pio_sampling_params the caller set; unset ones take the model's defaults
 * (generation_config.json, then the YAML `generation.*` keys). */
enum pio_sampling_field {
    PIO_SAMPLING_TEMPERATURE = 1u << 0,
    PIO_SAMPLING_TOP_P = 1u << 1,
    PIO_SAMPLING_TOP_K = 1u << 2,
    PIO_SAMPLING_MIN_P = 1u << 3,
    PIO_SAMPLING_REPETITION_PENALTY = 1u << 4,
    PIO_SAMPLING_PRESENCE_PENALTY = 1u << 5,
    PIO_SAMPLING_FREQUENCY_PENALTY = 1u << 6,
    PIO_SAMPLING_SEED = 1u << 7
};

typedef struct pio_sampling_params {
    uint32_t struct_size;
    uint32_t fields_set;        /* OR of pio_sampling_field */
    float temperature;          /* 0 = greedy */
    float top_p;                /* (0, 1] */
    int32_t top_k;              /* 0 = off */
    float min_p;                /* [0, 1) */
    float repetition_penalty;   /* 1 = off (multiplicative, as Hugging Face) */
    float presence_penalty;     /* 0 = off (additive, as OpenAI) */
    float frequency_penalty;    /* 0 = off */
    uint64_t seed;
} pio_sampling_params;

/* Streaming: called on the calling thread once per generated token, with the text that token
 * completes (never a broken UTF-8 sequence; may be empty). Return non-zero to stop generation,
 * which then finishes with PIO_FINISH_CANCELLED. */
typedef int (*pio_token_callback)(void *user_data, int32_t token_id, const char *text,
                                  size_t text_len);

typedef struct pio_stop_conditions {
    uint32_t struct_size;
    const char *const *stop_strings; /* optional, caller-owned, n_stop_strings entries */
    size_t n_stop_strings;
    const int32_t *stop_token_ids;   /* optional, caller-owned; added to the model's EOS ids */
    size_t n_stop_token_ids;
    int32_t ignore_eos;              /* non-zero: do not stop on the model's EOS ids */
} pio_stop_conditions;

typedef enum pio_finish_reason {
    PIO_FINISH_NONE = 0,
    PIO_FINISH_STOP = 1,      /* an EOS / stop token or a stop string */
    PIO_FINISH_LENGTH = 2,    /* max_new_tokens or the context length */
    PIO_FINISH_CANCELLED = 3, /* the callback or should_abort asked to stop */
    PIO_FINISH_TOOL_CALLS = 4,/* the model produced tool calls */
    PIO_FINISH_ERROR = 5
} pio_finish_reason;

typedef struct pio_generate_request {
    uint32_t struct_size;
    const char *prompt;                  /* required, UTF-8, caller-owned */
    size_t prompt_len;                   /* bytes of prompt */
    int32_t max_new_tokens;              /* <= 0: the configured default */
    int32_t add_special_tokens;          /* non-zero: the tokenizer's BOS etc. are added */
    const pio_sampling_params *sampling; /* optional */
    const pio_stop_conditions *stop;     /* optional */
    pio_token_callback on_token;         /* optional */
    void *user_data;                     /* passed to on_token */
} pio_generate_request;

typedef struct pio_chat_message {
    uint32_t struct_size;
    const char *role;                /* "system", "user", "assistant", "tool" */
    const char *content;             /* UTF-8, may be NULL for an assistant turn with tool calls */
    const char *reasoning_content;   /* optional: an assistant turn's thinking */
    const char *tool_calls_json;     /* optional: JSON array of {"name":..,"arguments":{..}} */
    const char *name;                /* optional: tool name for role "tool" */
} pio_chat_message;

typedef struct pio_chat_request {
    uint32_t struct_size;
    const pio_chat_message *const *messages; /* required, n_messages pointers, caller-owned */
    size_t n_messages;
    const char *tools_json;              /* optional JSON array of tool definitions (OpenAI form) */
    int32_t add_generation_prompt;       /* usually 1 */
    int32_t enable_thinking;             /* -1 model default, 0 off, 1 on */
    int32_t max_new_tokens;
    const pio_sampling_params *sampling; /* optional */
    const pio_stop_conditions *stop;     /* optional */
    pio_token_callback on_token;         /* optional */
    void *user_data;
} pio_chat_request;

typedef struct pio_tool_call {
    uint32_t struct_size;
    const char *name;           /* plugin-owned */
    const char *arguments_json; /* plugin-owned JSON object text */
} pio_tool_call;

typedef struct pio_usage {
    uint32_t struct_size;
    uint64_t prompt_tokens;
    uint64_t completion_tokens;
    uint64_t cached_prompt_tokens; /* prompt tokens served from a prefix cache */
} pio_usage;

typedef struct pio_timings {
    uint32_t struct_size;
    double prompt_ms;           /* prefill wall time */
    double decode_ms;           /* wall time of all decode steps */
    double time_to_first_token_ms;
    double prompt_tokens_per_s;
    double decode_tokens_per_s;
} pio_timings;

/* Filled by generate_text / chat_completion. The host sets struct_size; the plugin fills what
 * fits. Everything a pointer points at is plugin-owned until free_response(). */
typedef struct pio_generate_response {
    uint32_t struct_size;
    char *text;                  /* NUL-terminated UTF-8 (without stop strings and tool calls) */
    size_t text_len;
    int32_t *token_ids;          /* the generated ids */
    size_t n_tokens;
    pio_finish_reason finish_reason;
    pio_usage usage;             /* usage.struct_size set by the plugin */
    pio_timings timings;         /* timings.struct_size set by the plugin */
    const pio_tool_call *const *tool_calls; /* parsed tool calls, n_tool_calls pointers */
    size_t n_tool_calls;
    char *reasoning_text;        /* thinking text when the model produced some, else NULL */
} pio_generate_response;

/* Raw forward pass over token ids, for verification and tools (`pio logits`). */
enum pio_logits_mode {
    PIO_LOGITS_LAST = 0, /* one row: the last position */
    PIO_LOGITS_ALL = 1   /* one row per input position */
};

typedef struct pio_infer_request {
    uint32_t struct_size;
    const int32_t *tokens;   /* required, n_tokens ids, caller-owned */
    size_t n_tokens;
    const int32_t *positions;/* optional: NULL means 0..n_tokens-1 on a fresh sequence */
    uint32_t logits_mode;    /* pio_logits_mode */
    float *logits;           /* required, caller-owned, logits_capacity floats */
    size_t logits_capacity;
} pio_infer_request;

typedef struct pio_infer_result {
    uint32_t struct_size;
    size_t n_rows;           /* rows written to logits */
    size_t vocab_size;       /* floats per row */
} pio_infer_result;

typedef struct pio_model_info {
    uint32_t struct_size;
    const char *architecture;  /* plugin-owned, valid until cleanup */
    size_t vocab_size;         /* logits per row */
    size_t context_length;     /* max positions this instance serves */
    uint64_t n_parameters;
    uint64_t weight_bytes;
    const char *backend;       /* "cpu" or "cuda" */
    /* Appended in ABI 1.0 (check with PIO_HAS_FIELD); 0 means unknown. */
    uint64_t active_weight_bytes; /* weight bytes one decoded token reads: weight_bytes less
                                     what it skips (the experts a MoE does not route to, an
                                     untied input embedding table but its one row) */
    uint64_t kv_bytes_per_token;  /* KV-cache bytes one token's entry takes, all layers */
    /* Appended in ABI 1.1 (check with PIO_HAS_FIELD); 0 when the model routes nothing. A MoE's
     * routed experts, for what a decoding step of several tokens reads: they pick different
     * experts, so a step of B tokens reads more of them than one token does. */
    uint64_t routed_weight_bytes; /* every layer's routed experts (part of weight_bytes) */
    uint32_t routed_experts;      /* experts a layer routes among (E) */
    uint32_t experts_per_token;   /* experts a token is routed to in each layer (k) */
} pio_model_info;

/* Arguments to initialize(): the seed's `initialize(**kwargs)` as key/value strings. */
typedef struct pio_init_params {
    uint32_t struct_size;
    const pio_host_services *services; /* required, host-owned, valid until cleanup */
    void *host;                        /* required, opaque, valid until cleanup */
    const char *const *kwarg_keys;     /* optional, n_kwargs entries */
    const char *const *kwarg_values;
    size_t n_kwargs;
} pio_init_params;

enum pio_load_flag {
    /* Load only what tokenize/detokenize need (the tokenizer), never the weights: the other
     * calls then return PIO_ERR_STATE. Like llama.cpp's vocab_only. */
    PIO_LOAD_VOCAB_ONLY = 1u << 0
};

/* Arguments to load_model(). Everything else comes through the config getters. */
typedef struct pio_load_params {
    uint32_t struct_size;
    const char *model_path;  /* folder with config.json (may be NULL when load_format is dummy
                                and the plugin knows its real shapes) */
    const char *load_format; /* "auto" (safetensors) or "dummy" (seeded random weights) */
    const char *device;      /* "cpu", "cuda", "cuda:N" (the YAML key device.backend) */
    uint32_t flags;          /* OR of pio_load_flag */
} pio_load_params;

typedef struct pio_instance pio_instance; /* opaque, plugin-defined */

/*
 * The vtable. Each slot says required/optional. All calls on one instance come from one
 * thread at a time. Every error return is preceded by services->set_error() with a message
 * naming the file and place where that applies.
 */
typedef struct pio_plugin_vtable {
    uint32_t struct_size;

    /* required. Creates an instance; nothing heavy happens here. */
    pio_status (*initialize)(const pio_init_params *params, pio_instance **out_instance);

    /* required. Reads config/weights/tokenizer. May take long: reports progress, polls
     * should_abort. On failure the instance stays valid for cleanup() only. */
    pio_status (*load_model)(pio_instance *instance, const pio_load_params *params);

    /* required. Fills *info (caller sets info->struct_size). */
    pio_status (*get_model_info)(pio_instance *instance, pio_model_info *info);

    /* required. One forward pass over tokens. PIO_SOFT_TRUNCATED when logits_capacity is too
     * small (nothing written; result->n_rows and vocab_size say what is needed). */
    pio_status (*infer)(pio_instance *instance, const pio_infer_request *request,
                        pio_infer_result *result);

    /* required. Frees everything; accepts an instance in any state, including NULL. */
    void (*cleanup)(pio_instance *instance);

    /* required. Text -> ids. Writes at most capacity ids; *n_ids gets the full count.
     * PIO_SOFT_TRUNCATED when capacity was too small. */
    pio_status (*tokenize)(pio_instance *instance, const char *text, size_t text_len,
                           int add_special_tokens, int32_t *ids, size_t capacity,
                           size_t *n_ids);

    /* required. Ids -> UTF-8 text, NUL-terminated when it fits. *text_len gets the full length
     * (without NUL); PIO_SOFT_TRUNCATED when capacity was too small. */
    pio_status (*detokenize)(pio_instance *instance, const int32_t *ids, size_t n_ids,
                             int skip_special_tokens, char *text, size_t capacity,
                             size_t *text_len);

    /* required. Plain completion of a prompt. */
    pio_status (*generate_text)(pio_instance *instance, const pio_generate_request *request,
                                pio_generate_response *response);

    /* required. Chat in the model's own format. */
    pio_status (*chat_completion)(pio_instance *instance, const pio_chat_request *request,
                                  pio_generate_response *response);

    /* required. Releases what a response holds and zeroes its pointers. */
    void (*free_response)(pio_instance *instance, pio_generate_response *response);

    /* optional (may be NULL). Named, versioned extras ("pio.bench.v1"); NULL when unknown. */
    const void *(*get_extension)(pio_instance *instance, const char *name);

    /* Serving calls (submit / step / cancel) are appended here in a later minor version. */
} pio_plugin_vtable;

/* Capability bits a plugin declares. */
enum pio_capability {
    PIO_CAP_CPU = 1u << 0,       /* runs on the CPU backend */
    PIO_CAP_CUDA = 1u << 1,      /* runs on the CUDA backend */
    PIO_CAP_CHAT = 1u << 2,      /* chat_completion formats the model's own chat template */
    PIO_CAP_TOOLS = 1u << 3,     /* chat_completion accepts tools and returns tool calls */
    PIO_CAP_VISION = 1u << 4,    /* accepts images */
    PIO_CAP_STREAMING = 1u << 5, /* calls on_token while generating */
    PIO_CAP_BATCHING = 1u << 6,  /* serving calls (submit/step/cancel) */
    PIO_CAP_TENSOR_PARALLEL = 1u << 7
};

/* What the entry point returns: a const static object inside the plugin. */
typedef struct pio_plugin_descriptor {
    uint32_t struct_size;
    uint16_t abi_major;                 /* PIO_ABI_MAJOR the plugin was built against */
    uint16_t abi_minor;                 /* PIO_ABI_MINOR the plugin was built against */
    const char *name;                   /* required, [a-z0-9_]+, unique among loaded plugins */
    const char *version;                /* required, the plugin's own version */
    const char *const *architectures;   /* required, NULL-terminated HF `architectures` served */
    uint64_t capabilities;              /* OR of pio_capability */
    const char *sdk_version;            /* PIO_SDK_VERSION_STRING at build time */
    int32_t cuda_runtime_version;       /* CUDART_VERSION at build time, 0 without CUDA */
    const char *cuda_architectures;     /* e.g. "sm_90a,compute_90", "" without CUDA */
    const pio_plugin_vtable *vtable;    /* required */
} pio_plugin_descriptor;

/*
 * The entry point. The host calls it once after dlopen(). It returns the descriptor, or NULL
 * when it cannot work with this host (the PIO_PLUGIN_DEFINE version refuses another ABI major).
 * `host` stays valid until the plugin is unloaded.
 */
typedef const pio_plugin_descriptor *(*pio_plugin_entry_fn)(const pio_host_context *host);

/* ------------------------------------------------------------------------------------------ */
/* For plugin authors                                                                         */
/* ------------------------------------------------------------------------------------------ */
#if defined(__GNUC__) || defined(__clang__)
#define PIO_EXPORT __attribute__((visibility("default")))
#else
#define PIO_EXPORT
#endif

/* The build fills these in (-DPIO_BUILD_CUDA_RUNTIME_VERSION=13000 ...); CPU builds keep 0/"" */
#ifndef PIO_BUILD_CUDA_RUNTIME_VERSION
#define PIO_BUILD_CUDA_RUNTIME_VERSION 0
#endif
#ifndef PIO_BUILD_CUDA_ARCHITECTURES
#define PIO_BUILD_CUDA_ARCHITECTURES ""
#endif

/*
 * Writes the descriptor and the entry point. Use it once, at file scope:
 *
 *   static const char *const my_architectures[] = {"Qwen3ForCausalLM", NULL};
 *   static const pio_plugin_vtable my_vtable = {sizeof(pio_plugin_vtable), my_initialize, ...};
 *   PIO_PLUGIN_DEFINE("my_model", "1.0.0", my_architectures, PIO_CAP_CPU | PIO_CAP_CHAT,
 *                     my_vtable)
 *
 * pio_plugin_host() then returns the host context the plugin was loaded with.
 */
#define PIO_PLUGIN_DEFINE(NAME, VERSION, ARCHITECTURES, CAPABILITIES, VTABLE)                \
    static const pio_host_context *pio_plugin_host_context_;                                 \
    static const pio_plugin_descriptor pio_plugin_descriptor_ = {                            \
        sizeof(pio_plugin_descriptor), PIO_ABI_MAJOR, PIO_ABI_MINOR, (NAME), (VERSION),      \
        (ARCHITECTURES), (CAPABILITIES), PIO_SDK_VERSION_STRING,                             \
        PIO_BUILD_CUDA_RUNTIME_VERSION, PIO_BUILD_CUDA_ARCHITECTURES, &(VTABLE)};            \
    const pio_host_context *pio_plugin_host(void)                                            \
    {                                                                                        \
        return pio_plugin_host_context_;                                                     \
    }                                                                                        \
    PIO_EXPORT const pio_plugin_descriptor *PIO_PLUGIN_ENTRY_NAME(                           \
        const pio_host_context *host);                                                       \
    PIO_EXPORT const pio_plugin_descriptor *PIO_PLUGIN_ENTRY_NAME(                           \
        const pio_host_context *host)                                                        \
    {                                                                                        \
        if (host == NULL || host->struct_size < sizeof(pio_host_context) ||                  \
            host->abi_major != PIO_ABI_MAJOR || host->services == NULL)                      \
            return NULL;                                                                     \
        pio_plugin_host_context_ = host;                                                     \
        return &pio_plugin_descriptor_;                                                      \
    }

/* Defined by PIO_PLUGIN_DEFINE inside each plugin (hidden: not exported). */
const pio_host_context *pio_plugin_host(void);

#ifdef __cplusplus
}
#endif

#endif /* PIO_PLUGIN_H */
