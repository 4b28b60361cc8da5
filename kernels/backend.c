#include "kernels/backend.h"

#include <stdlib.h>

#if PIO_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

/* pk_gemv_tma_short_context_for: between the H100's 3,350 and the H200's 4,800 GB/s. */
#define PK_GEMV_TMA_FAST_MEMORY_GBS 4000.0

/* Every backend of this build: the CUDA one (kernels/cuda/) when built with CUDA. */
static const pk_backend *const backends[PK_DEVICE_KIND_COUNT] = {
    [PK_DEVICE_CPU] = &pk_cpu_backend,
#if PIO_HAVE_CUDA
    [PK_DEVICE_CUDA] = &pk_cuda_backend,
#endif
};

const pk_backend *pk_backend_for(pk_device_kind device)
{
    if ((int)device < 0 || device >= PK_DEVICE_KIND_COUNT)
        return NULL;
    return backends[device];
}

int pk_backend_available(pk_device_kind device)
{
    return pk_backend_for(device) != NULL;
}

const char *pk_device_name(pk_device_kind device)
{
    switch (device) {
    case PK_DEVICE_CPU: return "cpu";
    case PK_DEVICE_CUDA: return "cuda";
    default: return "unknown";
    }
}

pio_status pk_context_create_with(const pk_backend *backend, const pk_context_options *options,
                                  pk_context **out, pio_error *err)
{
    if (out == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pk_context_create: out is NULL");
    *out = NULL;
    if (backend == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pk_context_create: no backend");
    pk_context *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "pk_context_create: out of memory");
    ctx->backend = backend;
    if (options != NULL)
        ctx->options = *options;
    pio_status status = backend->init(ctx, err);
    if (status != PIO_OK) {
        free(ctx);
        return status;
    }
    *out = ctx;
    return PIO_OK;
}

pio_status pk_context_create(pk_device_kind device, const pk_context_options *options,
                             pk_context **out, pio_error *err)
{
    const pk_backend *backend = pk_backend_for(device);
    if (backend == NULL) {
        if (out != NULL)
            *out = NULL;
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "pk_context_create: this build has no %s backend",
                             pk_device_name(device));
    }
    return pk_context_create_with(backend, options, out, err);
}

void pk_context_destroy(pk_context *ctx)
{
    if (ctx == NULL)
        return;
    ctx->backend->fini(ctx);
    free(ctx);
}

void pk_context_set_gemv_tma(pk_context *ctx, pk_gemv_tma mode)
{
    if (ctx == NULL || ctx->options.gemv_tma == mode)
        return;
    ctx->options.gemv_tma = mode;
    if (ctx->backend->options_changed != NULL)
        ctx->backend->options_changed(ctx);
}

pk_device_kind pk_context_device(const pk_context *ctx)
{
    return ctx->backend->device;
}

const char *pk_context_backend_name(const pk_context *ctx)
{
    return ctx->backend->name;
}

int pk_gemv_tma_short_context_for(double memory_gbs)
{
    return memory_gbs >= PK_GEMV_TMA_FAST_MEMORY_GBS ? 4096 : 512;
}

int pk_context_gemv_tma_short_context(const pk_context *ctx)
{
    return ctx->backend->gemv_tma_short_context != NULL
               ? ctx->backend->gemv_tma_short_context(ctx)
               : 0;
}

int pk_context_threads(const pk_context *ctx)
{
    return ctx->backend->threads(ctx);
}

pio_status pk_synchronize(pk_context *ctx, pio_error *err)
{
    if (ctx == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pk_synchronize: ctx is NULL");
    return ctx->backend->synchronize(ctx, err);
}

pio_status pk_buffer_alloc(pk_context *ctx, size_t bytes, pk_buffer *out, pio_error *err)
{
    if (out == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pk_buffer_alloc: out is NULL");
    *out = (pk_buffer){0};
    if (ctx == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pk_buffer_alloc: ctx is NULL");
    void *data = NULL;
    pio_status status = ctx->backend->alloc(ctx, bytes, &data, err);
    if (status != PIO_OK)
        return status;
    *out = (pk_buffer){data, bytes, ctx->backend->device};
    return PIO_OK;
}

void pk_buffer_free(pk_context *ctx, pk_buffer *buf)
{
    if (ctx == NULL || buf == NULL)
        return;
    if (buf->data != NULL)
        ctx->backend->free(ctx, buf->data);
    *buf = (pk_buffer){0};
}

pio_status pk_host_alloc(pk_context *ctx, size_t bytes, void **out, pio_error *err)
{
    if (out == NULL || ctx == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pk_host_alloc: %s is NULL",
                             out == NULL ? "out" : "ctx");
    *out = NULL;
    if (ctx->backend->host_alloc != NULL)
        return ctx->backend->host_alloc(ctx, bytes, out, err);
    size_t rounded = (bytes + 63) / 64 * 64;
    *out = aligned_alloc(64, rounded > 0 ? rounded : 64);
    return *out != NULL ? PIO_OK
                        : pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "pk_host_alloc: out of "
                                        "memory for %zu bytes", bytes);
}

void pk_host_free(pk_context *ctx, void *data)
{
    if (ctx == NULL || data == NULL)
        return;
    if (ctx->backend->host_free != NULL)
        ctx->backend->host_free(ctx, data);
    else
        free(data);
}
