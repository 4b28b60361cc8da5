/*
 * The text-generation runtime (pio/textgen.h) over a scripted fake model: the model answers
 * every forward with logits that make the next token of a script, so what the runtime does with
 * tokens (stop tokens and strings across token boundaries, streaming of split UTF-8, lengths,
 * cancellation, penalties, seeds, timings, tool calls, a full cache) is checked exactly. The
 * tokenizer is the fixture model's byte-level BPE (tests/fixtures/models/qwen3_tiny).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pio/kv_batch.h"
#include "pio/textgen.h"

#define TOKENIZER "tests/fixtures/models/qwen3_tiny/tokenizer.json"
#define VOCAB 1024     /* embedding rows; the tokenizer knows 1003 ids */
#define TOKENIZER_VOCAB 1003
#define IM_END 1002
#define ENDOFTEXT 1000
#define MAX_SEQS 4

/* ------------------------------------------------------------------------------------------ */
/* The fake model                                                                             */
/* ------------------------------------------------------------------------------------------ */

typedef enum fake_mode {
    FAKE_SCRIPT,  /* the next token of the script (then IM_END), plus a padding row that wins
                     unless padding ids are kept out of sampling */
    FAKE_PREFERS, /* fixed logits: token A 2.0, token B 1.5, others 0 */
    FAKE_RANDOM   /* logits drawn from the position: for sampling tests */
} fake_mode;

typedef struct fake_model {
    pio_textgen_model ops;
    fake_mode mode;
    int32_t script[256];
    size_t n_script;
    int32_t prefers_a, prefers_b;
    int64_t length[MAX_SEQS];
    int64_t prompt[MAX_SEQS];
    int open[MAX_SEQS];
    int64_t capacity;   /* tokens over all sequences */
    int64_t vocab;      /* logits per row: VOCAB, or TOKENIZER_VOCAB for a model without padding */
    int forwards;
    int argmax_forwards; /* forwards that returned ids (PIO_TEXTGEN_FEATURE_ARGMAX) */
    int logits_forwards; /* forwards that returned logits rows */
    int fail_with;      /* non-zero: status of the next forward */
} fake_model;

static pio_status fake_open(void *self, int32_t *seq, pio_error *err)
{
    fake_model *m = self;
    for (int32_t s = 0; s < MAX_SEQS; s++) {
        if (!m->open[s]) {
            m->open[s] = 1;
            m->length[s] = 0;
            m->prompt[s] = -1;
            *seq = s;
            return PIO_OK;
        }
    }
    return pio_error_set(err, PIO_SOFT_KV_FULL, "fake: no free sequence");
}

static void fake_close(void *self, int32_t seq)
{
    fake_model *m = self;
    if (seq >= 0 && seq < MAX_SEQS)
        m->open[seq] = 0;
}

static int64_t fake_length(void *self, int32_t seq)
{
    fake_model *m = self;
    return seq >= 0 && seq < MAX_SEQS && m->open[seq] ? m->length[seq] : -1;
}

static void fake_row(const fake_model *m, int64_t generated, int64_t position, float *row)
{
    for (int64_t v = 0; v < m->vocab; v++) {
        int64_t scrambled = (position * 7919 + (int64_t)v * 104729) % 1000;
        row[v] = m->mode == FAKE_RANDOM ? (float)scrambled * 0.01f : 0.0f;
    }
    if (m->mode == FAKE_PREFERS) {
        row[m->prefers_a] = 2.0f;
        row[m->prefers_b] = 1.5f;
    } else if (m->mode == FAKE_SCRIPT) {
        if (m->vocab > TOKENIZER_VOCAB)
            row[m->vocab - 1] = 100.0f; /* a padding row: never sampled */
        row[(size_t)generated < m->n_script ? m->script[generated] : IM_END] = 50.0f;
    }
}

static pio_status fake_forward(void *self, const pio_textgen_batch *b, pio_error *err)
{
    fake_model *m = self;
    int64_t used = 0;
    for (int s = 0; s < MAX_SEQS; s++)
        used += m->open[s] ? m->length[s] : 0;
    if (m->fail_with != 0) {
        pio_status status = m->fail_with;
        m->fail_with = 0;
        return pio_error_set(err, status, "fake: failing on purpose");
    }
    if (used + (int64_t)b->n_tokens > m->capacity)
        return pio_error_set(err, PIO_SOFT_KV_FULL, "fake: cache full");
    int32_t seq = b->seq_ids[0];
    m->length[seq] += (int64_t)b->n_tokens;
    if (m->prompt[seq] < 0)
        m->prompt[seq] = m->length[seq];
    m->forwards++;
    int64_t generated = m->length[seq] - m->prompt[seq];
    if (b->logits != NULL) {
        m->logits_forwards++;
        for (size_t i = 0; i < b->n_logits_rows; i++)
            fake_row(m, generated, m->length[seq], b->logits + i * m->vocab);
    }
    if (PIO_HAS_FIELD(b, pio_textgen_batch, argmax) && b->argmax != NULL) {
        m->argmax_forwards++;
        float row[VOCAB];
        for (size_t i = 0; i < b->n_logits_rows; i++) {
            fake_row(m, generated, m->length[seq], row);
            int32_t best = 0; /* the lowest index among ties, as pk_argmax */
            for (int64_t v = 1; v < m->vocab; v++)
                best = row[v] > row[best] ? (int32_t)v : best;
            b->argmax[i] = best;
        }
    }
    return PIO_OK;
}

static void fake_init(fake_model *m, fake_mode mode, size_t context)
{
    memset(m, 0, sizeof *m);
    m->mode = mode;
    m->capacity = 1 << 20;
    m->vocab = VOCAB;
    m->ops = (pio_textgen_model){.struct_size = sizeof m->ops, .self = m, .vocab_size = VOCAB,
                                 .context_length = context, .seq_open = fake_open,
                                 .seq_close = fake_close, .seq_length = fake_length,
                                 .forward = fake_forward};
}

/* ------------------------------------------------------------------------------------------ */
/* Host services the runtime uses (log, should_abort) and config values for generation.*      */
/* ------------------------------------------------------------------------------------------ */

typedef struct fake_host {
    int abort_after;    /* should_abort answers yes from this call on; 0 = never */
    int abort_calls;
    char last_log[512];
    double temperature; /* generation.temperature when >= 0 */
    int64_t seed;       /* generation.seed when >= 0 */
} fake_host;

static void host_log(void *host, pio_log_level level, const char *message)
{
    (void)level;
    snprintf(((fake_host *)host)->last_log, 512, "%s", message);
}

static void host_set_error(void *host, pio_status status, const char *message)
{
    (void)host, (void)status, (void)message;
}

static pio_status host_get_str(void *host, const char *key, const char **value)
{
    (void)host, (void)key, (void)value;
    return PIO_SOFT_ABSENT;
}

static pio_status host_get_i64(void *host, const char *key, int64_t *value)
{
    fake_host *h = host;
    if (strcmp(key, "generation.seed") == 0 && h->seed >= 0) {
        *value = h->seed;
        return PIO_OK;
    }
    if (strcmp(key, "generation.max_new_tokens") == 0) {
        *value = 5;
        return PIO_OK;
    }
    return PIO_SOFT_ABSENT;
}

static pio_status host_get_f64(void *host, const char *key, double *value)
{
    fake_host *h = host;
    if (strcmp(key, "generation.temperature") == 0 && h->temperature >= 0) {
        *value = h->temperature;
        return PIO_OK;
    }
    if (strcmp(key, "kv_cache.memory_gb") == 0) {
        *value = 0.5;
        return PIO_OK;
    }
    return PIO_SOFT_ABSENT;
}

static pio_status host_get_bool(void *host, const char *key, int *value)
{
    (void)host, (void)key, (void)value;
    return PIO_SOFT_ABSENT;
}

static void host_progress(void *host, const char *stage, uint64_t done, uint64_t total)
{
    (void)host, (void)stage, (void)done, (void)total;
}

static int host_should_abort(void *host)
{
    fake_host *h = host;
    h->abort_calls++;
    return h->abort_after > 0 && h->abort_calls >= h->abort_after;
}

static pio_status host_reserve(void *host, int device, uint64_t bytes, const char *tag)
{
    (void)host, (void)device, (void)bytes, (void)tag;
    return PIO_OK;
}

static void host_release(void *host, int device, uint64_t bytes, const char *tag)
{
    (void)host, (void)device, (void)bytes, (void)tag;
}

static pio_status host_list_size(void *host, const char *key, size_t *count)
{
    (void)host, (void)key, (void)count;
    return PIO_SOFT_ABSENT;
}

static pio_status host_list_str(void *host, const char *key, size_t index, const char **value)
{
    (void)host, (void)key, (void)index, (void)value;
    return PIO_SOFT_ABSENT;
}

static const pio_host_services services = {
    sizeof(pio_host_services), host_log,      host_set_error, host_get_str,      host_get_i64,
    host_get_f64,              host_get_bool, host_progress,  host_should_abort, host_reserve,
    host_release,              host_list_size, host_list_str,
};

/* ------------------------------------------------------------------------------------------ */
/* Fixture                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct fixture {
    fake_model model;
    fake_host host;
    pio_textgen *tg;
    pio_tokenizer *tokenizer; /* for building scripts */
} fixture;

static pio_textgen *make_textgen(fixture *f, const char *tokenizer_path)
{
    static const char *const eos_texts[] = {"<|im_end|>", "<|endoftext|>", NULL};
    pio_textgen_config cfg = {.model = &f->model.ops, .tokenizer_path = tokenizer_path,
                              .chat_format = PIO_CHAT_FORMAT_QWEN3,
                              .eos_token_texts = eos_texts, .max_new_tokens = 64,
                              .services = &services, .host = &f->host};
    pio_textgen_sampling_init(&cfg.sampling);
    cfg.sampling.temperature = 0.0f;
    pio_textgen *tg = NULL;
    pio_error err;
    pio_status status = pio_textgen_create(&cfg, &tg, &err);
    if (status != PIO_OK)
        fail_msg("pio_textgen_create: %s", err.message);
    return tg;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    fake_init(&f->model, FAKE_SCRIPT, 512);
    f->host.temperature = -1;
    f->host.seed = -1;
    f->tg = make_textgen(f, TOKENIZER);
    pio_error err;
    if (pio_tokenizer_load(TOKENIZER, &f->tokenizer, &err) != PIO_OK)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    pio_textgen_destroy(f->tg);
    pio_tokenizer_free(f->tokenizer);
    free(f);
    return 0;
}

/* The model will generate exactly `text`, token by token, then <|im_end|>. */
static void script_text(fixture *f, const char *text)
{
    pio_token_ids ids = {0};
    pio_error err;
    assert_int_equal(pio_tokenizer_encode(f->tokenizer, text, strlen(text), 0, &ids, &err),
                     PIO_OK);
    assert_true(ids.count <= 256);
    memcpy(f->model.script, ids.ids, ids.count * sizeof *ids.ids);
    f->model.n_script = ids.count;
    pio_token_ids_free(&ids);
}

/* What on_token received. */
typedef struct stream_log {
    char text[4096];
    size_t len;
    int calls;
    int cancel_at;   /* return 1 on this call (1-based); 0 = never */
    int invalid_utf8;
} stream_log;

static int is_valid_utf8(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (len == 0 || i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++)
            if (((unsigned char)s[i + k] & 0xC0) != 0x80)
                return 0;
        i += len;
    }
    return 1;
}

static int on_token(void *user, int32_t id, const char *text, size_t len)
{
    stream_log *log = user;
    (void)id;
    log->calls++;
    if (!is_valid_utf8(text, len))
        log->invalid_utf8 = 1;
    memcpy(log->text + log->len, text, len);
    log->len += len;
    log->text[log->len] = '\0';
    return log->cancel_at > 0 && log->calls == log->cancel_at;
}

typedef struct gen_options {
    const char *prompt;
    int32_t max_new_tokens;
    const char *const *stops;
    size_t n_stops;
    const int32_t *stop_ids;
    size_t n_stop_ids;
    int ignore_eos;
    const pio_sampling_params *sampling;
    stream_log *log;
} gen_options;

static pio_status generate(fixture *f, const gen_options *o, pio_generate_response *resp,
                           pio_error *err)
{
    pio_stop_conditions stop = {.struct_size = sizeof stop, .stop_strings = o->stops,
                                .n_stop_strings = o->n_stops, .stop_token_ids = o->stop_ids,
                                .n_stop_token_ids = o->n_stop_ids, .ignore_eos = o->ignore_eos};
    const char *prompt = o->prompt ? o->prompt : "Hello";
    pio_generate_request req = {.struct_size = sizeof req, .prompt = prompt,
                                .prompt_len = strlen(prompt), .max_new_tokens = o->max_new_tokens,
                                .sampling = o->sampling, .stop = &stop,
                                .on_token = o->log ? on_token : NULL, .user_data = o->log};
    memset(resp, 0, sizeof *resp);
    resp->struct_size = sizeof *resp;
    return pio_textgen_generate(f->tg, &req, resp, err);
}

static void generate_ok(fixture *f, const gen_options *o, pio_generate_response *resp)
{
    pio_error err;
    pio_status status = generate(f, o, resp, &err);
    if (status != PIO_OK)
        fail_msg("generate: %s", err.message);
}

/* ------------------------------------------------------------------------------------------ */
/* Tests                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static void streams_split_utf8_whole_and_stops_at_eos(void **state)
{
    fixture *f = *state;
    const char *text = "h\xc3\xa9llo w\xc3\xb6rld \xf0\x9f\x98\x80 \xe2\x82\xac!";
    script_text(f, text);
    assert_true(f->model.n_script > 8); /* multi-byte characters span several tokens */
    stream_log log = {0};
    gen_options o = {.log = &log};
    pio_generate_response resp;
    generate_ok(f, &o, &resp);
    assert_string_equal(resp.text, text);
    assert_int_equal(resp.text_len, strlen(text));
    assert_string_equal(log.text, text);
    assert_false(log.invalid_utf8);
    assert_int_equal(resp.finish_reason, PIO_FINISH_STOP);
    assert_int_equal(resp.n_tokens, f->model.n_script + 1); /* the stop token is reported */
    assert_int_equal(resp.token_ids[resp.n_tokens - 1], IM_END);
    assert_int_equal(log.calls, (int)resp.n_tokens);
    assert_memory_equal(resp.token_ids, f->model.script, f->model.n_script * sizeof(int32_t));
    assert_int_equal(resp.usage.completion_tokens, resp.n_tokens);
    assert_int_equal(resp.usage.prompt_tokens, 1);
    assert_int_equal(resp.usage.struct_size, sizeof(pio_usage));
    pio_textgen_free_response(&resp);
    assert_null(resp.text);
    assert_null(resp.token_ids);
}

static void padding_ids_are_never_sampled(void **state)
{
    fixture *f = *state;
    script_text(f, "ok");
    pio_generate_response resp;
    gen_options o = {0};
    generate_ok(f, &o, &resp);
    for (size_t i = 0; i < resp.n_tokens; i++)
        assert_true(resp.token_ids[i] < VOCAB - 1);
    assert_string_equal(resp.text, "ok");
    pio_textgen_free_response(&resp);
}

static void stop_string_across_tokens_is_cut_and_never_streamed(void **state)
{
    fixture *f = *state;
    script_text(f, "The answer is 42.\nUser: more text");
    const char *stops[] = {"\nUser:", "never matches"};
    stream_log log = {0};
    gen_options o = {.stops = stops, .n_stops = 2, .log = &log};
    pio_generate_response resp;
    generate_ok(f, &o, &resp);
    assert_string_equal(resp.text, "The answer is 42.");
    assert_string_equal(log.text, "The answer is 42.");
    assert_int_equal(resp.finish_reason, PIO_FINISH_STOP);
    assert_true(resp.n_tokens < f->model.n_script);
    pio_textgen_free_response(&resp);
}

static void held_back_text_is_released_when_the_stop_string_does_not_follow(void **state)
{
    fixture *f = *state;
    script_text(f, "a STOx b STO");
    const char *stops[] = {"STOP"};
    stream_log log = {0};
    gen_options o = {.stops = stops, .n_stops = 1, .log = &log};
    pio_generate_response resp;
    generate_ok(f, &o, &resp);
    assert_string_equal(resp.text, "a STOx b STO");
    assert_string_equal(log.text, "a STOx b STO"); /* the tail comes out at the end */
    assert_int_equal(resp.finish_reason, PIO_FINISH_STOP);
    pio_textgen_free_response(&resp);
}

static void empty_and_overlapping_stop_strings(void **state)
{
    fixture *f = *state;
    script_text(f, "abcabd");
    const char *stops[] = {"", "cabd", "bca"};
    gen_options o = {.stops = stops, .n_stops = 3};
    pio_generate_response resp;
    generate_ok(f, &o, &resp);
    assert_string_equal(resp.text, "a"); /* "bca" starts first */
    pio_textgen_free_response(&resp);
}

static void stop_token_ids_and_ignore_eos(void **state)
{
    fixture *f = *state;
    script_text(f, "one two three");
    int32_t stop_id = f->model.script[2];
    gen_options o = {.stop_ids = &stop_id, .n_stop_ids = 1};
    pio_generate_response resp;
    generate_ok(f, &o, &resp);
    assert_int_equal(resp.n_tokens, 3);
    assert_int_equal(resp.finish_reason, PIO_FINISH_STOP);
    pio_textgen_free_response(&resp);

    gen_options past_eos = {.ignore_eos = 1, .max_new_tokens = (int32_t)f->model.n_script + 4};
    generate_ok(f, &past_eos, &resp);
    assert_int_equal(resp.n_tokens, f->model.n_script + 4);
    assert_int_equal(resp.finish_reason, PIO_FINISH_LENGTH);
    assert_string_equal(resp.text, "one two three"); /* <|im_end|> is special: no text */
    pio_textgen_free_response(&resp);
}

static void max_new_tokens_and_context_length_end_with_length(void **state)
{
    fixture *f = *state;
    script_text(f, "a b c d e f g h i j k l m n o p");
    gen_options o = {.max_new_tokens = 3};
    pio_generate_response resp;
    generate_ok(f, &o, &resp);
    assert_int_equal(resp.n_tokens, 3);
    assert_int_equal(resp.finish_reason, PIO_FINISH_LENGTH);
    pio_textgen_free_response(&resp);

    /* A context of 6 positions and a 1-token prompt: 5 tokens at most. */
    pio_textgen_destroy(f->tg);
    f->model.ops.context_length = 6;
    f->tg = make_textgen(f, TOKENIZER);
    gen_options long_run = {.max_new_tokens = 100};
    generate_ok(f, &long_run, &resp);
    assert_int_equal(resp.n_tokens, 5);
    assert_int_equal(resp.finish_reason, PIO_FINISH_LENGTH);
    pio_textgen_free_response(&resp);

    pio_error err;
    gen_options too_long = {.prompt = "a b c d e f g"};
    assert_int_equal(generate(f, &too_long, &resp, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "leaves no room in the context of 6 tokens"));
    assert_null(resp.text);
}

static void empty_prompt_is_an_error(void **state)
{
    fixture *f = *state;
    pio_generate_response resp;
    pio_error err;
    gen_options o = {.prompt = ""};
    assert_int_equal(generate(f, &o, &resp, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "empty"));
    assert_int_equal(f->model.forwards, 0);
}

static void callback_and_host_cancel(void **state)
{
    fixture *f = *state;
    script_text(f, "a b c d e f g h");
    stream_log log = {.cancel_at = 3};
    gen_options o = {.log = &log};
    pio_generate_response resp;
    generate_ok(f, &o, &resp);
    assert_int_equal(resp.finish_reason, PIO_FINISH_CANCELLED);
    assert_int_equal(resp.n_tokens, 3);
    assert_int_equal(log.calls, 3);
    pio_textgen_free_response(&resp);

    f->host.abort_calls = 0;
    f->host.abort_after = 2; /* the second decode step sees the abort */
    gen_options plain = {0};
    generate_ok(f, &plain, &resp);
    assert_int_equal(resp.finish_reason, PIO_FINISH_CANCELLED);
    assert_int_equal(resp.n_tokens, 2);
    pio_textgen_free_response(&resp);

    f->host.abort_after = 0;
    f->model.fail_with = PIO_ERR_CANCELLED; /* the prefill itself was interrupted */
    generate_ok(f, &plain, &resp);
    assert_int_equal(resp.finish_reason, PIO_FINISH_CANCELLED);
    assert_int_equal(resp.n_tokens, 0);
    assert_string_equal(resp.text, "");
    pio_textgen_free_response(&resp);
}

static void full_cache_is_soft_at_prefill_and_a_length_finish_later(void **state)
{
    fixture *f = *state;
    script_text(f, "a b c d e f g h");
    f->model.capacity = 4;
    gen_options o = {0};
    pio_generate_response resp;
    generate_ok(f, &o, &resp);
    assert_int_equal(resp.finish_reason, PIO_FINISH_LENGTH);
    assert_int_equal(resp.n_tokens, 4); /* prompt 1 + 3 decoded tokens fill 4 slots */
    assert_non_null(strstr(f->host.last_log, "KV cache full"));
    pio_textgen_free_response(&resp);

    pio_error err;
    gen_options big = {.prompt = "a b c d e f"};
    assert_int_equal(generate(f, &big, &resp, &err), PIO_SOFT_KV_FULL);
    assert_non_null(strstr(err.message, "no room for a prompt"));
    assert_null(resp.text);
}

static void model_errors_are_returned(void **state)
{
    fixture *f = *state;
    f->model.fail_with = PIO_ERR_DEVICE;
    gen_options o = {0};
    pio_generate_response resp;
    pio_error err;
    assert_int_equal(generate(f, &o, &resp, &err), PIO_ERR_DEVICE);
    assert_string_equal(err.message, "fake: failing on purpose");
    assert_null(resp.text);
    assert_false(f->model.open[0]); /* the sequence was closed */
}

static void repetition_penalty_changes_the_greedy_choice(void **state)
{
    fixture *f = *state;
    f->model.mode = FAKE_PREFERS;
    pio_token_ids ids = {0};
    pio_error err;
    assert_int_equal(pio_tokenizer_encode(f->tokenizer, "ab", 2, 0, &ids, &err), PIO_OK);
    f->model.prefers_a = ids.ids[0];
    f->model.prefers_b = 600;
    pio_generate_response resp;
    gen_options plain = {.prompt = "ab", .max_new_tokens = 2};
    generate_ok(f, &plain, &resp);
    assert_int_equal(resp.token_ids[0], ids.ids[0]);
    pio_textgen_free_response(&resp);

    /* The prompt holds A: 2.0 / 2 = 1.0 < 1.5, so B wins. */
    pio_sampling_params penalty = {.struct_size = sizeof penalty,
                                   .fields_set = PIO_SAMPLING_REPETITION_PENALTY,
                                   .repetition_penalty = 2.0f};
    gen_options penalised = {.prompt = "ab", .max_new_tokens = 2, .sampling = &penalty};
    generate_ok(f, &penalised, &resp);
    assert_int_equal(resp.token_ids[0], 600);
    pio_textgen_free_response(&resp);
    pio_token_ids_free(&ids);
}

/* A model that finds the argmax itself (PIO_TEXTGEN_FEATURE_ARGMAX) and whose logits rows are
 * exactly the tokenizer's ids gets plain greedy requests as ids only, with the same tokens as
 * sampling on the host; a request that draws, or one with penalties, still gets logits. A model
 * with padding ids (more rows than the tokenizer) never gets the argmax path: it could pick a
 * padding id. */
static void greedy_requests_use_the_models_argmax(void **state)
{
    fixture *f = *state;
    const char *text = "the same words either way";
    script_text(f, text);
    pio_generate_response host, device;
    gen_options o = {0};
    generate_ok(f, &o, &host); /* the fixture's model: no feature, host sampling */
    assert_int_equal(f->model.argmax_forwards, 0);

    pio_textgen_destroy(f->tg);
    f->model.vocab = TOKENIZER_VOCAB;
    f->model.ops.vocab_size = TOKENIZER_VOCAB;
    f->model.ops.features = PIO_TEXTGEN_FEATURE_ARGMAX;
    f->tg = make_textgen(f, TOKENIZER);
    f->model.logits_forwards = 0;
    generate_ok(f, &o, &device);
    assert_int_equal(f->model.logits_forwards, 0);
    assert_int_equal(f->model.argmax_forwards, (int)device.n_tokens);
    assert_int_equal(device.n_tokens, host.n_tokens);
    assert_memory_equal(device.token_ids, host.token_ids, host.n_tokens * sizeof(int32_t));
    assert_string_equal(device.text, host.text);
    pio_textgen_free_response(&device);

    pio_sampling_params drawn = {.struct_size = sizeof drawn,
                                 .fields_set = PIO_SAMPLING_TEMPERATURE | PIO_SAMPLING_SEED,
                                 .temperature = 0.7f, .seed = 5};
    pio_sampling_params penalised = {.struct_size = sizeof penalised,
                                     .fields_set = PIO_SAMPLING_REPETITION_PENALTY,
                                     .repetition_penalty = 1.3f};
    const pio_sampling_params *others[] = {&drawn, &penalised};
    for (int i = 0; i < 2; i++) {
        f->model.argmax_forwards = f->model.logits_forwards = 0;
        gen_options with = {.sampling = others[i]};
        generate_ok(f, &with, &device);
        assert_int_equal(f->model.argmax_forwards, 0);
        assert_int_equal(f->model.logits_forwards, (int)device.n_tokens);
        pio_textgen_free_response(&device);
    }

    pio_textgen_destroy(f->tg); /* padding rows again, the feature still declared */
    f->model.vocab = VOCAB;
    f->model.ops.vocab_size = VOCAB;
    f->tg = make_textgen(f, TOKENIZER);
    f->model.argmax_forwards = f->model.logits_forwards = 0;
    generate_ok(f, &o, &device);
    assert_int_equal(f->model.argmax_forwards, 0);
    assert_memory_equal(device.token_ids, host.token_ids, host.n_tokens * sizeof(int32_t));
    pio_textgen_free_response(&device);
    pio_textgen_free_response(&host);
}

static void seeded_sampling_repeats(void **state)
{
    fixture *f = *state;
    f->model.mode = FAKE_RANDOM;
    pio_sampling_params s = {.struct_size = sizeof s,
                             .fields_set = PIO_SAMPLING_TEMPERATURE | PIO_SAMPLING_SEED,
                             .temperature = 1.5f, .seed = 1234};
    gen_options o = {.max_new_tokens = 16, .sampling = &s, .ignore_eos = 1};
    pio_generate_response a, b, c;
    generate_ok(f, &o, &a);
    generate_ok(f, &o, &b);
    s.seed = 99;
    generate_ok(f, &o, &c);
    assert_int_equal(a.n_tokens, 16);
    assert_memory_equal(a.token_ids, b.token_ids, 16 * sizeof(int32_t));
    assert_memory_not_equal(a.token_ids, c.token_ids, 16 * sizeof(int32_t));
    pio_textgen_free_response(&a);
    pio_textgen_free_response(&b);
    pio_textgen_free_response(&c);

    pio_error err;
    s.fields_set = PIO_SAMPLING_TOP_P;
    s.top_p = 0.0f;
    assert_int_equal(generate(f, &o, &a, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "top_p"));
    assert_int_equal(f->model.forwards, 3 * 16);
}

static void timings_and_usage(void **state)
{
    fixture *f = *state;
    script_text(f, "a b c d e");
    gen_options o = {0};
    pio_generate_response resp;
    generate_ok(f, &o, &resp);
    const pio_timings *t = &resp.timings;
    assert_int_equal(t->struct_size, sizeof(pio_timings));
    assert_true(t->prompt_ms >= 0.0 && t->decode_ms >= 0.0);
    assert_true(t->time_to_first_token_ms >= t->prompt_ms);
    assert_true(t->prompt_tokens_per_s >= 0.0 && t->decode_tokens_per_s >= 0.0);
    assert_int_equal(resp.usage.prompt_tokens, 1);
    assert_int_equal(resp.usage.completion_tokens, resp.n_tokens);
    pio_textgen_free_response(&resp);
}

static void chat_renders_chatml_and_parses_tool_calls(void **state)
{
    fixture *f = *state;
    script_text(f, "Let me check.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": "
                   "{\"city\": \"Paris\"}}\n</tool_call>");
    pio_chat_message user = {.struct_size = sizeof user, .role = "user", .content = "Weather?"};
    const pio_chat_message *messages[] = {&user};
    pio_chat_request req = {
        .struct_size = sizeof req, .messages = messages, .n_messages = 1,
        .tools_json = "[{\"type\": \"function\", \"function\": {\"name\": \"weather\", "
                      "\"parameters\": {\"type\": \"object\"}}}]",
        .add_generation_prompt = 1, .enable_thinking = -1, .max_new_tokens = 250};
    pio_generate_response resp = {.struct_size = sizeof resp};
    pio_error err;
    assert_int_equal(pio_textgen_chat(f->tg, &req, &resp, &err), PIO_OK);
    if (resp.n_tool_calls != 1)
        fail_msg("no tool call in [%s]", resp.text);
    assert_string_equal(resp.tool_calls[0]->name, "weather");
    assert_string_equal(resp.tool_calls[0]->arguments_json, "{\"city\": \"Paris\"}");
    assert_string_equal(resp.text, "Let me check.");
    assert_int_equal(resp.finish_reason, PIO_FINISH_TOOL_CALLS);
    assert_true(resp.usage.prompt_tokens > 20); /* the tool list is in the prompt */
    pio_textgen_free_response(&resp);
    assert_null(resp.tool_calls);

    req.tools_json = NULL; /* without tools the text stays as generated */
    assert_int_equal(pio_textgen_chat(f->tg, &req, &resp, &err), PIO_OK);
    assert_int_equal(resp.n_tool_calls, 0);
    assert_non_null(strstr(resp.text, "<tool_call>"));
    pio_textgen_free_response(&resp);
}

static void older_response_struct_gets_only_its_fields(void **state)
{
    fixture *f = *state;
    script_text(f, "hi");
    pio_generate_request req = {.struct_size = sizeof req, .prompt = "x", .prompt_len = 1};
    pio_generate_response resp;
    memset(&resp, 0x5a, sizeof resp);
    resp.struct_size = offsetof(pio_generate_response, finish_reason);
    pio_error err;
    assert_int_equal(pio_textgen_generate(f->tg, &req, &resp, &err), PIO_OK);
    assert_string_equal(resp.text, "hi");
    assert_int_equal(resp.n_tokens, f->model.n_script + 1);
    assert_int_equal((int)resp.finish_reason, 0x5a5a5a5a);
    pio_textgen_free_response(&resp);
}

static void missing_tokenizer_fails_text_requests_only(void **state)
{
    fixture *f = *state;
    pio_textgen_destroy(f->tg);
    f->tg = make_textgen(f, "/nonexistent/tokenizer.json");
    assert_null(pio_textgen_tokenizer(f->tg));
    pio_generate_response resp;
    pio_error err;
    gen_options o = {0};
    assert_int_equal(generate(f, &o, &resp, &err), PIO_ERR_STATE);
    assert_non_null(strstr(err.message, "/nonexistent/tokenizer.json does not exist"));
    size_t n = 0;
    assert_int_equal(pio_textgen_tokenize(f->tg, "a", 1, 0, NULL, 0, &n, &err), PIO_ERR_STATE);

    pio_textgen *bad = NULL;
    char path[] = "/tmp/pio-textgen-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "{\"version\": 7}", 14), 14);
    close(fd);
    pio_textgen_config cfg = {.model = &f->model.ops, .tokenizer_path = path};
    pio_textgen_sampling_init(&cfg.sampling);
    assert_true(PIO_IS_ERROR(pio_textgen_create(&cfg, &bad, &err)));
    assert_null(bad);
    assert_non_null(strstr(err.message, path));
    unlink(path);
}

static void vocab_only_runtime_tokenizes_but_does_not_generate(void **state)
{
    fixture *f = *state;
    pio_textgen_config cfg = {.tokenizer_path = TOKENIZER};
    pio_textgen_sampling_init(&cfg.sampling);
    pio_textgen *tg = NULL;
    pio_error err;
    assert_int_equal(pio_textgen_create(&cfg, &tg, &err), PIO_OK);
    int32_t ids[8];
    size_t n = 0;
    assert_int_equal(pio_textgen_tokenize(tg, "hi", 2, 0, ids, 8, &n, &err), PIO_OK);
    pio_generate_request req = {.struct_size = sizeof req, .prompt = "hi", .prompt_len = 2};
    pio_generate_response resp = {.struct_size = sizeof resp};
    assert_int_equal(pio_textgen_generate(tg, &req, &resp, &err), PIO_ERR_STATE);
    assert_non_null(strstr(err.message, "vocab-only"));
    pio_textgen_destroy(tg);

    cfg.tokenizer_path = NULL; /* vocab-only without a tokenizer is pointless */
    assert_int_equal(pio_textgen_create(&cfg, &tg, &err), PIO_ERR_NOT_FOUND);
    assert_null(tg);
    (void)f;
}

static void tokenize_and_detokenize_report_truncation(void **state)
{
    fixture *f = *state;
    int32_t ids[64];
    size_t n = 0, len = 0;
    pio_error err;
    assert_int_equal(pio_textgen_tokenize(f->tg, "hello world", 11, 0, ids, 1, &n, &err),
                     PIO_SOFT_TRUNCATED);
    assert_true(n > 1);
    assert_int_equal(pio_textgen_tokenize(f->tg, "hello world", 11, 0, ids, 64, &n, &err),
                     PIO_OK);
    ids[n++] = IM_END;
    char text[64];
    assert_int_equal(pio_textgen_detokenize(f->tg, ids, n, 0, text, 5, &len, &err),
                     PIO_SOFT_TRUNCATED);
    assert_int_equal(len, strlen("hello world<|im_end|>"));
    assert_int_equal(pio_textgen_detokenize(f->tg, ids, n, 1, text, sizeof text, &len, &err),
                     PIO_OK);
    assert_string_equal(text, "hello world");
    size_t n_eos = 0;
    const int32_t *eos = pio_textgen_eos_ids(f->tg, &n_eos);
    assert_int_equal(n_eos, 2);
    assert_int_equal(eos[0], IM_END);
    assert_int_equal(eos[1], ENDOFTEXT);
}

static void defaults_merge_generation_config_then_yaml_then_request(void **state)
{
    fixture *f = *state;
    char path[] = "/tmp/pio-genconfig-XXXXXX";
    int fd = mkstemp(path);
    const char *json = "{\"temperature\": 0.7, \"top_k\": 20, \"top_p\": 0.8, "
                       "\"eos_token_id\": [151645, 151643], \"do_sample\": true}";
    assert_int_equal(write(fd, json, strlen(json)), (ssize_t)strlen(json));
    close(fd);
    pio_sampling_params s;
    pio_textgen_sampling_init(&s);
    int32_t eos[4];
    size_t n_eos = 0;
    pio_error err;
    assert_int_equal(pio_textgen_read_generation_config(path, &s, eos, 4, &n_eos, &err), PIO_OK);
    assert_true(s.temperature > 0.69f && s.temperature < 0.71f);
    assert_int_equal(s.top_k, 20);
    assert_int_equal(n_eos, 2);
    assert_int_equal(eos[1], 151643);
    assert_true(s.repetition_penalty == 1.0f);

    f->host.temperature = 0.25; /* YAML wins over the file */
    f->host.seed = 5;
    int32_t max_new = 64;
    assert_int_equal(pio_textgen_read_host_generation(&services, &f->host, &s, &max_new, &err),
                     PIO_OK);
    assert_true(s.temperature == 0.25f);
    assert_true(s.fields_set & PIO_SAMPLING_SEED);
    assert_int_equal(s.seed, 5);
    assert_int_equal(max_new, 5);
    assert_int_equal(s.top_k, 20);

    fd = open(path, O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, "{\"do_sample\": false, \"top_k\": \"x\"}", 34), 34);
    close(fd);
    assert_int_equal(pio_textgen_read_generation_config(path, &s, eos, 4, &n_eos, &err),
                     PIO_ERR_CONFIG);
    assert_non_null(strstr(err.message, "top_k"));
    unlink(path);
    assert_int_equal(pio_textgen_read_generation_config(path, &s, eos, 4, &n_eos, &err),
                     PIO_SOFT_ABSENT);
}

static void kv_settings_and_batches(void **state)
{
    fixture *f = *state;
    pio_kv_settings settings;
    pio_error err;
    assert_int_equal(pio_kv_settings_read(&services, &f->host, &settings, &err), PIO_OK);
    assert_int_equal(settings.block_size, 16);
    assert_int_equal(settings.dtype, PIO_DTYPE_BF16);
    assert_int_equal(settings.max_bytes, 512ull << 20);

    pk_context *ctx = NULL;
    assert_int_equal(pk_context_create(PK_DEVICE_CPU, NULL, &ctx, &err), PIO_OK);
    pk_kv_pool_config cfg = {.n_layers = 1, .n_planes = 1, .plane_width = {8}};
    settings.block_size = 4;
    settings.max_bytes = 0;
    settings.max_tokens = 12; /* 3 blocks */
    pio_kv_settings_apply(&settings, 1000, &cfg);
    pk_kv_pool *pool = NULL;
    assert_int_equal(pk_kv_pool_create(ctx, &cfg, &pool, &err), PIO_OK);
    int32_t a = -1, b = -1;
    pk_kv_seq_open(pool, &a, &err);
    pk_kv_seq_open(pool, &b, &err);
    pio_kv_batch batch = {0};
    int32_t seqs[] = {a, b, a, a, b};
    assert_int_equal(pio_kv_batch_prepare(&batch, pool, seqs, 5, 100, &err), PIO_OK);
    assert_int_equal(batch.n_seqs, 2);
    int32_t positions[] = {0, 0, 1, 2, 1};
    assert_memory_equal(batch.positions, positions, sizeof positions);
    assert_int_equal(batch.seq_rows[4], 1);
    int32_t more[] = {a, a, b};
    assert_int_equal(pio_kv_batch_prepare(&batch, pool, more, 3, 100, &err), PIO_OK);
    assert_int_equal(batch.positions[0], 3);
    assert_int_equal(batch.positions[2], 2);
    assert_int_equal(batch.table_width, 2);
    /* 2 more blocks for a, none free: nothing changes. */
    int32_t too_many[] = {a, a, a, a, a, b};
    assert_int_equal(pio_kv_batch_prepare(&batch, pool, too_many, 6, 100, &err),
                     PIO_SOFT_KV_FULL);
    assert_int_equal(pk_kv_seq_length(pool, a), 5);
    assert_int_equal(pk_kv_seq_length(pool, b), 3);
    assert_int_equal(pio_kv_batch_prepare(&batch, pool, more, 3, 6, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "context length of 6"));
    int32_t closed[] = {7};
    assert_int_equal(pio_kv_batch_prepare(&batch, pool, closed, 1, 100, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    int32_t one[] = {b};
    assert_int_equal(pio_kv_batch_prepare(&batch, pool, one, 1, 100, &err), PIO_OK);
    pio_kv_batch_rollback(&batch, pool);
    assert_int_equal(pk_kv_seq_length(pool, b), 3);
    pio_kv_batch_free(&batch);
    pk_kv_pool_destroy(pool);
    pk_context_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(streams_split_utf8_whole_and_stops_at_eos),
        T(padding_ids_are_never_sampled),
        T(stop_string_across_tokens_is_cut_and_never_streamed),
        T(held_back_text_is_released_when_the_stop_string_does_not_follow),
        T(empty_and_overlapping_stop_strings),
        T(stop_token_ids_and_ignore_eos),
        T(max_new_tokens_and_context_length_end_with_length),
        T(empty_prompt_is_an_error),
        T(callback_and_host_cancel),
        T(full_cache_is_soft_at_prefill_and_a_length_finish_later),
        T(model_errors_are_returned),
        T(repetition_penalty_changes_the_greedy_choice),
        T(greedy_requests_use_the_models_argmax),
        T(seeded_sampling_repeats),
        T(timings_and_usage),
        T(chat_renders_chatml_and_parses_tool_calls),
        T(older_response_struct_gets_only_its_fields),
        T(missing_tokenizer_fails_text_requests_only),
        T(vocab_only_runtime_tokenizes_but_does_not_generate),
        T(tokenize_and_detokenize_report_truncation),
        T(defaults_merge_generation_config_then_yaml_then_request),
        T(kv_settings_and_batches),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
