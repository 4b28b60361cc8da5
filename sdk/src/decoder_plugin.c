/*
 * The plugin vtable of a decoder model (pio/decoder.h): load orchestration, model info, the raw
 * forward (`infer`, a fresh sequence per call) and the text calls through the SDK's runtime
 * (pio/textgen.h) in the spec's chat format.
 *
 * Config keys read (configs/README.md): model.seed, runtime.threads, runtime.max_context,
 * runtime.cuda_gemv_tma, parallel.tensor_parallel_size / devices / force_ranks,
 * kv_cache.block_size / max_tokens / memory_gb / dtype, generation.*.
 * Extension: PIO_TEXTGEN_MODEL_EXTENSION gives the batched forward over KV sequences.
 */
#include "pio/decoder.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pio_instance {
    const pio_decoder_spec *spec;
    const pio_host_services *services;
    void *host;
    pio_decoder *model;
    pio_textgen *textgen;
    pio_error err; /* what the SDK and the model report during the current call */
};

/* The instance's error record, cleared for a new call. */
static pio_error *fresh_error(pio_instance *inst)
{
    pio_error_clear(&inst->err);
    return &inst->err;
}

/* Passes the message of a failure or a soft condition (a full KV cache) to the host, unless the
 * host recorded it itself, which leaves the message empty; returns status. */
static pio_status report(pio_instance *inst, pio_status status)
{
    if (status != PIO_OK && inst->err.message[0] != '\0')
        inst->services->set_error(inst->host, status, inst->err.message);
    return status;
}

static pio_status fail_text(pio_instance *inst, pio_status status, const char *message)
{
    inst->services->set_error(inst->host, status, message);
    return status;
}

/* Text calls need the runtime (a full or a vocab-only load); the others need the model. */
static pio_status need_loaded(pio_instance *inst, const char *call, int needs_model)
{
    if (inst != NULL && inst->textgen != NULL && (!needs_model || inst->model != NULL))
        return PIO_OK;
    if (inst != NULL) {
        char message[160];
        snprintf(message, sizeof message, "%s called %s", call,
                 inst->textgen != NULL ? "on a vocab-only load (no weights)"
                                       : "before a successful load_model");
        inst->services->set_error(inst->host, PIO_ERR_STATE, message);
    }
    return PIO_ERR_STATE;
}

pio_status pio_decoder_plugin_initialize(const pio_decoder_spec *spec,
                                         const pio_init_params *params, pio_instance **out)
{
    if (params == NULL || out == NULL || params->services == NULL)
        return PIO_ERR_INVALID_ARGUMENT;
    pio_instance *inst = calloc(1, sizeof *inst);
    if (inst == NULL)
        return PIO_ERR_OUT_OF_MEMORY;
    inst->spec = spec;
    inst->services = params->services;
    inst->host = params->host;
    *out = inst;
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* load_model                                                                                 */
/* ------------------------------------------------------------------------------------------ */

static pio_status parse_device(const char *text, pio_decoder_load_options *o, pio_error *err)
{
    char *end = NULL;
    if (text == NULL || strcmp(text, "cpu") == 0) {
        o->device = PK_DEVICE_CPU;
        return PIO_OK;
    }
    if (strcmp(text, "cuda") == 0) {
        o->device = PK_DEVICE_CUDA;
        return PIO_OK;
    }
    if (strncmp(text, "cuda:", 5) == 0) {
        long index = strtol(text + 5, &end, 10);
        if (end != text + 5 && *end == '\0' && index >= 0 && index < 1024) {
            o->device = PK_DEVICE_CUDA;
            o->device_index = (int)index;
            return PIO_OK;
        }
    }
    return pio_error_set(err, PIO_ERR_CONFIG, "device: '%s' is not cpu, cuda or cuda:N", text);
}

/* Item i of parallel.devices as a CUDA ordinal. */
static pio_status read_device_ordinal(pio_instance *inst, size_t i, int *out, pio_error *err)
{
    const char *text = NULL;
    pio_status status = inst->services->config_get_list_str(inst->host, "parallel.devices", i,
                                                             &text);
    if (status != PIO_OK)
        return PIO_IS_ERROR(status) ? status : PIO_ERR_INTERNAL;
    char *end = NULL;
    long value = strtol(text, &end, 10);
    if (end == text || *end != '\0' || value < 0 || value > INT_MAX)
        return pio_error_set(err, PIO_ERR_CONFIG, "parallel.devices[%zu]: '%s' is not a CUDA "
                             "ordinal (an integer >= 0)", i, text);
    *out = (int)value;
    return PIO_OK;
}

/* parallel.devices (one CUDA ordinal per rank; unset leaves n_devices 0) and
 * parallel.force_ranks. Whether they fit the size and the machine is the decoder's check. */
static pio_status read_parallel_options(pio_instance *inst, pio_decoder_load_options *o,
                                        pio_error *err)
{
    const pio_host_services *sv = inst->services;
    int force = 0;
    pio_status status = sv->config_get_bool(inst->host, "parallel.force_ranks", &force);
    if (PIO_IS_ERROR(status))
        return status;
    o->force_ranks = force != 0;
    size_t count = 0;
    if (!PIO_HAS_FIELD(sv, pio_host_services, config_get_list_str) ||
        (status = sv->config_get_list_size(inst->host, "parallel.devices", &count)) != PIO_OK)
        return PIO_IS_ERROR(status) ? status : PIO_OK; /* unset */
    if (count == 0 || count > PK_COMM_MAX_RANKS)
        return pio_error_set(err, PIO_ERR_CONFIG, "parallel.devices lists %zu GPUs: give one CUDA "
                             "ordinal per rank (1 to %d of them), or leave the key out", count,
                             PK_COMM_MAX_RANKS);
    for (size_t i = 0; i < count; i++)
        if ((status = read_device_ordinal(inst, i, &o->devices[i], err)) != PIO_OK)
            return status;
    o->n_devices = (int)count;
    return PIO_OK;
}

static pio_status read_load_options(pio_instance *inst, const pio_load_params *p,
                                    pio_decoder_load_options *o, pio_error *err)
{
    const pio_host_services *sv = inst->services;
    int64_t seed = 0, threads = 0, max_context = 0, tp = 1;
    pio_error_clear(err);
    memset(o, 0, sizeof *o);
    const char *format = p->load_format != NULL ? p->load_format : "auto";
    if (strcmp(format, "auto") != 0 && strcmp(format, "dummy") != 0)
        return pio_error_set(err, PIO_ERR_CONFIG,
                             "model.load_format: '%s' is not auto or dummy", format);
    o->model_dir = p->model_path;
    o->dummy = strcmp(format, "dummy") == 0;
    pio_status status;
    if (PIO_IS_ERROR(status = sv->config_get_i64(inst->host, "model.seed", &seed)) ||
        PIO_IS_ERROR(status = sv->config_get_i64(inst->host, "runtime.threads", &threads)) ||
        PIO_IS_ERROR(status = sv->config_get_i64(inst->host, "runtime.max_context",
                                                 &max_context)) ||
        PIO_IS_ERROR(status = sv->config_get_i64(inst->host, "parallel.tensor_parallel_size",
                                                 &tp)))
        return status;
    o->seed = (uint64_t)seed;
    o->n_threads = threads > 4096 ? 4096 : (int)(threads > 0 ? threads : 0);
    o->max_context = max_context;
    o->tensor_parallel_size = tp > PK_COMM_MAX_RANKS ? PK_COMM_MAX_RANKS : (int)(tp > 1 ? tp : 1);
    const char *gemv_tma = NULL;
    if (PIO_IS_ERROR(status = sv->config_get_str(inst->host, "runtime.cuda_gemv_tma",
                                                 &gemv_tma)))
        return status;
    if (pio_decoder_gemv_tma(gemv_tma, inst->spec->routed_weights != NULL, o->gemv_tma) != 0)
        return pio_error_set(err, PIO_ERR_CONFIG,
                             "runtime.cuda_gemv_tma: '%s' is not auto, all, lm_head or off",
                             gemv_tma);
    if ((status = read_parallel_options(inst, o, err)) != PIO_OK)
        return status;
    return parse_device(p->device, o, err);
}

int pio_decoder_gemv_tma(const char *setting, int moe, pk_gemv_tma out[2])
{
    pk_gemv_tma mode;
    if (setting == NULL || strcmp(setting, "auto") == 0) {
        out[0] = moe ? PK_GEMV_TMA_DEFAULT : PK_GEMV_TMA_ALL;
        out[1] = PK_GEMV_TMA_DEFAULT;
        return 0;
    }
    if (strcmp(setting, "all") == 0)
        mode = PK_GEMV_TMA_ALL;
    else if (strcmp(setting, "lm_head") == 0)
        mode = PK_GEMV_TMA_DEFAULT;
    else if (strcmp(setting, "off") == 0)
        mode = PK_GEMV_TMA_NONE;
    else
        return -1;
    out[0] = out[1] = mode;
    return 0;
}

/* The text runtime over the loaded model, or over nothing for a vocab-only load. */
static pio_status create_textgen(pio_instance *inst, const char *model_dir, pio_error *err)
{
    static const char *const eos_texts[] = {"<|im_end|>", "<|endoftext|>", NULL};
    char tokenizer_path[PATH_MAX + 32];
    snprintf(tokenizer_path, sizeof tokenizer_path, "%s/tokenizer.json",
             model_dir != NULL ? model_dir : "");
    pio_textgen_config cfg = {
        .tokenizer_path = model_dir ? tokenizer_path : NULL,
        .chat_format = inst->spec->chat_format, .eos_token_texts = eos_texts,
        .max_new_tokens = 256, .services = inst->services, .host = inst->host,
    };
    pio_textgen_sampling_init(&cfg.sampling);
    const char *stops[PIO_TEXTGEN_MAX_STOP_STRINGS];
    pio_status stop_status = pio_textgen_read_host_stop_strings(
        inst->services, inst->host, stops, PIO_TEXTGEN_MAX_STOP_STRINGS, &cfg.n_stop_strings, err);
    if (stop_status != PIO_OK)
        return stop_status;
    cfg.stop_strings = stops;
    if (inst->model != NULL) {
        const pio_decoder_config *c = &inst->model->config;
        cfg.model = &inst->model->ops;
        cfg.eos_ids = c->eos_ids;
        cfg.n_eos_ids = c->n_eos;
        cfg.sampling = c->sampling;
        pio_status status = pio_textgen_read_host_generation(
            inst->services, inst->host, &cfg.sampling, &cfg.max_new_tokens, err);
        if (status != PIO_OK)
            return status;
    }
    return pio_textgen_create(&cfg, &inst->textgen, err);
}

static int vocab_only(const pio_load_params *p)
{
    return PIO_HAS_FIELD(p, pio_load_params, flags) && (p->flags & PIO_LOAD_VOCAB_ONLY);
}

static void log_summary(const pio_instance *inst)
{
    const pio_decoder *m = inst->model;
    char ranks[96] = "";
    if (m->ranks != NULL) /* the KV cache and the threads are then per rank */
        snprintf(ranks, sizeof ranks, " per rank, %d tensor-parallel ranks on %s",
                 m->shard.size, pk_context_backend_name(m->ranks[0]->ctx));
    char message[PATH_MAX + 400];
    snprintf(message, sizeof message,
             "%s: %ld layers, %.4g M parameters (%.4g MiB), KV cache %lld tokens in blocks of "
             "%d, context %zu, %d threads%s%s", m->config.source, m->config.n_layers,
             (double)m->weights.n_parameters * 1e-6, (double)m->weights.bytes / 1048576.0,
             (long long)(pk_kv_pool_n_blocks(m->pool) * pk_kv_pool_block_size(m->pool)),
             (int)pk_kv_pool_block_size(m->pool), m->context_length,
             pk_context_threads(m->ranks != NULL ? m->ranks[0]->ctx : m->ctx), ranks,
             pio_textgen_tokenizer(inst->textgen) ? "" : ", no tokenizer");
    inst->services->log(inst->host, PIO_LOG_INFO, message);
}

pio_status pio_decoder_plugin_load_model(pio_instance *inst, const pio_load_params *params)
{
    if (inst == NULL || params == NULL)
        return PIO_ERR_INVALID_ARGUMENT;
    if (inst->textgen != NULL || inst->model != NULL)
        return fail_text(inst, PIO_ERR_STATE, "load_model called twice on one instance");
    pio_error *err = fresh_error(inst);
    if (vocab_only(params))
        return report(inst, create_textgen(inst, params->model_path, err));
    pio_decoder_load_options options;
    pio_status status = read_load_options(inst, params, &options, err);
    if (status == PIO_OK)
        status = pio_decoder_load(inst->spec, inst->services, inst->host, &options,
                                  &inst->model, err);
    if (status == PIO_OK)
        status = create_textgen(inst, options.model_dir, err);
    if (status != PIO_OK)
        return report(inst, status);
    log_summary(inst);
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Model info, raw forward, cleanup                                                           */
/* ------------------------------------------------------------------------------------------ */

pio_status pio_decoder_plugin_get_model_info(pio_instance *inst, pio_model_info *info)
{
    pio_status status = need_loaded(inst, "get_model_info", 1);
    if (status != PIO_OK || info == NULL)
        return status != PIO_OK ? status : PIO_ERR_INVALID_ARGUMENT;
    const pio_decoder *m = inst->model;
    info->architecture = inst->spec->architecture;
    info->vocab_size = (size_t)m->config.vocab_size;
    info->context_length = m->context_length;
    if (PIO_HAS_FIELD(info, pio_model_info, weight_bytes)) {
        info->n_parameters = m->weights.n_parameters;
        info->weight_bytes = m->weights.bytes;
    }
    if (PIO_HAS_FIELD(info, pio_model_info, backend)) /* with ranks: theirs, not the host's */
        info->backend = pk_context_backend_name(m->ranks != NULL ? m->ranks[0]->ctx : m->ctx);
    uint32_t experts = 0, per_token = 0;
    uint64_t routed = inst->spec->routed_weights != NULL
                          ? inst->spec->routed_weights(m->model, m, &experts, &per_token) : 0;
    if (experts == 0 || per_token == 0 || per_token > experts)
        routed = experts = per_token = 0;
    if (PIO_HAS_FIELD(info, pio_model_info, experts_per_token)) {
        info->routed_weight_bytes = routed;
        info->routed_experts = experts;
        info->experts_per_token = per_token;
    }
    if (PIO_HAS_FIELD(info, pio_model_info, kv_bytes_per_token)) {
        /* a decoded token reads per_token of every `experts` routed experts */
        uint64_t skipped = experts ? routed / experts * (experts - per_token) : 0;
        if (!m->config.tie_word_embeddings) /* decoding reads one row of the input table */
            skipped += pk_tensor_span_bytes(&m->embed) -
                       pk_tensor_span_bytes(&m->embed) / (uint64_t)m->config.vocab_size;
        info->active_weight_bytes = m->weights.bytes > skipped ? m->weights.bytes - skipped : 0;
        uint64_t cache_tokens = (uint64_t)pk_kv_pool_n_blocks(m->pool) *
                                (uint64_t)pk_kv_pool_block_size(m->pool);
        info->kv_bytes_per_token = cache_tokens ? pk_kv_pool_bytes(m->pool) / cache_tokens : 0;
    }
    return PIO_OK;
}

static pio_status check_infer_request(const pio_infer_request *req, pio_error *err)
{
    if (req == NULL || !PIO_HAS_FIELD(req, pio_infer_request, logits_capacity) ||
        req->tokens == NULL || req->n_tokens == 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "infer: no tokens given");
    if (req->logits_mode != PIO_LOGITS_LAST && req->logits_mode != PIO_LOGITS_ALL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "infer: unknown logits_mode %u",
                             (unsigned)req->logits_mode);
    for (size_t i = 0; req->positions != NULL && i < req->n_tokens; i++)
        if (req->positions[i] != (int32_t)i)
            return pio_error_set(err, PIO_ERR_UNSUPPORTED, "infer: positions[%zu] is %d; infer "
                                 "runs a fresh sequence, so positions must be 0..n-1 (continue "
                                 "sequences through the " PIO_TEXTGEN_MODEL_EXTENSION
                                 " extension)", i, (int)req->positions[i]);
    return PIO_OK;
}

/* One forward of a fresh sequence over the request's tokens. */
static pio_status run_fresh_sequence(pio_decoder *m, const pio_infer_request *req, size_t rows,
                                     pio_error *err)
{
    int32_t *seq_ids = malloc(req->n_tokens * sizeof *seq_ids);
    int32_t *logits_rows = malloc(rows * sizeof *logits_rows);
    int32_t seq = -1;
    pio_status status = seq_ids && logits_rows ? PIO_OK
                        : pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "infer: out of memory");
    if (status == PIO_OK)
        status = pio_decoder_seq_open(m, &seq, err);
    if (status == PIO_OK) {
        for (size_t i = 0; i < req->n_tokens; i++)
            seq_ids[i] = seq;
        for (size_t r = 0; r < rows; r++)
            logits_rows[r] = (int32_t)(rows == 1 ? req->n_tokens - 1 : r);
        pio_textgen_batch batch = {.struct_size = sizeof batch, .n_tokens = req->n_tokens,
                                   .tokens = req->tokens, .seq_ids = seq_ids,
                                   .n_logits_rows = rows, .logits_rows = logits_rows,
                                   .logits = req->logits};
        status = pio_decoder_forward(m, &batch, err);
        pio_decoder_seq_close(m, seq);
    }
    free(seq_ids);
    free(logits_rows);
    return status;
}

pio_status pio_decoder_plugin_infer(pio_instance *inst, const pio_infer_request *req,
                              pio_infer_result *result)
{
    pio_status status = need_loaded(inst, "infer", 1);
    if (status != PIO_OK)
        return status;
    if (result == NULL || !PIO_HAS_FIELD(result, pio_infer_result, vocab_size))
        return fail_text(inst, PIO_ERR_INVALID_ARGUMENT, "infer: result is NULL or too small");
    pio_error *err = fresh_error(inst);
    if ((status = check_infer_request(req, err)) != PIO_OK)
        return report(inst, status);
    size_t vocab = (size_t)inst->model->config.vocab_size;
    size_t rows = req->logits_mode == PIO_LOGITS_ALL ? req->n_tokens : 1;
    result->n_rows = rows;
    result->vocab_size = vocab;
    if (req->logits == NULL || req->logits_capacity / vocab < rows)
        return PIO_SOFT_TRUNCATED;
    return report(inst, run_fresh_sequence(inst->model, req, rows, err));
}

void pio_decoder_plugin_cleanup(pio_instance *inst)
{
    if (inst == NULL)
        return;
    pio_textgen_destroy(inst->textgen);
    pio_decoder_free(inst->model);
    free(inst);
}

/* ------------------------------------------------------------------------------------------ */
/* Text                                                                                       */
/* ------------------------------------------------------------------------------------------ */

pio_status pio_decoder_plugin_tokenize(pio_instance *inst, const char *text, size_t text_len,
                                 int add_special_tokens, int32_t *ids, size_t capacity,
                                 size_t *n_ids)
{
    if (need_loaded(inst, "tokenize", 0) != PIO_OK)
        return PIO_ERR_STATE;
    return report(inst, pio_textgen_tokenize(inst->textgen, text, text_len, add_special_tokens,
                                             ids, capacity, n_ids, fresh_error(inst)));
}

pio_status pio_decoder_plugin_detokenize(pio_instance *inst, const int32_t *ids, size_t n_ids,
                                   int skip_special_tokens, char *text, size_t capacity,
                                   size_t *text_len)
{
    if (need_loaded(inst, "detokenize", 0) != PIO_OK)
        return PIO_ERR_STATE;
    return report(inst, pio_textgen_detokenize(inst->textgen, ids, n_ids, skip_special_tokens,
                                               text, capacity, text_len, fresh_error(inst)));
}

pio_status pio_decoder_plugin_generate_text(pio_instance *inst, const pio_generate_request *request,
                                      pio_generate_response *response)
{
    if (need_loaded(inst, "generate_text", 0) != PIO_OK)
        return PIO_ERR_STATE;
    return report(inst, pio_textgen_generate(inst->textgen, request, response,
                                             fresh_error(inst)));
}

pio_status pio_decoder_plugin_chat_completion(pio_instance *inst, const pio_chat_request *request,
                                        pio_generate_response *response)
{
    if (need_loaded(inst, "chat_completion", 0) != PIO_OK)
        return PIO_ERR_STATE;
    return report(inst, pio_textgen_chat(inst->textgen, request, response, fresh_error(inst)));
}

void pio_decoder_plugin_free_response(pio_instance *inst, pio_generate_response *response)
{
    (void)inst;
    pio_textgen_free_response(response);
}

const void *pio_decoder_plugin_get_extension(pio_instance *inst, const char *name)
{
    if (inst == NULL || inst->model == NULL || inst->textgen == NULL || name == NULL)
        return NULL;
    if (strcmp(name, PIO_TEXTGEN_MODEL_EXTENSION) == 0)
        return &inst->model->ops;
    return NULL;
}
