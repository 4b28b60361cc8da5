/*
 * Tests of the tokenizer (sdk/src/tokenizer_*.c) on the real Qwen3 tokenizer.json and on a
 * small synthetic tokenizer with GLM-4's pre-tokenizer pattern.
 *
 * Reference ids come from the llama.cpp vectors in ../shared and from the fixtures in
 * tests/fixtures/tokenizer/ written by tools/make_tokenizer_fixtures.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <utf8proc.h>

#include "pio/tokenizer.h"

#ifndef PIO_TEST_SHARED_DIR
#define PIO_TEST_SHARED_DIR "../shared"
#endif

#define QWEN_DIR PIO_TEST_SHARED_DIR "/models/qwen3_4b_instruct_2507"
#define QWEN_TOKENIZER QWEN_DIR "/tokenizer.json"
#define GGML_VECTORS QWEN_DIR "/tokenizer_tests/ggml-vocab-qwen2.gguf"
#define FIXTURE_DIR "tests/fixtures/tokenizer/"
#define GLM_TOKENIZER FIXTURE_DIR "glm_pattern_tokenizer.json"

typedef struct tokenizers {
    pio_tokenizer *qwen;
    pio_tokenizer *glm;
} tokenizers;

static pio_tokenizer *qwen(void **state)
{
    return ((tokenizers *)*state)->qwen;
}

static pio_tokenizer *glm(void **state)
{
    return ((tokenizers *)*state)->glm;
}

static int load_tokenizers(void **state)
{
    tokenizers *t = calloc(1, sizeof *t);
    pio_error err = {0};
    if (t == NULL)
        return -1;
    *state = t;
    if (pio_tokenizer_load(QWEN_TOKENIZER, &t->qwen, &err) != PIO_OK) {
        fprintf(stderr, "%s\n", err.message);
        return -1;
    }
    if (pio_tokenizer_load(GLM_TOKENIZER, &t->glm, &err) != PIO_OK) {
        fprintf(stderr, "%s\n", err.message);
        return -1;
    }
    return 0;
}

static int free_tokenizers(void **state)
{
    tokenizers *t = *state;
    if (t != NULL) {
        pio_tokenizer_free(t->qwen);
        pio_tokenizer_free(t->glm);
        free(t);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    char *data = malloc((size_t)size + 1);
    if (data != NULL && fread(data, 1, (size_t)size, f) != (size_t)size) {
        free(data);
        data = NULL;
    }
    fclose(f);
    if (data != NULL) {
        data[size] = '\0';
        *len = (size_t)size;
    }
    return data;
}

static pio_token_ids encode(pio_tokenizer *t, const char *text, size_t len, unsigned flags)
{
    pio_token_ids ids = {0};
    pio_error err = {0};
    pio_status status = pio_tokenizer_encode(t, text, len, flags, &ids, &err);
    if (status != PIO_OK)
        fail_msg("encode failed: %s", err.message);
    return ids;
}

static pio_token_ids encode_str(pio_tokenizer *t, const char *text)
{
    return encode(t, text, strlen(text), 0);
}

/* Decodes into a malloc'd NUL-terminated string. */
static char *decode(pio_tokenizer *t, const int32_t *ids, size_t n, unsigned flags, size_t *len)
{
    pio_error err = {0};
    size_t needed = 0;
    pio_status status = pio_tokenizer_decode(t, ids, n, flags, NULL, 0, &needed, &err);
    assert_true(status == PIO_OK || status == PIO_SOFT_TRUNCATED);
    char *text = malloc(needed + 1);
    assert_non_null(text);
    status = pio_tokenizer_decode(t, ids, n, flags, text, needed + 1, len, &err);
    if (status != PIO_OK)
        fail_msg("decode failed: %s", err.message);
    assert_int_equal(*len, needed);
    return text;
}

static bool ids_equal(const pio_token_ids *got, const json_t *expected)
{
    if (got->count != json_array_size(expected))
        return false;
    for (size_t i = 0; i < got->count; i++)
        if (got->ids[i] != json_integer_value(json_array_get(expected, i)))
            return false;
    return true;
}

static void print_ids(const char *label, const int32_t *ids, size_t n)
{
    print_message("  %s (%zu):", label, n);
    for (size_t i = 0; i < n && i < 64; i++)
        print_message(" %d", ids[i]);
    print_message("%s\n", n > 64 ? " ..." : "");
}

static void print_expected(const json_t *expected)
{
    size_t n = json_array_size(expected);
    int32_t *ids = calloc(n + 1, sizeof *ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(expected, i));
    print_ids("expected", ids, n);
    free(ids);
}

static size_t hex_to_bytes(const char *hex, char *out)
{
    size_t n = strlen(hex) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned byte;
        sscanf(hex + 2 * i, "%2x", &byte);
        out[i] = (char)byte;
    }
    return n;
}

/* NFC computed by utf8proc's own (quadratic but simple) path, independent of the tokenizer's. */
static char *reference_nfc(const char *text, size_t len, size_t *out_len)
{
    utf8proc_uint8_t *out = NULL;
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len, &out,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    assert_true(n >= 0);
    *out_len = (size_t)n;
    return (char *)out;
}

/* ------------------------------------------------------------------------------------------ */
/* (a) llama.cpp vectors                                                                      */
/* ------------------------------------------------------------------------------------------ */

static void test_llama_cpp_vectors(void **state)
{
    size_t in_len, out_len;
    char *inputs = read_file(GGML_VECTORS ".inp", &in_len);
    char *outputs = read_file(GGML_VECTORS ".out", &out_len);
    assert_non_null(inputs);
    assert_non_null(outputs);
    const char *separator = "\n__ggml_vocab_test__\n";
    char *text = inputs, *line = outputs;
    size_t cases = 0, failures = 0;
    for (char *end; (end = strstr(text, separator)) != NULL; text = end + strlen(separator)) {
        char *line_end = strchr(line, '\n');
        assert_non_null(line_end);
        *line_end = '\0';
        pio_token_ids ids = encode(qwen(state), text, (size_t)(end - text), 0);
        char got[16384] = "";
        for (size_t i = 0; i < ids.count; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), " %d", ids.ids[i]);
        if (strcmp(got, line) != 0) {
            failures++;
            print_message("llama.cpp case %zu:\n  got     %s\n  expected %s\n", cases, got, line);
        }
        pio_token_ids_free(&ids);
        line = line_end + 1;
        cases++;
    }
    /* The file holds 46 strings (the last one ends with the separator too). */
    assert_int_equal(cases, 46);
    assert_int_equal(failures, 0);
    free(inputs);
    free(outputs);
}

/* ------------------------------------------------------------------------------------------ */
/* (b) Hugging Face reference fixtures                                                        */
/* ------------------------------------------------------------------------------------------ */

static unsigned case_flags(const json_t *c)
{
    unsigned flags = 0;
    if (json_is_true(json_object_get(c, "add_special_tokens")))
        flags |= PIO_TOKENIZE_ADD_SPECIAL_TOKENS;
    if (json_is_true(json_object_get(c, "split_special_tokens")))
        flags |= PIO_TOKENIZE_SPLIT_SPECIAL_TOKENS;
    if (json_is_true(json_object_get(c, "replace_invalid_utf8")))
        flags |= PIO_TOKENIZE_REPLACE_INVALID_UTF8;
    return flags;
}

static size_t check_encode_cases(pio_tokenizer *t, const json_t *cases)
{
    size_t failures = 0, index;
    json_t *c;
    json_array_foreach(cases, index, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        const json_t *text = json_object_get(c, "text");
        const json_t *hex = json_object_get(c, "bytes_hex");
        char *bytes = malloc(json_string_length(text ? text : hex) + 1);
        size_t len = text ? json_string_length(text) : hex_to_bytes(json_string_value(hex), bytes);
        if (text != NULL)
            memcpy(bytes, json_string_value(text), len);
        pio_token_ids ids = encode(t, bytes, len, case_flags(c));
        const json_t *expected = json_object_get(c, "ids");
        if (!ids_equal(&ids, expected)) {
            failures++;
            print_message("case \"%s\" differs\n", name);
            print_ids("got", ids.ids, ids.count);
            print_expected(expected);
        }
        pio_token_ids_free(&ids);
        free(bytes);
    }
    return failures;
}

static size_t check_decode_cases(pio_tokenizer *t, const json_t *cases)
{
    size_t failures = 0, index;
    json_t *c;
    json_array_foreach(cases, index, c) {
        const json_t *list = json_object_get(c, "ids");
        size_t n = json_array_size(list);
        int32_t *ids = calloc(n + 1, sizeof *ids);
        for (size_t i = 0; i < n; i++)
            ids[i] = (int32_t)json_integer_value(json_array_get(list, i));
        unsigned flags = json_is_true(json_object_get(c, "skip_special_tokens"))
                             ? PIO_DETOKENIZE_SKIP_SPECIAL_TOKENS : 0;
        size_t len;
        char *text = decode(t, ids, n, flags, &len);
        const json_t *expected = json_object_get(c, "text");
        if (len != json_string_length(expected) ||
            memcmp(text, json_string_value(expected), len) != 0) {
            failures++;
            print_message("decode case \"%s\"%s: got \"%s\", expected \"%s\"\n",
                          json_string_value(json_object_get(c, "name")),
                          flags ? " (skip special)" : "", text, json_string_value(expected));
        }
        free(text);
        free(ids);
    }
    return failures;
}

/* The fixture must exist: a missing file is a failure, not a skip. */
static void check_fixture(pio_tokenizer *t, const char *path)
{
    json_error_t error;
    json_t *root = json_load_file(path, JSON_ALLOW_NUL, &error);
    if (root == NULL)
        fail_msg("%s: cannot read the fixture (%s); run tools/make_tokenizer_fixtures.py", path,
                 error.text);
    const json_t *cases = json_object_get(root, "cases");
    assert_true(json_array_size(cases) > 40);
    size_t failures = check_encode_cases(t, cases);
    failures += check_decode_cases(t, json_object_get(root, "decode_cases"));
    if (failures > 0)
        print_message("%s (%s): %zu failures\n", path,
                      json_string_value(json_object_get(root, "generator")), failures);
    json_decref(root);
    assert_int_equal(failures, 0);
}

static void test_qwen_reference_fixture(void **state)
{
    check_fixture(qwen(state), FIXTURE_DIR "qwen3_reference.json");
}

static void test_glm_reference_fixture(void **state)
{
    check_fixture(glm(state), FIXTURE_DIR "glm_pattern_reference.json");
}

/* ------------------------------------------------------------------------------------------ */
/* (c) Round trip                                                                             */
/* ------------------------------------------------------------------------------------------ */

static void check_round_trip(pio_tokenizer *t, const char *text, size_t len, bool nfc)
{
    pio_token_ids ids = encode(t, text, len, 0);
    size_t decoded_len, expected_len = len;
    char *decoded = decode(t, ids.ids, ids.count, 0, &decoded_len);
    char *expected = nfc ? reference_nfc(text, len, &expected_len) : NULL;
    const char *want = expected ? expected : text;
    if (decoded_len != expected_len || memcmp(decoded, want, decoded_len) != 0)
        fail_msg("round trip differs for \"%.*s\": got \"%s\"", (int)len, text, decoded);
    free(expected);
    free(decoded);
    pio_token_ids_free(&ids);
}

/* A code point for random text: mostly ASCII, with Latin, combining marks, CJK, Hangul and its
 * jamo, compatibility characters, emoji, odd whitespace and controls. */
static uint32_t random_code_point(unsigned *seed)
{
    static const uint32_t specials[] = {0x0301, 0x0316, 0x0323, 0x0307, 0x1100, 0x1161, 0x11A8,
                                        0xF900, 0x212B, 0x2126, 0x00A0, 0x3000, 0x180E, 0x2028,
                                        0x0085, 0x200D, 0xFE0F, 0x1F600, 0x1F1EB, 0x0000, 0x000D,
                                        0x000A, 0x0009, 0x0027, 0x017F, 0x00BD, 0x0663};
    unsigned r = (unsigned)rand_r(seed);
    switch (r % 8) {
    case 0: return 0x4E00 + (unsigned)rand_r(seed) % 0x5000;
    case 1: return 0xAC00 + (unsigned)rand_r(seed) % 11172;
    case 2: return 0x00C0 + (unsigned)rand_r(seed) % 0x180;
    case 3: return specials[(unsigned)rand_r(seed) % (sizeof specials / sizeof *specials)];
    default: return 0x20 + (unsigned)rand_r(seed) % 0x5F;
    }
}

static size_t random_text(unsigned *seed, char *out, size_t max_code_points)
{
    size_t n = (unsigned)rand_r(seed) % (max_code_points + 1), len = 0;
    for (size_t i = 0; i < n; i++)
        len += (size_t)utf8proc_encode_char((utf8proc_int32_t)random_code_point(seed),
                                            (utf8proc_uint8_t *)out + len);
    return len;
}

static void test_round_trip(void **state)
{
    static const char *texts[] = {
        "Hello, world!", "  leading and trailing  ", "tabs\tand\nnewlines\r\n",
        "<|im_start|>user\nhi<|im_end|>", "cafe\xcc\x81", "\xe2\x84\xab", "\xef\xa4\x80",
        "q\xcc\x87\xcc\xa3", "\xe1\x84\x92\xe1\x85\xa1\xe1\x86\xab", "emoji \xf0\x9f\x98\x80",
        "a\xcc\x81\xcc\x96\xcc\x80", "", " ", "1234567890", "'s 'T 'Re"};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        check_round_trip(qwen(state), texts[i], strlen(texts[i]), true);
        check_round_trip(glm(state), texts[i], strlen(texts[i]), false);
    }
    unsigned seed = 12345;
    char text[64 * 4 + 1];
    for (int i = 0; i < 3000; i++) {
        size_t len = random_text(&seed, text, 64);
        check_round_trip(qwen(state), text, len, true);
        check_round_trip(glm(state), text, len, false);
    }
}

static void test_nfc_applies_before_split(void **state)
{
    pio_token_ids decomposed = encode_str(qwen(state), "cafe\xcc\x81 \xef\xa4\x80");
    pio_token_ids composed = encode_str(qwen(state), "caf\xc3\xa9 \xe8\xb1\x88");
    assert_int_equal(decomposed.count, composed.count);
    assert_memory_equal(decomposed.ids, composed.ids, composed.count * sizeof(int32_t));
    pio_token_ids_free(&decomposed);
    pio_token_ids_free(&composed);
}

/* GLM's \p{N}{1,3} groups digits by three; Qwen's \p{N} takes them one by one. */
static void test_glm_digit_groups(void **state)
{
    pio_token_ids whole = encode_str(glm(state), "1234567");
    pio_token_ids parts = {0};
    pio_error err = {0};
    const char *groups[] = {"123", "456", "7"};
    for (int i = 0; i < 3; i++)
        assert_int_equal(pio_tokenizer_encode(glm(state), groups[i], 3 - (i == 2) * 2, 0, &parts,
                                              &err), PIO_OK);
    assert_int_equal(whole.count, parts.count);
    assert_memory_equal(whole.ids, parts.ids, parts.count * sizeof(int32_t));
    assert_int_equal(whole.count, 3); /* the fixture has merges up to "123" and "456" */
    pio_token_ids qwen_ids = encode_str(qwen(state), "1234567");
    assert_int_equal(qwen_ids.count, 7);
    pio_token_ids_free(&whole);
    pio_token_ids_free(&parts);
    pio_token_ids_free(&qwen_ids);
}

/* ------------------------------------------------------------------------------------------ */
/* (d) Streaming decode                                                                       */
/* ------------------------------------------------------------------------------------------ */

static int32_t byte_token(pio_tokenizer *t, unsigned byte)
{
    /* Bytes 0x80..0xA0 are written as U+0121..U+0142 in the byte-level alphabet; 0xA1.. as
     * themselves. Both need two UTF-8 bytes. */
    uint32_t cp = byte <= 32 ? 256 + byte : byte >= 127 && byte <= 160 ? 256 + 33 + (byte - 127)
                  : byte == 173 ? 323 : byte;
    char text[5] = {0};
    utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)text);
    int32_t id = pio_tokenizer_token_to_id(t, text);
    assert_true(id >= 0);
    return id;
}

static void push_expect(pio_detokenizer *d, int32_t id, const char *expected)
{
    const char *text;
    size_t len;
    pio_error err = {0};
    assert_int_equal(pio_detokenizer_push(d, id, &text, &len, &err), PIO_OK);
    assert_int_equal(len, strlen(expected));
    assert_string_equal(text, expected);
}

static void flush_expect(pio_detokenizer *d, const char *expected)
{
    const char *text;
    size_t len;
    pio_error err = {0};
    assert_int_equal(pio_detokenizer_flush(d, &text, &len, &err), PIO_OK);
    assert_string_equal(text, expected);
}

static void test_streaming_split_character(void **state)
{
    pio_tokenizer *t = qwen(state);
    pio_detokenizer *d = NULL;
    pio_error err = {0};
    assert_int_equal(pio_detokenizer_create(t, 0, &d, &err), PIO_OK);
    /* U+4E2D = E4 B8 AD, fed one byte-token at a time. */
    push_expect(d, byte_token(t, 0xE4), "");
    push_expect(d, byte_token(t, 0xB8), "");
    push_expect(d, byte_token(t, 0xAD), "\xe4\xb8\xad");
    flush_expect(d, "");
    /* An incomplete tail becomes U+FFFD at the end of the stream. */
    push_expect(d, byte_token(t, 'a'), "a");
    push_expect(d, byte_token(t, 0xF0), "");
    push_expect(d, byte_token(t, 0x9F), "");
    flush_expect(d, "\xef\xbf\xbd");
    /* A byte that can never start a sequence comes out at once as U+FFFD. */
    push_expect(d, byte_token(t, 0x80), "\xef\xbf\xbd");
    /* A partial sequence cut by an added token: U+FFFD, then the token. */
    push_expect(d, byte_token(t, 0xE4), "");
    push_expect(d, pio_tokenizer_token_to_id(t, "<think>"), "\xef\xbf\xbd<think>");
    pio_detokenizer_reset(d);
    pio_detokenizer_free(d);

    /* With skip special, a skipped special token does not cut the sequence. */
    assert_int_equal(pio_detokenizer_create(t, PIO_DETOKENIZE_SKIP_SPECIAL_TOKENS, &d, &err),
                     PIO_OK);
    push_expect(d, byte_token(t, 0xE4), "");
    push_expect(d, pio_tokenizer_token_to_id(t, "<|im_end|>"), "");
    push_expect(d, byte_token(t, 0xB8), "");
    push_expect(d, byte_token(t, 0xAD), "\xe4\xb8\xad");
    const char *text;
    size_t len;
    assert_int_equal(pio_detokenizer_push(d, 999999, &text, &len, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "999999"));
    pio_detokenizer_free(d);
}

/* Streaming every token of a text gives pieces that are valid UTF-8 on their own and that
 * concatenate to the whole decode. */
static void test_streaming_matches_decode(void **state)
{
    pio_tokenizer *t = qwen(state);
    const char *sample = "Mixed: \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f"
                         "\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7 \xd0\xbc\xd0\xb8\xd1\x80 "
                         "<|im_end|> \xf0\x9f\x87\xab\xf0\x9f\x87\xb7 end";
    pio_token_ids ids = encode_str(t, sample);
    size_t whole_len;
    char *whole = decode(t, ids.ids, ids.count, 0, &whole_len);
    pio_detokenizer *d = NULL;
    pio_error err = {0};
    assert_int_equal(pio_detokenizer_create(t, 0, &d, &err), PIO_OK);
    char joined[1024] = "";
    size_t joined_len = 0;
    for (size_t i = 0; i <= ids.count; i++) {
        const char *text;
        size_t len;
        pio_status status = i < ids.count ? pio_detokenizer_push(d, ids.ids[i], &text, &len, &err)
                                          : pio_detokenizer_flush(d, &text, &len, &err);
        assert_int_equal(status, PIO_OK);
        assert_true(utf8proc_decompose((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len,
                                       NULL, 0, 0) >= 0);
        memcpy(joined + joined_len, text, len);
        joined_len += len;
    }
    assert_int_equal(joined_len, whole_len);
    assert_memory_equal(joined, whole, whole_len);
    assert_memory_equal(whole, sample, strlen(sample));
    pio_detokenizer_free(d);
    free(whole);
    pio_token_ids_free(&ids);
}

/* ------------------------------------------------------------------------------------------ */
/* (e) Invalid UTF-8                                                                          */
/* ------------------------------------------------------------------------------------------ */

static void expect_invalid(pio_tokenizer *t, const char *text, size_t len, size_t offset,
                           const char *replaced)
{
    pio_token_ids ids = {0};
    pio_error err = {0};
    assert_int_equal(pio_tokenizer_encode(t, text, len, 0, &ids, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(ids.count, 0);
    char needle[64];
    snprintf(needle, sizeof needle, "byte offset %zu", offset);
    if (strstr(err.message, needle) == NULL)
        fail_msg("message \"%s\" lacks \"%s\"", err.message, needle);
    pio_token_ids repaired = encode(t, text, len, PIO_TOKENIZE_REPLACE_INVALID_UTF8);
    pio_token_ids expected = encode_str(t, replaced);
    assert_int_equal(repaired.count, expected.count);
    assert_memory_equal(repaired.ids, expected.ids, expected.count * sizeof(int32_t));
    pio_token_ids_free(&repaired);
    pio_token_ids_free(&expected);
}

#define FFFD "\xef\xbf\xbd"

static void test_invalid_utf8(void **state)
{
    pio_tokenizer *t = qwen(state);
    expect_invalid(t, "abc\xff" "def", 7, 3, "abc" FFFD "def");
    expect_invalid(t, "ok\xe4\xb8", 4, 2, "ok" FFFD);
    expect_invalid(t, "ok\xe4\xb8 x", 6, 2, "ok" FFFD " x");
    expect_invalid(t, "a\xed\xa0\x80" "b", 5, 1, "a" FFFD FFFD FFFD "b");
    expect_invalid(t, "\xc0\xaf", 2, 0, FFFD FFFD);
    expect_invalid(t, "\xf4\x90\x80\x80", 4, 0, FFFD FFFD FFFD FFFD);
    expect_invalid(t, "\xe4\xb8\xad\xff", 4, 3, "\xe4\xb8\xad" FFFD);
    /* Added tokens are still found around a repaired sequence. */
    expect_invalid(t, "<|im_start|>\x80<|im_end|>", 23, 12, "<|im_start|>" FFFD "<|im_end|>");
}

/* ------------------------------------------------------------------------------------------ */
/* (f) Hostile inputs                                                                         */
/* ------------------------------------------------------------------------------------------ */

static void check_hostile(pio_tokenizer *t, const char *unit, size_t unit_len)
{
    size_t len = (4u << 20) / unit_len * unit_len;
    char *text = malloc(len);
    assert_non_null(text);
    for (size_t i = 0; i < len; i += unit_len)
        memcpy(text + i, unit, unit_len);
    pio_token_ids ids = encode(t, text, len, 0);
    assert_true(ids.count > 0);
    size_t decoded_len;
    char *decoded = decode(t, ids.ids, ids.count, 0, &decoded_len);
    assert_int_equal(decoded_len, len);
    assert_memory_equal(decoded, text, len);
    free(decoded);
    free(text);
    pio_token_ids_free(&ids);
}

static void test_hostile_inputs(void **state)
{
    check_hostile(qwen(state), "a", 1);
    check_hostile(qwen(state), "0123456789", 10);
    check_hostile(qwen(state), " ", 1);
    check_hostile(qwen(state), "\xcc\x81", 2);   /* U+0301 with no base character */
    check_hostile(qwen(state), "\xe4\xb8\x80", 3);
    check_hostile(glm(state), "0123456789", 10);
}

/* ------------------------------------------------------------------------------------------ */
/* (g) Malformed tokenizer.json                                                               */
/* ------------------------------------------------------------------------------------------ */

/* A small valid tokenizer.json: the 256 byte tokens, two merges, two added tokens. */
static json_t *base_tokenizer(void)
{
    json_t *vocab = json_object();
    for (unsigned b = 0; b < 256; b++) {
        uint32_t cp = b <= 32 ? 256 + b : b >= 127 && b <= 160 ? 256 + 33 + (b - 127)
                      : b == 173 ? 323 : b;
        char text[5] = {0};
        utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)text);
        json_object_set_new(vocab, text, json_integer(b));
    }
    json_object_set_new(vocab, "ab", json_integer(256));
    json_object_set_new(vocab, "abc", json_integer(257));
    json_error_t error;
    json_t *root = json_loads(
        "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null,"
        " \"added_tokens\": [{\"id\": 258, \"content\": \"<s>\", \"single_word\": false,"
        "   \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true},"
        "  {\"id\": 259, \"content\": \"<x>\", \"special\": false, \"normalized\": true}],"
        " \"normalizer\": {\"type\": \"NFC\"},"
        " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": ["
        "   {\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\p{L}+|\\\\s+|[^\\\\s\\\\p{L}]+\"},"
        "    \"behavior\": \"Isolated\", \"invert\": false},"
        "   {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": false,"
        "    \"use_regex\": false}]},"
        " \"post_processor\": {\"type\": \"TemplateProcessing\","
        "   \"single\": [{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}},"
        "                {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}],"
        "   \"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [258],"
        "                                \"tokens\": [\"<s>\"]}}},"
        " \"decoder\": {\"type\": \"ByteLevel\"},"
        " \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null,"
        "   \"byte_fallback\": false, \"merges\": [\"a b\", [\"ab\", \"c\"]]}}",
        0, &error);
    assert_non_null(root);
    json_object_set_new(json_object_get(root, "model"), "vocab", vocab);
    return root;
}

/* Follows a path like "model/merges/0" (numbers index arrays). */
static json_t *parent_of(json_t *root, const char *path, char *last, size_t last_size)
{
    char buffer[256];
    snprintf(buffer, sizeof buffer, "%s", path);
    char *slash = strrchr(buffer, '/');
    size_t start = slash ? (size_t)(slash + 1 - buffer) : 0;
    memcpy(last, buffer + start, strlen(buffer + start) + 1 < last_size
                                     ? strlen(buffer + start) + 1 : last_size);
    last[last_size - 1] = '\0';
    if (slash == NULL)
        return root;
    *slash = '\0';
    json_t *node = root;
    for (char *part = strtok(buffer, "/"); part != NULL && node != NULL; part = strtok(NULL, "/"))
        node = json_is_array(node) ? json_array_get(node, (size_t)atoi(part))
                                   : json_object_get(node, part);
    return node;
}

/* Replaces the value at path by the JSON text `value` (NULL deletes it). */
static void patch(json_t *root, const char *path, const char *value)
{
    char last[256];
    json_t *parent = parent_of(root, path, last, sizeof last);
    assert_non_null(parent);
    json_error_t error;
    json_t *replacement = value ? json_loads(value, JSON_DECODE_ANY, &error) : NULL;
    if (value != NULL && replacement == NULL)
        fail_msg("bad test JSON %s: %s", value, error.text);
    if (json_is_array(parent)) {
        if (replacement)
            json_array_set_new(parent, (size_t)atoi(last), replacement);
        else
            json_array_remove(parent, (size_t)atoi(last));
    } else if (replacement) {
        json_object_set_new(parent, last, replacement);
    } else {
        json_object_del(parent, last);
    }
}

typedef struct malformed_case {
    const char *path;       /* what to change in the base tokenizer */
    const char *value;      /* new JSON value; NULL removes the key */
    pio_status status;
    const char *message;    /* expected inside the error message */
} malformed_case;

static const malformed_case malformed_cases[] = {
    {"version", "\"2.0\"", PIO_ERR_UNSUPPORTED, "tokenizer.json: version: only \"1.0\""},
    {"truncation", "{\"max_length\": 8}", PIO_ERR_UNSUPPORTED, "truncation: must be null"},
    {"model", NULL, PIO_ERR_FORMAT, ": model: expected an object"},
    {"model/type", "\"WordPiece\"", PIO_ERR_UNSUPPORTED, "model.type: only \"BPE\""},
    {"model/dropout", "0.1", PIO_ERR_UNSUPPORTED, "model.dropout"},
    {"model/byte_fallback", "true", PIO_ERR_UNSUPPORTED, "model.byte_fallback: only false"},
    {"model/continuing_subword_prefix", "\"##\"", PIO_ERR_UNSUPPORTED,
     "model.continuing_subword_prefix"},
    {"model/vocab/ab", "-1", PIO_ERR_FORMAT, "model.vocab: \"ab\": the id must be"},
    {"model/vocab/ab", "\"x\"", PIO_ERR_FORMAT, "model.vocab: \"ab\""},
    {"model/vocab/ab", "257", PIO_ERR_FORMAT, "id 257 is given to both"},
    {"model/vocab/a", NULL, PIO_ERR_FORMAT, "model.vocab: no token for byte 0x61"},
    {"model/vocab", "[]", PIO_ERR_FORMAT, "model.vocab: expected an object"},
    {"model/merges", "{}", PIO_ERR_FORMAT, "model.merges: expected an array"},
    {"model/merges/0", "\"ab\"", PIO_ERR_FORMAT, "model.merges[0]: expected \"left right\""},
    {"model/merges/0", "\"a b c\"", PIO_ERR_FORMAT, "model.merges[0]: expected \"left right\""},
    {"model/merges/0", "[\"a\"]", PIO_ERR_FORMAT, "model.merges[0]: expected a string"},
    {"model/merges/0", "\"a zz\"", PIO_ERR_FORMAT, "model.merges[0]: \"zz\" is not in model.vocab"},
    {"model/merges/1", "[\"ab\", \"d\"]", PIO_ERR_FORMAT,
     "model.merges[1]: \"abd\" is not in model.vocab"},
    {"added_tokens", "{}", PIO_ERR_FORMAT, "added_tokens: expected an array"},
    {"added_tokens/0/content", "\"\"", PIO_ERR_FORMAT, "added_tokens[0].content"},
    {"added_tokens/0/id", "\"258\"", PIO_ERR_FORMAT, "added_tokens[0].id"},
    {"added_tokens/0/id", "256", PIO_ERR_FORMAT, "added_tokens[0]: id 256 belongs to the vocab"},
    {"added_tokens/0/id", "4194304", PIO_ERR_FORMAT, "added_tokens[0].id: expected an integer"},
    {"added_tokens/1/id", "258", PIO_ERR_FORMAT, "added_tokens[1]: id 258 is used by an earlier"},
    {"added_tokens/1/content", "\"<s>\"", PIO_ERR_FORMAT, "added_tokens[1]: content \"<s>\""},
    {"added_tokens/0/lstrip", "1", PIO_ERR_FORMAT, "added_tokens[0].lstrip: expected a boolean"},
    {"normalizer", "{\"type\": \"NFKC\"}", PIO_ERR_UNSUPPORTED, "normalizer: normalizer \"NFKC\""},
    {"normalizer", "{\"kind\": \"NFC\"}", PIO_ERR_FORMAT, "normalizer.type: expected a string"},
    {"pre_tokenizer", NULL, PIO_ERR_FORMAT, "pre_tokenizer: expected an object"},
    {"pre_tokenizer/type", "\"Whitespace\"", PIO_ERR_UNSUPPORTED, "pre_tokenizer: only Sequence"},
    {"pre_tokenizer/pretokenizers/0/type", "\"Digits\"", PIO_ERR_UNSUPPORTED,
     "pre_tokenizer.pretokenizers[0].type: \"Digits\""},
    {"pre_tokenizer/pretokenizers/0/behavior", "\"Removed\"", PIO_ERR_UNSUPPORTED,
     "pre_tokenizer.pretokenizers[0].behavior: only \"Isolated\""},
    {"pre_tokenizer/pretokenizers/0/invert", "true", PIO_ERR_UNSUPPORTED,
     "pre_tokenizer.pretokenizers[0].invert"},
    {"pre_tokenizer/pretokenizers/0/pattern", "{\"Regex\": \"(\"}", PIO_ERR_UNSUPPORTED,
     "pre_tokenizer.pretokenizers[0].pattern.Regex: PCRE2 cannot compile it"},
    {"pre_tokenizer/pretokenizers/0/pattern", "{\"Regex\": \"[^\\\\S]\"}", PIO_ERR_UNSUPPORTED,
     "pre_tokenizer.pretokenizers[0].pattern.Regex: a negated class escape"},
    {"pre_tokenizer/pretokenizers/0/pattern", "{\"Regex\": \"[a[b]]\"}", PIO_ERR_UNSUPPORTED,
     "pattern.Regex: nested classes"},
    {"pre_tokenizer/pretokenizers/0/pattern", "{\"Glob\": \"*\"}", PIO_ERR_FORMAT,
     "pre_tokenizer.pretokenizers[0].pattern: expected {\"Regex\""},
    {"pre_tokenizer/pretokenizers/1/use_regex", "true", PIO_ERR_UNSUPPORTED,
     "pre_tokenizer.pretokenizers[1].use_regex: only false"},
    {"pre_tokenizer/pretokenizers/1/use_regex", NULL, PIO_ERR_UNSUPPORTED,
     "pre_tokenizer.pretokenizers[1].use_regex: only false"},
    {"pre_tokenizer/pretokenizers/1/add_prefix_space", "true", PIO_ERR_UNSUPPORTED,
     "pre_tokenizer.pretokenizers[1].add_prefix_space"},
    {"decoder", NULL, PIO_ERR_FORMAT, "decoder: expected an object"},
    {"decoder/type", "\"WordPiece\"", PIO_ERR_UNSUPPORTED, "decoder.type: \"WordPiece\""},
    {"post_processor/type", "\"BertProcessing\"", PIO_ERR_UNSUPPORTED,
     "post_processor: post_processor \"BertProcessing\""},
    {"post_processor/single/1", "{\"Sequence\": {\"id\": \"B\"}}", PIO_ERR_UNSUPPORTED,
     "post_processor.single[1]"},
    {"post_processor/special_tokens/<s>/ids/0", "99999", PIO_ERR_FORMAT,
     "post_processor.single[0]: special_tokens[\"<s>\"].ids[0] is not a token id"},
};

static char *write_temp_json(const json_t *root)
{
    char *path = strdup("/tmp/pio_test_tokenizer_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(json_dump_file(root, path, 0), 0);
    return path;
}

/* The messages name the file by the path given; tests look for "tokenizer.json: ...", so the
 * temp file is reached through a symlink of that name. */
static char *tokenizer_json_link(const char *target)
{
    char *dir = strdup("/tmp/pio_test_tokdir_XXXXXX");
    assert_non_null(mkdtemp(dir));
    char *link = malloc(strlen(dir) + 32);
    sprintf(link, "%s/tokenizer.json", dir);
    assert_int_equal(symlink(target, link), 0);
    free(dir);
    return link;
}

static void remove_link(char *link)
{
    unlink(link);
    *strrchr(link, '/') = '\0';
    rmdir(link);
    free(link);
}

static pio_status load_json(const json_t *root, pio_error *err, pio_tokenizer **out)
{
    char *file = write_temp_json(root);
    char *link = tokenizer_json_link(file);
    pio_status status = pio_tokenizer_load(link, out, err);
    remove_link(link);
    unlink(file);
    free(file);
    return status;
}

static void test_base_tokenizer_loads(void **state)
{
    (void)state;
    json_t *root = base_tokenizer();
    pio_error err = {0};
    pio_tokenizer *t = NULL;
    assert_int_equal(load_json(root, &err, &t), PIO_OK);
    pio_token_ids ids = encode(t, "abc<s>ab <x>", 12, PIO_TOKENIZE_ADD_SPECIAL_TOKENS);
    int32_t expected[] = {258, 257, 258, 256, ' ', 259};
    assert_int_equal(ids.count, 6);
    assert_memory_equal(ids.ids, expected, sizeof expected);
    assert_int_equal(pio_tokenizer_vocab_size(t), 260);
    pio_token_ids_free(&ids);
    pio_tokenizer_free(t);
    json_decref(root);
}

/* Encodes text with the base tokenizer whose split pattern is replaced by `pattern` (JSON). */
static void expect_split(const char *pattern, const char *text, const int32_t *expected,
                         size_t n_expected)
{
    json_t *root = base_tokenizer();
    patch(root, "pre_tokenizer/pretokenizers/0/pattern", pattern);
    pio_error err = {0};
    pio_tokenizer *t = NULL;
    if (load_json(root, &err, &t) != PIO_OK)
        fail_msg("%s: %s", pattern, err.message);
    pio_token_ids ids = encode_str(t, text);
    if (ids.count != n_expected || memcmp(ids.ids, expected, n_expected * sizeof(int32_t)) != 0) {
        print_ids("got", ids.ids, ids.count);
        print_ids("expected", expected, n_expected);
        fail_msg("pattern %s on \"%s\"", pattern, text);
    }
    pio_token_ids_free(&ids);
    pio_tokenizer_free(t);
    json_decref(root);
}

/* Patterns are read in Oniguruma's dialect; the base vocab merges "a b" and "ab c", so whether
 * "ab"/"abc" come out whole shows where the split fell. */
static void test_pattern_dialect(void **state)
{
    (void)state;
    /* \w / \W as Oniguruma defines them. */
    expect_split("{\"Regex\": \"\\\\w+|\\\\W\"}", "ab abc", (int32_t[]){256, ' ', 257}, 3);
    /* Oniguruma's \h is a hex digit (PCRE2's would be horizontal space). */
    expect_split("{\"Regex\": \"\\\\h+|[^\\\\h]\"}", "abc-ab", (int32_t[]){257, '-', 256}, 3);
    /* A literal split, kept as its own piece (behavior Isolated). */
    expect_split("{\"String\": \"b\"}", "abc", (int32_t[]){'a', 'b', 'c'}, 3);
    /* Empty matches: Oniguruma's find_iter moves on one character after an empty match at the
     * previous match's end, so "x*" cuts between every character. */
    expect_split("{\"Regex\": \"x*\"}", "abc", (int32_t[]){'a', 'b', 'c'}, 3);
    /* Text the pattern does not match still becomes pieces (the gaps). */
    expect_split("{\"Regex\": \"c\"}", "abcab", (int32_t[]){256, 'c', 256}, 3);
}

static void test_malformed_tokenizers(void **state)
{
    (void)state;
    size_t failures = 0;
    for (size_t i = 0; i < sizeof malformed_cases / sizeof *malformed_cases; i++) {
        const malformed_case *c = &malformed_cases[i];
        json_t *root = base_tokenizer();
        patch(root, c->path, c->value);
        pio_error err = {0};
        pio_tokenizer *t = (pio_tokenizer *)&err; /* must come back NULL */
        pio_status status = load_json(root, &err, &t);
        if (status != c->status || t != NULL || strstr(err.message, c->message) == NULL ||
            strstr(err.message, "tokenizer.json: ") == NULL) {
            failures++;
            print_message("%s = %s: status %d, message \"%s\"; expected %d and \"%s\"\n",
                          c->path, c->value ? c->value : "(removed)", (int)status, err.message,
                          (int)c->status, c->message);
        }
        pio_tokenizer_free(t);
        json_decref(root);
    }
    assert_int_equal(failures, 0);
}

static void expect_load_error(const char *content, pio_status status, const char *message)
{
    char path[] = "/tmp/pio_test_tokenizer_raw_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    pio_error err = {0};
    pio_tokenizer *t = NULL;
    assert_int_equal(pio_tokenizer_load(path, &t, &err), status);
    assert_null(t);
    if (strstr(err.message, message) == NULL || strstr(err.message, path) == NULL)
        fail_msg("message \"%s\" lacks \"%s\" or the path", err.message, message);
    unlink(path);
}

static void test_unreadable_files(void **state)
{
    (void)state;
    expect_load_error("{\"model\": ", PIO_ERR_FORMAT, "invalid JSON at line 1");
    expect_load_error("[1, 2]", PIO_ERR_FORMAT, "(root): expected an object");
    expect_load_error("{\"a\": 1, \"a\": 2}", PIO_ERR_FORMAT, "duplicate object key");
    pio_error err = {0};
    pio_tokenizer *t = NULL;
    assert_int_equal(pio_tokenizer_load("/nonexistent/tokenizer.json", &t, &err), PIO_ERR_IO);
    assert_non_null(strstr(err.message, "/nonexistent/tokenizer.json: cannot open"));
    assert_int_equal(pio_tokenizer_load(NULL, &t, &err), PIO_ERR_INVALID_ARGUMENT);
}

/* ------------------------------------------------------------------------------------------ */
/* Vocabulary and buffer API                                                                  */
/* ------------------------------------------------------------------------------------------ */

static void test_vocabulary_lookups(void **state)
{
    pio_tokenizer *t = qwen(state);
    assert_int_equal(pio_tokenizer_vocab_size(t), 151669);
    assert_int_equal(pio_tokenizer_token_to_id(t, "<|im_end|>"), 151645);
    assert_int_equal(pio_tokenizer_token_to_id(t, "<|endoftext|>"), 151643);
    assert_int_equal(pio_tokenizer_token_to_id(t, "</think>"), 151668);
    assert_int_equal(pio_tokenizer_token_to_id(t, "Hello"), 9707);
    assert_int_equal(pio_tokenizer_token_to_id(t, "no such token"), -1);
    assert_true(pio_tokenizer_is_special(t, 151645));
    assert_false(pio_tokenizer_is_special(t, 151667));
    assert_true(pio_tokenizer_is_added(t, 151667));
    assert_false(pio_tokenizer_is_added(t, 9707));
    assert_false(pio_tokenizer_is_special(t, -1));
    assert_false(pio_tokenizer_is_special(t, 151669));
    size_t len;
    assert_string_equal(pio_tokenizer_id_to_token(t, 151644, &len), "<|im_start|>");
    assert_int_equal(len, 12);
    int32_t world = pio_tokenizer_token_to_id(t, "\xc4\xa0world"); /* "Ġworld" */
    assert_true(world >= 0);
    const uint8_t *bytes = pio_tokenizer_token_bytes(t, world, &len);
    assert_int_equal(len, 6);
    assert_memory_equal(bytes, " world", 6);
    assert_null(pio_tokenizer_id_to_token(t, 151669, NULL));
    assert_null(pio_tokenizer_token_bytes(t, -5, NULL));
}

static void test_encode_into_buffer(void **state)
{
    pio_tokenizer *t = qwen(state);
    int32_t ids[4];
    size_t n = 0;
    pio_error err = {0};
    const char *text = "Hello world, this is a test";
    assert_int_equal(pio_tokenizer_encode_into(t, text, strlen(text), 0, ids, 4, &n, &err),
                     PIO_SOFT_TRUNCATED);
    assert_int_equal(n, 7);
    assert_int_equal(ids[0], 9707);
    assert_int_equal(ids[1], 1879);
    int32_t all[7];
    assert_int_equal(pio_tokenizer_encode_into(t, text, strlen(text), 0, all, 7, &n, &err),
                     PIO_OK);
    assert_int_equal(n, 7);
    assert_int_equal(pio_tokenizer_encode_into(t, text, strlen(text), 0, NULL, 0, &n, &err),
                     PIO_SOFT_TRUNCATED);
    assert_int_equal(pio_tokenizer_encode_into(t, "", 0, 0, NULL, 0, &n, &err), PIO_OK);
    assert_int_equal(n, 0);
    /* Appending keeps what was there; a failure leaves it untouched. */
    pio_token_ids list = encode_str(t, "Hello");
    assert_int_equal(pio_tokenizer_encode(t, " world", 6, 0, &list, &err), PIO_OK);
    assert_int_equal(list.count, 2);
    assert_int_equal(pio_tokenizer_encode(t, "\xff", 1, 0, &list, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(list.count, 2);
    pio_token_ids_free(&list);
}

static void test_decode_into_buffer(void **state)
{
    pio_tokenizer *t = qwen(state);
    int32_t ids[] = {151644, 9707, 1879, 151645};
    char text[64];
    size_t len;
    pio_error err = {0};
    assert_int_equal(pio_tokenizer_decode(t, ids, 4, 0, text, sizeof text, &len, &err), PIO_OK);
    assert_string_equal(text, "<|im_start|>Hello world<|im_end|>");
    assert_int_equal(len, 33);
    assert_int_equal(pio_tokenizer_decode(t, ids, 4, PIO_DETOKENIZE_SKIP_SPECIAL_TOKENS, text,
                                          sizeof text, &len, &err), PIO_OK);
    assert_string_equal(text, "Hello world");
    char small[5];
    assert_int_equal(pio_tokenizer_decode(t, ids + 1, 2, 0, small, sizeof small, &len, &err),
                     PIO_SOFT_TRUNCATED);
    assert_int_equal(len, 11);
    assert_memory_equal(small, "Hello", 5);
    int32_t bad[] = {9707, 200000};
    assert_int_equal(pio_tokenizer_decode(t, bad, 2, 0, text, sizeof text, &len, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "200000"));
}

static void test_special_token_flags(void **state)
{
    pio_tokenizer *t = qwen(state);
    const char *text = "<|im_start|>user<think>";
    pio_token_ids matched = encode_str(t, text);
    assert_int_equal(matched.count, 3);
    assert_int_equal(matched.ids[0], 151644);
    assert_int_equal(matched.ids[2], 151667);
    pio_token_ids split = encode(t, text, strlen(text), PIO_TOKENIZE_SPLIT_SPECIAL_TOKENS);
    assert_true(split.count > 3);
    assert_int_equal(split.ids[split.count - 1], 151667); /* <think> is not special */
    for (size_t i = 0; i < split.count; i++)
        assert_false(pio_tokenizer_is_special(t, split.ids[i]));
    /* Qwen's post-processor adds nothing. */
    pio_token_ids with_special = encode(t, text, strlen(text), PIO_TOKENIZE_ADD_SPECIAL_TOKENS);
    assert_int_equal(with_special.count, matched.count);
    pio_token_ids_free(&matched);
    pio_token_ids_free(&split);
    pio_token_ids_free(&with_special);
}

/* ------------------------------------------------------------------------------------------ */
/* Threads                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct thread_job {
    pio_tokenizer *t;
    const char *text;
    pio_token_ids expected;
    int mismatches;
} thread_job;

static void *encode_repeatedly(void *arg)
{
    thread_job *job = arg;
    for (int i = 0; i < 200; i++) {
        pio_token_ids ids = {0};
        if (pio_tokenizer_encode(job->t, job->text, strlen(job->text), 0, &ids, NULL) != PIO_OK ||
            ids.count != job->expected.count ||
            memcmp(ids.ids, job->expected.ids, ids.count * sizeof(int32_t)) != 0)
            job->mismatches++;
        pio_token_ids_free(&ids);
    }
    return NULL;
}

static void test_concurrent_encoding(void **state)
{
    static const char *texts[] = {
        "The quick brown fox jumps over the lazy dog. 1234567890",
        "今天天气很好，我们去公园散步吧。<|im_end|>",
        "def f(x):\n    return x ** 2  # square\n",
        "Ünïcödé naïve café \xf0\x9f\x99\x82\xf0\x9f\x99\x82"};
    enum { N_THREADS = 8 };
    pthread_t threads[N_THREADS];
    thread_job jobs[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        jobs[i] = (thread_job){.t = qwen(state), .text = texts[i % 4]};
        jobs[i].expected = encode_str(qwen(state), texts[i % 4]);
    }
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, encode_repeatedly, &jobs[i]), 0);
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(threads[i], NULL);
        assert_int_equal(jobs[i].mismatches, 0);
        pio_token_ids_free(&jobs[i].expected);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_cpp_vectors),
        cmocka_unit_test(test_qwen_reference_fixture),
        cmocka_unit_test(test_glm_reference_fixture),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_nfc_applies_before_split),
        cmocka_unit_test(test_glm_digit_groups),
        cmocka_unit_test(test_streaming_split_character),
        cmocka_unit_test(test_streaming_matches_decode),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_hostile_inputs),
        cmocka_unit_test(test_base_tokenizer_loads),
        cmocka_unit_test(test_pattern_dialect),
        cmocka_unit_test(test_malformed_tokenizers),
        cmocka_unit_test(test_unreadable_files),
        cmocka_unit_test(test_vocabulary_lookups),
        cmocka_unit_test(test_encode_into_buffer),
        cmocka_unit_test(test_decode_into_buffer),
        cmocka_unit_test(test_special_token_flags),
        cmocka_unit_test(test_concurrent_encoding),
    };
    return cmocka_run_group_tests(tests, load_tokenizers, free_tokenizers);
}
