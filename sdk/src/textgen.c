/*
 * The text-generation runtime: creation, requests of the ABI, responses, tokenize/detokenize.
 * The decode loop is in textgen_loop.c, the stop-string stream in textgen_stream.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/random.h>

#include "pio/tool_calls.h"
#include "textgen_internal.h"

/* ------------------------------------------------------------------------------------------ */
/* Creation                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static int file_exists(const char *path)
{
    struct stat info;
    return stat(path, &info) == 0;
}

static pio_status load_tokenizer(pio_textgen *tg, const char *path, pio_error *err)
{
    if (path == NULL) {
        snprintf(tg->missing_tokenizer, sizeof tg->missing_tokenizer,
                 "no tokenizer: the model has no folder (dummy weights); text needs a model "
                 "folder with tokenizer.json");
        return PIO_OK;
    }
    if (!file_exists(path)) {
        snprintf(tg->missing_tokenizer, sizeof tg->missing_tokenizer,
                 "no tokenizer: %s does not exist (token-id forwards such as `pio logits` work "
                 "without it; text needs it)", path);
        return PIO_OK;
    }
    pio_status status = pio_tokenizer_load(path, &tg->tokenizer, err);
    if (status == PIO_OK)
        status = pio_detokenizer_create(tg->tokenizer, PIO_DETOKENIZE_SKIP_SPECIAL_TOKENS,
                                        &tg->detokenizer, err);
    return status;
}

static void add_eos(pio_textgen *tg, int32_t id)
{
    for (size_t i = 0; i < tg->n_eos; i++)
        if (tg->eos_ids[i] == id)
            return;
    if (tg->n_eos < sizeof tg->eos_ids / sizeof tg->eos_ids[0])
        tg->eos_ids[tg->n_eos++] = id;
}

static void collect_eos_ids(pio_textgen *tg, const pio_textgen_config *cfg)
{
    size_t n = cfg->n_eos_ids < PIO_TEXTGEN_MAX_EOS ? cfg->n_eos_ids : PIO_TEXTGEN_MAX_EOS;
    for (size_t i = 0; i < n; i++)
        add_eos(tg, cfg->eos_ids[i]);
    for (size_t i = 0; tg->tokenizer && cfg->eos_token_texts && cfg->eos_token_texts[i]; i++) {
        int32_t id = pio_tokenizer_token_to_id(tg->tokenizer, cfg->eos_token_texts[i]);
        if (id >= 0)
            add_eos(tg, id);
    }
}

static pio_status check_model(const pio_textgen_model *m, pio_error *err)
{
    if (m == NULL || m->struct_size < sizeof *m || m->seq_open == NULL ||
        m->seq_close == NULL || m->seq_length == NULL || m->forward == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "textgen: the model lacks an operation or has an old struct_size");
    if (m->vocab_size == 0 || m->vocab_size > INT32_MAX || m->context_length < 2)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "textgen: vocab_size %zu / context_length %zu out of range",
                             m->vocab_size, m->context_length);
    return PIO_OK;
}

static pio_status prepare_sampling(pio_textgen *tg, const pio_textgen_model *model,
                                   pio_error *err)
{
    tg->logits = malloc(model->vocab_size * sizeof *tg->logits);
    if (tg->logits == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "textgen: out of memory");
    return pk_sampler_create((int32_t)model->vocab_size, &tg->sampler, err);
}

pio_status pio_textgen_create(const pio_textgen_config *cfg, pio_textgen **out, pio_error *err)
{
    *out = NULL;
    pio_status status = cfg->model != NULL ? check_model(cfg->model, err) : PIO_OK;
    if (status != PIO_OK)
        return status;
    pio_textgen *tg = calloc(1, sizeof *tg);
    if (tg == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "textgen: out of memory");
    tg->model = cfg->model;
    tg->chat_format = cfg->chat_format;
    tg->sampling = cfg->sampling;
    tg->max_new_tokens = cfg->max_new_tokens > 0 ? cfg->max_new_tokens : 256;
    for (size_t i = 0; i < cfg->n_stop_strings && i < PIO_TEXTGEN_MAX_STOP_STRINGS; i++)
        tg->stop_strings[tg->n_stop_strings++] = cfg->stop_strings[i];
    tg->services = cfg->services;
    tg->host = cfg->host;
    if (cfg->model != NULL)
        status = prepare_sampling(tg, cfg->model, err);
    if (status == PIO_OK)
        status = load_tokenizer(tg, cfg->tokenizer_path, err);
    if (status == PIO_OK && cfg->model == NULL && tg->tokenizer == NULL)
        status = pio_error_set(err, PIO_ERR_NOT_FOUND, "%s", tg->missing_tokenizer);
    if (status != PIO_OK) {
        pio_textgen_destroy(tg);
        return status;
    }
    tg->sample_vocab = cfg->model != NULL ? cfg->model->vocab_size : 0;
    if (tg->tokenizer != NULL && pio_tokenizer_vocab_size(tg->tokenizer) < tg->sample_vocab)
        tg->sample_vocab = pio_tokenizer_vocab_size(tg->tokenizer);
    collect_eos_ids(tg, cfg);
    *out = tg;
    return PIO_OK;
}

void pio_textgen_destroy(pio_textgen *tg)
{
    if (tg == NULL)
        return;
    pio_detokenizer_free(tg->detokenizer);
    pio_tokenizer_free(tg->tokenizer);
    pk_sampler_destroy(tg->sampler);
    free(tg->logits);
    free(tg);
}

const pio_tokenizer *pio_textgen_tokenizer(const pio_textgen *tg)
{
    return tg->tokenizer;
}

const int32_t *pio_textgen_eos_ids(const pio_textgen *tg, size_t *n)
{
    *n = tg->n_eos;
    return tg->eos_ids;
}

static pio_status need_tokenizer(const pio_textgen *tg, pio_error *err)
{
    if (tg->tokenizer != NULL)
        return PIO_OK;
    return pio_error_set(err, PIO_ERR_STATE, "%s", tg->missing_tokenizer);
}

/* Generation needs the model and the tokenizer. */
static pio_status need_model(const pio_textgen *tg, pio_error *err)
{
    if (tg->model == NULL)
        return pio_error_set(err, PIO_ERR_STATE, "the model was loaded vocab-only (its "
                             "tokenizer alone): generation needs the weights");
    return need_tokenizer(tg, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Requests                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static uint64_t random_seed(void)
{
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed)
        seed = (uint64_t)(tg_now_ms() * 1e3);
    return seed;
}

/* A request's sampling fields over the defaults: only those it marks in fields_set, and only
 * those inside the struct_size it declares. */
#define TAKE_FIELD(dst, src, member, bit)                                                     \
    do {                                                                                       \
        if (((src)->fields_set & (bit)) && PIO_HAS_FIELD(src, pio_sampling_params, member))    \
            (dst)->member = (src)->member;                                                     \
    } while (0)

static void merge_sampling(pio_sampling_params *s, const pio_sampling_params *req)
{
    if (req == NULL || !PIO_HAS_FIELD(req, pio_sampling_params, fields_set))
        return;
    TAKE_FIELD(s, req, temperature, PIO_SAMPLING_TEMPERATURE);
    TAKE_FIELD(s, req, top_p, PIO_SAMPLING_TOP_P);
    TAKE_FIELD(s, req, top_k, PIO_SAMPLING_TOP_K);
    TAKE_FIELD(s, req, min_p, PIO_SAMPLING_MIN_P);
    TAKE_FIELD(s, req, repetition_penalty, PIO_SAMPLING_REPETITION_PENALTY);
    TAKE_FIELD(s, req, presence_penalty, PIO_SAMPLING_PRESENCE_PENALTY);
    TAKE_FIELD(s, req, frequency_penalty, PIO_SAMPLING_FREQUENCY_PENALTY);
    if ((req->fields_set & PIO_SAMPLING_SEED) && PIO_HAS_FIELD(req, pio_sampling_params, seed)) {
        s->seed = req->seed;
        s->fields_set |= PIO_SAMPLING_SEED;
    }
}

/* Runs the sampler's own parameter checks on a one-token row, so bad values are refused
 * before any compute is spent on the prompt. */
static pio_status check_sampling(pk_sampler *sampler, const pk_sampling *p, pio_error *err)
{
    float logit = 0.0f;
    int32_t token = 0;
    pk_rng rng;
    pk_rng_seed(&rng, 0);
    return pk_sampler_sample(sampler, p, &logit, 1, NULL, &rng, &token, err);
}

static pio_status resolve_sampling(const pio_textgen *tg, const pio_sampling_params *req,
                                   tg_request *out, pio_error *err)
{
    pio_sampling_params s = tg->sampling;
    merge_sampling(&s, req);
    out->sampling = (pk_sampling){
        .temperature = s.temperature, .top_k = s.top_k, .top_p = s.top_p, .min_p = s.min_p,
        .repetition_penalty = s.repetition_penalty, .presence_penalty = s.presence_penalty,
        .frequency_penalty = s.frequency_penalty};
    out->seed = (s.fields_set & PIO_SAMPLING_SEED) ? s.seed : random_seed();
    return check_sampling(tg->sampler, &out->sampling, err);
}

/* The request's stop conditions; without stop strings of its own, the configured defaults. */
static pio_status resolve_stop(const pio_textgen *tg, const pio_stop_conditions *stop,
                               tg_request *out, pio_error *err)
{
    out->stop_strings = tg->stop_strings;
    out->n_stop_strings = tg->n_stop_strings;
    if (stop == NULL)
        return PIO_OK;
    if (PIO_HAS_FIELD(stop, pio_stop_conditions, n_stop_strings) && stop->n_stop_strings > 0) {
        if (stop->stop_strings == NULL)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "stop_strings is NULL");
        for (size_t i = 0; i < stop->n_stop_strings; i++)
            if (stop->stop_strings[i] == NULL)
                return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "stop string %zu is NULL", i);
        out->stop_strings = stop->stop_strings;
        out->n_stop_strings = stop->n_stop_strings;
    }
    if (PIO_HAS_FIELD(stop, pio_stop_conditions, n_stop_token_ids) && stop->n_stop_token_ids) {
        if (stop->stop_token_ids == NULL)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "stop_token_ids is NULL");
        out->stop_ids = stop->stop_token_ids;
        out->n_stop_ids = stop->n_stop_token_ids;
    }
    if (PIO_HAS_FIELD(stop, pio_stop_conditions, ignore_eos))
        out->ignore_eos = stop->ignore_eos != 0;
    return PIO_OK;
}

typedef struct tg_request_source {
    int32_t max_new_tokens;
    const pio_sampling_params *sampling;
    const pio_stop_conditions *stop;
    pio_token_callback on_token;
    void *user_data;
} tg_request_source;

static pio_status resolve_request(const pio_textgen *tg, const tg_request_source *src,
                                  tg_request *out, pio_error *err)
{
    memset(out, 0, sizeof *out);
    out->start_ms = tg_now_ms();
    out->max_new_tokens = src->max_new_tokens > 0 ? src->max_new_tokens : tg->max_new_tokens;
    out->on_token = src->on_token;
    out->user_data = src->user_data;
    pio_status status = resolve_sampling(tg, src->sampling, out, err);
    return status != PIO_OK ? status : resolve_stop(tg, src->stop, out, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Responses                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* Copies parsed tool calls into one allocation: the pointer array, the structs, then the
 * strings, so free_response releases them with one free(). */
static const pio_tool_call *const *pack_tool_calls(const pio_tool_call_list *list)
{
    size_t bytes = list->n_calls * (sizeof(pio_tool_call *) + sizeof(pio_tool_call));
    for (size_t i = 0; i < list->n_calls; i++)
        bytes += strlen(list->calls[i].name) + strlen(list->calls[i].arguments_json) + 2;
    char *block = malloc(bytes);
    if (block == NULL)
        return NULL;
    const pio_tool_call **pointers = (const pio_tool_call **)block;
    pio_tool_call *calls = (pio_tool_call *)(block + list->n_calls * sizeof *pointers);
    char *strings = (char *)(calls + list->n_calls);
    for (size_t i = 0; i < list->n_calls; i++) {
        size_t name_len = strlen(list->calls[i].name) + 1;
        size_t args_len = strlen(list->calls[i].arguments_json) + 1;
        calls[i] = (pio_tool_call){.struct_size = sizeof calls[i], .name = strings,
                                   .arguments_json = strings + name_len};
        memcpy(strings, list->calls[i].name, name_len);
        memcpy(strings + name_len, list->calls[i].arguments_json, args_len);
        strings += name_len + args_len;
        pointers[i] = &calls[i];
    }
    return pointers;
}

static double per_second(double count, double ms)
{
    return ms > 0.0 ? count * 1e3 / ms : 0.0;
}

static void fill_usage_and_timings(pio_generate_response *resp, const tg_result *r)
{
    if (PIO_HAS_FIELD(resp, pio_generate_response, usage))
        resp->usage = (pio_usage){.struct_size = sizeof(pio_usage),
                                  .prompt_tokens = r->prompt_tokens,
                                  .completion_tokens = r->tokens.count};
    if (!PIO_HAS_FIELD(resp, pio_generate_response, timings))
        return;
    double decoded = r->tokens.count > 1 ? (double)(r->tokens.count - 1) : 0.0;
    resp->timings = (pio_timings){
        .struct_size = sizeof(pio_timings),
        .prompt_ms = r->prompt_ms,
        .decode_ms = r->decode_ms,
        .time_to_first_token_ms = r->first_token_ms,
        .prompt_tokens_per_s = per_second((double)r->prompt_tokens, r->prompt_ms),
        .decode_tokens_per_s = per_second(decoded, r->decode_ms),
    };
}

/* Moves the result into the response: text and ids change owner. */
static pio_status fill_response(pio_generate_response *resp, tg_result *r, pio_error *err)
{
    char *text = r->stream.text != NULL ? r->stream.text : calloc(1, 1);
    if (text == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "generation: out of memory");
    resp->text = text;
    resp->text_len = r->stream.len;
    r->stream.text = NULL;
    if (PIO_HAS_FIELD(resp, pio_generate_response, n_tokens)) {
        resp->token_ids = r->tokens.ids;
        resp->n_tokens = r->tokens.count;
        r->tokens.ids = NULL;
    }
    if (PIO_HAS_FIELD(resp, pio_generate_response, finish_reason))
        resp->finish_reason = r->finish;
    fill_usage_and_timings(resp, r);
    return PIO_OK;
}

/* Splits tool calls out of a chat reply, when tools were offered and the model called some. */
static pio_status extract_tool_calls(const pio_textgen *tg, const char *tools_json,
                                     pio_generate_response *resp, pio_error *err)
{
    if (tools_json == NULL || !PIO_HAS_FIELD(resp, pio_generate_response, n_tool_calls))
        return PIO_OK;
    pio_tool_call_list list;
    memset(&list, 0, sizeof list);
    pio_status status = pio_tool_calls_parse(tg->chat_format, resp->text, resp->text_len,
                                             tools_json, &list, err);
    if (status != PIO_OK || list.n_calls == 0) {
        pio_tool_call_list_free(&list);
        return status;
    }
    const pio_tool_call *const *calls = pack_tool_calls(&list);
    char *text = strdup(list.text);
    if (calls == NULL || text == NULL) {
        free((void *)calls);
        free(text);
        pio_tool_call_list_free(&list);
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "generation: out of memory");
    }
    free(resp->text);
    resp->text = text;
    resp->text_len = list.text_len;
    resp->tool_calls = calls;
    resp->n_tool_calls = list.n_calls;
    if (resp->finish_reason == PIO_FINISH_STOP)
        resp->finish_reason = PIO_FINISH_TOOL_CALLS;
    pio_tool_call_list_free(&list);
    return PIO_OK;
}

void pio_textgen_free_response(pio_generate_response *resp)
{
    if (resp == NULL)
        return;
    free(resp->text);
    resp->text = NULL;
    resp->text_len = 0;
    if (PIO_HAS_FIELD(resp, pio_generate_response, n_tokens)) {
        free(resp->token_ids);
        resp->token_ids = NULL;
        resp->n_tokens = 0;
    }
    if (PIO_HAS_FIELD(resp, pio_generate_response, n_tool_calls)) {
        free((void *)resp->tool_calls);
        resp->tool_calls = NULL;
        resp->n_tool_calls = 0;
    }
    if (PIO_HAS_FIELD(resp, pio_generate_response, reasoning_text)) {
        free(resp->reasoning_text);
        resp->reasoning_text = NULL;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* generate_text and chat_completion                                                          */
/* ------------------------------------------------------------------------------------------ */

static pio_status generate_from_text(pio_textgen *tg, const char *text, size_t len,
                                     unsigned flags, const tg_request *req,
                                     pio_generate_response *resp, pio_error *err)
{
    pio_token_ids prompt = {0};
    tg_result result;
    memset(&result, 0, sizeof result);
    pio_status status = pio_tokenizer_encode(tg->tokenizer, text, len, flags, &prompt, err);
    if (status == PIO_OK)
        status = tg_run(tg, prompt.ids, prompt.count, req, &result, err);
    if (status == PIO_OK)
        status = fill_response(resp, &result, err);
    tg_result_free(&result);
    pio_token_ids_free(&prompt);
    return status;
}

/* Checks the response struct and empties the part of it the caller declared, so a failure
 * can always free it. */
static pio_status clear_response(pio_generate_response *resp, pio_error *err)
{
    if (resp == NULL || !PIO_HAS_FIELD(resp, pio_generate_response, text_len))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "response is NULL or its struct_size is too small");
    size_t size = resp->struct_size < sizeof *resp ? resp->struct_size : sizeof *resp;
    memset((char *)resp + sizeof resp->struct_size, 0, size - sizeof resp->struct_size);
    return PIO_OK;
}

/* What both requests do first: empty the response, check the request, the model and the
 * sampling values, and merge the settings into *req. */
static pio_status begin_request(pio_textgen *tg, pio_generate_response *resp, int request_ok,
                                const char *call, const tg_request_source *src, tg_request *req,
                                pio_error *err)
{
    pio_status status = clear_response(resp, err);
    if (status == PIO_OK && !request_ok)
        status = pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                               "%s: the request is NULL, too small or has no prompt", call);
    if (status == PIO_OK)
        status = need_model(tg, err);
    return status == PIO_OK ? resolve_request(tg, src, req, err) : status;
}

pio_status pio_textgen_generate(pio_textgen *tg, const pio_generate_request *request,
                                pio_generate_response *resp, pio_error *err)
{
    int ok = request != NULL && PIO_HAS_FIELD(request, pio_generate_request, user_data) &&
             (request->prompt != NULL || request->prompt_len == 0);
    tg_request_source src = {0};
    if (ok)
        src = (tg_request_source){request->max_new_tokens, request->sampling, request->stop,
                                  request->on_token, request->user_data};
    tg_request req;
    pio_status status = begin_request(tg, resp, ok, "generate_text", &src, &req, err);
    if (status != PIO_OK)
        return status;
    unsigned flags = request->add_special_tokens ? PIO_TOKENIZE_ADD_SPECIAL_TOKENS : 0;
    status = generate_from_text(tg, request->prompt ? request->prompt : "", request->prompt_len,
                                flags, &req, resp, err);
    if (status != PIO_OK)
        pio_textgen_free_response(resp);
    return status;
}

pio_status pio_textgen_chat(pio_textgen *tg, const pio_chat_request *request,
                            pio_generate_response *resp, pio_error *err)
{
    int ok = request != NULL && PIO_HAS_FIELD(request, pio_chat_request, user_data);
    tg_request_source src = {0};
    if (ok)
        src = (tg_request_source){request->max_new_tokens, request->sampling, request->stop,
                                  request->on_token, request->user_data};
    tg_request req;
    pio_status status = begin_request(tg, resp, ok, "chat_completion", &src, &req, err);
    if (status != PIO_OK)
        return status;
    char *prompt = NULL;
    size_t prompt_len = 0;
    status = pio_chat_render_request(tg->chat_format, request, &prompt, &prompt_len, err);
    if (status == PIO_OK)
        status = generate_from_text(tg, prompt, prompt_len, 0, &req, resp, err);
    if (status == PIO_OK)
        status = extract_tool_calls(tg, request->tools_json, resp, err);
    if (status != PIO_OK)
        pio_textgen_free_response(resp);
    free(prompt);
    return status;
}

/* ------------------------------------------------------------------------------------------ */
/* tokenize / detokenize                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* A tokenizer call: the tokenizer must exist and the caller's buffers be usable. */
static pio_status check_text_call(const pio_textgen *tg, int args_ok, const char *call,
                                  pio_error *err)
{
    pio_status status = need_tokenizer(tg, err);
    if (status == PIO_OK && !args_ok)
        status = pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: NULL argument", call);
    return status;
}

pio_status pio_textgen_tokenize(const pio_textgen *tg, const char *text, size_t text_len,
                                int add_special_tokens, int32_t *ids, size_t capacity,
                                size_t *n_ids, pio_error *err)
{
    int args_ok = (text != NULL || text_len == 0) && n_ids != NULL && (ids || capacity == 0);
    pio_status status = check_text_call(tg, args_ok, "tokenize", err);
    if (status != PIO_OK)
        return status;
    unsigned flags = add_special_tokens ? PIO_TOKENIZE_ADD_SPECIAL_TOKENS : 0;
    return pio_tokenizer_encode_into(tg->tokenizer, text ? text : "", text_len, flags, ids,
                                     capacity, n_ids, err);
}

pio_status pio_textgen_detokenize(const pio_textgen *tg, const int32_t *ids, size_t n_ids,
                                  int skip_special_tokens, char *text, size_t capacity,
                                  size_t *text_len, pio_error *err)
{
    int args_ok = (ids != NULL || n_ids == 0) && text_len != NULL && (text || capacity == 0);
    pio_status status = check_text_call(tg, args_ok, "detokenize", err);
    if (status != PIO_OK)
        return status;
    unsigned flags = skip_special_tokens ? PIO_DETOKENIZE_SKIP_SPECIAL_TOKENS : 0;
    return pio_tokenizer_decode(tg->tokenizer, ids, n_ids, flags, text, capacity, text_len, err);
}
