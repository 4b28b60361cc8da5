/* pio: the Inference-PIO host executable. Dispatches to the subcommands. */
#include <stdio.h>
#include <string.h>

#include "host/commands.h"
#include "pio/plugin.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} commands[] = {
    {"list", pio_cmd_list, "show the plugins found and the files rejected"},
    {"run", pio_cmd_run, "generate a reply to one prompt"},
    {"chat", pio_cmd_chat, "interactive chat that keeps the conversation"},
    {"bench", pio_cmd_bench, "measure prompt processing and generation speed"},
    {"logits", pio_cmd_logits, "write the logits of a token sequence as a .npy file"},
    {"tokenize", pio_cmd_tokenize, "print the token ids of a text (loads the tokenizer only)"},
    {"detokenize", pio_cmd_detokenize, "print the text of token ids (loads the tokenizer only)"},
    {"serve", pio_cmd_serve, "serve the model over HTTP (needs a batching plugin)"},
};

static void print_usage(FILE *out)
{
    fprintf(out, "usage: pio [--version] [--help] COMMAND [OPTIONS]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-8s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n`pio COMMAND --help` describes each command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        print_usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        print_usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("pio %s (plugin ABI %d.%d)\n", PIO_SDK_VERSION_STRING, PIO_ABI_MAJOR,
               PIO_ABI_MINOR);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "pio: unknown command '%s'\n", argv[1]);
    print_usage(stderr);
    return 2;
}
