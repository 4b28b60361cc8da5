/*
 * Freezes the ABI: the size and member offsets of every struct that crosses between host and
 * plugin (x86-64 / aarch64, LP64). If one of these fails to compile, the change broke plugins
 * built against ABI 1.0: append fields at the end instead and bump PIO_ABI_MINOR.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "pio/plugin.h"

#define FROZEN_SIZE(type, size) _Static_assert(sizeof(type) == (size), #type " size changed")
#define FROZEN_OFFSET(type, member, offset)                                                  \
    _Static_assert(offsetof(type, member) == (offset), #type "." #member " moved")

_Static_assert(sizeof(void *) == 8, "the frozen layout below is for LP64 targets");

FROZEN_SIZE(pio_host_services, 104);
FROZEN_OFFSET(pio_host_services, log, 8);
FROZEN_OFFSET(pio_host_services, set_error, 16);
FROZEN_OFFSET(pio_host_services, config_get_str, 24);
FROZEN_OFFSET(pio_host_services, config_get_bool, 48);
FROZEN_OFFSET(pio_host_services, progress, 56);
FROZEN_OFFSET(pio_host_services, should_abort, 64);
FROZEN_OFFSET(pio_host_services, mem_reserve, 72);
FROZEN_OFFSET(pio_host_services, mem_release, 80);
FROZEN_OFFSET(pio_host_services, config_get_list_size, 88);
FROZEN_OFFSET(pio_host_services, config_get_list_str, 96);

FROZEN_SIZE(pio_host_context, 24);
FROZEN_OFFSET(pio_host_context, abi_major, 4);
FROZEN_OFFSET(pio_host_context, abi_minor, 6);
FROZEN_OFFSET(pio_host_context, services, 8);
FROZEN_OFFSET(pio_host_context, host, 16);

FROZEN_SIZE(pio_sampling_params, 48);
FROZEN_OFFSET(pio_sampling_params, fields_set, 4);
FROZEN_OFFSET(pio_sampling_params, temperature, 8);
FROZEN_OFFSET(pio_sampling_params, top_k, 16);
FROZEN_OFFSET(pio_sampling_params, frequency_penalty, 32);
FROZEN_OFFSET(pio_sampling_params, seed, 40);

FROZEN_SIZE(pio_stop_conditions, 48);
FROZEN_OFFSET(pio_stop_conditions, stop_strings, 8);
FROZEN_OFFSET(pio_stop_conditions, stop_token_ids, 24);
FROZEN_OFFSET(pio_stop_conditions, ignore_eos, 40);

FROZEN_SIZE(pio_generate_request, 64);
FROZEN_OFFSET(pio_generate_request, prompt, 8);
FROZEN_OFFSET(pio_generate_request, max_new_tokens, 24);
FROZEN_OFFSET(pio_generate_request, sampling, 32);
FROZEN_OFFSET(pio_generate_request, on_token, 48);
FROZEN_OFFSET(pio_generate_request, user_data, 56);

FROZEN_SIZE(pio_chat_message, 48);
FROZEN_OFFSET(pio_chat_message, role, 8);
FROZEN_OFFSET(pio_chat_message, name, 40);

FROZEN_SIZE(pio_chat_request, 80);
FROZEN_OFFSET(pio_chat_request, messages, 8);
FROZEN_OFFSET(pio_chat_request, tools_json, 24);
FROZEN_OFFSET(pio_chat_request, add_generation_prompt, 32);
FROZEN_OFFSET(pio_chat_request, max_new_tokens, 40);
FROZEN_OFFSET(pio_chat_request, sampling, 48);
FROZEN_OFFSET(pio_chat_request, user_data, 72);

FROZEN_SIZE(pio_tool_call, 24);
FROZEN_SIZE(pio_usage, 32);
FROZEN_SIZE(pio_timings, 48);

FROZEN_SIZE(pio_generate_response, 152);
FROZEN_OFFSET(pio_generate_response, text, 8);
FROZEN_OFFSET(pio_generate_response, token_ids, 24);
FROZEN_OFFSET(pio_generate_response, finish_reason, 40);
FROZEN_OFFSET(pio_generate_response, usage, 48);
FROZEN_OFFSET(pio_generate_response, timings, 80);
FROZEN_OFFSET(pio_generate_response, tool_calls, 128);
FROZEN_OFFSET(pio_generate_response, n_tool_calls, 136);
FROZEN_OFFSET(pio_generate_response, reasoning_text, 144);

FROZEN_SIZE(pio_infer_request, 56);
FROZEN_OFFSET(pio_infer_request, tokens, 8);
FROZEN_OFFSET(pio_infer_request, positions, 24);
FROZEN_OFFSET(pio_infer_request, logits_mode, 32);
FROZEN_OFFSET(pio_infer_request, logits, 40);
FROZEN_SIZE(pio_infer_result, 24);
FROZEN_SIZE(pio_model_info, 88);
FROZEN_OFFSET(pio_model_info, backend, 48);
FROZEN_OFFSET(pio_model_info, active_weight_bytes, 56);
FROZEN_OFFSET(pio_model_info, kv_bytes_per_token, 64);
FROZEN_OFFSET(pio_model_info, routed_weight_bytes, 72); /* ABI 1.1 */
FROZEN_OFFSET(pio_model_info, routed_experts, 80);
FROZEN_OFFSET(pio_model_info, experts_per_token, 84);
FROZEN_SIZE(pio_init_params, 48);
FROZEN_SIZE(pio_load_params, 40);
FROZEN_OFFSET(pio_load_params, device, 24);
FROZEN_OFFSET(pio_load_params, flags, 32);

FROZEN_SIZE(pio_plugin_vtable, 96);
FROZEN_OFFSET(pio_plugin_vtable, initialize, 8);
FROZEN_OFFSET(pio_plugin_vtable, load_model, 16);
FROZEN_OFFSET(pio_plugin_vtable, get_model_info, 24);
FROZEN_OFFSET(pio_plugin_vtable, infer, 32);
FROZEN_OFFSET(pio_plugin_vtable, cleanup, 40);
FROZEN_OFFSET(pio_plugin_vtable, tokenize, 48);
FROZEN_OFFSET(pio_plugin_vtable, detokenize, 56);
FROZEN_OFFSET(pio_plugin_vtable, generate_text, 64);
FROZEN_OFFSET(pio_plugin_vtable, chat_completion, 72);
FROZEN_OFFSET(pio_plugin_vtable, free_response, 80);
FROZEN_OFFSET(pio_plugin_vtable, get_extension, 88);

FROZEN_SIZE(pio_plugin_descriptor, 72);
FROZEN_OFFSET(pio_plugin_descriptor, abi_major, 4);
FROZEN_OFFSET(pio_plugin_descriptor, abi_minor, 6);
FROZEN_OFFSET(pio_plugin_descriptor, name, 8);
FROZEN_OFFSET(pio_plugin_descriptor, version, 16);
FROZEN_OFFSET(pio_plugin_descriptor, architectures, 24);
FROZEN_OFFSET(pio_plugin_descriptor, capabilities, 32);
FROZEN_OFFSET(pio_plugin_descriptor, sdk_version, 40);
FROZEN_OFFSET(pio_plugin_descriptor, cuda_runtime_version, 48);
FROZEN_OFFSET(pio_plugin_descriptor, cuda_architectures, 56);
FROZEN_OFFSET(pio_plugin_descriptor, vtable, 64);

/* A struct written by an older peer: its struct_size ends before the newer fields. */
static void has_field_respects_struct_size(void **state)
{
    (void)state;
    pio_model_info info = {0};
    info.struct_size = (uint32_t)offsetof(pio_model_info, weight_bytes);
    assert_true(PIO_HAS_FIELD(&info, pio_model_info, vocab_size));
    assert_true(PIO_HAS_FIELD(&info, pio_model_info, n_parameters));
    assert_false(PIO_HAS_FIELD(&info, pio_model_info, weight_bytes));
    assert_false(PIO_HAS_FIELD(&info, pio_model_info, backend));
    info.struct_size = sizeof info;
    assert_true(PIO_HAS_FIELD(&info, pio_model_info, backend));
    assert_true(PIO_HAS_FIELD(&info, pio_model_info, kv_bytes_per_token));
    info.struct_size = (uint32_t)offsetof(pio_model_info, active_weight_bytes);
    assert_true(PIO_HAS_FIELD(&info, pio_model_info, backend));
    assert_false(PIO_HAS_FIELD(&info, pio_model_info, active_weight_bytes));
    info.struct_size = (uint32_t)offsetof(pio_model_info, routed_weight_bytes); /* an ABI 1.0 peer */
    assert_true(PIO_HAS_FIELD(&info, pio_model_info, kv_bytes_per_token));
    assert_false(PIO_HAS_FIELD(&info, pio_model_info, experts_per_token));
    const pio_model_info *none = NULL;
    assert_false(PIO_HAS_FIELD(none, pio_model_info, vocab_size));
}

static void status_strings_cover_every_code(void **state)
{
    (void)state;
    for (int status = PIO_ERR_INTERNAL; status <= PIO_SOFT_BUSY; status++)
        assert_string_not_equal(pio_status_str(status), "unknown status");
    assert_string_equal(pio_status_str(-99), "unknown status");
    assert_string_equal(pio_status_str(PIO_OK), "ok");
    assert_true(PIO_IS_ERROR(PIO_ERR_FORMAT));
    assert_false(PIO_IS_ERROR(PIO_SOFT_KV_FULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(has_field_respects_struct_size),
        cmocka_unit_test(status_strings_cover_every_code),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
