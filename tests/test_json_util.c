/*
 * json_util: typed getters with defaults and errors that name the file and key, malformed JSON
 * with line and column, int-or-list fields, nested keys, the table-driven field reader, and the
 * real Qwen3 config files from the shared folder.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pio/json_util.h"

#ifndef PIO_TEST_SHARED_DIR
#define PIO_TEST_SHARED_DIR "../shared"
#endif

#define QWEN3_4B PIO_TEST_SHARED_DIR "/models/qwen3_4b_instruct_2507/"
#define QWEN3_VL PIO_TEST_SHARED_DIR "/models/qwen3_vl_2b/"

static const char sample_text[] =
    "{\n"
    "  \"architectures\": [\"Qwen3ForCausalLM\"],\n"
    "  \"num_hidden_layers\": 36,\n"
    "  \"layers_as_text\": \"36\",\n"
    "  \"rms_norm_eps\": 1e-06,\n"
    "  \"rope_theta\": 5000000,\n"
    "  \"ratio\": 36.0,\n"
    "  \"tie_word_embeddings\": true,\n"
    "  \"flag_as_int\": 1,\n"
    "  \"rope_scaling\": null,\n"
    "  \"eos_token_id\": 151645,\n"
    "  \"eos_list\": [151645, 151643],\n"
    "  \"empty_list\": [],\n"
    "  \"mixed_list\": [1, \"two\", 3],\n"
    "  \"floats\": [0.5, 1, 2.25],\n"
    "  \"torch_dtype\": \"bfloat16\",\n"
    "  \"long_text\": \"a string that is much longer than the forty bytes kept in messages\",\n"
    "  \"text_config\": {\n"
    "    \"hidden_size\": 2048,\n"
    "    \"rope_scaling\": {\"mrope_section\": [24, 20, 20], \"rope_type\": \"default\"}\n"
    "  },\n"
    "  \"vision_config\": \"not an object\",\n"
    "  \"eos_token\": \"<|im_end|>\",\n"
    "  \"unk_token\": {\"__type\": \"AddedToken\", \"content\": \"<unk>\", \"special\": true},\n"
    "  \"bad_token\": {\"text\": \"x\"}\n"
    "}\n";

static int load_sample(void **state)
{
    pio_json_doc *doc = NULL;
    if (pio_json_load_buffer("config.json", sample_text, strlen(sample_text), &doc, NULL) != PIO_OK)
        return -1;
    *state = doc;
    return 0;
}

static int free_sample(void **state)
{
    pio_json_free(*state);
    return 0;
}

static void assert_contains(const char *text, const char *needle)
{
    if (strstr(text, needle) == NULL)
        fail_msg("expected \"%s\" in message: %s", needle, text);
}

/* ------------------------------------------------------------------------------------------ */
/* Scalars                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static void test_good_scalars(void **state)
{
    const pio_json_doc *doc = *state;
    pio_error err = {0};
    int64_t layers = 0;
    assert_int_equal(pio_json_get_int(doc, "num_hidden_layers", PIO_JSON_REQUIRED, 1, 1024,
                                      &layers, &err),
                     PIO_OK);
    assert_int_equal(layers, 36);

    double eps = 0, theta = 0;
    assert_int_equal(pio_json_get_double(doc, "rms_norm_eps", PIO_JSON_REQUIRED, 0.0, 1.0, &eps,
                                         &err),
                     PIO_OK);
    assert_true(eps == 1e-6);
    /* an integer in the file reads as a number */
    assert_int_equal(pio_json_get_double(doc, "rope_theta", PIO_JSON_REQUIRED, 1.0, 1e12, &theta,
                                         &err),
                     PIO_OK);
    assert_true(theta == 5e6);

    bool tied = false;
    assert_int_equal(pio_json_get_bool(doc, "tie_word_embeddings", PIO_JSON_REQUIRED, &tied, &err),
                     PIO_OK);
    assert_true(tied);

    const char *dtype = NULL;
    assert_int_equal(pio_json_get_string(doc, "torch_dtype", PIO_JSON_REQUIRED, &dtype, &err),
                     PIO_OK);
    assert_string_equal(dtype, "bfloat16");

    assert_string_equal(pio_json_name(doc), "config.json");
    assert_true(json_is_object(pio_json_root(doc)));
    assert_true(pio_json_has(doc, "num_hidden_layers"));
    assert_false(pio_json_has(doc, "rope_scaling")); /* null counts as absent */
    assert_false(pio_json_has(doc, "nope"));
}

static void test_nested_keys(void **state)
{
    const pio_json_doc *doc = *state;
    pio_error err = {0};
    int64_t hidden = 0;
    assert_int_equal(pio_json_get_int(doc, "text_config.hidden_size", PIO_JSON_REQUIRED, 1, 65536,
                                      &hidden, &err),
                     PIO_OK);
    assert_int_equal(hidden, 2048);

    int64_t sections[4] = {0};
    size_t n = 0;
    assert_int_equal(pio_json_get_int_array(doc, "text_config.rope_scaling.mrope_section",
                                            PIO_JSON_REQUIRED, 0, 128, sections, 4, &n, &err),
                     PIO_OK);
    assert_int_equal(n, 3);
    assert_int_equal(sections[0], 24);
    assert_int_equal(sections[1], 20);
    assert_int_equal(sections[2], 20);

    const json_t *object = NULL;
    assert_int_equal(pio_json_get_object(doc, "text_config.rope_scaling", PIO_JSON_REQUIRED,
                                         &object, &err),
                     PIO_OK);
    assert_string_equal(json_string_value(json_object_get(object, "rope_type")), "default");

    /* a null object on the way is absence, not an error */
    const char *type = "kept";
    assert_int_equal(pio_json_get_string(doc, "rope_scaling.rope_type", PIO_JSON_OPTIONAL, &type,
                                         &err),
                     PIO_SOFT_ABSENT);
    assert_string_equal(type, "kept");

    /* a non-object on the way is an error naming the prefix */
    assert_int_equal(pio_json_get_int(doc, "vision_config.depth", PIO_JSON_OPTIONAL, 0, 100,
                                      &hidden, &err),
                     PIO_ERR_CONFIG);
    assert_string_equal(err.message,
                        "config.json: \"vision_config\" must be an object, got string \"not an "
                        "object\"");
    assert_int_equal(pio_json_get_int(doc, "text_config.missing.deeper", PIO_JSON_REQUIRED, 0, 1,
                                      &hidden, &err),
                     PIO_ERR_NOT_FOUND);
    assert_string_equal(err.message,
                        "config.json: required key \"text_config.missing.deeper\" is missing");
}

static void test_wrong_types(void **state)
{
    const pio_json_doc *doc = *state;
    pio_error err = {0};
    int64_t value = 7;
    assert_int_equal(pio_json_get_int(doc, "layers_as_text", PIO_JSON_REQUIRED, 1, 1024, &value,
                                      &err),
                     PIO_ERR_CONFIG);
    assert_int_equal(err.status, PIO_ERR_CONFIG);
    assert_string_equal(err.message,
                        "config.json: \"layers_as_text\" must be an integer, got string \"36\"");
    assert_int_equal(value, 7); /* untouched */

    assert_int_equal(pio_json_get_int(doc, "ratio", PIO_JSON_REQUIRED, 0, 100, &value, &err),
                     PIO_ERR_CONFIG);
    assert_string_equal(err.message, "config.json: \"ratio\" must be an integer, got number 36");

    double real = 3;
    assert_int_equal(pio_json_get_double(doc, "torch_dtype", PIO_JSON_OPTIONAL, 0, 1, &real, &err),
                     PIO_ERR_CONFIG);
    assert_string_equal(err.message,
                        "config.json: \"torch_dtype\" must be a number, got string \"bfloat16\"");

    bool flag = false;
    assert_int_equal(pio_json_get_bool(doc, "flag_as_int", PIO_JSON_OPTIONAL, &flag, &err),
                     PIO_ERR_CONFIG);
    assert_string_equal(err.message,
                        "config.json: \"flag_as_int\" must be true or false, got integer 1");

    const char *text = NULL;
    assert_int_equal(pio_json_get_string(doc, "architectures", PIO_JSON_OPTIONAL, &text, &err),
                     PIO_ERR_CONFIG);
    assert_string_equal(err.message, "config.json: \"architectures\" must be a string, got array");
    assert_int_equal(pio_json_get_string(doc, "text_config", PIO_JSON_OPTIONAL, &text, &err),
                     PIO_ERR_CONFIG);
    assert_contains(err.message, "got object");
    assert_int_equal(pio_json_get_string(doc, "tie_word_embeddings", PIO_JSON_OPTIONAL, &text,
                                         &err),
                     PIO_ERR_CONFIG);
    assert_contains(err.message, "got boolean true");

    /* long strings are cut in messages */
    assert_int_equal(pio_json_get_int(doc, "long_text", PIO_JSON_OPTIONAL, 0, 1, &value, &err),
                     PIO_ERR_CONFIG);
    assert_contains(err.message, "got string \"a string that is much longer than the fo...\"");

    const json_t *object;
    assert_int_equal(pio_json_get_object(doc, "torch_dtype", PIO_JSON_OPTIONAL, &object, &err),
                     PIO_ERR_CONFIG);
    assert_contains(err.message, "\"torch_dtype\" must be an object");
}

static void test_ranges(void **state)
{
    const pio_json_doc *doc = *state;
    pio_error err = {0};
    int64_t value = -1;
    assert_int_equal(pio_json_get_int(doc, "num_hidden_layers", PIO_JSON_REQUIRED, 1, 32, &value,
                                      &err),
                     PIO_ERR_CONFIG);
    assert_string_equal(err.message,
                        "config.json: \"num_hidden_layers\" must be between 1 and 32, got 36");
    assert_int_equal(value, -1);
    assert_int_equal(pio_json_get_int(doc, "num_hidden_layers", PIO_JSON_REQUIRED, 40, INT64_MAX,
                                      &value, &err),
                     PIO_ERR_CONFIG);
    assert_string_equal(err.message,
                        "config.json: \"num_hidden_layers\" must be at least 40, got 36");
    assert_int_equal(pio_json_get_int(doc, "num_hidden_layers", PIO_JSON_REQUIRED, INT64_MIN, 10,
                                      &value, &err),
                     PIO_ERR_CONFIG);
    assert_string_equal(err.message,
                        "config.json: \"num_hidden_layers\" must be at most 10, got 36");

    double real = -1;
    assert_int_equal(pio_json_get_double(doc, "rms_norm_eps", PIO_JSON_REQUIRED, 1e-3, 1.0, &real,
                                         &err),
                     PIO_ERR_CONFIG);
    assert_string_equal(err.message,
                        "config.json: \"rms_norm_eps\" must be between 0.001 and 1, got 1e-06");
    assert_int_equal(pio_json_get_double(doc, "rope_theta", PIO_JSON_REQUIRED, -INFINITY, 100.0,
                                         &real, &err),
                     PIO_ERR_CONFIG);
    assert_string_equal(err.message, "config.json: \"rope_theta\" must be at most 100, got 5e+06");
    assert_true(real == -1);
}

static void test_missing_keys_and_defaults(void **state)
{
    const pio_json_doc *doc = *state;
    pio_error err = {0};
    int64_t layers = 28;
    assert_int_equal(pio_json_get_int(doc, "num_layers", PIO_JSON_OPTIONAL, 1, 1024, &layers,
                                      &err),
                     PIO_SOFT_ABSENT);
    assert_int_equal(layers, 28);
    assert_int_equal(pio_json_get_int(doc, "num_layers", PIO_JSON_REQUIRED, 1, 1024, &layers,
                                      &err),
                     PIO_ERR_NOT_FOUND);
    assert_string_equal(err.message, "config.json: required key \"num_layers\" is missing");

    const json_t *scaling;
    assert_int_equal(pio_json_get_object(doc, "rope_scaling", PIO_JSON_OPTIONAL, &scaling, &err),
                     PIO_SOFT_ABSENT);
    assert_int_equal(pio_json_get_object(doc, "rope_scaling", PIO_JSON_REQUIRED, &scaling, &err),
                     PIO_ERR_NOT_FOUND);
    assert_string_equal(err.message, "config.json: required key \"rope_scaling\" is null");

    double theta = 1e4;
    bool flag = true;
    const char *text = "default";
    assert_int_equal(pio_json_get_double(doc, "x", PIO_JSON_OPTIONAL, 0, 1, &theta, &err),
                     PIO_SOFT_ABSENT);
    assert_int_equal(pio_json_get_bool(doc, "x", PIO_JSON_OPTIONAL, &flag, &err), PIO_SOFT_ABSENT);
    assert_int_equal(pio_json_get_string(doc, "x", PIO_JSON_OPTIONAL, &text, &err),
                     PIO_SOFT_ABSENT);
    assert_true(theta == 1e4);
    assert_true(flag);
    assert_string_equal(text, "default");

    /* malformed keys are the caller's bug */
    const char *bad_keys[] = {"", ".a", "a.", "a..b"};
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(pio_json_get_int(doc, bad_keys[i], PIO_JSON_OPTIONAL, 0, 1, &layers, &err),
                         PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pio_json_get_int(doc, NULL, PIO_JSON_OPTIONAL, 0, 1, &layers, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pio_json_get_int(NULL, "a", PIO_JSON_OPTIONAL, 0, 1, &layers, &err),
                     PIO_ERR_INVALID_ARGUMENT);
}

/* ------------------------------------------------------------------------------------------ */
/* Arrays and int-or-list                                                                     */
/* ------------------------------------------------------------------------------------------ */

static void test_int_or_array(void **state)
{
    const pio_json_doc *doc = *state;
    pio_error err = {0};
    int64_t ids[4] = {0};
    size_t n = 99;
    assert_int_equal(pio_json_get_int_or_array(doc, "eos_token_id", PIO_JSON_REQUIRED, 0,
                                               INT32_MAX, ids, 4, &n, &err),
                     PIO_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 151645);

    assert_int_equal(pio_json_get_int_or_array(doc, "eos_list", PIO_JSON_REQUIRED, 0, INT32_MAX,
                                               ids, 4, &n, &err),
                     PIO_OK);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 151645);
    assert_int_equal(ids[1], 151643);

    assert_int_equal(pio_json_get_int_or_array(doc, "torch_dtype", PIO_JSON_REQUIRED, 0,
                                               INT32_MAX, ids, 4, &n, &err),
                     PIO_ERR_CONFIG);
    assert_string_equal(err.message, "config.json: \"torch_dtype\" must be an integer or an "
                                     "array of integers, got string \"bfloat16\"");

    assert_int_equal(pio_json_get_int_or_array(doc, "eos_list", PIO_JSON_REQUIRED, 0, INT32_MAX,
                                               ids, 1, &n, &err),
                     PIO_ERR_CONFIG);
    assert_string_equal(err.message,
                        "config.json: \"eos_list\" has 2 entries, at most 1 are supported");

    assert_int_equal(pio_json_get_int_or_array(doc, "eos_token_id", PIO_JSON_REQUIRED, 0, 100,
                                               ids, 4, &n, &err),
                     PIO_ERR_CONFIG);
    assert_contains(err.message, "\"eos_token_id\" must be between 0 and 100, got 151645");

    n = 5;
    ids[0] = -3;
    assert_int_equal(pio_json_get_int_or_array(doc, "pad_token_id", PIO_JSON_OPTIONAL, 0,
                                               INT32_MAX, ids, 4, &n, &err),
                     PIO_SOFT_ABSENT);
    assert_int_equal(n, 5);
    assert_int_equal(ids[0], -3);
}

static void test_arrays(void **state)
{
    const pio_json_doc *doc = *state;
    pio_error err = {0};
    int64_t ints[4] = {-1, -1, -1, -1};
    size_t n = 99;
    assert_int_equal(pio_json_get_int_array(doc, "empty_list", PIO_JSON_REQUIRED, 0, 1, ints, 4,
                                            &n, &err),
                     PIO_OK);
    assert_int_equal(n, 0);

    n = 99;
    assert_int_equal(pio_json_get_int_array(doc, "mixed_list", PIO_JSON_REQUIRED, 0, 10, ints, 4,
                                            &n, &err),
                     PIO_ERR_CONFIG);
    assert_string_equal(err.message,
                        "config.json: \"mixed_list[1]\" must be an integer, got string \"two\"");
    assert_int_equal(n, 99);
    assert_int_equal(ints[0], -1); /* nothing written before the bad element was found */

    assert_int_equal(pio_json_get_int_array(doc, "eos_token_id", PIO_JSON_REQUIRED, 0, INT32_MAX,
                                            ints, 4, &n, &err),
                     PIO_ERR_CONFIG);
    assert_string_equal(err.message, "config.json: \"eos_token_id\" must be an array of integers, "
                                     "got integer 151645");

    assert_int_equal(pio_json_get_int_array(doc, "eos_list", PIO_JSON_REQUIRED, 0, 151644, ints,
                                            4, &n, &err),
                     PIO_ERR_CONFIG);
    assert_contains(err.message, "\"eos_list[0]\" must be between 0 and 151644, got 151645");

    double reals[3] = {0};
    assert_int_equal(pio_json_get_double_array(doc, "floats", PIO_JSON_REQUIRED, 0.0, 10.0, reals,
                                               3, &n, &err),
                     PIO_OK);
    assert_int_equal(n, 3);
    assert_true(reals[0] == 0.5 && reals[1] == 1.0 && reals[2] == 2.25);
    assert_int_equal(pio_json_get_double_array(doc, "floats", PIO_JSON_REQUIRED, 0.0, 2.0, reals,
                                               3, &n, &err),
                     PIO_ERR_CONFIG);
    assert_contains(err.message, "\"floats[2]\" must be between 0 and 2, got 2.25");

    const char *names[2] = {NULL, NULL};
    assert_int_equal(pio_json_get_string_array(doc, "architectures", PIO_JSON_REQUIRED, names, 2,
                                               &n, &err),
                     PIO_OK);
    assert_int_equal(n, 1);
    assert_string_equal(names[0], "Qwen3ForCausalLM");
    assert_int_equal(pio_json_get_string_array(doc, "mixed_list", PIO_JSON_REQUIRED, names, 3, &n,
                                               &err),
                     PIO_ERR_CONFIG);
    assert_contains(err.message, "\"mixed_list[0]\" must be a string, got integer 1");

    assert_int_equal(pio_json_get_int_array(doc, "absent_list", PIO_JSON_REQUIRED, 0, 1, ints, 4,
                                            &n, &err),
                     PIO_ERR_NOT_FOUND);
    assert_int_equal(pio_json_get_int_array(doc, "eos_list", PIO_JSON_REQUIRED, 0, 1, NULL, 4, &n,
                                            &err),
                     PIO_ERR_INVALID_ARGUMENT);
}

static void test_token_text(void **state)
{
    const pio_json_doc *doc = *state;
    pio_error err = {0};
    const char *token = NULL;
    assert_int_equal(pio_json_get_token_text(doc, "eos_token", PIO_JSON_REQUIRED, &token, &err),
                     PIO_OK);
    assert_string_equal(token, "<|im_end|>");
    assert_int_equal(pio_json_get_token_text(doc, "unk_token", PIO_JSON_REQUIRED, &token, &err),
                     PIO_OK);
    assert_string_equal(token, "<unk>");
    assert_int_equal(pio_json_get_token_text(doc, "bad_token", PIO_JSON_REQUIRED, &token, &err),
                     PIO_ERR_CONFIG);
    assert_string_equal(err.message, "config.json: \"bad_token\" must be a string or an object "
                                     "with \"content\", got object");
    assert_int_equal(pio_json_get_token_text(doc, "bos_token", PIO_JSON_OPTIONAL, &token, &err),
                     PIO_SOFT_ABSENT);
}

/* ------------------------------------------------------------------------------------------ */
/* Table-driven fields                                                                        */
/* ------------------------------------------------------------------------------------------ */

typedef struct sample_config {
    int layers;
    int64_t hidden;
    long long theta_as_int;
    double eps;
    float theta;
    bool tied;
    const char *dtype;
    int absent_with_default;
} sample_config;

static const pio_json_field sample_fields[] = {
    PIO_JSON_FIELD(sample_config, layers, "num_hidden_layers", PIO_JSON_REQUIRED, 1, 1024),
    PIO_JSON_FIELD(sample_config, hidden, "text_config.hidden_size", PIO_JSON_REQUIRED, 1, 1 << 20),
    PIO_JSON_FIELD(sample_config, theta_as_int, "rope_theta", PIO_JSON_REQUIRED, 0, INT64_MAX),
    PIO_JSON_FIELD(sample_config, eps, "rms_norm_eps", PIO_JSON_OPTIONAL, 0.0, 1.0),
    PIO_JSON_FIELD(sample_config, theta, "rope_theta", PIO_JSON_OPTIONAL, 1.0, 1e30),
    PIO_JSON_FIELD(sample_config, tied, "tie_word_embeddings", PIO_JSON_OPTIONAL, 0, 0),
    PIO_JSON_FIELD(sample_config, dtype, "torch_dtype", PIO_JSON_REQUIRED, 0, 0),
    PIO_JSON_FIELD(sample_config, absent_with_default, "sliding_window", PIO_JSON_OPTIONAL, 0, 100),
};

static void test_read_fields(void **state)
{
    const pio_json_doc *doc = *state;
    pio_error err = {0};
    sample_config config = {.absent_with_default = 42};
    assert_int_equal(pio_json_read_fields(doc, sample_fields,
                                          sizeof sample_fields / sizeof sample_fields[0], &config,
                                          &err),
                     PIO_OK);
    assert_int_equal(config.layers, 36);
    assert_int_equal(config.hidden, 2048);
    assert_int_equal(config.theta_as_int, 5000000);
    assert_true(config.eps == 1e-6);
    assert_true(config.theta == 5e6f);
    assert_true(config.tied);
    assert_string_equal(config.dtype, "bfloat16");
    assert_int_equal(config.absent_with_default, 42);

    /* bounds wider than the member type are clamped to it: an int field cannot take 2^40 */
    static const char big_text[] = "{\"n\": 1099511627776, \"m\": 1.5}";
    pio_json_doc *big;
    assert_int_equal(pio_json_load_buffer("big.json", big_text, strlen(big_text), &big, &err),
                     PIO_OK);
    typedef struct {
        int n;
        int m;
    } small;
    static const pio_json_field small_fields[] = {
        PIO_JSON_FIELD(small, n, "n", PIO_JSON_REQUIRED, 0, 1e300),
        PIO_JSON_FIELD(small, m, "m", PIO_JSON_REQUIRED, 0, 10),
    };
    small s = {1, 2};
    assert_int_equal(pio_json_read_fields(big, small_fields, 2, &s, &err), PIO_ERR_CONFIG);
    assert_string_equal(err.message,
                        "big.json: \"n\" must be between 0 and 2147483647, got 1099511627776");
    assert_int_equal(s.n, 1);
    assert_int_equal(pio_json_read_fields(big, small_fields + 1, 1, &s, &err), PIO_ERR_CONFIG);
    assert_string_equal(err.message, "big.json: \"m\" must be an integer, got number 1.5");
    pio_json_free(big);

    /* fractional bounds on an integer field round inwards */
    static const pio_json_field rounded[] = {
        PIO_JSON_FIELD(sample_config, layers, "num_hidden_layers", PIO_JSON_REQUIRED, 35.5, 36.9),
    };
    assert_int_equal(pio_json_read_fields(doc, rounded, 1, &config, &err), PIO_OK);
    static const pio_json_field too_low[] = {
        PIO_JSON_FIELD(sample_config, layers, "num_hidden_layers", PIO_JSON_REQUIRED, 36.5, 40),
    };
    assert_int_equal(pio_json_read_fields(doc, too_low, 1, &config, &err), PIO_ERR_CONFIG);
    assert_contains(err.message, "must be between 37 and 40, got 36");
}

/* ------------------------------------------------------------------------------------------ */
/* Loading                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static void test_malformed_json_names_line_and_column(void **state)
{
    (void)state;
    static const char text[] = "{\n  \"a\": 1,\n  \"b\": [1, 2,,\n}\n";
    pio_json_doc *doc = (pio_json_doc *)1;
    pio_error err = {0};
    assert_int_equal(pio_json_load_buffer("config.json", text, strlen(text), &doc, &err),
                     PIO_ERR_FORMAT);
    assert_null(doc);
    assert_int_equal(err.status, PIO_ERR_FORMAT);
    assert_contains(err.message, "config.json: line 3, column 14: ");

    static const char duplicate[] = "{\"a\": 1,\n \"a\": 2}";
    assert_int_equal(pio_json_load_buffer("dup.json", duplicate, strlen(duplicate), &doc, &err),
                     PIO_ERR_FORMAT);
    assert_contains(err.message, "dup.json: line 2");
    assert_contains(err.message, "duplicate object key");

    static const char array[] = "[1, 2]";
    assert_int_equal(pio_json_load_buffer("array.json", array, strlen(array), &doc, &err),
                     PIO_ERR_FORMAT);
    assert_string_equal(err.message,
                        "array.json: the top level must be a JSON object, got an array");

    assert_int_equal(pio_json_load_buffer("empty.json", "", 0, &doc, &err), PIO_ERR_FORMAT);
    assert_contains(err.message, "empty.json: line");

    static const char bad_utf8[] = "{\"a\": \"\xff\"}";
    assert_int_equal(pio_json_load_buffer("utf8.json", bad_utf8, strlen(bad_utf8), &doc, &err),
                     PIO_ERR_FORMAT);
    assert_contains(err.message, "utf8.json: line 1");

    static const char nul[] = "{\"a\": \"x\\u0000y\"}";
    assert_int_equal(pio_json_load_buffer("nul.json", nul, strlen(nul), &doc, &err),
                     PIO_ERR_FORMAT);
}

static void test_load_file_errors(void **state)
{
    (void)state;
    char dir[] = "/tmp/pio_test_json_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", dir);

    pio_json_doc *doc = (pio_json_doc *)1;
    pio_error err = {0};
    assert_int_equal(pio_json_load_file(path, &doc, &err), PIO_ERR_NOT_FOUND);
    assert_null(doc);
    assert_contains(err.message, path);

    assert_int_equal(pio_json_load_file(dir, &doc, &err), PIO_ERR_IO);
    assert_contains(err.message, "not a regular file");

    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\n  \"num_hidden_layers\": \"36\"\n}\n", f);
    fclose(f);
    assert_int_equal(pio_json_load_file(path, &doc, &err), PIO_OK);
    int64_t layers;
    assert_int_equal(pio_json_get_int(doc, "num_hidden_layers", PIO_JSON_REQUIRED, 1, 1024, &layers,
                                      &err),
                     PIO_ERR_CONFIG);
    char expected[256];
    snprintf(expected, sizeof expected,
             "%s: \"num_hidden_layers\" must be an integer, got string \"36\"", path);
    assert_string_equal(err.message, expected);
    pio_json_free(doc);

    f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\n  \"a\": tru\n}\n", f);
    fclose(f);
    assert_int_equal(pio_json_load_file(path, &doc, &err), PIO_ERR_FORMAT);
    snprintf(expected, sizeof expected, "%s: line 2, column", path);
    assert_contains(err.message, expected);

    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
    pio_json_free(NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Real files                                                                                 */
/* ------------------------------------------------------------------------------------------ */

static void test_real_qwen3_config(void **state)
{
    (void)state;
    pio_json_doc *doc;
    pio_error err = {0};
    assert_int_equal(pio_json_load_file(QWEN3_4B "config.json", &doc, &err), PIO_OK);
    int64_t hidden, layers, heads, kv_heads, head_dim, intermediate, vocab, max_positions;
    assert_int_equal(pio_json_get_int(doc, "hidden_size", PIO_JSON_REQUIRED, 1, 1 << 20, &hidden,
                                      &err),
                     PIO_OK);
    assert_int_equal(pio_json_get_int(doc, "num_hidden_layers", PIO_JSON_REQUIRED, 1, 1024,
                                      &layers, &err),
                     PIO_OK);
    assert_int_equal(pio_json_get_int(doc, "num_attention_heads", PIO_JSON_REQUIRED, 1, 1024,
                                      &heads, &err),
                     PIO_OK);
    assert_int_equal(pio_json_get_int(doc, "num_key_value_heads", PIO_JSON_REQUIRED, 1, 1024,
                                      &kv_heads, &err),
                     PIO_OK);
    assert_int_equal(pio_json_get_int(doc, "head_dim", PIO_JSON_REQUIRED, 1, 1024, &head_dim, &err),
                     PIO_OK);
    assert_int_equal(pio_json_get_int(doc, "intermediate_size", PIO_JSON_REQUIRED, 1, 1 << 20,
                                      &intermediate, &err),
                     PIO_OK);
    assert_int_equal(pio_json_get_int(doc, "vocab_size", PIO_JSON_REQUIRED, 1, 1 << 24, &vocab,
                                      &err),
                     PIO_OK);
    assert_int_equal(pio_json_get_int(doc, "max_position_embeddings", PIO_JSON_REQUIRED, 1,
                                      1 << 30, &max_positions, &err),
                     PIO_OK);
    assert_int_equal(hidden, 2560);
    assert_int_equal(layers, 36);
    assert_int_equal(heads, 32);
    assert_int_equal(kv_heads, 8);
    assert_int_equal(head_dim, 128);
    assert_int_equal(intermediate, 9728);
    assert_int_equal(vocab, 151936);
    assert_int_equal(max_positions, 262144);

    double eps, theta;
    assert_int_equal(pio_json_get_double(doc, "rms_norm_eps", PIO_JSON_REQUIRED, 0, 1, &eps, &err),
                     PIO_OK);
    assert_int_equal(pio_json_get_double(doc, "rope_theta", PIO_JSON_REQUIRED, 1, 1e12, &theta,
                                         &err),
                     PIO_OK);
    assert_true(eps == 1e-6);
    assert_true(theta == 5e6);

    bool tied = false, bias = true;
    assert_int_equal(pio_json_get_bool(doc, "tie_word_embeddings", PIO_JSON_REQUIRED, &tied, &err),
                     PIO_OK);
    assert_int_equal(pio_json_get_bool(doc, "attention_bias", PIO_JSON_OPTIONAL, &bias, &err),
                     PIO_OK);
    assert_true(tied);
    assert_false(bias);

    const char *architectures[4];
    size_t n;
    assert_int_equal(pio_json_get_string_array(doc, "architectures", PIO_JSON_REQUIRED,
                                               architectures, 4, &n, &err),
                     PIO_OK);
    assert_int_equal(n, 1);
    assert_string_equal(architectures[0], "Qwen3ForCausalLM");

    const char *dtype, *model_type;
    assert_int_equal(pio_json_get_string(doc, "torch_dtype", PIO_JSON_REQUIRED, &dtype, &err),
                     PIO_OK);
    assert_int_equal(pio_json_get_string(doc, "model_type", PIO_JSON_REQUIRED, &model_type, &err),
                     PIO_OK);
    assert_string_equal(dtype, "bfloat16");
    assert_string_equal(model_type, "qwen3");

    int64_t eos[4];
    assert_int_equal(pio_json_get_int_or_array(doc, "eos_token_id", PIO_JSON_REQUIRED, 0,
                                               INT32_MAX, eos, 4, &n, &err),
                     PIO_OK);
    assert_int_equal(n, 1);
    assert_int_equal(eos[0], 151645);

    const json_t *scaling;
    assert_int_equal(pio_json_get_object(doc, "rope_scaling", PIO_JSON_OPTIONAL, &scaling, &err),
                     PIO_SOFT_ABSENT);
    int64_t window = -1;
    assert_int_equal(pio_json_get_int(doc, "sliding_window", PIO_JSON_OPTIONAL, 1, INT64_MAX,
                                      &window, &err),
                     PIO_SOFT_ABSENT);
    assert_int_equal(window, -1);

    /* a wrong expectation names the real path and key */
    assert_int_equal(pio_json_get_string(doc, "hidden_size", PIO_JSON_REQUIRED, &dtype, &err),
                     PIO_ERR_CONFIG);
    assert_string_equal(err.message, QWEN3_4B "config.json: \"hidden_size\" must be a string, "
                                              "got integer 2560");
    pio_json_free(doc);
}

static void test_real_qwen3_generation_config(void **state)
{
    (void)state;
    pio_json_doc *doc;
    pio_error err = {0};
    assert_int_equal(pio_json_load_file(QWEN3_4B "generation_config.json", &doc, &err), PIO_OK);
    int64_t eos[4], top_k, pad;
    size_t n;
    assert_int_equal(pio_json_get_int_or_array(doc, "eos_token_id", PIO_JSON_REQUIRED, 0,
                                               INT32_MAX, eos, 4, &n, &err),
                     PIO_OK);
    assert_int_equal(n, 2);
    assert_int_equal(eos[0], 151645);
    assert_int_equal(eos[1], 151643);
    assert_int_equal(pio_json_get_int(doc, "top_k", PIO_JSON_OPTIONAL, 0, 1 << 20, &top_k, &err),
                     PIO_OK);
    assert_int_equal(top_k, 20);
    assert_int_equal(pio_json_get_int(doc, "pad_token_id", PIO_JSON_OPTIONAL, 0, INT32_MAX, &pad,
                                      &err),
                     PIO_OK);
    assert_int_equal(pad, 151643);
    double temperature, top_p, min_p = 0.0;
    assert_int_equal(pio_json_get_double(doc, "temperature", PIO_JSON_OPTIONAL, 0, 100,
                                         &temperature, &err),
                     PIO_OK);
    assert_int_equal(pio_json_get_double(doc, "top_p", PIO_JSON_OPTIONAL, 0, 1, &top_p, &err),
                     PIO_OK);
    assert_int_equal(pio_json_get_double(doc, "min_p", PIO_JSON_OPTIONAL, 0, 1, &min_p, &err),
                     PIO_SOFT_ABSENT);
    assert_true(temperature == 0.7);
    assert_true(top_p == 0.8);
    assert_true(min_p == 0.0);
    bool sample = false;
    assert_int_equal(pio_json_get_bool(doc, "do_sample", PIO_JSON_OPTIONAL, &sample, &err), PIO_OK);
    assert_true(sample);
    pio_json_free(doc);
}

static void test_real_qwen3_tokenizer_config(void **state)
{
    (void)state;
    pio_json_doc *doc;
    pio_error err = {0};
    assert_int_equal(pio_json_load_file(QWEN3_4B "tokenizer_config.json", &doc, &err), PIO_OK);
    const char *eos, *pad, *bos = "none", *template_text;
    assert_int_equal(pio_json_get_token_text(doc, "eos_token", PIO_JSON_REQUIRED, &eos, &err),
                     PIO_OK);
    assert_int_equal(pio_json_get_token_text(doc, "pad_token", PIO_JSON_OPTIONAL, &pad, &err),
                     PIO_OK);
    assert_int_equal(pio_json_get_token_text(doc, "bos_token", PIO_JSON_OPTIONAL, &bos, &err),
                     PIO_SOFT_ABSENT);
    assert_string_equal(eos, "<|im_end|>");
    assert_string_equal(pad, "<|endoftext|>");
    assert_string_equal(bos, "none");
    assert_int_equal(pio_json_get_string(doc, "chat_template", PIO_JSON_REQUIRED, &template_text,
                                         &err),
                     PIO_OK);
    assert_non_null(strstr(template_text, "<|im_start|>"));
    int64_t max_length;
    assert_int_equal(pio_json_get_int(doc, "model_max_length", PIO_JSON_OPTIONAL, 1, INT64_MAX,
                                      &max_length, &err),
                     PIO_OK);
    assert_int_equal(max_length, 262144);

    const json_t *added;
    assert_int_equal(pio_json_get_object(doc, "added_tokens_decoder", PIO_JSON_REQUIRED, &added,
                                         &err),
                     PIO_OK);
    const json_t *endoftext = json_object_get(added, "151643");
    assert_non_null(endoftext);
    assert_string_equal(json_string_value(json_object_get(endoftext, "content")), "<|endoftext|>");
    assert_int_equal(pio_json_get_token_text(doc, "added_tokens_decoder.151644", PIO_JSON_REQUIRED,
                                             &eos, &err),
                     PIO_OK);
    assert_string_equal(eos, "<|im_start|>");
    pio_json_free(doc);
}

static void test_real_qwen3_vl_nested_config(void **state)
{
    (void)state;
    pio_json_doc *doc;
    pio_error err = {0};
    assert_int_equal(pio_json_load_file(QWEN3_VL "config.reconstructed.json", &doc, &err), PIO_OK);
    int64_t sections[3], deepstack[8], hidden;
    size_t n;
    assert_int_equal(pio_json_get_int_array(doc, "text_config.rope_scaling.mrope_section",
                                            PIO_JSON_REQUIRED, 0, 128, sections, 3, &n, &err),
                     PIO_OK);
    assert_int_equal(n, 3);
    assert_int_equal(sections[0], 24);
    assert_int_equal(sections[1], 20);
    assert_int_equal(sections[2], 20);
    assert_int_equal(pio_json_get_int_array(doc, "vision_config.deepstack_visual_indexes",
                                            PIO_JSON_REQUIRED, 0, 64, deepstack, 8, &n, &err),
                     PIO_OK);
    assert_int_equal(n, 3);
    assert_int_equal(deepstack[2], 17);
    assert_int_equal(pio_json_get_int(doc, "text_config.hidden_size", PIO_JSON_REQUIRED, 1,
                                      1 << 20, &hidden, &err),
                     PIO_OK);
    assert_int_equal(hidden, 2048);
    bool interleaved = false;
    assert_int_equal(pio_json_get_bool(doc, "text_config.rope_scaling.mrope_interleaved",
                                       PIO_JSON_REQUIRED, &interleaved, &err),
                     PIO_OK);
    assert_true(interleaved);
    pio_json_free(doc);
}

static void test_real_qwen3_index_weight_map(void **state)
{
    (void)state;
    pio_json_doc *doc;
    pio_error err = {0};
    assert_int_equal(pio_json_load_file(QWEN3_4B "model.safetensors.index.json", &doc, &err),
                     PIO_OK);
    const json_t *weight_map;
    assert_int_equal(pio_json_get_object(doc, "weight_map", PIO_JSON_REQUIRED, &weight_map, &err),
                     PIO_OK);
    assert_int_equal(json_object_size(weight_map), 398);
    assert_string_equal(json_string_value(json_object_get(weight_map, "model.embed_tokens.weight")),
                        "model-00001-of-00003.safetensors");
    assert_string_equal(json_string_value(json_object_get(weight_map, "model.norm.weight")),
                        "model-00003-of-00003.safetensors");
    assert_null(json_object_get(weight_map, "lm_head.weight")); /* tied embeddings */
    int64_t total;
    assert_int_equal(pio_json_get_int(doc, "metadata.total_size", PIO_JSON_REQUIRED, 0, INT64_MAX,
                                      &total, &err),
                     PIO_OK);
    assert_int_equal(total, 8045591552LL);
    pio_json_free(doc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_good_scalars, load_sample, free_sample),
        cmocka_unit_test_setup_teardown(test_nested_keys, load_sample, free_sample),
        cmocka_unit_test_setup_teardown(test_wrong_types, load_sample, free_sample),
        cmocka_unit_test_setup_teardown(test_ranges, load_sample, free_sample),
        cmocka_unit_test_setup_teardown(test_missing_keys_and_defaults, load_sample, free_sample),
        cmocka_unit_test_setup_teardown(test_int_or_array, load_sample, free_sample),
        cmocka_unit_test_setup_teardown(test_arrays, load_sample, free_sample),
        cmocka_unit_test_setup_teardown(test_token_text, load_sample, free_sample),
        cmocka_unit_test_setup_teardown(test_read_fields, load_sample, free_sample),
        cmocka_unit_test(test_malformed_json_names_line_and_column),
        cmocka_unit_test(test_load_file_errors),
        cmocka_unit_test(test_real_qwen3_config),
        cmocka_unit_test(test_real_qwen3_generation_config),
        cmocka_unit_test(test_real_qwen3_tokenizer_config),
        cmocka_unit_test(test_real_qwen3_vl_nested_config),
        cmocka_unit_test(test_real_qwen3_index_weight_map),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
