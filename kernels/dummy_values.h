/*
 * The seeded stand-in values of load_format: dummy (vLLM's dummy loader does the same job): a
 * value in [-1, 1) that depends only on (seed, tensor, element), so every backend and thread
 * count makes the same weights. Shared by the backends' pk_fill_dummy (C and CUDA).
 */
#ifndef PIO_KERNELS_DUMMY_VALUES_H
#define PIO_KERNELS_DUMMY_VALUES_H

#include <stdint.h>

#ifdef __CUDACC__
#define PK_HOST_DEVICE __host__ __device__
#else
#define PK_HOST_DEVICE
#endif

/* splitmix64's finaliser over the three coordinates; 52 random bits scaled to [-1, 1). */
static inline PK_HOST_DEVICE float pk_dummy_uniform(uint64_t seed, uint64_t tensor,
                                                    uint64_t element)
{
    uint64_t z = seed ^ (tensor * 0x9e3779b97f4a7c15ull) ^ (element * 0xd1b54a32d192ed03ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) * 0x1.0p-52 - 1.0);
}

/* offset + scale · u, multiplied and added as two roundings on every backend (no fused
 * multiply-add), so an F32 dummy tensor is the same bits on the CPU and the GPU. */
static inline PK_HOST_DEVICE float pk_dummy_value(uint64_t seed, uint64_t tensor,
                                                  uint64_t element, float scale, float offset)
{
    float u = pk_dummy_uniform(seed, tensor, element);
#ifdef __CUDA_ARCH__
    return __fadd_rn(offset, __fmul_rn(scale, u));
#else
    float product = scale * u; /* C11 does not contract across statements */
    return offset + product;
#endif
}

#endif
