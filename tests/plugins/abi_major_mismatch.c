/* Fixture: a plugin built for the next ABI major. */
#define DESCRIPTOR_SIZE sizeof(pio_plugin_descriptor)
#define DESCRIPTOR_MAJOR (PIO_ABI_MAJOR + 1)
#define DESCRIPTOR_MINOR (0)
#include "handmade_descriptor.h"
