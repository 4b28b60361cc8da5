/*
 * Reading Python values into JSON: int() and float() of a string, and the subset of
 * ast.literal_eval that has a JSON equivalent. Tool-call parsers need them because the
 * reference parsers convert argument text with these Python functions, and the Qwen3-Coder
 * template writes non-string arguments with Python's str() ({'a': [1, True]}).
 *
 * Literals accepted: strings ('..', "..", triple-quoted, u/r prefixes, adjacent strings
 * concatenated, Python escapes except \N{name}), integers (decimal, 0x/0o/0b, '_' separators,
 * one leading sign; 64-bit range), floats, True/False/None, lists, tuples (as arrays) and dicts
 * whose keys are strings, numbers, booleans or None (turned into JSON keys the way json.dumps
 * does). Anything else (sets, bytes, complex numbers, names, expressions) is not a literal here.
 */
#include "chat_format_internal.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LITERAL_DEPTH 64

typedef struct literal_reader {
    const char *p;
    const char *end;
    int depth;
} literal_reader;

static json_t *read_value(literal_reader *r);

static bool at_end(const literal_reader *r)
{
    return r->p >= r->end;
}

static char peek(const literal_reader *r, size_t ahead)
{
    return (size_t)(r->end - r->p) > ahead ? r->p[ahead] : '\0';
}

static void skip_blank(literal_reader *r)
{
    while (!at_end(r) && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r' || *r->p == '\f'))
        r->p++;
}

static bool is_ident_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           (unsigned char)c >= 0x80;
}

static bool is_digit_in_base(char c, int base)
{
    int value = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : 99;
    return value < base;
}

/* ---------------------------------------------------------------------------------------- */
/* Strings                                                                                    */
/* ---------------------------------------------------------------------------------------- */
static void append_code_point(cf_buf *out, uint32_t cp)
{
    char bytes[4];
    size_t n;
    if (cp < 0x80) {
        bytes[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        bytes[0] = (char)(0xC0 | (cp >> 6));
        bytes[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        bytes[0] = (char)(0xE0 | (cp >> 12));
        bytes[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        bytes[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        bytes[0] = (char)(0xF0 | (cp >> 18));
        bytes[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        bytes[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        bytes[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    cf_buf_append(out, bytes, n);
}

/* Reads exactly `count` hex digits into *cp. */
static bool read_hex(literal_reader *r, int count, uint32_t *cp)
{
    *cp = 0;
    for (int i = 0; i < count; i++) {
        if (at_end(r) || !is_digit_in_base(*r->p, 16))
            return false;
        char c = *r->p++;
        *cp = *cp * 16 + (uint32_t)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return true;
}

static bool read_escape(literal_reader *r, cf_buf *out)
{
    if (at_end(r))
        return false;
    char c = *r->p++;
    uint32_t cp;
    switch (c) {
    case '\n': return true; /* line continuation */
    case '\\': case '\'': case '"': cf_buf_append(out, &c, 1); return true;
    case 'a': cf_buf_append(out, "\a", 1); return true;
    case 'b': cf_buf_append(out, "\b", 1); return true;
    case 'f': cf_buf_append(out, "\f", 1); return true;
    case 'n': cf_buf_append(out, "\n", 1); return true;
    case 'r': cf_buf_append(out, "\r", 1); return true;
    case 't': cf_buf_append(out, "\t", 1); return true;
    case 'v': cf_buf_append(out, "\v", 1); return true;
    case 'x': if (!read_hex(r, 2, &cp)) return false; break;
    case 'u': if (!read_hex(r, 4, &cp)) return false; break;
    case 'U': if (!read_hex(r, 8, &cp)) return false; break;
    default:
        if (c >= '0' && c <= '7') {
            cp = (uint32_t)(c - '0');
            for (int i = 0; i < 2 && !at_end(r) && *r->p >= '0' && *r->p <= '7'; i++)
                cp = cp * 8 + (uint32_t)(*r->p++ - '0');
            break;
        }
        /* An unknown escape keeps its backslash. */
        cf_buf_append(out, "\\", 1);
        cf_buf_append(out, &c, 1);
        return true;
    }
    /* Surrogates cannot be carried in UTF-8 text. */
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return false;
    append_code_point(out, cp);
    return true;
}

/* One quoted piece (after any prefix) appended to out. */
static bool read_quoted(literal_reader *r, bool raw, cf_buf *out)
{
    char quote = *r->p;
    bool triple = peek(r, 1) == quote && peek(r, 2) == quote;
    r->p += triple ? 3 : 1;
    for (;;) {
        if (at_end(r))
            return false;
        char c = *r->p;
        if (c == quote && (!triple || (peek(r, 1) == quote && peek(r, 2) == quote))) {
            r->p += triple ? 3 : 1;
            return true;
        }
        if (c == '\n' && !triple)
            return false;
        r->p++;
        if (c != '\\') {
            cf_buf_append(out, &c, 1);
        } else if (raw) {
            /* A raw string keeps the backslash and the character after it. */
            if (at_end(r))
                return false;
            cf_buf_append(out, "\\", 1);
            cf_buf_append(out, r->p++, 1);
        } else if (!read_escape(r, out)) {
            return false;
        }
    }
}

/* Prefix letters before a quote: u or r (either case); false for others (bytes, f-strings). */
static bool read_string_prefix(literal_reader *r, bool *raw)
{
    *raw = false;
    if ((*r->p == 'u' || *r->p == 'U') && (peek(r, 1) == '\'' || peek(r, 1) == '"')) {
        r->p++;
    } else if ((*r->p == 'r' || *r->p == 'R') && (peek(r, 1) == '\'' || peek(r, 1) == '"')) {
        *raw = true;
        r->p++;
    }
    return *r->p == '\'' || *r->p == '"';
}

static bool starts_string(const literal_reader *r)
{
    char c = at_end(r) ? '\0' : *r->p;
    char next = peek(r, 1);
    bool prefix = c == 'u' || c == 'U' || c == 'r' || c == 'R';
    return c == '\'' || c == '"' || (prefix && (next == '\'' || next == '"'));
}

/* Adjacent string literals are one string, as in Python source. */
static json_t *read_string(literal_reader *r)
{
    cf_buf text = {0};
    bool ok = true;
    do {
        bool raw;
        ok = read_string_prefix(r, &raw) && read_quoted(r, raw, &text);
        skip_blank(r);
    } while (ok && starts_string(r));
    json_t *value = ok && !text.failed ? json_stringn(text.data != NULL ? text.data : "", text.len) : NULL;
    cf_buf_free(&text);
    return value;
}

/* ---------------------------------------------------------------------------------------- */
/* Numbers                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* Digits of `base` with single '_' between digits, copied without the underscores. */
static size_t read_digits(literal_reader *r, int base, cf_buf *out)
{
    size_t count = 0;
    while (!at_end(r)) {
        char c = *r->p;
        if (is_digit_in_base(c, base)) {
            cf_buf_append(out, &c, 1);
            count++;
        } else if (!(c == '_' && count > 0 && is_digit_in_base(peek(r, 1), base))) {
            break;
        }
        r->p++;
    }
    return count;
}

static json_t *integer_from_text(const char *digits, int base, bool negative)
{
    errno = 0;
    char *end;
    unsigned long long magnitude = strtoull(digits, &end, base);
    if (errno != 0 || *end != '\0')
        return NULL;
    if (negative) {
        if (magnitude > (unsigned long long)INT64_MAX + 1)
            return NULL;
        if (magnitude == (unsigned long long)INT64_MAX + 1)
            return json_integer(INT64_MIN);
        return json_integer(-(json_int_t)magnitude);
    }
    return magnitude > (unsigned long long)INT64_MAX ? NULL : json_integer((json_int_t)magnitude);
}

static json_t *read_prefixed_integer(literal_reader *r, bool negative)
{
    char kind = (char)(r->p[1] | 0x20);
    int base = kind == 'x' ? 16 : kind == 'o' ? 8 : 2;
    r->p += 2;
    if (!at_end(r) && *r->p == '_')
        r->p++; /* Python allows one '_' right after the prefix */
    cf_buf digits = {0};
    json_t *value = NULL;
    if (read_digits(r, base, &digits) > 0 && !digits.failed)
        value = integer_from_text(digits.data, base, negative);
    cf_buf_free(&digits);
    return value;
}

/* Decimal integer or float. Python rejects leading zeros in non-zero integers ("007"). */
static json_t *read_decimal(literal_reader *r, bool negative)
{
    cf_buf text = {0};
    if (negative)
        cf_buf_append(&text, "-", 1);
    size_t int_digits = read_digits(r, 10, &text);
    size_t first_digit = negative ? 1 : 0;
    bool is_float = false;
    size_t frac_digits = 0;
    if (!at_end(r) && *r->p == '.') {
        is_float = true;
        cf_buf_append(&text, ".", 1);
        r->p++;
        frac_digits = read_digits(r, 10, &text);
    }
    bool ok = int_digits + frac_digits > 0;
    if (ok && !at_end(r) && (*r->p == 'e' || *r->p == 'E')) {
        is_float = true;
        cf_buf_append(&text, "e", 1);
        r->p++;
        if (!at_end(r) && (*r->p == '+' || *r->p == '-'))
            cf_buf_append(&text, r->p++, 1);
        ok = read_digits(r, 10, &text) > 0;
    }
    json_t *value = NULL;
    if (ok && !text.failed) {
        const char *digits = text.data + first_digit;
        bool leading_zero =
            !is_float && int_digits > 1 && digits[0] == '0' && strspn(digits, "0") != int_digits;
        if (is_float)
            value = json_real(strtod(text.data, NULL));
        else if (!leading_zero)
            value = integer_from_text(digits, 10, negative);
    }
    cf_buf_free(&text);
    return value;
}

static json_t *read_number(literal_reader *r)
{
    bool negative = false;
    if (*r->p == '+' || *r->p == '-') {
        negative = *r->p == '-';
        r->p++;
        skip_blank(r);
    }
    if (at_end(r))
        return NULL;
    char kind = (char)(peek(r, 1) | 0x20);
    json_t *value = *r->p == '0' && (kind == 'x' || kind == 'o' || kind == 'b')
                        ? read_prefixed_integer(r, negative)
                        : read_decimal(r, negative);
    /* "5j", "1e5abc", "0x1g": not a number literal we can represent. */
    if (value != NULL && !at_end(r) && is_ident_char(*r->p)) {
        json_decref(value);
        value = NULL;
    }
    if (value != NULL && json_is_real(value) && !isfinite(json_real_value(value))) {
        json_decref(value);
        value = NULL;
    }
    return value;
}

/* ---------------------------------------------------------------------------------------- */
/* Containers                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Items separated by ',' (a trailing one allowed) up to `close`. *saw_comma reports whether
 * any comma was read, which tells a one-element tuple "(1,)" from a parenthesised "(1)". */
static json_t *read_items(literal_reader *r, char close, bool *saw_comma)
{
    json_t *array = json_array();
    *saw_comma = false;
    for (;;) {
        skip_blank(r);
        if (array == NULL || at_end(r))
            break;
        if (*r->p == close) {
            r->p++;
            return array;
        }
        json_t *item = read_value(r);
        if (item == NULL || json_array_append_new(array, item) != 0)
            break;
        skip_blank(r);
        if (!at_end(r) && *r->p == ',') {
            *saw_comma = true;
            r->p++;
        } else if (at_end(r) || *r->p != close) {
            break;
        }
    }
    json_decref(array);
    return NULL;
}

static json_t *read_parenthesised(literal_reader *r)
{
    bool saw_comma;
    json_t *items = read_items(r, ')', &saw_comma);
    if (items == NULL || saw_comma || json_array_size(items) != 1)
        return items; /* a tuple */
    json_t *inner = json_incref(json_array_get(items, 0));
    json_decref(items);
    return inner;
}

/* The JSON key json.dumps writes for a dict key (str, int, float, bool or None). */
static bool key_text(const json_t *key, cf_buf *out)
{
    switch (json_typeof(key)) {
    case JSON_STRING: cf_buf_append(out, json_string_value(key), json_string_length(key)); return true;
    case JSON_INTEGER: case JSON_REAL: cf_json_dumps(out, key); return true;
    case JSON_TRUE: cf_buf_puts(out, "true"); return true;
    case JSON_FALSE: cf_buf_puts(out, "false"); return true;
    case JSON_NULL: cf_buf_puts(out, "null"); return true;
    default: return false; /* lists and dicts are unhashable */
    }
}

static bool read_dict_entry(literal_reader *r, json_t *object)
{
    json_t *key = read_value(r);
    skip_blank(r);
    json_t *value = NULL;
    if (key != NULL && !at_end(r) && *r->p == ':') {
        r->p++;
        value = read_value(r);
    }
    bool ok = false;
    if (value != NULL) {
        cf_buf text = {0};
        if (key_text(key, &text) && !text.failed) /* setn_new takes value, even on failure */
            ok = json_object_setn_new(object, text.data != NULL ? text.data : "", text.len, value) == 0;
        else
            json_decref(value);
        cf_buf_free(&text);
    }
    json_decref(key);
    return ok;
}

static json_t *read_dict(literal_reader *r)
{
    json_t *object = json_object();
    for (;;) {
        skip_blank(r);
        if (object == NULL || at_end(r))
            break;
        if (*r->p == '}') {
            r->p++;
            return object;
        }
        if (!read_dict_entry(r, object))
            break;
        skip_blank(r);
        if (!at_end(r) && *r->p == ',')
            r->p++;
        else if (at_end(r) || *r->p != '}')
            break;
    }
    json_decref(object);
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* int() and float() of a string                                                              */
/* ---------------------------------------------------------------------------------------- */
static bool is_decimal_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* int(text) for ASCII digits: surrounding whitespace, a sign, '_' only between digits.
 * Values beyond 64 bits are reported as not convertible (the caller keeps the string). */
json_t *cf_py_int(cf_span text)
{
    text = cf_py_strip(text);
    size_t i = 0;
    bool negative = false;
    if (i < text.len && (text.ptr[i] == '+' || text.ptr[i] == '-'))
        negative = text.ptr[i++] == '-';
    if (i >= text.len || !is_decimal_digit(text.ptr[i]))
        return NULL;
    uint64_t magnitude = 0;
    const uint64_t limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < text.len; i++) {
        char c = text.ptr[i];
        if (c == '_' && i + 1 < text.len && is_decimal_digit(text.ptr[i + 1]))
            continue;
        if (!is_decimal_digit(c))
            return NULL;
        unsigned digit = (unsigned)(c - '0');
        if (magnitude > (limit - digit) / 10)
            return NULL;
        magnitude = magnitude * 10 + digit;
    }
    if (!negative)
        return json_integer((json_int_t)magnitude);
    if (magnitude == (uint64_t)INT64_MAX + 1)
        return json_integer(INT64_MIN);
    return json_integer(-(json_int_t)magnitude);
}

/* Copies the digits of text[*i..] into out, dropping '_' that sit between two digits.
 * Returns the number of digits taken. */
static size_t take_span_digits(cf_span text, size_t *i, cf_buf *out)
{
    size_t count = 0;
    while (*i < text.len) {
        char c = text.ptr[*i];
        if (is_decimal_digit(c)) {
            cf_buf_append(out, &c, 1);
            count++;
        } else if (!(c == '_' && count > 0 && *i + 1 < text.len && is_decimal_digit(text.ptr[*i + 1]))) {
            break;
        }
        (*i)++;
    }
    return count;
}

/* float(text) for decimal notation; false for anything else, including inf and nan (which the
 * reference turns back into the original string when int() of them fails). */
bool cf_py_float(cf_span text, double *value)
{
    text = cf_py_strip(text);
    cf_buf clean = {0};
    size_t i = 0;
    if (i < text.len && (text.ptr[i] == '+' || text.ptr[i] == '-'))
        cf_buf_append(&clean, &text.ptr[i++], 1);
    size_t digits = take_span_digits(text, &i, &clean);
    if (i < text.len && text.ptr[i] == '.') {
        cf_buf_append(&clean, ".", 1);
        i++;
        digits += take_span_digits(text, &i, &clean);
    }
    bool ok = digits > 0;
    if (ok && i < text.len && (text.ptr[i] == 'e' || text.ptr[i] == 'E')) {
        cf_buf_append(&clean, "e", 1);
        i++;
        if (i < text.len && (text.ptr[i] == '+' || text.ptr[i] == '-'))
            cf_buf_append(&clean, &text.ptr[i++], 1);
        ok = take_span_digits(text, &i, &clean) > 0;
    }
    ok = ok && i == text.len && !clean.failed;
    if (ok) {
        *value = strtod(clean.data, NULL);
        ok = !isinf(*value);
    }
    cf_buf_free(&clean);
    return ok;
}

/* ---------------------------------------------------------------------------------------- */
/* Values                                                                                     */
/* ---------------------------------------------------------------------------------------- */
static bool take_keyword(literal_reader *r, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0)
        return false;
    if ((size_t)(r->end - r->p) > n && is_ident_char(r->p[n]))
        return false;
    r->p += n;
    return true;
}

static json_t *read_nested(literal_reader *r)
{
    char open = *r->p++;
    bool saw_comma;
    if (open == '[')
        return read_items(r, ']', &saw_comma);
    if (open == '(')
        return read_parenthesised(r);
    return read_dict(r);
}

static json_t *read_value(literal_reader *r)
{
    skip_blank(r);
    if (at_end(r) || r->depth >= MAX_LITERAL_DEPTH)
        return NULL;
    char c = *r->p;
    if (starts_string(r))
        return read_string(r);
    if (take_keyword(r, "True"))
        return json_true();
    if (take_keyword(r, "False"))
        return json_false();
    if (take_keyword(r, "None"))
        return json_null();
    if (c == '[' || c == '(' || c == '{') {
        r->depth++;
        json_t *value = read_nested(r);
        r->depth--;
        return value;
    }
    if (c == '+' || c == '-' || c == '.' || (c >= '0' && c <= '9'))
        return read_number(r);
    return NULL;
}

json_t *cf_py_literal_parse(const char *text, size_t len)
{
    literal_reader r = {text, text + len, 0};
    json_t *value = read_value(&r);
    skip_blank(&r);
    if (value != NULL && !at_end(&r)) {
        json_decref(value);
        value = NULL;
    }
    return value;
}
