/* pio bench: prompt processing (ppN) and token generation (tgN) speed, like llama-bench. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "host/commands.h"
#include "host/session.h"

static const char bench_help[] =
    "usage: pio bench (-c CONFIG | -m MODEL_DIR | --plugin NAME --set model.load_format=dummy)\n"
    "                 [-p N] [-n N] [-r N] [--json]\n"
    "Measures prompt processing of N tokens (ppN, one forward pass) and generation of N tokens\n"
    "(tgN, greedy, end-of-sequence ignored), each repeated and reported as mean and standard\n"
    "deviation of tokens per second.\n\n"
    "  -p, --prompt-tokens N  tokens for ppN (default 512; 0 skips)\n"
    "  -n, --gen-tokens N     tokens for tgN (default 128; 0 skips)\n"
    "  -r, --repetitions N    repetitions of each test (default 3)\n"
    "      --json             print one JSON object instead of the table\n" PIO_CLI_COMMON_HELP;

typedef struct bench_result {
    const char *test;
    int tokens;
    double mean_tps;
    double stddev_tps;
} bench_result;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void summarize(const double *samples, int n, bench_result *result)
{
    double sum = 0, sq = 0;
    for (int i = 0; i < n; i++)
        sum += samples[i];
    result->mean_tps = sum / n;
    for (int i = 0; i < n; i++)
        sq += (samples[i] - result->mean_tps) * (samples[i] - result->mean_tps);
    result->stddev_tps = n > 1 ? sqrt(sq / (n - 1)) : 0.0;
}

/* One forward pass over n_tokens ids per repetition. */
static pio_status bench_prompt(pio_session *s, int n_tokens, int reps, size_t vocab,
                               bench_result *result)
{
    const pio_plugin_vtable *vt = s->plugin->descriptor->vtable;
    int32_t *ids = malloc((size_t)n_tokens * sizeof *ids);
    float *logits = malloc(vocab * sizeof *logits);
    double *samples = malloc((size_t)reps * sizeof *samples);
    pio_status status = (ids && logits && samples) ? PIO_OK : PIO_ERR_OUT_OF_MEMORY;
    for (int i = 0; status == PIO_OK && i < n_tokens; i++)
        ids[i] = (int32_t)((1000u + 7919u * (unsigned)i) % (unsigned)vocab);
    for (int r = 0; status == PIO_OK && r < reps; r++) {
        pio_infer_request request = {.struct_size = sizeof request, .tokens = ids,
                                     .n_tokens = (size_t)n_tokens, .logits_mode = PIO_LOGITS_LAST,
                                     .logits = logits, .logits_capacity = vocab};
        pio_infer_result out = {.struct_size = sizeof out};
        double start = now_seconds();
        status = vt->infer(s->instance, &request, &out);
        samples[r] = n_tokens / (now_seconds() - start);
    }
    if (status == PIO_OK)
        summarize(samples, reps, result);
    free(ids);
    free(logits);
    free(samples);
    return status;
}

/* Greedy generation of n_tokens with EOS ignored, per repetition. */
static pio_status bench_generate(pio_session *s, int n_tokens, int reps, bench_result *result)
{
    const pio_plugin_vtable *vt = s->plugin->descriptor->vtable;
    double *samples = malloc((size_t)reps * sizeof *samples);
    pio_status status = samples ? PIO_OK : PIO_ERR_OUT_OF_MEMORY;
    pio_sampling_params greedy = {.struct_size = sizeof greedy,
                                  .fields_set = PIO_SAMPLING_TEMPERATURE, .temperature = 0.0f};
    pio_stop_conditions stop = {.struct_size = sizeof stop, .ignore_eos = 1};
    for (int r = 0; status == PIO_OK && r < reps; r++) {
        pio_generate_request request = {.struct_size = sizeof request, .prompt = "The",
                                        .prompt_len = 3, .max_new_tokens = n_tokens,
                                        .sampling = &greedy, .stop = &stop};
        pio_generate_response response = {.struct_size = sizeof response};
        status = vt->generate_text(s->instance, &request, &response);
        if (status == PIO_OK && response.n_tokens != (size_t)n_tokens)
            status = PIO_ERR_INTERNAL;
        if (status == PIO_OK)
            samples[r] = response.timings.decode_tokens_per_s;
        vt->free_response(s->instance, &response);
    }
    if (status == PIO_OK)
        summarize(samples, reps, result);
    free(samples);
    return status;
}

static void print_results(const pio_session *s, const pio_model_info *info,
                          const bench_result *results, int n, int json)
{
    const char *name = s->plugin->descriptor->name;
    if (json) {
        printf("{\"plugin\": \"%s\", \"architecture\": \"%s\", \"backend\": \"%s\", \"results\": [",
               name, info->architecture ? info->architecture : "", info->backend ? info->backend : "");
        for (int i = 0; i < n; i++)
            printf("%s{\"test\": \"%s%d\", \"tokens_per_s\": %.3f, \"stddev\": %.3f}",
                   i ? ", " : "", results[i].test, results[i].tokens, results[i].mean_tps,
                   results[i].stddev_tps);
        printf("]}\n");
        return;
    }
    printf("| %-24s | %-7s | %8s | %20s |\n", "plugin", "backend", "test", "t/s");
    printf("| %-24s | %-7s | %8s | %20s |\n", "------------------------", "-------", "--------",
           "--------------------");
    for (int i = 0; i < n; i++) {
        char test[32], tps[48];
        snprintf(test, sizeof test, "%s%d", results[i].test, results[i].tokens);
        snprintf(tps, sizeof tps, "%.2f ± %.2f", results[i].mean_tps, results[i].stddev_tps);
        printf("| %-24s | %-7s | %8s | %20s |\n", name, info->backend ? info->backend : "?",
               test, tps);
    }
}

static int parse_count(const char *name, const char *text, int *out)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < 0 || value > 1000000) {
        fprintf(stderr, "pio bench: %s expects a count from 0 to 1000000, got '%s'\n", name, text);
        return -1;
    }
    *out = (int)value;
    return 0;
}

static int run_benchmarks(pio_session *s, int pp, int tg, int reps, int json)
{
    pio_model_info info = {.struct_size = sizeof info};
    pio_status status = s->plugin->descriptor->vtable->get_model_info(s->instance, &info);
    bench_result results[2];
    int n = 0;
    if (status == PIO_OK && pp > 0) {
        results[n] = (bench_result){.test = "pp", .tokens = pp};
        status = bench_prompt(s, pp, reps, info.vocab_size, &results[n++]);
    }
    if (status == PIO_OK && tg > 0) {
        results[n] = (bench_result){.test = "tg", .tokens = tg};
        status = bench_generate(s, tg, reps, &results[n++]);
    }
    if (status != PIO_OK) {
        pio_session_report_failure(s, "bench", status);
        return 1;
    }
    print_results(s, &info, results, n, json);
    return 0;
}

int pio_cmd_bench(int argc, char **argv)
{
    static const struct option long_options[] = {
        PIO_CLI_COMMON_LONG_OPTIONS, {"prompt-tokens", required_argument, NULL, 'p'},
        {"gen-tokens", required_argument, NULL, 'n'}, {"repetitions", required_argument, NULL, 'r'},
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    pio_cli_options options = {0};
    int pp = 512, tg = 128, reps = 3, json = 0, opt, bad = 0;
    optind = 1;
    while (!bad && (opt = getopt_long(argc, argv, PIO_CLI_COMMON_SHORT_OPTIONS "p:n:r:h",
                                      long_options, NULL)) != -1) {
        switch (opt) {
        case 'h': fputs(bench_help, stdout); return 0;
        case 'p': bad = parse_count("-p", optarg, &pp); break;
        case 'n': bad = parse_count("-n", optarg, &tg); break;
        case 'r': bad = parse_count("-r", optarg, &reps) || reps == 0; break;
        case 'j': json = 1; break;
        default: bad = pio_cli_take_common_option(&options, opt, optarg) <= 0;
        }
    }
    if (bad) {
        fputs(bench_help, stderr);
        return 2;
    }
    pio_session session;
    if (pio_session_open(&session, &options, 0) != 0)
        return 1;
    int exit_code = run_benchmarks(&session, pp, tg, reps, json);
    pio_session_close(&session);
    return exit_code;
}
