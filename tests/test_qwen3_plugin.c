/*
 * The qwen3_4b_instruct_2507 plugin end to end on the CPU backend, checked against the
 * transformers reference of tests/fixtures/models/qwen3_tiny (tools/make_model_fixtures.py):
 * logits of every position, batched forwards of several sequences against one at a time,
 * greedy continuations, the chat reply, `pio logits`, dummy weights, malformed model folders
 * and a full KV cache. The plugin is driven as the host drives it: the built .so is loaded with
 * the host's loader, services and YAML config.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#define PLUGIN_DIR PIO_TEST_BUILD_DIR "/plugins"
#define PLUGIN_SO PLUGIN_DIR "/qwen3_4b_instruct_2507.so"
#define SCRATCH_TEMPLATE "/tmp/pio-qwen3-XXXXXX"
#include "plugin_reference.h"
#include "pio/decoder.h" /* PIO_DECODER_CHUNK_TOKENS */
#include "device_sampling.h"
#define PIO PIO_TEST_BUILD_DIR "/bin/pio"
#define FIXTURE "tests/fixtures/models/qwen3_tiny"

/*
 * ‖ours − ref‖ / ‖ref‖ per position against logits_f32.npy (transformers in float32 on the bf16
 * weights). With an F32 KV cache our math is fp32 like the reference's: measured 8e-7 at worst.
 * With the default BF16 cache the bar is the 1e-2 (measured 4.1e-3).
 */
#define F32_CACHE_TOLERANCE 1e-5
#define BF16_CACHE_TOLERANCE 1e-2
/* Two runs of the same math in another batch layout or through the CLI. */
#define SAME_MATH_TOLERANCE 1e-5

/* ------------------------------------------------------------------------------------------ */
/* The reference (plugin_reference.h)                                                         */
/* ------------------------------------------------------------------------------------------ */

static int load_reference(void **state)
{
    (void)state;
    return reference_load(FIXTURE);
}

static void logits_match_the_reference(void **state)
{
    (void)state;
    check_logits_against_reference(NULL, F32_CACHE, "F32", F32_CACHE_TOLERANCE);
    check_logits_against_reference(NULL, NULL, "BF16", BF16_CACHE_TOLERANCE);
}

static void batched_forward_equals_one_sequence_at_a_time(void **state)
{
    (void)state;
    /* Blocks of 4 tokens: every sequence spans several blocks, interleaved in the pool. */
    check_batched_forward_equals_one_sequence_at_a_time(
        "kv_cache: {dtype: f32, block_size: 4, max_tokens: 64}\n", SAME_MATH_TOLERANCE);
}

static void greedy_continuations_match_the_reference(void **state)
{
    (void)state;
    check_greedy_continuations_against_reference("kv_cache: {dtype: f32, block_size: 4}\n");
}

/* forward's argmax output (PIO_TEXTGEN_FEATURE_ARGMAX): the same ids as the argmax of the
 * logits rows, with and without the logits alongside, for a prefill's rows chosen out of order. */
static void argmax_output_equals_argmax_of_the_logits(void **state)
{
    (void)state;
    session s;
    open_ok(&s, F32_CACHE, ref.dir, NULL);
    assert_true(s.model->features & PIO_TEXTGEN_FEATURE_ARGMAX);
    size_t vocab = s.model->vocab_size, n = ref.seq_len[0];
    int32_t rows[3] = {(int32_t)n - 1, 0, (int32_t)n / 2}, ids[3], ids_alone[3];
    int32_t *owners = calloc(n, sizeof *owners);
    float *logits = malloc(3 * vocab * sizeof *logits);
    pio_error err;
    for (int pass = 0; pass < 2; pass++) {
        int32_t seq;
        assert_int_equal(s.model->seq_open(s.model->self, &seq, &err), PIO_OK);
        for (size_t i = 0; i < n; i++)
            owners[i] = seq;
        pio_textgen_batch b = {.struct_size = sizeof b, .n_tokens = n, .tokens = ref.seqs[0],
                               .seq_ids = owners, .n_logits_rows = 3, .logits_rows = rows,
                               .logits = pass == 0 ? logits : NULL,
                               .argmax = pass == 0 ? ids : ids_alone};
        assert_int_equal(s.model->forward(s.model->self, &b, &err), PIO_OK);
        s.model->seq_close(s.model->self, seq);
    }
    for (int r = 0; r < 3; r++) {
        assert_int_equal(ids[r], argmax(logits + (size_t)r * vocab, vocab));
        assert_int_equal(ids_alone[r], ids[r]);
    }
    free(owners);
    free(logits);
    close_session(&s);
}

/* Sampled ids (PIO_TEXTGEN_FEATURE_SAMPLE, tests/device_sampling.h): the host sampler's on
 * the returned logits, per row settings and histories; bad rows are clear errors. */
static void sampled_output_equals_the_host_sampler(void **state)
{
    (void)state;
    session s;
    open_ok(&s, F32_CACHE, ref.dir, NULL);
    check_sampled_forward_equals_host_sampler(&s);
    check_bad_sample_rows_are_clear_errors(&s);
    close_session(&s);
}

/* Generation sampling on the model's device equals host sampling token for token over the
 * grid of settings and seeds (tests/device_sampling.h). */
static void device_sampling_generates_what_host_sampling_does(void **state)
{
    (void)state;
    session s;
    open_ok(&s, F32_CACHE, ref.dir, NULL);
    check_generation_equals_host_sampling(&s, FIXTURE);
    close_session(&s);
}

/* A flattened batch longer than one chunk (PIO_DECODER_CHUNK_TOKENS): six sequences of 400
 * tokens in one forward run as two chunks, the second reading the keys the first stored; every
 * last-token row equals the sequence forwarded alone. */
static void batch_longer_than_a_chunk_equals_one_sequence_at_a_time(void **state)
{
    (void)state;
    enum { SEQS = 6, LEN = 400 };
    assert_true(SEQS * LEN > PIO_DECODER_CHUNK_TOKENS);
    session s;
    open_ok(&s, "kv_cache: {dtype: f32, max_tokens: 4096}\n", ref.dir, NULL);
    size_t vocab = s.model->vocab_size;
    int32_t *tokens = malloc(SEQS * LEN * sizeof *tokens), *owners = malloc(SEQS * LEN * 4);
    float *together = malloc(SEQS * vocab * sizeof(float)), *alone = malloc(vocab * 4);
    int32_t seq[SEQS], rows[SEQS];
    pio_error err;
    for (int q = 0; q < SEQS; q++) {
        assert_int_equal(s.model->seq_open(s.model->self, &seq[q], &err), PIO_OK);
        for (int i = 0; i < LEN; i++) {
            tokens[q * LEN + i] = (int32_t)((7 + 131 * q + 17 * i) % (int)vocab);
            owners[q * LEN + i] = seq[q];
        }
        rows[q] = q * LEN + LEN - 1;
    }
    pio_textgen_batch b = {.struct_size = sizeof b, .n_tokens = SEQS * LEN, .tokens = tokens,
                           .seq_ids = owners, .n_logits_rows = SEQS, .logits_rows = rows,
                           .logits = together};
    assert_int_equal(s.model->forward(s.model->self, &b, &err), PIO_OK);
    for (int q = 0; q < SEQS; q++) {
        s.model->seq_close(s.model->self, seq[q]);
        int32_t one, last = LEN - 1, own[LEN];
        assert_int_equal(s.model->seq_open(s.model->self, &one, &err), PIO_OK);
        for (int i = 0; i < LEN; i++)
            own[i] = one;
        pio_textgen_batch a = {.struct_size = sizeof a, .n_tokens = LEN,
                               .tokens = tokens + q * LEN, .seq_ids = own, .n_logits_rows = 1,
                               .logits_rows = &last, .logits = alone};
        assert_int_equal(s.model->forward(s.model->self, &a, &err), PIO_OK);
        assert_true(relative_error(together + (size_t)q * vocab, alone, vocab) <=
                    SAME_MATH_TOLERANCE);
        s.model->seq_close(s.model->self, one);
    }
    free(tokens);
    free(owners);
    free(together);
    free(alone);
    close_session(&s);
}

static void chat_reply_matches_the_reference(void **state)
{
    (void)state;
    check_chat_reply_against_reference(F32_CACHE);
}

/* ------------------------------------------------------------------------------------------ */
/* Generation behaviour on the real plugin                                                    */
/* ------------------------------------------------------------------------------------------ */

static pio_status generate(session *s, const char *prompt, int32_t max_new,
                           const pio_sampling_params *sampling, const pio_stop_conditions *stop,
                           pio_generate_response *resp)
{
    pio_generate_request req = {.struct_size = sizeof req, .prompt = prompt,
                                .prompt_len = strlen(prompt), .max_new_tokens = max_new,
                                .sampling = sampling, .stop = stop};
    memset(resp, 0, sizeof *resp);
    resp->struct_size = sizeof *resp;
    return s->vt->generate_text(s->inst, &req, resp);
}

/* Greedy generate_text of the reference chat prompt (the same ids as the chat request). */
static pio_status greedy_reply(session *s, const pio_stop_conditions *stop,
                               pio_generate_response *resp)
{
    const json_t *chat = json_object_get(ref.json, "chat_f32");
    const char *prompt = json_string_value(json_object_get(chat, "prompt_text"));
    pio_sampling_params greedy = {.struct_size = sizeof greedy,
                                  .fields_set = PIO_SAMPLING_TEMPERATURE, .temperature = 0.0f};
    pio_generate_request req = {
        .struct_size = sizeof req, .prompt = prompt, .prompt_len = strlen(prompt),
        .max_new_tokens = (int32_t)json_integer_value(json_object_get(chat, "max_new_tokens")),
        .sampling = &greedy, .stop = stop};
    return s->vt->generate_text(s->inst, &req, resp);
}

/* YAML generation.stop ends generation before the stop string; a request's own stop strings
 * replace the configured ones. */
static void yaml_stop_strings_end_generation(void **state)
{
    (void)state;
    const char *reply = json_string_value(
        json_object_get(json_object_get(ref.json, "chat_f32"), "reply_text"));
    const char *space = strchr(reply, ' '); /* the stop string: the 3 letters after it */
    assert_non_null(space);
    char stop_text[4] = {space[1], space[2], space[3], '\0'};
    char yaml[160];
    snprintf(yaml, sizeof yaml, "kv_cache: {dtype: f32}\ngeneration: {stop: [\"%s\"]}\n",
             stop_text);
    session s;
    open_ok(&s, yaml, FIXTURE, NULL);
    pio_generate_response resp = {.struct_size = sizeof resp};
    assert_int_equal(greedy_reply(&s, NULL, &resp), PIO_OK);
    assert_int_equal(resp.finish_reason, PIO_FINISH_STOP);
    assert_int_equal(resp.text_len, (size_t)(space + 1 - reply));
    assert_memory_equal(resp.text, reply, resp.text_len);
    s.vt->free_response(s.inst, &resp);

    const char *own[] = {"no such text"};
    pio_stop_conditions stop = {.struct_size = sizeof stop, .stop_strings = own,
                                .n_stop_strings = 1};
    resp = (pio_generate_response){.struct_size = sizeof resp};
    assert_int_equal(greedy_reply(&s, &stop, &resp), PIO_OK);
    assert_int_equal(resp.finish_reason, PIO_FINISH_LENGTH);
    assert_string_equal(resp.text, reply);
    s.vt->free_response(s.inst, &resp);
    close_session(&s);
}

static void sampling_is_reproducible_and_stop_tokens_end_generation(void **state)
{
    (void)state;
    session s;
    open_ok(&s, NULL, FIXTURE, NULL);
    pio_sampling_params sampling = {.struct_size = sizeof sampling,
                                    .fields_set = PIO_SAMPLING_TEMPERATURE | PIO_SAMPLING_SEED |
                                                  PIO_SAMPLING_TOP_K,
                                    .temperature = 0.9f, .top_k = 40, .seed = 42};
    pio_stop_conditions no_eos = {.struct_size = sizeof no_eos, .ignore_eos = 1};
    pio_generate_response a, b;
    assert_int_equal(generate(&s, "The model", 20, &sampling, &no_eos, &a), PIO_OK);
    assert_int_equal(generate(&s, "The model", 20, &sampling, &no_eos, &b), PIO_OK);
    assert_int_equal(a.n_tokens, 20);
    assert_memory_equal(a.token_ids, b.token_ids, 20 * sizeof(int32_t));
    assert_string_equal(a.text, b.text);
    assert_int_equal(a.finish_reason, PIO_FINISH_LENGTH);
    assert_true(a.timings.decode_tokens_per_s > 0.0);
    s.vt->free_response(s.inst, &b);

    /* Stopping on the fifth sampled token ends generation there. */
    int32_t stop_id = a.token_ids[4];
    size_t first = 0;
    while (a.token_ids[first] != stop_id)
        first++;
    pio_stop_conditions stop = {.struct_size = sizeof stop, .stop_token_ids = &stop_id,
                                .n_stop_token_ids = 1};
    assert_int_equal(generate(&s, "The model", 20, &sampling, &stop, &b), PIO_OK);
    assert_int_equal(b.finish_reason, PIO_FINISH_STOP);
    assert_int_equal(b.n_tokens, first + 1);
    s.vt->free_response(s.inst, &a);
    s.vt->free_response(s.inst, &b);
    close_session(&s);
}

static void prompts_that_cannot_run_are_clear_errors(void **state)
{
    (void)state;
    session s;
    open_ok(&s, "runtime: {max_context: 8}\n", FIXTURE, NULL);
    pio_generate_response resp;
    assert_int_equal(generate(&s, "", 4, NULL, NULL, &resp), PIO_ERR_INVALID_ARGUMENT);
    expect_error(&s, "the prompt is empty");
    s.vt->free_response(s.inst, &resp);
    const char *long_prompt = "the model number plus minus answer question value cache layer";
    assert_int_equal(generate(&s, long_prompt, 4, NULL, NULL, &resp), PIO_ERR_INVALID_ARGUMENT);
    expect_error(&s, "leaves no room in the context of 8 tokens");
    s.vt->free_response(s.inst, &resp);
    assert_int_equal(generate(&s, "\xff\xfe", 4, NULL, NULL, &resp), PIO_ERR_INVALID_ARGUMENT);
    s.vt->free_response(s.inst, &resp);

    int32_t bad_ids[] = {1, 1024};
    float logits[2 * 1024];
    pio_infer_request req = {.struct_size = sizeof req, .tokens = bad_ids, .n_tokens = 2,
                             .logits_mode = PIO_LOGITS_LAST, .logits = logits,
                             .logits_capacity = 2 * 1024};
    pio_infer_result result = {.struct_size = sizeof result};
    assert_int_equal(s.vt->infer(s.inst, &req, &result), PIO_ERR_INVALID_ARGUMENT);
    expect_error(&s, "token 1 has id 1024, outside the vocabulary [0, 1024)");
    int32_t nine[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    req.tokens = nine;
    req.n_tokens = 9;
    assert_int_equal(s.vt->infer(s.inst, &req, &result), PIO_ERR_INVALID_ARGUMENT);
    expect_error(&s, "context length of 8");
    req.n_tokens = 2;
    req.logits_capacity = 1000;
    assert_int_equal(s.vt->infer(s.inst, &req, &result), PIO_SOFT_TRUNCATED);
    assert_int_equal(result.n_rows, 1);
    close_session(&s);
}

static void full_kv_cache_is_soft_and_ends_generation_with_length(void **state)
{
    (void)state;
    session s;
    open_ok(&s, "kv_cache: {block_size: 4, max_tokens: 16}\n", FIXTURE, NULL);
    pio_model_info info = {.struct_size = sizeof info};
    assert_int_equal(s.vt->get_model_info(s.inst, &info), PIO_OK);
    assert_int_equal(info.context_length, 16);
    pio_stop_conditions no_eos = {.struct_size = sizeof no_eos, .ignore_eos = 1};
    pio_generate_response resp;
    assert_int_equal(generate(&s, "The model", 100, NULL, &no_eos, &resp), PIO_OK);
    assert_int_equal(resp.finish_reason, PIO_FINISH_LENGTH);
    assert_int_equal(resp.usage.prompt_tokens + resp.n_tokens, 16);
    s.vt->free_response(s.inst, &resp);

    /* Two sequences asking for more blocks than the pool has: soft, and nothing changed. */
    int32_t a = -1, b = -1, tokens[24], seqs[24], row = 0;
    pio_error err;
    assert_int_equal(s.model->seq_open(s.model->self, &a, &err), PIO_OK);
    assert_int_equal(s.model->seq_open(s.model->self, &b, &err), PIO_OK);
    for (int i = 0; i < 24; i++) {
        tokens[i] = i + 1;
        seqs[i] = i < 12 ? a : b;
    }
    float logits[1024];
    pio_textgen_batch batch = {.struct_size = sizeof batch, .n_tokens = 12, .tokens = tokens,
                               .seq_ids = seqs, .n_logits_rows = 1, .logits_rows = &row,
                               .logits = logits};
    assert_int_equal(s.model->forward(s.model->self, &batch, &err), PIO_OK);
    batch.n_tokens = 24;
    assert_int_equal(s.model->forward(s.model->self, &batch, &err), PIO_ERR_INVALID_ARGUMENT);
    batch.n_tokens = 12;
    batch.tokens = tokens + 12;
    batch.seq_ids = seqs + 12;
    assert_int_equal(s.model->forward(s.model->self, &batch, &err), PIO_SOFT_KV_FULL);
    assert_int_equal(s.model->seq_length(s.model->self, a), 12);
    assert_int_equal(s.model->seq_length(s.model->self, b), 0);
    s.model->seq_close(s.model->self, a);
    assert_int_equal(s.model->forward(s.model->self, &batch, &err), PIO_OK);
    s.model->seq_close(s.model->self, b);
    close_session(&s);
}

/* ------------------------------------------------------------------------------------------ */
/* pio logits, dummy weights, malformed folders                                               */
/* ------------------------------------------------------------------------------------------ */

static void pio_logits_writes_the_same_numbers(void **state)
{
    (void)state;
    const size_t q = 1;
    char ids[512] = "", out[128];
    for (size_t p = 0; p < ref.seq_len[q]; p++)
        snprintf(ids + strlen(ids), sizeof ids - strlen(ids), "%s%d", p ? "," : "",
                 (int)ref.seqs[q][p]);
    snprintf(out, sizeof out, "%s/logits.npy", scratch);
    assert_int_equal(shell(PIO " logits --plugin-dir " PLUGIN_DIR " -m " FIXTURE
                               " --set kv_cache.dtype=f32 --tokens %s --out %s 2>/dev/null",
                           ids, out),
                     0);
    npy_f32 written;
    assert_int_equal(read_npy(out, &written), 0);
    assert_int_equal(written.rows, ref.seq_len[q]);
    assert_int_equal(written.cols, ref.logits.cols);
    session s;
    open_ok(&s, F32_CACHE, FIXTURE, NULL);
    float *logits = infer_all(&s, ref.seqs[q], ref.seq_len[q]);
    for (size_t p = 0; p < written.rows; p++) {
        const float *row = written.data + p * written.cols;
        assert_true(relative_error(row, logits + p * written.cols, written.cols) <=
                    SAME_MATH_TOLERANCE);
        assert_true(relative_error(row, reference_row(q, p), written.cols) <=
                    F32_CACHE_TOLERANCE);
    }
    free(logits);
    free(written.data);
    close_session(&s);
}

/* `pio run` prints the reply of the reference chat on stdout. */
static void pio_run_prints_the_reply(void **state)
{
    (void)state;
    const json_t *chat = json_object_get(ref.json, "chat_f32");
    const json_t *messages = json_object_get(chat, "messages");
    const char *system_text = json_string_value(json_object_get(json_array_get(messages, 0),
                                                                "content"));
    const char *user_text = json_string_value(json_object_get(json_array_get(messages, 1),
                                                              "content"));
    json_int_t max_new = json_integer_value(json_object_get(chat, "max_new_tokens"));
    char out[128];
    snprintf(out, sizeof out, "%s/reply.txt", scratch);
    assert_int_equal(shell(PIO " run --plugin-dir " PLUGIN_DIR " -m " FIXTURE " --temp 0 -n %d "
                               "--set kv_cache.dtype=f32 --system '%s' -p '%s' > %s 2>/dev/null",
                           (int)max_new, system_text, user_text, out),
                     0);
    FILE *file = fopen(out, "rb");
    assert_non_null(file);
    char printed[512];
    size_t len = fread(printed, 1, sizeof printed - 1, file);
    fclose(file);
    printed[len] = '\0';
    assert_string_equal(printed, json_string_value(json_object_get(chat, "reply_text")));
}

/* Copies the fixture's config files (and tokenizer) into scratch/NAME, without weights. */
static void copy_config_folder(const char *name, int with_tokenizer)
{
    assert_int_equal(shell("mkdir -p %s/%s && cp " FIXTURE "/config.json " FIXTURE
                           "/generation_config.json %s %s/%s/",
                           scratch, name, with_tokenizer ? FIXTURE "/tokenizer.json" : "",
                           scratch, name),
                     0);
}

static void dummy_weights_of_a_config_only_folder(void **state)
{
    (void)state;
    char dir[128];
    snprintf(dir, sizeof dir, "%s/config_only", scratch);
    assert_int_equal(shell("mkdir -p %s && cp " FIXTURE "/config.json %s/", dir, dir), 0);
    session s;
    open_ok(&s, "model: {seed: 7}\n", dir, "dummy");
    pio_model_info info = {.struct_size = sizeof info};
    assert_int_equal(s.vt->get_model_info(s.inst, &info), PIO_OK);
    assert_int_equal(info.vocab_size, 1024);
    assert_string_equal(info.backend, "cpu");
    int32_t ids[] = {1, 2, 3};
    float *first = infer_all(&s, ids, 3);
    for (size_t i = 0; i < 3 * info.vocab_size; i++)
        assert_true(isfinite(first[i]));
    /* No tokenizer in the folder: raw forwards work, text requests say what is missing. */
    pio_generate_response resp;
    assert_int_equal(generate(&s, "hi", 4, NULL, NULL, &resp), PIO_ERR_STATE);
    expect_error(&s, "tokenizer.json does not exist");
    s.vt->free_response(s.inst, &resp);
    close_session(&s);

    open_ok(&s, "model: {seed: 7}\n", dir, "dummy");
    float *again = infer_all(&s, ids, 3);
    assert_memory_equal(first, again, 3 * info.vocab_size * sizeof(float));
    close_session(&s);
    open_ok(&s, "model: {seed: 8}\n", dir, "dummy");
    float *other = infer_all(&s, ids, 3);
    assert_memory_not_equal(first, other, 3 * info.vocab_size * sizeof(float));
    close_session(&s);
    free(first);
    free(again);
    free(other);

    assert_int_equal(open_session(&s, NULL, NULL, "auto"), PIO_ERR_CONFIG);
    expect_error(&s, "model.path is not set");
    close_session(&s);
}

static void vocab_only_load_reads_the_tokenizer_alone(void **state)
{
    (void)state;
    copy_config_folder("vocab", 1);
    char dir[128];
    snprintf(dir, sizeof dir, "%s/vocab", scratch); /* no weights in it */
    session s;
    assert_int_equal(open_session_flags(&s, NULL, dir, NULL, PIO_LOAD_VOCAB_ONLY), PIO_OK);
    assert_null(s.model);
    int32_t ids[16];
    size_t n = 0, len = 0;
    assert_int_equal(s.vt->tokenize(s.inst, "hello<|im_end|>", 15, 0, ids, 16, &n), PIO_OK);
    assert_int_equal(ids[n - 1], 1002);
    char text[64];
    assert_int_equal(s.vt->detokenize(s.inst, ids, n, 1, text, sizeof text, &len), PIO_OK);
    assert_string_equal(text, "hello");
    pio_generate_response resp;
    assert_int_equal(generate(&s, "hi", 4, NULL, NULL, &resp), PIO_ERR_STATE);
    expect_error(&s, "vocab-only");
    pio_model_info info = {.struct_size = sizeof info};
    assert_int_equal(s.vt->get_model_info(s.inst, &info), PIO_ERR_STATE);
    close_session(&s);

    snprintf(dir, sizeof dir, "%s/config_only", scratch);
    assert_int_equal(shell("mkdir -p %s && cp " FIXTURE "/config.json %s/", dir, dir), 0);
    assert_int_equal(open_session_flags(&s, NULL, dir, NULL, PIO_LOAD_VOCAB_ONLY),
                     PIO_ERR_NOT_FOUND);
    expect_error(&s, "config_only/tokenizer.json does not exist");
    close_session(&s);
}

/* Writes scratch/NAME: the fixture's config files and its tensors, with `drop` left out and
 * `reshape` given one row less. */
static void write_edited_checkpoint(const char *name, const char *drop, const char *reshape)
{
    copy_config_folder(name, 0);
    write_edited_safetensors(FIXTURE, name, drop, reshape);
}

static void malformed_checkpoints_name_file_and_tensor(void **state)
{
    (void)state;
    write_edited_checkpoint("missing", "model.layers.1.mlp.up_proj.weight", NULL);
    expect_load_failure("missing", PIO_ERR_NOT_FOUND, "missing/model.safetensors",
                        "model.layers.1.mlp.up_proj.weight");
    write_edited_checkpoint("shape", NULL, "model.layers.2.self_attn.k_proj.weight");
    expect_load_failure("shape", PIO_ERR_FORMAT, "shape/model.safetensors: "
                        "model.layers.2.self_attn.k_proj.weight", "expected [64, 96], file has "
                        "[63, 96]");
    copy_config_folder("no_weights", 1);
    expect_load_failure("no_weights", PIO_ERR_NOT_FOUND, "no_weights", "model.safetensors");
}

/* Writes scratch/NAME/config.json: the fixture's with `from` replaced by `to`. */
static void write_edited_config(const char *name, const char *from, const char *to)
{
    copy_config_folder(name, 0);
    assert_int_equal(shell("cp " FIXTURE "/model.safetensors %s/%s/ && sed -i 's/%s/%s/' "
                           "%s/%s/config.json",
                           scratch, name, from, to, scratch, name),
                     0);
}

/* runtime.cuda_gemv_tma: "auto" (or unset) streams every decode projection by tensor-map copies
 * for a dense model at short contexts and only the lm_head otherwise (a MoE, or steps from the
 * device's pk_context_gemv_tma_short_context positions); the other words name one choice for both; anything else
 * is refused, leaving the output alone (the schema names the choices before the plugin sees
 * the text). On a CPU context the choice is kept and changes nothing. */
static void cuda_gemv_tma_setting_resolves_by_model(void **state)
{
    (void)state;
    pk_gemv_tma got[2] = {PK_GEMV_TMA_NONE, PK_GEMV_TMA_NONE};
    assert_int_equal(pio_decoder_gemv_tma(NULL, 0, got), 0);
    assert_int_equal(got[0], PK_GEMV_TMA_ALL);
    assert_int_equal(got[1], PK_GEMV_TMA_DEFAULT);
    assert_int_equal(pio_decoder_gemv_tma("auto", 0, got), 0);
    assert_int_equal(got[0], PK_GEMV_TMA_ALL);
    assert_int_equal(got[1], PK_GEMV_TMA_DEFAULT);
    assert_int_equal(pio_decoder_gemv_tma("auto", 1, got), 0);
    assert_int_equal(got[0], PK_GEMV_TMA_DEFAULT);
    assert_int_equal(got[1], PK_GEMV_TMA_DEFAULT);
    static const struct { const char *word; pk_gemv_tma mode; } words[] = {
        {"all", PK_GEMV_TMA_ALL}, {"lm_head", PK_GEMV_TMA_DEFAULT}, {"off", PK_GEMV_TMA_NONE}};
    for (int moe = 0; moe < 2; moe++) {
        for (size_t i = 0; i < sizeof words / sizeof *words; i++) {
            assert_int_equal(pio_decoder_gemv_tma(words[i].word, moe, got), 0);
            assert_int_equal(got[0], words[i].mode);
            assert_int_equal(got[1], words[i].mode);
        }
        got[0] = got[1] = PK_GEMV_TMA_ALL;
        assert_int_equal(pio_decoder_gemv_tma("All", moe, got), -1);
        assert_int_equal(pio_decoder_gemv_tma("", moe, got), -1);
        assert_int_equal(got[0], PK_GEMV_TMA_ALL); /* untouched on refusal */
        assert_int_equal(got[1], PK_GEMV_TMA_ALL);
    }
    pk_context *ctx = NULL;
    pio_error err;
    assert_int_equal(pk_context_create(PK_DEVICE_CPU, NULL, &ctx, &err), PIO_OK);
    pk_context_set_gemv_tma(ctx, PK_GEMV_TMA_ALL);
    pk_context_set_gemv_tma(NULL, PK_GEMV_TMA_ALL); /* no context: nothing happens */
    pk_context_destroy(ctx);
}

static void bad_configs_name_file_and_key(void **state)
{
    (void)state;
    write_edited_config("kv_heads", "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
    expect_load_failure("kv_heads", PIO_ERR_CONFIG, "kv_heads/config.json",
                        "must be a multiple of \"num_key_value_heads\" (3)");
    write_edited_config("arch", "Qwen3ForCausalLM", "LlamaForCausalLM");
    expect_load_failure("arch", PIO_ERR_UNSUPPORTED, "arch/config.json",
                        "does not list Qwen3ForCausalLM");
    write_edited_config("hidden", "\"hidden_size\": 96", "\"hidden_size\": \"96\"");
    expect_load_failure("hidden", PIO_ERR_CONFIG, "hidden/config.json", "hidden_size");
    write_edited_config("no_layers", "\"num_hidden_layers\": 3,", "");
    expect_load_failure("no_layers", PIO_ERR_NOT_FOUND, "no_layers/config.json",
                        "num_hidden_layers");
    write_edited_config("scaling", "\"sliding_window\": null",
                        "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0}");
    expect_load_failure("scaling", PIO_ERR_UNSUPPORTED, "scaling/config.json", "rope_scaling");
    write_edited_config("theta", "\"rope_theta\": 5000000.0", "\"rope_theta\": -1");
    expect_load_failure("theta", PIO_ERR_CONFIG, "theta/config.json", "rope_theta");

    /* A wrong-typed YAML value is reported by the host with its place in the file. */
    session s;
    assert_int_equal(open_session(&s, "kv_cache: {dtype: fp8_e4m3}\n", FIXTURE, NULL),
                     PIO_ERR_UNSUPPORTED);
    expect_error(&s, "kv_cache.dtype: 'fp8_e4m3' is not supported");
    close_session(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(logits_match_the_reference),
        cmocka_unit_test(batched_forward_equals_one_sequence_at_a_time),
        cmocka_unit_test(greedy_continuations_match_the_reference),
        cmocka_unit_test(chat_reply_matches_the_reference),
        cmocka_unit_test(argmax_output_equals_argmax_of_the_logits),
        cmocka_unit_test(sampled_output_equals_the_host_sampler),
        cmocka_unit_test(device_sampling_generates_what_host_sampling_does),
        cmocka_unit_test(batch_longer_than_a_chunk_equals_one_sequence_at_a_time),
        cmocka_unit_test(sampling_is_reproducible_and_stop_tokens_end_generation),
        cmocka_unit_test(yaml_stop_strings_end_generation),
        cmocka_unit_test(prompts_that_cannot_run_are_clear_errors),
        cmocka_unit_test(full_kv_cache_is_soft_and_ends_generation_with_length),
        cmocka_unit_test(cuda_gemv_tma_setting_resolves_by_model),
        cmocka_unit_test_setup_teardown(pio_logits_writes_the_same_numbers, make_scratch,
                                        remove_scratch),
        cmocka_unit_test_setup_teardown(pio_run_prints_the_reply, make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(dummy_weights_of_a_config_only_folder, make_scratch,
                                        remove_scratch),
        cmocka_unit_test_setup_teardown(vocab_only_load_reads_the_tokenizer_alone, make_scratch,
                                        remove_scratch),
        cmocka_unit_test_setup_teardown(malformed_checkpoints_name_file_and_tensor, make_scratch,
                                        remove_scratch),
        cmocka_unit_test_setup_teardown(bad_configs_name_file_and_key, make_scratch,
                                        remove_scratch),
    };
    return cmocka_run_group_tests(tests, load_reference, reference_group_teardown);
}
