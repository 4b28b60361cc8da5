#include "pio/error.h"

#include <stdarg.h>
#include <stdio.h>

pio_status pio_error_set(pio_error *err, pio_status status, const char *format, ...)
{
    if (err != NULL) {
        va_list args;
        va_start(args, format);
        err->status = status;
        vsnprintf(err->message, sizeof err->message, format, args);
        va_end(args);
    }
    return status;
}

void pio_error_clear(pio_error *err)
{
    if (err != NULL) {
        err->status = PIO_OK;
        err->message[0] = '\0';
    }
}
