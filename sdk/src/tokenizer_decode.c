/*
 * Ids -> text, whole or streamed, and the vocabulary lookups.
 *
 * Both decoders run the same step: the bytes of each token go through a UTF-8 repairer that
 * writes complete sequences, replaces bytes that can never form one with U+FFFD, and holds back
 * at most three bytes of a sequence that the next token may complete.
 */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct decode_state {
    uint8_t pending[4]; /* the start of a UTF-8 sequence that is not complete yet */
    size_t n_pending;
    tok_bytes joined;   /* pending bytes followed by a token's bytes */
} decode_state;

static pio_status unknown_id(const pio_tokenizer *t, int32_t id, pio_error *err)
{
    return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "tokenizer: id %d names no token "
                         "(ids run from 0 to %zu)", (int)id, t->id_count - 1);
}

static pio_status no_memory(pio_error *err)
{
    return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "tokenizer: out of memory while decoding");
}

/* Appends to out the text that token `id` completes. */
static pio_status decode_step(const pio_tokenizer *t, unsigned flags, decode_state *state,
                              int32_t id, tok_bytes *out, pio_error *err)
{
    size_t len;
    const uint8_t *bytes = tok_strings_get(&t->token_bytes, id, &len);
    if (bytes == NULL)
        return unknown_id(t, id, err);
    if ((flags & PIO_DETOKENIZE_SKIP_SPECIAL_TOKENS) && (t->id_kind[id] & TOK_ID_SPECIAL))
        return PIO_OK;
    if (state->n_pending > 0) {
        state->joined.len = 0;
        if (!tok_bytes_append(&state->joined, state->pending, state->n_pending) ||
            !tok_bytes_append(&state->joined, bytes, len))
            return no_memory(err);
        bytes = state->joined.data;
        len = state->joined.len;
    }
    int held = tok_utf8_append_lossy(bytes, len, false, out);
    if (held < 0)
        return no_memory(err);
    memcpy(state->pending, bytes + len - (size_t)held, (size_t)held);
    state->n_pending = (size_t)held;
    return PIO_OK;
}

/* Ends a stream: an incomplete sequence left over becomes U+FFFD. */
static pio_status decode_finish(decode_state *state, tok_bytes *out, pio_error *err)
{
    int held = tok_utf8_append_lossy(state->pending, state->n_pending, true, out);
    state->n_pending = 0;
    return held < 0 ? no_memory(err) : PIO_OK;
}

pio_status pio_tokenizer_decode(const pio_tokenizer *t, const int32_t *ids, size_t n_ids,
                                unsigned flags, char *text, size_t capacity, size_t *text_len,
                                pio_error *err)
{
    if (t == NULL || (ids == NULL && n_ids > 0) || text_len == NULL ||
        (text == NULL && capacity > 0))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "tokenizer: decode: a required "
                             "pointer is NULL");
    decode_state state = {0};
    tok_bytes out = {0};
    pio_status status = PIO_OK;
    for (size_t i = 0; i < n_ids && status == PIO_OK; i++)
        status = decode_step(t, flags, &state, ids[i], &out, err);
    if (status == PIO_OK)
        status = decode_finish(&state, &out, err);
    if (status == PIO_OK) {
        *text_len = out.len;
        if (out.len < capacity) {
            if (out.len > 0)
                memcpy(text, out.data, out.len);
            text[out.len] = '\0';
        } else {
            if (capacity > 0)
                memcpy(text, out.data, capacity);
            if (out.len > capacity)
                status = pio_error_set(err, PIO_SOFT_TRUNCATED, "tokenizer: %zu bytes of text "
                                       "do not fit in %zu", out.len, capacity);
        }
    }
    tok_bytes_free(&out);
    tok_bytes_free(&state.joined);
    return status;
}

/* ------------------------------------------------------------------------------------------ */
/* Streaming                                                                                  */
/* ------------------------------------------------------------------------------------------ */

struct pio_detokenizer {
    const pio_tokenizer *t;
    unsigned flags;
    decode_state state;
    tok_bytes text; /* what the last call completed, NUL-terminated */
};

pio_status pio_detokenizer_create(const pio_tokenizer *t, unsigned flags, pio_detokenizer **out,
                                  pio_error *err)
{
    if (out == NULL || t == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "detokenizer: tokenizer or out is "
                             "NULL");
    *out = calloc(1, sizeof **out);
    if (*out == NULL)
        return no_memory(err);
    (*out)->t = t;
    (*out)->flags = flags;
    return PIO_OK;
}

static pio_status hand_out_text(pio_detokenizer *d, const char **text, size_t *text_len,
                                pio_error *err)
{
    if (!tok_bytes_reserve(&d->text, 1))
        return no_memory(err);
    d->text.data[d->text.len] = '\0';
    *text = (const char *)d->text.data;
    *text_len = d->text.len;
    return PIO_OK;
}

pio_status pio_detokenizer_push(pio_detokenizer *d, int32_t id, const char **text,
                                size_t *text_len, pio_error *err)
{
    if (d == NULL || text == NULL || text_len == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "detokenizer: a required pointer "
                             "is NULL");
    *text = "";
    *text_len = 0;
    d->text.len = 0;
    pio_status status = decode_step(d->t, d->flags, &d->state, id, &d->text, err);
    return status == PIO_OK ? hand_out_text(d, text, text_len, err) : status;
}

pio_status pio_detokenizer_flush(pio_detokenizer *d, const char **text, size_t *text_len,
                                 pio_error *err)
{
    if (d == NULL || text == NULL || text_len == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "detokenizer: a required pointer "
                             "is NULL");
    *text = "";
    *text_len = 0;
    d->text.len = 0;
    pio_status status = decode_finish(&d->state, &d->text, err);
    return status == PIO_OK ? hand_out_text(d, text, text_len, err) : status;
}

void pio_detokenizer_reset(pio_detokenizer *d)
{
    if (d != NULL)
        d->state.n_pending = 0;
}

void pio_detokenizer_free(pio_detokenizer *d)
{
    if (d == NULL)
        return;
    tok_bytes_free(&d->state.joined);
    tok_bytes_free(&d->text);
    free(d);
}

/* ------------------------------------------------------------------------------------------ */
/* Vocabulary                                                                                 */
/* ------------------------------------------------------------------------------------------ */

size_t pio_tokenizer_vocab_size(const pio_tokenizer *t)
{
    return t != NULL ? t->id_count : 0;
}

int32_t pio_tokenizer_token_to_id(const pio_tokenizer *t, const char *token)
{
    if (t == NULL || token == NULL)
        return -1;
    return tok_id_map_find(&t->text_to_id, &t->token_text, token, strlen(token));
}

const char *pio_tokenizer_id_to_token(const pio_tokenizer *t, int32_t id, size_t *len)
{
    return t != NULL ? (const char *)tok_strings_get(&t->token_text, id, len) : NULL;
}

const uint8_t *pio_tokenizer_token_bytes(const pio_tokenizer *t, int32_t id, size_t *len)
{
    return t != NULL ? tok_strings_get(&t->token_bytes, id, len) : NULL;
}

static uint8_t id_kind(const pio_tokenizer *t, int32_t id)
{
    return t != NULL && id >= 0 && (size_t)id < t->id_count ? t->id_kind[id] : 0;
}

bool pio_tokenizer_is_special(const pio_tokenizer *t, int32_t id)
{
    return (id_kind(t, id) & TOK_ID_SPECIAL) != 0;
}

bool pio_tokenizer_is_added(const pio_tokenizer *t, int32_t id)
{
    return (id_kind(t, id) & TOK_ID_ADDED) != 0;
}
