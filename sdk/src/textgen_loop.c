/*
 * Prefill and decode of one sequence: the loop behind generate_text and chat_completion.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "textgen_internal.h"

double tg_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

void tg_result_free(tg_result *r)
{
    pio_token_ids_free(&r->tokens);
    tg_stream_free(&r->stream);
}

static int contains_id(const int32_t *ids, size_t n, int32_t id)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id)
            return 1;
    return 0;
}

static int is_stop_token(const pio_textgen *tg, const tg_request *req, int32_t id)
{
    return (!req->ignore_eos && contains_id(tg->eos_ids, tg->n_eos, id)) ||
           contains_id(req->stop_ids, req->n_stop_ids, id);
}

static void log_warning(const pio_textgen *tg, const char *message)
{
    if (tg->services != NULL)
        tg->services->log(tg->host, PIO_LOG_WARN, message);
}

static int host_wants_abort(const pio_textgen *tg)
{
    return tg->services != NULL && tg->services->should_abort(tg->host);
}

/* Forwards `n` tokens of one sequence and leaves the logits of the last in tg->logits. */
static pio_status forward_tokens(pio_textgen *tg, int32_t seq, const int32_t *tokens, size_t n,
                                 int32_t *seq_ids, pio_error *err)
{
    for (size_t i = 0; i < n; i++)
        seq_ids[i] = seq;
    int32_t last = (int32_t)(n - 1);
    pio_textgen_batch batch = {
        .struct_size = sizeof batch, .n_tokens = n, .tokens = tokens, .seq_ids = seq_ids,
        .n_logits_rows = 1, .logits_rows = &last, .logits = tg->logits,
    };
    return tg->model->forward(tg->model->self, &batch, err);
}

static pio_status append_token(pio_token_ids *ids, int32_t id, pio_error *err)
{
    if (ids->count == ids->capacity) {
        size_t capacity = ids->capacity ? ids->capacity * 2 : 64;
        int32_t *grown = realloc(ids->ids, capacity * sizeof *grown);
        if (grown == NULL)
            return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "generation: out of memory");
        ids->ids = grown;
        ids->capacity = capacity;
    }
    ids->ids[ids->count++] = id;
    return PIO_OK;
}

/* Adds a token's text to the stream; ids the tokenizer does not know add nothing. */
static pio_status push_text(pio_textgen *tg, int32_t id, tg_result *r, pio_error *err)
{
    if (pio_tokenizer_id_to_token(tg->tokenizer, id, NULL) == NULL)
        return PIO_OK;
    const char *piece;
    size_t len;
    pio_status status = pio_detokenizer_push(tg->detokenizer, id, &piece, &len, err);
    return status != PIO_OK ? status : tg_stream_append(&r->stream, piece, len, err);
}

/* Ends the text: whatever the streaming decoder still holds comes out (as U+FFFD when it is
 * an incomplete character), unless a stop string already ended it. */
static pio_status finish_text(pio_textgen *tg, tg_result *r, pio_error *err)
{
    const char *piece;
    size_t len;
    pio_status status = pio_detokenizer_flush(tg->detokenizer, &piece, &len, err);
    return status != PIO_OK ? status : tg_stream_append(&r->stream, piece, len, err);
}

typedef struct tg_step {
    pk_rng rng;
    size_t budget;   /* tokens that may still be generated: max_new_tokens and context */
    int32_t *seq_ids;
    int32_t seq;
    int text_done;
} tg_step;

/* Samples the next token from tg->logits and records it with its text; sets r->finish when
 * this token ends generation. */
static pio_status take_token(pio_textgen *tg, const tg_request *req, const int32_t *prompt,
                             size_t n_prompt, tg_step *step, tg_result *r, pio_error *err)
{
    pk_token_history history = {prompt, (int64_t)n_prompt, r->tokens.ids,
                                (int64_t)r->tokens.count};
    int32_t id = 0;
    pio_status status = pk_sampler_sample(tg->sampler, &req->sampling, tg->logits,
                                          (int32_t)tg->sample_vocab, &history, &step->rng, &id,
                                          err);
    if (status == PIO_OK)
        status = append_token(&r->tokens, id, err);
    if (status != PIO_OK)
        return status;
    if (r->tokens.count == 1)
        r->first_token_ms = tg_now_ms() - req->start_ms;
    if (is_stop_token(tg, req, id))
        r->finish = PIO_FINISH_STOP;
    else if ((status = push_text(tg, id, r, err)) != PIO_OK)
        return status;
    else if (r->stream.matched)
        r->finish = PIO_FINISH_STOP;
    if (r->finish == PIO_FINISH_NONE && r->tokens.count >= step->budget)
        r->finish = PIO_FINISH_LENGTH;
    if (r->finish != PIO_FINISH_NONE) {
        step->text_done = 1;
        if (!r->stream.matched && (status = finish_text(tg, r, err)) != PIO_OK)
            return status;
    }
    return PIO_OK;
}

/* Hands the token and its newly showable text to on_token; a non-zero answer cancels. */
static void stream_token(const tg_request *req, tg_result *r)
{
    const char *text;
    size_t len;
    tg_stream_take(&r->stream, r->finish != PIO_FINISH_NONE, &text, &len);
    if (req->on_token == NULL)
        return;
    int32_t id = r->tokens.ids[r->tokens.count - 1];
    if (req->on_token(req->user_data, id, text, len) != 0 && r->finish == PIO_FINISH_NONE)
        r->finish = PIO_FINISH_CANCELLED;
}

/* Feeds the last sampled token back; a full cache or a host abort end generation. */
static pio_status decode_step(pio_textgen *tg, tg_step *step, tg_result *r, pio_error *err)
{
    if (host_wants_abort(tg)) {
        r->finish = PIO_FINISH_CANCELLED;
        return PIO_OK;
    }
    pio_status status = forward_tokens(tg, step->seq, &r->tokens.ids[r->tokens.count - 1], 1,
                                       step->seq_ids, err);
    if (status == PIO_SOFT_KV_FULL) {
        char message[160];
        snprintf(message, sizeof message, "KV cache full after %zu generated tokens; "
                 "generation ends with finish reason length", r->tokens.count);
        log_warning(tg, message);
        r->finish = PIO_FINISH_LENGTH;
        return PIO_OK;
    }
    if (status == PIO_ERR_CANCELLED) {
        r->finish = PIO_FINISH_CANCELLED;
        return PIO_OK;
    }
    return status;
}

static pio_status check_prompt(const pio_textgen *tg, size_t n_prompt, pio_error *err)
{
    if (n_prompt == 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "the prompt is empty: there is nothing to continue");
    if (n_prompt >= tg->model->context_length)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "the prompt has %zu tokens, which leaves no room in the context "
                             "of %zu tokens", n_prompt, tg->model->context_length);
    return PIO_OK;
}

/* Prefill, then sample / stream / decode until something ends generation. */
static pio_status generate_on(pio_textgen *tg, tg_step *step, const int32_t *prompt,
                              size_t n_prompt, const tg_request *req, tg_result *r,
                              pio_error *err)
{
    double prefill_start = tg_now_ms();
    pio_status status = forward_tokens(tg, step->seq, prompt, n_prompt, step->seq_ids, err);
    r->prompt_ms = tg_now_ms() - prefill_start;
    if (status == PIO_ERR_CANCELLED) {
        r->finish = PIO_FINISH_CANCELLED;
        return PIO_OK;
    }
    if (status == PIO_SOFT_KV_FULL)
        return pio_error_set(err, PIO_SOFT_KV_FULL, "the KV cache has no room for a prompt of "
                             "%zu tokens right now", n_prompt);
    double first_token_at = 0.0;
    while (status == PIO_OK) {
        status = take_token(tg, req, prompt, n_prompt, step, r, err);
        if (status != PIO_OK)
            break;
        if (r->tokens.count == 1)
            first_token_at = tg_now_ms();
        stream_token(req, r);
        if (r->finish != PIO_FINISH_NONE)
            break;
        status = decode_step(tg, step, r, err);
        if (r->finish != PIO_FINISH_NONE)
            break;
    }
    if (r->tokens.count > 0)
        r->decode_ms = tg_now_ms() - first_token_at;
    if (status == PIO_OK && !step->text_done && !r->stream.matched)
        status = finish_text(tg, r, err);
    return status;
}

pio_status tg_run(pio_textgen *tg, const int32_t *prompt, size_t n_prompt, const tg_request *req,
                  tg_result *r, pio_error *err)
{
    memset(r, 0, sizeof *r);
    tg_stream_init(&r->stream, req->stop_strings, req->n_stop_strings);
    r->prompt_tokens = n_prompt;
    pio_status status = check_prompt(tg, n_prompt, err);
    if (status != PIO_OK)
        return status;
    tg_step step = {.budget = tg->model->context_length - n_prompt};
    if ((size_t)req->max_new_tokens < step.budget)
        step.budget = (size_t)req->max_new_tokens;
    pk_rng_seed(&step.rng, req->seed);
    step.seq_ids = malloc(n_prompt * sizeof *step.seq_ids);
    if (step.seq_ids == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "generation: out of memory");
    pio_detokenizer_reset(tg->detokenizer);
    status = tg->model->seq_open(tg->model->self, &step.seq, err);
    if (status == PIO_OK) {
        status = generate_on(tg, &step, prompt, n_prompt, req, r, err);
        tg->model->seq_close(tg->model->self, step.seq);
    }
    free(step.seq_ids);
    return status;
}
