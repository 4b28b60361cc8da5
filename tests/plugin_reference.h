/*
 * Checks of a model plugin against the transformers reference of a fixture folder of
 * tests/fixtures/models/ (tools/make_model_fixtures.py): reference.json and logits_f32.npy,
 * logits of every position, batched forwards against one sequence at a time, greedy
 * continuations and the chat reply; plus the scratch folders and edited checkpoints of the
 * load-failure tests. Shared by the plugin tests; includes plugin_session.h, so define
 * PLUGIN_SO (and, if wanted, SCRATCH_TEMPLATE for mkdtemp) before including it.
 */
#ifndef PIO_TESTS_PLUGIN_REFERENCE_H
#define PIO_TESTS_PLUGIN_REFERENCE_H

#include "plugin_session.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pio/safetensors.h"

#define MAX_SEQS 8

/* The KV cache YAML of the fp32 checks: the math is then fp32 like the reference's. */
static const char F32_CACHE[] = "kv_cache:\n  dtype: f32\n";

/* ------------------------------------------------------------------------------------------ */
/* Reference data                                                                             */
/* ------------------------------------------------------------------------------------------ */

typedef struct reference {
    const char *dir;         /* the fixture folder: the model the checks load */
    json_t *json;            /* reference.json */
    npy_f32 logits;          /* logits_f32.npy: rows of every sequence, concatenated */
    size_t n_seqs;
    int32_t *seqs[MAX_SEQS];
    size_t seq_len[MAX_SEQS];
    size_t first_row[MAX_SEQS];
} reference;

/* The fixture of the checks below (reference_load sets it). */
static reference ref;

static inline int32_t *int_array(const json_t *array, size_t *count)
{
    *count = json_array_size(array);
    int32_t *ids = malloc((*count ? *count : 1) * sizeof *ids);
    for (size_t i = 0; ids && i < *count; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(array, i));
    return ids;
}

static inline void reference_free(void)
{
    for (size_t s = 0; s < ref.n_seqs && s < MAX_SEQS; s++)
        free(ref.seqs[s]);
    free(ref.logits.data);
    json_decref(ref.json);
    memset(&ref, 0, sizeof ref);
}

/* Makes `dir` the fixture of the checks that follow (freeing the previous one); 0 or -1. */
static inline int reference_load(const char *dir)
{
    char path[256];
    json_error_t error;
    reference_free();
    ref.dir = dir;
    snprintf(path, sizeof path, "%s/reference.json", dir);
    ref.json = json_load_file(path, 0, &error);
    snprintf(path, sizeof path, "%s/logits_f32.npy", dir);
    if (ref.json == NULL || read_npy(path, &ref.logits) != 0)
        return -1;
    const json_t *seqs = json_object_get(ref.json, "sequences");
    ref.n_seqs = json_array_size(seqs);
    size_t row = 0;
    for (size_t s = 0; s < ref.n_seqs && s < MAX_SEQS; s++) {
        ref.seqs[s] = int_array(json_array_get(seqs, s), &ref.seq_len[s]);
        ref.first_row[s] = row;
        row += ref.seq_len[s];
    }
    return row == ref.logits.rows ? 0 : -1;
}

static inline const float *reference_row(size_t seq, size_t position)
{
    return ref.logits.data + (ref.first_row[seq] + position) * ref.logits.cols;
}

/* ‖a − b‖ / ‖b‖, or ‖a − b‖ when b is zero (the pad token's row is all zeros). */
static inline double relative_error(const float *a, const float *b, size_t n)
{
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < n; i++) {
        diff += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        norm += (double)b[i] * b[i];
    }
    return norm > 0.0 ? sqrt(diff / norm) : sqrt(diff);
}

static inline int32_t argmax(const float *row, size_t n)
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (row[i] > row[best])
            best = i;
    return (int32_t)best;
}

/* ------------------------------------------------------------------------------------------ */
/* Helpers on top of plugin_session.h                                                          */
/* ------------------------------------------------------------------------------------------ */

/* Logits of every position of a fresh sequence, through infer(). The caller frees. */
static inline float *infer_all(session *s, const int32_t *ids, size_t n)
{
    size_t vocab = s->model->vocab_size;
    float *logits = malloc(n * vocab * sizeof *logits);
    pio_infer_request req = {.struct_size = sizeof req, .tokens = ids, .n_tokens = n,
                             .logits_mode = PIO_LOGITS_ALL, .logits = logits,
                             .logits_capacity = n * vocab};
    pio_infer_result result = {.struct_size = sizeof result};
    pio_status status = s->vt->infer(s->inst, &req, &result);
    if (status != PIO_OK)
        fail_msg("infer: %s: %s", pio_status_str(status), s->state.last_error);
    assert_int_equal(result.n_rows, n);
    assert_int_equal(result.vocab_size, vocab);
    return logits;
}

/* ------------------------------------------------------------------------------------------ */
/* Checks against the reference of ref.dir                                                    */
/* ------------------------------------------------------------------------------------------ */

static inline double worst_error_against_reference(session *s)
{
    double worst = 0.0;
    for (size_t q = 0; q < ref.n_seqs; q++) {
        float *logits = infer_all(s, ref.seqs[q], ref.seq_len[q]);
        for (size_t p = 0; p < ref.seq_len[q]; p++) {
            double e = relative_error(logits + p * ref.logits.cols, reference_row(q, p),
                                      ref.logits.cols);
            worst = e > worst ? e : worst;
        }
        free(logits);
    }
    return worst;
}

/* Loads ref.dir with the KV cache of `yaml` (NULL: the default BF16 one, named `cache` in the
 * message), prints the worst ‖ours − ref‖ / ‖ref‖ over every position of every sequence (after
 * "LABEL: " when label is not NULL) and checks it is at most `tolerance`. */
static inline void check_logits_against_reference(const char *label, const char *yaml,
                                                   const char *cache, double tolerance)
{
    session s;
    open_ok(&s, yaml, ref.dir, NULL);
    assert_int_equal(s.model->vocab_size, ref.logits.cols);
    double worst = worst_error_against_reference(&s);
    print_message("%s%smax relative logits error, %s KV cache: %.3g\n", label ? label : "",
                  label ? ": " : "", cache, worst);
    assert_true(worst <= tolerance);
    close_session(&s);
}

/* One forward step of a mixed batch: `take[q]` next tokens of each sequence q (0 = none). */
static inline void forward_step(session *s, const int32_t *seq_ids_of, const size_t *take,
                                size_t *done, float **out)
{
    int32_t tokens[64], seq_ids[64], rows[64];
    size_t owner[64], position[64], n = 0;
    /* Interleave the sequences token by token, so the batch is really mixed. */
    for (size_t k = 0; k < 32; k++) {
        for (size_t q = 0; q < ref.n_seqs; q++) {
            if (k >= take[q])
                continue;
            tokens[n] = ref.seqs[q][done[q] + k];
            seq_ids[n] = seq_ids_of[q];
            owner[n] = q;
            position[n] = done[q] + k;
            rows[n] = (int32_t)n;
            n++;
        }
    }
    size_t vocab = s->model->vocab_size;
    float *logits = malloc(n * vocab * sizeof *logits);
    pio_textgen_batch batch = {.struct_size = sizeof batch, .n_tokens = n, .tokens = tokens,
                               .seq_ids = seq_ids, .n_logits_rows = n, .logits_rows = rows,
                               .logits = logits};
    pio_error err;
    pio_status status = s->model->forward(s->model->self, &batch, &err);
    if (status != PIO_OK)
        fail_msg("forward: %s", err.message);
    for (size_t i = 0; i < n; i++)
        memcpy(out[owner[i]] + position[i] * vocab, logits + i * vocab, vocab * sizeof(float));
    for (size_t q = 0; q < ref.n_seqs; q++)
        done[q] += take[q];
    free(logits);
}

/* The fixture's sequences forwarded together in mixed batches (prefill chunks and decode steps
 * of different sequences) give the logits of each sequence forwarded alone, within `tolerance`.
 * `yaml` configures the KV cache; small blocks make every sequence span several of them. */
static inline void check_batched_forward_equals_one_sequence_at_a_time(const char *yaml,
                                                                       double tolerance)
{
    session s;
    open_ok(&s, yaml, ref.dir, NULL);
    float *alone[MAX_SEQS], *batched[MAX_SEQS];
    int32_t seq_ids[MAX_SEQS];
    pio_error err;
    for (size_t q = 0; q < ref.n_seqs; q++) {
        alone[q] = infer_all(&s, ref.seqs[q], ref.seq_len[q]);
        batched[q] = calloc(ref.seq_len[q] * s.model->vocab_size, sizeof(float));
        assert_int_equal(s.model->seq_open(s.model->self, &seq_ids[q], &err), PIO_OK);
    }
    /* Prefill chunks and single-token decode steps of different sequences, mixed. */
    const size_t schedule[][3] = {{3, 5, 0}, {1, 1, 1}, {2, 9, 0}, {1, 1, 0}, {0, 7, 0}};
    size_t done[MAX_SEQS] = {0};
    for (size_t step = 0; step < sizeof schedule / sizeof schedule[0]; step++)
        forward_step(&s, seq_ids, schedule[step], done, batched);
    for (size_t q = 0; q < ref.n_seqs; q++) {
        assert_int_equal(done[q], ref.seq_len[q]);
        assert_int_equal(s.model->seq_length(s.model->self, seq_ids[q]), ref.seq_len[q]);
        for (size_t p = 0; p < ref.seq_len[q]; p++) {
            size_t v = s.model->vocab_size;
            double e = relative_error(batched[q] + p * v, alone[q] + p * v, v);
            if (e > tolerance)
                fail_msg("sequence %zu position %zu: batched differs by %.3g", q, p, e);
        }
        s.model->seq_close(s.model->self, seq_ids[q]);
        free(alone[q]);
        free(batched[q]);
    }
    close_session(&s);
}

/* Greedy decoding of every fixture sequence at once, with the KV cache of `yaml`: one prefill
 * batch, then one batch per step holding the last token of each sequence; every new token is
 * the reference's greedy_continuations_f32. */
static inline void check_greedy_continuations_against_reference(const char *yaml)
{
    session s;
    open_ok(&s, yaml, ref.dir, NULL);
    const json_t *expected = json_object_get(ref.json, "greedy_continuations_f32");
    size_t n_new = (size_t)json_integer_value(json_object_get(ref.json, "greedy_new_tokens"));
    size_t vocab = s.model->vocab_size, n_seqs = ref.n_seqs, total = 0;
    int32_t seq_ids[MAX_SEQS], tokens[64], owners[64], rows[MAX_SEQS], next[MAX_SEQS];
    pio_error err;
    for (size_t q = 0; q < n_seqs; q++) {
        assert_int_equal(s.model->seq_open(s.model->self, &seq_ids[q], &err), PIO_OK);
        for (size_t p = 0; p < ref.seq_len[q]; p++) {
            tokens[total] = ref.seqs[q][p];
            owners[total++] = seq_ids[q];
        }
        rows[q] = (int32_t)total - 1;
    }
    float *logits = malloc(n_seqs * vocab * sizeof *logits);
    pio_textgen_batch batch = {.struct_size = sizeof batch, .n_tokens = total, .tokens = tokens,
                               .seq_ids = owners, .n_logits_rows = n_seqs, .logits_rows = rows,
                               .logits = logits};
    for (size_t step = 0; step < n_new; step++) {
        pio_status status = s.model->forward(s.model->self, &batch, &err);
        if (status != PIO_OK)
            fail_msg("forward: %s", err.message);
        for (size_t q = 0; q < n_seqs; q++) {
            next[q] = argmax(logits + q * vocab, vocab);
            int64_t want = json_integer_value(json_array_get(json_array_get(expected, q), step));
            if (next[q] != want)
                fail_msg("sequence %zu, new token %zu: %d, reference %d", q, step, next[q],
                         (int)want);
            rows[q] = (int32_t)q;
        }
        batch = (pio_textgen_batch){.struct_size = sizeof batch, .n_tokens = n_seqs,
                                    .tokens = next, .seq_ids = seq_ids, .n_logits_rows = n_seqs,
                                    .logits_rows = rows, .logits = logits};
    }
    free(logits);
    close_session(&s);
}

typedef struct collected {
    char text[1024];
    size_t len;
    int calls;
} collected;

/* An on_token callback gathering the streamed text in a `collected`. */
static inline int collect(void *user, int32_t id, const char *text, size_t len)
{
    collected *c = user;
    (void)id;
    assert_true(c->len + len < sizeof c->text);
    memcpy(c->text + c->len, text, len);
    c->len += len;
    c->text[c->len] = '\0';
    c->calls++;
    return 0;
}

/* The reference's chat_f32 conversation, answered greedily with the KV cache of `yaml`: the
 * reply's ids and text, what was streamed, the prompt's length and the finish reason are the
 * reference's, and the rendered ChatML tokenizes to the reference's prompt ids. */
static inline void check_chat_reply_against_reference(const char *yaml)
{
    session s;
    open_ok(&s, yaml, ref.dir, NULL);
    const json_t *chat = json_object_get(ref.json, "chat_f32");
    const json_t *messages = json_object_get(chat, "messages");
    pio_chat_message storage[4];
    const pio_chat_message *pointers[4];
    size_t n = json_array_size(messages);
    for (size_t i = 0; i < n && i < 4; i++) {
        const json_t *m = json_array_get(messages, i);
        storage[i] = (pio_chat_message){
            .struct_size = sizeof storage[i],
            .role = json_string_value(json_object_get(m, "role")),
            .content = json_string_value(json_object_get(m, "content"))};
        pointers[i] = &storage[i];
    }
    pio_sampling_params greedy = {.struct_size = sizeof greedy,
                                  .fields_set = PIO_SAMPLING_TEMPERATURE, .temperature = 0.0f};
    collected streamed = {0};
    pio_chat_request req = {
        .struct_size = sizeof req, .messages = pointers, .n_messages = n,
        .add_generation_prompt = 1, .enable_thinking = -1,
        .max_new_tokens = (int32_t)json_integer_value(json_object_get(chat, "max_new_tokens")),
        .sampling = &greedy, .on_token = collect, .user_data = &streamed};
    pio_generate_response resp = {.struct_size = sizeof resp};
    assert_int_equal(s.vt->chat_completion(s.inst, &req, &resp), PIO_OK);

    size_t n_reply = 0, n_prompt = 0;
    int32_t *reply = int_array(json_object_get(chat, "reply_ids"), &n_reply);
    int32_t *prompt = int_array(json_object_get(chat, "prompt_ids"), &n_prompt);
    assert_int_equal(resp.n_tokens, n_reply);
    assert_memory_equal(resp.token_ids, reply, n_reply * sizeof *reply);
    assert_string_equal(resp.text, json_string_value(json_object_get(chat, "reply_text")));
    assert_string_equal(streamed.text, resp.text);
    assert_int_equal(streamed.calls, (int)n_reply);
    assert_int_equal(resp.usage.prompt_tokens, n_prompt);
    assert_int_equal(resp.finish_reason, PIO_FINISH_LENGTH);

    /* The prompt: the rendered ChatML tokenizes to the reference's ids. */
    const char *prompt_text = json_string_value(json_object_get(chat, "prompt_text"));
    int32_t ids[256];
    size_t n_ids = 0;
    assert_int_equal(s.vt->tokenize(s.inst, prompt_text, strlen(prompt_text), 0, ids, 256,
                                    &n_ids),
                     PIO_OK);
    assert_int_equal(n_ids, n_prompt);
    assert_memory_equal(ids, prompt, n_prompt * sizeof *prompt);
    s.vt->free_response(s.inst, &resp);
    free(reply);
    free(prompt);
    close_session(&s);
}

/* ------------------------------------------------------------------------------------------ */
/* Scratch folders and malformed checkpoints                                                  */
/* ------------------------------------------------------------------------------------------ */

#ifndef SCRATCH_TEMPLATE
#define SCRATCH_TEMPLATE "/tmp/pio-plugin-XXXXXX"
#endif

/* A fresh folder per test (make_scratch and remove_scratch are its setup and teardown). */
static char scratch[64];

static inline int make_scratch(void **state)
{
    (void)state;
    snprintf(scratch, sizeof scratch, SCRATCH_TEMPLATE);
    return mkdtemp(scratch) == NULL;
}

static inline int remove_scratch(void **state)
{
    (void)state;
    char command[128];
    snprintf(command, sizeof command, "rm -rf '%s'", scratch);
    return system(command);
}

/* Runs the printf-formatted shell command; its exit status, or -1. */
static inline int shell(const char *format, ...)
{
    char command[2048];
    va_list args;
    va_start(args, format);
    vsnprintf(command, sizeof command, format, args);
    va_end(args);
    int status = system(command);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Writes scratch/NAME/model.safetensors (the folder must exist): the tensors of the checkpoint
 * in `fixture`, with `drop` left out and `reshape` given one row less. */
static inline void write_edited_safetensors(const char *fixture, const char *name,
                                            const char *drop, const char *reshape)
{
    pio_safetensors *st = NULL;
    pio_error err;
    assert_int_equal(pio_safetensors_open(fixture, &st, &err), PIO_OK);
    size_t n = pio_safetensors_count(st), kept = 0;
    pio_safetensors_tensor *tensors = calloc(n, sizeof *tensors);
    int64_t shape[2];
    for (size_t i = 0; i < n; i++) {
        const pio_safetensors_tensor *t = pio_safetensors_at(st, i);
        if (drop != NULL && strcmp(t->name, drop) == 0)
            continue;
        tensors[kept] = *t;
        if (reshape != NULL && strcmp(t->name, reshape) == 0) {
            shape[0] = t->shape[0] - 1;
            shape[1] = t->shape[1];
            tensors[kept].shape = shape;
        }
        kept++;
    }
    char path[256];
    snprintf(path, sizeof path, "%s/%s/model.safetensors", scratch, name);
    assert_int_equal(pio_safetensors_write(path, kept, tensors, 0, NULL, &err), PIO_OK);
    free(tensors);
    pio_safetensors_close(st);
}

/* Loading scratch/FOLDER fails with `status`, an error naming both parts and no model. */
static inline void expect_load_failure(const char *folder, pio_status status, const char *part1,
                                       const char *part2)
{
    char dir[128];
    snprintf(dir, sizeof dir, "%s/%s", scratch, folder);
    session s;
    pio_status got = open_session(&s, NULL, dir, NULL);
    if (got != status)
        fail_msg("%s: load_model gave %s (%s)", folder, pio_status_str(got), s.state.last_error);
    expect_error(&s, part1);
    expect_error(&s, part2);
    assert_null(s.vt->get_extension(s.inst, PIO_TEXTGEN_MODEL_EXTENSION));
    close_session(&s);
}

/* cmocka group teardown for a file whose group setup called reference_load(). */
static inline int reference_group_teardown(void **state)
{
    (void)state;
    reference_free();
    return 0;
}

/* YAML for a tensor-parallel run with a float32 KV cache; extra goes inside kv_cache {...}. */
static inline void tp_yaml(char *yaml, size_t size, int tp, const char *extra)
{
    snprintf(yaml, size, "kv_cache: {dtype: f32%s}\nparallel: {tensor_parallel_size: %d}\n",
             extra, tp);
}

/* Logits of every position of every reference sequence at each tp size against tp = 1 (within
 * tp_tolerance) and, when ref_tolerance > 0, against the reference itself. */
static inline void check_logits_at_tp_sizes(const char *fixture, const int *sizes, size_t n_sizes,
                                            double tp_tolerance, double ref_tolerance)
{
    float *base[MAX_SEQS];
    session s;
    char yaml[160];
    tp_yaml(yaml, sizeof yaml, 1, "");
    open_ok(&s, yaml, fixture, NULL);
    for (size_t q = 0; q < ref.n_seqs; q++)
        base[q] = infer_all(&s, ref.seqs[q], ref.seq_len[q]);
    close_session(&s);
    for (size_t i = 0; i < n_sizes; i++) {
        tp_yaml(yaml, sizeof yaml, sizes[i], "");
        open_ok(&s, yaml, fixture, NULL);
        double worst = 0.0, worst_ref = 0.0;
        for (size_t q = 0; q < ref.n_seqs; q++) {
            float *logits = infer_all(&s, ref.seqs[q], ref.seq_len[q]);
            for (size_t p = 0; p < ref.seq_len[q]; p++) {
                const float *row = logits + p * ref.logits.cols;
                double e = relative_error(row, base[q] + p * ref.logits.cols, ref.logits.cols);
                double r = relative_error(row, reference_row(q, p), ref.logits.cols);
                worst = e > worst ? e : worst;
                worst_ref = r > worst_ref ? r : worst_ref;
            }
            free(logits);
        }
        print_message("tp = %d: max relative logits error against tp = 1 %.3g, against the "
                      "reference %.3g\n", sizes[i], worst, worst_ref);
        assert_true(worst <= tp_tolerance);
        if (ref_tolerance > 0)
            assert_true(worst_ref <= ref_tolerance);
        close_session(&s);
    }
    for (size_t q = 0; q < ref.n_seqs; q++)
        free(base[q]);
}

#endif
