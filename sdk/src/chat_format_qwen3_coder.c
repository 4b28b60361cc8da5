/*
 * Qwen3-Coder: ChatML with tool definitions listed as XML-like <function> blocks and calls
 * written as <function=NAME><parameter=ARG>VALUE</parameter>. Mirrors
 * shared/models/qwen3_coder_30b/chat_template.jinja statement by statement; values the
 * template prints with `|string` or `~` come out as Python's str() of them ('True', "{'a': 1}").
 */
#include "chat_format_internal.h"

#include <string.h>

static const char k_default_system[] =
    "You are Qwen, a helpful AI assistant that can interact with a computer to solve tasks.";
static const char k_functions_intro[] = "\n\nYou have access to the following functions:\n\n<tools>";
static const char k_call_instructions[] =
    "\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n"
    "</parameter>\n<parameter=example_parameter_2>\nThis is the value for the second parameter\n"
    "that can span\nmultiple lines\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\n"
    "Reminder:\n- Function calls MUST follow the specified format: an inner <function=...></function> "
    "block must be nested within <tool_call></tool_call> XML tags\n- Required parameters MUST be "
    "specified\n- You may provide optional reasoning for your function call in natural language "
    "BEFORE the function call, but NOT after\n- If there is no function call available, answer the "
    "question like normal with your current knowledge and do not tell the user about function "
    "calls\n</IMPORTANT>";

/* Keys of a parameter schema that get their own lines; every other key is printed generically. */
static const char *const k_handled_parameter_keys[] = {"type", "description", "enum", "required"};

static bool role_is(const cf_message *message, const char *role)
{
    return strcmp(message->role, role) == 0;
}

/* `x ~ y` and `x | string` print Python's str(y); an undefined y prints nothing. */
static void append_str(cf_buf *out, const json_t *value)
{
    if (value != NULL)
        cf_py_str(out, value);
}

/* `value | trim`: str(value).strip(); an undefined value gives ''. */
static void append_trimmed_str(cf_buf *out, const json_t *value)
{
    if (value == NULL)
        return;
    cf_buf text = {0};
    cf_py_str(&text, value);
    if (text.failed) {
        out->failed = true;
    } else if (text.data != NULL) {
        cf_buf_span(out, cf_py_strip((cf_span){text.data, text.len}));
    }
    cf_buf_free(&text);
}

/* ---------------------------------------------------------------------------------------- */
/* render_item_list(items, tag): "\n<tag>[`a`, 1, None]</tag>" for any non-empty iterable.   */
/* ---------------------------------------------------------------------------------------- */
static void append_backticked(cf_buf *out, const char *text, size_t len)
{
    cf_buf_append(out, "`", 1);
    cf_buf_append(out, text, len);
    cf_buf_append(out, "`", 1);
}

static void append_list_items_of_string(cf_buf *out, cf_span text)
{
    /* Iterating a Python string yields its code points, each itself a string. */
    for (size_t i = 0; i < text.len;) {
        uint32_t cp;
        size_t n = cf_utf8_decode(text.ptr + i, text.len - i, &cp);
        if (i > 0)
            cf_buf_puts(out, ", ");
        append_backticked(out, text.ptr + i, n);
        i += n;
    }
}

static void append_list_items_of_array(cf_buf *out, const json_t *array)
{
    for (size_t i = 0; i < json_array_size(array); i++) {
        const json_t *item = json_array_get(array, i);
        if (i > 0)
            cf_buf_puts(out, ", ");
        if (json_is_string(item))
            append_backticked(out, json_string_value(item), json_string_length(item));
        else
            cf_py_str(out, item);
    }
}

static void append_list_items_of_object(cf_buf *out, const json_t *object)
{
    /* Iterating a dict yields its keys. */
    const char *key;
    size_t key_len;
    json_t *member;
    bool first = true;
    json_object_keylen_foreach((json_t *)object, key, key_len, member) {
        (void)member;
        if (!first)
            cf_buf_puts(out, ", ");
        first = false;
        append_backticked(out, key, key_len);
    }
}

static bool is_non_empty_iterable(const json_t *items)
{
    if (json_is_string(items))
        return json_string_length(items) > 0;
    if (json_is_array(items))
        return json_array_size(items) > 0;
    if (json_is_object(items))
        return json_object_size(items) > 0;
    return false; /* undefined, null, numbers and booleans are not iterable */
}

static void append_item_list(cf_buf *out, const json_t *items, const char *tag)
{
    if (!is_non_empty_iterable(items))
        return;
    cf_buf_puts(out, "\n<");
    cf_buf_puts(out, tag);
    cf_buf_puts(out, ">[");
    if (json_is_string(items))
        append_list_items_of_string(out, (cf_span){json_string_value(items), json_string_length(items)});
    else if (json_is_array(items))
        append_list_items_of_array(out, items);
    else
        append_list_items_of_object(out, items);
    cf_buf_puts(out, "]</");
    cf_buf_puts(out, tag);
    cf_buf_puts(out, ">");
}

/* ---------------------------------------------------------------------------------------- */
/* Tool definitions                                                                           */
/* ---------------------------------------------------------------------------------------- */
static bool is_handled_parameter_key(const char *key)
{
    for (size_t i = 0; i < sizeof k_handled_parameter_keys / sizeof k_handled_parameter_keys[0]; i++) {
        if (strcmp(key, k_handled_parameter_keys[i]) == 0)
            return true;
    }
    return false;
}

/* The tag name for an extra schema key: '-' and ' ' become '_', '$' is dropped. */
static void append_normalised_key(cf_buf *out, const char *key, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = key[i];
        if (c == '$')
            continue;
        if (c == '-' || c == ' ')
            c = '_';
        cf_buf_append(out, &c, 1);
    }
}

/* An extra key becomes "\n<key>VALUE</key>": objects as JSON, anything else as str(). */
static void append_extra_parameter_key(cf_buf *out, const char *key, size_t key_len, const json_t *value)
{
    cf_buf_puts(out, "\n<");
    append_normalised_key(out, key, key_len);
    cf_buf_puts(out, ">");
    if (json_is_object(value))
        cf_json_dumps(out, value);
    else
        cf_py_str(out, value);
    cf_buf_puts(out, "</");
    append_normalised_key(out, key, key_len);
    cf_buf_puts(out, ">");
}

static void append_parameter(cf_buf *out, const char *name, size_t name_len, const json_t *fields)
{
    cf_buf_puts(out, "\n<parameter>\n<name>");
    cf_buf_append(out, name, name_len);
    cf_buf_puts(out, "</name>");
    const json_t *type = json_object_get(fields, "type");
    if (type != NULL) {
        cf_buf_puts(out, "\n<type>");
        cf_py_str(out, type);
        cf_buf_puts(out, "</type>");
    }
    const json_t *description = json_object_get(fields, "description");
    if (description != NULL) {
        cf_buf_puts(out, "\n<description>");
        append_trimmed_str(out, description);
        cf_buf_puts(out, "</description>");
    }
    append_item_list(out, json_object_get(fields, "enum"), "enum");
    const char *key;
    size_t key_len;
    json_t *value;
    json_object_keylen_foreach((json_t *)fields, key, key_len, value) {
        if (!is_handled_parameter_key(key))
            append_extra_parameter_key(out, key, key_len, value);
    }
    append_item_list(out, json_object_get(fields, "required"), "required");
    cf_buf_puts(out, "\n</parameter>");
}

static pio_status append_parameters(cf_buf *out, size_t tool_index, const json_t *parameters, pio_error *err)
{
    cf_buf_puts(out, "\n<parameters>");
    /* A schema that is not an object has no properties and no required list (Jinja gives
     * undefined for both); an absent "parameters" is treated the same way. */
    const json_t *properties = json_is_object(parameters) ? json_object_get(parameters, "properties") : NULL;
    if (properties != NULL && !json_is_object(properties))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "tool %zu: \"parameters.properties\" is not a JSON object", tool_index);
    const char *name;
    size_t name_len;
    json_t *fields;
    json_object_keylen_foreach((json_t *)properties, name, name_len, fields) {
        if (!json_is_object(fields))
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "tool %zu: parameter \"%s\" is not a JSON object", tool_index, name);
        append_parameter(out, name, name_len, fields);
    }
    if (json_is_object(parameters))
        append_item_list(out, json_object_get(parameters, "required"), "required");
    cf_buf_puts(out, "\n</parameters>");
    return PIO_OK;
}

static pio_status append_tool_definition(cf_buf *out, size_t tool_index, const json_t *tool, pio_error *err)
{
    if (!json_is_object(tool))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "tool %zu is not a JSON object", tool_index);
    const json_t *function = json_object_get(tool, "function");
    if (function != NULL) {
        if (!json_is_object(function))
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "tool %zu: \"function\" is not a JSON object", tool_index);
        tool = function;
    }
    cf_buf_puts(out, "\n<function>\n<name>");
    append_str(out, json_object_get(tool, "name"));
    cf_buf_puts(out, "</name>\n<description>");
    append_trimmed_str(out, json_object_get(tool, "description"));
    cf_buf_puts(out, "</description>");
    pio_status status = append_parameters(out, tool_index, json_object_get(tool, "parameters"), err);
    if (status != PIO_OK)
        return status;
    const json_t *returns = json_object_get(tool, "return");
    if (returns != NULL) {
        cf_buf_puts(out, "\n<return>");
        if (json_is_object(returns))
            cf_json_dumps(out, returns);
        else
            cf_py_str(out, returns);
        cf_buf_puts(out, "</return>");
    }
    cf_buf_puts(out, "\n</function>");
    return PIO_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* System block                                                                               */
/* ---------------------------------------------------------------------------------------- */
static pio_status append_system_block(const cf_chat *chat, cf_buf *out, pio_error *err)
{
    const cf_message *first = &chat->messages[0];
    /* A leading system message without content counts as no system message (the template's
     * system_message is then undefined), but it is still not rendered as a turn. */
    bool has_system = role_is(first, "system") && first->content != NULL;
    bool has_tools = cf_chat_has_tools(chat);
    if (has_system) {
        cf_buf_puts(out, "<|im_start|>system\n");
        cf_buf_puts(out, first->content);
    } else if (has_tools) {
        cf_buf_puts(out, "<|im_start|>system\n");
        cf_buf_puts(out, k_default_system);
    }
    if (has_tools) {
        cf_buf_puts(out, k_functions_intro);
        for (size_t i = 0; i < json_array_size(chat->tools); i++) {
            pio_status status = append_tool_definition(out, i, json_array_get(chat->tools, i), err);
            if (status != PIO_OK)
                return status;
        }
        cf_buf_puts(out, "\n</tools>");
        cf_buf_puts(out, k_call_instructions);
    }
    if (has_system || has_tools)
        cf_buf_puts(out, "<|im_end|>\n");
    return PIO_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Messages                                                                                   */
/* ---------------------------------------------------------------------------------------- */
static pio_status append_xml_tool_call(const cf_message *message, size_t call_index, cf_buf *out,
                                       pio_error *err)
{
    cf_tool_call_view call;
    pio_status status = cf_tool_call_view_get(message, call_index, true, &call, err);
    if (status != PIO_OK)
        return status;
    if (call.arguments != NULL && !json_is_object(call.arguments)) {
        json_decref(call.owned_arguments);
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "message %zu: tool call %zu: \"arguments\" is not a JSON object",
                             message->index, call_index);
    }
    cf_buf_puts(out, "\n<tool_call>\n<function=");
    cf_buf_puts(out, call.name);
    cf_buf_puts(out, ">\n");
    const char *key;
    size_t key_len;
    json_t *value;
    json_object_keylen_foreach(call.arguments, key, key_len, value) {
        cf_buf_puts(out, "<parameter=");
        cf_buf_append(out, key, key_len);
        cf_buf_puts(out, ">\n");
        cf_py_str(out, value);
        cf_buf_puts(out, "\n</parameter>\n");
    }
    cf_buf_puts(out, "</function>\n</tool_call>");
    json_decref(call.owned_arguments);
    return PIO_OK;
}

static pio_status append_assistant_tool_calls(const cf_message *message, cf_buf *out, pio_error *err)
{
    cf_buf_puts(out, "<|im_start|>assistant");
    cf_span content = cf_py_strip(cf_span_of(message->content));
    if (content.len > 0) {
        cf_buf_append(out, "\n", 1);
        cf_buf_span(out, content);
        cf_buf_append(out, "\n", 1);
    }
    for (size_t i = 0; i < json_array_size(message->tool_calls); i++) {
        pio_status status = append_xml_tool_call(message, i, out, err);
        if (status != PIO_OK)
            return status;
    }
    cf_buf_puts(out, "<|im_end|>\n");
    return PIO_OK;
}

/* A tool message opens a user turn only when a non-tool message precedes it in the loop (a
 * tool message first in the loop gets no header), and closes it unless a tool message follows. */
static void append_tool_response(const cf_message *loop, size_t n, size_t i, cf_buf *out)
{
    if (i > 0 && !role_is(&loop[i - 1], "tool"))
        cf_buf_puts(out, "<|im_start|>user\n");
    cf_buf_puts(out, "<tool_response>\n");
    cf_buf_puts(out, loop[i].content);
    cf_buf_puts(out, "\n</tool_response>\n");
    if (i + 1 == n || !role_is(&loop[i + 1], "tool"))
        cf_buf_puts(out, "<|im_end|>\n");
}

static pio_status append_plain_turn(const cf_message *message, cf_buf *out, pio_error *err)
{
    if (message->content == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "message %zu (%s) has no content",
                             message->index, message->role);
    cf_buf_puts(out, "<|im_start|>");
    cf_buf_puts(out, message->role);
    cf_buf_append(out, "\n", 1);
    cf_buf_puts(out, message->content);
    cf_buf_puts(out, "<|im_end|>\n");
    return PIO_OK;
}

pio_status cf_render_qwen3_coder(const cf_chat *chat, cf_buf *out, pio_error *err)
{
    if (chat->n_messages == 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "the qwen3_coder chat template needs at least one message");
    pio_status status = append_system_block(chat, out, err);
    if (status != PIO_OK)
        return status;
    /* The loop skips a leading system message. */
    size_t skip = role_is(&chat->messages[0], "system") ? 1 : 0;
    const cf_message *loop = chat->messages + skip;
    size_t n = chat->n_messages - skip;
    for (size_t i = 0; i < n && status == PIO_OK; i++) {
        const cf_message *message = &loop[i];
        if (role_is(message, "assistant") && cf_message_has_tool_calls(message))
            status = append_assistant_tool_calls(message, out, err);
        else if (role_is(message, "tool"))
            append_tool_response(loop, n, i, out);
        else
            status = append_plain_turn(message, out, err);
    }
    if (status == PIO_OK && chat->add_generation_prompt)
        cf_buf_puts(out, "<|im_start|>assistant\n");
    return status;
}
