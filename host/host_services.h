/*
 * The host side of pio_host_services: logging, error text, config lookups, progress,
 * cancellation and device-memory accounting, all keyed by one pio_host_state per instance.
 */
#ifndef PIO_HOST_SERVICES_H
#define PIO_HOST_SERVICES_H

#include <signal.h>
#include <stdint.h>

#include "host/config.h"
#include "pio/plugin.h"

#define PIO_HOST_MAX_DEVICES 16

typedef struct pio_device_memory {
    uint64_t current;
    uint64_t peak;
    uint64_t budget; /* 0 = no limit */
} pio_device_memory;

typedef struct pio_host_state {
    const pio_config *config;   /* not owned */
    char source_name[80];       /* log prefix: the plugin name, or "pio" */
    pio_log_level log_level;    /* messages above this level are dropped */
    int show_progress;          /* draw a progress bar on stderr */
    pio_status last_status;     /* from set_error */
    char last_error[1024];
    /* index 0 is host RAM (device -1), index d+1 is CUDA device d */
    pio_device_memory memory[PIO_HOST_MAX_DEVICES + 1];
} pio_host_state;

/* The table every plugin gets; static, never changes. */
const pio_host_services *pio_host_services_table(void);

/* config may be NULL (then every key is absent). Log level comes from `logging.level`. */
void pio_host_state_init(pio_host_state *state, const pio_config *config, const char *source);

/* Set by the SIGINT handler that pio_host_install_interrupt_handler installs; polled through
 * should_abort. */
extern volatile sig_atomic_t pio_host_interrupted;
void pio_host_install_interrupt_handler(void);

/* Formats "12.3 MiB" into buf. */
const char *pio_format_bytes(uint64_t bytes, char *buf, size_t buf_size);

#endif
