/*
 * The pio executable end to end, driven like a user would: list, run, chat, logits, bench,
 * serve, --help, YAML configs and overrides, using the fixture plugins in build/test_plugins.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>

#define PIO PIO_TEST_BUILD_DIR "/bin/pio"
#define FIXTURES PIO_TEST_BUILD_DIR "/test_plugins"
#define ECHO " --plugin-dir " FIXTURES " --plugin good_a --set model.load_format=dummy "

static char scratch[256];

static int make_scratch(void **state)
{
    (void)state;
    snprintf(scratch, sizeof scratch, "/tmp/pio-cli-XXXXXX");
    return mkdtemp(scratch) == NULL;
}

static int remove_scratch(void **state)
{
    (void)state;
    char command[512];
    snprintf(command, sizeof command, "rm -rf '%s'", scratch);
    return system(command);
}

/* Runs a shell command; returns its exit status and (stdout+stderr) in *output (free it). */
static int run(char **output, const char *format, ...)
{
    char command[4096];
    va_list args;
    va_start(args, format);
    vsnprintf(command, sizeof command, format, args);
    va_end(args);
    strncat(command, " 2>&1", sizeof command - strlen(command) - 1);
    FILE *pipe = popen(command, "r");
    assert_non_null(pipe);
    size_t capacity = 1 << 16, len = 0;
    char *buf = malloc(capacity);
    assert_non_null(buf);
    size_t got;
    while ((got = fread(buf + len, 1, capacity - len - 1, pipe)) > 0)
        len += got;
    buf[len] = '\0';
    int status = pclose(pipe);
    *output = buf;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void expect_output(const char *output, const char *needle)
{
    if (strstr(output, needle) == NULL)
        fail_msg("expected '%s' in output:\n%s", needle, output);
}

static void write_file(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", scratch, name);
    FILE *file = fopen(path, "w");
    assert_non_null(file);
    fputs(text, file);
    fclose(file);
}

static void version_and_help(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(run(&out, PIO " --version"), 0);
    expect_output(out, "plugin ABI 1.1");
    free(out);
    const char *commands[] = {"list", "run", "chat", "bench", "logits", "serve", "tokenize",
                              "detokenize"};
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        assert_int_equal(run(&out, PIO " %s --help", commands[i]), 0);
        expect_output(out, "usage: pio");
        free(out);
    }
    assert_int_equal(run(&out, PIO " frobnicate"), 2);
    expect_output(out, "unknown command 'frobnicate'");
    free(out);
}

static void list_shows_good_plugins_and_one_line_per_bad_file(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(run(&out, PIO " list --plugin-dir " FIXTURES), 0);
    expect_output(out, "good_a ");
    expect_output(out, "EchoForCausalLM");
    expect_output(out, "good_b ");
    expect_output(out, "not_an_elf.so: not an ELF shared object");
    expect_output(out, "abi_major_mismatch.so: built for ABI 2.0");
    expect_output(out, "newer_minor.so: built for ABI 1.2, newer than this host's ABI 1.1");
    expect_output(out, "good_a_copy.so: duplicate plugin name 'good_a'");
    expect_output(out, "unresolved_symbol.so: cannot be loaded");
    int skipped = 0;
    for (const char *p = out; (p = strstr(p, "pio: skipping ")) != NULL; p++)
        skipped++;
    assert_int_equal(skipped, 9);
    free(out);

    assert_int_equal(run(&out, "PIO_PLUGIN_PATH=/nonexistent:" FIXTURES " " PIO " list"), 0);
    expect_output(out, "good_b ");
    expect_output(out, "/nonexistent: plugin directory cannot be read");
    free(out);

    assert_int_equal(run(&out, PIO " list --plugin-dir %s", scratch), 1);
    expect_output(out, "no plugin found");
    free(out);
}

static void run_streams_the_reply(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(run(&out, PIO " run" ECHO "-p hello"), 0);
    expect_output(out, "olleh\n[prompt 5 tokens");
    expect_output(out, "finish: stop");
    free(out);
    assert_int_equal(run(&out, "printf 'from stdin' | " PIO " run" ECHO "--raw -n 4"), 0);
    expect_output(out, "nidt\n");
    expect_output(out, "finish: length");
    free(out);
    assert_int_equal(run(&out, PIO " run" ECHO "-p x --temp warm"), 2);
    expect_output(out, "--temp expects a number, got 'warm'");
    free(out);
}

static void yaml_config_and_overrides(void **state)
{
    (void)state;
    write_file("echo.yaml", "plugin: good_a\n"
                            "plugins:\n  dir: " FIXTURES "\n"
                            "model:\n  load_format: dummy\n"
                            "plugin_options:\n  reply_prefix: \"Y:\"\n");
    char *out;
    assert_int_equal(run(&out, PIO " run -c %s/echo.yaml -p ab", scratch), 0);
    expect_output(out, "Y:ba\n");
    free(out);
    assert_int_equal(run(&out, PIO " run -c %s/echo.yaml -p abcd --set generation.max_new_tokens=2",
                         scratch), 0);
    expect_output(out, "Y:dc\n");
    free(out);

    write_file("typo.yaml", "plugin: good_a\nplugins:\n  dir: " FIXTURES "\n"
                            "model:\n  load_format: dummy\nkv_cache:\n  blok_size: 16\n");
    assert_int_equal(run(&out, PIO " run -c %s/typo.yaml -p ab", scratch), 0);
    expect_output(out, "typo.yaml:7:3");
    expect_output(out, "kv_cache.blok_size");
    free(out);

    write_file("bad_type.yaml", "plugin: good_a\nplugins:\n  dir: " FIXTURES "\n"
                                "model:\n  load_format: dummy\n"
                                "generation:\n  max_new_tokens: lots\n");
    assert_int_equal(run(&out, PIO " run -c %s/bad_type.yaml -p ab", scratch), 1);
    expect_output(out, "bad_type.yaml:7:19");
    free(out);

    write_file("broken.yaml", "plugin: good_a\nmodel:\n  path: [unclosed\n");
    assert_int_equal(run(&out, PIO " run -c %s/broken.yaml -p ab", scratch), 1);
    expect_output(out, "broken.yaml:");
    free(out);
}

static void plugin_selected_from_model_folder(void **state)
{
    (void)state;
    char *out;
    write_file("config.json", "{\"architectures\": [\"OtherEchoForCausalLM\"]}");
    assert_int_equal(run(&out, PIO " run --plugin-dir " FIXTURES " -m %s -p pq", scratch), 0);
    expect_output(out, "qp\n");
    free(out);
    write_file("config.json", "{\"architectures\": [\"LlamaForCausalLM\"]}");
    assert_int_equal(run(&out, PIO " run --plugin-dir " FIXTURES " -m %s -p pq", scratch), 1);
    expect_output(out, "no plugin serves the architectures [\"LlamaForCausalLM\"]");
    expect_output(out, "EchoForCausalLM (good_a)");
    free(out);
    assert_int_equal(run(&out, PIO " run --plugin-dir " FIXTURES " --plugin nope -p pq"), 1);
    expect_output(out, "no plugin named 'nope'");
    free(out);
}

static void chat_keeps_the_conversation_going(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(run(&out, "printf 'hello\\n/reset\\nworld\\n/exit\\nignored\\n' | " PIO
                               " chat" ECHO),
                     0);
    expect_output(out, "olleh\n");
    expect_output(out, "dlrow\n");
    assert_null(strstr(out, "deringi"));
    free(out);
}

static void logits_writes_a_npy_file(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(run(&out, PIO " logits" ECHO "--tokens 65,66,255 --out %s/l.npy", scratch), 0);
    free(out);
    char path[512];
    snprintf(path, sizeof path, "%s/l.npy", scratch);
    FILE *file = fopen(path, "rb");
    assert_non_null(file);
    unsigned char head[10];
    assert_int_equal(fread(head, 1, 10, file), 10);
    assert_memory_equal(head, "\x93NUMPY\x01\x00", 8);
    size_t header_len = head[8] | (size_t)head[9] << 8;
    assert_int_equal((10 + header_len) % 64, 0);
    char *dict = calloc(1, header_len + 1);
    assert_int_equal(fread(dict, 1, header_len, file), header_len);
    expect_output(dict, "'shape': (3, 258)");
    free(dict);
    float row[258];
    for (int r = 0; r < 3; r++) {
        assert_int_equal(fread(row, sizeof(float), 258, file), 258);
        int expected = (int[]){66, 67, 0}[r];
        for (int v = 0; v < 258; v++)
            assert_true(row[v] == (v == expected ? 1.0f : 0.0f));
    }
    assert_int_equal(fgetc(file), EOF);
    fclose(file);
    assert_int_equal(run(&out, PIO " logits" ECHO "--tokens 1,x --out %s/l.npy", scratch), 2);
    expect_output(out, "bad token id at character 3");
    free(out);
}

static void bench_reports_json(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(run(&out, PIO " bench" ECHO "-p 8 -n 4 -r 2 --json"), 0);
    expect_output(out, "\"test\": \"pp8\"");
    expect_output(out, "\"test\": \"tg4\"");
    expect_output(out, "\"ttft_ms\": ");
    expect_output(out, "\"raw_forward\": false");
    free(out);
    assert_int_equal(run(&out, PIO " bench" ECHO "-p 8 -n 0 -r 1"), 0);
    expect_output(out, "| good_a");
    free(out);
    /* Without the batched-forward extension the depth and batch tests are skipped. */
    assert_int_equal(run(&out, PIO " bench" ECHO "-p 0 -n 4 --depth 8 --batch 2 -r 1 --json"), 0);
    expect_output(out, "no pio.textgen.model.v1 extension; skipping the depth and batch tests");
    expect_output(out, "\"depths\": [8], \"batches\": [2]");
    assert_null(strstr(out, "tg4@"));
    free(out);
    /* -p takes a list, like llama-bench: a ppN test per count; 0 only alone. */
    assert_int_equal(run(&out, PIO " bench" ECHO "-p 8,16 -n 0 -r 1 --json"), 0);
    expect_output(out, "\"test\": \"pp8\"");
    expect_output(out, "\"test\": \"pp16\"");
    expect_output(out, "\"prompt_tokens\": 8, ");
    expect_output(out, "\"prompt_lengths\": [8, 16]");
    free(out);
    assert_int_equal(run(&out, PIO " bench" ECHO "-p 8,0"), 2);
    expect_output(out, "-p: 0 (skip the ppN tests) must be the only count");
    free(out);
    assert_int_equal(run(&out, PIO " bench" ECHO "--batch 1,,2"), 2);
    expect_output(out, "--batch expects a comma-separated list");
    free(out);
    assert_int_equal(run(&out, PIO " bench" ECHO "--depth 0"), 2);
    free(out);
    assert_int_equal(run(&out, PIO " bench" ECHO "--bandwidth-gbs -1"), 2);
    free(out);
}

/* The raw tests through the extension on the qwen3_tiny fixture (3 layers, 2 KV heads of 32,
 * bf16 weights and cache). */
/* tools/plugin_bench.sh runs every line of a plugin's benchmarks/pio-bench.args (comments and
 * blank lines skipped) with dummy weights and the extra arguments; a failing line fails the
 * script after the others ran. */
static void plugin_bench_script_runs_each_line(void **state)
{
    (void)state;
    write_file("good.args", "# a comment\n-p 16 -n 8 -r 1 --depth 32\n\n-p 0 -n 2 -r 1 --batch 2");
    write_file("bad.args", "-p 0 -n 2 -r 1 --depth 0\n-p 0 -n 3 -r 1\n");
    char *out;
    assert_int_equal(run(&out, "sh tools/plugin_bench.sh " PIO " tests/fixtures/models/qwen3_tiny "
                               "%s/good.args --plugin qwen3_4b_instruct_2507", scratch), 0);
    expect_output(out, " bench -m tests/fixtures/models/qwen3_tiny --set model.load_format=dummy "
                       "-p 16 -n 8 -r 1 --depth 32 --plugin qwen3_4b_instruct_2507");
    expect_output(out, "|        tg8@d32 |");
    expect_output(out, "|         tg2@b2 |");
    if (strstr(out, "a comment") != NULL)
        fail_msg("a comment line was run:\n%s", out);
    free(out);
    assert_int_equal(run(&out, "sh tools/plugin_bench.sh " PIO " tests/fixtures/models/qwen3_tiny "
                               "%s/bad.args --plugin qwen3_4b_instruct_2507", scratch), 1);
    expect_output(out, "|            tg3 |"); /* the line after the failing one still ran */
    free(out);
    assert_int_equal(run(&out, "sh tools/plugin_bench.sh " PIO " x"), 2);
    expect_output(out, "usage:");
    free(out);
    /* every plugin ships its set */
    assert_int_equal(run(&out, "ls plugins/qwen3_4b_instruct_2507/benchmarks/pio-bench.args "
                               "plugins/qwen3_coder_30b/benchmarks/pio-bench.args"), 0);
    free(out);
}

static void bench_runs_every_test_on_a_fixture_model(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(run(&out, PIO " bench --plugin qwen3_4b_instruct_2507 -m "
                               "tests/fixtures/models/qwen3_tiny -p 16 -n 8 --depth 32 "
                               "--batch 1,2,4 -r 1 --bandwidth-gbs 10 --json"), 0);
    const char *start = strstr(out, "{\"plugin\"");
    if (start == NULL)
        fail_msg("no JSON in output:\n%s", out);
    json_error_t error;
    json_t *root = json_loads(start, JSON_DISABLE_EOF_CHECK, &error);
    if (root == NULL)
        fail_msg("bad JSON (%s) in:\n%s", error.text, out);
    json_t *model = json_object_get(root, "model");
    json_int_t params = json_integer_value(json_object_get(model, "n_parameters"));
    assert_true(params > 0);
    assert_int_equal(json_integer_value(json_object_get(model, "weight_bytes")), 2 * params);
    assert_int_equal(json_integer_value(json_object_get(model, "active_weight_bytes")),
                     2 * params); /* dense, tied embeddings: every weight is read */
    assert_int_equal(json_integer_value(json_object_get(model, "kv_bytes_per_token")),
                     3 * 2 * 2 * 32 * 2);
    assert_true(json_is_true(json_object_get(json_object_get(root, "settings"), "raw_forward")));
    static const char *const names[] = {"pp16", "tg8", "tg8@d32", "tg8@b1", "tg8@b2", "tg8@b4"};
    json_t *results = json_object_get(root, "results");
    assert_int_equal(json_array_size(results), 6);
    for (size_t i = 0; i < 6; i++) {
        json_t *r = json_array_get(results, i);
        assert_string_equal(json_string_value(json_object_get(r, "test")), names[i]);
        assert_true(json_number_value(json_object_get(r, "tokens_per_s")) > 0);
        if (i == 0) {
            assert_true(json_number_value(json_object_get(r, "ttft_ms")) > 0);
            continue;
        }
        /* 8 steps, each reading the weights and the cache of every sequence at its length */
        json_int_t batch = json_integer_value(json_object_get(r, "batch"));
        json_int_t prompt = json_integer_value(json_object_get(r, "n_prompt"));
        double expected = 8.0 * 2 * params + 768.0 * batch * (8 * prompt + 36);
        assert_true(fabs(json_number_value(json_object_get(r, "bytes_per_run")) - expected) < 1);
        assert_true(json_number_value(json_object_get(r, "gb_per_s")) > 0);
        assert_true(json_number_value(json_object_get(r, "roofline_pct")) > 0);
    }
    assert_int_equal(json_integer_value(json_object_get(json_array_get(results, 2), "n_prompt")),
                     32);
    json_t *peak = json_array_get(json_object_get(root, "peak_memory"), 0);
    assert_string_equal(json_string_value(json_object_get(peak, "device")), "host");
    assert_true(json_integer_value(json_object_get(peak, "peak_bytes")) > 2 * params);
    json_decref(root);
    free(out);
    /* The table, and a depth beyond the fixture's 512 positions fails with the forward's error */
    assert_int_equal(run(&out, PIO " bench --plugin qwen3_4b_instruct_2507 -m "
                               "tests/fixtures/models/qwen3_tiny -p 0 -n 2 -r 1"), 0);
    expect_output(out, "| qwen3_4b_instruct_2507   | cpu     |            tg2 |");
    expect_output(out, "KV cache 0.768 kB per token");
    free(out);
    assert_int_equal(run(&out, PIO " bench --plugin qwen3_4b_instruct_2507 -m "
                               "tests/fixtures/models/qwen3_tiny -p 0 -n 2 --depth 600 -r 1"), 1);
    expect_output(out, "pio: bench tg2@d600: ");
    free(out);
    /* A MoE with untied embeddings reads less than all its weights per token; a step of B
     * tokens is counted as reading the experts they are expected to touch. */
    assert_int_equal(run(&out, PIO " bench --plugin qwen3_coder_30b -m "
                               "tests/fixtures/models/qwen3_moe_tiny -p 0 -n 1 -r 1 --batch 1,3 "
                               "--json"), 0);
    root = json_loads(strstr(out, "{\"plugin\""), JSON_DISABLE_EOF_CHECK, &error);
    assert_non_null(root);
    model = json_object_get(root, "model");
    json_int_t active = json_integer_value(json_object_get(model, "active_weight_bytes"));
    json_int_t routed = json_integer_value(json_object_get(model, "routed_weight_bytes"));
    json_int_t n_experts = json_integer_value(json_object_get(model, "routed_experts"));
    json_int_t k = json_integer_value(json_object_get(model, "experts_per_token"));
    json_int_t kv = json_integer_value(json_object_get(model, "kv_bytes_per_token"));
    assert_true(active > 0);
    assert_true(active < json_integer_value(json_object_get(model, "weight_bytes")));
    assert_true(n_experts > k && k > 0 && routed > 0 && routed < active * n_experts / k);
    results = json_object_get(root, "results");
    for (size_t i = 0; i < json_array_size(results); i++) {
        json_t *r = json_array_get(results, i);
        json_int_t batch = json_integer_value(json_object_get(r, "batch"));
        double share = (double)k / (double)n_experts;
        double weights = (double)active - (double)routed * share +
                         (double)routed * (1.0 - pow(1.0 - share, (double)batch));
        double expected = weights + (double)kv * batch * 5; /* 1 step after the 4-token prompt */
        if (batch > 1)
            assert_true(weights > (double)active);
        assert_true(fabs(json_number_value(json_object_get(r, "bytes_per_run")) - expected) < 1);
    }
    json_decref(root);
    free(out);
}

static void tokenize_and_detokenize_load_only_the_tokenizer(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(run(&out, PIO " tokenize" ECHO "--set logging.level=debug hey you"), 0);
    expect_output(out, "[104, 101, 121, 32, 121, 111, 117]\n");
    expect_output(out, "vocab only");
    assert_null(strstr(out, "echo model loaded"));
    free(out);
    assert_int_equal(run(&out, PIO " tokenize" ECHO "--add-special hi"), 0);
    expect_output(out, "[256, 104, 105]\n");
    free(out);
    assert_int_equal(run(&out, PIO " detokenize" ECHO "--ids 256,104,105,257"), 0);
    expect_output(out, "<s>hi</s>\n");
    free(out);
    assert_int_equal(run(&out, PIO " detokenize" ECHO "--ids 256,104,105 --skip-special"), 0);
    expect_output(out, "hi\n");
    free(out);
    assert_int_equal(run(&out, PIO " detokenize" ECHO "--ids 1,-2"), 2);
    expect_output(out, "--ids: bad token id at character 3");
    free(out);
}

static void device_option_sets_the_backend_key(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(run(&out, PIO " run" ECHO "--device cuda:1 -p x"), 0);
    free(out);
    assert_int_equal(run(&out, PIO " run" ECHO "--device gpu -p x"), 1);
    expect_output(out, "key 'device.backend': expected one of cpu|cuda|cuda:N, got 'gpu'");
    free(out);
}

static void serve_refuses_a_plugin_without_batching(void **state)
{
    (void)state;
    char *out;
    assert_int_equal(run(&out, PIO " serve" ECHO), 1);
    expect_output(out, "does not offer the serving calls");
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(version_and_help),
        cmocka_unit_test(list_shows_good_plugins_and_one_line_per_bad_file),
        cmocka_unit_test(run_streams_the_reply),
        cmocka_unit_test(yaml_config_and_overrides),
        cmocka_unit_test(plugin_selected_from_model_folder),
        cmocka_unit_test(chat_keeps_the_conversation_going),
        cmocka_unit_test(logits_writes_a_npy_file),
        cmocka_unit_test(bench_reports_json),
        cmocka_unit_test(bench_runs_every_test_on_a_fixture_model),
        cmocka_unit_test(plugin_bench_script_runs_each_line),
        cmocka_unit_test(tokenize_and_detokenize_load_only_the_tokenizer),
        cmocka_unit_test(device_option_sets_the_backend_key),
        cmocka_unit_test(serve_refuses_a_plugin_without_batching),
    };
    return cmocka_run_group_tests(tests, make_scratch, remove_scratch);
}
