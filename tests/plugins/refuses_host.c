/* Fixture: an entry point that refuses every host (returns NULL). */
#include "pio/plugin.h"

PIO_EXPORT const pio_plugin_descriptor *pio_plugin_entry(const pio_host_context *host);
PIO_EXPORT const pio_plugin_descriptor *pio_plugin_entry(const pio_host_context *host)
{
    (void)host;
    return NULL;
}
