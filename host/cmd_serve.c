/* pio serve: refuses clearly until a plugin offers the serving calls (PIO_CAP_BATCHING). */
#include <stdio.h>
#include <string.h>

#include "host/commands.h"
#include "host/session.h"

static const char serve_help[] =
    "usage: pio serve (-c CONFIG | -m MODEL_DIR) [OPTIONS]\n"
    "Serves the model over HTTP with continuous batching. It needs a plugin that declares the\n"
    "`batching` capability (submit/step/cancel); `pio list` shows capabilities.\n\n"
    PIO_CLI_COMMON_HELP;

int pio_cmd_serve(int argc, char **argv)
{
    pio_cli_options options = {0};
    int parsed = pio_cli_parse_common_only(argc, argv, serve_help, &options);
    if (parsed >= 0)
        return parsed;
    pio_session session;
    if (pio_session_open(&session, &options, 0) != 0)
        return 1;
    const pio_plugin_descriptor *desc = session.plugin->descriptor;
    int supported = (desc->capabilities & PIO_CAP_BATCHING) != 0;
    if (!supported)
        fprintf(stderr,
                "pio serve: plugin '%s' does not offer the serving calls (capability "
                "`batching`), so it cannot be served over HTTP\n",
                desc->name);
    else
        fprintf(stderr, "pio serve: this build of pio has no HTTP server yet\n");
    pio_session_close(&session);
    return 1;
}
