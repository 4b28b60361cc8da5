/*
 * Short vector kernels (dot product, axpy, conversion) over an F32 operand and a BF16 or F32
 * operand, in portable C and in AVX2 + FMA. The AVX2 variants are compiled with a target
 * attribute and picked at run time, so the library runs on any x86-64 and elsewhere.
 */
#include "kernels/cpu_internal.h"


static float dot_portable(const float *a, const void *b, pio_dtype dtype, int64_t n)
{
    /* Eight partial sums: shorter dependency chains and a rounding pattern closer to the
     * vector variant's. */
    float partial[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            partial[j] += a[i + j] * pk_cpu_load(b, dtype, i + j);
    float sum = 0.0f;
    for (int j = 0; j < 8; j++)
        sum += partial[j];
    for (; i < n; i++)
        sum += a[i] * pk_cpu_load(b, dtype, i);
    return sum;
}

static void axpy_portable(float *y, float alpha, const void *x, pio_dtype dtype, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += alpha * pk_cpu_load(x, dtype, i);
}

static void to_f32_portable(float *dst, const void *src, pio_dtype dtype, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = pk_cpu_load(src, dtype, i);
}

#if PK_HAVE_X86
PK_AVX2 static float dot_avx2(const float *a, const void *b, pio_dtype dtype, int64_t n)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), pk_avx2_load8(b, dtype, i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), pk_avx2_load8(b, dtype, i + 8), acc1);
    }
    if (i + 8 <= n) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), pk_avx2_load8(b, dtype, i), acc0);
        i += 8;
    }
    float sum = pk_avx2_hsum8(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++)
        sum += a[i] * pk_cpu_load(b, dtype, i);
    return sum;
}

PK_AVX2 static void axpy_avx2(float *y, float alpha, const void *x, pio_dtype dtype,
                              int64_t n)
{
    __m256 a = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i,
                         _mm256_fmadd_ps(a, pk_avx2_load8(x, dtype, i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += alpha * pk_cpu_load(x, dtype, i);
}

PK_AVX2 static void to_f32_avx2(float *dst, const void *src, pio_dtype dtype, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, pk_avx2_load8(src, dtype, i));
    for (; i < n; i++)
        dst[i] = pk_cpu_load(src, dtype, i);
}
#endif

float pk_cpu_dot(int avx2, const float *a, const void *b, pio_dtype dtype, int64_t n)
{
#if PK_HAVE_X86
    if (avx2)
        return dot_avx2(a, b, dtype, n);
#endif
    (void)avx2;
    return dot_portable(a, b, dtype, n);
}

void pk_cpu_axpy(int avx2, float *y, float alpha, const void *x, pio_dtype dtype, int64_t n)
{
#if PK_HAVE_X86
    if (avx2) {
        axpy_avx2(y, alpha, x, dtype, n);
        return;
    }
#endif
    (void)avx2;
    axpy_portable(y, alpha, x, dtype, n);
}

void pk_cpu_to_f32(int avx2, float *dst, const void *src, pio_dtype dtype, int64_t n)
{
#if PK_HAVE_X86
    if (avx2) {
        to_f32_avx2(dst, src, dtype, n);
        return;
    }
#endif
    (void)avx2;
    to_f32_portable(dst, src, dtype, n);
}
