/*
 * Element types of tensors as stored in safetensors files and in the compute layer,
 * with the scalar conversions everything else builds on.
 */
#ifndef PIO_DTYPE_H
#define PIO_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pio_dtype {
    PIO_DTYPE_INVALID = 0,
    PIO_DTYPE_BF16,
    PIO_DTYPE_F16,
    PIO_DTYPE_F32,
    PIO_DTYPE_F8_E4M3,
    PIO_DTYPE_F8_E5M2,
    PIO_DTYPE_I8,
    PIO_DTYPE_U8,
    PIO_DTYPE_I32,
    PIO_DTYPE_I64,
    PIO_DTYPE_BOOL,
    PIO_DTYPE_COUNT
} pio_dtype;

/* Bytes per element; 0 for PIO_DTYPE_INVALID. */
size_t pio_dtype_size(pio_dtype dtype);
/* The safetensors spelling ("BF16", "F8_E4M3", ...); "INVALID" for unknown values. */
const char *pio_dtype_name(pio_dtype dtype);
/* Parses the safetensors spelling; PIO_DTYPE_INVALID when unknown. */
pio_dtype pio_dtype_from_name(const char *name);

static inline float pio_bf16_to_f32(uint16_t bits)
{
    uint32_t wide = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &wide, sizeof value);
    return value;
}

/* Round to nearest even, as PyTorch does; NaN stays a (quiet) NaN. */
static inline uint16_t pio_f32_to_bf16(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((bits >> 16) | 0x0040u);
    uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)((bits + rounding) >> 16);
}

float pio_f16_to_f32(uint16_t bits);
uint16_t pio_f32_to_f16(float value);

#ifdef __cplusplus
}
#endif

#endif
