#include "host/npy.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* The header (magic, version, length, dict, padding, '\n') is padded so the data starts on a
 * 64-byte boundary, as NumPy itself writes it. */
pio_status pio_npy_write_f32(const char *path, const float *data, size_t rows, size_t cols,
                             pio_error *err)
{
    char dict[128];
    int dict_len = snprintf(dict, sizeof dict,
                            "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }",
                            rows, cols);
    size_t preamble = 10; /* 6 magic + 2 version + 2 header length */
    size_t header_len = (size_t)dict_len + 1;
    size_t padded = (preamble + header_len + 63) / 64 * 64 - preamble;
    unsigned char head[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                              (unsigned char)(padded & 0xff), (unsigned char)(padded >> 8)};
    FILE *file = fopen(path, "wb");
    if (file == NULL)
        return pio_error_set(err, PIO_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    int ok = fwrite(head, 1, sizeof head, file) == sizeof head &&
             fwrite(dict, 1, (size_t)dict_len, file) == (size_t)dict_len;
    for (size_t i = (size_t)dict_len; ok && i + 1 < padded; i++)
        ok = fputc(' ', file) != EOF;
    ok = ok && fputc('\n', file) != EOF;
    ok = ok && fwrite(data, sizeof(float), rows * cols, file) == rows * cols;
    ok = (fclose(file) == 0) && ok;
    if (!ok)
        return pio_error_set(err, PIO_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return PIO_OK;
}
