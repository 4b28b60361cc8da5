/*
 * libFuzzer target for the YAML configuration: loads the input as a config document, applies
 * the first line as a --set override, validates against the schema and reads every schema key
 * with every getter. Any crash, leak or sanitizer report is a bug.
 *   make fuzz && build/fuzz/fuzz_config -max_total_time=60 tests/fixtures/config
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "host/config.h"

static void ignore_warning(void *user_data, const char *message)
{
    (void)user_data;
    (void)message;
}

static void read_every_key(const pio_config *cfg)
{
    for (size_t i = 0; i < pio_config_schema_count(); i++) {
        const char *key = pio_config_schema_at(i)->key;
        const char *text;
        int64_t integer;
        double real;
        int flag;
        size_t count;
        pio_config_get_str(cfg, key, &text, NULL);
        pio_config_get_i64(cfg, key, &integer, NULL);
        pio_config_get_f64(cfg, key, &real, NULL);
        pio_config_get_bool(cfg, key, &flag, NULL);
        if (pio_config_get_list_count(cfg, key, &count, NULL) == PIO_OK && count > 0)
            pio_config_get_list_str(cfg, key, 0, &text, NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pio_config *cfg = pio_config_new();
    if (cfg == NULL)
        return 0;
    pio_error err;
    pio_config_load_string(cfg, "fuzz.yaml", (const char *)data, size, &err);
    const uint8_t *newline = memchr(data, '\n', size);
    size_t first_line = newline ? (size_t)(newline - data) : size;
    char assignment[512];
    if (first_line < sizeof assignment) {
        memcpy(assignment, data, first_line);
        assignment[first_line] = '\0';
        pio_config_apply_override(cfg, assignment, &err);
    }
    pio_config_validate(cfg, ignore_warning, NULL, &err);
    read_every_key(cfg);
    for (size_t i = 0; i < pio_config_count(cfg); i++) {
        (void)pio_config_key_at(cfg, i);
        (void)pio_config_value_at(cfg, i);
        (void)pio_config_origin_at(cfg, i);
    }
    pio_config_free(cfg);
    return 0;
}
