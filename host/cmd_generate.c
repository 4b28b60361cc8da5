/* pio run and pio chat: text generation through generate_text / chat_completion. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "host/commands.h"
#include "host/session.h"

#define SAMPLING_HELP                                                                        \
    "  -n, --max-new-tokens N maximum tokens to generate (default: generation.max_new_tokens)\n" \
    "      --temp T           temperature (0 = greedy)\n"                                   \
    "      --top-p P          nucleus sampling\n"                                           \
    "      --top-k K          top-k sampling (0 = off)\n"                                   \
    "      --min-p P          min-p sampling\n"                                             \
    "      --repeat-penalty R repetition penalty (1 = off)\n"                               \
    "      --presence-penalty R  presence penalty (0 = off)\n"                              \
    "      --seed S           sampling seed\n"                                              \
    "      --system TEXT      system message\n"

enum generate_option {
    OPT_TEMP = 2001, OPT_TOP_P, OPT_TOP_K, OPT_MIN_P, OPT_REPEAT, OPT_PRESENCE, OPT_SEED,
    OPT_SYSTEM, OPT_RAW, OPT_IGNORE_EOS, OPT_STOP
};

#define GENERATE_LONG_OPTIONS                                                                \
    PIO_CLI_COMMON_LONG_OPTIONS, {"max-new-tokens", required_argument, NULL, 'n'},          \
        {"temp", required_argument, NULL, OPT_TEMP},                                        \
        {"top-p", required_argument, NULL, OPT_TOP_P},                                      \
        {"top-k", required_argument, NULL, OPT_TOP_K},                                      \
        {"min-p", required_argument, NULL, OPT_MIN_P},                                      \
        {"repeat-penalty", required_argument, NULL, OPT_REPEAT},                            \
        {"presence-penalty", required_argument, NULL, OPT_PRESENCE},                        \
        {"seed", required_argument, NULL, OPT_SEED},                                        \
        {"system", required_argument, NULL, OPT_SYSTEM}, {"help", no_argument, NULL, 'h'}

typedef struct generate_options {
    pio_cli_options common;
    pio_sampling_params sampling;
    int32_t max_new_tokens;
    const char *system_prompt;
    const char *prompt;
    const char *prompt_file;
    int raw;
    int ignore_eos;
    const char *stop_strings[PIO_CLI_MAX_LIST];
    size_t n_stop_strings;
} generate_options;

static int parse_float(const char *name, const char *text, float *out)
{
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !isfinite(value)) {
        fprintf(stderr, "pio: %s expects a number, got '%s'\n", name, text);
        return -1;
    }
    *out = (float)value;
    return 0;
}

static int parse_int64(const char *name, const char *text, long long *out)
{
    char *end;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0') {
        fprintf(stderr, "pio: %s expects an integer, got '%s'\n", name, text);
        return -1;
    }
    *out = value;
    return 0;
}

/* Stores one sampling/generation option. Returns 1 taken, 0 not ours, -1 bad value. */
static int take_generate_option(generate_options *o, int opt, const char *arg)
{
    pio_sampling_params *s = &o->sampling;
    long long integer = 0;
    switch (opt) {
    case 'n':
        if (parse_int64("--max-new-tokens", arg, &integer) || integer < 0 || integer > INT32_MAX)
            return -1;
        o->max_new_tokens = (int32_t)integer;
        return 1;
    case OPT_TEMP: s->fields_set |= PIO_SAMPLING_TEMPERATURE; return parse_float("--temp", arg, &s->temperature) ? -1 : 1;
    case OPT_TOP_P: s->fields_set |= PIO_SAMPLING_TOP_P; return parse_float("--top-p", arg, &s->top_p) ? -1 : 1;
    case OPT_MIN_P: s->fields_set |= PIO_SAMPLING_MIN_P; return parse_float("--min-p", arg, &s->min_p) ? -1 : 1;
    case OPT_REPEAT: s->fields_set |= PIO_SAMPLING_REPETITION_PENALTY; return parse_float("--repeat-penalty", arg, &s->repetition_penalty) ? -1 : 1;
    case OPT_PRESENCE: s->fields_set |= PIO_SAMPLING_PRESENCE_PENALTY; return parse_float("--presence-penalty", arg, &s->presence_penalty) ? -1 : 1;
    case OPT_TOP_K:
        if (parse_int64("--top-k", arg, &integer) || integer < 0 || integer > INT32_MAX)
            return -1;
        s->fields_set |= PIO_SAMPLING_TOP_K;
        s->top_k = (int32_t)integer;
        return 1;
    case OPT_SEED:
        if (parse_int64("--seed", arg, &integer))
            return -1;
        s->fields_set |= PIO_SAMPLING_SEED;
        s->seed = (uint64_t)integer;
        return 1;
    case OPT_SYSTEM: o->system_prompt = arg; return 1;
    case OPT_RAW: o->raw = 1; return 1;
    case OPT_IGNORE_EOS: o->ignore_eos = 1; return 1;
    case OPT_STOP:
        if (o->n_stop_strings == PIO_CLI_MAX_LIST)
            return -1;
        o->stop_strings[o->n_stop_strings++] = arg;
        return 1;
    case 'p': o->prompt = arg; return 1;
    case 'f': o->prompt_file = arg; return 1;
    default: return pio_cli_take_common_option(&o->common, opt, arg);
    }
}

/* Runs getopt over argv. Returns 0 to go on, or exit status + 1 (help -> 1, error -> 3). */
static int parse_generate_args(int argc, char **argv, const struct option *long_options,
                               const char *short_options, const char *help,
                               generate_options *o)
{
    memset(o, 0, sizeof *o);
    o->sampling.struct_size = sizeof o->sampling;
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, short_options, long_options, NULL)) != -1) {
        if (opt == 'h') {
            fputs(help, stdout);
            return 1;
        }
        if (take_generate_option(o, opt, optarg) <= 0) {
            fputs(help, stderr);
            return 3;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "pio: unexpected argument '%s'\n", argv[optind]);
        return 3;
    }
    return 0;
}

static int stream_to_stdout(void *user_data, int32_t token_id, const char *text, size_t len)
{
    (void)user_data;
    (void)token_id;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static const char *finish_reason_name(pio_finish_reason reason)
{
    switch (reason) {
    case PIO_FINISH_STOP: return "stop";
    case PIO_FINISH_LENGTH: return "length";
    case PIO_FINISH_CANCELLED: return "cancelled";
    case PIO_FINISH_TOOL_CALLS: return "tool_calls";
    case PIO_FINISH_ERROR: return "error";
    default: return "none";
    }
}

static void print_usage_line(const pio_generate_response *response)
{
    const pio_timings *t = &response->timings;
    fprintf(stderr,
            "\n[prompt %llu tokens in %.1f ms (%.1f tok/s), generated %llu tokens (%.1f tok/s), "
            "first token after %.1f ms, finish: %s]\n",
            (unsigned long long)response->usage.prompt_tokens, t->prompt_ms, t->prompt_tokens_per_s,
            (unsigned long long)response->usage.completion_tokens, t->decode_tokens_per_s,
            t->time_to_first_token_ms, finish_reason_name(response->finish_reason));
}

/* Reads a whole stream into a NUL-terminated buffer the caller frees. */
static char *read_all(FILE *in, size_t *len_out)
{
    size_t capacity = 4096, len = 0;
    char *buf = malloc(capacity);
    while (buf != NULL) {
        len += fread(buf + len, 1, capacity - len - 1, in);
        if (len < capacity - 1)
            break;
        capacity *= 2;
        char *grown = realloc(buf, capacity);
        if (grown == NULL) {
            free(buf);
            return NULL;
        }
        buf = grown;
    }
    if (buf != NULL) {
        buf[len] = '\0';
        *len_out = len;
    }
    return buf;
}

static char *load_prompt(const generate_options *o)
{
    size_t len = 0;
    if (o->prompt != NULL)
        return strdup(o->prompt);
    FILE *in = o->prompt_file ? fopen(o->prompt_file, "rb") : stdin;
    if (in == NULL) {
        fprintf(stderr, "pio: cannot open %s: %s\n", o->prompt_file, strerror(errno));
        return NULL;
    }
    char *text = read_all(in, &len);
    if (in != stdin)
        fclose(in);
    return text;
}

static const char run_help[] =
    "usage: pio run (-c CONFIG | -m MODEL_DIR) [-p PROMPT | -f FILE] [OPTIONS]\n"
    "Generates a reply to one prompt, streamed to stdout. The prompt is wrapped in the model's\n"
    "chat format as one user message; --raw sends it as plain text instead. Without -p or -f\n"
    "the prompt is read from stdin.\n\n"
    "  -p, --prompt TEXT      the prompt\n"
    "  -f, --file FILE        read the prompt from FILE\n"
    "      --raw              plain completion, no chat format\n"
    "      --ignore-eos       keep generating past end-of-sequence tokens\n"
    "      --stop TEXT        stop string (repeatable)\n" SAMPLING_HELP PIO_CLI_COMMON_HELP;

static pio_status run_once(pio_session *session, const generate_options *o, const char *prompt,
                           pio_generate_response *response)
{
    const pio_plugin_vtable *vt = session->plugin->descriptor->vtable;
    pio_stop_conditions stop = {
        .struct_size = sizeof stop,
        .stop_strings = o->stop_strings,
        .n_stop_strings = o->n_stop_strings,
        .ignore_eos = o->ignore_eos,
    };
    if (o->raw) {
        pio_generate_request request = {
            .struct_size = sizeof request, .prompt = prompt, .prompt_len = strlen(prompt),
            .max_new_tokens = o->max_new_tokens, .add_special_tokens = 1,
            .sampling = &o->sampling, .stop = &stop, .on_token = stream_to_stdout,
        };
        return vt->generate_text(session->instance, &request, response);
    }
    pio_chat_message system = {.struct_size = sizeof system, .role = "system",
                               .content = o->system_prompt};
    pio_chat_message user = {.struct_size = sizeof user, .role = "user", .content = prompt};
    const pio_chat_message *messages[2] = {&system, &user};
    size_t first = o->system_prompt ? 0 : 1;
    pio_chat_request request = {
        .struct_size = sizeof request, .messages = messages + first, .n_messages = 2 - first,
        .add_generation_prompt = 1, .enable_thinking = -1, .max_new_tokens = o->max_new_tokens,
        .sampling = &o->sampling, .stop = &stop, .on_token = stream_to_stdout,
    };
    return vt->chat_completion(session->instance, &request, response);
}

int pio_cmd_run(int argc, char **argv)
{
    static const struct option long_options[] = {
        GENERATE_LONG_OPTIONS,
        {"prompt", required_argument, NULL, 'p'}, {"file", required_argument, NULL, 'f'},
        {"raw", no_argument, NULL, OPT_RAW}, {"ignore-eos", no_argument, NULL, OPT_IGNORE_EOS},
        {"stop", required_argument, NULL, OPT_STOP}, {NULL, 0, NULL, 0}};
    generate_options o;
    int parsed = parse_generate_args(argc, argv, long_options, PIO_CLI_COMMON_SHORT_OPTIONS "n:p:f:h",
                                     run_help, &o);
    if (parsed)
        return parsed - 1;
    char *prompt = load_prompt(&o);
    if (prompt == NULL)
        return 1;
    pio_session session;
    if (pio_session_open(&session, &o.common, 0) != 0) {
        free(prompt);
        return 1;
    }
    pio_host_install_interrupt_handler();
    pio_generate_response response = {.struct_size = sizeof response};
    pio_status status = run_once(&session, &o, prompt, &response);
    int exit_code = 0;
    if (PIO_IS_ERROR(status)) {
        pio_session_report_failure(&session, o.raw ? "generate_text" : "chat_completion", status);
        exit_code = 1;
    } else {
        print_usage_line(&response);
    }
    session.plugin->descriptor->vtable->free_response(session.instance, &response);
    pio_session_close(&session);
    free(prompt);
    return exit_code;
}

/* ---- pio chat ------------------------------------------------------------------------------ */

typedef struct conversation {
    pio_chat_message *messages; /* owned strings in role/content */
    size_t count, capacity;
} conversation;

static int conversation_add(conversation *c, const char *role, const char *content)
{
    if (c->count == c->capacity) {
        size_t capacity = c->capacity ? c->capacity * 2 : 8;
        pio_chat_message *grown = realloc(c->messages, capacity * sizeof *grown);
        if (grown == NULL)
            return -1;
        c->messages = grown;
        c->capacity = capacity;
    }
    char *role_copy = strdup(role), *content_copy = strdup(content ? content : "");
    if (role_copy == NULL || content_copy == NULL) {
        free(role_copy);
        free(content_copy);
        return -1;
    }
    c->messages[c->count++] = (pio_chat_message){
        .struct_size = sizeof(pio_chat_message), .role = role_copy, .content = content_copy};
    return 0;
}

static void conversation_clear(conversation *c, size_t keep)
{
    while (c->count > keep) {
        c->count--;
        free((char *)c->messages[c->count].role);
        free((char *)c->messages[c->count].content);
    }
}

static pio_status chat_turn(pio_session *session, const generate_options *o, conversation *c,
                            pio_generate_response *response)
{
    const pio_chat_message **pointers = malloc(c->count * sizeof *pointers);
    if (pointers == NULL)
        return PIO_ERR_OUT_OF_MEMORY;
    for (size_t i = 0; i < c->count; i++)
        pointers[i] = &c->messages[i];
    pio_chat_request request = {
        .struct_size = sizeof request, .messages = pointers, .n_messages = c->count,
        .add_generation_prompt = 1, .enable_thinking = -1, .max_new_tokens = o->max_new_tokens,
        .sampling = &o->sampling, .on_token = stream_to_stdout,
    };
    pio_status status =
        session->plugin->descriptor->vtable->chat_completion(session->instance, &request, response);
    free(pointers);
    return status;
}

static const char chat_help[] =
    "usage: pio chat (-c CONFIG | -m MODEL_DIR) [OPTIONS]\n"
    "Interactive chat: each line read from stdin is a user message; the conversation is kept.\n"
    "Commands: /reset forgets the conversation, /exit (or end of input) quits.\n\n" SAMPLING_HELP
        PIO_CLI_COMMON_HELP;

/* One conversation loop; returns the exit status. */
static int chat_loop(pio_session *session, const generate_options *o, conversation *c)
{
    size_t keep = c->count; /* the system message survives /reset */
    int interactive = isatty(STDIN_FILENO);
    char *line = NULL;
    size_t line_capacity = 0;
    int exit_code = 0;
    for (;;) {
        if (interactive) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        ssize_t len = getline(&line, &line_capacity, stdin);
        if (len < 0)
            break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0)
            continue;
        if (strcmp(line, "/exit") == 0 || strcmp(line, "/quit") == 0)
            break;
        if (strcmp(line, "/reset") == 0) {
            conversation_clear(c, keep);
            continue;
        }
        if (conversation_add(c, "user", line) != 0) {
            exit_code = 1;
            break;
        }
        pio_generate_response response = {.struct_size = sizeof response};
        pio_status status = chat_turn(session, o, c, &response);
        fputc('\n', stdout);
        fflush(stdout);
        if (PIO_IS_ERROR(status)) {
            pio_session_report_failure(session, "chat_completion", status);
            exit_code = 1;
        } else if (conversation_add(c, "assistant", response.text) != 0) {
            exit_code = 1;
        }
        session->plugin->descriptor->vtable->free_response(session->instance, &response);
        if (exit_code != 0)
            break;
    }
    free(line);
    return exit_code;
}

int pio_cmd_chat(int argc, char **argv)
{
    static const struct option long_options[] = {GENERATE_LONG_OPTIONS, {NULL, 0, NULL, 0}};
    generate_options o;
    int parsed = parse_generate_args(argc, argv, long_options, PIO_CLI_COMMON_SHORT_OPTIONS "n:h",
                                     chat_help, &o);
    if (parsed)
        return parsed - 1;
    pio_session session;
    if (pio_session_open(&session, &o.common, 0) != 0)
        return 1;
    conversation c = {0};
    int exit_code = 0;
    if (o.system_prompt != NULL && conversation_add(&c, "system", o.system_prompt) != 0)
        exit_code = 1;
    if (exit_code == 0)
        exit_code = chat_loop(&session, &o, &c);
    conversation_clear(&c, 0);
    free(c.messages);
    pio_session_close(&session);
    return exit_code;
}
