#include "kernels/tensor.h"

static pk_tensor invalid_tensor(void)
{
    pk_tensor t = {0};
    t.dtype = PIO_DTYPE_INVALID;
    return t;
}

int pk_tensor_is_valid(const pk_tensor *t)
{
    return t != NULL && t->data != NULL && pio_dtype_size(t->dtype) > 0 && t->rows >= 0 &&
           t->cols >= 0 && t->stride >= t->cols && t->device >= 0 &&
           t->device < PK_DEVICE_KIND_COUNT;
}

pk_tensor pk_tensor_make(void *data, pio_dtype dtype, pk_device_kind device, int64_t rows,
                         int64_t cols)
{
    pk_tensor t = {data, dtype, device, rows, cols, cols};
    return pk_tensor_is_valid(&t) ? t : invalid_tensor();
}

pk_tensor pk_tensor_host(void *data, pio_dtype dtype, int64_t rows, int64_t cols)
{
    return pk_tensor_make(data, dtype, PK_DEVICE_CPU, rows, cols);
}

pk_tensor pk_tensor_in(const pk_buffer *buf, size_t byte_offset, pio_dtype dtype, int64_t rows,
                       int64_t cols)
{
    size_t elem = pio_dtype_size(dtype);
    if (buf == NULL || buf->data == NULL || elem == 0 || rows < 0 || cols < 0)
        return invalid_tensor();
    /* Overflow-safe form of byte_offset + rows * cols * elem <= buf->bytes. */
    if (byte_offset > buf->bytes || byte_offset % elem != 0)
        return invalid_tensor();
    size_t room = (buf->bytes - byte_offset) / elem;
    if (cols != 0 && (uint64_t)rows > room / (uint64_t)cols)
        return invalid_tensor();
    return pk_tensor_make((char *)buf->data + byte_offset, dtype, buf->device, rows, cols);
}

pk_tensor pk_tensor_rows(const pk_tensor *t, int64_t first, int64_t count)
{
    if (!pk_tensor_is_valid(t) || first < 0 || count < 0 || first > t->rows ||
        count > t->rows - first)
        return invalid_tensor();
    pk_tensor view = *t;
    view.data = (char *)t->data + (size_t)(first * t->stride) * pio_dtype_size(t->dtype);
    view.rows = count;
    return view;
}

pk_tensor pk_tensor_cols(const pk_tensor *t, int64_t first, int64_t count)
{
    if (!pk_tensor_is_valid(t) || first < 0 || count < 0 || first > t->cols ||
        count > t->cols - first)
        return invalid_tensor();
    pk_tensor view = *t;
    view.data = (char *)t->data + (size_t)first * pio_dtype_size(t->dtype);
    view.cols = count;
    return view;
}

pk_tensor pk_tensor_reshape(const pk_tensor *t, int64_t rows, int64_t cols)
{
    if (!pk_tensor_is_contiguous(t) || rows < 0 || cols < 0 || rows * cols != pk_tensor_numel(t))
        return invalid_tensor();
    return pk_tensor_make(t->data, t->dtype, t->device, rows, cols);
}

int pk_tensor_is_contiguous(const pk_tensor *t)
{
    return pk_tensor_is_valid(t) && (t->stride == t->cols || t->rows <= 1);
}

int64_t pk_tensor_numel(const pk_tensor *t)
{
    return pk_tensor_is_valid(t) ? t->rows * t->cols : 0;
}

size_t pk_tensor_span_bytes(const pk_tensor *t)
{
    if (!pk_tensor_is_valid(t) || t->rows == 0 || t->cols == 0)
        return 0;
    return (size_t)((t->rows - 1) * t->stride + t->cols) * pio_dtype_size(t->dtype);
}

static int same_layout(const pk_tensor *a, const pk_tensor *b)
{
    return pk_tensor_is_valid(a) && pk_tensor_is_valid(b) && a->dtype == b->dtype &&
           a->device == b->device && a->stride == b->stride;
}

int pk_tensor_join_rows(const pk_tensor *a, const pk_tensor *b, pk_tensor *out)
{
    if (!same_layout(a, b) || a->cols != b->cols ||
        (const char *)b->data !=
            (const char *)a->data + (size_t)(a->rows * a->stride) * pio_dtype_size(a->dtype))
        return 0;
    *out = *a;
    out->rows = a->rows + b->rows;
    return 1;
}

int pk_tensor_join_cols(const pk_tensor *a, const pk_tensor *b, pk_tensor *out)
{
    if (!same_layout(a, b) || a->rows != b->rows || a->cols + b->cols > a->stride ||
        (const char *)b->data != (const char *)a->data + (size_t)a->cols * pio_dtype_size(a->dtype))
        return 0;
    *out = *a;
    out->cols = a->cols + b->cols;
    return 1;
}
