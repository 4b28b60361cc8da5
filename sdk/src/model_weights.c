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

/* Norm weights near 1, matrices with the spread of initializer_range 0.02 (uniform of the
 * same standard deviation); values by pk_fill_dummy, where ctx keeps its memory. */
pio_status pio_weights_generate(pk_context *ctx, const pio_weight_slot *slots, size_t n,
                                uint64_t seed, const pk_buffer *buffer,
                                const pio_host_services *services, void *host,
                                pio_weight_totals *totals, pio_error *err)
{
    size_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        if (services->should_abort(host))
            return pio_error_set(err, PIO_ERR_CANCELLED, "loading was interrupted");
        int is_norm = slots[i].is_norm;
        pk_tensor t = pk_tensor_in(buffer, offset, PIO_DTYPE_BF16, slots[i].rows, slots[i].cols);
        pio_status status = pk_fill_dummy(ctx, &t, seed, i, is_norm ? 0.05f : 0.0346f,
                                          is_norm ? 1.0f : 0.0f, err);
        if (status != PIO_OK)
            return status;
        *slots[i].tensor = t;
        account(totals, &t);
        offset += padded((uint64_t)(slots[i].rows * slots[i].cols) * 2);
        services->progress(host, "weights", i + 1, n);
    }
    return pk_synchronize(ctx, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Placement                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* A tensor's bytes once contiguous: a strided view (a column slice) packs its rows. */
static uint64_t packed_bytes(const pk_tensor *t)
{
    return (uint64_t)pk_tensor_numel(t) * pio_dtype_size(t->dtype);
}

/* The weights go through two page-locked staging buffers: while the transfer of one chunk
 * runs, the next is copied out of the mapped file (or the host view's rows) into the other. */
#define UPLOAD_CHUNK_BYTES ((size_t)64 << 20)

typedef struct upload_state {
    pk_context *ctx;
    void *staging[2];
    int next;           /* the staging buffer the next chunk fills */
    int in_flight;      /* a transfer was issued and not waited for */
    uint64_t done, total;
    const pio_host_services *services;
    void *host;
} upload_state;

/* Rows [first, first + count) of host tensor src into device rows of dst, through staging. */
static pio_status upload_rows(upload_state *u, const pk_tensor *dst, const pk_tensor *src,
                              int64_t first, int64_t count, pio_error *err)
{
    size_t row_bytes = (size_t)src->cols * pio_dtype_size(src->dtype);
    char *stage = u->staging[u->next];
    for (int64_t r = 0; r < count; r++) /* overlaps the transfer issued before */
        memcpy(stage + (size_t)r * row_bytes,
               (const char *)src->data + (size_t)((first + r) * src->stride) *
                                             pio_dtype_size(src->dtype),
               row_bytes);
    pio_status status = u->in_flight ? pk_synchronize(u->ctx, err) : PIO_OK;
    pk_tensor from = pk_tensor_host(stage, src->dtype, count, src->cols);
    pk_tensor to = pk_tensor_rows(dst, first, count);
    if (status == PIO_OK)
        status = pk_copy(u->ctx, &to, &from, err);
    u->in_flight = status == PIO_OK;
    u->next ^= 1;
    u->done += (uint64_t)count * row_bytes;
    u->services->progress(u->host, "upload (MB)", u->done >> 20, u->total >> 20);
    return status;
}

static pio_status upload_tensor(upload_state *u, const pk_tensor *dst, const pk_tensor *src,
                                pio_error *err)
{
    size_t row_bytes = (size_t)src->cols * pio_dtype_size(src->dtype);
    int64_t rows_per_chunk = row_bytes > 0 ? (int64_t)(UPLOAD_CHUNK_BYTES / row_bytes) : 1;
    if (rows_per_chunk < 1) /* one row larger than a chunk: send it as it is */
        return pk_copy(u->ctx, dst, src, err);
    pio_status status = PIO_OK;
    for (int64_t r = 0; status == PIO_OK && r < src->rows; r += rows_per_chunk) {
        int64_t count = src->rows - r < rows_per_chunk ? src->rows - r : rows_per_chunk;
        status = upload_rows(u, dst, src, r, count, err);
    }
    return status;
}

pio_status pio_weights_upload(pk_context *ctx, const pio_weight_slot *slots, size_t n,
                              pk_buffer *device_copy, const pio_host_services *services,
                              void *host, pio_error *err)
{
    upload_state u = {.ctx = ctx, .services = services, .host = host};
    uint64_t bytes = 0;
    for (size_t i = 0; i < n; i++) {
        bytes += padded(packed_bytes(slots[i].tensor));
        u.total += packed_bytes(slots[i].tensor);
    }
    pio_status status = pk_buffer_alloc(ctx, bytes, device_copy, err);
    for (int b = 0; status == PIO_OK && b < 2; b++)
        status = pk_host_alloc(ctx, UPLOAD_CHUNK_BYTES, &u.staging[b], err);
    size_t offset = 0;
    for (size_t i = 0; status == PIO_OK && i < n; i++) {
        if (services->should_abort(host)) {
            status = pio_error_set(err, PIO_ERR_CANCELLED, "loading was interrupted");
            break;
        }
        pk_tensor src = *slots[i].tensor;
        pk_tensor device = pk_tensor_in(device_copy, offset, src.dtype, src.rows, src.cols);
        status = upload_tensor(&u, &device, &src, err);
        *slots[i].tensor = device;
        offset += padded(packed_bytes(&src));
    }
    pio_status synced = pk_synchronize(ctx, err); /* before the staging is freed */
    for (int b = 0; b < 2; b++)
        pk_host_free(ctx, u.staging[b]);
    return status == PIO_OK ? synced : status;
}
