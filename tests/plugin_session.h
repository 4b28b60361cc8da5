/*
 * Test harness for model plugins: a plugin .so driven the way the host drives it (the host's
 * loader, services and a YAML config string), plus a reader for the float32 .npy reference
 * files of tests/fixtures/models/. Included by the plugin tests; define PLUGIN_SO (the .so to
 * load) before including it.
 */
#ifndef PIO_TESTS_PLUGIN_SESSION_H
#define PIO_TESTS_PLUGIN_SESSION_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host/config.h"
#include "host/host_services.h"
#include "host/plugin_loader.h"
#include "pio/textgen.h"

#ifndef PLUGIN_SO
#error "define PLUGIN_SO before including plugin_session.h"
#endif
#ifndef SESSION_DEVICE /* the device the model loads on (load_params.device) */
#define SESSION_DEVICE "cpu"
#endif

typedef struct npy_f32 {
    size_t rows, cols;
    float *data;
} npy_f32;

/* A C-order little-endian float32 2-D .npy file (format versions 1 and 2). */
static inline int read_npy(const char *path, npy_f32 *out)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL)
        return -1;
    unsigned char head[12];
    char header[1024];
    int ok = fread(head, 1, 10, file) == 10 && memcmp(head, "\x93NUMPY", 6) == 0;
    size_t header_len = head[8] | (size_t)head[9] << 8;
    if (ok && head[6] == 2) {
        ok = fread(head + 10, 1, 2, file) == 2;
        header_len |= (size_t)head[10] << 16 | (size_t)head[11] << 24;
    }
    ok = ok && header_len < sizeof header && fread(header, 1, header_len, file) == header_len;
    header[ok ? header_len : 0] = '\0';
    const char *shape = strstr(header, "'shape': (");
    ok = ok && strstr(header, "'descr': '<f4'") && strstr(header, "'fortran_order': False") &&
         shape && sscanf(shape, "'shape': (%zu, %zu)", &out->rows, &out->cols) == 2;
    size_t count = ok ? out->rows * out->cols : 0;
    out->data = ok ? malloc(count * sizeof(float)) : NULL;
    ok = ok && out->data && fread(out->data, sizeof(float), count, file) == count;
    fclose(file);
    if (!ok) {
        free(out->data);
        out->data = NULL;
    }
    return ok ? 0 : -1;
}

typedef struct session {
    pio_config *config;
    pio_host_state state;
    pio_plugin_registry registry;
    const pio_plugin_vtable *vt;
    pio_instance *inst;
    const pio_textgen_model *model; /* the batched-forward extension */
} session;

/* Loads the plugin and a model; returns load_model's status (the instance stays open for
 * close_session either way). yaml may be NULL. */
static inline pio_status open_session_flags(session *s, const char *yaml, const char *model_path,
                                     const char *load_format, uint32_t flags)
{
    memset(s, 0, sizeof *s);
    pio_error err;
    s->config = pio_config_new();
    assert_non_null(s->config);
    if (yaml != NULL)
        assert_int_equal(pio_config_load_string(s->config, "test.yaml", yaml, strlen(yaml), &err),
                         PIO_OK);
    pio_host_state_init(&s->state, s->config, "qwen3");
    s->state.show_progress = 0;
    s->state.log_level = PIO_LOG_ERROR;
    pio_registry_init(&s->registry, pio_host_services_table(), &s->state);
    if (pio_registry_load_file(&s->registry, PLUGIN_SO, &err) != PIO_OK)
        fail_msg("%s: %s", PLUGIN_SO, err.message);
    s->vt = s->registry.plugins[0].descriptor->vtable;
    pio_init_params init = {.struct_size = sizeof init, .services = pio_host_services_table(),
                            .host = &s->state};
    assert_int_equal(s->vt->initialize(&init, &s->inst), PIO_OK);
    pio_load_params load = {.struct_size = sizeof load, .model_path = model_path,
                            .load_format = load_format ? load_format : "auto", .device = SESSION_DEVICE,
                            .flags = flags};
    pio_status status = s->vt->load_model(s->inst, &load);
    if (status == PIO_OK)
        s->model = s->vt->get_extension(s->inst, PIO_TEXTGEN_MODEL_EXTENSION);
    return status;
}

static inline pio_status open_session(session *s, const char *yaml, const char *model_path,
                               const char *load_format)
{
    return open_session_flags(s, yaml, model_path, load_format, 0);
}

static inline void open_ok(session *s, const char *yaml, const char *model_path, const char *format)
{
    pio_status status = open_session(s, yaml, model_path, format);
    if (status != PIO_OK)
        fail_msg("load_model: %s: %s", pio_status_str(status), s->state.last_error);
    assert_non_null(s->model);
}

static inline void close_session(session *s)
{
    s->vt->cleanup(s->inst);
    pio_registry_close(&s->registry);
    pio_config_free(s->config);
}

static inline void expect_error(const session *s, const char *part)
{
    if (strstr(s->state.last_error, part) == NULL)
        fail_msg("error '%s' lacks '%s'", s->state.last_error, part);
}

#endif
