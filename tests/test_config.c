/*
 * The YAML configuration (host/config.c, host/config_schema.c): loading, typing, overrides,
 * schema validation, malformed and hostile input. Run from the repository root (fixtures are
 * read from tests/fixtures/config/).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "host/config.h"

#define FIXTURES "tests/fixtures/config/"

/* ---- helpers ------------------------------------------------------------------------------ */

static pio_status load(pio_config *cfg, const char *text, pio_error *err)
{
    pio_error_clear(err);
    return pio_config_load_string(cfg, "t.yaml", text, strlen(text), err);
}

/* A config holding `text`; fails the test when it does not load. */
static pio_config *config_from(const char *text)
{
    pio_config *cfg = pio_config_new();
    assert_non_null(cfg);
    pio_error err;
    if (load(cfg, text, &err) != PIO_OK) {
        print_error("unexpected load error: %s\n", err.message);
        fail();
    }
    return cfg;
}

static void expect_contains(const char *text, const char *fragment)
{
    if (strstr(text, fragment) == NULL) {
        print_error("expected \"%s\" in \"%s\"\n", fragment, text);
        fail();
    }
}

/* Loading `text` fails with `status` and a message holding `fragment` (e.g. "t.yaml:3:5"). */
static void expect_load_error(const char *text, pio_status status, const char *fragment)
{
    pio_config *cfg = pio_config_new();
    pio_error err;
    pio_status got = load(cfg, text, &err);
    if (got != status) {
        print_error("loading [%s]: status %d, expected %d (%s)\n", text, got, status, err.message);
        fail();
    }
    expect_contains(err.message, fragment);
    assert_int_equal(pio_config_count(cfg), 0);
    pio_config_free(cfg);
}

static void expect_i64(const pio_config *cfg, const char *key, int64_t expected)
{
    int64_t value = -999;
    pio_error err;
    pio_error_clear(&err);
    pio_status status = pio_config_get_i64(cfg, key, &value, &err);
    if (status != PIO_OK) {
        print_error("%s: %s\n", key, err.message);
        fail();
    }
    assert_true(value == expected);
}

static void expect_str(const pio_config *cfg, const char *key, const char *expected)
{
    const char *value = NULL;
    assert_int_equal(pio_config_get_str(cfg, key, &value, NULL), PIO_OK);
    assert_string_equal(value, expected);
}

static const char *origin_of(const pio_config *cfg, const char *key)
{
    for (size_t i = 0; i < pio_config_count(cfg); i++) {
        if (strcmp(pio_config_key_at(cfg, i), key) == 0)
            return pio_config_origin_at(cfg, i);
    }
    return NULL;
}

/* Collects validate() warnings. */
typedef struct warnings {
    char text[16][PIO_ERROR_MESSAGE_MAX];
    size_t count;
} warnings;

static void collect_warning(void *ud, const char *message)
{
    warnings *w = ud;
    assert_true(w->count < 16);
    snprintf(w->text[w->count++], PIO_ERROR_MESSAGE_MAX, "%s", message);
}

/* ---- structure ---------------------------------------------------------------------------- */

static void test_nested_mappings_become_dotted_keys(void **state)
{
    (void)state;
    pio_config *cfg = config_from("kv_cache:\n"
                                  "  block_size: 16\n"
                                  "  memory_gb: 2.5\n"
                                  "model:\n"
                                  "  path: /m\n"
                                  "plugin_options:\n"
                                  "  a:\n"
                                  "    b:\n"
                                  "      c: deep\n");
    assert_int_equal(pio_config_count(cfg), 4);
    /* iteration is in key order */
    assert_string_equal(pio_config_key_at(cfg, 0), "kv_cache.block_size");
    assert_string_equal(pio_config_key_at(cfg, 1), "kv_cache.memory_gb");
    assert_string_equal(pio_config_key_at(cfg, 2), "model.path");
    assert_string_equal(pio_config_key_at(cfg, 3), "plugin_options.a.b.c");
    assert_string_equal(pio_config_value_at(cfg, 0), "16");
    assert_string_equal(pio_config_origin_at(cfg, 0), "t.yaml:2:15");
    assert_string_equal(pio_config_origin_at(cfg, 3), "t.yaml:9:10");
    assert_null(pio_config_key_at(cfg, 4));
    assert_null(pio_config_value_at(cfg, 4));
    assert_null(pio_config_origin_at(cfg, 4));
    expect_str(cfg, "plugin_options.a.b.c", "deep");
    pio_config_free(cfg);
}

static void test_dotted_keys_may_be_written_flat(void **state)
{
    (void)state;
    pio_config *cfg = config_from("kv_cache.block_size: 8\n"
                                  "generation: {temperature: 0.5, top_k: 4}\n");
    expect_i64(cfg, "kv_cache.block_size", 8);
    expect_i64(cfg, "generation.top_k", 4);
    assert_string_equal(origin_of(cfg, "generation.temperature"), "t.yaml:2:27");
    pio_config_free(cfg);
}

static void test_empty_documents_give_an_empty_config(void **state)
{
    (void)state;
    const char *empty_texts[] = {"",    "# only a comment\n", "---\n",       "---\n...\n",
                                 "~\n", "kv_cache: {}\n",     "\xEF\xBB\xBF"};
    for (size_t i = 0; i < sizeof empty_texts / sizeof empty_texts[0]; i++) {
        pio_config *cfg = config_from(empty_texts[i]);
        assert_int_equal(pio_config_count(cfg), 0);
        pio_config_free(cfg);
    }
    pio_config *cfg = pio_config_new();
    pio_error err;
    assert_int_equal(pio_config_load_string(cfg, NULL, NULL, 0, &err), PIO_OK);
    assert_int_equal(pio_config_count(cfg), 0);
    pio_config_free(cfg);
}

static void test_absent_keys_leave_the_value_untouched(void **state)
{
    (void)state;
    pio_config *cfg = config_from("a: 1\n");
    const char *text = "untouched";
    int64_t integer = 7;
    double number = 1.5;
    int flag = 3;
    size_t count = 9;
    assert_int_equal(pio_config_get_str(cfg, "missing", &text, NULL), PIO_SOFT_ABSENT);
    assert_int_equal(pio_config_get_i64(cfg, "missing", &integer, NULL), PIO_SOFT_ABSENT);
    assert_int_equal(pio_config_get_f64(cfg, "missing", &number, NULL), PIO_SOFT_ABSENT);
    assert_int_equal(pio_config_get_bool(cfg, "missing", &flag, NULL), PIO_SOFT_ABSENT);
    assert_int_equal(pio_config_get_list_count(cfg, "missing", &count, NULL), PIO_SOFT_ABSENT);
    assert_string_equal(text, "untouched");
    assert_true(integer == 7 && number == 1.5 && flag == 3 && count == 9);
    /* a prefix of a key is not a key */
    assert_int_equal(pio_config_get_str(cfg, "a.b", &text, NULL), PIO_SOFT_ABSENT);
    assert_int_equal(pio_config_get_str(cfg, NULL, &text, NULL), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pio_config_get_str(NULL, "a", &text, NULL), PIO_ERR_INVALID_ARGUMENT);
    pio_config_free(cfg);
}

/* ---- typing ------------------------------------------------------------------------------- */

static void test_i64_good_values(void **state)
{
    (void)state;
    pio_config *cfg = config_from("a: 16\nb: -5\nc: +7\nd: 0\ne: 9223372036854775807\n"
                                  "f: -9223372036854775808\n");
    expect_i64(cfg, "a", 16);
    expect_i64(cfg, "b", -5);
    expect_i64(cfg, "c", 7);
    expect_i64(cfg, "d", 0);
    expect_i64(cfg, "e", INT64_MAX);
    expect_i64(cfg, "f", INT64_MIN);
    pio_config_free(cfg);
}

static void test_i64_bad_values_name_the_place(void **state)
{
    (void)state;
    pio_config *cfg = config_from("n:\n"
                                  "  a: 12abc\n"
                                  "  b: 1.5\n"
                                  "  c: 1e3\n"
                                  "  d: 012\n"
                                  "  e: 9223372036854775808\n"
                                  "  f: \"16\"\n"
                                  "  g: 0x10\n"
                                  "  h: 1_000\n"
                                  "  i: [1]\n");
    struct {
        const char *key, *place, *expected;
    } cases[] = {
        {"n.a", "t.yaml:2:6", "expected an integer, got '12abc'"},
        {"n.b", "t.yaml:3:6", "expected an integer, got '1.5'"},
        {"n.c", "t.yaml:4:6", "expected an integer"},
        {"n.d", "t.yaml:5:6", "expected an integer, got '012'"},
        {"n.e", "t.yaml:6:6", "fits in 64 bits"},
        {"n.f", "t.yaml:7:6", "quoted string \"16\""},
        {"n.g", "t.yaml:8:6", "expected an integer"},
        {"n.h", "t.yaml:9:6", "expected an integer"},
        {"n.i", "t.yaml:10:6", "got a list"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t value = 77;
        pio_error err;
        pio_error_clear(&err);
        assert_int_equal(pio_config_get_i64(cfg, cases[i].key, &value, &err), PIO_ERR_CONFIG);
        assert_int_equal(err.status, PIO_ERR_CONFIG);
        expect_contains(err.message, cases[i].place);
        expect_contains(err.message, cases[i].key);
        expect_contains(err.message, cases[i].expected);
        assert_true(value == 77);
    }
    pio_config_free(cfg);
}

static void test_f64_good_and_bad_values(void **state)
{
    (void)state;
    pio_config *cfg = config_from("a: 0.7\nb: 1e-3\nc: .5\nd: 3\ne: -2.5E+2\nf: 5.\n"
                                  "bad1: abc\nbad2: nan\nbad3: .inf\nbad4: 1e999\nbad5: 0x1p3\n"
                                  "bad6: \"0.5\"\nbad7: 1,5\n");
    const struct {
        const char *key;
        double value;
    } good[] = {{"a", 0.7}, {"b", 1e-3}, {"c", 0.5}, {"d", 3.0}, {"e", -250.0}, {"f", 5.0}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        double value = 0;
        assert_int_equal(pio_config_get_f64(cfg, good[i].key, &value, NULL), PIO_OK);
        assert_true(value == good[i].value);
    }
    const struct {
        const char *key, *fragment;
    } bad[] = {{"bad1", "t.yaml:7:7: key 'bad1': expected a number, got 'abc'"},
               {"bad2", "t.yaml:8:7"},
               {"bad3", "t.yaml:9:7"},
               {"bad4", "t.yaml:10:7: key 'bad4': expected a finite number"},
               {"bad5", "t.yaml:11:7"},
               {"bad6", "quoted string"},
               {"bad7", "t.yaml:13:7"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        double value = 42;
        pio_error err;
        assert_int_equal(pio_config_get_f64(cfg, bad[i].key, &value, &err), PIO_ERR_CONFIG);
        expect_contains(err.message, bad[i].fragment);
        assert_true(value == 42);
    }
    pio_config_free(cfg);
}

static void test_bool_spellings(void **state)
{
    (void)state;
    pio_config *cfg = config_from("t1: true\nt2: Yes\nt3: ON\nf1: false\nf2: no\nf3: Off\n"
                                  "bad1: 1\nbad2: tru\nbad3: \"true\"\nbad4: y\nbad5: tRuE\n");
    const char *truthy[] = {"t1", "t2", "t3"}, *falsy[] = {"f1", "f2", "f3"};
    for (size_t i = 0; i < 3; i++) {
        int value = -1;
        assert_int_equal(pio_config_get_bool(cfg, truthy[i], &value, NULL), PIO_OK);
        assert_int_equal(value, 1);
        assert_int_equal(pio_config_get_bool(cfg, falsy[i], &value, NULL), PIO_OK);
        assert_int_equal(value, 0);
    }
    const char *bad[] = {"bad1", "bad2", "bad3", "bad4", "bad5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int value = -1;
        pio_error err;
        assert_int_equal(pio_config_get_bool(cfg, bad[i], &value, &err), PIO_ERR_CONFIG);
        char place[32];
        snprintf(place, sizeof place, "t.yaml:%zu:7", i + 7);
        expect_contains(err.message, place);
        expect_contains(err.message, "expected a boolean");
        assert_int_equal(value, -1);
    }
    pio_config_free(cfg);
}

static void test_strings_keep_their_text(void **state)
{
    (void)state;
    pio_config *cfg = config_from("quoted_number: \"16\"\n"
                                  "plain_number: 16\n"
                                  "single: 'it''s'\n"
                                  "escaped: \"tab\\there\"\n"
                                  "empty_string: \"\"\n"
                                  "folded: >\n"
                                  "  one\n"
                                  "  two\n"
                                  "literal: |\n"
                                  "  line1\n"
                                  "  line2\n"
                                  "unicode: \"caf\xC3\xA9 \\u00e9\"\n"
                                  "list: [a]\n");
    expect_str(cfg, "quoted_number", "16");
    expect_str(cfg, "plain_number", "16"); /* any scalar reads as a string */
    expect_str(cfg, "single", "it's");
    expect_str(cfg, "escaped", "tab\there");
    expect_str(cfg, "empty_string", "");
    expect_str(cfg, "folded", "one two\n");
    expect_str(cfg, "literal", "line1\nline2\n");
    expect_str(cfg, "unicode", "caf\xC3\xA9 \xC3\xA9");
    const char *value = "untouched";
    pio_error err;
    assert_int_equal(pio_config_get_str(cfg, "list", &value, &err), PIO_ERR_CONFIG);
    expect_contains(err.message, "t.yaml:13:7: key 'list': expected a single value, got a list");
    assert_string_equal(value, "untouched");
    /* a block scalar counts as quoted: it is never a number */
    int64_t number;
    assert_int_equal(pio_config_get_i64(cfg, "literal", &number, NULL), PIO_ERR_CONFIG);
    pio_config_free(cfg);
}

/* ---- lists -------------------------------------------------------------------------------- */

static void test_lists(void **state)
{
    (void)state;
    pio_config *cfg = config_from("generation:\n"
                                  "  stop: [\"</s>\", \"a \\\"b\\\"\", plain]\n"
                                  "parallel:\n"
                                  "  devices:\n"
                                  "    - 0\n"
                                  "    - 3\n"
                                  "empty: []\n"
                                  "single: 5\n"
                                  "mixed: [1, x, 2.5, on]\n");
    size_t count = 0;
    assert_int_equal(pio_config_get_list_count(cfg, "generation.stop", &count, NULL), PIO_OK);
    assert_int_equal(count, 3);
    const char *text = NULL;
    assert_int_equal(pio_config_get_list_str(cfg, "generation.stop", 1, &text, NULL), PIO_OK);
    assert_string_equal(text, "a \"b\"");
    assert_string_equal(origin_of(cfg, "generation.stop"), "t.yaml:2:9");

    assert_int_equal(pio_config_get_list_count(cfg, "parallel.devices", &count, NULL), PIO_OK);
    assert_int_equal(count, 2);
    int64_t device = -1;
    assert_int_equal(pio_config_get_list_i64(cfg, "parallel.devices", 1, &device, NULL), PIO_OK);
    assert_true(device == 3);

    /* how lists print in the effective config */
    for (size_t i = 0; i < pio_config_count(cfg); i++) {
        const char *key = pio_config_key_at(cfg, i), *value = pio_config_value_at(cfg, i);
        if (strcmp(key, "generation.stop") == 0)
            assert_string_equal(value, "[\"</s>\", \"a \\\"b\\\"\", plain]");
        if (strcmp(key, "parallel.devices") == 0)
            assert_string_equal(value, "[0, 3]");
        if (strcmp(key, "empty") == 0)
            assert_string_equal(value, "[]");
    }
    assert_int_equal(pio_config_get_list_count(cfg, "empty", &count, NULL), PIO_OK);
    assert_int_equal(count, 0);

    /* a scalar is a list of one */
    assert_int_equal(pio_config_get_list_count(cfg, "single", &count, NULL), PIO_OK);
    assert_int_equal(count, 1);
    assert_int_equal(pio_config_get_list_i64(cfg, "single", 0, &device, NULL), PIO_OK);
    assert_true(device == 5);

    double number = 0;
    int flag = 0;
    pio_error err;
    assert_int_equal(pio_config_get_list_f64(cfg, "mixed", 2, &number, NULL), PIO_OK);
    assert_true(number == 2.5);
    assert_int_equal(pio_config_get_list_bool(cfg, "mixed", 3, &flag, NULL), PIO_OK);
    assert_int_equal(flag, 1);
    assert_int_equal(pio_config_get_list_i64(cfg, "mixed", 1, &device, &err), PIO_ERR_CONFIG);
    expect_contains(err.message, "t.yaml:9:12: key 'mixed[1]': expected an integer, got 'x'");
    assert_int_equal(pio_config_get_list_str(cfg, "mixed", 4, &text, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    expect_contains(err.message, "item 4");
    pio_config_free(cfg);
}

static void test_malformed_lists(void **state)
{
    (void)state;
    expect_load_error("a:\n  - [1, 2]\n", PIO_ERR_FORMAT,
                      "t.yaml:2:5: items of list 'a' must be scalars, not a list");
    expect_load_error("a: [{b: 1}]\n", PIO_ERR_FORMAT,
                      "t.yaml:1:5: items of list 'a' must be scalars, not a mapping");
    expect_load_error("a: [1, ~]\n", PIO_ERR_FORMAT, "t.yaml:1:8: empty item in list 'a'");
    expect_load_error("a:\n  -\n  - 1\n", PIO_ERR_FORMAT, "empty item in list 'a'");
    expect_load_error("plugin_options.x: [1, {}]\n", PIO_ERR_FORMAT, "t.yaml:1:23: items of list");
}

/* ---- later values win ---------------------------------------------------------------------- */

static void test_later_files_replace_earlier_values(void **state)
{
    (void)state;
    pio_config *cfg = pio_config_new();
    pio_error err;
    assert_int_equal(pio_config_load_file(cfg, FIXTURES "base.yaml", &err), PIO_OK);
    assert_int_equal(pio_config_load_file(cfg, FIXTURES "overlay.yaml", &err), PIO_OK);
    expect_i64(cfg, "kv_cache.block_size", 32);
    assert_string_equal(origin_of(cfg, "kv_cache.block_size"), FIXTURES "overlay.yaml:2:15");
    expect_str(cfg, "model.path", "/models/base");
    assert_string_equal(origin_of(cfg, "model.path"), FIXTURES "base.yaml:2:9");
    /* overlay.yaml sets memory_gb to null, which removes it */
    double memory = -1;
    assert_int_equal(pio_config_get_f64(cfg, "kv_cache.memory_gb", &memory, NULL), PIO_SOFT_ABSENT);
    assert_int_equal(pio_config_count(cfg), 2);
    pio_config_free(cfg);
}

static void test_overrides_replace_values_and_record_their_origin(void **state)
{
    (void)state;
    pio_config *cfg = config_from("kv_cache:\n  block_size: 16\ndevice: cpu\nmodel.seed: 3\n");
    pio_error err;
    assert_int_equal(pio_config_apply_override(cfg, "kv_cache.block_size=32", &err), PIO_OK);
    expect_i64(cfg, "kv_cache.block_size", 32);
    assert_string_equal(origin_of(cfg, "kv_cache.block_size"), "--set");
    assert_string_equal(origin_of(cfg, "device"), "t.yaml:3:9");

    assert_int_equal(pio_config_apply_override(cfg, "parallel.devices=[2, 3]", &err), PIO_OK);
    int64_t device = 0;
    assert_int_equal(pio_config_get_list_i64(cfg, "parallel.devices", 1, &device, NULL), PIO_OK);
    assert_true(device == 3);

    assert_int_equal(pio_config_apply_override(cfg, "generation.stop=\"</s>\"", &err), PIO_OK);
    expect_str(cfg, "generation.stop", "</s>");
    assert_int_equal(pio_config_apply_override(cfg, "server.api_key=a=b:c", &err), PIO_OK);
    expect_str(cfg, "server.api_key", "a=b:c");
    assert_int_equal(pio_config_apply_override(cfg, "kv_cache={memory_gb: 1.5}", &err), PIO_OK);
    assert_string_equal(origin_of(cfg, "kv_cache.memory_gb"), "--set");

    /* an empty or null value removes the key */
    assert_int_equal(pio_config_apply_override(cfg, "device=", &err), PIO_OK);
    assert_int_equal(pio_config_apply_override(cfg, "model.seed=null", &err), PIO_OK);
    assert_null(origin_of(cfg, "device"));
    assert_null(origin_of(cfg, "model.seed"));

    /* typed errors on an override name it */
    assert_int_equal(pio_config_apply_override(cfg, "runtime.threads=lots", &err), PIO_OK);
    int64_t threads;
    assert_int_equal(pio_config_get_i64(cfg, "runtime.threads", &threads, &err), PIO_ERR_CONFIG);
    expect_contains(err.message, "--set: key 'runtime.threads': expected an integer, got 'lots'");

    /* a literal string, no YAML parsing */
    assert_int_equal(
        pio_config_set_str(cfg, "model.path", "[not a list] # or a comment", "--model", &err),
        PIO_OK);
    expect_str(cfg, "model.path", "[not a list] # or a comment");
    assert_string_equal(origin_of(cfg, "model.path"), "--model");
    assert_int_equal(pio_config_set_str(cfg, "model.path", NULL, NULL, &err), PIO_OK);
    assert_null(origin_of(cfg, "model.path"));
    assert_int_equal(pio_config_set_str(cfg, "bad key", "x", NULL, &err), PIO_ERR_CONFIG);
    pio_config_free(cfg);
}

static void test_bad_overrides(void **state)
{
    (void)state;
    pio_config *cfg = config_from("device: cpu\n");
    const struct {
        const char *assignment, *fragment;
    } cases[] = {
        {"device", "--set 'device': expected key=value"},
        {"=cpu", "the key empty key"},
        {"dev ice=cpu", "contains ' '"},
        {"a..b=1", "empty segment"},
        {"device=[cuda", "--set 'device=[cuda' (at the end of the value): did not find expected "
                         "',' or ']' (while parsing a flow sequence at line 1, column 1)"},
        {"device=\"cuda", "--set 'device=\"cuda' (at the end of the value): found unexpected end"},
        {"device=[a, b c: d]",
         "--set 'device=[a, b c: d]' (column 12): items of list 'device' must "
         "be scalars, not a mapping"},
        {"device=&x cpu", "(column 8): anchors (&x) are not supported"},
        {"device=a\n---\nb", "only one YAML document"},
        {"device={a: 1, a: 2}", "duplicate key 'device.a'"},
        {"device=\xff", "invalid leading UTF-8 octet"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pio_error err;
        pio_error_clear(&err);
        pio_status status = pio_config_apply_override(cfg, cases[i].assignment, &err);
        if (status != PIO_ERR_CONFIG) {
            print_error("%s: status %d (%s)\n", cases[i].assignment, status, err.message);
            fail();
        }
        assert_int_equal(err.status, PIO_ERR_CONFIG);
        expect_contains(err.message, cases[i].fragment);
    }
    /* none of them changed anything */
    assert_int_equal(pio_config_count(cfg), 1);
    expect_str(cfg, "device", "cpu");
    pio_config_free(cfg);
}

static void test_a_failed_load_changes_nothing(void **state)
{
    (void)state;
    pio_config *cfg = config_from("a: 1\nb: 2\n");
    pio_error err;
    assert_int_equal(load(cfg, "a: 5\nc: 3\nd: [unclosed\n", &err), PIO_ERR_FORMAT);
    assert_int_equal(pio_config_count(cfg), 2);
    expect_i64(cfg, "a", 1);
    pio_config_free(cfg);
}

/* ---- files -------------------------------------------------------------------------------- */

static void test_file_errors(void **state)
{
    (void)state;
    const struct {
        const char *path;
        pio_status status;
        const char *fragment;
    } cases[] = {
        {FIXTURES "missing.yaml", PIO_ERR_IO, FIXTURES "missing.yaml: cannot open"},
        {FIXTURES, PIO_ERR_IO, "cannot read"},
        {FIXTURES "tab_indent.yaml", PIO_ERR_FORMAT,
         FIXTURES "tab_indent.yaml:2:1: found character that cannot start any token"},
        {FIXTURES "bad_indent.yaml", PIO_ERR_FORMAT,
         FIXTURES "bad_indent.yaml:3:2: did not find expected key"},
        {FIXTURES "unclosed_quote.yaml", PIO_ERR_FORMAT,
         FIXTURES "unclosed_quote.yaml:4:1: found unexpected end of stream (while scanning a "
                  "quoted scalar at line 2, column 9)"},
        {FIXTURES "duplicate_key.yaml", PIO_ERR_FORMAT,
         FIXTURES
         "duplicate_key.yaml:4:3: duplicate key 'generation.temperature' (first set at " FIXTURES
         "duplicate_key.yaml:2:3)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pio_config *cfg = pio_config_new();
        pio_error err;
        pio_error_clear(&err);
        assert_int_equal(pio_config_load_file(cfg, cases[i].path, &err), cases[i].status);
        expect_contains(err.message, cases[i].fragment);
        assert_int_equal(pio_config_count(cfg), 0);
        pio_config_free(cfg);
    }
    pio_error err;
    pio_config *cfg = pio_config_new();
    pio_config_load_file(cfg, FIXTURES "tab_indent.yaml", &err);
    expect_contains(err.message, "YAML does not allow tabs for indentation");
    pio_config_free(cfg);
}

/* ---- malformed YAML ----------------------------------------------------------------------- */

static void test_malformed_yaml_names_line_and_column(void **state)
{
    (void)state;
    expect_load_error("a:\n\tb: 1\n", PIO_ERR_FORMAT,
                      "t.yaml:2:1: found character that cannot start any token");
    expect_load_error("a:\n  b: 1\n c: 2\n", PIO_ERR_FORMAT,
                      "t.yaml:3:2: did not find expected key");
    expect_load_error("a:\n  b: 1\n   c: 2\n", PIO_ERR_FORMAT,
                      "t.yaml:3:5: mapping values are not allowed");
    expect_load_error("a: 'open\n", PIO_ERR_FORMAT,
                      "while scanning a quoted scalar at line 1, column 4");
    expect_load_error("a: [1, 2\nb: 3\n", PIO_ERR_FORMAT,
                      "t.yaml:2:2: did not find expected ',' or ']'");
    expect_load_error("a: {b: 1\n", PIO_ERR_FORMAT,
                      "while parsing a flow mapping at line 1, column 4");
    expect_load_error("a: \"bad \\q escape\"\n", PIO_ERR_FORMAT,
                      "t.yaml:1:9: found unknown escape character");
    expect_load_error("a: b: c\n", PIO_ERR_FORMAT, "t.yaml:1:5: mapping values are not allowed");
    expect_load_error("a: 1\n---\nb: 2\n", PIO_ERR_FORMAT,
                      "t.yaml:2:1: only one YAML document is allowed");
    expect_load_error(
        "- 1\n- 2\n", PIO_ERR_FORMAT,
        "t.yaml:1:1: the top level must be a mapping of keys (key: value), not a list");
    expect_load_error("just text\n", PIO_ERR_FORMAT, "t.yaml:1:1: the top level must be a mapping");
}

static void test_duplicate_keys(void **state)
{
    (void)state;
    expect_load_error("a: 1\nb: 2\na: 3\n", PIO_ERR_FORMAT,
                      "t.yaml:3:1: duplicate key 'a' (first set at t.yaml:1:1)");
    /* the same mapping key twice, even when the leaves differ */
    expect_load_error("k:\n  x: 1\nk:\n  y: 2\n", PIO_ERR_FORMAT, "t.yaml:3:1: duplicate key 'k'");
    /* the same dotted key written two ways */
    expect_load_error("k.x: 1\nk:\n  x: 2\n", PIO_ERR_FORMAT,
                      "t.yaml:3:3: duplicate key 'k.x' (first set at t.yaml:1:1)");
    expect_load_error("a: {b: 1, b: 2}\n", PIO_ERR_FORMAT, "t.yaml:1:11: duplicate key 'a.b'");
    /* but a dotted key and a sibling in a mapping are different keys */
    pio_config *cfg = config_from("k.x: 1\nk:\n  y: 2\n");
    assert_int_equal(pio_config_count(cfg), 2);
    pio_config_free(cfg);
}

static void test_anchors_aliases_and_tags_are_rejected(void **state)
{
    (void)state;
    expect_load_error("a: &base 1\nb: 2\n", PIO_ERR_FORMAT,
                      "t.yaml:1:4: anchors (&base) are not supported");
    expect_load_error("a: *base\n", PIO_ERR_FORMAT,
                      "t.yaml:1:4: aliases (*base) are not supported");
    expect_load_error("base: &b {x: 1}\nother:\n  <<: *b\n", PIO_ERR_FORMAT,
                      "t.yaml:1:7: anchors (&b)");
    expect_load_error("a: !!str 1\n", PIO_ERR_FORMAT, "t.yaml:1:4: tags (!!str) are not supported");
    expect_load_error("a: !custom 1\n", PIO_ERR_FORMAT, "tags (!custom)");
}

static void test_bad_keys(void **state)
{
    (void)state;
    expect_load_error("a b: 1\n", PIO_ERR_FORMAT, "t.yaml:1:1: key 'a b' contains ' '");
    expect_load_error("\"\": 1\n", PIO_ERR_FORMAT, "t.yaml:1:1: key '' empty key");
    expect_load_error("a..b: 1\n", PIO_ERR_FORMAT, "empty segment");
    expect_load_error(".a: 1\n", PIO_ERR_FORMAT, "empty segment");
    expect_load_error("k\xC3\xA9y: 1\n", PIO_ERR_FORMAT,
                      "t.yaml:1:1: key 'k\xC3\xA9y' contains byte 0xc3");
    expect_load_error("? [a]\n: 1\n", PIO_ERR_FORMAT,
                      "t.yaml:1:3: a key must be a name, not a list");
    expect_load_error("? {a: 1}\n: 1\n", PIO_ERR_FORMAT, "a key must be a name, not a mapping");
    expect_load_error("a: \"x\\0y\"\n", PIO_ERR_FORMAT,
                      "t.yaml:1:4: value of 'a' contains a NUL character");
}

/* ---- hostile input ------------------------------------------------------------------------ */

static char *repeat(const char *piece, size_t times, const char *tail)
{
    size_t piece_len = strlen(piece), tail_len = strlen(tail);
    char *text = malloc(piece_len * times + tail_len + 1);
    assert_non_null(text);
    for (size_t i = 0; i < times; i++)
        memcpy(text + i * piece_len, piece, piece_len);
    memcpy(text + piece_len * times, tail, tail_len + 1);
    return text;
}

/* "k:\n  k:\n    k: ..." nested `levels` deep, ending in a scalar. */
static char *block_nesting(size_t levels)
{
    char *text = malloc(levels * (2 * levels + 4) + 16);
    assert_non_null(text);
    size_t used = 0;
    for (size_t i = 0; i < levels; i++) {
        used += (size_t)sprintf(text + used, "%*sk:%s", (int)(2 * i), "",
                                i + 1 < levels ? "\n" : " leaf\n");
    }
    return text;
}

static void test_nesting_depth_is_capped(void **state)
{
    (void)state;
    char *ok = block_nesting(PIO_CONFIG_MAX_DEPTH);
    pio_config *cfg = config_from(ok);
    assert_int_equal(pio_config_count(cfg), 1);
    pio_config_free(cfg);
    free(ok);

    char *too_deep = block_nesting(PIO_CONFIG_MAX_DEPTH + 1);
    expect_load_error(
        too_deep, PIO_ERR_FORMAT,
        "t.yaml:17:33: key 'k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k' is nested deeper than 16 levels");
    free(too_deep);

    char *flow = repeat("{k: ", 200000, "1");
    expect_load_error(flow, PIO_ERR_FORMAT, "nested deeper than 16 levels");
    free(flow);
    char *brackets = repeat("[", 500000, "");
    expect_load_error(brackets, PIO_ERR_FORMAT, "t.yaml:1:1: the top level must be a mapping");
    free(brackets);
    char *nested_lists = repeat("[", 100000, "");
    nested_lists[0] = 'a', nested_lists[1] = ':', nested_lists[2] = ' ';
    expect_load_error(nested_lists, PIO_ERR_FORMAT, "items of list 'a' must be scalars");
    free(nested_lists);
}

static void test_size_limits(void **state)
{
    (void)state;
    char *limit_scalar = repeat("x", PIO_CONFIG_MAX_SCALAR_BYTES, "");
    char *text = malloc(PIO_CONFIG_MAX_SCALAR_BYTES + 8);
    assert_non_null(text);
    sprintf(text, "a: %s", limit_scalar);
    pio_config *cfg = config_from(text);
    pio_config_free(cfg);
    sprintf(text, "a: %sx", limit_scalar);
    expect_load_error(text, PIO_ERR_FORMAT,
                      "t.yaml:1:4: value of 'a' is 65537 bytes; the limit is 65536");
    free(limit_scalar);
    free(text);

    char *huge_file = repeat("#", PIO_CONFIG_MAX_TEXT_BYTES + 1, "");
    expect_load_error(huge_file, PIO_ERR_FORMAT,
                      "t.yaml: 1048577 bytes is over the 1048576-byte limit");
    free(huge_file);

    char *long_key = repeat("k", PIO_CONFIG_MAX_KEY_BYTES + 1, ": 1");
    expect_load_error(long_key, PIO_ERR_FORMAT, "is longer than 256 bytes");
    free(long_key);

    /* too many keys, too many list items */
    size_t n = PIO_CONFIG_MAX_KEYS + 1;
    char *many_keys = malloc(n * 16 + 1);
    assert_non_null(many_keys);
    size_t used = 0;
    for (size_t i = 0; i < n; i++)
        used += (size_t)sprintf(many_keys + used, "k%zu: 1\n", i);
    expect_load_error(many_keys, PIO_ERR_FORMAT, "more than 4096 keys in one document");
    free(many_keys);
    char *many_items = repeat("1, ", PIO_CONFIG_MAX_LIST_ITEMS + 1, "1]");
    char *list = malloc(strlen(many_items) + 8);
    assert_non_null(list);
    sprintf(list, "a: [%s", many_items);
    expect_load_error(list, PIO_ERR_FORMAT, "list 'a' has more than 4096 items");
    free(many_items);
    free(list);
}

static void test_the_table_has_a_key_limit_across_loads(void **state)
{
    (void)state;
    pio_config *cfg = pio_config_new();
    pio_error err;
    char text[64];
    for (size_t i = 0; i < PIO_CONFIG_MAX_KEYS; i++) {
        snprintf(text, sizeof text, "plugin_options.k%zu: %zu\n", i, i);
        assert_int_equal(load(cfg, text, &err), PIO_OK);
    }
    assert_int_equal(load(cfg, "one_more: 1\n", &err), PIO_ERR_FORMAT);
    expect_contains(err.message, "more than 4096 keys");
    assert_int_equal(load(cfg, "plugin_options.k7: replaced\n", &err), PIO_OK);
    assert_int_equal(pio_config_count(cfg), PIO_CONFIG_MAX_KEYS);
    pio_config_free(cfg);
}

static void test_invalid_utf8_and_control_characters(void **state)
{
    (void)state;
    expect_load_error("a: ok\nb: \xFF\n", PIO_ERR_FORMAT,
                      "t.yaml:2:4: invalid leading UTF-8 octet (byte 0xFF)");
    expect_load_error("a: caf\xC3\xA9\xC3\n", PIO_ERR_FORMAT,
                      "t.yaml:1:9: invalid trailing UTF-8 octet (byte 0x0A)");
    expect_load_error("a: caf\xC3\xA9\xC3", PIO_ERR_FORMAT,
                      "t.yaml:1:8: incomplete UTF-8 octet sequence");
    expect_load_error("a: \xC0\xAF\n", PIO_ERR_FORMAT, "t.yaml:1:4: invalid");
    expect_load_error("a: \xED\xA0\x80\n", PIO_ERR_FORMAT, "t.yaml:1:4: invalid Unicode character");
    expect_load_error("a: 1\nb: \x01\n", PIO_ERR_FORMAT,
                      "t.yaml:2:4: control characters are not allowed (byte 0x01)");
    /* UTF-16 is refused, not decoded */
    expect_load_error("\xFF\xFE"
                      "a\0:\0 \0"
                      "1\0",
                      PIO_ERR_FORMAT, "t.yaml:1:1: invalid leading UTF-8 octet");

    pio_config *cfg = pio_config_new();
    pio_error err;
    const char with_nul[] = "a: 1\n\0b: 2\n";
    assert_int_equal(pio_config_load_string(cfg, "t.yaml", with_nul, sizeof with_nul - 1, &err),
                     PIO_ERR_FORMAT);
    expect_contains(err.message, "t.yaml:2:1: control characters are not allowed (byte 0x00)");
    pio_config_free(cfg);
}

static uint64_t next_random(uint64_t *seed)
{
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    return *seed;
}

/* Random bytes, and valid configs with random bytes changed: never a crash, a leak or a
 * silent failure (an error always comes with a message). */
static void test_garbage_never_crashes(void **state)
{
    (void)state;
    FILE *file = fopen(FIXTURES "full.yaml", "rb");
    assert_non_null(file);
    char valid[8192];
    size_t valid_len = fread(valid, 1, sizeof valid, file);
    fclose(file);
    assert_true(valid_len > 0 && valid_len < sizeof valid);

    uint64_t seed = 0x9E3779B97F4A7C15u;
    char text[8192];
    for (int round = 0; round < 3000; round++) {
        size_t len;
        if (round % 2 == 0) {
            len = next_random(&seed) % 512;
            for (size_t i = 0; i < len; i++)
                text[i] = (char)next_random(&seed);
        } else {
            len = valid_len;
            memcpy(text, valid, len);
            for (int flips = 1 + (int)(next_random(&seed) % 8); flips > 0; flips--)
                text[next_random(&seed) % len] = (char)next_random(&seed);
        }
        pio_config *cfg = pio_config_new();
        pio_error err;
        pio_error_clear(&err);
        pio_status status = pio_config_load_string(cfg, "fuzz.yaml", text, len, &err);
        assert_true(status == PIO_OK || status == PIO_ERR_FORMAT);
        if (status != PIO_OK)
            expect_contains(err.message, "fuzz.yaml");
        else
            pio_config_validate(cfg, NULL, NULL, &err);
        pio_config_free(cfg);
    }
}

/* ---- schema validation -------------------------------------------------------------------- */

static void test_every_known_key_validates(void **state)
{
    (void)state;
    pio_config *cfg = pio_config_new();
    pio_error err;
    pio_error_clear(&err);
    assert_int_equal(pio_config_load_file(cfg, FIXTURES "full.yaml", &err), PIO_OK);
    warnings w = {0};
    pio_status status = pio_config_validate(cfg, collect_warning, &w, &err);
    if (status != PIO_OK) {
        print_error("%s\n", err.message);
        fail();
    }
    assert_int_equal(w.count, 0);
    /* full.yaml sets every key of the schema */
    for (size_t i = 0; i < pio_config_schema_count(); i++) {
        const pio_config_key_info *info = pio_config_schema_at(i);
        if (!info->free_form && origin_of(cfg, info->key) == NULL) {
            print_error("full.yaml does not set %s\n", info->key);
            fail();
        }
    }
    int flag = 0;
    assert_int_equal(pio_config_get_bool(cfg, "runtime.cuda_graphs", &flag, NULL), PIO_OK);
    assert_int_equal(flag, 1);
    pio_config_free(cfg);
}

static void test_unknown_keys_are_warned_about_with_suggestions(void **state)
{
    (void)state;
    pio_config *cfg = pio_config_new();
    pio_error err;
    assert_int_equal(pio_config_load_file(cfg, FIXTURES "typos.yaml", &err), PIO_OK);
    assert_int_equal(pio_config_apply_override(cfg, "kv_cache=5", &err), PIO_OK);
    warnings w = {0};
    assert_int_equal(pio_config_validate(cfg, collect_warning, &w, &err), PIO_OK);
    assert_int_equal(w.count, 5); /* plugin_options.* is never warned about */
    /* in key order */
    assert_string_equal(w.text[0], FIXTURES "typos.yaml:3:1: unknown key 'block_size' (did you "
                                            "mean 'kv_cache.block_size'?)");
    assert_string_equal(w.text[1], FIXTURES "typos.yaml:6:1: unknown key 'completely_unknown'");
    assert_string_equal(w.text[2], FIXTURES "typos.yaml:5:3: unknown key 'generation.temprature' "
                                            "(did you mean 'generation.temperature'?)");
    assert_string_equal(w.text[3], "--set: unknown key 'kv_cache' (it is a section; set its keys, "
                                   "such as 'kv_cache.block_size')");
    assert_string_equal(w.text[4], FIXTURES "typos.yaml:2:3: unknown key 'kv_cache.blok_size' (did "
                                            "you mean 'kv_cache.block_size'?)");
    /* no callback: warnings are dropped */
    assert_int_equal(pio_config_validate(cfg, NULL, NULL, &err), PIO_OK);
    pio_config_free(cfg);
}

static void test_validate_reports_wrong_types(void **state)
{
    (void)state;
    pio_config *cfg = pio_config_new();
    pio_error err;
    assert_int_equal(pio_config_load_file(cfg, FIXTURES "wrong_types.yaml", &err), PIO_OK);
    warnings w = {0};
    /* the first error in key order */
    assert_int_equal(pio_config_validate(cfg, collect_warning, &w, &err), PIO_ERR_CONFIG);
    assert_string_equal(err.message, FIXTURES "wrong_types.yaml:2:15: key 'kv_cache.block_size': "
                                              "expected an integer, got 'sixteen'");
    pio_config_free(cfg);
}

/* validate() on a one-key document: PIO_OK, or PIO_ERR_CONFIG with `fragment`. */
static void expect_validation(const char *text, const char *fragment)
{
    pio_config *cfg = config_from(text);
    pio_error err;
    pio_error_clear(&err);
    pio_status status = pio_config_validate(cfg, NULL, NULL, &err);
    if (fragment == NULL && status != PIO_OK) {
        print_error("[%s]: %s\n", text, err.message);
        fail();
    }
    if (fragment != NULL) {
        if (status != PIO_ERR_CONFIG) {
            print_error("[%s] validated, expected an error\n", text);
            fail();
        }
        expect_contains(err.message, fragment);
    }
    pio_config_free(cfg);
}

static void test_validate_checks_choices_and_ranges(void **state)
{
    (void)state;
    expect_validation("device.backend: cpu\n", NULL);
    expect_validation("device:\n  backend: cuda\n", NULL);
    expect_validation("device.backend: cuda:7\n", NULL);
    expect_validation("device.backend: gpu\n",
                      "t.yaml:1:17: key 'device.backend': expected one of cpu|cuda|cuda:N, got 'gpu'");
    expect_validation("device.backend: \"cuda:\"\n", "got 'cuda:'");
    expect_validation("device.backend: cuda:x\n", "got 'cuda:x'");
    expect_validation("device.backend: CPU\n", "got 'CPU'");
    expect_validation("model.load_format: dummy\n", NULL);
    expect_validation("model.load_format: pt\n", "expected one of auto|dummy");
    expect_validation("logging.level: verbose\n", "expected one of error|warn|info|debug");

    expect_validation("server.port: 65535\n", NULL);
    expect_validation("server.port: 70000\n", "t.yaml:1:14: key 'server.port': 70000 is out of "
                                              "range (expected at least 1 and at most 65535)");
    expect_validation("generation.top_p: 1\n", NULL);
    expect_validation("generation.top_p: 0\n",
                      "out of range (expected greater than 0 and at most 1)");
    expect_validation("generation.temperature: 0\n", NULL);
    expect_validation("generation.temperature: -0.1\n", "expected at least 0");
    expect_validation("kv_cache.block_size: 0\n", "key 'kv_cache.block_size': 0 is out of range");

    expect_validation("runtime.cuda_graphs: off\n", NULL);
    expect_validation("runtime.cuda_graphs: 1\n", "expected a boolean");
    expect_validation("runtime.cuda_gemv_tma: lm_head\n", NULL);
    expect_validation("runtime.cuda_gemv_tma: some\n", "expected one of auto|all|lm_head|off");
    expect_validation("model.path: [a, b]\n",
                      "t.yaml:1:13: key 'model.path': expected a string, got a list");
    expect_validation("model.path: 16\n", NULL);

    expect_validation("parallel.devices: 1\n", NULL); /* a scalar is a list of one */
    expect_validation(
        "parallel.devices: [0, \"1\"]\n",
        "t.yaml:1:23: key 'parallel.devices[1]': expected an integer, got the quoted string");
    expect_validation("parallel.devices: [0, -1]\n",
                      "key 'parallel.devices[1]': -1 is out of range");
    expect_validation("generation.stop: [\"</s>\", 7]\n", NULL);
}

static void test_validate_keeps_warning_after_an_error(void **state)
{
    (void)state;
    pio_config *cfg = config_from("a_unknown: 1\nbench.repetitions: 0\nz_unknown: 2\n");
    warnings w = {0};
    pio_error err;
    assert_int_equal(pio_config_validate(cfg, collect_warning, &w, &err), PIO_ERR_CONFIG);
    expect_contains(err.message, "bench.repetitions");
    assert_int_equal(w.count, 2);
    pio_config_free(cfg);
}

/* ---- the schema itself -------------------------------------------------------------------- */

static void test_schema_is_well_formed(void **state)
{
    (void)state;
    size_t n = pio_config_schema_count();
    assert_true(n > 30);
    for (size_t i = 0; i < n; i++) {
        const pio_config_key_info *info = pio_config_schema_at(i);
        assert_non_null(info->key);
        assert_true(info->description != NULL && info->description[0] != '\0');
        assert_true(info->default_text != NULL && info->default_text[0] != '\0');
        assert_true(info->choices == NULL || info->type == PIO_CONFIG_STR);
        assert_true(!info->range.has_min || info->type == PIO_CONFIG_I64 ||
                    info->type == PIO_CONFIG_F64);
        for (size_t j = i + 1; j < n; j++)
            assert_string_not_equal(info->key, pio_config_schema_at(j)->key);
        /* every key must be one a YAML file can spell */
        pio_config *cfg = pio_config_new();
        pio_error err;
        assert_int_equal(pio_config_set_str(cfg, info->key, "x", NULL, &err), PIO_OK);
        pio_config_free(cfg);
        if (!info->free_form)
            assert_ptr_equal(pio_config_schema_lookup(info->key), info);
    }
    assert_null(pio_config_schema_at(n));
    assert_null(pio_config_schema_lookup("kv_cache"));
    assert_null(pio_config_schema_lookup("plugin_options"));
    assert_non_null(pio_config_schema_lookup("plugin_options.anything.at.all"));
}

static void test_readme_documents_every_key(void **state)
{
    (void)state;
    FILE *file = fopen("configs/README.md", "rb");
    assert_non_null(file);
    static char readme[256 * 1024];
    size_t len = fread(readme, 1, sizeof readme - 1, file);
    fclose(file);
    readme[len] = '\0';
    for (size_t i = 0; i < pio_config_schema_count(); i++) {
        char quoted[PIO_CONFIG_MAX_KEY_BYTES + 8];
        snprintf(quoted, sizeof quoted, "`%s%s`", pio_config_schema_at(i)->key,
                 pio_config_schema_at(i)->free_form ? ".*" : "");
        if (strstr(readme, quoted) == NULL) {
            print_error("configs/README.md does not document %s\n", quoted);
            fail();
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nested_mappings_become_dotted_keys),
        cmocka_unit_test(test_dotted_keys_may_be_written_flat),
        cmocka_unit_test(test_empty_documents_give_an_empty_config),
        cmocka_unit_test(test_absent_keys_leave_the_value_untouched),
        cmocka_unit_test(test_i64_good_values),
        cmocka_unit_test(test_i64_bad_values_name_the_place),
        cmocka_unit_test(test_f64_good_and_bad_values),
        cmocka_unit_test(test_bool_spellings),
        cmocka_unit_test(test_strings_keep_their_text),
        cmocka_unit_test(test_lists),
        cmocka_unit_test(test_malformed_lists),
        cmocka_unit_test(test_later_files_replace_earlier_values),
        cmocka_unit_test(test_overrides_replace_values_and_record_their_origin),
        cmocka_unit_test(test_bad_overrides),
        cmocka_unit_test(test_a_failed_load_changes_nothing),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_malformed_yaml_names_line_and_column),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_anchors_aliases_and_tags_are_rejected),
        cmocka_unit_test(test_bad_keys),
        cmocka_unit_test(test_nesting_depth_is_capped),
        cmocka_unit_test(test_size_limits),
        cmocka_unit_test(test_the_table_has_a_key_limit_across_loads),
        cmocka_unit_test(test_invalid_utf8_and_control_characters),
        cmocka_unit_test(test_garbage_never_crashes),
        cmocka_unit_test(test_every_known_key_validates),
        cmocka_unit_test(test_unknown_keys_are_warned_about_with_suggestions),
        cmocka_unit_test(test_validate_reports_wrong_types),
        cmocka_unit_test(test_validate_checks_choices_and_ranges),
        cmocka_unit_test(test_validate_keeps_warning_after_an_error),
        cmocka_unit_test(test_schema_is_well_formed),
        cmocka_unit_test(test_readme_documents_every_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
