/*
 * Tool-call parsing of generated text, per chat format:
 *
 *   PIO_CHAT_FORMAT_QWEN3, PIO_CHAT_FORMAT_QWEN3_VL
 *       <tool_call>\n{"name": "NAME", "arguments": {...}}\n</tool_call>
 *       "arguments" may also be a JSON string holding an object; a missing one means {}.
 *   PIO_CHAT_FORMAT_QWEN3_CODER
 *       <tool_call>\n<function=NAME>\n<parameter=ARG>\nVALUE\n</parameter>\n...</function>\n</tool_call>
 *       (also a bare <function=...>...</function> without the <tool_call> wrapper, and several
 *       <function> blocks inside one <tool_call>). One newline after the opening and before
 *       the closing parameter tag is removed. VALUE is converted by the parameter's declared
 *       "type" in tools_json, as the Qwen3-Coder reference parser does: "null" (any case) is
 *       null; string/str/text/varchar/char/enum stay strings; types starting with int, uint,
 *       long, short or unsigned parse as integers; types starting with num or float parse as
 *       numbers (integral values become integers); boolean/bool/binary are true when the value
 *       is "true" (any case), else false; object/array/arr and types starting with dict or
 *       list parse as JSON, else as a Python literal (the template writes them with Python's
 *       str(), e.g. {'a': [1, True]}). Parameters of an unknown tool, or not in
 *       its schema, stay strings. A value that does not convert stays a string.
 *   PIO_CHAT_FORMAT_GLM4
 *       <tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value>...</tool_call>
 *       Keys and values are stripped of surrounding whitespace. A value whose parameter type is
 *       "string" in tools_json stays a string; any other value is read as JSON when it is JSON
 *       (also after undoing one level of JSON string escaping), else as a Python literal, else
 *       kept as a string.
 *   Other Qwen3-Coder types (unions like ["string", "null"], unknown names) follow the
 *   reference parser's fallback, Python's ast.literal_eval: values that are Python literals
 *   with a JSON equivalent (numbers, quoted strings, True/False/None, lists, tuples, dicts)
 *   are converted; anything else stays a string.
 *
 * The result's text is the generated text with each recognised call removed together with the
 * whitespace around it; text on both sides of a removed call is joined with one "\n".
 * Anything that is not a complete, well-formed call (an unclosed <tool_call>, bad JSON, a
 * missing name, stray tags, invalid UTF-8 inside a call) stays in the text exactly as
 * generated; it is never an error.
 *
 * arguments_json is always a JSON object, written as Python's json.dumps(args,
 * ensure_ascii=False) writes it (", " and ": " separators, keys in generation order; a repeated
 * key keeps its first position and its last value).
 */
#ifndef PIO_TOOL_CALLS_H
#define PIO_TOOL_CALLS_H

#include <stddef.h>

#include "pio/chat_format.h"
#include "pio/error.h"
#include "pio/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pio_tool_call_list {
    char *text;                          /* NUL-terminated; the text outside the calls */
    size_t text_len;
    pio_tool_call *calls;                /* n_calls ABI structs (struct_size set); their
                                          * name/arguments_json are owned by this list */
    const pio_tool_call **call_pointers; /* n_calls pointers into calls, ready for
                                          * pio_generate_response.tool_calls */
    size_t n_calls;
} pio_tool_call_list;

/*
 * Splits generated text into plain text and tool calls.
 *   text         text_len bytes (need not be NUL-terminated; NULL allowed when text_len is 0)
 *   tools_json   optional JSON array of the request's tool definitions (OpenAI form or bare),
 *                used to convert argument values by their declared types
 *   out          filled on success; release with pio_tool_call_list_free()
 * Returns PIO_OK (with zero or more calls), PIO_ERR_INVALID_ARGUMENT (NULL out, unknown
 * format, tools_json not a JSON array) or PIO_ERR_OUT_OF_MEMORY; on error *out is empty.
 */
pio_status pio_tool_calls_parse(pio_chat_format format, const char *text, size_t text_len,
                                const char *tools_json, pio_tool_call_list *out, pio_error *err);

/* Frees everything the list owns and zeroes it. Safe on a zeroed or already freed list. */
void pio_tool_call_list_free(pio_tool_call_list *list);

#ifdef __cplusplus
}
#endif

#endif
