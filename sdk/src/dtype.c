#include "pio/dtype.h"

#include <math.h>

static const struct {
    const char *name;
    size_t size;
} dtype_table[PIO_DTYPE_COUNT] = {
    [PIO_DTYPE_INVALID] = {"INVALID", 0}, [PIO_DTYPE_BF16] = {"BF16", 2},
    [PIO_DTYPE_F16] = {"F16", 2},         [PIO_DTYPE_F32] = {"F32", 4},
    [PIO_DTYPE_F8_E4M3] = {"F8_E4M3", 1}, [PIO_DTYPE_F8_E5M2] = {"F8_E5M2", 1},
    [PIO_DTYPE_I8] = {"I8", 1},           [PIO_DTYPE_U8] = {"U8", 1},
    [PIO_DTYPE_I32] = {"I32", 4},         [PIO_DTYPE_I64] = {"I64", 8},
    [PIO_DTYPE_BOOL] = {"BOOL", 1},
};

size_t pio_dtype_size(pio_dtype dtype)
{
    return (dtype > PIO_DTYPE_INVALID && dtype < PIO_DTYPE_COUNT) ? dtype_table[dtype].size : 0;
}

const char *pio_dtype_name(pio_dtype dtype)
{
    return (dtype > PIO_DTYPE_INVALID && dtype < PIO_DTYPE_COUNT) ? dtype_table[dtype].name
                                                                  : "INVALID";
}

pio_dtype pio_dtype_from_name(const char *name)
{
    if (name == NULL)
        return PIO_DTYPE_INVALID;
    for (int d = PIO_DTYPE_INVALID + 1; d < PIO_DTYPE_COUNT; d++)
        if (strcmp(dtype_table[d].name, name) == 0)
            return (pio_dtype)d;
    return PIO_DTYPE_INVALID;
}

float pio_f16_to_f32(uint16_t bits)
{
    int sign = (bits >> 15) & 1;
    int exponent = (bits >> 10) & 0x1f;
    int mantissa = bits & 0x3ff;
    float magnitude;
    if (exponent == 0)
        magnitude = ldexpf((float)mantissa, -24);
    else if (exponent == 31)
        magnitude = mantissa ? NAN : INFINITY;
    else
        magnitude = ldexpf((float)(mantissa | 0x400), exponent - 25);
    return sign ? -magnitude : magnitude;
}

uint16_t pio_f32_to_f16(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    uint32_t magnitude_bits = bits & 0x7fffffffu;
    if (magnitude_bits > 0x7f800000u)
        return sign | 0x7e00u;
    if (magnitude_bits >= 0x477ff000u) /* rounds to >= 65520: infinity */
        return sign | 0x7c00u;
    if (magnitude_bits < 0x38800000u) { /* below the smallest normal: subnormal or zero */
        float magnitude;
        memcpy(&magnitude, &magnitude_bits, sizeof magnitude);
        return sign | (uint16_t)lrintf(magnitude * 16777216.0f); /* 2^24, ties to even */
    }
    uint32_t rounding = 0xfffu + ((magnitude_bits >> 13) & 1u);
    return sign | (uint16_t)((magnitude_bits - 0x38000000u + rounding) >> 13);
}
