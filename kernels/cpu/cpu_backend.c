/*
 * The CPU backend: host memory, synchronous ops, OpenMP threads. This file holds the backend
 * table, memory and the shared workspace; the ops live in the other files of this folder.
 */
#include "kernels/cpu_internal.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

enum { CPU_ALIGNMENT = 64 };

int pk_cpu_has_avx2(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

static pio_status cpu_init(pk_context *ctx, pio_error *err)
{
    pk_cpu_state *state = calloc(1, sizeof *state);
    if (state == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "cpu backend: out of memory");
    state->n_threads = ctx->options.n_threads > 0 ? ctx->options.n_threads : omp_get_max_threads();
    if (state->n_threads < 1)
        state->n_threads = 1;
    state->use_avx2 = !ctx->options.cpu_force_scalar && pk_cpu_has_avx2();
    ctx->state = state;
    return PIO_OK;
}

static void cpu_fini(pk_context *ctx)
{
    pk_cpu_state *state = pk_cpu_state_of(ctx);
    if (state == NULL)
        return;
    free(state->scratch);
    free(state->index_scratch);
    free(state);
    ctx->state = NULL;
}

static int cpu_threads(const pk_context *ctx)
{
    return pk_cpu_state_of(ctx)->n_threads;
}

static size_t round_up(size_t value, size_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

static pio_status cpu_alloc(pk_context *ctx, size_t bytes, void **data, pio_error *err)
{
    (void)ctx;
    /* Never zero bytes, so an empty buffer still has an address; rounded for aligned_alloc. */
    size_t size = round_up(bytes > 0 ? bytes : 1, CPU_ALIGNMENT);
    if (size < bytes) {
        *data = NULL;
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "cpu backend: %zu bytes is too large",
                             bytes);
    }
    *data = aligned_alloc(CPU_ALIGNMENT, size);
    if (*data == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY,
                             "cpu backend: cannot allocate %zu bytes", bytes);
    return PIO_OK;
}

static void cpu_free(pk_context *ctx, void *data)
{
    (void)ctx;
    free(data);
}

float *pk_cpu_scratch(pk_context *ctx, size_t floats_per_thread, size_t *stride, pio_error *err)
{
    pk_cpu_state *state = pk_cpu_state_of(ctx);
    size_t per_thread = round_up(floats_per_thread > 0 ? floats_per_thread : 1,
                                 CPU_ALIGNMENT / sizeof(float));
    size_t threads = (size_t)state->n_threads;
    if (per_thread > state->scratch_stride || state->scratch == NULL) {
        if (per_thread > SIZE_MAX / sizeof(float) / threads) {
            pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "cpu backend: workspace too large");
            return NULL;
        }
        float *grown = aligned_alloc(CPU_ALIGNMENT, per_thread * threads * sizeof(float));
        if (grown == NULL) {
            pio_error_set(err, PIO_ERR_OUT_OF_MEMORY,
                          "cpu backend: cannot allocate a %zu-byte workspace",
                          per_thread * threads * sizeof(float));
            return NULL;
        }
        free(state->scratch);
        state->scratch = grown;
        state->scratch_stride = per_thread;
    }
    *stride = state->scratch_stride;
    return state->scratch;
}

int32_t *pk_cpu_index_scratch(pk_context *ctx, size_t count, pio_error *err)
{
    pk_cpu_state *state = pk_cpu_state_of(ctx);
    if (count <= state->index_capacity && state->index_scratch != NULL)
        return state->index_scratch;
    int32_t *grown = count < SIZE_MAX / sizeof *grown ? malloc(count * sizeof *grown) : NULL;
    if (grown == NULL) {
        pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "cpu backend: cannot allocate %zu indices",
                      count);
        return NULL;
    }
    free(state->index_scratch);
    state->index_scratch = grown;
    state->index_capacity = count;
    return grown;
}

static pio_status cpu_copy(pk_context *ctx, const pk_tensor *dst, const pk_tensor *src,
                           pio_error *err)
{
    (void)ctx;
    (void)err;
    size_t row_bytes = (size_t)dst->cols * pio_dtype_size(dst->dtype);
    if (pk_tensor_is_contiguous(dst) && pk_tensor_is_contiguous(src)) {
        memmove(dst->data, src->data, row_bytes * (size_t)dst->rows);
        return PIO_OK;
    }
    for (int64_t r = 0; r < dst->rows; r++)
        memmove(pk_cpu_row(dst, r), pk_cpu_row(src, r), row_bytes);
    return PIO_OK;
}

static pio_status cpu_synchronize(pk_context *ctx, pio_error *err)
{
    (void)ctx;
    (void)err;
    return PIO_OK;
}

const pk_backend pk_cpu_backend = {
    .name = "cpu",
    .device = PK_DEVICE_CPU,
    .init = cpu_init,
    .fini = cpu_fini,
    .threads = cpu_threads,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy = cpu_copy,
    .synchronize = cpu_synchronize,
    .embedding = pk_cpu_embedding,
    .matmul = pk_cpu_matmul,
    .rmsnorm = pk_cpu_rmsnorm,
    .rope = pk_cpu_rope,
    .swiglu = pk_cpu_swiglu,
    .add = pk_cpu_add,
    .softmax = pk_cpu_softmax,
    .argmax = pk_cpu_argmax,
    .cast = pk_cpu_cast,
    .fill_dummy = pk_cpu_fill_dummy,
    .kv_store = pk_cpu_kv_store,
    .attention = pk_cpu_attention,
    .moe_topk_softmax = pk_cpu_moe_topk_softmax,
    .moe_experts = pk_cpu_moe_experts,
    .moe_experts_slice = pk_cpu_moe_experts_slice,
    .sample = pk_cpu_sample,
};
