#include "host/plugin_loader.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The smallest descriptor and vtable this host accepts: the ones of ABI 1.0. */
#define MIN_DESCRIPTOR_SIZE (offsetof(pio_plugin_descriptor, vtable) + sizeof(void *))
#define MIN_VTABLE_SIZE (offsetof(pio_plugin_vtable, get_extension) + sizeof(void *))

void pio_registry_init(pio_plugin_registry *registry, const pio_host_services *services,
                       void *host)
{
    memset(registry, 0, sizeof *registry);
    registry->context.struct_size = sizeof registry->context;
    registry->context.abi_major = PIO_ABI_MAJOR;
    registry->context.abi_minor = PIO_ABI_MINOR;
    registry->context.services = services;
    registry->context.host = host;
}

/* 1 when the file starts with the ELF magic, 0 when not, -1 when it cannot be read. */
static int file_is_elf(const char *path)
{
    unsigned char magic[4] = {0};
    FILE *file = fopen(path, "rb");
    if (file == NULL)
        return -1;
    size_t got = fread(magic, 1, sizeof magic, file);
    fclose(file);
    return got == sizeof magic && memcmp(magic, "\x7f" "ELF", 4) == 0;
}

static int plugin_name_is_valid(const char *name)
{
    if (name == NULL || name[0] == '\0' || strlen(name) > 64)
        return 0;
    for (const char *c = name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_'))
            return 0;
    return 1;
}

/* The vtable slots ABI 1.0 requires, by name, for the error message. */
static const char *first_missing_required_slot(const pio_plugin_vtable *vt)
{
    const struct {
        const char *name;
        const void *slot;
    } required[] = {
        {"initialize", (const void *)vt->initialize},
        {"load_model", (const void *)vt->load_model},
        {"get_model_info", (const void *)vt->get_model_info},
        {"infer", (const void *)vt->infer},
        {"cleanup", (const void *)vt->cleanup},
        {"tokenize", (const void *)vt->tokenize},
        {"detokenize", (const void *)vt->detokenize},
        {"generate_text", (const void *)vt->generate_text},
        {"chat_completion", (const void *)vt->chat_completion},
        {"free_response", (const void *)vt->free_response},
    };
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
        if (required[i].slot == NULL)
            return required[i].name;
    return NULL;
}

/* Checks a descriptor against this host; returns an error with the reason or PIO_OK. */
static pio_status check_descriptor(const pio_plugin_registry *registry,
                                   const pio_plugin_descriptor *desc, pio_error *err)
{
    if (desc->struct_size < MIN_DESCRIPTOR_SIZE)
        return pio_error_set(err, PIO_ERR_ABI,
                             "descriptor struct_size %u is smaller than the %zu bytes of ABI %d.0",
                             desc->struct_size, (size_t)MIN_DESCRIPTOR_SIZE, PIO_ABI_MAJOR);
    if (desc->abi_major != PIO_ABI_MAJOR)
        return pio_error_set(err, PIO_ERR_ABI,
                             "built for ABI %u.%u but this host speaks ABI %d.%d (major differs)",
                             desc->abi_major, desc->abi_minor, PIO_ABI_MAJOR, PIO_ABI_MINOR);
    if (desc->abi_minor > PIO_ABI_MINOR)
        return pio_error_set(err, PIO_ERR_ABI,
                             "built for ABI %u.%u, newer than this host's ABI %d.%d; upgrade pio",
                             desc->abi_major, desc->abi_minor, PIO_ABI_MAJOR, PIO_ABI_MINOR);
    if (!plugin_name_is_valid(desc->name))
        return pio_error_set(err, PIO_ERR_ABI,
                             "plugin name is missing or not of the form [a-z0-9_]{1,64}");
    if (desc->version == NULL || desc->architectures == NULL || desc->vtable == NULL)
        return pio_error_set(err, PIO_ERR_ABI,
                             "descriptor of '%s' lacks its version, architectures or vtable",
                             desc->name);
    if (desc->vtable->struct_size < MIN_VTABLE_SIZE)
        return pio_error_set(err, PIO_ERR_ABI,
                             "vtable struct_size %u is smaller than the %zu bytes of ABI %d.0",
                             desc->vtable->struct_size, (size_t)MIN_VTABLE_SIZE, PIO_ABI_MAJOR);
    const char *missing = first_missing_required_slot(desc->vtable);
    if (missing != NULL)
        return pio_error_set(err, PIO_ERR_ABI, "vtable lacks the required function '%s'", missing);
    const pio_loaded_plugin *same = pio_registry_find_by_name(registry, desc->name);
    if (same != NULL)
        return pio_error_set(err, PIO_ERR_ABI, "duplicate plugin name '%s' (already loaded from %s)",
                             desc->name, same->path);
    return PIO_OK;
}

static pio_status append_plugin(pio_plugin_registry *registry, const char *path, void *handle,
                                const pio_plugin_descriptor *desc, pio_error *err)
{
    if (registry->count == registry->capacity) {
        size_t capacity = registry->capacity ? registry->capacity * 2 : 8;
        pio_loaded_plugin *grown = realloc(registry->plugins, capacity * sizeof *grown);
        if (grown == NULL)
            return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory");
        registry->plugins = grown;
        registry->capacity = capacity;
    }
    char *path_copy = strdup(path);
    if (path_copy == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory");
    registry->plugins[registry->count++] =
        (pio_loaded_plugin){.path = path_copy, .dl_handle = handle, .descriptor = desc};
    return PIO_OK;
}

pio_status pio_registry_load_file(pio_plugin_registry *registry, const char *path,
                                  pio_error *err)
{
    int elf = file_is_elf(path);
    if (elf < 0)
        return pio_error_set(err, PIO_ERR_IO, "cannot be opened: %s", strerror(errno));
    if (elf == 0)
        return pio_error_set(err, PIO_ERR_FORMAT, "not an ELF shared object");
    dlerror();
    /* RTLD_NODELETE: dlclose() drops the handle but keeps the code mapped. A plugin's runtimes
     * (OpenMP thread pools, CUDA, atexit and TLS destructors) can outlive the calls we make,
     * and unmapping code they still point into crashes at exit. */
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (handle == NULL) {
        const char *why = dlerror();
        return pio_error_set(err, PIO_ERR_FORMAT, "cannot be loaded: %s",
                             why ? why : "unknown dlopen error");
    }
    pio_plugin_entry_fn entry;
    void *symbol = dlsym(handle, PIO_PLUGIN_ENTRY_SYMBOL);
    memcpy(&entry, &symbol, sizeof entry); /* object pointer to function pointer, as POSIX allows */
    if (symbol == NULL) {
        dlclose(handle);
        return pio_error_set(err, PIO_ERR_ABI, "no entry symbol '%s' (not a pio plugin?)",
                             PIO_PLUGIN_ENTRY_SYMBOL);
    }
    const pio_plugin_descriptor *desc = entry(&registry->context);
    if (desc == NULL) {
        dlclose(handle);
        return pio_error_set(err, PIO_ERR_ABI,
                             "the plugin refused this host (host ABI %d.%d); rebuild it against "
                             "this SDK",
                             PIO_ABI_MAJOR, PIO_ABI_MINOR);
    }
    pio_status status = check_descriptor(registry, desc, err);
    if (status == PIO_OK)
        status = append_plugin(registry, path, handle, desc, err);
    if (status != PIO_OK)
        dlclose(handle);
    return status;
}

static int has_so_suffix(const char *name)
{
    size_t len = strlen(name);
    return len > 3 && strcmp(name + len - 3, ".so") == 0;
}

static int select_shared_objects(const struct dirent *entry)
{
    return entry->d_name[0] != '.' && has_so_suffix(entry->d_name);
}

int pio_registry_scan_dir(pio_plugin_registry *registry, const char *dir,
                          pio_plugin_reject_fn on_reject, void *user_data)
{
    struct dirent **entries = NULL;
    int n = scandir(dir, &entries, select_shared_objects, alphasort);
    if (n < 0) {
        if (on_reject)
            on_reject(user_data, dir, "plugin directory cannot be read");
        return -1;
    }
    int loaded = 0;
    for (int i = 0; i < n; i++) {
        char path[4096];
        int len = snprintf(path, sizeof path, "%s/%s", dir, entries[i]->d_name);
        free(entries[i]);
        if (len < 0 || (size_t)len >= sizeof path) {
            if (on_reject)
                on_reject(user_data, dir, "file path too long");
            continue;
        }
        pio_error err;
        pio_error_clear(&err);
        if (pio_registry_load_file(registry, path, &err) == PIO_OK)
            loaded++;
        else if (on_reject)
            on_reject(user_data, path, err.message);
    }
    free(entries);
    return loaded;
}

const pio_loaded_plugin *pio_registry_find_by_name(const pio_plugin_registry *registry,
                                                   const char *name)
{
    for (size_t i = 0; i < registry->count; i++)
        if (strcmp(registry->plugins[i].descriptor->name, name) == 0)
            return &registry->plugins[i];
    return NULL;
}

const pio_loaded_plugin *pio_registry_find_by_architecture(const pio_plugin_registry *registry,
                                                           const char *architecture)
{
    for (size_t i = 0; i < registry->count; i++)
        for (const char *const *arch = registry->plugins[i].descriptor->architectures; *arch;
             arch++)
            if (strcmp(*arch, architecture) == 0)
                return &registry->plugins[i];
    return NULL;
}

void pio_registry_close(pio_plugin_registry *registry)
{
    for (size_t i = 0; i < registry->count; i++) {
        dlclose(registry->plugins[i].dl_handle);
        free(registry->plugins[i].path);
    }
    free(registry->plugins);
    registry->plugins = NULL;
    registry->count = registry->capacity = 0;
}

const char *pio_capabilities_to_string(uint64_t capabilities, char *buf, size_t buf_size)
{
    static const struct {
        uint64_t bit;
        const char *name;
    } names[] = {
        {PIO_CAP_CPU, "cpu"},         {PIO_CAP_CUDA, "cuda"},
        {PIO_CAP_CHAT, "chat"},       {PIO_CAP_TOOLS, "tools"},
        {PIO_CAP_VISION, "vision"},   {PIO_CAP_STREAMING, "streaming"},
        {PIO_CAP_BATCHING, "batching"}, {PIO_CAP_TENSOR_PARALLEL, "tensor-parallel"},
    };
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!(capabilities & names[i].bit))
            continue;
        int n = snprintf(buf + used, buf_size - used, "%s%s", used ? "," : "", names[i].name);
        if (n < 0 || (size_t)n >= buf_size - used)
            break;
        used += (size_t)n;
    }
    return buf;
}
