/*
 * Fixtures that write their descriptor by hand to break one rule of the handshake.
 * The including file defines DESCRIPTOR_SIZE, DESCRIPTOR_MAJOR and DESCRIPTOR_MINOR.
 */
#include "pio/plugin.h"

static const char *const handmade_architectures[] = {"HandmadeForCausalLM", NULL};
static const pio_plugin_vtable handmade_vtable = {.struct_size = sizeof(pio_plugin_vtable)};
static const pio_plugin_descriptor handmade_descriptor = {
    DESCRIPTOR_SIZE, DESCRIPTOR_MAJOR, DESCRIPTOR_MINOR, "handmade", "0.0.1",
    handmade_architectures, PIO_CAP_CPU, PIO_SDK_VERSION_STRING, 0, "", &handmade_vtable};

PIO_EXPORT const pio_plugin_descriptor *pio_plugin_entry(const pio_host_context *host);
PIO_EXPORT const pio_plugin_descriptor *pio_plugin_entry(const pio_host_context *host)
{
    (void)host;
    return &handmade_descriptor;
}
