/* Fixture: a plugin built for a newer ABI minor than the host. */
#define DESCRIPTOR_SIZE sizeof(pio_plugin_descriptor)
#define DESCRIPTOR_MAJOR (PIO_ABI_MAJOR)
#define DESCRIPTOR_MINOR (PIO_ABI_MINOR + 1)
#include "handmade_descriptor.h"
