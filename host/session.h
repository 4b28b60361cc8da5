/*
 * What every model-running command does first: read the YAML config and overrides, find the
 * plugins, pick one for the model, create an instance and load the model.
 */
#ifndef PIO_HOST_SESSION_H
#define PIO_HOST_SESSION_H

#include <getopt.h>

#include "host/config.h"
#include "host/host_services.h"
#include "host/plugin_loader.h"

#define PIO_CLI_MAX_LIST 64

/* Options shared by every command that touches plugins. */
typedef struct pio_cli_options {
    const char *config_path;                      /* -c */
    const char *model_path;                       /* -m: sets model.path */
    const char *plugin_name;                      /* --plugin: sets plugin */
    const char *device;                           /* --device: sets device.backend */
    const char *plugin_dirs[PIO_CLI_MAX_LIST];    /* --plugin-dir, repeatable */
    size_t n_plugin_dirs;
    const char *overrides[PIO_CLI_MAX_LIST];      /* --set key=value, repeatable */
    size_t n_overrides;
} pio_cli_options;

/* getopt_long entries for the shared options; commands append their own. */
#define PIO_CLI_COMMON_LONG_OPTIONS                                                          \
    {"config", required_argument, NULL, 'c'}, {"model", required_argument, NULL, 'm'},     \
        {"plugin", required_argument, NULL, 1001},                                          \
        {"plugin-dir", required_argument, NULL, 1002},                                      \
        {"set", required_argument, NULL, 1003}, {"device", required_argument, NULL, 1004}
#define PIO_CLI_COMMON_SHORT_OPTIONS "c:m:"
#define PIO_CLI_COMMON_HELP                                                                  \
    "  -c, --config FILE      YAML config (see configs/README.md)\n"                        \
    "  -m, --model DIR        Hugging Face model folder (sets model.path)\n"                \
    "      --plugin NAME      use this plugin (default: from config.json architectures)\n"  \
    "      --plugin-dir DIR   look for plugins here (repeatable; also PIO_PLUGIN_PATH)\n"   \
    "      --set KEY=VALUE    override a config key (repeatable)\n"                         \
    "      --device DEV       cpu, cuda or cuda:N (sets device.backend)\n"

/* Returns 1 when opt was a shared option (and stores it), 0 when it is the command's own,
 * -1 on a usage error (already printed). */
int pio_cli_take_common_option(pio_cli_options *options, int opt, const char *arg);

/* For commands that take only the shared options and --help: parses argv into *options.
 * Returns -1 to go on, or the exit status to return (0 after --help, 2 on a usage error). */
int pio_cli_parse_common_only(int argc, char **argv, const char *help, pio_cli_options *options);

typedef struct pio_session {
    pio_config *config;
    pio_host_state loader_state;   /* services context while loading plugins */
    pio_host_state instance_state; /* services context of the instance */
    pio_plugin_registry registry;
    const pio_loaded_plugin *plugin;
    pio_instance *instance;
    int model_loaded;
} pio_session;

/* Reads the config (file, then -m/--plugin/--device, then --set) and validates it.
 * Prints errors; returns 0 on success. */
int pio_session_read_config(pio_session *session, const pio_cli_options *options);

/* Scans the plugin search path; rejected files are printed one line each on stderr.
 * Returns the number of plugins loaded. */
int pio_session_scan_plugins(pio_session *session, const pio_cli_options *options);

/* Everything: config, plugins, selection, initialize, load_model (with load_flags, e.g.
 * PIO_LOAD_VOCAB_ONLY). Returns 0 on success; on failure everything already opened is closed
 * again. */
int pio_session_open(pio_session *session, const pio_cli_options *options, uint32_t load_flags);

void pio_session_close(pio_session *session);

/* Parses "1,2,3" (token ids) into a malloc'd array; prints an error naming `option` and the
 * character position and returns NULL on a bad list. */
int32_t *pio_cli_parse_ids(const char *option, const char *text, size_t *count);

/* Prints "pio: <what>: <status text>: <plugin's error text>" after a failed plugin call. */
void pio_session_report_failure(const pio_session *session, const char *what, pio_status status);

#endif
