/*
 * The group setup every GPU op test program shares: the seed of its random inputs, the
 * sanitizer flag, and a CPU and a CUDA context to run each op on both.
 *   PIO_GPU_TEST_SEED=N      repeats a run (the seed is printed); otherwise the clock picks one
 *   PIO_GPU_TEST_SANITIZER=1 (set by run-gpu-tests.sh under compute-sanitizer) asks for smaller
 *                            shapes and no deliberately failing API calls
 */
#ifndef PIO_TESTS_GPU_SETUP_H
#define PIO_TESTS_GPU_SETUP_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "kernels/ops.h"

/* The run's seed (never 0), printed with the program's name so a failure can be repeated. */
static inline uint64_t gpu_test_seed(const char *program)
{
    const char *text = getenv("PIO_GPU_TEST_SEED");
    uint64_t seed = text != NULL ? strtoull(text, NULL, 0) : (uint64_t)time(NULL) * 2654435761u;
    if (seed == 0)
        seed = 1;
    printf("%s: seed %llu (PIO_GPU_TEST_SEED repeats it)\n", program, (unsigned long long)seed);
    return seed;
}

static inline int gpu_test_under_sanitizer(void)
{
    const char *text = getenv("PIO_GPU_TEST_SANITIZER");
    return text != NULL && atoi(text) != 0;
}

/* *cpu and *gpu made (0), or neither (-1, the reason on stderr). */
static inline int gpu_test_contexts(pk_context **cpu, pk_context **gpu)
{
    pio_error err;
    *cpu = *gpu = NULL;
    if (pk_context_create(PK_DEVICE_CPU, NULL, cpu, &err) != PIO_OK) {
        fprintf(stderr, "cpu context: %s\n", err.message);
        *cpu = NULL;
        return -1;
    }
    pio_status st = pk_context_create(PK_DEVICE_CUDA, NULL, gpu, &err);
    if (st != PIO_OK) {
        fprintf(stderr, "cuda context: %s (%s)\n", err.message, pio_status_str(st));
        pk_context_destroy(*cpu);
        *cpu = *gpu = NULL;
        return -1;
    }
    return 0;
}

static inline int gpu_test_release_contexts(pk_context *cpu, pk_context *gpu)
{
    pk_context_destroy(gpu);
    pk_context_destroy(cpu);
    return 0;
}

#endif
