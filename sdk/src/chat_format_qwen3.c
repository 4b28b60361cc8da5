/*
 * ChatML formats with JSON tool calls: Qwen3-4B-Instruct-2507 and Qwen3-VL-Instruct.
 * Mirrors shared/models/qwen3_4b_instruct_2507/chat_template.jinja and
 * shared/models/qwen3_vl_2b/chat_template.jinja statement by statement.
 */
#include "chat_format_internal.h"

#include <stdio.h>
#include <string.h>

static const char k_tools_intro[] =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
static const char k_tools_outro[] =
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";

static bool role_is(const cf_message *message, const char *role)
{
    return strcmp(message->role, role) == 0;
}

/* Tool definitions: one `tool | tojson` line each. */
static void append_tool_definitions(const cf_chat *chat, cf_buf *out)
{
    cf_buf_puts(out, k_tools_intro);
    for (size_t i = 0; i < json_array_size(chat->tools); i++) {
        cf_buf_append(out, "\n", 1);
        cf_json_dumps(out, json_array_get(chat->tools, i));
    }
    cf_buf_puts(out, k_tools_outro);
}

/* <tool_call>\n{"name": "NAME", "arguments": ARGS}\n</tool_call> per call; a newline goes
 * before each call except a first one that follows empty content. */
static pio_status append_json_tool_calls(const cf_message *message, bool content_truthy,
                                         cf_buf *out, pio_error *err)
{
    for (size_t i = 0; i < json_array_size(message->tool_calls); i++) {
        cf_tool_call_view call;
        pio_status status = cf_tool_call_view_get(message, i, false, &call, err);
        if (status != PIO_OK)
            return status;
        if (call.arguments == NULL)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "message %zu: tool call %zu has no \"arguments\"", message->index, i);
        if (i > 0 || content_truthy)
            cf_buf_append(out, "\n", 1);
        cf_buf_puts(out, "<tool_call>\n{\"name\": \"");
        cf_buf_puts(out, call.name);
        cf_buf_puts(out, "\", \"arguments\": ");
        /* A string is printed as it is (the template does not re-encode it). */
        if (json_is_string(call.arguments))
            cf_py_str(out, call.arguments);
        else
            cf_json_dumps(out, call.arguments);
        cf_buf_puts(out, "}\n</tool_call>");
    }
    return PIO_OK;
}

static pio_status require_messages(const cf_chat *chat, const char *format, pio_error *err)
{
    if (chat->n_messages == 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "the %s chat template needs at least one message", format);
    return PIO_OK;
}

static pio_status require_content(const cf_message *message, pio_error *err)
{
    if (message->content == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "message %zu (%s) has no content",
                             message->index, message->role);
    return PIO_OK;
}

/* A tool message opens a user turn unless it follows another tool message, and closes the
 * turn unless another tool message follows. */
static bool tool_opens_turn(const cf_chat *chat, size_t i)
{
    return i == 0 || !role_is(&chat->messages[i - 1], "tool");
}

static bool tool_closes_turn(const cf_chat *chat, size_t i)
{
    return i + 1 == chat->n_messages || !role_is(&chat->messages[i + 1], "tool");
}

/* ======================================================================================== */
/* Qwen3-4B-Instruct-2507                                                                   */
/* ======================================================================================== */
static pio_status qwen3_system_block(const cf_chat *chat, cf_buf *out, pio_error *err)
{
    const cf_message *first = &chat->messages[0];
    bool first_is_system = role_is(first, "system");
    if (first_is_system) {
        pio_status status = require_content(first, err);
        if (status != PIO_OK)
            return status;
    }
    if (cf_chat_has_tools(chat)) {
        cf_buf_puts(out, "<|im_start|>system\n");
        if (first_is_system) {
            cf_buf_puts(out, first->content);
            cf_buf_puts(out, "\n\n");
        }
        append_tool_definitions(chat, out);
    } else if (first_is_system) {
        cf_buf_puts(out, "<|im_start|>system\n");
        cf_buf_puts(out, first->content);
        cf_buf_puts(out, "<|im_end|>\n");
    }
    return PIO_OK;
}

/* The last user message that is a real query, not a tool result passed back as user text;
 * assistant turns after it show their reasoning. Defaults to the last message. */
static size_t qwen3_last_query_index(const cf_chat *chat)
{
    for (size_t i = chat->n_messages; i-- > 0;) {
        const cf_message *message = &chat->messages[i];
        if (!role_is(message, "user") || message->content == NULL)
            continue;
        cf_span content = cf_span_of(message->content);
        bool is_tool_output = cf_span_starts_with(content, "<tool_response>") &&
                              cf_span_ends_with(content, "</tool_response>");
        if (!is_tool_output)
            return i;
    }
    return chat->n_messages - 1;
}

static pio_status qwen3_assistant(const cf_chat *chat, size_t i, size_t last_query, cf_buf *out,
                                  pio_error *err)
{
    const cf_message *message = &chat->messages[i];
    cf_reasoning_split split = cf_split_reasoning(message->reasoning, cf_span_of(message->content));
    bool is_last = i + 1 == chat->n_messages;
    if (i > last_query && (is_last || split.reasoning.len > 0)) {
        cf_buf_puts(out, "<|im_start|>assistant\n<think>\n");
        cf_buf_span(out, cf_strip_newlines(split.reasoning));
        cf_buf_puts(out, "\n</think>\n\n");
        cf_buf_span(out, cf_lstrip_newlines(split.content));
    } else {
        cf_buf_puts(out, "<|im_start|>assistant\n");
        cf_buf_span(out, split.content);
    }
    if (cf_message_has_tool_calls(message)) {
        pio_status status = append_json_tool_calls(message, split.content.len > 0, out, err);
        if (status != PIO_OK)
            return status;
    }
    cf_buf_puts(out, "<|im_end|>\n");
    return PIO_OK;
}

static void qwen3_tool(const cf_chat *chat, size_t i, cf_buf *out)
{
    if (tool_opens_turn(chat, i))
        cf_buf_puts(out, "<|im_start|>user");
    cf_buf_puts(out, "\n<tool_response>\n");
    cf_buf_puts(out, chat->messages[i].content);
    cf_buf_puts(out, "\n</tool_response>");
    if (tool_closes_turn(chat, i))
        cf_buf_puts(out, "<|im_end|>\n");
}

pio_status cf_render_qwen3(const cf_chat *chat, cf_buf *out, pio_error *err)
{
    pio_status status = require_messages(chat, "qwen3", err);
    if (status == PIO_OK)
        status = qwen3_system_block(chat, out, err);
    if (status != PIO_OK)
        return status;
    size_t last_query = qwen3_last_query_index(chat);
    for (size_t i = 0; i < chat->n_messages && status == PIO_OK; i++) {
        const cf_message *message = &chat->messages[i];
        /* Missing content renders as '' here (the template tests `content is string`). */
        if (role_is(message, "user") || (role_is(message, "system") && i > 0)) {
            cf_buf_puts(out, "<|im_start|>");
            cf_buf_puts(out, message->role);
            cf_buf_append(out, "\n", 1);
            cf_buf_puts(out, message->content);
            cf_buf_puts(out, "<|im_end|>\n");
        } else if (role_is(message, "assistant")) {
            status = qwen3_assistant(chat, i, last_query, out, err);
        } else if (role_is(message, "tool")) {
            qwen3_tool(chat, i, out);
        }
        /* Any other role is left out, as the template does. */
    }
    if (status == PIO_OK && chat->add_generation_prompt)
        cf_buf_puts(out, "<|im_start|>assistant\n");
    return status;
}

/* ======================================================================================== */
/* Qwen3-VL                                                                                 */
/* ======================================================================================== */
typedef struct vl_counters {
    unsigned images;
    unsigned videos;
} vl_counters;

static void vl_append_placeholder(const cf_chat *chat, pio_chat_part_type type, vl_counters *counters,
                                  cf_buf *out)
{
    char label[48];
    if (type == PIO_CHAT_PART_IMAGE) {
        counters->images++;
        if (chat->add_vision_id) {
            snprintf(label, sizeof label, "Picture %u: ", counters->images);
            cf_buf_puts(out, label);
        }
        cf_buf_puts(out, "<|vision_start|><|image_pad|><|vision_end|>");
    } else {
        counters->videos++;
        if (chat->add_vision_id) {
            snprintf(label, sizeof label, "Video %u: ", counters->videos);
            cf_buf_puts(out, label);
        }
        cf_buf_puts(out, "<|vision_start|><|video_pad|><|vision_end|>");
    }
}

/* Message content: the string, or the parts in order. Media placeholders are written only
 * where the template writes them (user and tool messages); elsewhere only text parts count. */
static void vl_append_content(const cf_chat *chat, const cf_message *message, vl_counters *counters,
                              cf_buf *out)
{
    if (message->parts == NULL) {
        cf_buf_puts(out, message->content);
        return;
    }
    for (size_t i = 0; i < message->parts->n_parts; i++) {
        const pio_chat_part *part = &message->parts->parts[i];
        if (part->type == PIO_CHAT_PART_TEXT)
            cf_buf_puts(out, part->text);
        else if (counters != NULL)
            vl_append_placeholder(chat, part->type, counters, out);
    }
}

static void vl_system_block(const cf_chat *chat, cf_buf *out)
{
    const cf_message *first = &chat->messages[0];
    bool first_is_system = role_is(first, "system");
    if (cf_chat_has_tools(chat)) {
        cf_buf_puts(out, "<|im_start|>system\n");
        if (first_is_system) {
            vl_append_content(chat, first, NULL, out);
            cf_buf_puts(out, "\n\n");
        }
        append_tool_definitions(chat, out);
    } else if (first_is_system) {
        cf_buf_puts(out, "<|im_start|>system\n");
        vl_append_content(chat, first, NULL, out);
        cf_buf_puts(out, "<|im_end|>\n");
    }
}

static pio_status vl_assistant(const cf_chat *chat, const cf_message *message, cf_buf *out, pio_error *err)
{
    cf_buf_puts(out, "<|im_start|>assistant\n");
    vl_append_content(chat, message, NULL, out);
    if (cf_message_has_tool_calls(message)) {
        pio_status status = append_json_tool_calls(message, cf_message_content_truthy(message), out, err);
        if (status != PIO_OK)
            return status;
    }
    cf_buf_puts(out, "<|im_end|>\n");
    return PIO_OK;
}

static void vl_tool(const cf_chat *chat, size_t i, vl_counters *counters, cf_buf *out)
{
    if (tool_opens_turn(chat, i))
        cf_buf_puts(out, "<|im_start|>user");
    cf_buf_puts(out, "\n<tool_response>\n");
    vl_append_content(chat, &chat->messages[i], counters, out);
    cf_buf_puts(out, "\n</tool_response>");
    if (tool_closes_turn(chat, i))
        cf_buf_puts(out, "<|im_end|>\n");
}

pio_status cf_render_qwen3_vl(const cf_chat *chat, cf_buf *out, pio_error *err)
{
    pio_status status = require_messages(chat, "qwen3_vl", err);
    if (status != PIO_OK)
        return status;
    vl_system_block(chat, out);
    vl_counters counters = {0, 0};
    for (size_t i = 0; i < chat->n_messages && status == PIO_OK; i++) {
        const cf_message *message = &chat->messages[i];
        if (role_is(message, "user")) {
            cf_buf_puts(out, "<|im_start|>user\n");
            vl_append_content(chat, message, &counters, out);
            cf_buf_puts(out, "<|im_end|>\n");
        } else if (role_is(message, "assistant")) {
            status = vl_assistant(chat, message, out, err);
        } else if (role_is(message, "tool")) {
            vl_tool(chat, i, &counters, out);
        }
        /* System messages after the first, and unknown roles, are left out by this template. */
    }
    if (status == PIO_OK && chat->add_generation_prompt)
        cf_buf_puts(out, "<|im_start|>assistant\n");
    return status;
}
