/*
 * Internal pieces shared by the chat formatters (chat_format*.c) and the tool-call parser
 * (tool_calls.c). Not installed, not part of the SDK's public surface.
 *
 * The chat templates are Jinja programs that Hugging Face transformers runs in Python, so being
 * byte-exact means reproducing a few Python behaviours in C:
 *   - json.dumps(x, ensure_ascii=False) with the default separators ", " and ": "  (tojson)
 *   - str(x) of JSON-derived values: 'True', 'None', "{'a': [1, 2.0]}"          (|string, ~)
 *   - repr(float): the shortest text that reads back to the same double
 *   - str.strip() with no argument, which strips Unicode whitespace, not only ASCII
 */
#ifndef PIO_CHAT_FORMAT_INTERNAL_H
#define PIO_CHAT_FORMAT_INTERNAL_H

#include "pio/chat_format.h"
#include "pio/error.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* ---------------------------------------------------------------------------------------- */
/* Growable text buffer. An allocation failure is sticky: later appends do nothing and       */
/* cf_buf_take() returns NULL, so builders check once at the end.                            */
/* ---------------------------------------------------------------------------------------- */
typedef struct cf_buf {
    char *data;
    size_t len;
    size_t cap;
    bool failed;
} cf_buf;

void cf_buf_append(cf_buf *buf, const char *bytes, size_t n);
void cf_buf_puts(cf_buf *buf, const char *text);
/* Returns the NUL-terminated text (caller frees) and resets the buffer; NULL after a failure. */
char *cf_buf_take(cf_buf *buf, size_t *len);
void cf_buf_free(cf_buf *buf);

/* ---------------------------------------------------------------------------------------- */
/* Text spans and Python string methods over UTF-8.                                          */
/* ---------------------------------------------------------------------------------------- */
typedef struct cf_span {
    const char *ptr;
    size_t len;
} cf_span;

cf_span cf_span_of(const char *text); /* NULL gives the empty span */
void cf_buf_span(cf_buf *buf, cf_span span);

/* Python str.isspace() for one code point. */
bool cf_is_py_space(uint32_t cp);
/* str.strip() / lstrip() / rstrip() without arguments (Unicode whitespace). */
cf_span cf_py_strip(cf_span span);
cf_span cf_py_lstrip(cf_span span);
cf_span cf_py_rstrip(cf_span span);
/* str.strip('\n') / lstrip('\n') / rstrip('\n'). */
cf_span cf_strip_newlines(cf_span span);
cf_span cf_lstrip_newlines(cf_span span);
cf_span cf_rstrip_newlines(cf_span span);

bool cf_span_contains(cf_span haystack, const char *needle);
bool cf_span_starts_with(cf_span span, const char *prefix);
bool cf_span_ends_with(cf_span span, const char *suffix);
/* Position of the first / last occurrence of needle, or -1. */
long cf_span_find(cf_span haystack, const char *needle);
long cf_span_rfind(cf_span haystack, const char *needle);

/* True when bytes[0..n) is well-formed UTF-8 (no overlongs, surrogates or values > U+10FFFF). */
bool cf_utf8_valid(const char *bytes, size_t n);
/* Decodes one code point at bytes[0..n); returns its length (>= 1). Malformed input decodes
 * as U+FFFD of length 1 so callers never loop forever. */
size_t cf_utf8_decode(const char *bytes, size_t n, uint32_t *cp);
/* Number of code points (Python len()) of valid UTF-8 text. */
size_t cf_utf8_length(cf_span span);

/* ---------------------------------------------------------------------------------------- */
/* Python-compatible printing of JSON values (parsed with jansson).                          */
/* ---------------------------------------------------------------------------------------- */
/* json.dumps(value, ensure_ascii=False). */
void cf_json_dumps(cf_buf *buf, const json_t *value);
/* str(value): strings verbatim, everything else as Python prints the equivalent object. */
void cf_py_str(cf_buf *buf, const json_t *value);
/* repr(float) for a finite double. */
void cf_py_float_repr(cf_buf *buf, double value);
/* json.dumps(value) into a new NUL-terminated string (caller frees); NULL when out of memory. */
char *cf_json_dumps_alloc(const json_t *value);

/* Python's int(text) for ASCII digits (whitespace, sign and '_' separators as Python allows);
 * NULL when text is not such an integer or does not fit in 64 bits. */
json_t *cf_py_int(cf_span text);
/* Python's float(text) for decimal notation; false for anything else, including inf and nan. */
bool cf_py_float(cf_span text, double *value);

/* Reads a Python literal (the JSON-representable subset of ast.literal_eval; see
 * chat_format_pyliteral.c). Returns a new reference, or NULL when text is not such a literal. */
json_t *cf_py_literal_parse(const char *text, size_t len);

/* json_loadb with the options every caller here wants; reports jansson's message on failure. */
json_t *cf_json_parse(const char *text, size_t len, size_t flags, const char *what,
                      pio_status *status, pio_error *err);

/* ---------------------------------------------------------------------------------------- */
/* The normalised chat every formatter renders.                                             */
/* ---------------------------------------------------------------------------------------- */
typedef struct cf_message {
    size_t index;                 /* position in the caller's array, for error messages */
    const char *role;             /* never NULL */
    const char *content;          /* NULL: the message has no content key (Jinja: undefined) */
    const pio_chat_parts *parts;  /* non-NULL: content is a list of parts (then content == NULL) */
    const char *reasoning;        /* NULL: no reasoning_content key */
    json_t *tool_calls;           /* parsed tool_calls_json (a JSON array) or NULL */
} cf_message;

typedef struct cf_chat {
    cf_message *messages;
    size_t n_messages;
    json_t *tools;                /* parsed tools_json (a JSON array) or NULL */
    bool add_generation_prompt;
    int enable_thinking;          /* -1 undefined, 0 false, 1 true */
    int clear_thinking;           /* -1 undefined, 0 false, 1 true */
    bool add_vision_id;
} cf_chat;

/* True when the chat has a non-empty tools array (Jinja truthiness of `tools`). */
bool cf_chat_has_tools(const cf_chat *chat);
/* Jinja truthiness of a message's content: a non-empty string or a non-empty part list. */
bool cf_message_content_truthy(const cf_message *message);
/* True when tool_calls is a non-empty array (Jinja truthiness of `message.tool_calls`). */
bool cf_message_has_tool_calls(const cf_message *message);

/*
 * One tool call of an assistant message, unwrapped from an OpenAI-style {"function": {...}}.
 * `arguments` is NULL when absent. With `parse_string_arguments`, arguments given as a JSON
 * string holding an object are parsed into *owned_arguments (vLLM does this before templating;
 * the Qwen3-Coder and GLM templates need a mapping). The caller json_decref()s *owned_arguments.
 */
typedef struct cf_tool_call_view {
    const char *name;
    json_t *arguments;
    json_t *owned_arguments;
} cf_tool_call_view;

pio_status cf_tool_call_view_get(const cf_message *message, size_t call_index,
                                 bool parse_string_arguments, cf_tool_call_view *view,
                                 pio_error *err);

/*
 * An assistant turn's reasoning: reasoning_content when given (content unchanged); otherwise
 * the text of an inline <think>..</think> is moved out of the content, exactly as the Qwen3 and
 * GLM templates do with content.split('</think>'), rstrip('\n') and lstrip('\n').
 */
typedef struct cf_reasoning_split {
    cf_span reasoning;
    cf_span content;
} cf_reasoning_split;

cf_reasoning_split cf_split_reasoning(const char *reasoning_content, cf_span content);

/* Per-format renderers: append the prompt to out; report template errors in err. */
pio_status cf_render_qwen3(const cf_chat *chat, cf_buf *out, pio_error *err);
pio_status cf_render_qwen3_vl(const cf_chat *chat, cf_buf *out, pio_error *err);
pio_status cf_render_qwen3_coder(const cf_chat *chat, cf_buf *out, pio_error *err);
pio_status cf_render_glm4(const cf_chat *chat, cf_buf *out, pio_error *err);

#endif
