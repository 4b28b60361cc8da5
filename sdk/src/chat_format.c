/*
 * Chat formatting entry points: format names, template detection, and turning the caller's
 * pio_chat_message list into the validated cf_chat the per-format renderers work on.
 */
#include "chat_format_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------- */
/* Names and detection                                                                        */
/* ---------------------------------------------------------------------------------------- */
typedef struct format_name {
    const char *name;
    pio_chat_format format;
} format_name;

static const format_name k_format_names[] = {
    {"qwen3", PIO_CHAT_FORMAT_QWEN3},
    {"qwen3_4b_instruct_2507", PIO_CHAT_FORMAT_QWEN3},
    {"qwen3_coder", PIO_CHAT_FORMAT_QWEN3_CODER},
    {"qwen3_coder_30b", PIO_CHAT_FORMAT_QWEN3_CODER},
    {"qwen3_vl", PIO_CHAT_FORMAT_QWEN3_VL},
    {"qwen3_vl_2b", PIO_CHAT_FORMAT_QWEN3_VL},
    {"glm4", PIO_CHAT_FORMAT_GLM4},
    {"glm_4_7", PIO_CHAT_FORMAT_GLM4},
};

pio_chat_format pio_chat_format_from_name(const char *name)
{
    if (name == NULL)
        return PIO_CHAT_FORMAT_UNKNOWN;
    for (size_t i = 0; i < sizeof k_format_names / sizeof k_format_names[0]; i++) {
        if (strcmp(name, k_format_names[i].name) == 0)
            return k_format_names[i].format;
    }
    return PIO_CHAT_FORMAT_UNKNOWN;
}

const char *pio_chat_format_name(pio_chat_format format)
{
    switch (format) {
    case PIO_CHAT_FORMAT_QWEN3: return "qwen3";
    case PIO_CHAT_FORMAT_QWEN3_CODER: return "qwen3_coder";
    case PIO_CHAT_FORMAT_QWEN3_VL: return "qwen3_vl";
    case PIO_CHAT_FORMAT_GLM4: return "glm4";
    case PIO_CHAT_FORMAT_UNKNOWN: break;
    }
    return "unknown";
}

/* Each template's distinctive text; checked in this order (the Qwen3 markers are shared). */
pio_chat_format pio_chat_format_detect(const char *template_text)
{
    if (template_text == NULL)
        return PIO_CHAT_FORMAT_UNKNOWN;
    if (strstr(template_text, "[gMASK]<sop>") != NULL && strstr(template_text, "<|assistant|>") != NULL)
        return PIO_CHAT_FORMAT_GLM4;
    if (strstr(template_text, "<|im_start|>") == NULL)
        return PIO_CHAT_FORMAT_UNKNOWN;
    if (strstr(template_text, "<function=") != NULL && strstr(template_text, "<parameter=") != NULL)
        return PIO_CHAT_FORMAT_QWEN3_CODER;
    if (strstr(template_text, "<|vision_start|>") != NULL)
        return PIO_CHAT_FORMAT_QWEN3_VL;
    if (strstr(template_text, "<tool_call>\\n{\\\"name\\\": <function-name>") != NULL)
        return PIO_CHAT_FORMAT_QWEN3;
    return PIO_CHAT_FORMAT_UNKNOWN;
}

static bool format_is_known(pio_chat_format format)
{
    return format == PIO_CHAT_FORMAT_QWEN3 || format == PIO_CHAT_FORMAT_QWEN3_CODER ||
           format == PIO_CHAT_FORMAT_QWEN3_VL || format == PIO_CHAT_FORMAT_GLM4;
}

void pio_chat_options_init(pio_chat_options *options)
{
    if (options == NULL)
        return;
    memset(options, 0, sizeof *options);
    options->add_generation_prompt = 1;
    options->enable_thinking = -1;
    options->clear_thinking = -1;
}

/* ---------------------------------------------------------------------------------------- */
/* Shared message predicates                                                                  */
/* ---------------------------------------------------------------------------------------- */
bool cf_chat_has_tools(const cf_chat *chat)
{
    return chat->tools != NULL && json_array_size(chat->tools) > 0;
}

bool cf_message_content_truthy(const cf_message *message)
{
    if (message->parts != NULL)
        return message->parts->n_parts > 0;
    return message->content != NULL && message->content[0] != '\0';
}

bool cf_message_has_tool_calls(const cf_message *message)
{
    return message->tool_calls != NULL && json_array_size(message->tool_calls) > 0;
}

static pio_status parse_arguments_string(json_t *arguments, const cf_message *message,
                                         size_t call_index, json_t **parsed, pio_error *err)
{
    char what[96];
    snprintf(what, sizeof what, "message %zu: tool call %zu: arguments string", message->index, call_index);
    pio_status status = PIO_OK;
    *parsed = cf_json_parse(json_string_value(arguments), json_string_length(arguments), 0, what,
                            &status, err);
    if (*parsed == NULL)
        return status;
    if (!json_is_object(*parsed)) {
        json_decref(*parsed);
        *parsed = NULL;
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "message %zu: tool call %zu: arguments string is not a JSON object",
                             message->index, call_index);
    }
    return PIO_OK;
}

pio_status cf_tool_call_view_get(const cf_message *message, size_t call_index,
                                 bool parse_string_arguments, cf_tool_call_view *view,
                                 pio_error *err)
{
    memset(view, 0, sizeof *view);
    json_t *call = json_array_get(message->tool_calls, call_index);
    if (!json_is_object(call))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "message %zu: tool call %zu is not a JSON object", message->index, call_index);
    json_t *function = json_object_get(call, "function");
    if (json_is_object(function))
        call = function;
    json_t *name = json_object_get(call, "name");
    if (!json_is_string(name))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "message %zu: tool call %zu has no string \"name\"", message->index, call_index);
    view->name = json_string_value(name);
    view->arguments = json_object_get(call, "arguments");
    if (parse_string_arguments && json_is_string(view->arguments)) {
        pio_status status = parse_arguments_string(view->arguments, message, call_index,
                                                   &view->owned_arguments, err);
        if (status != PIO_OK)
            return status;
        view->arguments = view->owned_arguments;
    }
    return PIO_OK;
}

cf_reasoning_split cf_split_reasoning(const char *reasoning_content, cf_span content)
{
    cf_reasoning_split split = {{"", 0}, content};
    if (reasoning_content != NULL) {
        split.reasoning = cf_span_of(reasoning_content);
        return split;
    }
    long first_close = cf_span_find(content, "</think>");
    if (first_close < 0)
        return split;
    cf_span before = cf_rstrip_newlines((cf_span){content.ptr, (size_t)first_close});
    long open = cf_span_rfind(before, "<think>");
    if (open >= 0) {
        size_t skip = (size_t)open + strlen("<think>");
        before = (cf_span){before.ptr + skip, before.len - skip};
    }
    split.reasoning = cf_lstrip_newlines(before);
    size_t after = (size_t)cf_span_rfind(content, "</think>") + strlen("</think>");
    split.content = cf_lstrip_newlines((cf_span){content.ptr + after, content.len - after});
    return split;
}

/* ---------------------------------------------------------------------------------------- */
/* Input validation and normalisation                                                         */
/* ---------------------------------------------------------------------------------------- */
static pio_status check_text(const char *text, size_t message_index, const char *field, pio_error *err)
{
    if (text != NULL && !cf_utf8_valid(text, strlen(text)))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "message %zu: %s is not valid UTF-8",
                             message_index, field);
    return PIO_OK;
}

/* Whether a format's template can take list content for this message at all. */
static pio_status check_parts_allowed(pio_chat_format format, const cf_message *message, pio_error *err)
{
    if (format != PIO_CHAT_FORMAT_QWEN3_VL && format != PIO_CHAT_FORMAT_GLM4)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "message %zu: the %s chat format takes only string content, not content parts",
                             message->index, pio_chat_format_name(format));
    if (format == PIO_CHAT_FORMAT_GLM4 && strcmp(message->role, "tool") == 0)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "message %zu: the glm4 chat format takes only string content for tool results",
                             message->index);
    if (message->parts->n_parts > 0 && message->parts->parts == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "message %zu: content parts array is NULL",
                             message->index);
    return PIO_OK;
}

/* One part: text must be valid UTF-8; media placeholders exist only in Qwen3-VL. */
static pio_status check_part(pio_chat_format format, const cf_message *message, size_t i, pio_error *err)
{
    const pio_chat_part *part = &message->parts->parts[i];
    switch (part->type) {
    case PIO_CHAT_PART_TEXT:
        if (part->text == NULL)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "message %zu: text part %zu has NULL text",
                                 message->index, i);
        return check_text(part->text, message->index, "a text part", err);
    case PIO_CHAT_PART_IMAGE:
    case PIO_CHAT_PART_VIDEO:
        if (format != PIO_CHAT_FORMAT_QWEN3_VL)
            return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                                 "message %zu: the %s chat format has no image or video placeholders",
                                 message->index, pio_chat_format_name(format));
        return PIO_OK;
    }
    return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "message %zu: part %zu has unknown type %d",
                         message->index, i, (int)part->type);
}

static pio_status check_parts(pio_chat_format format, const cf_message *message, pio_error *err)
{
    pio_status status = check_parts_allowed(format, message, err);
    for (size_t i = 0; status == PIO_OK && i < message->parts->n_parts; i++)
        status = check_part(format, message, i, err);
    return status;
}

static pio_status parse_tool_calls(const char *tool_calls_json, cf_message *message, pio_error *err)
{
    if (tool_calls_json == NULL)
        return PIO_OK;
    char what[64];
    snprintf(what, sizeof what, "message %zu: tool_calls_json", message->index);
    pio_status status = PIO_OK;
    message->tool_calls = cf_json_parse(tool_calls_json, strlen(tool_calls_json), 0, what, &status, err);
    if (message->tool_calls == NULL)
        return status;
    if (!json_is_array(message->tool_calls))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "message %zu: tool_calls_json is not a JSON array", message->index);
    return PIO_OK;
}

/* Copies one ABI message into *out, reading only the fields its struct_size covers. */
static pio_status load_message(pio_chat_format format, const pio_chat_message *in, size_t index,
                               const pio_chat_parts *parts, cf_message *out, pio_error *err)
{
    out->index = index;
    if (in == NULL || !PIO_HAS_FIELD(in, pio_chat_message, content))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "message %zu is NULL or its struct_size is too small", index);
    if (in->role == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "message %zu has no role", index);
    out->role = in->role;
    out->content = parts != NULL ? NULL : in->content;
    out->parts = parts;
    out->reasoning = PIO_HAS_FIELD(in, pio_chat_message, reasoning_content) ? in->reasoning_content : NULL;
    const char *tool_calls_json =
        PIO_HAS_FIELD(in, pio_chat_message, tool_calls_json) ? in->tool_calls_json : NULL;

    pio_status status = check_text(out->role, index, "role", err);
    if (status == PIO_OK)
        status = check_text(out->content, index, "content", err);
    if (status == PIO_OK)
        status = check_text(out->reasoning, index, "reasoning_content", err);
    if (status == PIO_OK && parts != NULL)
        status = check_parts(format, out, err);
    if (status == PIO_OK)
        status = parse_tool_calls(tool_calls_json, out, err);
    return status;
}

static pio_status load_tools(const char *tools_json, cf_chat *chat, pio_error *err)
{
    if (tools_json == NULL)
        return PIO_OK;
    pio_status status = PIO_OK;
    chat->tools = cf_json_parse(tools_json, strlen(tools_json), 0, "tools_json", &status, err);
    if (chat->tools == NULL)
        return status;
    if (!json_is_array(chat->tools))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "tools_json is not a JSON array");
    return PIO_OK;
}

static void free_chat(cf_chat *chat)
{
    for (size_t i = 0; chat->messages != NULL && i < chat->n_messages; i++)
        json_decref(chat->messages[i].tool_calls);
    free(chat->messages);
    json_decref(chat->tools);
}

static pio_status load_chat(pio_chat_format format, const pio_chat_message *const *messages,
                            size_t n_messages, const pio_chat_options *options, cf_chat *chat,
                            pio_error *err)
{
    chat->add_generation_prompt = options->add_generation_prompt != 0;
    chat->enable_thinking = options->enable_thinking < 0 ? -1 : options->enable_thinking != 0;
    chat->clear_thinking = options->clear_thinking < 0 ? -1 : options->clear_thinking != 0;
    chat->add_vision_id = options->add_vision_id != 0;
    if (n_messages > 0 && messages == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "messages is NULL but n_messages is %zu",
                             n_messages);
    chat->messages = calloc(n_messages > 0 ? n_messages : 1, sizeof *chat->messages);
    if (chat->messages == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory for %zu chat messages", n_messages);
    chat->n_messages = n_messages;
    for (size_t i = 0; i < n_messages; i++) {
        const pio_chat_parts *parts = options->content_parts != NULL ? options->content_parts[i] : NULL;
        pio_status status = load_message(format, messages[i], i, parts, &chat->messages[i], err);
        if (status != PIO_OK)
            return status;
    }
    return load_tools(options->tools_json, chat, err);
}

static pio_status render_chat(pio_chat_format format, const cf_chat *chat, cf_buf *out, pio_error *err)
{
    switch (format) {
    case PIO_CHAT_FORMAT_QWEN3: return cf_render_qwen3(chat, out, err);
    case PIO_CHAT_FORMAT_QWEN3_CODER: return cf_render_qwen3_coder(chat, out, err);
    case PIO_CHAT_FORMAT_QWEN3_VL: return cf_render_qwen3_vl(chat, out, err);
    case PIO_CHAT_FORMAT_GLM4: return cf_render_glm4(chat, out, err);
    case PIO_CHAT_FORMAT_UNKNOWN: break;
    }
    return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "unknown chat format %d", (int)format);
}

pio_status pio_chat_render(pio_chat_format format, const pio_chat_message *const *messages,
                           size_t n_messages, const pio_chat_options *options,
                           char **out_prompt, size_t *out_len, pio_error *err)
{
    if (out_prompt == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "out_prompt is NULL");
    *out_prompt = NULL;
    if (out_len != NULL)
        *out_len = 0;
    if (!format_is_known(format))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "unknown chat format %d", (int)format);
    pio_chat_options defaults;
    if (options == NULL) {
        pio_chat_options_init(&defaults);
        options = &defaults;
    }

    cf_chat chat = {0};
    cf_buf out = {0};
    pio_status status = load_chat(format, messages, n_messages, options, &chat, err);
    if (status == PIO_OK)
        status = render_chat(format, &chat, &out, err);
    free_chat(&chat);
    if (status != PIO_OK) {
        cf_buf_free(&out);
        return status;
    }
    *out_prompt = cf_buf_take(&out, out_len);
    if (*out_prompt == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory while rendering the chat prompt");
    return PIO_OK;
}

pio_status pio_chat_render_request(pio_chat_format format, const pio_chat_request *request,
                                   char **out_prompt, size_t *out_len, pio_error *err)
{
    if (out_prompt != NULL)
        *out_prompt = NULL;
    if (request == NULL || !PIO_HAS_FIELD(request, pio_chat_request, enable_thinking))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "chat request is NULL or its struct_size is too small");
    pio_chat_options options;
    pio_chat_options_init(&options);
    options.tools_json = request->tools_json;
    options.add_generation_prompt = request->add_generation_prompt;
    options.enable_thinking = request->enable_thinking;
    return pio_chat_render(format, request->messages, request->n_messages, &options, out_prompt,
                           out_len, err);
}
