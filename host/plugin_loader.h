/*
 * Finding, loading and checking plugins: dlopen + the ABI handshake.
 */
#ifndef PIO_HOST_PLUGIN_LOADER_H
#define PIO_HOST_PLUGIN_LOADER_H

#include <stddef.h>

#include "pio/error.h"
#include "pio/plugin.h"

typedef struct pio_loaded_plugin {
    char *path;                              /* the .so file as found */
    void *dl_handle;
    const pio_plugin_descriptor *descriptor; /* inside the plugin; valid while loaded */
} pio_loaded_plugin;

typedef struct pio_plugin_registry {
    pio_loaded_plugin *plugins;
    size_t count;
    size_t capacity;
    pio_host_context context; /* handed to every plugin's entry point; lives as long as they do */
} pio_plugin_registry;

/* Called once per file that was rejected, with one line saying why. */
typedef void (*pio_plugin_reject_fn)(void *user_data, const char *path, const char *reason);

/* services/host become the context every plugin is loaded with. */
void pio_registry_init(pio_plugin_registry *registry, const pio_host_services *services,
                       void *host);

/* Loads one file. On rejection returns an error status with err->message = the reason. */
pio_status pio_registry_load_file(pio_plugin_registry *registry, const char *path,
                                  pio_error *err);

/* Loads every *.so in dir (sorted by name); rejected files go to on_reject and the scan goes
 * on. Returns the number of plugins loaded from dir; -1 when dir itself cannot be read (also
 * reported through on_reject). */
int pio_registry_scan_dir(pio_plugin_registry *registry, const char *dir,
                          pio_plugin_reject_fn on_reject, void *user_data);

const pio_loaded_plugin *pio_registry_find_by_name(const pio_plugin_registry *registry,
                                                   const char *name);
/* The first plugin (in load order) that declares the Hugging Face architecture. */
const pio_loaded_plugin *pio_registry_find_by_architecture(const pio_plugin_registry *registry,
                                                           const char *architecture);

/* dlcloses every plugin. Instances created from them must be cleaned up before. */
void pio_registry_close(pio_plugin_registry *registry);

/* "cpu,cuda,chat" for a capability mask, into buf. */
const char *pio_capabilities_to_string(uint64_t capabilities, char *buf, size_t buf_size);

#endif
