#include "host/session.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef PIO_DEFAULT_PLUGIN_DIR
#define PIO_DEFAULT_PLUGIN_DIR "/usr/local/lib/pio/plugins"
#endif

int pio_cli_take_common_option(pio_cli_options *options, int opt, const char *arg)
{
    switch (opt) {
    case 'c': options->config_path = arg; return 1;
    case 'm': options->model_path = arg; return 1;
    case 1001: options->plugin_name = arg; return 1;
    case 1004: options->device = arg; return 1;
    case 1002:
    case 1003: {
        const char **list = opt == 1002 ? options->plugin_dirs : options->overrides;
        size_t *count = opt == 1002 ? &options->n_plugin_dirs : &options->n_overrides;
        if (*count == PIO_CLI_MAX_LIST) {
            fprintf(stderr, "pio: too many %s options (at most %d)\n",
                    opt == 1002 ? "--plugin-dir" : "--set", PIO_CLI_MAX_LIST);
            return -1;
        }
        list[(*count)++] = arg;
        return 1;
    }
    default: return 0;
    }
}

int pio_cli_parse_common_only(int argc, char **argv, const char *help, pio_cli_options *options)
{
    static const struct option long_options[] = {PIO_CLI_COMMON_LONG_OPTIONS,
                                                 {"help", no_argument, NULL, 'h'},
                                                 {NULL, 0, NULL, 0}};
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, PIO_CLI_COMMON_SHORT_OPTIONS "h", long_options,
                              NULL)) != -1) {
        if (opt == 'h') {
            fputs(help, stdout);
            return 0;
        }
        if (pio_cli_take_common_option(options, opt, optarg) <= 0) {
            fputs(help, stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "pio: unexpected argument '%s'\n%s", argv[optind], help);
        return 2;
    }
    return -1;
}

static void print_config_warning(void *user_data, const char *message)
{
    (void)user_data;
    fprintf(stderr, "pio: warning: %s\n", message);
}

/* A command-line option that sets one key to a literal string (a path, a name). */
static int set_from_option(pio_config *config, const char *key, const char *value,
                           const char *option)
{
    pio_error err;
    pio_error_clear(&err);
    if (value == NULL || pio_config_set_str(config, key, value, option, &err) == PIO_OK)
        return 0;
    fprintf(stderr, "pio: %s: %s\n", option, err.message);
    return -1;
}

int pio_session_read_config(pio_session *session, const pio_cli_options *options)
{
    pio_error err;
    pio_error_clear(&err);
    session->config = pio_config_new();
    if (session->config == NULL) {
        fprintf(stderr, "pio: out of memory\n");
        return -1;
    }
    if (options->config_path != NULL &&
        pio_config_load_file(session->config, options->config_path, &err) != PIO_OK) {
        fprintf(stderr, "pio: %s\n", err.message);
        return -1;
    }
    if (set_from_option(session->config, "model.path", options->model_path, "--model") ||
        set_from_option(session->config, "plugin", options->plugin_name, "--plugin") ||
        set_from_option(session->config, "device.backend", options->device, "--device"))
        return -1;
    for (size_t i = 0; i < options->n_overrides; i++) {
        if (pio_config_apply_override(session->config, options->overrides[i], &err) != PIO_OK) {
            fprintf(stderr, "pio: %s\n", err.message);
            return -1;
        }
    }
    if (pio_config_validate(session->config, print_config_warning, NULL, &err) != PIO_OK) {
        fprintf(stderr, "pio: %s\n", err.message);
        return -1;
    }
    pio_host_state_init(&session->loader_state, session->config, "pio");
    return 0;
}

static void print_rejection(void *user_data, const char *path, const char *reason)
{
    (void)user_data;
    fprintf(stderr, "pio: skipping %s: %s\n", path, reason);
}

static int is_directory(const char *path)
{
    struct stat info;
    return stat(path, &info) == 0 && S_ISDIR(info.st_mode);
}

/* The folder next to the running executable: build/bin/pio -> build/plugins, and
 * PREFIX/bin/pio -> PREFIX/lib/pio/plugins. */
static int find_default_plugin_dir(char *out, size_t out_size)
{
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash != NULL) {
            *slash = '\0';
            const char *relative[] = {"../lib/pio/plugins", "../plugins"};
            for (size_t i = 0; i < 2; i++) {
                snprintf(out, out_size, "%s/%s", exe, relative[i]);
                if (is_directory(out))
                    return 1;
            }
        }
    }
    snprintf(out, out_size, "%s", PIO_DEFAULT_PLUGIN_DIR);
    return is_directory(out);
}

/* Scans each ':'-separated entry of path_list. Returns how many folders were named. */
static int scan_path_list(pio_session *session, const char *path_list)
{
    char *copy = strdup(path_list);
    int named = 0;
    if (copy == NULL)
        return 0;
    char *saveptr = NULL;
    for (char *dir = strtok_r(copy, ":", &saveptr); dir; dir = strtok_r(NULL, ":", &saveptr)) {
        pio_registry_scan_dir(&session->registry, dir, print_rejection, NULL);
        named++;
    }
    free(copy);
    return named;
}

int pio_session_scan_plugins(pio_session *session, const pio_cli_options *options)
{
    pio_registry_init(&session->registry, pio_host_services_table(), &session->loader_state);
    int named = 0;
    for (size_t i = 0; i < options->n_plugin_dirs; i++, named++)
        pio_registry_scan_dir(&session->registry, options->plugin_dirs[i], print_rejection, NULL);
    const char *env = getenv("PIO_PLUGIN_PATH");
    if (env != NULL && env[0] != '\0')
        named += scan_path_list(session, env);
    const char *yaml_dir = NULL;
    if (session->config != NULL &&
        pio_config_get_str(session->config, "plugins.dir", &yaml_dir, NULL) == PIO_OK) {
        pio_registry_scan_dir(&session->registry, yaml_dir, print_rejection, NULL);
        named++;
    }
    /* Folders named by the user replace the defaults, as PATH does. */
    char default_dir[PATH_MAX + 32];
    if (named == 0 && find_default_plugin_dir(default_dir, sizeof default_dir))
        pio_registry_scan_dir(&session->registry, default_dir, print_rejection, NULL);
    return (int)session->registry.count;
}

static void list_known_architectures(const pio_plugin_registry *registry)
{
    fprintf(stderr, "pio: the plugins found serve:");
    for (size_t i = 0; i < registry->count; i++)
        for (const char *const *a = registry->plugins[i].descriptor->architectures; *a; a++)
            fprintf(stderr, " %s (%s)", *a, registry->plugins[i].descriptor->name);
    fprintf(stderr, registry->count ? "\n" : " nothing (no plugin was found)\n");
}

/* Picks the plugin serving the first architecture of MODEL/config.json that one serves. */
static const pio_loaded_plugin *select_by_model_folder(const pio_session *session,
                                                       const char *model_path)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/config.json", model_path);
    json_error_t json_err;
    json_t *root = json_load_file(path, 0, &json_err);
    if (root == NULL) {
        fprintf(stderr, "pio: %s:%d:%d: %s\n", path, json_err.line, json_err.column,
                json_err.text);
        return NULL;
    }
    json_t *architectures = json_object_get(root, "architectures");
    const pio_loaded_plugin *found = NULL;
    if (!json_is_array(architectures) || json_array_size(architectures) == 0) {
        fprintf(stderr, "pio: %s: no \"architectures\" list; name the plugin with --plugin or "
                        "the YAML key `plugin`\n", path);
    } else {
        for (size_t i = 0; found == NULL && i < json_array_size(architectures); i++) {
            const char *name = json_string_value(json_array_get(architectures, i));
            if (name != NULL)
                found = pio_registry_find_by_architecture(&session->registry, name);
        }
        if (found == NULL) {
            char *listed = json_dumps(architectures, JSON_COMPACT);
            fprintf(stderr, "pio: %s: no plugin serves the architectures %s\n", path,
                    listed ? listed : "?");
            free(listed);
            list_known_architectures(&session->registry);
        }
    }
    json_decref(root);
    return found;
}

static const pio_loaded_plugin *select_plugin(const pio_session *session)
{
    const char *name = NULL, *model_path = NULL;
    pio_config_get_str(session->config, "model.path", &model_path, NULL);
    if (pio_config_get_str(session->config, "plugin", &name, NULL) == PIO_OK) {
        const pio_loaded_plugin *plugin = pio_registry_find_by_name(&session->registry, name);
        if (plugin == NULL) {
            fprintf(stderr, "pio: no plugin named '%s' was found\n", name);
            list_known_architectures(&session->registry);
        }
        return plugin;
    }
    if (model_path != NULL)
        return select_by_model_folder(session, model_path);
    fprintf(stderr, "pio: no model given: use -m MODEL_DIR, -c CONFIG.yaml, or --plugin NAME "
                    "with --set model.load_format=dummy\n");
    return NULL;
}

int32_t *pio_cli_parse_ids(const char *option, const char *text, size_t *count)
{
    size_t capacity = 1;
    for (const char *c = text; *c; c++)
        capacity += *c == ',';
    int32_t *ids = malloc(capacity * sizeof *ids);
    if (ids == NULL)
        return NULL;
    const char *cursor = text;
    size_t n = 0;
    for (;;) {
        char *end;
        errno = 0;
        long value = strtol(cursor, &end, 10);
        if (errno != 0 || end == cursor || value < 0 || value > INT32_MAX ||
            (*end != ',' && *end != '\0')) {
            fprintf(stderr, "pio: %s: bad token id at character %zu of '%s'\n", option,
                    (size_t)(cursor - text) + 1, text);
            free(ids);
            return NULL;
        }
        ids[n++] = (int32_t)value;
        if (*end == '\0')
            break;
        cursor = end + 1;
    }
    *count = n;
    return ids;
}

void pio_session_report_failure(const pio_session *session, const char *what, pio_status status)
{
    const char *detail = session->instance_state.last_error;
    fprintf(stderr, "pio: %s failed: %s%s%s\n", what, pio_status_str(status),
            detail[0] ? ": " : "", detail);
}

static int create_instance(pio_session *session, uint32_t load_flags)
{
    const pio_plugin_descriptor *desc = session->plugin->descriptor;
    pio_host_state_init(&session->instance_state, session->config, desc->name);
    pio_init_params init = {
        .struct_size = sizeof init,
        .services = pio_host_services_table(),
        .host = &session->instance_state,
    };
    pio_status status = desc->vtable->initialize(&init, &session->instance);
    if (status != PIO_OK) {
        pio_session_report_failure(session, "initialize", status);
        return -1;
    }
    const char *model_path = NULL, *load_format = "auto", *device = "cpu";
    pio_config_get_str(session->config, "model.path", &model_path, NULL);
    pio_config_get_str(session->config, "model.load_format", &load_format, NULL);
    pio_config_get_str(session->config, "device.backend", &device, NULL);
    pio_load_params load = {
        .struct_size = sizeof load,
        .model_path = model_path,
        .load_format = load_format,
        .device = device,
        .flags = load_flags,
    };
    status = desc->vtable->load_model(session->instance, &load);
    if (status != PIO_OK) {
        pio_session_report_failure(session, "load_model", status);
        return -1;
    }
    session->model_loaded = 1;
    return 0;
}

int pio_session_open(pio_session *session, const pio_cli_options *options, uint32_t load_flags)
{
    memset(session, 0, sizeof *session);
    if (pio_session_read_config(session, options) != 0) {
        pio_session_close(session);
        return -1;
    }
    pio_session_scan_plugins(session, options);
    session->plugin = select_plugin(session);
    if (session->plugin == NULL || create_instance(session, load_flags) != 0) {
        pio_session_close(session);
        return -1;
    }
    return 0;
}

void pio_session_close(pio_session *session)
{
    if (session->instance != NULL && session->plugin != NULL)
        session->plugin->descriptor->vtable->cleanup(session->instance);
    session->instance = NULL;
    pio_registry_close(&session->registry);
    pio_config_free(session->config);
    session->config = NULL;
}
