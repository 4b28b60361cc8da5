/*
 * Tensor parallelism of the qwen3_4b_instruct_2507 plugin on the CPU communicator (issue 8):
 * YAML parallel.tensor_parallel_size 2 and 4 on tests/fixtures/models/qwen3_tiny (4 q heads,
 * 2 KV heads, so the KV heads are replicated at 4; intermediate 160) against tp = 1 — logits of
 * every position of every fixture sequence, batched forwards, greedy continuations — and the
 * sizes that do not divide, refused with the key and the numbers. fp32 math (F32 KV cache).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#define PLUGIN_DIR PIO_TEST_BUILD_DIR "/plugins"
#define PLUGIN_SO PLUGIN_DIR "/qwen3_4b_instruct_2507.so"
#define SCRATCH_TEMPLATE "/tmp/pio-tp-XXXXXX"
#include "plugin_reference.h"
#define FIXTURE "tests/fixtures/models/qwen3_tiny"

/* The bar between tp = N and tp = 1 (the sums of the row-parallel projections are taken
 * in another order). */
#define TP_TOLERANCE 1e-3
/* Against the transformers reference, as tp = 1 (test_qwen3_plugin.c). */
#define F32_CACHE_TOLERANCE 1e-5

static int load_reference(void **state)
{
    (void)state;
    return reference_load(FIXTURE);
}

static void tp_yaml(char *yaml, size_t size, int tp, const char *extra)
{
    snprintf(yaml, size, "kv_cache: {dtype: f32%s}\nparallel: {tensor_parallel_size: %d}\n",
             extra, tp);
}

/* Logits of every position of every fixture sequence at tp = 1, 2 and 4. */
static void logits_at_tp_2_and_4_equal_tp_1(void **state)
{
    (void)state;
    float *base[MAX_SEQS];
    session s;
    char yaml[160];
    tp_yaml(yaml, sizeof yaml, 1, "");
    open_ok(&s, yaml, FIXTURE, NULL);
    for (size_t q = 0; q < ref.n_seqs; q++)
        base[q] = infer_all(&s, ref.seqs[q], ref.seq_len[q]);
    close_session(&s);
    const int sizes[] = {2, 4};
    for (size_t i = 0; i < 2; i++) {
        tp_yaml(yaml, sizeof yaml, sizes[i], "");
        open_ok(&s, yaml, FIXTURE, NULL);
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
        assert_true(worst <= TP_TOLERANCE);
        assert_true(worst_ref <= F32_CACHE_TOLERANCE);
        close_session(&s);
    }
    for (size_t q = 0; q < ref.n_seqs; q++)
        free(base[q]);
}

/* Several sequences in one batch, spread over KV blocks of 4 tokens on every rank's pool. */
static void batched_forward_at_tp_4_equals_one_sequence_at_a_time(void **state)
{
    (void)state;
    check_batched_forward_equals_one_sequence_at_a_time(
        "kv_cache: {dtype: f32, block_size: 4, max_tokens: 64}\n"
        "parallel: {tensor_parallel_size: 4}\n", 1e-5);
}

/* The reference's greedy continuations are tp = 1's (test_qwen3_plugin.c checks that). */
static void greedy_continuations_at_tp_2_and_4_equal_tp_1(void **state)
{
    (void)state;
    char yaml[160];
    tp_yaml(yaml, sizeof yaml, 2, ", block_size: 4");
    check_greedy_continuations_against_reference(yaml);
    tp_yaml(yaml, sizeof yaml, 4, ", block_size: 4");
    check_greedy_continuations_against_reference(yaml);
}

static void sizes_that_do_not_divide_are_clear_errors(void **state)
{
    (void)state;
    session s;
    char yaml[160];
    tp_yaml(yaml, sizeof yaml, 3, "");
    assert_int_equal(open_session(&s, yaml, FIXTURE, NULL), PIO_ERR_CONFIG);
    expect_error(&s, "parallel.tensor_parallel_size 3 does not divide num_attention_heads 4");
    expect_error(&s, "config.json");
    assert_null(s.vt->get_extension(s.inst, PIO_TEXTGEN_MODEL_EXTENSION));
    close_session(&s);

    /* 162 = 4·40 + 2: the heads divide, the intermediate size does not. */
    assert_int_equal(shell("mkdir -p %s/f162 && cp " FIXTURE "/generation_config.json %s/f162/ "
                           "&& sed 's/\"intermediate_size\": 160/\"intermediate_size\": 162/' "
                           FIXTURE "/config.json > %s/f162/config.json && grep -q 162 "
                           "%s/f162/config.json", scratch, scratch, scratch, scratch),
                     0);
    char dir[128];
    snprintf(dir, sizeof dir, "%s/f162", scratch);
    tp_yaml(yaml, sizeof yaml, 4, "");
    assert_int_equal(open_session(&s, yaml, dir, "dummy"), PIO_ERR_CONFIG);
    expect_error(&s, "parallel.tensor_parallel_size 4 does not divide intermediate_size 162");
    close_session(&s);
    tp_yaml(yaml, sizeof yaml, 2, "");
    open_ok(&s, yaml, dir, "dummy");
    close_session(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(logits_at_tp_2_and_4_equal_tp_1),
        cmocka_unit_test(batched_forward_at_tp_4_equals_one_sequence_at_a_time),
        cmocka_unit_test(greedy_continuations_at_tp_2_and_4_equal_tp_1),
        cmocka_unit_test_setup_teardown(sizes_that_do_not_divide_are_clear_errors, make_scratch,
                                        remove_scratch),
    };
    return cmocka_run_group_tests(tests, load_reference, reference_group_teardown);
}
