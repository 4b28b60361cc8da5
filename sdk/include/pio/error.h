/*
 * Error reporting inside the SDK support library: every fallible SDK call takes a pio_error *
 * (may be NULL) and, on failure, fills it with a status and one line of text that names the
 * file and the place (tensor name, byte offset, JSON key, ...).
 */
#ifndef PIO_ERROR_H
#define PIO_ERROR_H

#include "pio/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PIO_ERROR_MESSAGE_MAX 1024

typedef struct pio_error {
    pio_status status;
    char message[PIO_ERROR_MESSAGE_MAX];
} pio_error;

/* Records status and a printf-style message in *err (when err is not NULL) and returns status,
 * so a failing path reads `return pio_error_set(err, PIO_ERR_FORMAT, "%s: ...", path);`. */
pio_status pio_error_set(pio_error *err, pio_status status, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

/* Clears *err to PIO_OK and an empty message. */
void pio_error_clear(pio_error *err);

#ifdef __cplusplus
}
#endif

#endif
