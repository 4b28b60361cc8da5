/*
 * Python-compatible printing of JSON values: json.dumps(ensure_ascii=False), str() / repr()
 * of the equivalent Python objects, and repr(float). Written from Python's documented output
 * rules; the tests compare against strings Python produced.
 */
#include "chat_format_internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---------------------------------------------------------------------------------------- */
/* repr(float)                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* Shortest decimal digits of a positive finite double: value = 0.DIGITS x 10^decpt. */
typedef struct float_digits {
    char digits[24];
    int decpt;
} float_digits;

static bool parse_scientific(const char *text, float_digits *out)
{
    /* text is "D.DDDDe[+-]XX" or "De[+-]XX" as printf %e writes it. */
    size_t n = 0;
    const char *p = text;
    for (; *p != 'e' && *p != '\0'; p++) {
        if (*p != '.' && n + 1 < sizeof out->digits)
            out->digits[n++] = *p;
    }
    if (*p != 'e')
        return false;
    out->digits[n] = '\0';
    while (n > 1 && out->digits[n - 1] == '0')
        out->digits[--n] = '\0';
    out->decpt = atoi(p + 1) + 1;
    return true;
}

/* Reads mantissa x 10^e10 back and reports whether it is exactly value. */
static bool integer_candidate_round_trips(double value, uint64_t mantissa, int e10)
{
    char text[48];
    snprintf(text, sizeof text, "%" PRIu64 "e%d", mantissa, e10);
    return strtod(text, NULL) == value;
}

static void digits_from_integer(uint64_t mantissa, int e10, float_digits *out)
{
    snprintf(out->digits, sizeof out->digits, "%" PRIu64, mantissa);
    size_t n = strlen(out->digits);
    out->decpt = e10 + (int)n;
    while (n > 1 && out->digits[n - 1] == '0')
        out->digits[--n] = '\0';
}

/*
 * The correctly rounded `precision`-digit decimal is the candidate closest to the value; at a
 * power of two the rounding interval is lopsided, so the neighbour on the other side may be
 * the only one that reads back. Python (David Gay's shortest mode) picks the same digits.
 */
static bool digits_at_precision(double value, int precision, float_digits *out)
{
    char text[48];
    snprintf(text, sizeof text, "%.*e", precision - 1, value);
    if (strtod(text, NULL) == value)
        return parse_scientific(text, out);

    float_digits nearest;
    if (!parse_scientific(text, &nearest))
        return false;
    uint64_t mantissa = strtoull(nearest.digits, NULL, 10);
    for (size_t i = strlen(nearest.digits); i < (size_t)precision; i++)
        mantissa *= 10;
    int e10 = nearest.decpt - precision;
    uint64_t other = strtod(text, NULL) < value ? mantissa + 1 : mantissa - 1;
    if (!integer_candidate_round_trips(value, other, e10))
        return false;
    digits_from_integer(other, e10, out);
    return true;
}

static void shortest_digits(double value, float_digits *out)
{
    for (int precision = 1; precision <= 17; precision++) {
        if (digits_at_precision(value, precision, out))
            return;
    }
    char text[48];
    snprintf(text, sizeof text, "%.16e", value);
    parse_scientific(text, out);
}

static void append_zeros(cf_buf *buf, int count)
{
    for (int i = 0; i < count; i++)
        cf_buf_append(buf, "0", 1);
}

/* Python's repr switches to exponent form when decpt <= -4 or decpt > 16. */
static void format_float_digits(cf_buf *buf, const float_digits *d)
{
    int n = (int)strlen(d->digits);
    if (d->decpt > -4 && d->decpt <= 16) {
        if (d->decpt <= 0) {
            cf_buf_puts(buf, "0.");
            append_zeros(buf, -d->decpt);
            cf_buf_append(buf, d->digits, (size_t)n);
        } else if (d->decpt >= n) {
            cf_buf_append(buf, d->digits, (size_t)n);
            append_zeros(buf, d->decpt - n);
            cf_buf_puts(buf, ".0");
        } else {
            cf_buf_append(buf, d->digits, (size_t)d->decpt);
            cf_buf_append(buf, ".", 1);
            cf_buf_append(buf, d->digits + d->decpt, (size_t)(n - d->decpt));
        }
        return;
    }
    cf_buf_append(buf, d->digits, 1);
    if (n > 1) {
        cf_buf_append(buf, ".", 1);
        cf_buf_append(buf, d->digits + 1, (size_t)(n - 1));
    }
    char exponent[16];
    int e = d->decpt - 1;
    snprintf(exponent, sizeof exponent, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    cf_buf_puts(buf, exponent);
}

void cf_py_float_repr(cf_buf *buf, double value)
{
    if (signbit(value))
        cf_buf_append(buf, "-", 1);
    value = fabs(value);
    if (value == 0.0) {
        cf_buf_puts(buf, "0.0");
        return;
    }
    float_digits digits;
    shortest_digits(value, &digits);
    format_float_digits(buf, &digits);
}

/* ---------------------------------------------------------------------------------------- */
/* json.dumps(ensure_ascii=False)                                                             */
/* ---------------------------------------------------------------------------------------- */

/* Python escapes only '"', '\\' and the C0 controls (\n \r \t \b \f by name, others \u00XX). */
static void json_dump_string(cf_buf *buf, const char *text, size_t len)
{
    cf_buf_append(buf, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        cf_buf_append(buf, text + run, i - run);
        run = i + 1;
        char escape[8];
        switch (c) {
        case '"': cf_buf_puts(buf, "\\\""); break;
        case '\\': cf_buf_puts(buf, "\\\\"); break;
        case '\n': cf_buf_puts(buf, "\\n"); break;
        case '\r': cf_buf_puts(buf, "\\r"); break;
        case '\t': cf_buf_puts(buf, "\\t"); break;
        case '\b': cf_buf_puts(buf, "\\b"); break;
        case '\f': cf_buf_puts(buf, "\\f"); break;
        default:
            snprintf(escape, sizeof escape, "\\u%04x", c);
            cf_buf_puts(buf, escape);
            break;
        }
    }
    cf_buf_append(buf, text + run, len - run);
    cf_buf_append(buf, "\"", 1);
}

static void dump_integer(cf_buf *buf, json_int_t value)
{
    char text[32];
    snprintf(text, sizeof text, "%" JSON_INTEGER_FORMAT, value);
    cf_buf_puts(buf, text);
}

typedef void (*value_printer)(cf_buf *buf, const json_t *value);

/* Containers print the same way in JSON and in Python apart from their scalars and keys. */
static void print_array(cf_buf *buf, const json_t *array, value_printer print)
{
    cf_buf_append(buf, "[", 1);
    for (size_t i = 0; i < json_array_size(array); i++) {
        if (i > 0)
            cf_buf_puts(buf, ", ");
        print(buf, json_array_get(array, i));
    }
    cf_buf_append(buf, "]", 1);
}

static void print_object(cf_buf *buf, const json_t *object, value_printer print,
                         void (*print_key)(cf_buf *, const char *, size_t))
{
    cf_buf_append(buf, "{", 1);
    const char *key;
    size_t key_len;
    json_t *member;
    bool first = true;
    /* jansson iterates objects in insertion order, as Python dicts do. */
    json_object_keylen_foreach((json_t *)object, key, key_len, member) {
        if (!first)
            cf_buf_puts(buf, ", ");
        first = false;
        print_key(buf, key, key_len);
        cf_buf_puts(buf, ": ");
        print(buf, member);
    }
    cf_buf_append(buf, "}", 1);
}

void cf_json_dumps(cf_buf *buf, const json_t *value)
{
    switch (json_typeof(value)) {
    case JSON_OBJECT: print_object(buf, value, cf_json_dumps, json_dump_string); break;
    case JSON_ARRAY: print_array(buf, value, cf_json_dumps); break;
    case JSON_STRING: json_dump_string(buf, json_string_value(value), json_string_length(value)); break;
    case JSON_INTEGER: dump_integer(buf, json_integer_value(value)); break;
    case JSON_REAL: cf_py_float_repr(buf, json_real_value(value)); break;
    case JSON_TRUE: cf_buf_puts(buf, "true"); break;
    case JSON_FALSE: cf_buf_puts(buf, "false"); break;
    case JSON_NULL: cf_buf_puts(buf, "null"); break;
    }
}

char *cf_json_dumps_alloc(const json_t *value)
{
    cf_buf buf = {0};
    cf_json_dumps(&buf, value);
    return cf_buf_take(&buf, NULL);
}

/* ---------------------------------------------------------------------------------------- */
/* str() / repr() of Python objects                                                           */
/* ---------------------------------------------------------------------------------------- */

/* Python's str.isprintable() for one non-ASCII code point: not a control, format, surrogate,
 * private-use, unassigned or separator character. */
static bool py_is_printable(uint32_t cp)
{
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS:
        return false;
    default:
        return true;
    }
}

static void repr_escape_code_point(cf_buf *buf, uint32_t cp)
{
    char escape[16];
    if (cp <= 0xFF)
        snprintf(escape, sizeof escape, "\\x%02x", (unsigned)cp);
    else if (cp <= 0xFFFF)
        snprintf(escape, sizeof escape, "\\u%04x", (unsigned)cp);
    else
        snprintf(escape, sizeof escape, "\\U%08x", (unsigned)cp);
    cf_buf_puts(buf, escape);
}

static void repr_ascii(cf_buf *buf, char c, char quote)
{
    if (c == quote || c == '\\') {
        char escaped[2] = {'\\', c};
        cf_buf_append(buf, escaped, 2);
    } else if (c == '\t') {
        cf_buf_puts(buf, "\\t");
    } else if (c == '\n') {
        cf_buf_puts(buf, "\\n");
    } else if (c == '\r') {
        cf_buf_puts(buf, "\\r");
    } else if ((unsigned char)c < 0x20 || c == 0x7F) {
        repr_escape_code_point(buf, (unsigned char)c);
    } else {
        cf_buf_append(buf, &c, 1);
    }
}

/* repr(str): single quotes unless the text has a ' and no ". */
static void py_repr_string(cf_buf *buf, const char *text, size_t len)
{
    bool has_single = memchr(text, '\'', len) != NULL;
    bool has_double = memchr(text, '"', len) != NULL;
    char quote = has_single && !has_double ? '"' : '\'';
    cf_buf_append(buf, &quote, 1);
    for (size_t i = 0; i < len;) {
        if ((unsigned char)text[i] < 0x80) {
            repr_ascii(buf, text[i], quote);
            i++;
            continue;
        }
        uint32_t cp;
        size_t n = cf_utf8_decode(text + i, len - i, &cp);
        if (py_is_printable(cp))
            cf_buf_append(buf, text + i, n);
        else
            repr_escape_code_point(buf, cp);
        i += n;
    }
    cf_buf_append(buf, &quote, 1);
}

static void py_repr(cf_buf *buf, const json_t *value);

static void py_repr_key(cf_buf *buf, const char *key, size_t len)
{
    py_repr_string(buf, key, len);
}

static void py_repr(cf_buf *buf, const json_t *value)
{
    switch (json_typeof(value)) {
    case JSON_OBJECT: print_object(buf, value, py_repr, py_repr_key); break;
    case JSON_ARRAY: print_array(buf, value, py_repr); break;
    case JSON_STRING: py_repr_string(buf, json_string_value(value), json_string_length(value)); break;
    case JSON_INTEGER: dump_integer(buf, json_integer_value(value)); break;
    case JSON_REAL: cf_py_float_repr(buf, json_real_value(value)); break;
    case JSON_TRUE: cf_buf_puts(buf, "True"); break;
    case JSON_FALSE: cf_buf_puts(buf, "False"); break;
    case JSON_NULL: cf_buf_puts(buf, "None"); break;
    }
}

void cf_py_str(cf_buf *buf, const json_t *value)
{
    if (json_is_string(value))
        cf_buf_append(buf, json_string_value(value), json_string_length(value));
    else
        py_repr(buf, value);
}

/* ---------------------------------------------------------------------------------------- */
/* Parsing                                                                                    */
/* ---------------------------------------------------------------------------------------- */
json_t *cf_json_parse(const char *text, size_t len, size_t flags, const char *what,
                      pio_status *status, pio_error *err)
{
    json_error_t jerr;
    json_t *value = json_loadb(text, len, flags, &jerr);
    if (value == NULL) {
        *status = pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: invalid JSON at byte %d: %s",
                                what, jerr.position, jerr.text);
    }
    return value;
}
