/* Weight tables: binding, dummy values and placement (see pio/model_weights.h). */
#include "pio/model_weights.h"

#include <stdio.h>
#include <string.h>

void pio_weight_slot_set(pio_weight_slot *slot, pk_tensor *tensor, int64_t rows, int64_t cols,
                         int is_norm, const char *format, long index)
{
    snprintf(slot->name, sizeof slot->name, format, index);
    slot->tensor = tensor;
    slot->rows = rows;
    slot->cols = cols;
    slot->is_norm = is_norm;
}

/* Tensors are laid out 64-byte aligned in the memory this file fills, as the safetensors
 * writer aligns them in files. */
static uint64_t padded(uint64_t bytes)
{
    return (bytes + 63) / 64 * 64;
}

static void account(pio_weight_totals *totals, const pk_tensor *t)
{
    totals->n_parameters += (uint64_t)pk_tensor_numel(t);
    totals->bytes += pk_tensor_span_bytes(t);
}

static pio_status bind_slot(const pio_safetensors *st, const pio_weight_slot *slot,
                            pio_weight_totals *totals, pio_error *err)
{
    int64_t shape[2] = {slot->rows, slot->cols};
    const pio_safetensors_tensor *t = NULL;
    pio_status status = pio_safetensors_get(st, slot->name, PIO_DTYPE_INVALID,
                                            slot->is_norm ? 1 : 2,
                                            slot->is_norm ? &slot->cols : shape, &t, err);
    if (status != PIO_OK)
        return status;
    const char *file = pio_safetensors_file(st, t->file_index)->path;
    if (t->dtype != PIO_DTYPE_BF16 && t->dtype != PIO_DTYPE_F32)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: %s: dtype %s is not supported "
                             "(BF16 or F32)", file, slot->name, pio_dtype_name(t->dtype));
    if ((uintptr_t)t->data % pio_dtype_size(t->dtype) != 0)
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: %s: data at byte %llu is not aligned to "
                             "its element size", file, slot->name,
                             (unsigned long long)t->file_offset);
    *slot->tensor = pk_tensor_host((void *)t->data, t->dtype, slot->rows, slot->cols);
    account(totals, slot->tensor);
    return PIO_OK;
}

pio_status pio_weights_bind(const pio_safetensors *checkpoint, const pio_weight_slot *slots,
                            size_t n, const pio_host_services *services, void *host,
                            pio_weight_totals *totals, pio_error *err)
{
    for (size_t i = 0; i < n; i++) {
        pio_status status = bind_slot(checkpoint, &slots[i], totals, err);
        if (status != PIO_OK)
            return status;
        services->progress(host, "weights", i + 1, n);
    }
    return PIO_OK;
}

static int slot_named(const pio_weight_slot *slots, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(slots[i].name, name) == 0)
            return 1;
    return 0;
}

void pio_weights_warn_unused(const pio_safetensors *checkpoint, const pio_weight_slot *slots,
                             size_t n, const pio_host_services *services, void *host)
{
    size_t unused = 0;
    const char *first = NULL;
    for (size_t i = 0; i < pio_safetensors_count(checkpoint); i++) {
        const char *name = pio_safetensors_at(checkpoint, i)->name;
        if (!slot_named(slots, n, name)) {
            unused++;
            first = first ? first : name;
        }
    }
    if (unused == 0)
        return;
    char message[256];
    snprintf(message, sizeof message, "%zu tensor(s) of the checkpoint are not used (first: %s)",
             unused, first);
    services->log(host, PIO_LOG_WARN, message);
}

/* ------------------------------------------------------------------------------------------ */
/* Dummy weights                                                                              */
/* ------------------------------------------------------------------------------------------ */

uint64_t pio_weights_generated_bytes(const pio_weight_slot *slots, size_t n)
{
    uint64_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += padded((uint64_t)(slots[i].rows * slots[i].cols) * 2);
    return bytes;
}

/* A value in [-1, 1) that depends only on (seed, tensor, element): the same weights for any
 * number of threads. */
static float dummy_uniform(uint64_t seed, uint64_t tensor, uint64_t element)
{
    uint64_t z = seed ^ (tensor * 0x9e3779b97f4a7c15ull) ^ (element * 0xd1b54a32d192ed03ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) * 0x1.0p-52 - 1.0);
}

/* Norm weights near 1, matrices with the spread of initializer_range 0.02 (uniform of the
 * same standard deviation). */
static void fill_dummy(uint16_t *data, int64_t count, uint64_t seed, uint64_t tensor,
                       int is_norm, int n_threads)
{
    const float scale = is_norm ? 0.05f : 0.0346f, offset = is_norm ? 1.0f : 0.0f;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t i = 0; i < count; i++)
        data[i] = pio_f32_to_bf16(offset + scale * dummy_uniform(seed, tensor, (uint64_t)i));
}

pio_status pio_weights_generate(const pio_weight_slot *slots, size_t n, uint64_t seed,
                                int n_threads, void *memory, const pio_host_services *services,
                                void *host, pio_weight_totals *totals, pio_error *err)
{
    uint16_t *next = memory;
    for (size_t i = 0; i < n; i++) {
        if (services->should_abort(host))
            return pio_error_set(err, PIO_ERR_CANCELLED, "loading was interrupted");
        int64_t count = slots[i].rows * slots[i].cols;
        fill_dummy(next, count, seed, i, slots[i].is_norm, n_threads);
        *slots[i].tensor = pk_tensor_host(next, PIO_DTYPE_BF16, slots[i].rows, slots[i].cols);
        account(totals, slots[i].tensor);
        next += padded((uint64_t)count * 2) / 2;
        services->progress(host, "weights", i + 1, n);
    }
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Placement                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* A tensor's bytes once contiguous: a strided view (a column slice) packs its rows. */
static uint64_t packed_bytes(const pk_tensor *t)
{
    return (uint64_t)pk_tensor_numel(t) * pio_dtype_size(t->dtype);
}

pio_status pio_weights_upload(pk_context *ctx, const pio_weight_slot *slots, size_t n,
                              pk_buffer *device_copy, pio_error *err)
{
    uint64_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += padded(packed_bytes(slots[i].tensor));
    pio_status status = pk_buffer_alloc(ctx, bytes, device_copy, err);
    size_t offset = 0;
    for (size_t i = 0; status == PIO_OK && i < n; i++) {
        pk_tensor host = *slots[i].tensor;
        pk_tensor device = pk_tensor_in(device_copy, offset, host.dtype, host.rows, host.cols);
        status = pk_copy(ctx, &device, &host, err);
        *slots[i].tensor = device;
        offset += padded(packed_bytes(&host));
    }
    return status == PIO_OK ? pk_synchronize(ctx, err) : status;
}
