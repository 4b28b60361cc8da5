/* pio tokenize / pio detokenize: the model's tokenizer alone (a vocab-only load, no weights). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/commands.h"
#include "host/session.h"

static const char tokenize_help[] =
    "usage: pio tokenize (-m MODEL_DIR | -c CONFIG) [--add-special] (-f FILE | TEXT...)\n"
    "Prints the token ids of the text as a JSON array. Loads only the tokenizer.\n\n"
    "  -f, --file FILE        read the text from FILE (default: the arguments, joined by spaces)\n"
    "      --add-special      add the tokenizer's special tokens (BOS etc.) as the model would\n"
    PIO_CLI_COMMON_HELP;

static const char detokenize_help[] =
    "usage: pio detokenize (-m MODEL_DIR | -c CONFIG) --ids ID,ID,... [--skip-special]\n"
    "Prints the text of the token ids. Loads only the tokenizer.\n\n"
    "      --ids LIST         comma-separated token ids\n"
    "      --skip-special     leave special tokens out\n" PIO_CLI_COMMON_HELP;

/* The text to tokenize: FILE's bytes, or the arguments joined by single spaces. */
static char *gather_text(const char *file, int argc, char **argv, size_t *len)
{
    if (file != NULL) {
        FILE *in = fopen(file, "rb");
        if (in == NULL) {
            fprintf(stderr, "pio: cannot open %s: %s\n", file, strerror(errno));
            return NULL;
        }
        char *text = NULL;
        size_t capacity = 0;
        FILE *out = open_memstream(&text, &capacity);
        char chunk[65536];
        size_t got;
        while (out != NULL && (got = fread(chunk, 1, sizeof chunk, in)) > 0)
            fwrite(chunk, 1, got, out);
        fclose(in);
        if (out == NULL || fclose(out) != 0)
            return NULL;
        *len = capacity;
        return text;
    }
    size_t total = 1;
    for (int i = 0; i < argc; i++)
        total += strlen(argv[i]) + 1;
    char *text = calloc(1, total);
    for (int i = 0; text != NULL && i < argc; i++) {
        if (i > 0)
            strcat(text, " ");
        strcat(text, argv[i]);
    }
    if (text != NULL)
        *len = strlen(text);
    return text;
}

static int print_ids(pio_session *s, const char *text, size_t len, int add_special)
{
    const pio_plugin_vtable *vt = s->plugin->descriptor->vtable;
    size_t n = 0;
    pio_status status = vt->tokenize(s->instance, text, len, add_special, NULL, 0, &n);
    int32_t *ids = status == PIO_SOFT_TRUNCATED || status == PIO_OK
                       ? malloc((n ? n : 1) * sizeof *ids)
                       : NULL;
    if (ids != NULL)
        status = vt->tokenize(s->instance, text, len, add_special, ids, n, &n);
    if (status != PIO_OK) {
        pio_session_report_failure(s, "tokenize", ids == NULL && status == PIO_OK ? PIO_ERR_OUT_OF_MEMORY : status);
        free(ids);
        return 1;
    }
    putchar('[');
    for (size_t i = 0; i < n; i++)
        printf(i ? ", %d" : "%d", ids[i]);
    printf("]\n");
    free(ids);
    return 0;
}

int pio_cmd_tokenize(int argc, char **argv)
{
    static const struct option long_options[] = {
        PIO_CLI_COMMON_LONG_OPTIONS, {"file", required_argument, NULL, 'f'},
        {"add-special", no_argument, NULL, 's'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    pio_cli_options options = {0};
    const char *file = NULL;
    int add_special = 0, opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, PIO_CLI_COMMON_SHORT_OPTIONS "f:h", long_options,
                              NULL)) != -1) {
        if (opt == 'h') {
            fputs(tokenize_help, stdout);
            return 0;
        } else if (opt == 'f') {
            file = optarg;
        } else if (opt == 's') {
            add_special = 1;
        } else if (pio_cli_take_common_option(&options, opt, optarg) <= 0) {
            fputs(tokenize_help, stderr);
            return 2;
        }
    }
    size_t len = 0;
    char *text = gather_text(file, argc - optind, argv + optind, &len);
    if (text == NULL)
        return 1;
    pio_session session;
    int exit_code = 1;
    if (pio_session_open(&session, &options, PIO_LOAD_VOCAB_ONLY) == 0) {
        exit_code = print_ids(&session, text, len, add_special);
        pio_session_close(&session);
    }
    free(text);
    return exit_code;
}

static int print_text(pio_session *s, const int32_t *ids, size_t n, int skip_special)
{
    const pio_plugin_vtable *vt = s->plugin->descriptor->vtable;
    size_t len = 0;
    pio_status status = vt->detokenize(s->instance, ids, n, skip_special, NULL, 0, &len);
    char *text = status == PIO_SOFT_TRUNCATED || status == PIO_OK ? malloc(len + 1) : NULL;
    if (text != NULL)
        status = vt->detokenize(s->instance, ids, n, skip_special, text, len + 1, &len);
    if (status != PIO_OK || text == NULL) {
        pio_session_report_failure(s, "detokenize", status == PIO_OK ? PIO_ERR_OUT_OF_MEMORY : status);
        free(text);
        return 1;
    }
    fwrite(text, 1, len, stdout);
    putchar('\n');
    free(text);
    return 0;
}

int pio_cmd_detokenize(int argc, char **argv)
{
    static const struct option long_options[] = {
        PIO_CLI_COMMON_LONG_OPTIONS, {"ids", required_argument, NULL, 'i'},
        {"skip-special", no_argument, NULL, 's'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    pio_cli_options options = {0};
    const char *list = NULL;
    int skip_special = 0, opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, PIO_CLI_COMMON_SHORT_OPTIONS "h", long_options,
                              NULL)) != -1) {
        if (opt == 'h') {
            fputs(detokenize_help, stdout);
            return 0;
        } else if (opt == 'i') {
            list = optarg;
        } else if (opt == 's') {
            skip_special = 1;
        } else if (pio_cli_take_common_option(&options, opt, optarg) <= 0) {
            fputs(detokenize_help, stderr);
            return 2;
        }
    }
    if (list == NULL) {
        fprintf(stderr, "pio detokenize: --ids is required\n");
        return 2;
    }
    size_t n = 0;
    int32_t *ids = pio_cli_parse_ids("--ids", list, &n);
    if (ids == NULL)
        return 2;
    pio_session session;
    int exit_code = 1;
    if (pio_session_open(&session, &options, PIO_LOAD_VOCAB_ONLY) == 0) {
        exit_code = print_text(&session, ids, n, skip_special);
        pio_session_close(&session);
    }
    free(ids);
    return exit_code;
}
