#include "host/host_services.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

volatile sig_atomic_t pio_host_interrupted = 0;

static pio_host_state *state_of(void *host) { return (pio_host_state *)host; }

static const char *level_name(pio_log_level level)
{
    switch (level) {
    case PIO_LOG_ERROR: return "error";
    case PIO_LOG_WARN: return "warning";
    case PIO_LOG_INFO: return "info";
    default: return "debug";
    }
}

static void service_log(void *host, pio_log_level level, const char *message)
{
    pio_host_state *state = state_of(host);
    if (level > state->log_level || message == NULL)
        return;
    fprintf(stderr, "[%s] %s: %s\n", state->source_name, level_name(level), message);
}

static void service_set_error(void *host, pio_status status, const char *message)
{
    pio_host_state *state = state_of(host);
    state->last_status = status;
    snprintf(state->last_error, sizeof state->last_error, "%s", message ? message : "");
}

/* A wrong-typed value becomes the instance's last error, so the plugin can just return. */
static pio_status record_config_status(pio_host_state *state, pio_status status,
                                       const pio_error *err)
{
    if (PIO_IS_ERROR(status))
        service_set_error(state, status, err->message);
    return status;
}

/* The four typed getters differ only in the value type and the config function they call. */
#define DEFINE_CONFIG_GETTER(service_name, value_type, config_getter)                         \
    static pio_status service_name(void *host, const char *key, value_type *value)           \
    {                                                                                         \
        pio_host_state *state = state_of(host);                                               \
        if (state->config == NULL)                                                            \
            return PIO_SOFT_ABSENT;                                                           \
        pio_error err;                                                                        \
        pio_error_clear(&err);                                                                \
        return record_config_status(state, config_getter(state->config, key, value, &err),    \
                                    &err);                                                    \
    }

DEFINE_CONFIG_GETTER(service_config_get_str, const char *, pio_config_get_str)
DEFINE_CONFIG_GETTER(service_config_get_i64, int64_t, pio_config_get_i64)
DEFINE_CONFIG_GETTER(service_config_get_f64, double, pio_config_get_f64)
DEFINE_CONFIG_GETTER(service_config_get_bool, int, pio_config_get_bool)
DEFINE_CONFIG_GETTER(service_config_get_list_size, size_t, pio_config_get_list_count)

static pio_status service_config_get_list_str(void *host, const char *key, size_t index,
                                              const char **value)
{
    pio_host_state *state = state_of(host);
    if (state->config == NULL)
        return PIO_SOFT_ABSENT;
    pio_error err;
    pio_error_clear(&err);
    return record_config_status(
        state, pio_config_get_list_str(state->config, key, index, value, &err), &err);
}

static void service_progress(void *host, const char *stage, uint64_t done, uint64_t total)
{
    pio_host_state *state = state_of(host);
    if (!state->show_progress)
        return;
    if (total == 0) {
        fprintf(stderr, "\r%s: %llu", stage, (unsigned long long)done);
    } else {
        int width = 40;
        int filled = (int)((double)done / (double)total * width);
        if (filled > width)
            filled = width;
        fprintf(stderr, "\r%-10s [%.*s%*s] %5.1f%%", stage, filled,
                "########################################", width - filled, "",
                100.0 * (double)done / (double)total);
    }
    if (total != 0 && done >= total)
        fputc('\n', stderr);
    fflush(stderr);
}

static int service_should_abort(void *host)
{
    (void)host;
    return pio_host_interrupted != 0;
}

static pio_device_memory *memory_slot(pio_host_state *state, int device)
{
    if (device < -1 || device >= PIO_HOST_MAX_DEVICES)
        return NULL;
    return &state->memory[device + 1];
}

static pio_status service_mem_reserve(void *host, int device, uint64_t bytes, const char *tag)
{
    pio_host_state *state = state_of(host);
    pio_device_memory *slot = memory_slot(state, device);
    char message[256];
    if (slot == NULL) {
        snprintf(message, sizeof message, "mem_reserve: device %d is out of range", device);
        service_set_error(state, PIO_ERR_INVALID_ARGUMENT, message);
        return PIO_ERR_INVALID_ARGUMENT;
    }
    if (slot->budget != 0 && slot->current + bytes > slot->budget) {
        char want[32], used[32], budget[32];
        snprintf(message, sizeof message,
                 "device %d: reserving %s for %s would exceed the budget (%s of %s in use)",
                 device, pio_format_bytes(bytes, want, sizeof want), tag ? tag : "?",
                 pio_format_bytes(slot->current, used, sizeof used),
                 pio_format_bytes(slot->budget, budget, sizeof budget));
        service_set_error(state, PIO_ERR_OUT_OF_MEMORY, message);
        return PIO_ERR_OUT_OF_MEMORY;
    }
    slot->current += bytes;
    if (slot->current > slot->peak)
        slot->peak = slot->current;
    return PIO_OK;
}

static void service_mem_release(void *host, int device, uint64_t bytes, const char *tag)
{
    pio_host_state *state = state_of(host);
    pio_device_memory *slot = memory_slot(state, device);
    (void)tag;
    if (slot == NULL)
        return;
    slot->current = bytes > slot->current ? 0 : slot->current - bytes;
}

static const pio_host_services services_table = {
    .struct_size = sizeof(pio_host_services),
    .log = service_log,
    .set_error = service_set_error,
    .config_get_str = service_config_get_str,
    .config_get_i64 = service_config_get_i64,
    .config_get_f64 = service_config_get_f64,
    .config_get_bool = service_config_get_bool,
    .progress = service_progress,
    .should_abort = service_should_abort,
    .mem_reserve = service_mem_reserve,
    .mem_release = service_mem_release,
    .config_get_list_size = service_config_get_list_size,
    .config_get_list_str = service_config_get_list_str,
};

const pio_host_services *pio_host_services_table(void) { return &services_table; }

static pio_log_level parse_log_level(const char *text)
{
    if (text == NULL)
        return PIO_LOG_INFO;
    if (strcmp(text, "error") == 0)
        return PIO_LOG_ERROR;
    if (strcmp(text, "warn") == 0)
        return PIO_LOG_WARN;
    if (strcmp(text, "debug") == 0)
        return PIO_LOG_DEBUG;
    return PIO_LOG_INFO;
}

void pio_host_state_init(pio_host_state *state, const pio_config *config, const char *source)
{
    memset(state, 0, sizeof *state);
    state->config = config;
    snprintf(state->source_name, sizeof state->source_name, "%s", source ? source : "pio");
    const char *level = NULL;
    if (config != NULL)
        pio_config_get_str(config, "logging.level", &level, NULL);
    state->log_level = parse_log_level(level);
    state->show_progress = isatty(STDERR_FILENO);
}

static void on_interrupt(int signal_number)
{
    (void)signal_number;
    pio_host_interrupted = 1;
}

void pio_host_install_interrupt_handler(void)
{
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_interrupt;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
}

const char *pio_format_bytes(uint64_t bytes, char *buf, size_t buf_size)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double value = (double)bytes;
    size_t unit = 0;
    while (value >= 1024.0 && unit + 1 < sizeof units / sizeof units[0]) {
        value /= 1024.0;
        unit++;
    }
    snprintf(buf, buf_size, unit == 0 ? "%.0f %s" : "%.1f %s", value, units[unit]);
    return buf;
}
