/*
 * The installed SDK is enough to build a plugin: tests/sdk_out_of_tree.sh installs into a
 * scratch DESTDIR, builds tests/sdk_consumer/ with pkg-config alone and loads it with the
 * installed pio. Also checks that every built plugin exports only the entry symbol.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#ifndef PIO_TEST_SANITIZE
#define PIO_TEST_SANITIZE 0
#endif

static void plugin_builds_against_installed_sdk(void **state)
{
    (void)state;
    char command[512];
    snprintf(command, sizeof command, "sh tests/sdk_out_of_tree.sh %s %d", PIO_TEST_BUILD_DIR,
             PIO_TEST_SANITIZE);
    assert_int_equal(system(command), 0);
}

/* nm -D --defined-only on every plugin must show exactly pio_plugin_entry. */
static void plugins_export_only_the_entry_symbol(void **state)
{
    (void)state;
    char command[512];
    snprintf(command, sizeof command,
             "for so in %s/plugins/*.so %s/test_plugins/good_a.so; do [ -e \"$so\" ] || continue; "
             "syms=$(nm -D --defined-only \"$so\" | awk '{print $3}'); "
             "[ \"$syms\" = pio_plugin_entry ] || { echo \"$so exports: $syms\"; exit 1; }; done",
             PIO_TEST_BUILD_DIR, PIO_TEST_BUILD_DIR);
    assert_int_equal(system(command), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(plugin_builds_against_installed_sdk),
        cmocka_unit_test(plugins_export_only_the_entry_symbol),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
