/* pio logits: the float32 logits of every position of a token sequence, as a .npy file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/commands.h"
#include "host/npy.h"
#include "host/session.h"

static const char logits_help[] =
    "usage: pio logits (-m MODEL_DIR | -c CONFIG) --tokens ID,ID,... --out FILE.npy\n"
    "Runs one forward pass over the token ids and writes the float32 logits of every position,\n"
    "shape [n_tokens, vocab], as a NumPy .npy file. Needs no tokenizer files.\n\n"
    "      --tokens LIST      comma-separated token ids\n"
    "      --out FILE         output .npy file\n" PIO_CLI_COMMON_HELP;

static int write_logits(pio_session *session, const int32_t *ids, size_t n, const char *out)
{
    const pio_plugin_vtable *vt = session->plugin->descriptor->vtable;
    pio_model_info info = {.struct_size = sizeof info};
    pio_status status = vt->get_model_info(session->instance, &info);
    if (status != PIO_OK) {
        pio_session_report_failure(session, "get_model_info", status);
        return 1;
    }
    float *logits = malloc(n * info.vocab_size * sizeof *logits);
    if (logits == NULL) {
        fprintf(stderr, "pio: out of memory for %zu x %zu logits\n", n, info.vocab_size);
        return 1;
    }
    pio_infer_request request = {.struct_size = sizeof request, .tokens = ids, .n_tokens = n,
                                 .logits_mode = PIO_LOGITS_ALL, .logits = logits,
                                 .logits_capacity = n * info.vocab_size};
    pio_infer_result result = {.struct_size = sizeof result};
    status = vt->infer(session->instance, &request, &result);
    int exit_code = 0;
    pio_error err;
    if (status != PIO_OK) {
        pio_session_report_failure(session, "infer", status);
        exit_code = 1;
    } else if (pio_npy_write_f32(out, logits, result.n_rows, result.vocab_size, &err) != PIO_OK) {
        fprintf(stderr, "pio: %s\n", err.message);
        exit_code = 1;
    } else {
        fprintf(stderr, "pio: wrote %s [%zu, %zu]\n", out, result.n_rows, result.vocab_size);
    }
    free(logits);
    return exit_code;
}

int pio_cmd_logits(int argc, char **argv)
{
    static const struct option long_options[] = {
        PIO_CLI_COMMON_LONG_OPTIONS, {"tokens", required_argument, NULL, 't'},
        {"out", required_argument, NULL, 'o'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    pio_cli_options options = {0};
    const char *tokens = NULL, *out = NULL;
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, PIO_CLI_COMMON_SHORT_OPTIONS "t:o:h", long_options,
                              NULL)) != -1) {
        if (opt == 'h') {
            fputs(logits_help, stdout);
            return 0;
        }
        if (opt == 't')
            tokens = optarg;
        else if (opt == 'o')
            out = optarg;
        else if (pio_cli_take_common_option(&options, opt, optarg) <= 0) {
            fputs(logits_help, stderr);
            return 2;
        }
    }
    if (tokens == NULL || out == NULL) {
        fprintf(stderr, "pio logits: --tokens and --out are required\n");
        return 2;
    }
    size_t n = 0;
    int32_t *ids = pio_cli_parse_ids("--tokens", tokens, &n);
    if (ids == NULL)
        return 2;
    pio_session session;
    int exit_code = 1;
    if (pio_session_open(&session, &options, 0) == 0) {
        exit_code = write_logits(&session, ids, n, out);
        pio_session_close(&session);
    }
    free(ids);
    return exit_code;
}
