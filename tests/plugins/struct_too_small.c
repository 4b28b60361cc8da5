/* Fixture: a descriptor whose struct_size is too small. */
#define DESCRIPTOR_SIZE 8
#define DESCRIPTOR_MAJOR (PIO_ABI_MAJOR)
#define DESCRIPTOR_MINOR (PIO_ABI_MINOR)
#include "handmade_descriptor.h"
