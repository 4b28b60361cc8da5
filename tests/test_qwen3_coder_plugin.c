/*
 * The qwen3_coder_30b plugin (Qwen3MoeForCausalLM) end to end on the CPU backend, checked
 * against the transformers references of tests/fixtures/models/qwen3_moe_tiny and
 * qwen3_moe_router_ties (tools/make_model_fixtures.py): logits of every position, batched
 * forwards against one sequence at a time, greedy continuations, the chat reply, the router's
 * tie-breaking, the Coder tool-call round trip, dummy weights and malformed checkpoints.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pio/safetensors.h"
#include "pio/tool_calls.h"

#define PLUGIN_DIR PIO_TEST_BUILD_DIR "/plugins"
#define PLUGIN_SO PLUGIN_DIR "/qwen3_coder_30b.so"
#include "plugin_session.h"

#define TINY "tests/fixtures/models/qwen3_moe_tiny"
#define TIES "tests/fixtures/models/qwen3_moe_router_ties"

/* ‖ours − ref‖ / ‖ref‖ per position against logits_f32.npy (the bar). */
#define LOGITS_TOLERANCE 1e-2
/* With an F32 KV cache the math is fp32 like the reference's: measured 5.2e-7 at worst. */
#define F32_CACHE_LOGITS_TOLERANCE 1e-5
/* Two runs of the same math in another batch layout. */
#define SAME_MATH_TOLERANCE 1e-5
#define MAX_SEQS 8

typedef struct reference {
    const char *dir;
    json_t *json;
    npy_f32 logits;          /* logits_f32.npy: rows of every sequence, concatenated */
    size_t n_seqs;
    int32_t *seqs[MAX_SEQS];
    size_t seq_len[MAX_SEQS];
    size_t first_row[MAX_SEQS];
} reference;

static reference ref;

static int32_t *int_array(const json_t *array, size_t *count)
{
    *count = json_array_size(array);
    int32_t *ids = malloc((*count ? *count : 1) * sizeof *ids);
    for (size_t i = 0; ids && i < *count; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(array, i));
    return ids;
}

static void free_reference(void);

/* Makes `dir` the fixture of the tests that follow. */
static int use_fixture(const char *dir)
{
    char path[256];
    json_error_t error;
    free_reference();
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

static void free_reference(void)
{
    for (size_t s = 0; s < ref.n_seqs; s++)
        free(ref.seqs[s]);
    free(ref.logits.data);
    json_decref(ref.json);
    memset(&ref, 0, sizeof ref);
}

static const float *reference_row(size_t seq, size_t position)
{
    return ref.logits.data + (ref.first_row[seq] + position) * ref.logits.cols;
}

/* ‖a − b‖ / ‖b‖, or ‖a − b‖ when b is zero (the pad token's row is all zeros). */
static double relative_error(const float *a, const float *b, size_t n)
{
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < n; i++) {
        diff += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        norm += (double)b[i] * b[i];
    }
    return norm > 0.0 ? sqrt(diff / norm) : sqrt(diff);
}

static int32_t argmax(const float *row, size_t n)
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
static float *infer_all(session *s, const int32_t *ids, size_t n)
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

static const char F32_CACHE[] = "kv_cache:\n  dtype: f32\n";

/* One forward step of a mixed batch: `take[q]` next tokens of each sequence q (0 = none). */
static void forward_step(session *s, const int32_t *seq_ids_of, const size_t *take,
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

static void batched_forward_equals_one_sequence_at_a_time(void **state)
{
    (void)state;
    session s;
    /* Blocks of 4 tokens: every sequence spans several blocks, interleaved in the pool. */
    open_ok(&s, "kv_cache: {dtype: f32, block_size: 4, max_tokens: 64}\n", ref.dir, NULL);
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
            if (e > SAME_MATH_TOLERANCE)
                fail_msg("sequence %zu position %zu: batched differs by %.3g", q, p, e);
        }
        s.model->seq_close(s.model->self, seq_ids[q]);
        free(alone[q]);
        free(batched[q]);
    }
    close_session(&s);
}

/* Greedy decoding of every fixture sequence at once: one prefill batch, then one batch per
 * step holding the last token of each sequence. */
static void greedy_continuations_match_the_reference(void **state)
{
    (void)state;
    session s;
    open_ok(&s, "kv_cache: {dtype: f32, block_size: 4}\n", ref.dir, NULL);
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

static int collect(void *user, int32_t id, const char *text, size_t len)
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

static void chat_reply_matches_the_reference(void **state)
{
    (void)state;
    session s;
    open_ok(&s, F32_CACHE, ref.dir, NULL);
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
/* The fixtures                                                                               */
/* ------------------------------------------------------------------------------------------ */

static double worst_error_against_reference(session *s)
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

/* Every position of every sequence, with an F32 and with the default BF16 KV cache. */
static void logits_of(const char *fixture)
{
    assert_int_equal(use_fixture(fixture), 0);
    const char *caches[] = {F32_CACHE, NULL};
    for (size_t i = 0; i < 2; i++) {
        session s;
        open_ok(&s, caches[i], fixture, NULL);
        assert_int_equal(s.model->vocab_size, ref.logits.cols);
        double worst = worst_error_against_reference(&s);
        print_message("%s: max relative logits error, %s KV cache: %.3g\n", fixture,
                      i == 0 ? "F32" : "BF16", worst);
        assert_true(worst <= (i == 0 ? F32_CACHE_LOGITS_TOLERANCE : LOGITS_TOLERANCE));
        close_session(&s);
    }
}

static void tiny_logits_match_the_reference(void **state)
{
    (void)state;
    logits_of(TINY);
}

static void tiny_batched_forward_equals_one_sequence_at_a_time(void **state)
{
    assert_int_equal(use_fixture(TINY), 0);
    batched_forward_equals_one_sequence_at_a_time(state);
}

static void tiny_greedy_continuations_match_the_reference(void **state)
{
    assert_int_equal(use_fixture(TINY), 0);
    greedy_continuations_match_the_reference(state);
}

static void tiny_chat_reply_matches_the_reference(void **state)
{
    assert_int_equal(use_fixture(TINY), 0);
    chat_reply_matches_the_reference(state);
}

/*
 * The router near-ties fixture: in every layer expert 5 differs from expert 2 by one weight of
 * one bf16 step and expert 7 is expert 0 scaled by 1.001, so the top-3 choice often hangs on a
 * small logit difference (e.g. layer 0, position 0: experts 5 and 2 at p = 0.10921 and 0.10901).
 * With fp32 math throughout (F32 KV cache) our selection must equal the reference's at every
 * token, which shows as logits equal to fp32 rounding; one flipped choice gives errors of ~0.1.
 * (The BF16 KV cache rounds the attention inputs enough to flip some of these choices, which is
 * why this fixture is checked with the F32 cache only. Exact ties are not used: torch's CPU
 * topk orders equal values in no fixed way — see tools/make_model_fixtures.py.)
 */
static void router_near_ties_select_like_the_reference(void **state)
{
    assert_int_equal(use_fixture(TIES), 0);
    session s;
    open_ok(&s, F32_CACHE, TIES, NULL);
    double worst = worst_error_against_reference(&s);
    print_message("%s: max relative logits error, F32 KV cache: %.3g\n", TIES, worst);
    assert_true(worst <= F32_CACHE_LOGITS_TOLERANCE);
    close_session(&s);
    greedy_continuations_match_the_reference(state);
}

/* ------------------------------------------------------------------------------------------ */
/* Tools                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static char scratch[64];

static int make_scratch(void **state)
{
    (void)state;
    snprintf(scratch, sizeof scratch, "/tmp/pio-qwen3-moe-XXXXXX");
    return mkdtemp(scratch) == NULL;
}

static int remove_scratch(void **state)
{
    (void)state;
    char command[128];
    snprintf(command, sizeof command, "rm -rf '%s'", scratch);
    return system(command);
}

#define CHAT_CASES "tests/fixtures/chat/cases.json"
#define CODER_TOOLS_CASE "qwen3_coder_30b/tools_with_system"

static const json_t *find_case(const json_t *cases, const char *name)
{
    const json_t *list = json_object_get(cases, "cases");
    for (size_t i = 0; i < json_array_size(list); i++)
        if (strcmp(json_string_value(json_object_get(json_array_get(list, i), "name")), name) ==
            0)
            return json_array_get(list, i);
    fail_msg("%s: no case %s", CHAT_CASES, name);
    return NULL;
}

/* The case's conversation with tools, rendered by the plugin's chat format, is byte-identical
 * to transformers' apply_chat_template; chat_completion takes the tools and, as the tiny model
 * writes no tool call, returns its text and no calls. */
static void chat_with_tools_renders_like_the_reference(void **state)
{
    (void)state;
    json_error_t error;
    json_t *cases = json_load_file(CHAT_CASES, 0, &error);
    assert_non_null(cases);
    const json_t *c = find_case(cases, CODER_TOOLS_CASE);
    const json_t *messages = json_object_get(c, "messages");
    pio_chat_message storage[2];
    const pio_chat_message *pointers[2];
    assert_int_equal(json_array_size(messages), 2);
    for (size_t i = 0; i < 2; i++) {
        const json_t *m = json_array_get(messages, i);
        storage[i] = (pio_chat_message){.struct_size = sizeof storage[i],
                                        .role = json_string_value(json_object_get(m, "role")),
                                        .content = json_string_value(json_object_get(m, "content"))};
        pointers[i] = &storage[i];
    }
    char *tools = json_dumps(json_object_get(c, "tools"), JSON_COMPACT);
    pio_sampling_params greedy = {.struct_size = sizeof greedy,
                                  .fields_set = PIO_SAMPLING_TEMPERATURE, .temperature = 0.0f};
    pio_chat_request req = {.struct_size = sizeof req, .messages = pointers, .n_messages = 2,
                            .tools_json = tools, .add_generation_prompt = 1,
                            .enable_thinking = -1, .max_new_tokens = 6, .sampling = &greedy};
    char *prompt = NULL;
    pio_error err;
    assert_int_equal(pio_chat_render_request(PIO_CHAT_FORMAT_QWEN3_CODER, &req, &prompt, NULL,
                                             &err), PIO_OK);
    assert_string_equal(prompt, json_string_value(json_object_get(c, "expected")));

    /* The tools make a prompt of ~1000 tiny-BPE tokens: the fixture with room for them (RoPE
     * has no length limit; only the config's cap changes). */
    char command[1024], dir[128];
    snprintf(dir, sizeof dir, "%s/long_context", scratch);
    snprintf(command, sizeof command, "mkdir -p %s && cp " TINY "/*.json " TINY
             "/model.safetensors %s/ && sed -i 's/\"max_position_embeddings\": 512/"
             "\"max_position_embeddings\": 2048/' %s/config.json", dir, dir, dir);
    assert_int_equal(system(command), 0);
    session s;
    open_ok(&s, F32_CACHE, dir, NULL);
    assert_true(s.registry.plugins[0].descriptor->capabilities & PIO_CAP_TOOLS);
    int32_t *ids = malloc(strlen(prompt) * sizeof *ids);
    size_t n_ids = 0;
    assert_int_equal(s.vt->tokenize(s.inst, prompt, strlen(prompt), 0, ids, strlen(prompt),
                                    &n_ids), PIO_OK);
    pio_generate_response resp = {.struct_size = sizeof resp};
    pio_status status = s.vt->chat_completion(s.inst, &req, &resp);
    if (status != PIO_OK)
        fail_msg("chat_completion: %s (prompt of %zu tokens)", s.state.last_error, n_ids);
    assert_int_equal(resp.usage.prompt_tokens, n_ids); /* the same prompt went in */
    assert_non_null(resp.text);
    assert_int_equal(resp.n_tool_calls, 0);
    assert_int_equal(resp.finish_reason, PIO_FINISH_LENGTH);
    s.vt->free_response(s.inst, &resp);
    close_session(&s);
    free(ids);
    free(prompt);
    free(tools);
    json_decref(cases);
}

/* What the runtime does with generated text in a chat with tools: a Coder XML call becomes
 * a name and JSON arguments typed by the schema; a malformed one stays text. */
static void generated_tool_calls_parse_and_malformed_ones_stay_text(void **state)
{
    (void)state;
    json_error_t error;
    json_t *cases = json_load_file(CHAT_CASES, 0, &error);
    char *tools = json_dumps(json_object_get(find_case(cases, CODER_TOOLS_CASE), "tools"),
                             JSON_COMPACT);
    static const char call[] = "Let me check.\n<tool_call>\n<function=get_weather>\n"
                               "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n"
                               "</parameter>\n</function>\n</tool_call>";
    pio_tool_call_list list;
    pio_error err;
    assert_int_equal(pio_tool_calls_parse(PIO_CHAT_FORMAT_QWEN3_CODER, call, strlen(call), tools,
                                          &list, &err), PIO_OK);
    assert_int_equal(list.n_calls, 1);
    assert_string_equal(list.calls[0].name, "get_weather");
    assert_string_equal(list.calls[0].arguments_json, "{\"city\": \"Paris\", \"days\": 2}");
    assert_string_equal(list.text, "Let me check.");
    pio_tool_call_list_free(&list);

    static const char broken[] = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis";
    assert_int_equal(pio_tool_calls_parse(PIO_CHAT_FORMAT_QWEN3_CODER, broken, strlen(broken),
                                          tools, &list, &err), PIO_OK);
    assert_int_equal(list.n_calls, 0);
    assert_string_equal(list.text, broken);
    pio_tool_call_list_free(&list);
    free(tools);
    json_decref(cases);
}

/* ------------------------------------------------------------------------------------------ */
/* Dummy weights and malformed checkpoints                                                    */
/* ------------------------------------------------------------------------------------------ */

/* The tiny config alone (no weights): dummy values of its shape run and are reproducible. */
static void dummy_weights_of_the_tiny_config(void **state)
{
    (void)state;
    char command[512], dir[128];
    snprintf(dir, sizeof dir, "%s/config_only", scratch);
    snprintf(command, sizeof command, "mkdir -p %s && cp " TINY "/config.json " TINY
             "/generation_config.json %s/", dir, dir);
    assert_int_equal(system(command), 0);
    float *first = NULL;
    for (int run = 0; run < 2; run++) {
        session s;
        pio_status status = open_session(&s, "model: {seed: 7}\n", dir, "dummy");
        if (status != PIO_OK)
            fail_msg("dummy load: %s", s.state.last_error);
        pio_model_info info = {.struct_size = sizeof info};
        assert_int_equal(s.vt->get_model_info(s.inst, &info), PIO_OK);
        assert_string_equal(info.architecture, "Qwen3MoeForCausalLM");
        /* router 12·80, packed experts 12·3·48·80 per layer, attention and norms, 2 vocab */
        assert_true(info.n_parameters > 3 * 12 * 3 * 48 * 80);
        int32_t ids[] = {1, 2, 3, 4};
        float *logits = infer_all(&s, ids, 4);
        if (run == 0)
            first = logits;
        else {
            assert_memory_equal(first, logits, 4 * 1024 * sizeof(float));
            free(logits);
        }
        close_session(&s);
    }
    free(first);
}

/* scratch/NAME: the tiny fixture with tensor `drop` left out or `reshape` one row shorter. */
static void write_edited_checkpoint(const char *name, const char *drop, const char *reshape)
{
    char command[512], path[256];
    snprintf(command, sizeof command, "mkdir -p %s/%s && cp " TINY "/config.json %s/%s/",
             scratch, name, scratch, name);
    assert_int_equal(system(command), 0);
    pio_safetensors *st = NULL;
    pio_error err;
    assert_int_equal(pio_safetensors_open(TINY, &st, &err), PIO_OK);
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
    snprintf(path, sizeof path, "%s/%s/model.safetensors", scratch, name);
    assert_int_equal(pio_safetensors_write(path, kept, tensors, 0, NULL, &err), PIO_OK);
    free(tensors);
    pio_safetensors_close(st);
}

static void expect_load_failure(const char *folder, pio_status status, const char *part1,
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
    close_session(&s);
}

static void malformed_expert_checkpoints_name_file_and_tensor(void **state)
{
    (void)state;
    write_edited_checkpoint("missing", "model.layers.1.mlp.experts.7.up_proj.weight", NULL);
    expect_load_failure("missing", PIO_ERR_NOT_FOUND, "missing/model.safetensors",
                        "model.layers.1.mlp.experts.7.up_proj.weight");
    write_edited_checkpoint("shape", NULL, "model.layers.2.mlp.experts.11.down_proj.weight");
    expect_load_failure("shape", PIO_ERR_FORMAT, "shape/model.safetensors: "
                        "model.layers.2.mlp.experts.11.down_proj.weight",
                        "expected [80, 48], file has [79, 48]");
    write_edited_checkpoint("router", NULL, "model.layers.0.mlp.gate.weight");
    expect_load_failure("router", PIO_ERR_FORMAT, "model.layers.0.mlp.gate.weight",
                        "expected [12, 80], file has [11, 80]");
}

/* Variants of Qwen3-MoE this plugin does not implement are refused by name. */
static void unimplemented_variants_are_refused(void **state)
{
    (void)state;
    static const char *const edits[][3] = {
        {"sparse_step", "\"decoder_sparse_step\": 1", "\"decoder_sparse_step\": 2"},
        {"dense_layers", "\"mlp_only_layers\": \\[\\]", "\"mlp_only_layers\": [1]"},
        {"top_k", "\"num_experts_per_tok\": 3", "\"num_experts_per_tok\": 13"},
    };
    static const char *const expected[] = {"\"decoder_sparse_step\" is 2",
                                           "\"mlp_only_layers\" is not empty",
                                           "\"num_experts_per_tok\" (13) exceeds"};
    for (size_t i = 0; i < 3; i++) {
        char command[512];
        snprintf(command, sizeof command, "mkdir -p %s/%s && cp " TINY "/config.json " TINY
                 "/model.safetensors %s/%s/ && sed -i 's/%s/%s/' %s/%s/config.json", scratch,
                 edits[i][0], scratch, edits[i][0], edits[i][1], edits[i][2], scratch,
                 edits[i][0]);
        assert_int_equal(system(command), 0);
        expect_load_failure(edits[i][0], i == 2 ? PIO_ERR_CONFIG : PIO_ERR_UNSUPPORTED,
                            "config.json", expected[i]);
    }
}

static int release_reference(void **state)
{
    (void)state;
    free_reference();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tiny_logits_match_the_reference),
        cmocka_unit_test(tiny_batched_forward_equals_one_sequence_at_a_time),
        cmocka_unit_test(tiny_greedy_continuations_match_the_reference),
        cmocka_unit_test(tiny_chat_reply_matches_the_reference),
        cmocka_unit_test(router_near_ties_select_like_the_reference),
        cmocka_unit_test_setup_teardown(chat_with_tools_renders_like_the_reference, make_scratch,
                                        remove_scratch),
        cmocka_unit_test(generated_tool_calls_parse_and_malformed_ones_stay_text),
        cmocka_unit_test_setup_teardown(dummy_weights_of_the_tiny_config, make_scratch,
                                        remove_scratch),
        cmocka_unit_test_setup_teardown(malformed_expert_checkpoints_name_file_and_tensor,
                                        make_scratch, remove_scratch),
        cmocka_unit_test_setup_teardown(unimplemented_variants_are_refused, make_scratch,
                                        remove_scratch),
    };
    return cmocka_run_group_tests(tests, NULL, release_reference);
}
