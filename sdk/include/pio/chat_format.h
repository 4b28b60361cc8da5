/*
 * Chat formatting: turns a conversation (pio_chat_message list + optional tool definitions)
 * into the prompt text a model was trained on, byte for byte what Hugging Face transformers'
 * apply_chat_template produces with the model's own chat_template.jinja.
 *
 * Supported formats (one C formatter per template; no Jinja interpreter):
 *   PIO_CHAT_FORMAT_QWEN3        Qwen3-4B-Instruct-2507: ChatML, tools as JSON lines inside
 *                                <tools>, calls as <tool_call>{"name": .., "arguments": ..}</tool_call>,
 *                                <think> block for assistant turns after the last user query.
 *   PIO_CHAT_FORMAT_QWEN3_CODER  Qwen3-Coder: ChatML, tools as an XML-like <function> listing,
 *                                calls as <function=NAME><parameter=ARG>VALUE</parameter>.
 *   PIO_CHAT_FORMAT_QWEN3_VL     Qwen3-VL: ChatML with content parts (text, image, video placeholders).
 *   PIO_CHAT_FORMAT_GLM4         GLM-4.7: [gMASK]<sop><|system|>..<|user|>..<|assistant|>,
 *                                thinking on/off, <arg_key>/<arg_value> tool calls, <|observation|>.
 *
 * Inputs follow the templates' rules exactly, including their quirks:
 *   All Qwen3 formats: at least one message; a leading system message opens the prompt (with
 *     the tool list when tools are given); consecutive tool messages share one user turn of
 *     <tool_response> blocks; messages with other roles are left out (Qwen3, Qwen3-VL).
 *   Qwen3: later system messages render as turns; NULL content renders as "" except for a
 *     leading system message. Assistant turns after the last real user query (a user message
 *     that is not a <tool_response> wrapper) open with "<think>\n{reasoning}\n</think>\n\n"
 *     when they have reasoning or are the final message; reasoning comes from
 *     reasoning_content or an inline <think>..</think> in the content. enable_thinking is not
 *     read (the model is non-thinking).
 *   Qwen3-Coder: with tools and no system message a default system prompt is used; a leading
 *     system message with NULL content counts as none; user/system/assistant content must not
 *     be NULL unless the assistant turn has tool calls; a tool message right after the leading
 *     system message gets no user header (the template's own behaviour); reasoning is not
 *     rendered. A tool without "parameters" is rendered as if it had "parameters": {} (the
 *     template itself would fail on it).
 *   Qwen3-VL: later system messages are left out; NULL content renders as ""; reasoning is
 *     not rendered.
 *   GLM-4.7: no messages is fine; assistant turns keep their reasoning only after the last
 *     user message (or always, with clear_thinking 0), others open with a bare </think>;
 *     content and reasoning are stripped of surrounding whitespace; a tool message with NULL
 *     content renders as a bare <|observation|>.
 * Where a template itself would fail (e.g. a user message without content in a template that
 * concatenates it), the call fails with PIO_ERR_INVALID_ARGUMENT and a message naming the
 * message index and the problem. Inputs the templates cannot express (image parts for a
 * text-only model) give PIO_ERR_UNSUPPORTED.
 *
 * JSON (tool definitions, tool-call arguments) is re-serialised the way Python's
 * json.dumps(..., ensure_ascii=False) writes it: key order kept, ", " and ": " separators,
 * shortest round-trip floats (1e+16, 1e-05, 2.0). Limits: integers must fit in 64 bits and
 * reals must be finite (jansson refuses others; the call reports PIO_ERR_INVALID_ARGUMENT).
 *
 * Thread safety: every function is reentrant; nothing is cached between calls.
 */
#ifndef PIO_CHAT_FORMAT_H
#define PIO_CHAT_FORMAT_H

#include <stddef.h>

#include "pio/error.h"
#include "pio/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pio_chat_format {
    PIO_CHAT_FORMAT_UNKNOWN = 0,
    PIO_CHAT_FORMAT_QWEN3 = 1,
    PIO_CHAT_FORMAT_QWEN3_CODER = 2,
    PIO_CHAT_FORMAT_QWEN3_VL = 3,
    PIO_CHAT_FORMAT_GLM4 = 4
} pio_chat_format;

/*
 * Format by name. Accepts the plugin / template folder names ("qwen3_4b_instruct_2507",
 * "qwen3_coder_30b", "qwen3_vl_2b", "glm_4_7") and the short names returned by
 * pio_chat_format_name() ("qwen3", "qwen3_coder", "qwen3_vl", "glm4"). Case-sensitive.
 * Returns PIO_CHAT_FORMAT_UNKNOWN for anything else (and for NULL).
 */
pio_chat_format pio_chat_format_from_name(const char *name);

/* Short stable name of a format ("qwen3", ...); "unknown" for an unknown value. */
const char *pio_chat_format_name(pio_chat_format format);

/*
 * Recognises one of the supported templates from its Jinja text (for example the
 * chat_template of a tokenizer_config.json) by the markers each one contains.
 * Returns PIO_CHAT_FORMAT_UNKNOWN when the text matches none of them.
 */
pio_chat_format pio_chat_format_detect(const char *template_text);

/* Content parts: a message whose content is a list (Qwen3-VL images and videos). */
typedef enum pio_chat_part_type {
    PIO_CHAT_PART_TEXT = 0,  /* `text` holds UTF-8 text */
    PIO_CHAT_PART_IMAGE = 1, /* one image placeholder: <|vision_start|><|image_pad|><|vision_end|> */
    PIO_CHAT_PART_VIDEO = 2  /* one video placeholder: <|vision_start|><|video_pad|><|vision_end|> */
} pio_chat_part_type;

typedef struct pio_chat_part {
    pio_chat_part_type type;
    const char *text;        /* PIO_CHAT_PART_TEXT only; must not be NULL there */
} pio_chat_part;

typedef struct pio_chat_parts {
    const pio_chat_part *parts; /* n_parts entries, caller-owned */
    size_t n_parts;
} pio_chat_parts;

typedef struct pio_chat_options {
    /* Optional JSON array of tool definitions, OpenAI form ({"type": "function", "function":
     * {...}}) or bare ({"name": ..., "parameters": ...}). NULL or "[]" means no tools. */
    const char *tools_json;
    /* Non-zero: end with the assistant header the model continues from. */
    int add_generation_prompt;
    /* -1: the template's default; 0: off; 1: on. Only GLM-4.7's template reads it (its
     * default is on: the generation prompt ends in "<think>"; off ends in "</think>"). */
    int enable_thinking;
    /* GLM-4.7 only. -1 (default) or 1: reasoning of assistant turns before the last user
     * message is dropped; 0: every turn keeps its reasoning (the template's clear_thinking=false). */
    int clear_thinking;
    /* Qwen3-VL only: non-zero prefixes placeholders with "Picture N: " / "Video N: ". */
    int add_vision_id;
    /* Optional: NULL or an array of n_messages pointers. A non-NULL entry gives that message
     * list content (text and image/video parts) instead of its `content` string. Accepted by
     * Qwen3-VL (text, image, video) and GLM-4.7 (text parts of non-tool messages); other
     * formats and other parts give PIO_ERR_UNSUPPORTED. */
    const pio_chat_parts *const *content_parts;
} pio_chat_options;

/* Defaults: no tools, add_generation_prompt 1, enable_thinking -1, clear_thinking -1,
 * add_vision_id 0, no content parts. */
void pio_chat_options_init(pio_chat_options *options);

/*
 * Renders the prompt.
 *   messages     n_messages pointers (NULL allowed when n_messages is 0). Each message must
 *                have struct_size set and a non-NULL role; content may be NULL (the message
 *                then has no content, as in the OpenAI API for assistant tool-call turns).
 *                tool_calls_json, when set, is a JSON array of {"name": .., "arguments": {..}}
 *                (or OpenAI {"type": "function", "function": {"name", "arguments"}}).
 *                Arguments given as a JSON string holding an object are accepted: Qwen3 and
 *                Qwen3-VL print the string verbatim (as their templates do); Qwen3-Coder and
 *                GLM-4.7 parse it into an object first (as vLLM does; their templates need one).
 *                All text must be valid UTF-8.
 *   options      NULL means pio_chat_options_init() defaults.
 *   out_prompt   receives a NUL-terminated malloc'd string; the caller free()s it.
 *   out_len      optional: receives strlen(*out_prompt).
 * Returns PIO_OK, or PIO_ERR_INVALID_ARGUMENT / PIO_ERR_UNSUPPORTED / PIO_ERR_OUT_OF_MEMORY
 * with *out_prompt set to NULL and err filled.
 */
pio_status pio_chat_render(pio_chat_format format, const pio_chat_message *const *messages,
                           size_t n_messages, const pio_chat_options *options,
                           char **out_prompt, size_t *out_len, pio_error *err);

/* The same for a plugin's chat_completion request (messages, tools_json,
 * add_generation_prompt and enable_thinking are taken from it). */
pio_status pio_chat_render_request(pio_chat_format format, const pio_chat_request *request,
                                   char **out_prompt, size_t *out_len, pio_error *err);

#ifdef __cplusplus
}
#endif

#endif
