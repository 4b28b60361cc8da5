/*
 * libFuzzer target for tokenizer.json loading and for encoding / decoding.
 *
 *   clang -std=c11 -D_GNU_SOURCE -Isdk/include -I. -g -O1 -fsanitize=fuzzer,address,undefined \
 *     tests/fuzz/fuzz_tokenizer.c sdk/src/tokenizer_*.c sdk/src/error.c \
 *     -ljansson -lpcre2-8 -lutf8proc -lpthread -o build/fuzz_tokenizer
 *   mkdir -p build/fuzz_corpus_tokenizer
 *   PIO_FUZZ_TOKENIZER=../shared/models/qwen3_4b_instruct_2507/tokenizer.json \
 *     build/fuzz_tokenizer -max_total_time=60 -max_len=65536 build/fuzz_corpus_tokenizer \
 *     tests/fixtures/tokenizer
 *
 * An input is a tokenizer.json, optionally followed by "\n--text--\n" and a text (without the
 * separator the whole input is also the text).
 *   1. Loading the tokenizer.json must fail with a message or give a tokenizer whose output for
 *      the text names only real tokens and decodes, whole or streamed, to the same valid UTF-8.
 *   2. The text is also encoded with the tokenizer named by $PIO_FUZZ_TOKENIZER (when set): a
 *      Qwen-style tokenizer, for which decode(encode(text)) must equal NFC(text) whenever the
 *      text is valid UTF-8 holding no added token.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "pio/tokenizer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char separator[] = "\n--text--\n";
static pio_tokenizer *seed_tokenizer;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *path = getenv("PIO_FUZZ_TOKENIZER");
    pio_error err = {0};
    if (path != NULL && pio_tokenizer_load(path, &seed_tokenizer, &err) != PIO_OK) {
        fprintf(stderr, "PIO_FUZZ_TOKENIZER: %s\n", err.message);
        abort();
    }
    return 0;
}

static bool is_valid_utf8(const char *text, size_t len)
{
    return utf8proc_decompose((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len, NULL, 0, 0) >=
           0;
}

/* Whole decode, checked against the streamed one; returns a malloc'd text (NULL: rejected). */
static char *decode_both_ways(const pio_tokenizer *t, const pio_token_ids *ids, size_t *len)
{
    size_t needed = 0;
    pio_status status = pio_tokenizer_decode(t, ids->ids, ids->count, 0, NULL, 0, &needed, NULL);
    if (status != PIO_OK && status != PIO_SOFT_TRUNCATED)
        abort(); /* every id came from encode, so each names a token */
    char *whole = malloc(needed + 1);
    if (pio_tokenizer_decode(t, ids->ids, ids->count, 0, whole, needed + 1, len, NULL) != PIO_OK ||
        *len != needed || !is_valid_utf8(whole, *len))
        abort();
    pio_detokenizer *d = NULL;
    if (pio_detokenizer_create(t, 0, &d, NULL) != PIO_OK)
        abort();
    size_t streamed = 0;
    for (size_t i = 0; i <= ids->count; i++) {
        const char *piece;
        size_t piece_len;
        pio_status s = i < ids->count ? pio_detokenizer_push(d, ids->ids[i], &piece, &piece_len, NULL)
                                      : pio_detokenizer_flush(d, &piece, &piece_len, NULL);
        if (s != PIO_OK || !is_valid_utf8(piece, piece_len) || streamed + piece_len > *len ||
            memcmp(whole + streamed, piece, piece_len) != 0)
            abort();
        streamed += piece_len;
    }
    if (streamed != *len)
        abort();
    pio_detokenizer_free(d);
    return whole;
}

static void check_ids(const pio_tokenizer *t, const pio_token_ids *ids)
{
    for (size_t i = 0; i < ids->count; i++)
        if (ids->ids[i] < 0 || (size_t)ids->ids[i] >= pio_tokenizer_vocab_size(t) ||
            pio_tokenizer_token_bytes(t, ids->ids[i], NULL) == NULL)
            abort();
}

static void exercise(const pio_tokenizer *t, const char *text, size_t len, unsigned flags)
{
    pio_token_ids ids = {0};
    pio_status status = pio_tokenizer_encode(t, text, len, flags, &ids, NULL);
    if (status == PIO_ERR_INVALID_ARGUMENT && !(flags & PIO_TOKENIZE_REPLACE_INVALID_UTF8))
        return; /* invalid UTF-8 */
    if (status != PIO_OK) /* a pattern may still hit PCRE2's match limit */
        return;
    check_ids(t, &ids);
    size_t n = 0;
    if (pio_tokenizer_encode_into(t, text, len, flags, NULL, 0, &n, NULL) ==
            PIO_ERR_OUT_OF_MEMORY || n != ids.count)
        abort();
    size_t decoded_len;
    free(decode_both_ways(t, &ids, &decoded_len));
    pio_token_ids_free(&ids);
}

static bool holds_added_token_text(const pio_tokenizer *t, const char *text, size_t len)
{
    /* Qwen's added tokens all start with '<'; a text without one cannot hold them. */
    (void)t;
    return memchr(text, '<', len) != NULL;
}

static void check_round_trip(const pio_tokenizer *t, const char *text, size_t len)
{
    if (!is_valid_utf8(text, len) || holds_added_token_text(t, text, len))
        return;
    pio_token_ids ids = {0};
    if (pio_tokenizer_encode(t, text, len, 0, &ids, NULL) != PIO_OK)
        abort();
    size_t decoded_len;
    char *decoded = decode_both_ways(t, &ids, &decoded_len);
    utf8proc_uint8_t *nfc = NULL;
    utf8proc_ssize_t nfc_len = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len,
                                            &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (nfc_len < 0 || (size_t)nfc_len != decoded_len || memcmp(nfc, decoded, decoded_len) != 0)
        abort();
    free(nfc);
    free(decoded);
    pio_token_ids_free(&ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *input = (const char *)data;
    const char *split = memmem(input, size, separator, sizeof separator - 1);
    size_t json_len = split ? (size_t)(split - input) : size;
    const char *text = split ? split + sizeof separator - 1 : input;
    size_t text_len = split ? size - json_len - (sizeof separator - 1) : size;

    pio_tokenizer *t = NULL;
    pio_error err = {0};
    pio_status status = pio_tokenizer_load_buffer("fuzz.json", input, json_len, &t, &err);
    if (status != PIO_OK && (t != NULL || err.message[0] == '\0'))
        abort();
    if (t != NULL) {
        exercise(t, text, text_len, 0);
        exercise(t, text, text_len, PIO_TOKENIZE_REPLACE_INVALID_UTF8 |
                                        PIO_TOKENIZE_ADD_SPECIAL_TOKENS);
        exercise(t, text, text_len, PIO_TOKENIZE_REPLACE_INVALID_UTF8 |
                                        PIO_TOKENIZE_SPLIT_SPECIAL_TOKENS);
        pio_tokenizer_free(t);
    }
    if (seed_tokenizer != NULL) {
        exercise(seed_tokenizer, text, text_len, PIO_TOKENIZE_REPLACE_INVALID_UTF8);
        check_round_trip(seed_tokenizer, text, text_len);
    }
    return 0;
}
