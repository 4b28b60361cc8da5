/*
 * GLM-4.7: [gMASK]<sop> then <|system|>, <|user|>, <|assistant|>, <|observation|> turns with no
 * separators, a <think>..</think> (or bare </think>) opening every assistant turn, and tool
 * calls as <tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value></tool_call>.
 * Mirrors shared/models/glm_4_7/chat_template.jinja statement by statement.
 */
#include "chat_format_internal.h"

#include <string.h>

static const char k_tools_intro[] =
    "<|system|>\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n";
static const char k_tools_outro[] =
    "</tools>\n\nFor each function call, output the function name and arguments within the "
    "following XML format:\n<tool_call>{function-name}<arg_key>{arg-key-1}</arg_key><arg_value>"
    "{arg-value-1}</arg_value><arg_key>{arg-key-2}</arg_key><arg_value>{arg-value-2}</arg_value>"
    "...</tool_call>";

static bool role_is(const cf_message *message, const char *role)
{
    return strcmp(message->role, role) == 0;
}

static void append_tool_definitions(const cf_chat *chat, cf_buf *out)
{
    cf_buf_puts(out, k_tools_intro);
    for (size_t i = 0; i < json_array_size(chat->tools); i++) {
        cf_json_dumps(out, json_array_get(chat->tools, i));
        cf_buf_append(out, "\n", 1);
    }
    cf_buf_puts(out, k_tools_outro);
}

/* The template's visible_text(): a string as is, or the text parts joined. */
static void append_visible_text(const cf_message *message, cf_buf *out)
{
    if (message->parts == NULL) {
        cf_buf_puts(out, message->content);
        return;
    }
    for (size_t i = 0; i < message->parts->n_parts; i++) {
        if (message->parts->parts[i].type == PIO_CHAT_PART_TEXT)
            cf_buf_puts(out, message->parts->parts[i].text);
    }
}

static long last_user_index(const cf_chat *chat)
{
    for (size_t i = chat->n_messages; i-- > 0;) {
        if (role_is(&chat->messages[i], "user"))
            return (long)i;
    }
    return -1;
}

/* ---------------------------------------------------------------------------------------- */
/* Assistant turns                                                                            */
/* ---------------------------------------------------------------------------------------- */
/* <arg_key>K</arg_key><arg_value>V</arg_value>: string values as they are, others as JSON. */
static void append_arguments(const json_t *arguments, cf_buf *out)
{
    const char *key;
    size_t key_len;
    json_t *value;
    json_object_keylen_foreach((json_t *)arguments, key, key_len, value) {
        cf_buf_puts(out, "<arg_key>");
        cf_buf_append(out, key, key_len);
        cf_buf_puts(out, "</arg_key><arg_value>");
        if (json_is_string(value))
            cf_buf_append(out, json_string_value(value), json_string_length(value));
        else
            cf_json_dumps(out, value);
        cf_buf_puts(out, "</arg_value>");
    }
}

static pio_status append_tool_calls(const cf_message *message, cf_buf *out, pio_error *err)
{
    for (size_t i = 0; i < json_array_size(message->tool_calls); i++) {
        cf_tool_call_view call;
        pio_status status = cf_tool_call_view_get(message, i, true, &call, err);
        if (status != PIO_OK)
            return status;
        if (!json_is_object(call.arguments)) {
            json_decref(call.owned_arguments);
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "message %zu: tool call %zu: \"arguments\" must be a JSON object",
                                 message->index, i);
        }
        cf_buf_puts(out, "<tool_call>");
        cf_buf_puts(out, call.name);
        append_arguments(call.arguments, out);
        cf_buf_puts(out, "</tool_call>");
        json_decref(call.owned_arguments);
    }
    return PIO_OK;
}

static pio_status append_assistant(const cf_chat *chat, size_t i, long last_user, cf_buf *out,
                                   pio_error *err)
{
    const cf_message *message = &chat->messages[i];
    cf_buf visible = {0};
    append_visible_text(message, &visible);
    if (visible.failed) {
        cf_buf_free(&visible);
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory while rendering message %zu", i);
    }
    cf_span text = {visible.data != NULL ? visible.data : "", visible.len};
    cf_reasoning_split split = cf_split_reasoning(message->reasoning, text);

    cf_buf_puts(out, "<|assistant|>");
    /* Reasoning is kept for turns after the last user message, or for all turns when the
     * caller passes clear_thinking=false; other turns open with a bare </think>. */
    bool keep_reasoning = chat->clear_thinking == 0 || (long)i > last_user;
    if (keep_reasoning && split.reasoning.len > 0) {
        cf_buf_puts(out, "<think>");
        cf_buf_span(out, cf_py_strip(split.reasoning));
        cf_buf_puts(out, "</think>");
    } else {
        cf_buf_puts(out, "</think>");
    }
    cf_buf_span(out, cf_py_strip(split.content));
    cf_buf_free(&visible);

    if (cf_message_has_tool_calls(message))
        return append_tool_calls(message, out, err);
    return PIO_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Other turns                                                                                */
/* ---------------------------------------------------------------------------------------- */
static void append_tool_result(const cf_chat *chat, size_t i, cf_buf *out)
{
    const cf_message *message = &chat->messages[i];
    /* Without string content the template takes its list branch, which always writes the
     * <|observation|> header and, for a missing list, nothing else. */
    if (message->content == NULL) {
        cf_buf_puts(out, "<|observation|>");
        return;
    }
    if (i == 0 || !role_is(&chat->messages[i - 1], "tool"))
        cf_buf_puts(out, "<|observation|>");
    cf_buf_puts(out, "<tool_response>");
    cf_buf_puts(out, message->content);
    cf_buf_puts(out, "</tool_response>");
}

static void append_generation_prompt(const cf_chat *chat, cf_buf *out)
{
    cf_buf_puts(out, "<|assistant|>");
    cf_buf_puts(out, chat->enable_thinking == 0 ? "</think>" : "<think>");
}

pio_status cf_render_glm4(const cf_chat *chat, cf_buf *out, pio_error *err)
{
    cf_buf_puts(out, "[gMASK]<sop>");
    if (cf_chat_has_tools(chat))
        append_tool_definitions(chat, out);
    long last_user = last_user_index(chat);
    pio_status status = PIO_OK;
    for (size_t i = 0; i < chat->n_messages && status == PIO_OK; i++) {
        const cf_message *message = &chat->messages[i];
        if (role_is(message, "user")) {
            cf_buf_puts(out, "<|user|>");
            append_visible_text(message, out);
        } else if (role_is(message, "assistant")) {
            status = append_assistant(chat, i, last_user, out, err);
        } else if (role_is(message, "tool")) {
            append_tool_result(chat, i, out);
        } else if (role_is(message, "system")) {
            cf_buf_puts(out, "<|system|>");
            append_visible_text(message, out);
        }
        /* Other roles are left out, as the template does. */
    }
    if (status == PIO_OK && chat->add_generation_prompt)
        append_generation_prompt(chat, out);
    return status;
}
