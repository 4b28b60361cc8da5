/*
 * A tiny but complete plugin for testing the host: the "echo" model.
 * Tokens are bytes (ids 0..255) plus BOS 256 and EOS 257. Its forward pass predicts, after each
 * byte, the next byte value (one-hot logits at (id + 1) % 256). Generation replies with the
 * prompt (for chat: the last user message) reversed, then EOS, after the optional prefix
 * `plugin_options.reply_prefix`.
 *
 * A fixture .c file defines ECHO_PLUGIN_NAME and ECHO_ARCHITECTURE, may define
 * ECHO_CHAT_SLOT (to break the vtable on purpose), then includes this file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "pio/plugin.h"

#define ECHO_BOS 256
#define ECHO_EOS 257
#define ECHO_VOCAB 258
#define ECHO_WEIGHT_BYTES (1u << 20)

#ifndef ECHO_CHAT_SLOT
#define ECHO_CHAT_SLOT echo_chat_completion
#endif

struct pio_instance {
    const pio_host_services *services;
    void *host;
    int loaded;
    int64_t default_max_new_tokens;
    const char *reply_prefix; /* plugin_options.reply_prefix, host-owned */
};

static pio_status echo_fail(pio_instance *inst, pio_status status, const char *message)
{
    inst->services->set_error(inst->host, status, message);
    return status;
}

static pio_status echo_initialize(const pio_init_params *params, pio_instance **out)
{
    if (params == NULL || out == NULL || params->services == NULL)
        return PIO_ERR_INVALID_ARGUMENT;
    pio_instance *inst = calloc(1, sizeof *inst);
    if (inst == NULL)
        return PIO_ERR_OUT_OF_MEMORY;
    inst->services = params->services;
    inst->host = params->host;
    inst->default_max_new_tokens = 64;
    inst->reply_prefix = "";
    *out = inst;
    return PIO_OK;
}

static pio_status echo_read_config(pio_instance *inst)
{
    pio_status status = inst->services->config_get_i64(inst->host, "generation.max_new_tokens",
                                                       &inst->default_max_new_tokens);
    if (PIO_IS_ERROR(status))
        return status;
    status = inst->services->config_get_str(inst->host, "plugin_options.reply_prefix",
                                            &inst->reply_prefix);
    return PIO_IS_ERROR(status) ? status : PIO_OK;
}

static pio_status echo_load_model(pio_instance *inst, const pio_load_params *params)
{
    if (params->model_path != NULL && strcmp(params->load_format, "dummy") != 0) {
        char path[4096];
        struct stat info;
        snprintf(path, sizeof path, "%s/config.json", params->model_path);
        if (stat(path, &info) != 0)
            return echo_fail(inst, PIO_ERR_IO, "model folder lacks config.json");
    }
    pio_status status = echo_read_config(inst);
    if (status != PIO_OK)
        return status;
    if (PIO_HAS_FIELD(params, pio_load_params, flags) && (params->flags & PIO_LOAD_VOCAB_ONLY)) {
        inst->services->log(inst->host, PIO_LOG_DEBUG, "echo tokenizer loaded (vocab only)");
        return PIO_OK; /* the byte tokenizer needs nothing; weights stay unloaded */
    }
    status = inst->services->mem_reserve(inst->host, -1, ECHO_WEIGHT_BYTES, "weights");
    if (status != PIO_OK)
        return status;
    for (uint64_t step = 0; step <= 4; step++)
        inst->services->progress(inst->host, "weights", step, 4);
    inst->loaded = 1;
    inst->services->log(inst->host, PIO_LOG_DEBUG, "echo model loaded");
    return PIO_OK;
}

static pio_status echo_get_model_info(pio_instance *inst, pio_model_info *info)
{
    (void)inst;
    info->architecture = ECHO_ARCHITECTURE;
    info->vocab_size = ECHO_VOCAB;
    info->context_length = 4096;
    if (PIO_HAS_FIELD(info, pio_model_info, backend))
        info->backend = "cpu";
    return PIO_OK;
}

static pio_status echo_infer(pio_instance *inst, const pio_infer_request *req,
                             pio_infer_result *result)
{
    if (!inst->loaded)
        return echo_fail(inst, PIO_ERR_STATE, "infer before load_model");
    size_t rows = req->logits_mode == PIO_LOGITS_ALL ? req->n_tokens : 1;
    result->n_rows = rows;
    result->vocab_size = ECHO_VOCAB;
    if (req->logits_capacity < rows * ECHO_VOCAB)
        return PIO_SOFT_TRUNCATED;
    for (size_t r = 0; r < rows; r++) {
        int32_t id = req->tokens[req->logits_mode == PIO_LOGITS_ALL ? r : req->n_tokens - 1];
        float *row = req->logits + r * ECHO_VOCAB;
        memset(row, 0, ECHO_VOCAB * sizeof *row);
        row[(id + 1) % 256] = 1.0f;
    }
    return PIO_OK;
}

static void echo_cleanup(pio_instance *inst)
{
    if (inst == NULL)
        return;
    if (inst->loaded)
        inst->services->mem_release(inst->host, -1, ECHO_WEIGHT_BYTES, "weights");
    free(inst);
}

static pio_status echo_tokenize(pio_instance *inst, const char *text, size_t len, int add_special,
                                int32_t *ids, size_t capacity, size_t *n_ids)
{
    (void)inst;
    size_t n = len + (add_special ? 1 : 0), k = 0;
    *n_ids = n;
    if (capacity < n)
        return PIO_SOFT_TRUNCATED;
    if (add_special)
        ids[k++] = ECHO_BOS;
    for (size_t i = 0; i < len; i++)
        ids[k++] = (unsigned char)text[i];
    return PIO_OK;
}

static pio_status echo_detokenize(pio_instance *inst, const int32_t *ids, size_t n, int skip_special,
                                  char *text, size_t capacity, size_t *text_len)
{
    (void)inst;
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        const char *piece = ids[i] == ECHO_BOS ? "<s>" : ids[i] == ECHO_EOS ? "</s>" : NULL;
        size_t piece_len = piece ? strlen(piece) : 1;
        if (piece != NULL && skip_special)
            continue;
        if (len + piece_len < capacity)
            memcpy(text + len, piece ? piece : (const char[]){(char)ids[i]}, piece_len);
        len += piece_len;
    }
    *text_len = len;
    if (len >= capacity)
        return PIO_SOFT_TRUNCATED;
    text[len] = '\0';
    return PIO_OK;
}

/* The reply: prefix + the text reversed, cut at max_new_tokens, streamed byte by byte. */
static pio_status echo_reply(pio_instance *inst, const char *text, size_t len, int32_t max_new,
                             const pio_stop_conditions *stop, pio_token_callback on_token,
                             void *user_data, pio_generate_response *resp)
{
    size_t prefix_len = strlen(inst->reply_prefix);
    size_t limit = (size_t)(max_new > 0 ? max_new : inst->default_max_new_tokens);
    int ignore_eos = stop != NULL && PIO_HAS_FIELD(stop, pio_stop_conditions, ignore_eos) &&
                     stop->ignore_eos;
    resp->text = malloc(prefix_len + len + limit + 1);
    resp->token_ids = malloc((limit + 1) * sizeof(int32_t));
    if (resp->text == NULL || resp->token_ids == NULL)
        return echo_fail(inst, PIO_ERR_OUT_OF_MEMORY, "out of memory");
    memcpy(resp->text, inst->reply_prefix, prefix_len);
    size_t out = prefix_len;
    if (prefix_len > 0 && on_token != NULL) /* the prefix streams as one piece */
        on_token(user_data, ECHO_BOS, inst->reply_prefix, prefix_len);
    resp->finish_reason = PIO_FINISH_LENGTH;
    for (size_t i = 0; i < limit; i++) {
        char c = i < len ? text[len - 1 - i] : (char)('a' + i % 26);
        if (i == len && !ignore_eos) {
            resp->finish_reason = PIO_FINISH_STOP;
            break;
        }
        resp->text[out++] = c;
        resp->token_ids[resp->n_tokens++] = (unsigned char)c;
        if (on_token != NULL && on_token(user_data, (unsigned char)c, &c, 1) != 0) {
            resp->finish_reason = PIO_FINISH_CANCELLED;
            break;
        }
    }
    resp->text[out] = '\0';
    resp->text_len = out;
    resp->usage = (pio_usage){.struct_size = sizeof(pio_usage), .prompt_tokens = len,
                              .completion_tokens = resp->n_tokens};
    resp->timings = (pio_timings){.struct_size = sizeof(pio_timings), .prompt_ms = 1.0,
                                  .decode_ms = 1.0, .decode_tokens_per_s = 1000.0 * (double)resp->n_tokens};
    return PIO_OK;
}

static pio_status echo_generate_text(pio_instance *inst, const pio_generate_request *req,
                                     pio_generate_response *resp)
{
    if (!inst->loaded)
        return echo_fail(inst, PIO_ERR_STATE, "generate_text before load_model");
    return echo_reply(inst, req->prompt, req->prompt_len, req->max_new_tokens, req->stop,
                      req->on_token, req->user_data, resp);
}

/* unused in the fixture that leaves the chat_completion slot empty on purpose */
__attribute__((unused)) static pio_status
echo_chat_completion(pio_instance *inst, const pio_chat_request *req, pio_generate_response *resp)
{
    if (!inst->loaded)
        return echo_fail(inst, PIO_ERR_STATE, "chat_completion before load_model");
    if (req->n_messages == 0 || strcmp(req->messages[req->n_messages - 1]->role, "user") != 0)
        return echo_fail(inst, PIO_ERR_INVALID_ARGUMENT, "the last message must be the user's");
    const char *content = req->messages[req->n_messages - 1]->content;
    return echo_reply(inst, content, strlen(content), req->max_new_tokens, req->stop,
                      req->on_token, req->user_data, resp);
}

static void echo_free_response(pio_instance *inst, pio_generate_response *resp)
{
    (void)inst;
    free(resp->text);
    free(resp->token_ids);
    resp->text = NULL;
    resp->token_ids = NULL;
}

static const pio_plugin_vtable echo_vtable = {
    .struct_size = sizeof(pio_plugin_vtable),
    .initialize = echo_initialize,
    .load_model = echo_load_model,
    .get_model_info = echo_get_model_info,
    .infer = echo_infer,
    .cleanup = echo_cleanup,
    .tokenize = echo_tokenize,
    .detokenize = echo_detokenize,
    .generate_text = echo_generate_text,
    .chat_completion = ECHO_CHAT_SLOT,
    .free_response = echo_free_response,
    .get_extension = NULL,
};

static const char *const echo_architectures[] = {ECHO_ARCHITECTURE, NULL};

PIO_PLUGIN_DEFINE(ECHO_PLUGIN_NAME, "1.0.0", echo_architectures,
                  PIO_CAP_CPU | PIO_CAP_CHAT | PIO_CAP_STREAMING, echo_vtable)
