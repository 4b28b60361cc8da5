/* Text buffer, UTF-8 and Python string-method helpers for the chat formatters. */
#include "chat_format_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------- */
/* cf_buf                                                                                     */
/* ---------------------------------------------------------------------------------------- */
static bool cf_buf_reserve(cf_buf *buf, size_t extra)
{
    if (buf->failed)
        return false;
    if (extra > SIZE_MAX - buf->len - 1) {
        buf->failed = true;
        return false;
    }
    size_t need = buf->len + extra + 1;
    if (need <= buf->cap)
        return true;
    size_t cap = buf->cap != 0 ? buf->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *grown = realloc(buf->data, cap);
    if (grown == NULL) {
        buf->failed = true;
        return false;
    }
    buf->data = grown;
    buf->cap = cap;
    return true;
}

void cf_buf_append(cf_buf *buf, const char *bytes, size_t n)
{
    if (n == 0 || !cf_buf_reserve(buf, n))
        return;
    memcpy(buf->data + buf->len, bytes, n);
    buf->len += n;
    buf->data[buf->len] = '\0';
}

void cf_buf_puts(cf_buf *buf, const char *text)
{
    if (text != NULL)
        cf_buf_append(buf, text, strlen(text));
}

void cf_buf_span(cf_buf *buf, cf_span span)
{
    cf_buf_append(buf, span.ptr, span.len);
}

char *cf_buf_take(cf_buf *buf, size_t *len)
{
    if (!cf_buf_reserve(buf, 0)) {
        cf_buf_free(buf);
        return NULL;
    }
    char *text = buf->data;
    text[buf->len] = '\0';
    if (len != NULL)
        *len = buf->len;
    buf->data = NULL;
    buf->len = buf->cap = 0;
    return text;
}

void cf_buf_free(cf_buf *buf)
{
    free(buf->data);
    buf->data = NULL;
    buf->len = buf->cap = 0;
    buf->failed = false;
}

/* ---------------------------------------------------------------------------------------- */
/* UTF-8                                                                                      */
/* ---------------------------------------------------------------------------------------- */
static size_t utf8_sequence_length(unsigned char lead)
{
    if (lead < 0x80)
        return 1;
    if (lead >= 0xC2 && lead <= 0xDF)
        return 2;
    if (lead >= 0xE0 && lead <= 0xEF)
        return 3;
    if (lead >= 0xF0 && lead <= 0xF4)
        return 4;
    return 0;
}

size_t cf_utf8_decode(const char *bytes, size_t n, uint32_t *cp)
{
    const unsigned char *s = (const unsigned char *)bytes;
    size_t len = n == 0 ? 0 : utf8_sequence_length(s[0]);
    if (len == 0 || len > n) {
        *cp = 0xFFFD;
        return 1;
    }
    uint32_t value = len == 1 ? s[0] : (uint32_t)(s[0] & (0x7F >> len));
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *cp = 0xFFFD;
            return 1;
        }
        value = (value << 6) | (s[i] & 0x3F);
    }
    /* Reject overlong forms, surrogates and values beyond U+10FFFF. */
    static const uint32_t min_for_length[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (value < min_for_length[len] || (value >= 0xD800 && value <= 0xDFFF) || value > 0x10FFFF) {
        *cp = 0xFFFD;
        return 1;
    }
    *cp = value;
    return len;
}

bool cf_utf8_valid(const char *bytes, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t len = cf_utf8_decode(bytes + i, n - i, &cp);
        if (cp == 0xFFFD && len == 1 && (unsigned char)bytes[i] >= 0x80)
            return false;
        i += len;
    }
    return true;
}

size_t cf_utf8_length(cf_span span)
{
    size_t count = 0;
    for (size_t i = 0; i < span.len; count++) {
        uint32_t cp;
        i += cf_utf8_decode(span.ptr + i, span.len - i, &cp);
    }
    return count;
}

/* ---------------------------------------------------------------------------------------- */
/* Spans and Python string methods                                                            */
/* ---------------------------------------------------------------------------------------- */
cf_span cf_span_of(const char *text)
{
    cf_span span = {text != NULL ? text : "", text != NULL ? strlen(text) : 0};
    return span;
}

/* The code points for which Python's str.isspace() is true (Unicode 14/15 tables agree). */
bool cf_is_py_space(uint32_t cp)
{
    if ((cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20))
        return true;
    if (cp < 0x85)
        return false;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* Length of the whitespace code point that ends at span.ptr[end), or 0. */
static size_t trailing_space_length(cf_span span, size_t end)
{
    /* Walk back over continuation bytes to the start of the last code point (at most 4). */
    size_t start = end;
    while (start > 0 && end - start < 4) {
        start--;
        if (((unsigned char)span.ptr[start] & 0xC0) != 0x80)
            break;
    }
    uint32_t cp;
    size_t len = cf_utf8_decode(span.ptr + start, end - start, &cp);
    if (start + len != end || !cf_is_py_space(cp))
        return 0;
    return len;
}

cf_span cf_py_lstrip(cf_span span)
{
    while (span.len > 0) {
        uint32_t cp;
        size_t len = cf_utf8_decode(span.ptr, span.len, &cp);
        if (!cf_is_py_space(cp))
            break;
        span.ptr += len;
        span.len -= len;
    }
    return span;
}

cf_span cf_py_rstrip(cf_span span)
{
    size_t len;
    while (span.len > 0 && (len = trailing_space_length(span, span.len)) > 0)
        span.len -= len;
    return span;
}

cf_span cf_py_strip(cf_span span)
{
    return cf_py_rstrip(cf_py_lstrip(span));
}

cf_span cf_lstrip_newlines(cf_span span)
{
    while (span.len > 0 && span.ptr[0] == '\n') {
        span.ptr++;
        span.len--;
    }
    return span;
}

cf_span cf_rstrip_newlines(cf_span span)
{
    while (span.len > 0 && span.ptr[span.len - 1] == '\n')
        span.len--;
    return span;
}

cf_span cf_strip_newlines(cf_span span)
{
    return cf_rstrip_newlines(cf_lstrip_newlines(span));
}

long cf_span_find(cf_span haystack, const char *needle)
{
    size_t n = strlen(needle);
    if (n > haystack.len)
        return -1;
    const char *hit = memmem(haystack.ptr, haystack.len, needle, n);
    return hit != NULL ? (long)(hit - haystack.ptr) : -1;
}

long cf_span_rfind(cf_span haystack, const char *needle)
{
    size_t n = strlen(needle);
    if (n > haystack.len)
        return -1;
    for (size_t at = haystack.len - n + 1; at-- > 0;) {
        if (memcmp(haystack.ptr + at, needle, n) == 0)
            return (long)at;
    }
    return -1;
}

bool cf_span_contains(cf_span haystack, const char *needle)
{
    return cf_span_find(haystack, needle) >= 0;
}

bool cf_span_starts_with(cf_span span, const char *prefix)
{
    size_t n = strlen(prefix);
    return span.len >= n && memcmp(span.ptr, prefix, n) == 0;
}

bool cf_span_ends_with(cf_span span, const char *suffix)
{
    size_t n = strlen(suffix);
    return span.len >= n && memcmp(span.ptr + span.len - n, suffix, n) == 0;
}
