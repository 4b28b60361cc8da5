/*
 * The plugin loader: the handshake, every rejection path (one fixture plugin per failure,
 * built from tests/plugins/), directory scans, selection by architecture, and driving a
 * fixture plugin's instance through the host services.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "host/config.h"
#include "host/host_services.h"
#include "host/plugin_loader.h"

#define FIXTURE_DIR PIO_TEST_BUILD_DIR "/test_plugins"

static char *fixture(const char *file)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", FIXTURE_DIR, file);
    return path;
}

typedef struct loader_fixture {
    pio_host_state state;
    pio_plugin_registry registry;
} loader_fixture;

static int setup(void **state)
{
    static loader_fixture f;
    memset(&f, 0, sizeof f);
    pio_host_state_init(&f.state, NULL, "test");
    f.state.show_progress = 0;
    pio_registry_init(&f.registry, pio_host_services_table(), &f.state);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    loader_fixture *f = *state;
    pio_registry_close(&f->registry);
    return 0;
}

static void expect_rejection(loader_fixture *f, const char *file, pio_status status,
                             const char *reason_part)
{
    pio_error err;
    pio_error_clear(&err);
    assert_int_equal(pio_registry_load_file(&f->registry, fixture(file), &err), status);
    if (strstr(err.message, reason_part) == NULL)
        fail_msg("%s: reason '%s' lacks '%s'", file, err.message, reason_part);
}

static void good_plugin_loads_with_its_descriptor(void **state)
{
    loader_fixture *f = *state;
    pio_error err;
    assert_int_equal(pio_registry_load_file(&f->registry, fixture("good_a.so"), &err), PIO_OK);
    assert_int_equal(f->registry.count, 1);
    const pio_plugin_descriptor *d = f->registry.plugins[0].descriptor;
    assert_string_equal(d->name, "good_a");
    assert_string_equal(d->version, "1.0.0");
    assert_int_equal(d->abi_major, PIO_ABI_MAJOR);
    assert_int_equal(d->abi_minor, PIO_ABI_MINOR);
    assert_string_equal(d->architectures[0], "EchoForCausalLM");
    assert_null(d->architectures[1]);
    assert_string_equal(d->sdk_version, PIO_SDK_VERSION_STRING);
    assert_true(d->capabilities & PIO_CAP_CHAT);
    char caps[64];
    assert_string_equal(pio_capabilities_to_string(d->capabilities, caps, sizeof caps),
                        "cpu,chat,streaming");
}

static void every_bad_file_is_rejected_with_its_reason(void **state)
{
    loader_fixture *f = *state;
    expect_rejection(f, "not_an_elf.so", PIO_ERR_FORMAT, "not an ELF shared object");
    expect_rejection(f, "no_such_file.so", PIO_ERR_IO, "cannot be opened: No such file");
    expect_rejection(f, "no_entry_symbol.so", PIO_ERR_ABI, "no entry symbol 'pio_plugin_entry'");
    expect_rejection(f, "unresolved_symbol.so", PIO_ERR_FORMAT,
                     "undefined symbol: pio_symbol_that_nothing_defines");
    expect_rejection(f, "abi_major_mismatch.so", PIO_ERR_ABI, "major differs");
    expect_rejection(f, "newer_minor.so", PIO_ERR_ABI, "newer than this host's ABI");
    expect_rejection(f, "struct_too_small.so", PIO_ERR_ABI, "struct_size 8 is smaller");
    expect_rejection(f, "refuses_host.so", PIO_ERR_ABI, "refused this host");
    expect_rejection(f, "missing_vtable_slot.so", PIO_ERR_ABI,
                     "lacks the required function 'chat_completion'");
    assert_int_equal(f->registry.count, 0);
    assert_int_equal(pio_registry_load_file(&f->registry, fixture("good_a.so"), NULL), PIO_OK);
    expect_rejection(f, "good_a_copy.so", PIO_ERR_ABI, "duplicate plugin name 'good_a'");
    assert_int_equal(f->registry.count, 1);
}

typedef struct rejection_log {
    int count;
    char files[16][128];
} rejection_log;

static void record_rejection(void *user_data, const char *path, const char *reason)
{
    rejection_log *log = user_data;
    assert_non_null(reason);
    assert_true(reason[0] != '\0');
    const char *slash = strrchr(path, '/');
    if (log->count < 16)
        snprintf(log->files[log->count], sizeof log->files[0], "%s", slash ? slash + 1 : path);
    log->count++;
}

static int logged(const rejection_log *log, const char *file)
{
    for (int i = 0; i < log->count && i < 16; i++)
        if (strcmp(log->files[i], file) == 0)
            return 1;
    return 0;
}

static void scan_loads_good_plugins_and_reports_each_bad_one(void **state)
{
    loader_fixture *f = *state;
    rejection_log log = {0};
    assert_int_equal(pio_registry_scan_dir(&f->registry, FIXTURE_DIR, record_rejection, &log), 2);
    assert_non_null(pio_registry_find_by_name(&f->registry, "good_a"));
    assert_non_null(pio_registry_find_by_name(&f->registry, "good_b"));
    const char *bad[] = {"abi_major_mismatch.so", "good_a_copy.so", "missing_vtable_slot.so",
                         "newer_minor.so", "no_entry_symbol.so", "not_an_elf.so",
                         "refuses_host.so", "struct_too_small.so", "unresolved_symbol.so"};
    assert_int_equal(log.count, sizeof bad / sizeof bad[0]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (!logged(&log, bad[i]))
            fail_msg("%s was not reported", bad[i]);
    assert_int_equal(pio_registry_scan_dir(&f->registry, "/nonexistent/dir", record_rejection,
                                           &log), -1);
}

static void selection_by_architecture(void **state)
{
    loader_fixture *f = *state;
    pio_registry_scan_dir(&f->registry, FIXTURE_DIR, NULL, NULL);
    const pio_loaded_plugin *p = pio_registry_find_by_architecture(&f->registry,
                                                                   "OtherEchoForCausalLM");
    assert_non_null(p);
    assert_string_equal(p->descriptor->name, "good_b");
    assert_null(pio_registry_find_by_architecture(&f->registry, "LlamaForCausalLM"));
    assert_null(pio_registry_find_by_name(&f->registry, "missing_slot"));
}

static int count_tokens(void *user_data, int32_t id, const char *text, size_t len)
{
    (void)id;
    (void)text;
    *(size_t *)user_data += len;
    return 0;
}

/* initialize -> load_model -> calls -> cleanup, with config, progress and memory accounting. */
static void instance_lifecycle_through_host_services(void **state)
{
    loader_fixture *f = *state;
    pio_config *config = pio_config_new();
    assert_int_equal(pio_config_apply_override(config, "plugin_options.reply_prefix=pre-", NULL),
                     PIO_OK);
    f->state.config = config;
    assert_int_equal(pio_registry_load_file(&f->registry, fixture("good_a.so"), NULL), PIO_OK);
    const pio_plugin_vtable *vt = f->registry.plugins[0].descriptor->vtable;
    pio_init_params init = {.struct_size = sizeof init, .services = pio_host_services_table(),
                            .host = &f->state};
    pio_instance *inst = NULL;
    assert_int_equal(vt->initialize(&init, &inst), PIO_OK);
    pio_load_params load = {.struct_size = sizeof load, .load_format = "dummy", .device = "cpu"};
    assert_int_equal(vt->load_model(inst, &load), PIO_OK);
    assert_int_equal(f->state.memory[0].current, 1u << 20);

    int32_t ids[8];
    size_t n = 0;
    assert_int_equal(vt->tokenize(inst, "hey", 3, 1, ids, 2, &n), PIO_SOFT_TRUNCATED);
    assert_int_equal(n, 4);
    assert_int_equal(vt->tokenize(inst, "hey", 3, 1, ids, 8, &n), PIO_OK);
    char text[16];
    size_t len = 0;
    assert_int_equal(vt->detokenize(inst, ids, n, 1, text, sizeof text, &len), PIO_OK);
    assert_string_equal(text, "hey");

    size_t streamed = 0;
    pio_generate_request req = {.struct_size = sizeof req, .prompt = "abc", .prompt_len = 3,
                                .on_token = count_tokens, .user_data = &streamed};
    pio_generate_response resp = {.struct_size = sizeof resp};
    assert_int_equal(vt->generate_text(inst, &req, &resp), PIO_OK);
    assert_string_equal(resp.text, "pre-cba");
    assert_int_equal(streamed, strlen("pre-cba"));
    assert_int_equal(resp.finish_reason, PIO_FINISH_STOP);
    vt->free_response(inst, &resp);
    assert_null(resp.text);

    vt->cleanup(inst);
    assert_int_equal(f->state.memory[0].current, 0);
    assert_int_equal(f->state.memory[0].peak, 1u << 20);
    pio_config_free(config);
}

static void memory_budget_refuses_the_load(void **state)
{
    loader_fixture *f = *state;
    f->state.memory[0].budget = 1000;
    assert_int_equal(pio_registry_load_file(&f->registry, fixture("good_a.so"), NULL), PIO_OK);
    const pio_plugin_vtable *vt = f->registry.plugins[0].descriptor->vtable;
    pio_init_params init = {.struct_size = sizeof init, .services = pio_host_services_table(),
                            .host = &f->state};
    pio_instance *inst = NULL;
    assert_int_equal(vt->initialize(&init, &inst), PIO_OK);
    pio_load_params load = {.struct_size = sizeof load, .load_format = "dummy", .device = "cpu"};
    assert_int_equal(vt->load_model(inst, &load), PIO_ERR_OUT_OF_MEMORY);
    assert_non_null(strstr(f->state.last_error, "would exceed the budget"));
    assert_int_equal(f->state.memory[0].current, 0);
    vt->cleanup(inst);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(good_plugin_loads_with_its_descriptor, setup, teardown),
        cmocka_unit_test_setup_teardown(every_bad_file_is_rejected_with_its_reason, setup, teardown),
        cmocka_unit_test_setup_teardown(scan_loads_good_plugins_and_reports_each_bad_one, setup, teardown),
        cmocka_unit_test_setup_teardown(selection_by_architecture, setup, teardown),
        cmocka_unit_test_setup_teardown(instance_lifecycle_through_host_services, setup, teardown),
        cmocka_unit_test_setup_teardown(memory_budget_refuses_the_load, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
