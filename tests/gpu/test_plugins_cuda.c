/*
 * The model plugins end to end on the CUDA backend, against the transformers references of
 * tests/fixtures/models (as the CPU tests check them): logits of every position, greedy
 * continuations (decode steps run as recorded graphs), graph replay equal to running the
 * same steps directly (runtime.cuda_graphs: false), and sampling on the GPU equal to sampling
 * on the host. Run by `make test-gpu` from the repository
 * root; the plugins are found beside the test (bundle: ../plugins; build: ../../plugins).
 *
 * Precision. With BF16 weights the CUDA matmul rounds x to bf16 for the tensor-core path
 * (batches above two rows), as transformers' bf16 models do: measured 6e-3 relative on the dense
 * fixture's logits, within the 1e-2. That rounding is enough to flip a near-tie, so the
 * checks that must match the fp32 reference token for token (greedy continuations, and the
 * MoE router's expert choices inside the logits check) run in the exact-fp32 mode
 * (PIO_CUDA_GEMV_MAX_M large: every matmul through the fp32 GEMV kernel, as the CPU computes).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <libgen.h>
#include <limits.h>
#include <unistd.h>

static char plugin_so[PATH_MAX + 64];
#define PLUGIN_SO plugin_so
#define SESSION_DEVICE "cuda"
#include "tests/plugin_reference.h"
#include "tests/device_sampling.h"

#define DENSE "tests/fixtures/models/qwen3_tiny"
#define MOE "tests/fixtures/models/qwen3_moe_tiny"
#define LOGITS_TOLERANCE 1e-2
#define GREEDY_CACHE "kv_cache: {dtype: f32, block_size: 4}\n"

/* Points plugin_so at NAME.so beside the test program; 0 when it exists. */
static int use_plugin(const char *name)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return -1;
    exe[n] = '\0';
    const char *dir = dirname(exe);
    const char *tries[] = {"../plugins", "../../plugins"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(plugin_so, sizeof plugin_so, "%s/%s/%s.so", dir, tries[i], name);
        if (access(plugin_so, R_OK) == 0)
            return 0;
    }
    fprintf(stderr, "test_plugins_cuda: %s.so not found beside %s\n", name, dir);
    return -1;
}

/* Contexts made after this call run every matmul in fp32 (exact) or the default way. */
static void exact_fp32(int on)
{
    if (on)
        setenv("PIO_CUDA_GEMV_MAX_M", "1000000000", 1);
    else
        unsetenv("PIO_CUDA_GEMV_MAX_M");
}

static void logits_of(const char *plugin, const char *fixture, int exact)
{
    assert_int_equal(use_plugin(plugin), 0);
    assert_int_equal(reference_load(fixture), 0);
    exact_fp32(exact);
    check_logits_against_reference(exact ? "exact fp32" : fixture, F32_CACHE, "F32",
                                   LOGITS_TOLERANCE);
    check_logits_against_reference(exact ? "exact fp32" : fixture, NULL, "BF16",
                                   LOGITS_TOLERANCE);
    exact_fp32(0);
}

static void dense_logits_match_the_reference(void **state)
{
    (void)state;
    logits_of("qwen3_4b_instruct_2507", DENSE, 0);
    logits_of("qwen3_4b_instruct_2507", DENSE, 1);
}

static void moe_logits_match_the_reference(void **state)
{
    (void)state;
    logits_of("qwen3_coder_30b", MOE, 1);
}

static void dense_greedy_continuations_match_the_reference(void **state)
{
    (void)state;
    assert_int_equal(use_plugin("qwen3_4b_instruct_2507"), 0);
    assert_int_equal(reference_load(DENSE), 0);
    exact_fp32(1);
    check_greedy_continuations_against_reference(GREEDY_CACHE);
    exact_fp32(0);
}

static void moe_greedy_continuations_match_the_reference(void **state)
{
    (void)state;
    assert_int_equal(use_plugin("qwen3_coder_30b"), 0);
    assert_int_equal(reference_load(MOE), 0);
    exact_fp32(1);
    check_greedy_continuations_against_reference(GREEDY_CACHE);
    exact_fp32(0);
}

enum { STEPS = 12 };

/* Prefills every fixture sequence, then STEPS decode steps of all of them together (the
 * graph-eligible shape), feeding the argmax back; returns the logits of every step. */
static float *decode_steps(const char *yaml)
{
    session s;
    open_ok(&s, yaml, ref.dir, NULL);
    size_t vocab = s.model->vocab_size, n = ref.n_seqs;
    float *all = malloc(STEPS * n * vocab * sizeof *all);
    int32_t seq[MAX_SEQS], next[MAX_SEQS], rows[MAX_SEQS];
    pio_error err;
    for (size_t q = 0; q < n; q++) {
        assert_int_equal(s.model->seq_open(s.model->self, &seq[q], &err), PIO_OK);
        int32_t *owners = malloc(ref.seq_len[q] * sizeof *owners);
        for (size_t i = 0; i < ref.seq_len[q]; i++)
            owners[i] = seq[q];
        int32_t last = (int32_t)ref.seq_len[q] - 1;
        pio_textgen_batch b = {.struct_size = sizeof b, .n_tokens = ref.seq_len[q],
                               .tokens = ref.seqs[q], .seq_ids = owners, .n_logits_rows = 1,
                               .logits_rows = &last, .logits = all};
        assert_int_equal(s.model->forward(s.model->self, &b, &err), PIO_OK);
        next[q] = argmax(all, vocab);
        rows[q] = (int32_t)q;
        free(owners);
    }
    for (int step = 0; step < STEPS; step++) {
        float *logits = all + (size_t)step * n * vocab;
        pio_textgen_batch b = {.struct_size = sizeof b, .n_tokens = n, .tokens = next,
                               .seq_ids = seq, .n_logits_rows = n, .logits_rows = rows,
                               .logits = logits};
        pio_status st = s.model->forward(s.model->self, &b, &err);
        if (st != PIO_OK)
            fail_msg("decode step %d: %s", step, err.message);
        for (size_t q = 0; q < n; q++)
            next[q] = argmax(logits + q * vocab, vocab);
    }
    close_session(&s);
    return all;
}

/* The same decode steps replayed from graphs and run directly give the same bits: the graphs
 * hold the very kernels, with the inputs of each step staged before the replay. */
static void graph_replay_equals_direct(const char *plugin, const char *fixture)
{
    assert_int_equal(use_plugin(plugin), 0);
    assert_int_equal(reference_load(fixture), 0);
    float *graphs = decode_steps("kv_cache: {block_size: 4}\n");
    float *direct = decode_steps("kv_cache: {block_size: 4}\nruntime: {cuda_graphs: false}\n");
    size_t count = STEPS * ref.n_seqs * ref.logits.cols;
    for (size_t i = 0; i < count; i++)
        if (memcmp(&graphs[i], &direct[i], sizeof(float)) != 0)
            fail_msg("%s: step %zu, value %zu: graph %.9g, direct %.9g", fixture,
                     i / (ref.n_seqs * ref.logits.cols), i % ref.logits.cols, graphs[i],
                     direct[i]);
    free(graphs);
    free(direct);
}

static void dense_graph_replay_equals_direct(void **state)
{
    (void)state;
    graph_replay_equals_direct("qwen3_4b_instruct_2507", DENSE);
}

static void moe_graph_replay_equals_direct(void **state)
{
    (void)state;
    graph_replay_equals_direct("qwen3_coder_30b", MOE);
}

/* Sampling on the GPU (PIO_TEXTGEN_FEATURE_SAMPLE): a prefill's sampled rows equal the host
 * sampler on the logits it returns, and generation sampling on the GPU (decode steps replayed
 * from graphs that end in pk_sample or the argmax, or followed by pk_sample for penalties)
 * equals copying the logits and sampling on the host, token for token, over the grid of
 * settings and seeds (tests/device_sampling.h). */
static void dense_device_sampling_equals_host_sampling(void **state)
{
    (void)state;
    assert_int_equal(use_plugin("qwen3_4b_instruct_2507"), 0);
    assert_int_equal(reference_load(DENSE), 0);
    session s;
    open_ok(&s, "kv_cache: {block_size: 4}\n", ref.dir, NULL);
    check_sampled_forward_equals_host_sampler(&s);
    check_bad_sample_rows_are_clear_errors(&s);
    check_generation_equals_host_sampling(&s, DENSE);
    close_session(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(dense_logits_match_the_reference),
        cmocka_unit_test(dense_greedy_continuations_match_the_reference),
        cmocka_unit_test(dense_graph_replay_equals_direct),
        cmocka_unit_test(dense_device_sampling_equals_host_sampling),
        cmocka_unit_test(moe_logits_match_the_reference),
        cmocka_unit_test(moe_greedy_continuations_match_the_reference),
        cmocka_unit_test(moe_graph_replay_equals_direct),
    };
    return cmocka_run_group_tests(tests, NULL, reference_group_teardown);
}
