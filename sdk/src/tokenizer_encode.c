/*
 * Text -> ids: added tokens, NFC, the Split regex, then BPE on each piece.
 */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct encoder {
    const pio_tokenizer *t;
    bool skip_special;
    pio_token_ids *out;
    tok_piece_cache *cache; /* NULL when another call holds the cache */
    tok_bpe_workspace bpe;
    tok_regex_matcher regex;
    tok_bytes normalized;
    tok_u32s code_points;
    pio_error *err;
} encoder;

static pio_status out_of_memory(encoder *e)
{
    return pio_error_set(e->err, PIO_ERR_OUT_OF_MEMORY, "tokenizer: out of memory while encoding");
}

static pio_status push_id(encoder *e, int32_t id)
{
    return tok_ids_push(e->out, id) ? PIO_OK : out_of_memory(e);
}

static pio_status encode_piece(void *context, const uint8_t *piece, size_t len)
{
    encoder *e = context;
    pio_status status = tok_bpe_encode_piece(e->t, e->cache, &e->bpe, piece, len, e->out);
    return status == PIO_OK ? PIO_OK : out_of_memory(e);
}

/* Normalized text without added tokens: regex split, then BPE. */
static pio_status encode_plain(encoder *e, const uint8_t *s, size_t n)
{
    return tok_regex_split(&e->regex, s, n, encode_piece, e, e->err);
}

static pio_status on_normalized_split(void *context, const uint8_t *s, tok_added_split piece)
{
    encoder *e = context;
    if (piece.id >= 0)
        return push_id(e, piece.id);
    return encode_plain(e, s + piece.start, piece.end - piece.start);
}

/* Text between two raw-matched added tokens: normalize, then cut out the added tokens that
 * match normalized text, then encode the rest. */
static pio_status encode_segment(encoder *e, const uint8_t *s, size_t n)
{
    const pio_tokenizer *t = e->t;
    const uint8_t *text = s;
    size_t len = n;
    if (t->normalize_nfc && !tok_nfc(s, n, &e->normalized, &e->code_points, &text, &len))
        return out_of_memory(e);
    if (t->normalized_added.n_tokens == 0)
        return encode_plain(e, text, len);
    return tok_added_split_text(&t->normalized_added, text, len, e->skip_special,
                                on_normalized_split, e);
}

static pio_status on_raw_split(void *context, const uint8_t *s, tok_added_split piece)
{
    encoder *e = context;
    if (piece.id >= 0)
        return push_id(e, piece.id);
    return encode_segment(e, s + piece.start, piece.end - piece.start);
}

static pio_status push_ids(encoder *e, const int32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (push_id(e, ids[i]) != PIO_OK)
            return PIO_ERR_OUT_OF_MEMORY;
    return PIO_OK;
}

static pio_status encode_valid_text(encoder *e, const uint8_t *s, size_t n, bool add_special)
{
    const pio_tokenizer *t = e->t;
    pio_status status = add_special ? push_ids(e, t->prefix_ids, t->n_prefix) : PIO_OK;
    if (status == PIO_OK)
        status = tok_added_split_text(&t->raw_added, s, n, e->skip_special, on_raw_split, e);
    if (status == PIO_OK && add_special)
        status = push_ids(e, t->suffix_ids, t->n_suffix);
    return status;
}

/* Valid UTF-8 in *text, repaired into `repaired` when the flags allow it. */
static pio_status check_utf8(const uint8_t **text, size_t *len, unsigned flags,
                             tok_bytes *repaired, pio_error *err)
{
    size_t bad = tok_utf8_first_invalid(*text, *len);
    if (bad == *len)
        return PIO_OK;
    if (!(flags & PIO_TOKENIZE_REPLACE_INVALID_UTF8))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "tokenizer: text is not valid UTF-8 "
                             "(ill-formed sequence at byte offset %zu)", bad);
    if (tok_utf8_append_lossy(*text, *len, true, repaired) < 0)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    *text = repaired->data;
    *len = repaired->len;
    return PIO_OK;
}

static pio_status encode_all(const pio_tokenizer *t, const uint8_t *text, size_t len,
                             unsigned flags, pio_token_ids *out, pio_error *err)
{
    encoder e = {.t = t, .skip_special = (flags & PIO_TOKENIZE_SPLIT_SPECIAL_TOKENS) != 0,
                 .out = out, .err = err};
    tok_bytes repaired = {0};
    pio_status status = check_utf8(&text, &len, flags, &repaired, err);
    if (status != PIO_OK)
        return status;
    if (!tok_regex_matcher_init(&e.regex, &t->split)) {
        tok_bytes_free(&repaired);
        return out_of_memory(&e);
    }
    /* The cache is the one mutable part of a tokenizer. A call that cannot take it at once
     * encodes without it rather than wait. */
    tok_piece_cache *cache = (tok_piece_cache *)&t->cache;
    bool locked = pthread_mutex_trylock(&cache->lock) == 0;
    e.cache = locked ? cache : NULL;
    status = encode_valid_text(&e, text, len, (flags & PIO_TOKENIZE_ADD_SPECIAL_TOKENS) != 0);
    if (locked)
        pthread_mutex_unlock(&cache->lock);
    tok_regex_matcher_free(&e.regex);
    tok_bpe_workspace_free(&e.bpe);
    tok_bytes_free(&e.normalized);
    tok_u32s_free(&e.code_points);
    tok_bytes_free(&repaired);
    return status;
}

static pio_status check_arguments(const pio_tokenizer *t, const char *text, size_t len,
                                  pio_error *err)
{
    if (t == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "tokenizer: tokenizer is NULL");
    if (text == NULL && len > 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "tokenizer: text is NULL");
    return PIO_OK;
}

pio_status pio_tokenizer_encode(const pio_tokenizer *t, const char *text, size_t text_len,
                                unsigned flags, pio_token_ids *out, pio_error *err)
{
    pio_status status = check_arguments(t, text, text_len, err);
    if (status != PIO_OK)
        return status;
    if (out == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "tokenizer: out is NULL");
    size_t before = out->count;
    status = encode_all(t, (const uint8_t *)(text ? text : ""), text_len, flags, out, err);
    if (status != PIO_OK)
        out->count = before;
    return status;
}

pio_status pio_tokenizer_encode_into(const pio_tokenizer *t, const char *text, size_t text_len,
                                     unsigned flags, int32_t *ids, size_t capacity,
                                     size_t *n_ids, pio_error *err)
{
    pio_status status = check_arguments(t, text, text_len, err);
    if (status != PIO_OK)
        return status;
    if (n_ids == NULL || (ids == NULL && capacity > 0))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "tokenizer: n_ids is NULL or ids "
                             "is NULL with a non-zero capacity");
    pio_token_ids all = {0};
    status = encode_all(t, (const uint8_t *)(text ? text : ""), text_len, flags, &all, err);
    if (status == PIO_OK) {
        *n_ids = all.count;
        size_t copied = all.count < capacity ? all.count : capacity;
        if (copied > 0)
            memcpy(ids, all.ids, copied * sizeof *ids);
        if (all.count > capacity)
            status = pio_error_set(err, PIO_SOFT_TRUNCATED, "tokenizer: %zu ids do not fit in "
                                   "%zu", all.count, capacity);
    }
    pio_token_ids_free(&all);
    return status;
}

void pio_token_ids_free(pio_token_ids *ids)
{
    if (ids == NULL)
        return;
    free(ids->ids);
    ids->ids = NULL;
    ids->count = ids->capacity = 0;
}
