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

#include "pio/tool_calls.h"

#define PLUGIN_DIR PIO_TEST_BUILD_DIR "/plugins"
#define PLUGIN_SO PLUGIN_DIR "/qwen3_coder_30b.so"
#define SCRATCH_TEMPLATE "/tmp/pio-qwen3-moe-XXXXXX"
#include "plugin_reference.h"

#define TINY "tests/fixtures/models/qwen3_moe_tiny"
#define TIES "tests/fixtures/models/qwen3_moe_router_ties"

/* ‖ours − ref‖ / ‖ref‖ per position against logits_f32.npy (the bar). */
#define LOGITS_TOLERANCE 1e-2
/* With an F32 KV cache the math is fp32 like the reference's: measured 5.2e-7 at worst. */
#define F32_CACHE_LOGITS_TOLERANCE 1e-5
/* Two runs of the same math in another batch layout. */
#define SAME_MATH_TOLERANCE 1e-5
/* The KV cache of the greedy continuations: fp32, blocks of 4 tokens. */
#define GREEDY_CACHE "kv_cache: {dtype: f32, block_size: 4}\n"

/* ------------------------------------------------------------------------------------------ */
/* The fixtures (the checks are plugin_reference.h's)                                         */
/* ------------------------------------------------------------------------------------------ */

/* Every position of every sequence, with an F32 and with the default BF16 KV cache. */
static void logits_of(const char *fixture)
{
    assert_int_equal(reference_load(fixture), 0);
    check_logits_against_reference(fixture, F32_CACHE, "F32", F32_CACHE_LOGITS_TOLERANCE);
    check_logits_against_reference(fixture, NULL, "BF16", LOGITS_TOLERANCE);
}

static void tiny_logits_match_the_reference(void **state)
{
    (void)state;
    logits_of(TINY);
}

static void tiny_batched_forward_equals_one_sequence_at_a_time(void **state)
{
    (void)state;
    assert_int_equal(reference_load(TINY), 0);
    /* Blocks of 4 tokens: every sequence spans several blocks, interleaved in the pool. */
    check_batched_forward_equals_one_sequence_at_a_time(
        "kv_cache: {dtype: f32, block_size: 4, max_tokens: 64}\n", SAME_MATH_TOLERANCE);
}

static void tiny_greedy_continuations_match_the_reference(void **state)
{
    (void)state;
    assert_int_equal(reference_load(TINY), 0);
    check_greedy_continuations_against_reference(GREEDY_CACHE);
}

static void tiny_chat_reply_matches_the_reference(void **state)
{
    (void)state;
    assert_int_equal(reference_load(TINY), 0);
    check_chat_reply_against_reference(F32_CACHE);
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
    (void)state;
    assert_int_equal(reference_load(TIES), 0);
    check_logits_against_reference(TIES, F32_CACHE, "F32", F32_CACHE_LOGITS_TOLERANCE);
    check_greedy_continuations_against_reference(GREEDY_CACHE);
}

/* ------------------------------------------------------------------------------------------ */
/* Tools                                                                                      */
/* ------------------------------------------------------------------------------------------ */

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
    char command[512];
    snprintf(command, sizeof command, "mkdir -p %s/%s && cp " TINY "/config.json %s/%s/",
             scratch, name, scratch, name);
    assert_int_equal(system(command), 0);
    write_edited_safetensors(TINY, name, drop, reshape);
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
    reference_free();
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
