/*
 * The Split pre-tokenizer: its pattern (written for Oniguruma, which Hugging Face uses) compiled
 * with PCRE2 + JIT, and the split of a text into pieces with Oniguruma's find_iter semantics.
 */
#include "tokenizer_internal.h"

#include <stdio.h>
#include <string.h>

/* Oniguruma's meaning of the escapes whose PCRE2 (UCP) meaning differs, as class contents:
 *   \s  Unicode White_Space (PCRE2 adds U+180E)
 *   \w  Alphabetic, marks, decimal digits, connector punctuation, joiners (PCRE2 10.42 takes all
 *       of \p{N} and no marks)
 *   \h  a hexadecimal digit (PCRE2: horizontal space) */
static const char space_class[] =
    "\\t-\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}"
    "\\x{3000}";
static const char word_class[] = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200c}\\x{200d}";
static const char hex_class[] = "0-9a-fA-F";

typedef struct pattern_writer {
    tok_bytes out;
    char *why;
    size_t why_size;
    bool ok;
} pattern_writer;

static void write_text(pattern_writer *w, const char *text, size_t len)
{
    if (w->ok && !tok_bytes_append(&w->out, text, len)) {
        snprintf(w->why, w->why_size, "out of memory");
        w->ok = false;
    }
}

static void fail(pattern_writer *w, const char *reason, size_t offset)
{
    if (w->ok)
        snprintf(w->why, w->why_size, "%s (at pattern offset %zu)", reason, offset);
    w->ok = false;
}

static const char *class_for_escape(char letter)
{
    switch (letter) {
    case 's': case 'S': return space_class;
    case 'w': case 'W': return word_class;
    case 'h': case 'H': return hex_class;
    default: return NULL;
    }
}

/* Rewrites one escape at p[i] == '\\'; returns the index after it. */
static size_t translate_escape(pattern_writer *w, const char *p, size_t len, size_t i,
                               bool in_class)
{
    if (i + 1 >= len) {
        fail(w, "pattern ends with a backslash", i);
        return len;
    }
    char letter = p[i + 1];
    const char *class_text = class_for_escape(letter);
    if (class_text == NULL) {
        write_text(w, p + i, 2);
        return i + 2;
    }
    bool negated = letter >= 'A' && letter <= 'Z';
    if (in_class && negated) {
        fail(w, "a negated class escape (\\S, \\W, \\H) inside [...] is not supported", i);
        return len;
    }
    if (!in_class)
        write_text(w, negated ? "[^" : "[", negated ? 2 : 1);
    write_text(w, class_text, strlen(class_text));
    if (!in_class)
        write_text(w, "]", 1);
    return i + 2;
}

/* Oniguruma (Ruby syntax) reads (?m) as "dot matches newline", PCRE2's (?s). */
static size_t translate_group_start(pattern_writer *w, const char *p, size_t len, size_t i)
{
    size_t j = i + 2;
    while (j < len && (p[j] == 'i' || p[j] == 'm' || p[j] == 'x' || p[j] == '-'))
        j++;
    bool is_option_group = j > i + 2 && j < len && (p[j] == ')' || p[j] == ':');
    write_text(w, "(?", 2);
    if (!is_option_group)
        return i + 2;
    for (size_t k = i + 2; k < j; k++)
        write_text(w, p[k] == 'm' ? "s" : p + k, 1);
    return j;
}

/* Start of a character class at p[i] == '['; copies "[", "[^" and a leading literal ']'. */
static size_t translate_class_start(pattern_writer *w, const char *p, size_t len, size_t i)
{
    size_t j = i + 1;
    if (j < len && p[j] == '^')
        j++;
    if (j < len && p[j] == ']')
        j++;
    write_text(w, p + i, j - i);
    return j;
}

static bool translate_pattern(const char *p, size_t len, pattern_writer *w)
{
    bool in_class = false;
    size_t i = 0;
    while (i < len && w->ok) {
        char c = p[i];
        if (c == '\\') {
            i = translate_escape(w, p, len, i, in_class);
        } else if (in_class) {
            if (c == '[') {
                fail(w, "nested classes, set operations and POSIX brackets inside [...] are "
                        "not supported", i);
            } else if (c == '&' && i + 1 < len && p[i + 1] == '&') {
                fail(w, "class intersection (&&) is not supported", i);
            }
            if (c == ']')
                in_class = false;
            write_text(w, p + i, 1);
            i++;
        } else if (c == '[') {
            i = translate_class_start(w, p, len, i);
            in_class = true;
        } else if (c == '(' && i + 1 < len && p[i + 1] == '?') {
            i = translate_group_start(w, p, len, i);
        } else {
            write_text(w, p + i, 1);
            i++;
        }
    }
    if (w->ok && in_class)
        fail(w, "unterminated character class", len);
    return w->ok;
}

bool tok_regex_compile(tok_regex *re, const char *pattern, size_t len, bool is_literal,
                       char *why, size_t why_size)
{
    memset(re, 0, sizeof *re);
    pattern_writer w = {.why = why, .why_size = why_size, .ok = true};
    if (is_literal)
        write_text(&w, pattern, len);
    else
        translate_pattern(pattern, len, &w);
    if (!w.ok) {
        tok_bytes_free(&w.out);
        return false;
    }
    pcre2_compile_context *cc = pcre2_compile_context_create(NULL);
    if (cc == NULL) {
        tok_bytes_free(&w.out);
        snprintf(why, why_size, "out of memory");
        return false;
    }
    /* Ruby syntax: ^ and $ match at line breaks, which are LF only. */
    pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
    /* PCRE2_LITERAL takes almost no other option. */
    uint32_t options = is_literal ? PCRE2_UTF | PCRE2_LITERAL
                                  : PCRE2_UTF | PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C |
                                        PCRE2_MULTILINE;
    int error_code;
    PCRE2_SIZE error_offset;
    re->code = pcre2_compile((PCRE2_SPTR)(w.out.data ? (const char *)w.out.data : ""),
                             w.out.len, options, &error_code, &error_offset, cc);
    pcre2_compile_context_free(cc);
    tok_bytes_free(&w.out);
    if (re->code == NULL) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(error_code, message, sizeof message);
        snprintf(why, why_size, "PCRE2 cannot compile it: %s", (const char *)message);
        return false;
    }
    /* Without JIT (e.g. a platform sljit lacks) the interpreter gives the same results. */
    re->jit = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE) == 0;
    return true;
}

void tok_regex_free(tok_regex *re)
{
    pcre2_code_free(re->code);
    re->code = NULL;
}

bool tok_regex_matcher_init(tok_regex_matcher *m, const tok_regex *re)
{
    memset(m, 0, sizeof *m);
    m->re = re;
    m->match = pcre2_match_data_create_from_pattern(re->code, NULL);
    return m->match != NULL;
}

void tok_regex_matcher_free(tok_regex_matcher *m)
{
    pcre2_match_data_free(m->match);
    pcre2_match_context_free(m->context);
    pcre2_jit_stack_free(m->stack);
    memset(m, 0, sizeof *m);
}

/* The default JIT stack (32 KiB of machine stack) is enough for the patterns in use; a pattern
 * that needs more gets a 64 MiB one on its first overflow. */
static bool grow_jit_stack(tok_regex_matcher *m)
{
    if (m->stack != NULL)
        return false;
    m->context = pcre2_match_context_create(NULL);
    m->stack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, NULL);
    if (m->context == NULL || m->stack == NULL)
        return false;
    pcre2_jit_stack_assign(m->context, NULL, m->stack);
    return true;
}

static int match_at(tok_regex_matcher *m, const uint8_t *s, size_t n, size_t from)
{
    for (;;) {
        int rc;
        if (m->re->jit)
            rc = pcre2_jit_match(m->re->code, s, n, from, 0, m->match, m->context);
        else
            rc = pcre2_match(m->re->code, s, n, from, PCRE2_NO_UTF_CHECK, m->match, m->context);
        if (rc != PCRE2_ERROR_JIT_STACKLIMIT || !grow_jit_stack(m))
            return rc;
    }
}

static size_t code_point_length(uint8_t lead)
{
    return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

pio_status tok_regex_split(tok_regex_matcher *m, const uint8_t *s, size_t n, tok_piece_fn emit,
                           void *context, pio_error *err)
{
    size_t search = 0, piece_start = 0;
    size_t last_match_end = SIZE_MAX;
    pio_status status = PIO_OK;
    while (search <= n && status == PIO_OK) {
        int rc = match_at(m, s, n, search);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR message[256];
            pcre2_get_error_message(rc, message, sizeof message);
            return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                                 "pre-tokenizer regex failed at byte %zu: %s", search,
                                 (const char *)message);
        }
        PCRE2_SIZE *ovector = pcre2_get_ovector_pointer(m->match);
        size_t start = ovector[0], end = ovector[1];
        /* Oniguruma's find_iter refuses an empty match right where the previous match ended and
         * searches again one character further on. */
        if (start == end && end == last_match_end) {
            if (search >= n)
                break;
            search += code_point_length(s[search]);
            continue;
        }
        if (start > piece_start)
            status = emit(context, s + piece_start, start - piece_start);
        if (status == PIO_OK && end > start)
            status = emit(context, s + start, end - start);
        piece_start = end;
        last_match_end = end;
        search = end;
    }
    if (status == PIO_OK && piece_start < n)
        status = emit(context, s + piece_start, n - piece_start);
    return status;
}
