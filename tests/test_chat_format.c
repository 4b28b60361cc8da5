/*
 * Chat formatting: every golden case in tests/fixtures/chat/cases.json (rendered from the real
 * templates by tools/make_chat_fixtures.py) must come out byte-identical, plus the API's
 * argument checks and the inputs the templates reject.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pio/chat_format.h"

#ifndef PIO_TEST_SHARED_DIR
#define PIO_TEST_SHARED_DIR "../shared"
#endif

/* Overridable so other case files (e.g. a differential fuzz run) can be checked the same way. */
#ifndef CASES_PATH
#define CASES_PATH "tests/fixtures/chat/cases.json"
#endif

/* ---------------------------------------------------------------------------------------- */
/* Building pio_chat_message lists from fixture JSON                                          */
/* ---------------------------------------------------------------------------------------- */
typedef struct fixture_chat {
    size_t n;
    pio_chat_message *messages;
    const pio_chat_message **pointers;
    char **tool_calls_json;          /* per message, owned */
    pio_chat_parts *parts;           /* per message */
    pio_chat_part **part_arrays;     /* per message, owned */
    const pio_chat_parts **part_pointers;
    int any_parts;
    char *tools_json;                /* owned */
} fixture_chat;

static const char *string_or_null(const json_t *object, const char *key)
{
    const json_t *value = json_object_get(object, key);
    return json_is_string(value) ? json_string_value(value) : NULL;
}

static void load_parts(fixture_chat *chat, size_t i, const json_t *list)
{
    size_t n = json_array_size(list);
    chat->part_arrays[i] = calloc(n > 0 ? n : 1, sizeof(pio_chat_part));
    assert_non_null(chat->part_arrays[i]);
    for (size_t k = 0; k < n; k++) {
        const json_t *item = json_array_get(list, k);
        const char *type = string_or_null(item, "type");
        assert_non_null(type);
        pio_chat_part *part = &chat->part_arrays[i][k];
        if (strcmp(type, "text") == 0) {
            part->type = PIO_CHAT_PART_TEXT;
            part->text = string_or_null(item, "text");
        } else {
            part->type = strcmp(type, "image") == 0 ? PIO_CHAT_PART_IMAGE : PIO_CHAT_PART_VIDEO;
        }
    }
    chat->parts[i].parts = chat->part_arrays[i];
    chat->parts[i].n_parts = n;
    chat->part_pointers[i] = &chat->parts[i];
    chat->any_parts = 1;
}

static void load_fixture_chat(fixture_chat *chat, const json_t *messages, const json_t *tools)
{
    memset(chat, 0, sizeof *chat);
    chat->n = json_array_size(messages);
    size_t alloc = chat->n > 0 ? chat->n : 1;
    chat->messages = calloc(alloc, sizeof *chat->messages);
    chat->pointers = calloc(alloc, sizeof *chat->pointers);
    chat->tool_calls_json = calloc(alloc, sizeof *chat->tool_calls_json);
    chat->parts = calloc(alloc, sizeof *chat->parts);
    chat->part_arrays = calloc(alloc, sizeof *chat->part_arrays);
    chat->part_pointers = calloc(alloc, sizeof *chat->part_pointers);
    assert_true(chat->messages && chat->pointers && chat->tool_calls_json && chat->parts &&
                chat->part_arrays && chat->part_pointers);
    for (size_t i = 0; i < chat->n; i++) {
        const json_t *m = json_array_get(messages, i);
        pio_chat_message *out = &chat->messages[i];
        out->struct_size = sizeof *out;
        out->role = string_or_null(m, "role");
        out->content = string_or_null(m, "content");
        out->reasoning_content = string_or_null(m, "reasoning_content");
        out->name = string_or_null(m, "name");
        const json_t *content = json_object_get(m, "content");
        if (json_is_array(content))
            load_parts(chat, i, content);
        const json_t *calls = json_object_get(m, "tool_calls");
        if (calls != NULL) {
            chat->tool_calls_json[i] = json_dumps(calls, JSON_PRESERVE_ORDER | JSON_COMPACT);
            out->tool_calls_json = chat->tool_calls_json[i];
        }
        chat->pointers[i] = out;
    }
    if (json_is_array(tools))
        chat->tools_json = json_dumps(tools, JSON_PRESERVE_ORDER);
}

static void free_fixture_chat(fixture_chat *chat)
{
    for (size_t i = 0; i < chat->n; i++) {
        free(chat->tool_calls_json[i]);
        free(chat->part_arrays[i]);
    }
    free(chat->messages);
    free(chat->pointers);
    free(chat->tool_calls_json);
    free(chat->parts);
    free(chat->part_arrays);
    free(chat->part_pointers);
    free(chat->tools_json);
}

static int flag_or_default(const json_t *c, const char *key, int fallback)
{
    const json_t *value = json_object_get(c, key);
    return value == NULL ? fallback : json_is_true(value);
}

/* Prints where two prompts first differ, with some context, to make failures readable. */
static void report_difference(const char *name, const char *expected, const char *actual)
{
    size_t at = 0;
    while (expected[at] != '\0' && expected[at] == actual[at])
        at++;
    size_t from = at > 60 ? at - 60 : 0;
    fprintf(stderr, "case %s differs at byte %zu\n  expected: ...%.120s\n  actual:   ...%.120s\n",
            name, at, expected + from, actual + from);
}

/* Renders one fixture case; returns 1 when the output matches. */
static int run_case(const json_t *c)
{
    const char *name = string_or_null(c, "name");
    const char *template_name = string_or_null(c, "template");
    const char *expected = string_or_null(c, "expected");
    assert_non_null(name);
    assert_non_null(expected);
    pio_chat_format format = pio_chat_format_from_name(template_name);
    assert_int_not_equal(format, PIO_CHAT_FORMAT_UNKNOWN);

    fixture_chat chat;
    load_fixture_chat(&chat, json_object_get(c, "messages"), json_object_get(c, "tools"));
    pio_chat_options options;
    pio_chat_options_init(&options);
    options.tools_json = chat.tools_json;
    options.add_generation_prompt = flag_or_default(c, "add_generation_prompt", 1);
    options.enable_thinking = flag_or_default(c, "enable_thinking", -1);
    options.clear_thinking = flag_or_default(c, "clear_thinking", -1);
    options.add_vision_id = flag_or_default(c, "add_vision_id", 0);
    options.content_parts = chat.any_parts ? chat.part_pointers : NULL;

    char *prompt = NULL;
    size_t len = 0;
    pio_error err;
    pio_error_clear(&err);
    pio_status status = pio_chat_render(format, chat.pointers, chat.n, &options, &prompt, &len, &err);
    int ok = 0;
    if (status != PIO_OK) {
        fprintf(stderr, "case %s: render failed: %s (%s)\n", name, err.message, pio_status_str(status));
    } else if (strcmp(prompt, expected) != 0 || len != strlen(expected)) {
        report_difference(name, expected, prompt);
    } else {
        ok = 1;
    }
    free(prompt);
    free_fixture_chat(&chat);
    return ok;
}

static void test_golden_cases_are_byte_identical(void **state)
{
    (void)state;
    json_error_t jerr;
    json_t *root = json_load_file(CASES_PATH, 0, &jerr);
    if (root == NULL)
        fail_msg("%s: %s (line %d)", CASES_PATH, jerr.text, jerr.line);
    const json_t *cases = json_object_get(root, "cases");
    assert_true(json_array_size(cases) >= 60);
    size_t failures = 0;
    size_t per_template[5] = {0};
    for (size_t i = 0; i < json_array_size(cases); i++) {
        const json_t *c = json_array_get(cases, i);
        failures += run_case(c) ? 0 : 1;
        per_template[pio_chat_format_from_name(string_or_null(c, "template"))]++;
    }
    json_decref(root);
    /* Every format is covered by the fixture. */
    for (int f = PIO_CHAT_FORMAT_QWEN3; f <= PIO_CHAT_FORMAT_GLM4; f++)
        assert_true(per_template[f] >= 10);
    assert_int_equal(failures, 0);
}

/* ---------------------------------------------------------------------------------------- */
/* Direct API tests                                                                           */
/* ---------------------------------------------------------------------------------------- */
static pio_chat_message make_message(const char *role, const char *content)
{
    pio_chat_message m;
    memset(&m, 0, sizeof m);
    m.struct_size = sizeof m;
    m.role = role;
    m.content = content;
    return m;
}

static pio_status render(pio_chat_format format, const pio_chat_message *const *messages, size_t n,
                         const pio_chat_options *options, char **prompt, pio_error *err)
{
    pio_error_clear(err);
    return pio_chat_render(format, messages, n, options, prompt, NULL, err);
}

static void expect_render(pio_chat_format format, const pio_chat_message *const *messages, size_t n,
                          const pio_chat_options *options, const char *expected)
{
    char *prompt = NULL;
    pio_error err;
    pio_status status = render(format, messages, n, options, &prompt, &err);
    if (status != PIO_OK)
        fail_msg("render failed: %s", err.message);
    assert_string_equal(prompt, expected);
    free(prompt);
}

static void expect_error(pio_chat_format format, const pio_chat_message *const *messages, size_t n,
                         const pio_chat_options *options, pio_status expected, const char *fragment)
{
    char *prompt = (char *)"untouched";
    pio_error err;
    pio_status status = render(format, messages, n, options, &prompt, &err);
    assert_int_equal(status, expected);
    assert_null(prompt);
    if (strstr(err.message, fragment) == NULL)
        fail_msg("error \"%s\" does not mention \"%s\"", err.message, fragment);
}

static void test_format_names(void **state)
{
    (void)state;
    assert_int_equal(pio_chat_format_from_name("qwen3_4b_instruct_2507"), PIO_CHAT_FORMAT_QWEN3);
    assert_int_equal(pio_chat_format_from_name("qwen3_coder_30b"), PIO_CHAT_FORMAT_QWEN3_CODER);
    assert_int_equal(pio_chat_format_from_name("qwen3_vl_2b"), PIO_CHAT_FORMAT_QWEN3_VL);
    assert_int_equal(pio_chat_format_from_name("glm_4_7"), PIO_CHAT_FORMAT_GLM4);
    for (int f = PIO_CHAT_FORMAT_QWEN3; f <= PIO_CHAT_FORMAT_GLM4; f++)
        assert_int_equal(pio_chat_format_from_name(pio_chat_format_name((pio_chat_format)f)), f);
    assert_int_equal(pio_chat_format_from_name("llama3"), PIO_CHAT_FORMAT_UNKNOWN);
    assert_int_equal(pio_chat_format_from_name(NULL), PIO_CHAT_FORMAT_UNKNOWN);
    assert_string_equal(pio_chat_format_name((pio_chat_format)99), "unknown");
}

static char *read_text_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)size + 1);
    assert_non_null(text);
    assert_int_equal(fread(text, 1, (size_t)size, f), (size_t)size);
    text[size] = '\0';
    fclose(f);
    return text;
}

static void test_detect_real_templates(void **state)
{
    (void)state;
    static const char *const folders[] = {"qwen3_4b_instruct_2507", "qwen3_coder_30b", "qwen3_vl_2b", "glm_4_7"};
    for (size_t i = 0; i < 4; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/models/%s/chat_template.jinja", PIO_TEST_SHARED_DIR, folders[i]);
        char *text = read_text_file(path);
        if (text == NULL)
            fail_msg("cannot read %s", path);
        assert_int_equal(pio_chat_format_detect(text), pio_chat_format_from_name(folders[i]));
        free(text);
    }
    assert_int_equal(pio_chat_format_detect("{{ messages }}"), PIO_CHAT_FORMAT_UNKNOWN);
    assert_int_equal(pio_chat_format_detect(NULL), PIO_CHAT_FORMAT_UNKNOWN);
}

static void test_defaults_and_request_wrapper(void **state)
{
    (void)state;
    pio_chat_message user = make_message("user", "hi");
    const pio_chat_message *messages[] = {&user};
    /* NULL options: generation prompt on, template thinking default. */
    expect_render(PIO_CHAT_FORMAT_GLM4, messages, 1, NULL, "[gMASK]<sop><|user|>hi<|assistant|><think>");

    pio_chat_request request;
    memset(&request, 0, sizeof request);
    request.struct_size = sizeof request;
    request.messages = messages;
    request.n_messages = 1;
    request.add_generation_prompt = 1;
    request.enable_thinking = 0;
    char *prompt = NULL;
    size_t len = 0;
    pio_error err;
    assert_int_equal(pio_chat_render_request(PIO_CHAT_FORMAT_GLM4, &request, &prompt, &len, &err), PIO_OK);
    assert_string_equal(prompt, "[gMASK]<sop><|user|>hi<|assistant|></think>");
    assert_int_equal(len, strlen(prompt));
    free(prompt);

    request.struct_size = offsetof(pio_chat_request, tools_json);
    assert_int_equal(pio_chat_render_request(PIO_CHAT_FORMAT_GLM4, &request, &prompt, &len, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_null(prompt);
    assert_int_equal(pio_chat_render_request(PIO_CHAT_FORMAT_GLM4, NULL, &prompt, &len, &err),
                     PIO_ERR_INVALID_ARGUMENT);
}

/* Arguments given as a JSON string are parsed for the formats whose templates need a mapping,
 * so they render exactly like the same arguments given as an object. */
static void test_string_arguments_match_object_arguments(void **state)
{
    (void)state;
    static const pio_chat_format formats[] = {PIO_CHAT_FORMAT_QWEN3_CODER, PIO_CHAT_FORMAT_GLM4};
    pio_chat_message user = make_message("user", "go");
    pio_chat_message as_object = make_message("assistant", NULL);
    as_object.tool_calls_json = "[{\"name\":\"f\",\"arguments\":{\"a\":1,\"b\":\"x\",\"c\":[true,null]}}]";
    pio_chat_message as_string = make_message("assistant", NULL);
    as_string.tool_calls_json = "[{\"type\":\"function\",\"function\":{\"name\":\"f\","
                                "\"arguments\":\"{\\\"a\\\":1,\\\"b\\\":\\\"x\\\",\\\"c\\\":[true,null]}\"}}]";
    const pio_chat_message *with_object[] = {&user, &as_object};
    const pio_chat_message *with_string[] = {&user, &as_string};
    for (size_t i = 0; i < 2; i++) {
        char *a = NULL, *b = NULL;
        pio_error err;
        assert_int_equal(render(formats[i], with_object, 2, NULL, &a, &err), PIO_OK);
        assert_int_equal(render(formats[i], with_string, 2, NULL, &b, &err), PIO_OK);
        assert_string_equal(a, b);
        free(a);
        free(b);
    }
    expect_render(PIO_CHAT_FORMAT_QWEN3_CODER, with_string, 2, NULL,
                  "<|im_start|>user\ngo<|im_end|>\n<|im_start|>assistant\n<tool_call>\n<function=f>\n"
                  "<parameter=a>\n1\n</parameter>\n<parameter=b>\nx\n</parameter>\n<parameter=c>\n"
                  "[True, None]\n</parameter>\n</function>\n</tool_call><|im_end|>\n<|im_start|>assistant\n");

    /* A string that is not a JSON object is an error there. */
    as_string.tool_calls_json = "[{\"name\":\"f\",\"arguments\":\"[1,2]\"}]";
    expect_error(PIO_CHAT_FORMAT_GLM4, with_string, 2, NULL, PIO_ERR_INVALID_ARGUMENT, "not a JSON object");
    as_string.tool_calls_json = "[{\"name\":\"f\",\"arguments\":\"{oops\"}]";
    expect_error(PIO_CHAT_FORMAT_QWEN3_CODER, with_string, 2, NULL, PIO_ERR_INVALID_ARGUMENT,
                 "message 1: tool call 0: arguments string");
}

/* A tool without "parameters" (legal in the OpenAI API) renders as if it had an empty
 * schema; the Qwen3-Coder template itself would fail on it. */
static void test_coder_tool_without_parameters(void **state)
{
    (void)state;
    pio_chat_message user = make_message("user", "hi");
    const pio_chat_message *messages[] = {&user};
    pio_chat_options options;
    pio_chat_options_init(&options);
    options.tools_json = "[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"description\": \"d\", \"parameters\": {}}}]";
    char *with_empty = NULL, *without = NULL;
    pio_error err;
    assert_int_equal(render(PIO_CHAT_FORMAT_QWEN3_CODER, messages, 1, &options, &with_empty, &err), PIO_OK);
    options.tools_json = "[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"description\": \"d\"}}]";
    assert_int_equal(render(PIO_CHAT_FORMAT_QWEN3_CODER, messages, 1, &options, &without, &err), PIO_OK);
    assert_string_equal(with_empty, without);
    assert_non_null(strstr(without, "<name>f</name>\n<description>d</description>\n<parameters>\n</parameters>\n</function>"));
    free(with_empty);
    free(without);
}

static void test_invalid_arguments(void **state)
{
    (void)state;
    pio_chat_message user = make_message("user", "hi");
    const pio_chat_message *messages[] = {&user};
    pio_error err;

    assert_int_equal(pio_chat_render(PIO_CHAT_FORMAT_QWEN3, messages, 1, NULL, NULL, NULL, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    expect_error(PIO_CHAT_FORMAT_UNKNOWN, messages, 1, NULL, PIO_ERR_INVALID_ARGUMENT, "unknown chat format");
    expect_error((pio_chat_format)42, messages, 1, NULL, PIO_ERR_INVALID_ARGUMENT, "unknown chat format");
    expect_error(PIO_CHAT_FORMAT_QWEN3, NULL, 1, NULL, PIO_ERR_INVALID_ARGUMENT, "messages is NULL");

    const pio_chat_message *with_null[] = {&user, NULL};
    expect_error(PIO_CHAT_FORMAT_QWEN3, with_null, 2, NULL, PIO_ERR_INVALID_ARGUMENT, "message 1 is NULL");

    pio_chat_message no_role = make_message(NULL, "x");
    const pio_chat_message *bad_role[] = {&no_role};
    expect_error(PIO_CHAT_FORMAT_GLM4, bad_role, 1, NULL, PIO_ERR_INVALID_ARGUMENT, "message 0 has no role");

    pio_chat_message small = make_message("user", "x");
    small.struct_size = offsetof(pio_chat_message, content);
    const pio_chat_message *too_small[] = {&small};
    expect_error(PIO_CHAT_FORMAT_GLM4, too_small, 1, NULL, PIO_ERR_INVALID_ARGUMENT, "struct_size");

    /* Fields beyond struct_size are not read: an old caller's message without tool_calls_json. */
    pio_chat_message old = make_message("user", "old");
    old.tool_calls_json = "not json at all";
    old.struct_size = offsetof(pio_chat_message, reasoning_content);
    const pio_chat_message *old_messages[] = {&old};
    expect_render(PIO_CHAT_FORMAT_GLM4, old_messages, 1, NULL, "[gMASK]<sop><|user|>old<|assistant|><think>");

    pio_chat_message bad_utf8 = make_message("user", "bad \xC3\x28 byte");
    const pio_chat_message *bad_text[] = {&bad_utf8};
    expect_error(PIO_CHAT_FORMAT_QWEN3, bad_text, 1, NULL, PIO_ERR_INVALID_ARGUMENT, "not valid UTF-8");
    bad_utf8.content = "overlong \xC0\xAF";
    expect_error(PIO_CHAT_FORMAT_QWEN3, bad_text, 1, NULL, PIO_ERR_INVALID_ARGUMENT, "not valid UTF-8");
    bad_utf8.content = "surrogate \xED\xA0\x80";
    expect_error(PIO_CHAT_FORMAT_QWEN3, bad_text, 1, NULL, PIO_ERR_INVALID_ARGUMENT, "not valid UTF-8");

    pio_chat_options options;
    pio_chat_options_init(&options);
    options.tools_json = "[{\"name\": ";
    expect_error(PIO_CHAT_FORMAT_QWEN3, messages, 1, &options, PIO_ERR_INVALID_ARGUMENT, "tools_json: invalid JSON");
    options.tools_json = "{\"name\": \"f\"}";
    expect_error(PIO_CHAT_FORMAT_QWEN3, messages, 1, &options, PIO_ERR_INVALID_ARGUMENT, "not a JSON array");
    options.tools_json = "[{\"big\": 123456789012345678901234567890}]";
    expect_error(PIO_CHAT_FORMAT_QWEN3, messages, 1, &options, PIO_ERR_INVALID_ARGUMENT, "tools_json");
    options.tools_json = "[\"not an object\"]";
    expect_error(PIO_CHAT_FORMAT_QWEN3_CODER, messages, 1, &options, PIO_ERR_INVALID_ARGUMENT,
                 "tool 0 is not a JSON object");
    options.tools_json = "[{\"name\": \"f\", \"parameters\": {\"properties\": [1]}}]";
    expect_error(PIO_CHAT_FORMAT_QWEN3_CODER, messages, 1, &options, PIO_ERR_INVALID_ARGUMENT,
                 "properties\" is not a JSON object");
    options.tools_json = "[{\"name\": \"f\", \"parameters\": {\"properties\": {\"p\": \"string\"}}}]";
    expect_error(PIO_CHAT_FORMAT_QWEN3_CODER, messages, 1, &options, PIO_ERR_INVALID_ARGUMENT,
                 "parameter \"p\" is not a JSON object");
}

static void test_tool_call_errors(void **state)
{
    (void)state;
    pio_chat_message user = make_message("user", "go");
    pio_chat_message assistant = make_message("assistant", "");
    const pio_chat_message *messages[] = {&user, &assistant};

    assistant.tool_calls_json = "[{\"name\": \"f\", ";
    expect_error(PIO_CHAT_FORMAT_QWEN3, messages, 2, NULL, PIO_ERR_INVALID_ARGUMENT, "message 1: tool_calls_json");
    assistant.tool_calls_json = "{\"name\": \"f\"}";
    expect_error(PIO_CHAT_FORMAT_QWEN3, messages, 2, NULL, PIO_ERR_INVALID_ARGUMENT, "not a JSON array");
    assistant.tool_calls_json = "[{\"arguments\": {}}]";
    static const pio_chat_format formats[] = {PIO_CHAT_FORMAT_QWEN3, PIO_CHAT_FORMAT_QWEN3_CODER,
                                              PIO_CHAT_FORMAT_QWEN3_VL, PIO_CHAT_FORMAT_GLM4};
    for (size_t i = 0; i < 4; i++)
        expect_error(formats[i], messages, 2, NULL, PIO_ERR_INVALID_ARGUMENT, "tool call 0 has no string \"name\"");
    assistant.tool_calls_json = "[42]";
    expect_error(PIO_CHAT_FORMAT_GLM4, messages, 2, NULL, PIO_ERR_INVALID_ARGUMENT, "tool call 0 is not a JSON object");
    /* The JSON-call templates need arguments; GLM needs them to be an object. */
    assistant.tool_calls_json = "[{\"name\": \"f\"}]";
    expect_error(PIO_CHAT_FORMAT_QWEN3, messages, 2, NULL, PIO_ERR_INVALID_ARGUMENT, "has no \"arguments\"");
    expect_error(PIO_CHAT_FORMAT_GLM4, messages, 2, NULL, PIO_ERR_INVALID_ARGUMENT, "must be a JSON object");
    assistant.tool_calls_json = "[{\"name\": \"f\", \"arguments\": [1]}]";
    expect_error(PIO_CHAT_FORMAT_QWEN3_CODER, messages, 2, NULL, PIO_ERR_INVALID_ARGUMENT, "is not a JSON object");
    /* An empty array is no tool calls at all. */
    assistant.tool_calls_json = "[]";
    assistant.content = "plain";
    expect_render(PIO_CHAT_FORMAT_QWEN3_CODER, messages, 2, NULL,
                  "<|im_start|>user\ngo<|im_end|>\n<|im_start|>assistant\nplain<|im_end|>\n<|im_start|>assistant\n");
}

/* Inputs where the template itself fails are reported, not guessed. */
static void test_template_errors_are_reported(void **state)
{
    (void)state;
    expect_error(PIO_CHAT_FORMAT_QWEN3, NULL, 0, NULL, PIO_ERR_INVALID_ARGUMENT, "at least one message");
    expect_error(PIO_CHAT_FORMAT_QWEN3_CODER, NULL, 0, NULL, PIO_ERR_INVALID_ARGUMENT, "at least one message");
    expect_error(PIO_CHAT_FORMAT_QWEN3_VL, NULL, 0, NULL, PIO_ERR_INVALID_ARGUMENT, "at least one message");

    pio_chat_message system = make_message("system", NULL);
    pio_chat_message user = make_message("user", "hi");
    const pio_chat_message *messages[] = {&system, &user};
    expect_error(PIO_CHAT_FORMAT_QWEN3, messages, 2, NULL, PIO_ERR_INVALID_ARGUMENT, "message 0 (system) has no content");

    pio_chat_message empty_user = make_message("user", NULL);
    const pio_chat_message *coder[] = {&empty_user};
    expect_error(PIO_CHAT_FORMAT_QWEN3_CODER, coder, 1, NULL, PIO_ERR_INVALID_ARGUMENT, "message 0 (user) has no content");
    pio_chat_message plain_assistant = make_message("assistant", NULL);
    const pio_chat_message *coder2[] = {&user, &plain_assistant};
    expect_error(PIO_CHAT_FORMAT_QWEN3_CODER, coder2, 2, NULL, PIO_ERR_INVALID_ARGUMENT,
                 "message 1 (assistant) has no content");
}

static void test_content_parts_support(void **state)
{
    (void)state;
    pio_chat_message user = make_message("user", "ignored when parts are given");
    const pio_chat_message *messages[] = {&user};
    pio_chat_part image_parts[] = {{PIO_CHAT_PART_TEXT, "Look: "}, {PIO_CHAT_PART_IMAGE, NULL}};
    pio_chat_parts image = {image_parts, 2};
    const pio_chat_parts *parts[] = {&image};
    pio_chat_options options;
    pio_chat_options_init(&options);
    options.content_parts = parts;

    expect_render(PIO_CHAT_FORMAT_QWEN3_VL, messages, 1, &options,
                  "<|im_start|>user\nLook: <|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
                  "<|im_start|>assistant\n");
    expect_error(PIO_CHAT_FORMAT_QWEN3, messages, 1, &options, PIO_ERR_UNSUPPORTED, "only string content");
    expect_error(PIO_CHAT_FORMAT_QWEN3_CODER, messages, 1, &options, PIO_ERR_UNSUPPORTED, "only string content");
    expect_error(PIO_CHAT_FORMAT_GLM4, messages, 1, &options, PIO_ERR_UNSUPPORTED, "no image or video");

    /* GLM takes text parts (joined), but not for tool results. */
    pio_chat_part text_parts[] = {{PIO_CHAT_PART_TEXT, "a"}, {PIO_CHAT_PART_TEXT, "b"}};
    pio_chat_parts text = {text_parts, 2};
    const pio_chat_parts *text_only[] = {&text};
    options.content_parts = text_only;
    expect_render(PIO_CHAT_FORMAT_GLM4, messages, 1, &options, "[gMASK]<sop><|user|>ab<|assistant|><think>");
    pio_chat_message tool = make_message("tool", NULL);
    const pio_chat_message *tool_messages[] = {&tool};
    expect_error(PIO_CHAT_FORMAT_GLM4, tool_messages, 1, &options, PIO_ERR_UNSUPPORTED, "tool results");

    /* Malformed parts. */
    pio_chat_part null_text[] = {{PIO_CHAT_PART_TEXT, NULL}};
    pio_chat_parts bad = {null_text, 1};
    const pio_chat_parts *bad_parts[] = {&bad};
    options.content_parts = bad_parts;
    expect_error(PIO_CHAT_FORMAT_QWEN3_VL, messages, 1, &options, PIO_ERR_INVALID_ARGUMENT, "NULL text");
    pio_chat_part unknown[] = {{(pio_chat_part_type)7, NULL}};
    pio_chat_parts bad_type = {unknown, 1};
    const pio_chat_parts *bad_type_parts[] = {&bad_type};
    options.content_parts = bad_type_parts;
    expect_error(PIO_CHAT_FORMAT_QWEN3_VL, messages, 1, &options, PIO_ERR_INVALID_ARGUMENT, "unknown type");
    pio_chat_parts missing_array = {NULL, 2};
    const pio_chat_parts *missing[] = {&missing_array};
    options.content_parts = missing;
    expect_error(PIO_CHAT_FORMAT_QWEN3_VL, messages, 1, &options, PIO_ERR_INVALID_ARGUMENT, "parts array is NULL");
    pio_chat_part bad_utf8[] = {{PIO_CHAT_PART_TEXT, "\xFF"}};
    pio_chat_parts bad_text = {bad_utf8, 1};
    const pio_chat_parts *bad_text_parts[] = {&bad_text};
    options.content_parts = bad_text_parts;
    expect_error(PIO_CHAT_FORMAT_QWEN3_VL, messages, 1, &options, PIO_ERR_INVALID_ARGUMENT, "not valid UTF-8");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_cases_are_byte_identical),
        cmocka_unit_test(test_format_names),
        cmocka_unit_test(test_detect_real_templates),
        cmocka_unit_test(test_defaults_and_request_wrapper),
        cmocka_unit_test(test_string_arguments_match_object_arguments),
        cmocka_unit_test(test_coder_tool_without_parameters),
        cmocka_unit_test(test_invalid_arguments),
        cmocka_unit_test(test_tool_call_errors),
        cmocka_unit_test(test_template_errors_are_reported),
        cmocka_unit_test(test_content_parts_support),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
