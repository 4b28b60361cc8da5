/* Writing NumPy .npy files (format version 1.0), used by `pio logits`. */
#ifndef PIO_HOST_NPY_H
#define PIO_HOST_NPY_H

#include <stddef.h>

#include "pio/error.h"

/* Writes a C-order float32 array of shape [rows, cols] to path. */
pio_status pio_npy_write_f32(const char *path, const float *data, size_t rows, size_t cols,
                             pio_error *err);

#endif
