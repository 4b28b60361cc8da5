/*
 * Tokenizer encode throughput: loads a tokenizer.json, reads a text file and encodes the whole
 * file in one pio_tokenizer_encode call, on the calling thread only, several times:
 *   first   the very first call on the freshly loaded tokenizer (its piece cache empty)
 *   warm-up W more calls (not reported)
 *   timed   N calls; best and median reported
 * MB/s counts input bytes, MB = 10^6 bytes. Every call must give the same ids as the first.
 * tools/bench_tokenizer_hf.py measures Hugging Face `tokenizers` the same way and compares ids
 * with the file written by --ids-out.
 *
 *   bench_tokenizer [-n N] [-w W] [--ids-out FILE] [--json] [--label NAME] TOKENIZER_JSON TEXT
 *
 * Pin it to one core for stable numbers: taskset -c 2 build/bin/bench_tokenizer ...
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pio/tokenizer.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "bench_tokenizer: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (len < cap) {
            break;
        }
        char *grown = realloc(buf, cap * 2);
        if (!grown) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = grown;
        cap *= 2;
    }
    if (buf && ferror(f)) {
        fprintf(stderr, "bench_tokenizer: %s: read error\n", path);
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = len;
    return buf;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int write_ids(const char *path, const pio_token_ids *ids)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "bench_tokenizer: %s: %s\n", path, strerror(errno));
        return -1;
    }
    fputc('[', f);
    for (size_t i = 0; i < ids->count; i++) {
        fprintf(f, i ? ",%d" : "%d", (int)ids->ids[i]);
    }
    fputs("]\n", f);
    if (fclose(f) != 0) {
        fprintf(stderr, "bench_tokenizer: %s: write error\n", path);
        return -1;
    }
    return 0;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: bench_tokenizer [-n N] [-w W] [--ids-out FILE] [--json] [--label NAME] "
                 "TOKENIZER_JSON TEXT_FILE\n"
                 "  -n N            timed encodes (default 5)\n"
                 "  -w W            warm-up encodes after the first call (default 1)\n"
                 "  --ids-out FILE  write the ids as a JSON array\n"
                 "  --json          print one JSON object instead of text\n"
                 "  --label NAME    name of the input in the output (default: the file name)\n");
}

int main(int argc, char **argv)
{
    int runs = 5, warmup = 1, json = 0;
    const char *ids_out = NULL, *label = NULL, *tok_path = NULL, *text_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if ((!strcmp(a, "-n") || !strcmp(a, "-w") || !strcmp(a, "--ids-out") ||
             !strcmp(a, "--label")) && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(a, "-n")) {
                runs = atoi(v);
            } else if (!strcmp(a, "-w")) {
                warmup = atoi(v);
            } else if (!strcmp(a, "--ids-out")) {
                ids_out = v;
            } else {
                label = v;
            }
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (a[0] == '-' && a[1]) {
            usage(stderr);
            return 2;
        } else if (!tok_path) {
            tok_path = a;
        } else if (!text_path) {
            text_path = a;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!tok_path || !text_path || runs < 1 || warmup < 0) {
        usage(stderr);
        return 2;
    }
    if (!label) {
        const char *slash = strrchr(text_path, '/');
        label = slash ? slash + 1 : text_path;
    }

    size_t size = 0;
    char *text = read_file(text_path, &size);
    if (!text) {
        return 1;
    }

    pio_error err = {0};
    pio_tokenizer *tok = NULL;
    double t0 = now_s();
    if (pio_tokenizer_load(tok_path, &tok, &err) != PIO_OK) {
        fprintf(stderr, "bench_tokenizer: %s\n", err.message);
        free(text);
        return 1;
    }
    double load_s = now_s() - t0;

    pio_token_ids first = {0}, ids = {0};
    t0 = now_s();
    if (pio_tokenizer_encode(tok, text, size, 0, &first, &err) != PIO_OK) {
        fprintf(stderr, "bench_tokenizer: %s: %s\n", text_path, err.message);
        return 1;
    }
    double first_s = now_s() - t0;

    double *times = calloc((size_t)runs, sizeof(double));
    if (!times) {
        return 1;
    }
    for (int r = 0; r < warmup + runs; r++) {
        ids.count = 0; /* keep the capacity: time the encoder, not realloc */
        t0 = now_s();
        pio_status st = pio_tokenizer_encode(tok, text, size, 0, &ids, &err);
        double dt = now_s() - t0;
        if (st != PIO_OK) {
            fprintf(stderr, "bench_tokenizer: %s: %s\n", text_path, err.message);
            return 1;
        }
        if (ids.count != first.count ||
            memcmp(ids.ids, first.ids, first.count * sizeof(int32_t)) != 0) {
            fprintf(stderr, "bench_tokenizer: call %d gave other ids than the first call\n", r + 2);
            return 1;
        }
        if (r >= warmup) {
            times[r - warmup] = dt;
        }
    }
    qsort(times, (size_t)runs, sizeof(double), cmp_double);
    double best = times[0];
    double median = runs % 2 ? times[runs / 2] : 0.5 * (times[runs / 2 - 1] + times[runs / 2]);
    double mb = (double)size / 1e6;

    if (json) {
        printf("{\"impl\": \"pio\", \"input\": \"%s\", \"bytes\": %zu, \"tokens\": %zu, "
               "\"load_s\": %.4f, \"first_s\": %.6f, \"best_s\": %.6f, \"median_s\": %.6f, "
               "\"runs\": %d, \"first_mb_s\": %.2f, \"best_mb_s\": %.2f, \"median_mb_s\": %.2f}\n",
               label, size, first.count, load_s, first_s, best, median, runs, mb / first_s,
               mb / best, mb / median);
    } else {
        printf("pio  %-12s %9zu bytes %8zu tokens  load %.3f s  first %8.2f MB/s  "
               "best of %d %8.2f MB/s  median %8.2f MB/s\n",
               label, size, first.count, load_s, mb / first_s, runs, mb / best, mb / median);
    }

    int rc = 0;
    if (ids_out && write_ids(ids_out, &first) != 0) {
        rc = 1;
    }
    free(times);
    pio_token_ids_free(&first);
    pio_token_ids_free(&ids);
    pio_tokenizer_free(tok);
    free(text);
    return rc;
}
