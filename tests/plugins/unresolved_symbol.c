/* Fixture: a plugin that needs a symbol nothing provides, so dlopen(RTLD_NOW) fails. */
#include "pio/plugin.h"

extern int pio_symbol_that_nothing_defines(void);

PIO_EXPORT const pio_plugin_descriptor *pio_plugin_entry(const pio_host_context *host);
PIO_EXPORT const pio_plugin_descriptor *pio_plugin_entry(const pio_host_context *host)
{
    (void)host;
    return pio_symbol_that_nothing_defines() ? NULL : NULL;
}
