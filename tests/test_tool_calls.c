/*
 * Tool-call parsing: the three call syntaxes, value conversion by the declared parameter types,
 * round trips through the chat formatter, and malformed text (kept as text, never a crash).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pio/chat_format.h"
#include "pio/tool_calls.h"

/* Tool definitions shared by the tests (OpenAI form and bare form). */
static const char k_tools[] =
    "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather.\","
    "  \"parameters\": {\"type\": \"object\", \"properties\": {"
    "    \"city\": {\"type\": \"string\"}, \"days\": {\"type\": \"integer\"},"
    "    \"ratio\": {\"type\": \"number\"}, \"metric\": {\"type\": \"boolean\"},"
    "    \"options\": {\"type\": \"object\"}, \"tags\": {\"type\": \"array\"},"
    "    \"note\": {\"type\": [\"string\", \"null\"]}, \"code\": {\"type\": \"String\"},"
    "    \"count\": {\"type\": \"int64\"}, \"free\": {\"description\": \"no type\"}},"
    "  \"required\": [\"city\"]}}},"
    " {\"name\": \"write_file\", \"parameters\": {\"type\": \"object\", \"properties\": {"
    "    \"path\": {\"type\": \"string\"}, \"content\": {\"type\": \"string\"}, \"mode\": {\"type\": \"integer\"}}}}]";

typedef struct expected_call {
    const char *name;
    const char *arguments_json;
} expected_call;

static void expect_parse(pio_chat_format format, const char *text, const char *tools_json,
                         const char *expected_text, const expected_call *calls, size_t n_calls)
{
    pio_tool_call_list list;
    pio_error err;
    pio_error_clear(&err);
    pio_status status = pio_tool_calls_parse(format, text, strlen(text), tools_json, &list, &err);
    if (status != PIO_OK)
        fail_msg("parse failed: %s", err.message);
    assert_string_equal(list.text, expected_text);
    assert_int_equal(list.text_len, strlen(expected_text));
    if (list.n_calls != n_calls)
        fail_msg("expected %zu calls, got %zu (text \"%s\")", n_calls, list.n_calls, list.text);
    for (size_t i = 0; i < n_calls; i++) {
        assert_ptr_equal(list.call_pointers[i], &list.calls[i]);
        assert_int_equal(list.calls[i].struct_size, sizeof(pio_tool_call));
        assert_string_equal(list.calls[i].name, calls[i].name);
        assert_string_equal(list.calls[i].arguments_json, calls[i].arguments_json);
    }
    pio_tool_call_list_free(&list);
    assert_null(list.text);
    assert_int_equal(list.n_calls, 0);
}

/* Text that holds no well-formed call comes back unchanged, with no calls. */
static void expect_plain(pio_chat_format format, const char *text)
{
    expect_parse(format, text, k_tools, text, NULL, 0);
}

/* ---------------------------------------------------------------------------------------- */
/* Qwen3 / Qwen3-VL JSON calls                                                                */
/* ---------------------------------------------------------------------------------------- */
static void test_qwen3_json_calls(void **state)
{
    (void)state;
    const expected_call one[] = {{"get_weather", "{\"city\": \"Paris\", \"days\": 2}"}};
    expect_parse(PIO_CHAT_FORMAT_QWEN3,
                 "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n</tool_call>",
                 k_tools, "Let me check.", one, 1);
    expect_parse(PIO_CHAT_FORMAT_QWEN3_VL,
                 "<tool_call>{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\",\"days\":2}}</tool_call>",
                 NULL, "", one, 1);

    /* Several calls; arguments as a JSON string; missing arguments; canonical re-serialisation
     * (Python separators, no ASCII escaping, shortest floats, repeated key keeps first place). */
    const expected_call many[] = {
        {"get_weather", "{\"city\": \"Zürich 日本\", \"ratio\": 1e-05}"},
        {"write_file", "{}"},
        {"get_weather", "{\"a\": 3, \"b\": 2.0, \"c\": [true, null, \"\\n\"]}"},
    };
    expect_parse(PIO_CHAT_FORMAT_QWEN3,
                 "A\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Z\\u00fcrich 日本\\\", \\\"ratio\\\": 0.00001}\"}\n</tool_call>\n"
                 "<tool_call>\n{\"name\": \"write_file\"}\n</tool_call>\n"
                 "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"a\": 1, \"b\": 2.0, \"c\": [true, null, \"\\n\"], \"a\": 3}}\n</tool_call>\n\nB  ",
                 NULL, "A\nB  ", many, 3);
}

static void test_qwen3_malformed_calls_stay_text(void **state)
{
    (void)state;
    static const char *const cases[] = {
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}\n</tool_call>", /* bad JSON */
        "<tool_call>\n{\"arguments\": {}}\n</tool_call>",                       /* no name */
        "<tool_call>\n{\"name\": \"\", \"arguments\": {}}\n</tool_call>",         /* empty name */
        "<tool_call>\n{\"name\": 7, \"arguments\": {}}\n</tool_call>",            /* name not a string */
        "<tool_call>\n{\"name\": \"f\", \"arguments\": [1, 2]}\n</tool_call>",     /* arguments not an object */
        "<tool_call>\n{\"name\": \"f\", \"arguments\": \"[1]\"}\n</tool_call>",    /* string not an object */
        "<tool_call>\n[\"f\", {}]\n</tool_call>",                                  /* not an object */
        "<tool_call>\n\"f\"\n</tool_call>",
        "<tool_call>\n</tool_call>",
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}",             /* unclosed */
        "<tool_call>",
        "</tool_call> stray close",
        "<tool_call>{\"name\": \"a<b\", \"arguments\": {}}</tool_call>",           /* tag in name */
        "plain text, no calls at all",
        "",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        expect_plain(PIO_CHAT_FORMAT_QWEN3, cases[i]);
        expect_plain(PIO_CHAT_FORMAT_QWEN3_VL, cases[i]);
    }
    /* A bad block between good ones stays in place; the good ones are taken. */
    const expected_call good[] = {{"f", "{}"}, {"g", "{\"x\": 1}"}};
    expect_parse(PIO_CHAT_FORMAT_QWEN3,
                 "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call> mid <tool_call>{oops}</tool_call> "
                 "<tool_call>{\"name\": \"g\", \"arguments\": {\"x\": 1}}</tool_call> tail <tool_call>{\"name\": \"h\"",
                 NULL, "mid <tool_call>{oops}</tool_call>\ntail <tool_call>{\"name\": \"h\"", good, 2);
}

/* ---------------------------------------------------------------------------------------- */
/* Qwen3-Coder XML calls                                                                      */
/* ---------------------------------------------------------------------------------------- */
static void test_coder_calls_convert_by_declared_type(void **state)
{
    (void)state;
    const expected_call call[] = {{"get_weather",
        "{\"city\": \"123\", \"days\": 2, \"ratio\": 0.5, \"metric\": true, \"options\": {\"deep\": [1, 2]}, "
        "\"tags\": [\"a\", \"b\"], \"note\": 42, \"code\": \"007\", \"count\": -12000, \"free\": \"x y\", "
        "\"unknown\": \"5\"}"}};
    expect_parse(PIO_CHAT_FORMAT_QWEN3_CODER,
                 "I will call it.\n\n<tool_call>\n<function=get_weather>\n"
                 "<parameter=city>\n123\n</parameter>\n"
                 "<parameter=days>\n2\n</parameter>\n"
                 "<parameter=ratio>\n0.5\n</parameter>\n"
                 "<parameter=metric>\nTRUE\n</parameter>\n"
                 "<parameter=options>\n{\"deep\": [1, 2]}\n</parameter>\n"
                 "<parameter=tags>\n[\"a\", \"b\"]\n</parameter>\n"
                 "<parameter=note>\n42\n</parameter>\n"
                 "<parameter=code>\n007\n</parameter>\n"
                 "<parameter=count>\n -12_000 \n</parameter>\n"
                 "<parameter=free>\nx y\n</parameter>\n"
                 "<parameter=unknown>\n5\n</parameter>\n"
                 "</function>\n</tool_call>",
                 k_tools, "I will call it.", call, 1);
}

static void test_coder_value_edge_cases(void **state)
{
    (void)state;
    /* null in any case for any type; conversions that fail keep the text; integral numbers
     * become integers; a boolean that is not "true" is false; multi-line strings keep their
     * inner newlines (only one leading and one trailing newline belong to the format). */
    const expected_call call[] = {{"get_weather",
        "{\"city\": null, \"days\": \"two\", \"ratio\": 3, \"metric\": false, \"options\": \"{bad\", "
        "\"tags\": [1, 2], \"note\": \"hello world\", \"count\": \"99999999999999999999\", "
        "\"free\": \"\\n\\nline1\\nline2\\n\\n\"}"}};
    expect_parse(PIO_CHAT_FORMAT_QWEN3_CODER,
                 "<tool_call>\n<function=get_weather>\n"
                 "<parameter=city>\nNuLL\n</parameter>\n"
                 "<parameter=days>\ntwo\n</parameter>\n"
                 "<parameter=ratio>\n3.0\n</parameter>\n"
                 "<parameter=metric>\nyes\n</parameter>\n"
                 "<parameter=options>\n{bad\n</parameter>\n"
                 "<parameter=tags>\n[1, 2]\n</parameter>\n"
                 "<parameter=note>\nhello world\n</parameter>\n"
                 "<parameter=count>\n99999999999999999999\n</parameter>\n"
                 "<parameter=free>\n\n\nline1\nline2\n\n\n</parameter>\n"
                 "</function>\n</tool_call>",
                 k_tools, "", call, 1);

    /* Numbers: float syntax with underscores, exponents; inf/nan stay text (as the reference,
     * whose int() of them fails); huge integral floats stay numbers. */
    const char *tools = "[{\"name\": \"n\", \"parameters\": {\"properties\": {"
                        "\"a\": {\"type\": \"number\"}, \"b\": {\"type\": \"number\"}, \"c\": {\"type\": \"float\"},"
                        "\"d\": {\"type\": \"number\"}, \"e\": {\"type\": \"number\"}, \"f\": {\"type\": \"number\"},"
                        "\"g\": {\"type\": \"number\"}, \"h\": {\"type\": \"integer\"}, \"i\": {\"type\": \"number\"}}}}]";
    const expected_call numbers[] = {{"n",
        "{\"a\": 1000.5, \"b\": 0, \"c\": \"inf\", \"d\": \"nan\", \"e\": 1e+20, \"f\": 0.001, \"g\": \"1e\", "
        "\"h\": \"1.5\", \"i\": -250}"}};
    expect_parse(PIO_CHAT_FORMAT_QWEN3_CODER,
                 "<tool_call>\n<function=n>\n"
                 "<parameter=a>\n1_000.5\n</parameter>\n<parameter=b>\n-0.0\n</parameter>\n"
                 "<parameter=c>\ninf\n</parameter>\n<parameter=d>\nnan\n</parameter>\n"
                 "<parameter=e>\n1e20\n</parameter>\n<parameter=f>\n.1e-2\n</parameter>\n"
                 "<parameter=g>\n1e\n</parameter>\n<parameter=h>\n1.5\n</parameter>\n"
                 "<parameter=i>\n-2.5e2\n</parameter>\n</function>\n</tool_call>",
                 tools, "", numbers, 1);

    /* Without tools every parameter stays a string (except null). */
    const expected_call untyped[] = {{"get_weather", "{\"days\": \"2\", \"city\": null}"}};
    expect_parse(PIO_CHAT_FORMAT_QWEN3_CODER,
                 "<tool_call>\n<function=get_weather>\n<parameter=days>\n2\n</parameter>\n"
                 "<parameter=city>\nnull\n</parameter>\n</function>\n</tool_call>",
                 NULL, "", untyped, 1);

    /* Union and unknown types use the literal fallback: numbers, Python True/None, JSON without
     * true/false/null; anything else stays text. */
    const char *union_tools = "[{\"name\": \"u\", \"parameters\": {\"properties\": {"
                              "\"a\": {\"type\": [\"string\", \"null\"]}, \"b\": {\"type\": \"any\"},"
                              "\"c\": {\"type\": \"any\"}, \"d\": {\"type\": \"any\"}, \"e\": {\"type\": \"any\"}}}}]";
    const expected_call unions[] = {{"u", "{\"a\": \"text\", \"b\": true, \"c\": null, \"d\": \"[true]\", \"e\": [1, \"x\"]}"}};
    expect_parse(PIO_CHAT_FORMAT_QWEN3_CODER,
                 "<tool_call><function=u><parameter=a>text</parameter><parameter=b>True</parameter>"
                 "<parameter=c>None</parameter><parameter=d>[true]</parameter><parameter=e>[1, \"x\"]</parameter>"
                 "</function></tool_call>",
                 union_tools, "", unions, 1);
}

/* The ast.literal_eval fallback (types the reference does not name, like "any"). Expected
 * values were produced with Python's ast.literal_eval + json.dumps; the last three have no
 * JSON form in Python (complex, set, bytes) and stay text. */
static void test_coder_python_literal_values(void **state)
{
    (void)state;
    static const struct {
        const char *value;
        const char *arguments_json;
    } cases[] = {
        {"(1, 2)", "{\"p\": [1, 2]}"},
        {"(1,)", "{\"p\": [1]}"},
        {"()", "{\"p\": []}"},
        {"(1)", "{\"p\": 1}"},
        {"{'a': 1}", "{\"p\": {\"a\": 1}}"},
        {"{1: 'a', 2.5: 'b', None: 'd'}", "{\"p\": {\"1\": \"a\", \"2.5\": \"b\", \"null\": \"d\"}}"},
        {"'it\\'s'", "{\"p\": \"it's\"}"},
        {"'a' 'b'", "{\"p\": \"ab\"}"},
        {"u'x'", "{\"p\": \"x\"}"},
        {"r'a\\nb'", "{\"p\": \"a\\\\nb\"}"},
        {"'\\x41\\u00e9\\U0001F600\\101\\n\\t'", "{\"p\": \"Aé😀A\\n\\t\"}"},
        {"'\\q'", "{\"p\": \"\\\\q\"}"},
        {"[1, 2,]", "{\"p\": [1, 2]}"},
        {"{'a': 1,}", "{\"p\": {\"a\": 1}}"},
        {"[true]", "{\"p\": \"[true]\"}"},
        {"- 5", "{\"p\": -5}"},
        {"--5", "{\"p\": \"--5\"}"},
        {"0x1F", "{\"p\": 31}"},
        {"0o17", "{\"p\": 15}"},
        {"0b101", "{\"p\": 5}"},
        {"007", "{\"p\": \"007\"}"},
        {"00", "{\"p\": 0}"},
        {"1_000", "{\"p\": 1000}"},
        {"'''tri\nple'''", "{\"p\": \"tri\\nple\"}"},
        {"[1 2]", "{\"p\": \"[1 2]\"}"},
        {"'unterminated", "{\"p\": \"'unterminated\"}"},
        {"-9223372036854775808", "{\"p\": -9223372036854775808}"},
        {"{'k': {'n': [1, {'m': ()}]}}", "{\"p\": {\"k\": {\"n\": [1, {\"m\": []}]}}}"},
        {"{'é': 'ü'}", "{\"p\": {\"é\": \"ü\"}}"},
        {"1e-400", "{\"p\": 0.0}"},
        {"True", "{\"p\": true}"},
        {"None", "{\"p\": null}"},
        {"5j", "{\"p\": \"5j\"}"},
        {"{1, 2}", "{\"p\": \"{1, 2}\"}"},
        {"b'x'", "{\"p\": \"b'x'\"}"},
    };
    const char *tools = "[{\"name\": \"f\", \"parameters\": {\"properties\": {\"p\": {\"type\": \"any\"}}}}]";
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[256];
        snprintf(text, sizeof text, "<tool_call>\n<function=f>\n<parameter=p>\n%s\n</parameter>\n</function>\n</tool_call>",
                 cases[i].value);
        const expected_call call[] = {{"f", cases[i].arguments_json}};
        expect_parse(PIO_CHAT_FORMAT_QWEN3_CODER, text, tools, "", call, 1);
    }
}

static void test_coder_block_shapes(void **state)
{
    (void)state;
    /* Several functions in one block, a bare function without the wrapper, text around. */
    const expected_call calls[] = {
        {"write_file", "{\"path\": \"a.txt\", \"content\": \"x\", \"mode\": 420}"},
        {"get_weather", "{}"},
        {"get_weather", "{\"city\": \"Rome\"}"},
    };
    expect_parse(PIO_CHAT_FORMAT_QWEN3_CODER,
                 "Start\n<tool_call>\n<function=write_file>\n<parameter=path>\na.txt\n</parameter>\n"
                 "<parameter=content>\nx\n</parameter>\n<parameter=mode>\n420\n</parameter>\n</function>\n"
                 "<function=get_weather>\n</function>\n</tool_call>\nmiddle\n"
                 "<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n</function>",
                 k_tools, "Start\nmiddle", calls, 3);

    static const char *const malformed[] = {
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</function>\n</tool_call>", /* no </parameter> */
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</tool_call>", /* no </function> */
        "<tool_call>\n<function=>\n</function>\n</tool_call>",                                     /* empty name */
        "<tool_call>\n<function=get_weather\n</function>\n</tool_call>",                            /* no '>' */
        "<tool_call>\njunk<function=get_weather>\n</function>\n</tool_call>",                      /* stray text */
        "<tool_call>\n<function=get_weather>\n</function>\njunk\n</tool_call>",
        "<tool_call>\n<function=get_weather>\nstray\n</function>\n</tool_call>",
        "<tool_call>\n<function=get_weather>\n<parameter=>\nx\n</parameter>\n</function>\n</tool_call>",
        "<tool_call>\n</tool_call>",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n", /* unclosed */
        "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n",                          /* unclosed bare */
        "<function=get_weather>\n<parameter=city>\n\xC3\x28\n</parameter>\n</function>",            /* bad UTF-8 */
        "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\nstray</function>",
    };
    for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++)
        expect_plain(PIO_CHAT_FORMAT_QWEN3_CODER, malformed[i]);
    /* Other formats do not treat a bare <function=...> as a call. */
    expect_plain(PIO_CHAT_FORMAT_QWEN3, "<function=get_weather>\n</function>");
}

/* ---------------------------------------------------------------------------------------- */
/* GLM-4.7 calls                                                                              */
/* ---------------------------------------------------------------------------------------- */
static void test_glm_calls(void **state)
{
    (void)state;
    const expected_call calls[] = {
        {"get_weather", "{\"city\": \"123\", \"days\": 2, \"options\": {\"deep\": true}, \"tags\": [\"a\"], "
                        "\"note\": \"plain words\", \"escaped\": {\"a\": 1}, \"py\": null, \"spaced\": 1.5}"},
        {"write_file", "{}"},
        {"unknown_tool", "{\"x\": 10, \"y\": \"z\"}"},
    };
    expect_parse(PIO_CHAT_FORMAT_GLM4,
                 "Checking the weather.<tool_call>get_weather<arg_key>city</arg_key><arg_value>123</arg_value>"
                 "<arg_key>days</arg_key><arg_value>2</arg_value>"
                 "<arg_key>options</arg_key><arg_value>{\"deep\": true}</arg_value>"
                 "<arg_key>tags</arg_key><arg_value>[\"a\"]</arg_value>"
                 "<arg_key>note</arg_key><arg_value>plain words</arg_value>"
                 "<arg_key>escaped</arg_key><arg_value>{\\\"a\\\": 1}</arg_value>"
                 "<arg_key>py</arg_key><arg_value>None</arg_value>\n"
                 "<arg_key> spaced </arg_key>\n<arg_value>\n 1.5 \n</arg_value></tool_call>"
                 "<tool_call>write_file</tool_call>"
                 "<tool_call>\nunknown_tool\n<arg_key>x</arg_key><arg_value>10</arg_value>"
                 "<arg_key>y</arg_key><arg_value>z</arg_value></tool_call>",
                 k_tools, "Checking the weather.", calls, 3);

    /* A non-ASCII name with a byte that is also a Latin-1 space (U+00E0 is C3 A0). */
    const expected_call accented[] = {{"voilà", "{}"}};
    expect_parse(PIO_CHAT_FORMAT_GLM4, "<tool_call>voilà</tool_call>", NULL, "", accented, 1);

    static const char *const malformed[] = {
        "<tool_call></tool_call>",
        "<tool_call><arg_key>a</arg_key><arg_value>1</arg_value></tool_call>",          /* no name */
        "<tool_call>f<arg_key>a</arg_key></tool_call>",                                 /* no value */
        "<tool_call>f<arg_key>a<arg_value>1</arg_value></tool_call>",                   /* no </arg_key> */
        "<tool_call>f<arg_key>a</arg_key><arg_value>1<arg_key>b</arg_key><arg_value>2</arg_value></tool_call>",
        "<tool_call>f junk<arg_key>a</arg_key><arg_value>1</arg_value></tool_call>",    /* stray text */
        "<tool_call>f<arg_value>1</arg_value></tool_call>",
        "<tool_call>f<arg_key>a</arg_key><arg_value>1</arg_value>",                     /* unclosed */
        "<tool_call>f<arg_key>a</arg_key><arg_value>\xFF</arg_value></tool_call>",      /* bad UTF-8 */
    };
    for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++)
        expect_plain(PIO_CHAT_FORMAT_GLM4, malformed[i]);
}

/* ---------------------------------------------------------------------------------------- */
/* Round trips: render an assistant turn with calls, parse the model's part back.             */
/* ---------------------------------------------------------------------------------------- */
typedef struct round_trip {
    pio_chat_format format;
    const char *turn_start; /* the assistant turn starts after this */
    const char *turn_end;   /* and ends at the first occurrence of this after it */
} round_trip;

static char *render_assistant_turn(const round_trip *rt, const char *tool_calls_json)
{
    pio_chat_message user = {sizeof(pio_chat_message), "user", "Weather in Paris and a file?", NULL, NULL, NULL};
    pio_chat_message assistant = {sizeof(pio_chat_message), "assistant", "Sure, one moment.", NULL,
                                  tool_calls_json, NULL};
    /* A later user turn keeps the assistant turn plain (Qwen3 adds a <think> block to a final
     * assistant turn). */
    pio_chat_message thanks = {sizeof(pio_chat_message), "user", "Thanks.", NULL, NULL, NULL};
    const pio_chat_message *messages[] = {&user, &assistant, &thanks};
    pio_chat_options options;
    pio_chat_options_init(&options);
    options.tools_json = k_tools;
    options.add_generation_prompt = 0;
    char *prompt = NULL;
    pio_error err;
    if (pio_chat_render(rt->format, messages, 3, &options, &prompt, NULL, &err) != PIO_OK)
        fail_msg("render failed: %s", err.message);
    const char *start = strstr(prompt, rt->turn_start);
    assert_non_null(start);
    start += strlen(rt->turn_start);
    const char *end = strstr(start, rt->turn_end);
    assert_non_null(end);
    size_t len = (size_t)(end - start);
    char *turn = strndup(start, len);
    free(prompt);
    assert_non_null(turn);
    return turn;
}

/* Values keep inner whitespace; GLM values lose surrounding whitespace (its reference parser
 * strips them), so the round-trip values here do not end in whitespace. */
static void test_round_trip_through_the_formatter(void **state)
{
    (void)state;
    static const round_trip trips[] = {
        {PIO_CHAT_FORMAT_QWEN3, "<|im_start|>assistant\n", "<|im_end|>"},
        {PIO_CHAT_FORMAT_QWEN3_VL, "<|im_start|>assistant\n", "<|im_end|>"},
        {PIO_CHAT_FORMAT_QWEN3_CODER, "<|im_start|>assistant\n", "<|im_end|>"},
        {PIO_CHAT_FORMAT_GLM4, "<|assistant|></think>", "<|user|>"},
    };
    const char *calls_json =
        "[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3, \"ratio\": 0.25,"
        "  \"metric\": false, \"options\": {\"unit\": \"C\", \"hours\": [6, 12]}, \"tags\": [\"x\", \"y\"]}},"
        " {\"type\": \"function\", \"function\": {\"name\": \"write_file\", \"arguments\": {\"path\": \"notes/a b.txt\","
        "  \"content\": \"line 1\\n  line 2 \\\"quoted\\\" é\", \"mode\": 420}}}]";
    const expected_call expected[] = {
        {"get_weather", "{\"city\": \"Paris\", \"days\": 3, \"ratio\": 0.25, \"metric\": false, "
                        "\"options\": {\"unit\": \"C\", \"hours\": [6, 12]}, \"tags\": [\"x\", \"y\"]}"},
        {"write_file", "{\"path\": \"notes/a b.txt\", \"content\": \"line 1\\n  line 2 \\\"quoted\\\" é\", \"mode\": 420}"},
    };
    for (size_t i = 0; i < sizeof trips / sizeof trips[0]; i++) {
        char *turn = render_assistant_turn(&trips[i], calls_json);
        expect_parse(trips[i].format, turn, k_tools, "Sure, one moment.", expected, 2);
        free(turn);
    }
}

/* Random nested arguments: the Qwen3-Coder template prints containers with Python's str()
 * ({'k': [1, True, 'it\'s']}), which the parser must read back (the reference uses
 * ast.literal_eval). The canonical JSON to compare with comes from the Qwen3 JSON round trip. */
typedef struct rng {
    uint64_t state;
} rng;

static uint32_t next_random(rng *r)
{
    r->state = r->state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(r->state >> 33);
}

static json_t *random_value(rng *r, int depth);

static json_t *random_string(rng *r)
{
    static const char *const pieces[] = {"a", "Z", "'", "\"", "\\", "\n", "\t", "\r", "\x01", "\x1f", "\x7f",
                                         "é", "日本", "😀", "\u2028", "\u00a0", "\u00ad", " ", "<", "x y",
                                         "\xf3\xa0\x80\x81" /* U+E0001, not printable */};
    char text[128] = "";
    int n = (int)(next_random(r) % 6);
    for (int i = 0; i < n; i++)
        strcat(text, pieces[next_random(r) % (sizeof pieces / sizeof pieces[0])]);
    return json_string(text);
}

static json_t *random_number(rng *r)
{
    switch (next_random(r) % 4) {
    case 0: return json_integer((json_int_t)(int32_t)next_random(r));
    case 1: return json_integer((json_int_t)(((uint64_t)next_random(r) << 31) ^ next_random(r)));
    case 2: return json_real((double)(int32_t)next_random(r) / 1024.0);
    default: {
        double mantissa = (double)next_random(r) / 4294967296.0 + 0.5;
        int exponent = (int)(next_random(r) % 600) - 300;
        return json_real((next_random(r) & 1 ? -mantissa : mantissa) * pow(10.0, exponent));
    }
    }
}

static json_t *random_container(rng *r, int depth, bool object)
{
    json_t *container = object ? json_object() : json_array();
    int n = (int)(next_random(r) % 4);
    for (int i = 0; i < n; i++) {
        json_t *item = random_value(r, depth + 1);
        if (object) {
            json_t *key = random_string(r);
            json_object_set_new(container, json_string_value(key), item);
            json_decref(key);
        } else {
            json_array_append_new(container, item);
        }
    }
    return container;
}

static json_t *random_value(rng *r, int depth)
{
    uint32_t kind = next_random(r) % (depth >= 3 ? 5 : 7);
    switch (kind) {
    case 0: return random_string(r);
    case 1: return random_number(r);
    case 2: return json_boolean(next_random(r) & 1);
    case 3: return json_null();
    case 4: return random_number(r);
    case 5: return random_container(r, depth, true);
    default: return random_container(r, depth, false);
    }
}

static char *round_trip_arguments(pio_chat_format format, const char *tools, const char *calls_json)
{
    static const round_trip cut[] = {
        {PIO_CHAT_FORMAT_QWEN3, "<|im_start|>assistant\n", "<|im_end|>"},
        {PIO_CHAT_FORMAT_QWEN3_CODER, "<|im_start|>assistant\n", "<|im_end|>"},
    };
    pio_chat_message user = {sizeof(pio_chat_message), "user", "go", NULL, NULL, NULL};
    pio_chat_message assistant = {sizeof(pio_chat_message), "assistant", NULL, NULL, calls_json, NULL};
    pio_chat_message again = {sizeof(pio_chat_message), "user", "again", NULL, NULL, NULL};
    const pio_chat_message *messages[] = {&user, &assistant, &again};
    pio_chat_options options;
    pio_chat_options_init(&options);
    options.tools_json = tools;
    options.add_generation_prompt = 0;
    char *prompt = NULL;
    pio_error err;
    if (pio_chat_render(format, messages, 3, &options, &prompt, NULL, &err) != PIO_OK)
        fail_msg("render failed: %s", err.message);
    const round_trip *rt = &cut[format == PIO_CHAT_FORMAT_QWEN3 ? 0 : 1];
    const char *start = strstr(prompt, rt->turn_start) + strlen(rt->turn_start);
    const char *end = strstr(start, rt->turn_end);
    pio_tool_call_list list;
    assert_int_equal(pio_tool_calls_parse(format, start, (size_t)(end - start), tools, &list, &err), PIO_OK);
    if (list.n_calls != 1)
        fail_msg("no call parsed back from: %.*s", (int)(end - start), start);
    char *arguments = strdup(list.calls[0].arguments_json);
    pio_tool_call_list_free(&list);
    free(prompt);
    return arguments;
}

static void test_coder_python_values_round_trip(void **state)
{
    (void)state;
    const char *tools = "[{\"name\": \"f\", \"parameters\": {\"properties\": {"
                        "\"o\": {\"type\": \"object\"}, \"a\": {\"type\": \"array\"}, \"u\": {\"type\": \"any\"}}}}]";
    rng r = {20240611};
    for (int round = 0; round < 400; round++) {
        json_t *arguments = json_object();
        json_object_set_new(arguments, "o", random_container(&r, 0, true));
        json_object_set_new(arguments, "a", random_container(&r, 0, false));
        json_object_set_new(arguments, "u", random_container(&r, 1, next_random(&r) & 1));
        json_t *call = json_pack("[{s:s, s:o}]", "name", "f", "arguments", arguments);
        char *calls_json = json_dumps(call, JSON_PRESERVE_ORDER);
        json_decref(call);
        char *canonical = round_trip_arguments(PIO_CHAT_FORMAT_QWEN3, tools, calls_json);
        char *from_coder = round_trip_arguments(PIO_CHAT_FORMAT_QWEN3_CODER, tools, calls_json);
        if (strcmp(canonical, from_coder) != 0)
            fail_msg("round %d:\n  json:  %s\n  coder: %s", round, canonical, from_coder);
        free(canonical);
        free(from_coder);
        free(calls_json);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Robustness                                                                                 */
/* ---------------------------------------------------------------------------------------- */
static void test_api_errors(void **state)
{
    (void)state;
    pio_tool_call_list list;
    pio_error err;
    assert_int_equal(pio_tool_calls_parse(PIO_CHAT_FORMAT_QWEN3, "x", 1, NULL, NULL, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pio_tool_calls_parse(PIO_CHAT_FORMAT_UNKNOWN, "x", 1, NULL, &list, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_null(list.text);
    assert_int_equal(pio_tool_calls_parse(PIO_CHAT_FORMAT_QWEN3, NULL, 3, NULL, &list, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pio_tool_calls_parse(PIO_CHAT_FORMAT_QWEN3, "x", 1, "[{", &list, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "tools_json"));
    assert_int_equal(pio_tool_calls_parse(PIO_CHAT_FORMAT_QWEN3, "x", 1, "{}", &list, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "not a JSON array"));

    /* Empty text is fine; NULL with length 0 too. */
    assert_int_equal(pio_tool_calls_parse(PIO_CHAT_FORMAT_GLM4, NULL, 0, NULL, &list, &err), PIO_OK);
    assert_string_equal(list.text, "");
    assert_int_equal(list.n_calls, 0);
    pio_tool_call_list_free(&list);
    pio_tool_call_list_free(&list); /* freeing twice is harmless */
    pio_tool_call_list_free(NULL);

    /* Only text_len bytes are read: the call after them is not seen. */
    const char *text = "abc<tool_call>{\"name\": \"f\"}</tool_call>";
    assert_int_equal(pio_tool_calls_parse(PIO_CHAT_FORMAT_QWEN3, text, 3, NULL, &list, &err), PIO_OK);
    assert_string_equal(list.text, "abc");
    pio_tool_call_list_free(&list);
}

/* Random tag soup: never a crash or leak, and text without a recognised call is unchanged. */
static void test_random_tag_soup(void **state)
{
    (void)state;
    static const char *const pieces[] = {
        "<tool_call>", "</tool_call>", "<function=", "</function>", "<parameter=", "</parameter>",
        "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>", "{\"name\": \"f\", \"arguments\": {}}",
        "{", "}", "\"", ">", "<", "\n", " ", "get_weather", "city", "2", "null", "é", "\xFF", "\\",
        "{\"name\": ", "[1, 2]", "True",
    };
    static const pio_chat_format formats[] = {PIO_CHAT_FORMAT_QWEN3, PIO_CHAT_FORMAT_QWEN3_CODER,
                                              PIO_CHAT_FORMAT_GLM4};
    uint32_t seed = 12345;
    char text[512];
    for (int round = 0; round < 3000; round++) {
        size_t len = 0;
        int n_pieces = 1 + (int)((seed = seed * 1103515245u + 12345u) >> 16) % 24;
        for (int k = 0; k < n_pieces; k++) {
            seed = seed * 1103515245u + 12345u;
            const char *piece = pieces[(seed >> 16) % (sizeof pieces / sizeof pieces[0])];
            size_t n = strlen(piece);
            if (len + n >= sizeof text)
                break;
            memcpy(text + len, piece, n);
            len += n;
        }
        pio_chat_format format = formats[round % 3];
        pio_tool_call_list list;
        pio_error err;
        assert_int_equal(pio_tool_calls_parse(format, text, len, k_tools, &list, &err), PIO_OK);
        if (list.n_calls == 0) {
            assert_int_equal(list.text_len, len);
            assert_memory_equal(list.text, text, len);
        }
        for (size_t i = 0; i < list.n_calls; i++) {
            assert_true(list.calls[i].name[0] != '\0');
            assert_int_equal(list.calls[i].arguments_json[0], '{');
        }
        pio_tool_call_list_free(&list);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qwen3_json_calls),
        cmocka_unit_test(test_qwen3_malformed_calls_stay_text),
        cmocka_unit_test(test_coder_calls_convert_by_declared_type),
        cmocka_unit_test(test_coder_value_edge_cases),
        cmocka_unit_test(test_coder_python_literal_values),
        cmocka_unit_test(test_coder_block_shapes),
        cmocka_unit_test(test_glm_calls),
        cmocka_unit_test(test_round_trip_through_the_formatter),
        cmocka_unit_test(test_coder_python_values_round_trip),
        cmocka_unit_test(test_api_errors),
        cmocka_unit_test(test_random_tag_soup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
