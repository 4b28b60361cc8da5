/*
 * Tensor parallelism on the CPU communicator (issue 8), for both model plugins:
 * qwen3_4b_instruct_2507 on tests/fixtures/models/qwen3_tiny (4 q heads, 2 KV heads, so the KV
 * heads are replicated at tp = 4; intermediate 160) and qwen3_coder_30b on qwen3_moe_tiny
 * (4 q heads, 1 KV head; 12 experts, top-3, so each rank owns 6 or 3 experts). YAML
 * parallel.tensor_parallel_size 2 and 4 against tp = 1 — logits of every position of every
 * fixture sequence, a batched forward, greedy continuations — and sizes that do not divide,
 * refused with the key and the numbers. fp32 math (F32 KV cache). Also: parallel.force_ranks
 * runs tp = 1 through the rank machinery with the plain path's logits, bit for bit; the rank
 * threads are made once at load and live until cleanup; and parallel.devices is checked (one
 * CUDA ordinal per rank, no GPU twice, GPUs that exist) before anything is loaded.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>

/* The plugin under test; each group of tests sets it (plugin_session.h loads PLUGIN_SO). */
static const char *plugin_so;
#define PLUGIN_SO plugin_so
/* The device sessions load on: "cpu", except for the parallel.devices checks. */
static const char *session_device = "cpu";
#define SESSION_DEVICE session_device
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

/* Logits of every position of every fixture sequence. The caller frees each. */
static void logits_of_every_sequence(const char *yaml, float **out)
{
    session s;
    open_ok(&s, yaml, ref.dir, NULL);
    for (size_t q = 0; q < ref.n_seqs; q++)
        out[q] = infer_all(&s, ref.seqs[q], ref.seq_len[q]);
    close_session(&s);
}

/* One rank through the rank machinery (its thread, a communicator of one rank) runs the same
 * ops on the same weights as the plain path, and a communicator of one never reduces: the
 * logits are the same bits. */
static void forced_ranks_at_tp_1_equal_the_plain_path_bit_for_bit(void **state)
{
    (void)state;
    float *plain[MAX_SEQS], *ranks[MAX_SEQS];
    logits_of_every_sequence("kv_cache: {dtype: f32}\n", plain);
    logits_of_every_sequence("kv_cache: {dtype: f32}\n"
                             "parallel: {tensor_parallel_size: 1, force_ranks: true}\n", ranks);
    for (size_t q = 0; q < ref.n_seqs; q++) {
        size_t bytes = ref.seq_len[q] * ref.logits.cols * sizeof(float);
        if (memcmp(plain[q], ranks[q], bytes) != 0)
            fail_msg("sequence %zu: forced ranks differ from the plain path by %.3g", q,
                     relative_error(ranks[q], plain[q], ref.seq_len[q] * ref.logits.cols));
        free(plain[q]);
        free(ranks[q]);
    }
}

/* The thread ids of this process's threads named pio-rank* (the rank threads), in the order
 * /proc lists them; returns how many. */
static size_t rank_threads(long *tids, size_t capacity)
{
    DIR *dir = opendir("/proc/self/task");
    assert_non_null(dir);
    size_t n = 0;
    for (struct dirent *e; (e = readdir(dir)) != NULL;) {
        char path[300], name[32] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = e->d_name[0] != '.' ? fopen(path, "r") : NULL;
        if (f == NULL)
            continue;
        if (fgets(name, sizeof name, f) != NULL && strncmp(name, "pio-rank", 8) == 0 &&
            n < capacity)
            tids[n++] = strtol(e->d_name, NULL, 10);
        fclose(f);
    }
    closedir(dir);
    return n;
}

/* Ranks 1..3 of tp = 4 run on threads made at load: the same threads serve every forward, and
 * cleanup joins them. */
static void rank_threads_live_from_load_to_cleanup(void **state)
{
    (void)state;
    long before[8], after[8];
    assert_int_equal(rank_threads(before, 8), 0);
    session s;
    char yaml[160];
    tp_yaml(yaml, sizeof yaml, 4, "");
    open_ok(&s, yaml, ref.dir, NULL);
    assert_int_equal(rank_threads(before, 8), 3);
    for (int i = 0; i < 3; i++)
        for (size_t q = 0; q < ref.n_seqs; q++)
            free(infer_all(&s, ref.seqs[q], ref.seq_len[q]));
    assert_int_equal(rank_threads(after, 8), 3);
    assert_memory_equal(before, after, sizeof(long) * 3);
    close_session(&s);
    assert_int_equal(rank_threads(after, 8), 0);
}

/* Loading on the cuda device with `devices` (a YAML list) at tp = 2 fails with `status` (or
 * `other`, when not PIO_OK) and `message`, before a GPU is needed. */
static void expect_devices_refusal(const char *devices, pio_status status, pio_status other,
                                   const char *message)
{
    char yaml[200];
    snprintf(yaml, sizeof yaml, "parallel: {tensor_parallel_size: 2, devices: %s}\n", devices);
    session s;
    session_device = "cuda";
    pio_status got = open_session(&s, yaml, ref.dir, NULL);
    session_device = "cpu";
    if (got != status && (other == PIO_OK || got != other))
        fail_msg("devices %s: load_model gave %s (%s)", devices, pio_status_str(got),
                 s.state.last_error);
    expect_error(&s, message);
    assert_null(s.vt->get_extension(s.inst, PIO_TEXTGEN_MODEL_EXTENSION));
    close_session(&s);
}

static void gpu_lists_that_do_not_fit_are_clear_errors(void **state)
{
    (void)state;
    expect_devices_refusal("[0, 1, 2]", PIO_ERR_CONFIG, PIO_OK,
                           "parallel.devices lists 3 GPUs but parallel.tensor_parallel_size "
                           "is 2: give one CUDA ordinal per rank");
    expect_devices_refusal("[1, 1]", PIO_ERR_CONFIG, PIO_OK,
                           "parallel.devices: CUDA ordinal 1 is listed twice (ranks 0 and 1)");
    /* No machine has 64 GPUs: PIO_ERR_CONFIG naming the count where GPUs exist, else
     * PIO_ERR_UNSUPPORTED (no usable GPU, or a build without CUDA). */
    expect_devices_refusal("[63, 62]", PIO_ERR_CONFIG, PIO_ERR_UNSUPPORTED,
                           "parallel.devices: rank 0 would run on cuda:63, but");
    /* On the cpu device the list is ignored (with a warning in the log). */
    session s;
    open_ok(&s, "parallel: {tensor_parallel_size: 2, devices: [7, 7, 7]}\n", ref.dir, NULL);
    close_session(&s);
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
        cmocka_unit_test(forced_ranks_at_tp_1_equal_the_plain_path_bit_for_bit),
        cmocka_unit_test(rank_threads_live_from_load_to_cleanup),
        cmocka_unit_test(gpu_lists_that_do_not_fit_are_clear_errors),
    };
    const struct CMUnitTest moe[] = {
        cmocka_unit_test(logits_at_tp_2_and_4_equal_tp_1),
        cmocka_unit_test(batched_forward_at_tp_4_equals_one_sequence_at_a_time),
        cmocka_unit_test(greedy_continuations_at_tp_2_and_4_equal_the_reference),
        cmocka_unit_test_setup_teardown(moe_sizes_that_do_not_divide_are_clear_errors,
                                        make_scratch, remove_scratch),
        cmocka_unit_test(forced_ranks_at_tp_1_equal_the_plain_path_bit_for_bit),
        cmocka_unit_test(rank_threads_live_from_load_to_cleanup),
    };
    int failed = cmocka_run_group_tests_name("dense", dense, use_dense_model,
                                             reference_group_teardown);
    return failed + cmocka_run_group_tests_name("moe", moe, use_moe_model,
                                                reference_group_teardown);
}
