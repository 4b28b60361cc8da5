/*
 * Tensor parallelism on the CPU communicator (issue 8), for both model plugins:
 * qwen3_4b_instruct_2507 on tests/fixtures/models/qwen3_tiny (4 q heads, 2 KV heads, so the KV
 * heads are replicated at tp = 4; intermediate 160) and qwen3_coder_30b on qwen3_moe_tiny
 * (4 q heads, 1 KV head; 12 experts, top-3, so each rank owns 6 or 3 experts). YAML
 * parallel.tensor_parallel_size 2 and 4 against tp = 1 — logits of every position of every
 * fixture sequence, a batched forward, greedy continuations — and sizes that do not divide,
 * refused with the key and the numbers. fp32 math (F32 KV cache).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* The plugin under test; each group of tests sets it (plugin_session.h loads PLUGIN_SO). */
static const char *plugin_so;
#define PLUGIN_SO plugin_so
#define PLUGIN_DIR PIO_TEST_BUILD_DIR "/plugins"
#define SCRATCH_TEMPLATE "/tmp/pio-tp-XXXXXX"
#include "plugin_reference.h"

#define DENSE_FIXTURE "tests/fixtures/models/qwen3_tiny"
#define MOE_FIXTURE "tests/fixtures/models/qwen3_moe_tiny"

/* The bar between tp = N and tp = 1 (the row-parallel and expert sums are all-reduced
 * in another order). */
#define TP_TOLERANCE 1e-3
/* Against the transformers reference, as tp = 1 (test_qwen3_plugin.c, test_qwen3_coder_plugin.c). */
#define F32_CACHE_TOLERANCE 1e-5

static int use_dense_model(void **state)
{
    (void)state;
    plugin_so = PLUGIN_DIR "/qwen3_4b_instruct_2507.so";
    return reference_load(DENSE_FIXTURE);
}

static int use_moe_model(void **state)
{
    (void)state;
    plugin_so = PLUGIN_DIR "/qwen3_coder_30b.so";
    return reference_load(MOE_FIXTURE);
}

/* Logits of every position of every fixture sequence at tp = 1, 2 and 4. */
static void logits_at_tp_2_and_4_equal_tp_1(void **state)
{
    (void)state;
    const int sizes[] = {2, 4};
    check_logits_at_tp_sizes(ref.dir, sizes, 2, TP_TOLERANCE, F32_CACHE_TOLERANCE);
}

/* Several sequences in one batch, spread over KV blocks of 4 tokens on every rank's pool. */
static void batched_forward_at_tp_4_equals_one_sequence_at_a_time(void **state)
{
    (void)state;
    check_batched_forward_equals_one_sequence_at_a_time(
        "kv_cache: {dtype: f32, block_size: 4, max_tokens: 64}\n"
        "parallel: {tensor_parallel_size: 4}\n", 1e-5);
}

/* The reference's greedy continuations are tp = 1's (the plugin tests check that). */
static void greedy_continuations_at_tp_2_and_4_equal_the_reference(void **state)
{
    (void)state;
    char yaml[160];
    tp_yaml(yaml, sizeof yaml, 2, ", block_size: 4");
    check_greedy_continuations_against_reference(yaml);
    tp_yaml(yaml, sizeof yaml, 4, ", block_size: 4");
    check_greedy_continuations_against_reference(yaml);
}

/* tp does not divide the heads: refused before any weight is read. */
static void expect_heads_refusal(int tp)
{
    session s;
    char yaml[160], message[128];
    tp_yaml(yaml, sizeof yaml, tp, "");
    assert_int_equal(open_session(&s, yaml, ref.dir, NULL), PIO_ERR_CONFIG);
    snprintf(message, sizeof message,
             "parallel.tensor_parallel_size %d does not divide num_attention_heads 4", tp);
    expect_error(&s, message);
    expect_error(&s, "config.json");
    assert_null(s.vt->get_extension(s.inst, PIO_TEXTGEN_MODEL_EXTENSION));
    close_session(&s);
}

/* A copy of the fixture's config with `from` replaced by `to` (dummy weights): tp = 4 is refused
 * with `message`, tp = 2 loads. */
static void expect_edited_config_refusal(const char *from, const char *to, const char *message)
{
    assert_int_equal(shell("mkdir -p %s/edited && cp %s/generation_config.json %s/edited/ && "
                           "sed 's/%s/%s/' %s/config.json > %s/edited/config.json && "
                           "grep -q '%s' %s/edited/config.json",
                           scratch, ref.dir, scratch, from, to, ref.dir, scratch, to, scratch),
                     0);
    char dir[128], yaml[160];
    snprintf(dir, sizeof dir, "%s/edited", scratch);
    session s;
    tp_yaml(yaml, sizeof yaml, 4, "");
    assert_int_equal(open_session(&s, yaml, dir, "dummy"), PIO_ERR_CONFIG);
    expect_error(&s, message);
    expect_error(&s, "config.json");
    assert_null(s.vt->get_extension(s.inst, PIO_TEXTGEN_MODEL_EXTENSION));
    close_session(&s);
    tp_yaml(yaml, sizeof yaml, 2, "");
    open_ok(&s, yaml, dir, "dummy");
    close_session(&s);
}

static void dense_sizes_that_do_not_divide_are_clear_errors(void **state)
{
    (void)state;
    expect_heads_refusal(3);
    /* 162 = 4·40 + 2: the heads divide, the intermediate size does not. */
    expect_edited_config_refusal("\"intermediate_size\": 160", "\"intermediate_size\": 162",
                                 "parallel.tensor_parallel_size 4 does not divide "
                                 "intermediate_size 162");
}

static void moe_sizes_that_do_not_divide_are_clear_errors(void **state)
{
    (void)state;
    expect_heads_refusal(5);
    /* 10 experts: the heads divide by 4, the experts do not. */
    expect_edited_config_refusal("\"num_local_experts\": 12", "\"num_local_experts\": 10",
                                 "parallel.tensor_parallel_size 4 does not divide the expert "
                                 "count 10");
}

int main(void)
{
    const struct CMUnitTest dense[] = {
        cmocka_unit_test(logits_at_tp_2_and_4_equal_tp_1),
        cmocka_unit_test(batched_forward_at_tp_4_equals_one_sequence_at_a_time),
        cmocka_unit_test(greedy_continuations_at_tp_2_and_4_equal_the_reference),
        cmocka_unit_test_setup_teardown(dense_sizes_that_do_not_divide_are_clear_errors,
                                        make_scratch, remove_scratch),
    };
    const struct CMUnitTest moe[] = {
        cmocka_unit_test(logits_at_tp_2_and_4_equal_tp_1),
        cmocka_unit_test(batched_forward_at_tp_4_equals_one_sequence_at_a_time),
        cmocka_unit_test(greedy_continuations_at_tp_2_and_4_equal_the_reference),
        cmocka_unit_test_setup_teardown(moe_sizes_that_do_not_divide_are_clear_errors,
                                        make_scratch, remove_scratch),
    };
    int failed = cmocka_run_group_tests_name("dense", dense, use_dense_model,
                                             reference_group_teardown);
    return failed + cmocka_run_group_tests_name("moe", moe, use_moe_model,
                                                reference_group_teardown);
}
