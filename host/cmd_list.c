/* pio list: every plugin found, and one line per rejected file. */
#include <stdio.h>
#include <string.h>

#include "host/commands.h"
#include "host/session.h"

static const char list_help[] =
    "usage: pio list [--plugin-dir DIR]... [-c CONFIG]\n"
    "Shows each plugin found: name, version, ABI, capabilities, architectures and file.\n"
    "Files that are not valid plugins are reported on stderr, one line each.\n"
    "Exit status: 0 when at least one plugin loaded, 1 otherwise.\n\n" PIO_CLI_COMMON_HELP;

static void print_plugin(const pio_loaded_plugin *plugin)
{
    const pio_plugin_descriptor *d = plugin->descriptor;
    char caps[128];
    printf("%-24s %-8s %u.%-4u %-28s ", d->name, d->version, d->abi_major, d->abi_minor,
           pio_capabilities_to_string(d->capabilities, caps, sizeof caps));
    for (const char *const *arch = d->architectures; *arch; arch++)
        printf("%s%s", *arch, arch[1] ? "," : "");
    printf("  %s\n", plugin->path);
}

int pio_cmd_list(int argc, char **argv)
{
    pio_cli_options options = {0};
    int parsed = pio_cli_parse_common_only(argc, argv, list_help, &options);
    if (parsed >= 0)
        return parsed;
    pio_session session;
    memset(&session, 0, sizeof session);
    if (pio_session_read_config(&session, &options) != 0) {
        pio_session_close(&session);
        return 2;
    }
    int found = pio_session_scan_plugins(&session, &options);
    printf("%-24s %-8s %-6s %-28s %s\n", "NAME", "VERSION", "ABI", "CAPABILITIES",
           "ARCHITECTURES  FILE");
    for (size_t i = 0; i < session.registry.count; i++)
        print_plugin(&session.registry.plugins[i]);
    if (found == 0)
        fprintf(stderr, "pio: no plugin found\n");
    pio_session_close(&session);
    return found > 0 ? 0 : 1;
}
