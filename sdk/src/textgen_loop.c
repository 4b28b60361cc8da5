/*
 * Prefill and decode of one sequence: the loop behind generate_text and chat_completion. Each
 * token is chosen from the logits row of the last forward: on the host with the kernels'
 * sampler, or by the model itself in that forward (PIO_TEXTGEN_FEATURE_ARGMAX / _SAMPLE), with
 * the uniform drawn here from the same generator at the same point of the sequence of draws,
 * so both give the same tokens.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/sampler_math.h"
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

/* Where the next token is chosen: from the logits row copied to the host, or by the model
 * where its logits are (the argmax for plain greedy requests, else a sample), only the id
 * coming back. */
typedef enum tg_pick { TG_PICK_HOST, TG_PICK_ARGMAX, TG_PICK_SAMPLE } tg_pick;

typedef struct tg_step {
    pk_rng rng;
    size_t budget;   /* tokens that may still be generated: max_new_tokens and context */
    int32_t *seq_ids;
    int32_t seq;
    int text_done;
    tg_pick pick;
    int32_t picked;  /* the id the model chose (TG_PICK_ARGMAX, TG_PICK_SAMPLE) */
    const tg_request *req;
    const int32_t *prompt;
    size_t n_prompt;
    const pio_token_ids *output; /* the tokens generated so far */
} tg_step;

/* The model picks when it can: the argmax when the request is plain greedy (no draw, no
 * penalty) and the argmax covers exactly the ids that may be sampled, a sample otherwise. */
static tg_pick choose_pick(const pio_textgen *tg, const pk_sampling *p)
{
    const pio_textgen_model *model = tg->model;
    uint32_t features = PIO_HAS_FIELD(model, pio_textgen_model, features) ? model->features : 0;
    int plain_greedy = !pk_sampling_draws(p) && pk_sample_penalties_off(p);
    if (plain_greedy && (features & PIO_TEXTGEN_FEATURE_ARGMAX) &&
        tg->sample_vocab == model->vocab_size)
        return TG_PICK_ARGMAX;
    return (features & PIO_TEXTGEN_FEATURE_SAMPLE) ? TG_PICK_SAMPLE : TG_PICK_HOST;
}

/* The sample row of the next token: the request's parameters, the uniform the host sampler
 * would draw now (in step with pk_sampler_sample: none for greedy parameters) and the history
 * its penalties read. */
static pio_textgen_sample_row next_sample_row(tg_step *step)
{
    const pk_sampling *p = &step->req->sampling;
    return (pio_textgen_sample_row){
        .temperature = p->temperature, .top_k = p->top_k, .top_p = p->top_p, .min_p = p->min_p,
        .repetition_penalty = p->repetition_penalty, .presence_penalty = p->presence_penalty,
        .frequency_penalty = p->frequency_penalty,
        .uniform_bits = (uint64_t)pk_sampling_uniform_bits(p, &step->rng),
        .prompt = step->prompt, .n_prompt = step->n_prompt,
        .output = step->output->ids, .n_output = step->output->count};
}

/* Forwards `n` tokens of the step's sequence; the last one's logits are left in tg->logits or
 * its chosen id in step->picked. */
static pio_status forward_tokens(pio_textgen *tg, tg_step *step, const int32_t *tokens,
                                 size_t n, pio_error *err)
{
    for (size_t i = 0; i < n; i++)
        step->seq_ids[i] = step->seq;
    int32_t last = (int32_t)(n - 1);
    pio_textgen_batch batch = {
        .struct_size = sizeof batch, .n_tokens = n, .tokens = tokens, .seq_ids = step->seq_ids,
        .n_logits_rows = 1, .logits_rows = &last,
        .logits = step->pick == TG_PICK_HOST ? tg->logits : NULL,
    };
    pio_textgen_sample_row row;
    if (step->pick == TG_PICK_ARGMAX) {
        batch.argmax = &step->picked;
    } else if (step->pick == TG_PICK_SAMPLE) {
        row = next_sample_row(step);
        batch.sampled = &step->picked;
        batch.sample = &row;
        batch.sample_vocab = tg->sample_vocab;
    }
    return tg->model->forward(tg->model->self, &batch, err);
}

/* The next token, chosen by the model in the forward or sampled here from tg->logits; records
 * it with its text and sets r->finish when this token ends generation. */
static pio_status take_token(pio_textgen *tg, tg_step *step, tg_result *r, pio_error *err)
{
    const tg_request *req = step->req;
    int32_t id = step->picked;
    pio_status status = PIO_OK;
    if (step->pick == TG_PICK_HOST) {
        pk_token_history history = {step->prompt, (int64_t)step->n_prompt, r->tokens.ids,
                                    (int64_t)r->tokens.count};
        status = pk_sampler_sample(tg->sampler, &req->sampling, tg->logits,
                                   (int32_t)tg->sample_vocab, &history, &step->rng, &id, err);
    }
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
    pio_status status = forward_tokens(tg, step, &r->tokens.ids[r->tokens.count - 1], 1, err);
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
static pio_status generate_on(pio_textgen *tg, tg_step *step, tg_result *r, pio_error *err)
{
    const tg_request *req = step->req;
    size_t n_prompt = step->n_prompt;
    double prefill_start = tg_now_ms();
    pio_status status = forward_tokens(tg, step, step->prompt, n_prompt, err);
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
        status = take_token(tg, step, r, err);
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
    tg_step step = {.budget = tg->model->context_length - n_prompt,
                    .pick = choose_pick(tg, &req->sampling), .req = req, .prompt = prompt,
                    .n_prompt = n_prompt, .output = &r->tokens};
    if ((size_t)req->max_new_tokens < step.budget)
        step.budget = (size_t)req->max_new_tokens;
    pk_rng_seed(&step.rng, req->seed);
    step.seq_ids = malloc(n_prompt * sizeof *step.seq_ids);
    if (step.seq_ids == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "generation: out of memory");
    pio_detokenizer_reset(tg->detokenizer);
    status = tg->model->seq_open(tg->model->self, &step.seq, err);
    if (status == PIO_OK) {
        status = generate_on(tg, &step, r, err);
        tg->model->seq_close(tg->model->self, step.seq);
    }
    free(step.seq_ids);
    return status;
}
