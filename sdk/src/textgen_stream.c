/*
 * The generated text as it grows: stop strings are looked for across token boundaries, and
 * streaming holds back a tail that could still become a stop string, so a stop string never
 * reaches the caller, not even in part.
 */
#include <stdlib.h>
#include <string.h>

#include "textgen_internal.h"

void tg_stream_init(tg_stream *s, const char *const *stops, size_t n_stops)
{
    memset(s, 0, sizeof *s);
    s->stops = stops;
    s->n_stops = n_stops;
    for (size_t i = 0; i < n_stops; i++) {
        size_t len = strlen(stops[i]);
        if (len > s->longest_stop)
            s->longest_stop = len;
    }
}

void tg_stream_free(tg_stream *s)
{
    free(s->text);
    memset(s, 0, sizeof *s);
}

static pio_status reserve_text(tg_stream *s, size_t extra, pio_error *err)
{
    if (s->len + extra + 1 <= s->capacity)
        return PIO_OK;
    size_t capacity = s->capacity ? s->capacity : 256;
    while (capacity < s->len + extra + 1)
        capacity *= 2;
    char *grown = realloc(s->text, capacity);
    if (grown == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "generation: out of memory for %zu "
                             "bytes of text", capacity);
    s->text = grown;
    s->capacity = capacity;
    return PIO_OK;
}

/* The earliest stop string starting at or after `from`; the text before it had none. */
static void cut_at_first_stop(tg_stream *s, size_t from)
{
    size_t cut = s->len;
    for (size_t i = 0; i < s->n_stops; i++) {
        size_t stop_len = strlen(s->stops[i]);
        if (stop_len == 0 || stop_len > s->len - from)
            continue;
        const char *hit = memmem(s->text + from, s->len - from, s->stops[i], stop_len);
        if (hit != NULL && (size_t)(hit - s->text) < cut)
            cut = (size_t)(hit - s->text);
    }
    if (cut < s->len) {
        s->len = cut;
        s->text[cut] = '\0';
        s->matched = 1;
    }
}

pio_status tg_stream_append(tg_stream *s, const char *piece, size_t len, pio_error *err)
{
    if (s->matched || len == 0)
        return PIO_OK;
    pio_status status = reserve_text(s, len, err);
    if (status != PIO_OK)
        return status;
    size_t old_len = s->len;
    memcpy(s->text + s->len, piece, len);
    s->len += len;
    s->text[s->len] = '\0';
    /* A stop string ending in the new piece starts at most longest_stop - 1 bytes before it. */
    size_t overlap = s->longest_stop > 0 ? s->longest_stop - 1 : 0;
    cut_at_first_stop(s, old_len > overlap ? old_len - overlap : 0);
    return PIO_OK;
}

/* Bytes at the end of the text that are also the first bytes of some stop string. Only tails
 * starting on a character boundary count, so holding them back never splits a character. */
static size_t possible_stop_tail(const tg_stream *s)
{
    size_t longest = 0;
    for (size_t i = 0; i < s->n_stops; i++) {
        size_t stop_len = strlen(s->stops[i]);
        size_t max_tail = stop_len > 0 ? stop_len - 1 : 0;
        if (max_tail > s->len)
            max_tail = s->len;
        for (size_t tail = max_tail; tail > longest; tail--) {
            const char *start = s->text + s->len - tail;
            if (((unsigned char)start[0] & 0xC0) != 0x80 &&
                memcmp(start, s->stops[i], tail) == 0) {
                longest = tail;
                break;
            }
        }
    }
    return longest;
}

void tg_stream_take(tg_stream *s, int final, const char **text, size_t *len)
{
    size_t end = s->len;
    if (!final && !s->matched)
        end -= possible_stop_tail(s);
    if (end < s->released)
        end = s->released;
    *text = s->text != NULL ? s->text + s->released : "";
    *len = end - s->released;
    s->released = end;
}
