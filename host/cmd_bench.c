/*
 * pio bench, like llama-bench and llama-batched-bench: prompt processing (ppN), decoding (tgN),
 * decoding at a KV depth (tgN@dD) and batched decoding of B sequences (tgN@bB), with tokens/s,
 * time to first token, achieved GB/s against a bandwidth roofline and peak device memory.
 *
 * The tests drive the plugin's batched forward (PIO_TEXTGEN_MODEL_EXTENSION) directly: greedy
 * next token = argmax of the returned logits rows. A plugin without the extension gets ppN
 * through infer and tgN through generate_text; the depth and batch tests are then skipped.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "host/commands.h"
#include "host/session.h"
#include "pio/textgen.h"

static const char bench_help[] =
    "usage: pio bench (-c CONFIG | -m MODEL_DIR | --plugin NAME --set model.load_format=dummy)\n"
    "                 [-p N,...] [-n N] [--depth D,...] [--batch B,...] [-r N]\n"
    "                 [--bandwidth-gbs X] [--json]\n"
    "Measures, each test after one warm-up run and then -r times (mean ± standard deviation):\n"
    "  ppN      one forward pass over N tokens of a fresh sequence (also time to first token)\n"
    "  tgN      N greedy decode steps of one sequence after a 4-token prompt, EOS ignored\n"
    "  tgN@dD   N decode steps of one sequence prefilled with D tokens (KV depth D)\n"
    "  tgN@bB   B sequences, each prefilled with the first -p count (4 when -p is 0), then N steps of\n"
    "           one token per sequence; aggregate tokens/s (like llama-batched-bench)\n"
    "Decode tests report GB/s: the bytes a step must read (active weights once, for a MoE the\n"
    "experts its B tokens are expected to touch under uniform routing, plus the KV cache of\n"
    "every sequence at its length) over the step time; with --bandwidth-gbs also the\n"
    "percentage of that roofline. Unless kv_cache.max_tokens or kv_cache.memory_gb is set, the\n"
    "KV cache is sized for the largest test.\n\n"
    "  -p, --prompt-tokens N,...  prompt lengths: a ppN test each, the first also for the batch\n"
    "                         prompts (default 512; 0 alone skips ppN; e.g. 512,2048)\n"
    "  -n, --gen-tokens N     decode steps of tgN, tgN@dD, tgN@bB (default 128; 0 skips them)\n"
    "      --depth D,...      KV depths for tgN@dD (default none; e.g. 4096,16384)\n"
    "      --batch B,...      batch sizes for tgN@bB (default none; e.g. 1,2,4,8,16,32,64)\n"
    "  -r, --repetitions N    repetitions of each test (default 3)\n"
    "      --bandwidth-gbs X  memory bandwidth for the roofline, GB/s (e.g. 4300 for the H200\n"
    "                         here, measured by a device-to-device copy); % shown only with it\n"
    "      --json             print one JSON object instead of the table\n" PIO_CLI_COMMON_HELP;

#define BENCH_MAX_LIST 32
#define BENCH_SHORT_PROMPT 4

typedef struct bench_settings {
    int pps[BENCH_MAX_LIST], n_pps; /* prompt lengths of the ppN tests; {0}: none */
    int tg, reps, json;
    int depths[BENCH_MAX_LIST], n_depths;
    int batches[BENCH_MAX_LIST], n_batches;
    double bandwidth_gbs; /* 0 = unknown */
} bench_settings;

typedef struct bench_result {
    char test[48];
    const char *kind;    /* "pp", "tg", "depth", "batch" */
    int n_prompt;        /* tokens prefilled per sequence before the timed steps (pp: N) */
    int n_gen;           /* timed decode steps */
    int depth, batch;
    int raw;             /* measured through the batched-forward extension */
    double tps_mean, tps_stddev;
    double ttft_ms;      /* pp: mean forward time; < 0 when not measured */
    double bytes;        /* bytes read per timed run; 0 when unknown */
    double gbs_mean;     /* < 0 when unknown */
} bench_result;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void mean_stddev(const double *samples, int n, double *mean, double *stddev)
{
    double sum = 0, sq = 0;
    for (int i = 0; i < n; i++)
        sum += samples[i];
    *mean = sum / n;
    for (int i = 0; i < n; i++)
        sq += (samples[i] - *mean) * (samples[i] - *mean);
    *stddev = n > 1 ? sqrt(sq / (n - 1)) : 0.0;
}

static int32_t prompt_token(size_t i, size_t vocab)
{
    return (int32_t)((1000u + 7919u * (unsigned)i) % (unsigned)vocab);
}

static int32_t argmax(const float *row, size_t n)
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (row[i] > row[best])
            best = i;
    return (int32_t)best;
}

/* ---- Raw runs through the extension ------------------------------------------------------ */

typedef struct raw_ctx {
    const pio_textgen_model *model;
    pio_error err;
    int32_t *tokens, *seq_ids, *rows, *seqs, *next;
    float *logits;
    size_t capacity, max_batch;
} raw_ctx;

static pio_status raw_reserve(raw_ctx *c, size_t tokens, size_t batch)
{
    if (tokens > c->capacity) {
        free(c->tokens);
        free(c->seq_ids);
        c->tokens = malloc(tokens * sizeof *c->tokens);
        c->seq_ids = malloc(tokens * sizeof *c->seq_ids);
        c->capacity = c->tokens && c->seq_ids ? tokens : 0;
    }
    if (batch > c->max_batch) {
        free(c->rows);
        free(c->seqs);
        free(c->next);
        free(c->logits);
        c->rows = malloc(batch * sizeof *c->rows);
        c->seqs = malloc(batch * sizeof *c->seqs);
        c->next = malloc(batch * sizeof *c->next);
        c->logits = malloc(batch * c->model->vocab_size * sizeof *c->logits);
        c->max_batch = c->rows && c->seqs && c->next && c->logits ? batch : 0;
    }
    return c->capacity >= tokens && c->max_batch >= batch ? PIO_OK : PIO_ERR_OUT_OF_MEMORY;
}

static void raw_free(raw_ctx *c)
{
    free(c->tokens);
    free(c->seq_ids);
    free(c->rows);
    free(c->seqs);
    free(c->next);
    free(c->logits);
}

/* One forward over c->tokens[0..n) of c->seq_ids; the greedy token of n_rows rows into next:
 * found by the model where its logits are when it can (only the ids come back, as a greedy
 * decoder on the GPU runs), else from the logits here. */
static pio_status raw_forward(raw_ctx *c, size_t n, size_t n_rows)
{
    int on_device = PIO_HAS_FIELD(c->model, pio_textgen_model, features) &&
                    (c->model->features & PIO_TEXTGEN_FEATURE_ARGMAX);
    pio_textgen_batch batch = {.struct_size = sizeof batch, .n_tokens = n, .tokens = c->tokens,
                               .seq_ids = c->seq_ids, .n_logits_rows = n_rows,
                               .logits_rows = c->rows, .logits = on_device ? NULL : c->logits,
                               .argmax = on_device ? c->next : NULL};
    pio_status status = c->model->forward(c->model->self, &batch, &c->err);
    for (size_t r = 0; !on_device && status == PIO_OK && r < n_rows; r++)
        c->next[r] = argmax(c->logits + r * c->model->vocab_size, c->model->vocab_size);
    return status;
}

/*
 * One run: `batch` fresh sequences, each prefilled with `prompt` tokens in one flattened
 * forward, then `steps` decode steps of one token per sequence. *seconds gets the time of the
 * prefill when steps is 0, else of the decode steps.
 */
static pio_status raw_run(raw_ctx *c, int batch, int prompt, int steps, double *seconds)
{
    size_t B = (size_t)batch, P = (size_t)prompt, vocab = c->model->vocab_size;
    pio_status status = raw_reserve(c, B * P > B ? B * P : B, B);
    int opened = 0;
    for (; status == PIO_OK && opened < batch; opened++)
        status = c->model->seq_open(c->model->self, &c->seqs[opened], &c->err);
    if (status != PIO_OK && opened > 0)
        opened--; /* the failed open holds nothing */
    for (size_t b = 0; status == PIO_OK && b < B; b++) {
        for (size_t i = 0; i < P; i++) {
            c->tokens[b * P + i] = prompt_token(i + 31 * b, vocab);
            c->seq_ids[b * P + i] = c->seqs[b];
        }
        c->rows[b] = (int32_t)(b * P + P - 1);
    }
    double start = now_seconds();
    if (status == PIO_OK)
        status = raw_forward(c, B * P, B);
    *seconds = now_seconds() - start;
    if (steps > 0 && status == PIO_OK) {
        for (size_t b = 0; b < B; b++) {
            c->seq_ids[b] = c->seqs[b];
            c->rows[b] = (int32_t)b;
        }
        start = now_seconds();
        for (int s = 0; status == PIO_OK && s < steps; s++) {
            memcpy(c->tokens, c->next, B * sizeof *c->tokens);
            status = raw_forward(c, B, B);
        }
        *seconds = now_seconds() - start;
    }
    for (int i = 0; i < opened; i++)
        c->model->seq_close(c->model->self, c->seqs[i]);
    return status;
}

/* ---- Fallback runs through infer / generate_text ----------------------------------------- */

static pio_status infer_run(pio_session *s, int n_tokens, size_t vocab, double *seconds)
{
    const pio_plugin_vtable *vt = s->plugin->descriptor->vtable;
    int32_t *ids = malloc((size_t)n_tokens * sizeof *ids);
    float *logits = malloc(vocab * sizeof *logits);
    pio_status status = ids && logits ? PIO_OK : PIO_ERR_OUT_OF_MEMORY;
    for (int i = 0; status == PIO_OK && i < n_tokens; i++)
        ids[i] = prompt_token((size_t)i, vocab);
    pio_infer_request request = {.struct_size = sizeof request, .tokens = ids,
                                 .n_tokens = (size_t)n_tokens, .logits_mode = PIO_LOGITS_LAST,
                                 .logits = logits, .logits_capacity = vocab};
    pio_infer_result out = {.struct_size = sizeof out};
    double start = now_seconds();
    if (status == PIO_OK && (status = vt->infer(s->instance, &request, &out)) == PIO_OK)
        (void)argmax(logits, vocab);
    *seconds = now_seconds() - start;
    free(ids);
    free(logits);
    return status;
}

/* Greedy generation of n_tokens with EOS ignored; *seconds from the plugin's decode rate. */
static pio_status generate_run(pio_session *s, int n_tokens, double *seconds)
{
    const pio_plugin_vtable *vt = s->plugin->descriptor->vtable;
    pio_sampling_params greedy = {.struct_size = sizeof greedy,
                                  .fields_set = PIO_SAMPLING_TEMPERATURE, .temperature = 0.0f};
    pio_stop_conditions stop = {.struct_size = sizeof stop, .ignore_eos = 1};
    pio_generate_request request = {.struct_size = sizeof request, .prompt = "The",
                                    .prompt_len = 3, .max_new_tokens = n_tokens,
                                    .sampling = &greedy, .stop = &stop};
    pio_generate_response response = {.struct_size = sizeof response};
    pio_status status = vt->generate_text(s->instance, &request, &response);
    if (status == PIO_OK && response.n_tokens != (size_t)n_tokens)
        status = PIO_ERR_INTERNAL;
    if (status == PIO_OK)
        *seconds = response.timings.decode_tokens_per_s > 0
                       ? n_tokens / response.timings.decode_tokens_per_s : 0;
    vt->free_response(s->instance, &response);
    return status;
}

/* ---- The tests ---------------------------------------------------------------------------- */

typedef struct bench_run {
    pio_session *session;
    const pio_model_info *info;
    raw_ctx *raw; /* NULL without the extension */
    int reps;
} bench_run;

static pio_status one_run(bench_run *r, const bench_result *t, double *seconds)
{
    if (r->raw != NULL)
        return strcmp(t->kind, "pp") == 0 ? raw_run(r->raw, 1, t->n_prompt, 0, seconds)
                                           : raw_run(r->raw, t->batch, t->n_prompt, t->n_gen,
                                                     seconds);
    return strcmp(t->kind, "pp") == 0
               ? infer_run(r->session, t->n_prompt, r->info->vocab_size, seconds)
               : generate_run(r->session, t->n_gen, seconds);
}

/* The weight bytes one decoding step of `batch` tokens reads: the active weights, except that
 * a MoE's tokens route to different experts. Under uniform routing a token passes over a given
 * expert with probability 1 - k/E, so a step is expected to touch E·(1 - (1 - k/E)^B) of the
 * E experts of a layer (k of them at B = 1: the active weights). */
static double step_weight_bytes(const pio_model_info *info, int batch)
{
    double active = 0;
    if (PIO_HAS_FIELD(info, pio_model_info, kv_bytes_per_token))
        active = (double)info->active_weight_bytes;
    if (active <= 0 && PIO_HAS_FIELD(info, pio_model_info, weight_bytes))
        return (double)info->weight_bytes;
    if (!PIO_HAS_FIELD(info, pio_model_info, experts_per_token) || info->routed_experts == 0 ||
        info->experts_per_token == 0 || info->experts_per_token > info->routed_experts)
        return active;
    double routed = (double)info->routed_weight_bytes;
    double share = (double)info->experts_per_token / info->routed_experts;
    return active - routed * share + routed * (1.0 - pow(1.0 - share, batch));
}

/* Bytes the timed decode steps read: the weights each step reads (step_weight_bytes) and every
 * sequence's cache at its length (prompt + the steps so far + the new token). */
static double decode_bytes(const pio_model_info *info, const bench_result *t)
{
    double weights = step_weight_bytes(info, t->batch), kv = 0;
    if (PIO_HAS_FIELD(info, pio_model_info, kv_bytes_per_token))
        kv = (double)info->kv_bytes_per_token;
    if (weights <= 0)
        return 0;
    double n = t->n_gen, cached = t->batch * (n * t->n_prompt + n * (n + 1) / 2);
    return n * weights + kv * cached;
}

static pio_status run_test(bench_run *r, bench_result *t)
{
    double *seconds = malloc((size_t)r->reps * sizeof *seconds);
    double *tps = malloc((size_t)r->reps * sizeof *tps);
    double *gbs = malloc((size_t)r->reps * sizeof *gbs);
    double warm = 0, spread;
    pio_status status = seconds && tps && gbs ? PIO_OK : PIO_ERR_OUT_OF_MEMORY;
    int is_pp = strcmp(t->kind, "pp") == 0;
    double tokens = is_pp ? t->n_prompt : (double)t->n_gen * t->batch;
    t->raw = r->raw != NULL;
    t->bytes = is_pp ? 0 : decode_bytes(r->info, t);
    if (status == PIO_OK)
        status = one_run(r, t, &warm);
    for (int i = 0; status == PIO_OK && i < r->reps; i++) {
        status = one_run(r, t, &seconds[i]);
        tps[i] = seconds[i] > 0 ? tokens / seconds[i] : 0;
        gbs[i] = seconds[i] > 0 ? t->bytes / seconds[i] * 1e-9 : 0;
    }
    if (status == PIO_OK) {
        mean_stddev(tps, r->reps, &t->tps_mean, &t->tps_stddev);
        t->gbs_mean = -1;
        if (t->bytes > 0)
            mean_stddev(gbs, r->reps, &t->gbs_mean, &spread);
        t->ttft_ms = -1;
        if (is_pp) {
            mean_stddev(seconds, r->reps, &t->ttft_ms, &spread);
            t->ttft_ms *= 1e3;
        }
    }
    free(seconds);
    free(tps);
    free(gbs);
    return status;
}

/* The tests the settings ask for, in order; returns how many. */
static int plan_tests(const bench_settings *b, int raw, bench_result *tests)
{
    int n = 0, batch_prompt = b->pps[0] > 0 ? b->pps[0] : BENCH_SHORT_PROMPT;
    for (int i = 0; b->pps[0] > 0 && i < b->n_pps; i++) {
        tests[n] = (bench_result){.kind = "pp", .n_prompt = b->pps[i], .batch = 1};
        snprintf(tests[n++].test, sizeof tests->test, "pp%d", b->pps[i]);
    }
    if (b->tg <= 0)
        return n;
    tests[n] = (bench_result){.kind = "tg", .n_prompt = BENCH_SHORT_PROMPT, .n_gen = b->tg,
                              .batch = 1};
    snprintf(tests[n++].test, sizeof tests->test, "tg%d", b->tg);
    for (int i = 0; raw && i < b->n_depths; i++) {
        tests[n] = (bench_result){.kind = "depth", .n_prompt = b->depths[i], .n_gen = b->tg,
                                  .depth = b->depths[i], .batch = 1};
        snprintf(tests[n++].test, sizeof tests->test, "tg%d@d%d", b->tg, b->depths[i]);
    }
    for (int i = 0; raw && i < b->n_batches; i++) {
        tests[n] = (bench_result){.kind = "batch", .n_prompt = batch_prompt, .n_gen = b->tg,
                                  .batch = b->batches[i]};
        snprintf(tests[n++].test, sizeof tests->test, "tg%d@b%d", b->tg, b->batches[i]);
    }
    return n;
}

/* KV-cache tokens the largest test needs, with a block's slack per sequence. */
static long long kv_tokens_needed(const bench_settings *b)
{
    bench_result tests[1 + 3 * BENCH_MAX_LIST];
    int n = plan_tests(b, 1, tests);
    long long need = 0;
    for (int i = 0; i < n; i++) {
        long long t = (long long)tests[i].batch * (tests[i].n_prompt + tests[i].n_gen + 256);
        need = t > need ? t : need;
    }
    return need;
}

/* ---- Output ------------------------------------------------------------------------------- */

static void json_string(const char *text)
{
    putchar('"');
    for (const char *p = text ? text : ""; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if ((unsigned char)*p < 0x20)
            printf("\\u%04x", (unsigned)(unsigned char)*p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void device_name(int index, char *out, size_t size)
{
    if (index == 0)
        snprintf(out, size, "host");
    else
        snprintf(out, size, "cuda:%d", index - 1);
}

static void print_json(const pio_session *s, const pio_model_info *info, const bench_settings *b,
                       const bench_result *r, int n)
{
    int has_new = PIO_HAS_FIELD(info, pio_model_info, kv_bytes_per_token);
    int has_routed = PIO_HAS_FIELD(info, pio_model_info, experts_per_token);
    printf("{\"plugin\": ");
    json_string(s->plugin->descriptor->name);
    printf(", \"model\": {\"architecture\": ");
    json_string(info->architecture);
    printf(", \"backend\": ");
    json_string(info->backend);
    printf(", \"vocab_size\": %zu, \"context_length\": %zu, \"n_parameters\": %llu, "
           "\"weight_bytes\": %llu, \"active_weight_bytes\": %llu, \"kv_bytes_per_token\": %llu, "
           "\"routed_weight_bytes\": %llu, \"routed_experts\": %u, \"experts_per_token\": %u}",
           info->vocab_size, info->context_length, (unsigned long long)info->n_parameters,
           (unsigned long long)info->weight_bytes,
           (unsigned long long)(has_new ? info->active_weight_bytes : 0),
           (unsigned long long)(has_new ? info->kv_bytes_per_token : 0),
           (unsigned long long)(has_routed ? info->routed_weight_bytes : 0),
           has_routed ? info->routed_experts : 0u, has_routed ? info->experts_per_token : 0u);
    printf(", \"settings\": {\"prompt_tokens\": %d, \"gen_tokens\": %d, \"repetitions\": %d, "
           "\"warmup\": 1, \"prompt_lengths\": [", b->pps[0], b->tg, b->reps);
    for (int i = 0; i < b->n_pps; i++)
        printf("%s%d", i ? ", " : "", b->pps[i]);
    printf("], \"depths\": [");
    for (int i = 0; i < b->n_depths; i++)
        printf("%s%d", i ? ", " : "", b->depths[i]);
    printf("], \"batches\": [");
    for (int i = 0; i < b->n_batches; i++)
        printf("%s%d", i ? ", " : "", b->batches[i]);
    printf("], \"bandwidth_gbs\": ");
    if (b->bandwidth_gbs > 0)
        printf("%.1f", b->bandwidth_gbs);
    else
        printf("null");
    printf(", \"raw_forward\": %s}, \"results\": [", n > 0 && r[0].raw ? "true" : "false");
    for (int i = 0; i < n; i++) {
        printf("%s{\"test\": \"%s\", \"kind\": \"%s\", \"n_prompt\": %d, \"n_gen\": %d, "
               "\"depth\": %d, \"batch\": %d, \"tokens_per_s\": %.3f, \"stddev\": %.3f",
               i ? ", " : "", r[i].test, r[i].kind, r[i].n_prompt, r[i].n_gen, r[i].depth,
               r[i].batch, r[i].tps_mean, r[i].tps_stddev);
        if (r[i].ttft_ms >= 0)
            printf(", \"ttft_ms\": %.3f", r[i].ttft_ms);
        if (r[i].gbs_mean >= 0) {
            printf(", \"bytes_per_run\": %.0f, \"gb_per_s\": %.6g", r[i].bytes, r[i].gbs_mean);
            if (b->bandwidth_gbs > 0)
                printf(", \"roofline_pct\": %.6g", 100.0 * r[i].gbs_mean / b->bandwidth_gbs);
        }
        printf("}");
    }
    printf("], \"peak_memory\": [");
    for (int d = 0, first = 1; d <= PIO_HOST_MAX_DEVICES; d++) {
        if (s->instance_state.memory[d].peak == 0)
            continue;
        char name[16];
        device_name(d, name, sizeof name);
        printf("%s{\"device\": \"%s\", \"peak_bytes\": %llu}", first ? "" : ", ", name,
               (unsigned long long)s->instance_state.memory[d].peak);
        first = 0;
    }
    printf("]}\n");
}

static void print_table(const pio_session *s, const pio_model_info *info,
                        const bench_settings *b, const bench_result *r, int n)
{
    const char *name = s->plugin->descriptor->name;
    const char *backend = info->backend ? info->backend : "?";
    printf("| %-24s | %-7s | %14s | %20s | %10s | %9s | %8s |\n", "model", "backend", "test",
           "t/s", "TTFT ms", "GB/s", "% roof");
    printf("| %-24s | %-7s | %14s | %20s | %10s | %9s | %8s |\n", "------------------------",
           "-------", "--------------", "--------------------", "----------", "---------",
           "--------");
    for (int i = 0; i < n; i++) {
        char tps[48], ttft[24] = "", gbs[24] = "", pct[24] = "";
        snprintf(tps, sizeof tps, "%.2f ± %.2f", r[i].tps_mean, r[i].tps_stddev);
        if (r[i].ttft_ms >= 0)
            snprintf(ttft, sizeof ttft, "%.2f", r[i].ttft_ms);
        if (r[i].gbs_mean >= 0)
            snprintf(gbs, sizeof gbs, "%.2f", r[i].gbs_mean);
        if (r[i].gbs_mean >= 0 && b->bandwidth_gbs > 0)
            snprintf(pct, sizeof pct, "%.1f", 100.0 * r[i].gbs_mean / b->bandwidth_gbs);
        printf("| %-24s | %-7s | %14s | %21s | %10s | %9s | %8s |\n", name, backend, r[i].test,
               tps, ttft, gbs, pct);
    }
    printf("\nweights %.4g MB (%.4g MB read per decoded token), KV cache %.4g kB per token",
           (double)info->weight_bytes * 1e-6,
           PIO_HAS_FIELD(info, pio_model_info, kv_bytes_per_token)
               ? (double)info->active_weight_bytes * 1e-6 : 0.0,
           PIO_HAS_FIELD(info, pio_model_info, kv_bytes_per_token)
               ? (double)info->kv_bytes_per_token * 1e-3 : 0.0);
    for (int d = 0; d <= PIO_HOST_MAX_DEVICES; d++) {
        if (s->instance_state.memory[d].peak == 0)
            continue;
        char dev[16];
        device_name(d, dev, sizeof dev);
        printf("; peak %s memory %.4g MB", dev,
               (double)s->instance_state.memory[d].peak * 1e-6);
    }
    printf("\n");
}

/* ---- Options ------------------------------------------------------------------------------ */

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

/* "1,2,4": counts from min to 1000000; at most BENCH_MAX_LIST. */
static int parse_list(const char *name, const char *text, int min, int *out, int *n)
{
    char item[32];
    *n = 0;
    for (const char *p = text;;) {
        size_t len = strcspn(p, ",");
        if (len == 0 || len >= sizeof item || *n == BENCH_MAX_LIST) {
            fprintf(stderr, "pio bench: %s expects a comma-separated list of at most %d counts, "
                    "got '%s'\n", name, BENCH_MAX_LIST, text);
            return -1;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        if (parse_count(name, item, &out[*n]) != 0)
            return -1;
        if (out[(*n)++] < min) {
            fprintf(stderr, "pio bench: %s: %s is below %d\n", name, item, min);
            return -1;
        }
        if (p[len] == '\0')
            return 0;
        p += len + 1;
    }
}

/* -p: a list of prompt lengths; 0 (no ppN test) only on its own. */
static int parse_prompt_lengths(const char *text, bench_settings *b)
{
    if (parse_list("-p", text, 0, b->pps, &b->n_pps) != 0)
        return -1;
    for (int i = 0; b->n_pps > 1 && i < b->n_pps; i++)
        if (b->pps[i] == 0) {
            fprintf(stderr, "pio bench: -p: 0 (skip the ppN tests) must be the only count, "
                    "got '%s'\n", text);
            return -1;
        }
    return 0;
}

static int parse_bandwidth(const char *text, double *out)
{
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !(value > 0) || value > 1e6) {
        fprintf(stderr, "pio bench: --bandwidth-gbs expects GB/s above 0, got '%s'\n", text);
        return -1;
    }
    *out = value;
    return 0;
}

/* True when the YAML file or a --set gives kv_cache.max_tokens or kv_cache.memory_gb. */
static int kv_size_given(const pio_cli_options *options)
{
    for (size_t i = 0; i < options->n_overrides; i++)
        if (strncmp(options->overrides[i], "kv_cache.max_tokens=", 20) == 0 ||
            strncmp(options->overrides[i], "kv_cache.memory_gb=", 19) == 0)
            return 1;
    if (options->config_path == NULL)
        return 0;
    pio_config *config = pio_config_new();
    pio_error err;
    pio_error_clear(&err);
    int64_t tokens;
    double gb;
    int given = config == NULL ||
                pio_config_load_file(config, options->config_path, &err) != PIO_OK ||
                pio_config_get_i64(config, "kv_cache.max_tokens", &tokens, &err) != PIO_SOFT_ABSENT ||
                pio_config_get_f64(config, "kv_cache.memory_gb", &gb, &err) != PIO_SOFT_ABSENT;
    pio_config_free(config);
    return given; /* a file that fails to load is reported by the session */
}

static int run_benchmarks(pio_session *s, const bench_settings *b)
{
    const pio_plugin_vtable *vt = s->plugin->descriptor->vtable;
    pio_model_info info = {.struct_size = sizeof info};
    pio_status status = vt->get_model_info(s->instance, &info);
    raw_ctx raw = {0};
    if (status == PIO_OK && PIO_HAS_FIELD(vt, pio_plugin_vtable, get_extension) &&
        vt->get_extension != NULL)
        raw.model = vt->get_extension(s->instance, PIO_TEXTGEN_MODEL_EXTENSION);
    if (raw.model != NULL && raw.model->struct_size < sizeof *raw.model)
        raw.model = NULL;
    if (status == PIO_OK && raw.model == NULL && (b->n_depths > 0 || b->n_batches > 0) &&
        b->tg > 0)
        fprintf(stderr, "pio bench: the plugin has no %s extension; skipping the depth and "
                "batch tests\n", PIO_TEXTGEN_MODEL_EXTENSION);
    bench_result tests[1 + 3 * BENCH_MAX_LIST];
    int n = plan_tests(b, raw.model != NULL, tests);
    bench_run run = {.session = s, .info = &info, .raw = raw.model ? &raw : NULL,
                     .reps = b->reps};
    int done = 0;
    for (; status == PIO_OK && done < n; done++)
        if ((status = run_test(&run, &tests[done])) != PIO_OK)
            break;
    if (status != PIO_OK) {
        if (raw.model != NULL && raw.err.message[0] != '\0')
            fprintf(stderr, "pio: bench %s: %s: %s\n", done < n ? tests[done].test : "",
                    pio_status_str(status), raw.err.message);
        else
            pio_session_report_failure(s, "bench", status);
        raw_free(&raw);
        return 1;
    }
    raw_free(&raw);
    if (b->json)
        print_json(s, &info, b, tests, n);
    else
        print_table(s, &info, b, tests, n);
    return 0;
}

int pio_cmd_bench(int argc, char **argv)
{
    static const struct option long_options[] = {
        PIO_CLI_COMMON_LONG_OPTIONS, {"prompt-tokens", required_argument, NULL, 'p'},
        {"gen-tokens", required_argument, NULL, 'n'}, {"repetitions", required_argument, NULL, 'r'},
        {"depth", required_argument, NULL, 2001}, {"batch", required_argument, NULL, 2002},
        {"bandwidth-gbs", required_argument, NULL, 2003},
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    pio_cli_options options = {0};
    bench_settings b = {.pps = {512}, .n_pps = 1, .tg = 128, .reps = 3};
    int opt, bad = 0;
    optind = 1;
    while (!bad && (opt = getopt_long(argc, argv, PIO_CLI_COMMON_SHORT_OPTIONS "p:n:r:h",
                                      long_options, NULL)) != -1) {
        switch (opt) {
        case 'h': fputs(bench_help, stdout); return 0;
        case 'p': bad = parse_prompt_lengths(optarg, &b); break;
        case 'n': bad = parse_count("-n", optarg, &b.tg); break;
        case 'r': bad = parse_count("-r", optarg, &b.reps) || b.reps == 0; break;
        case 2001: bad = parse_list("--depth", optarg, 1, b.depths, &b.n_depths); break;
        case 2002: bad = parse_list("--batch", optarg, 1, b.batches, &b.n_batches); break;
        case 2003: bad = parse_bandwidth(optarg, &b.bandwidth_gbs); break;
        case 'j': b.json = 1; break;
        default: bad = pio_cli_take_common_option(&options, opt, optarg) <= 0;
        }
    }
    if (bad || optind < argc) {
        fputs(bench_help, stderr);
        return 2;
    }
    /* Size the KV cache for the largest test unless the user did; their --set come later. */
    char kv_override[64];
    if (!kv_size_given(&options) && options.n_overrides < PIO_CLI_MAX_LIST) {
        snprintf(kv_override, sizeof kv_override, "kv_cache.max_tokens=%lld",
                 kv_tokens_needed(&b));
        memmove(&options.overrides[1], &options.overrides[0],
                options.n_overrides * sizeof options.overrides[0]);
        options.overrides[0] = kv_override;
        options.n_overrides++;
    }
    pio_session session;
    if (pio_session_open(&session, &options, 0) != 0)
        return 1;
    int exit_code = run_benchmarks(&session, &b);
    pio_session_close(&session);
    return exit_code;
}
