/*
 * Tensors and buffers of the compute layer.
 *
 * A pk_buffer is one allocation in the memory of a device (host RAM for the CPU backend, GPU
 * memory for a CUDA backend); pk_buffer_alloc/pk_buffer_free in ops.h make and release them.
 * A pk_tensor is a non-owning 2-D row-major view: `rows` rows of `cols` elements, consecutive
 * rows `stride` elements apart (stride >= cols). A 1-D tensor is a single row. Column views
 * (pk_tensor_cols) keep the parent's stride, which is how a fused [gate|up] output, the K part of
 * a QKV output or the rope part of an MLA latent row is addressed without copying.
 *
 * Helpers here never fail: a view that does not fit its parent comes back with data == NULL, and
 * every op rejects such a tensor with PIO_ERR_INVALID_ARGUMENT.
 */
#ifndef PIO_KERNELS_TENSOR_H
#define PIO_KERNELS_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "pio/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pk_device_kind {
    PK_DEVICE_CPU = 0,
    PK_DEVICE_CUDA = 1,
    PK_DEVICE_KIND_COUNT
} pk_device_kind;

typedef struct pk_buffer {
    void *data;            /* NULL for an empty buffer */
    size_t bytes;
    pk_device_kind device; /* where data lives */
} pk_buffer;

typedef struct pk_tensor {
    void *data;            /* first element, in the memory of `device`; NULL = invalid tensor */
    pio_dtype dtype;
    pk_device_kind device;
    int64_t rows;
    int64_t cols;
    int64_t stride;        /* elements between the starts of consecutive rows */
} pk_tensor;

/* A contiguous [rows, cols] view of memory at `data` on `device` (stride = cols). */
pk_tensor pk_tensor_make(void *data, pio_dtype dtype, pk_device_kind device, int64_t rows,
                         int64_t cols);
/* A contiguous view of host memory: shorthand for pk_tensor_make(..., PK_DEVICE_CPU, ...). */
pk_tensor pk_tensor_host(void *data, pio_dtype dtype, int64_t rows, int64_t cols);
/* A contiguous [rows, cols] view starting byte_offset bytes into buf; invalid if it overruns. */
pk_tensor pk_tensor_in(const pk_buffer *buf, size_t byte_offset, pio_dtype dtype, int64_t rows,
                       int64_t cols);
/* Rows [first, first + count) of t. */
pk_tensor pk_tensor_rows(const pk_tensor *t, int64_t first, int64_t count);
/* Columns [first, first + count) of every row of t (same stride). */
pk_tensor pk_tensor_cols(const pk_tensor *t, int64_t first, int64_t count);
/* The same contiguous elements seen as [rows, cols]; invalid unless t is contiguous and the
 * element counts agree. */
pk_tensor pk_tensor_reshape(const pk_tensor *t, int64_t rows, int64_t cols);

/* The view covering a and then b when b's rows directly follow a's in memory (same dtype,
 * device, cols and stride: two weights packed back to back, e.g. q_proj then k_proj): 1 and
 * *out set, else 0. Fused projections use it to run one matmul where the weights allow. */
int pk_tensor_join_rows(const pk_tensor *a, const pk_tensor *b, pk_tensor *out);
/* The same for columns: b's columns directly follow a's in every row (same dtype, device, rows
 * and stride: adjacent column views of one buffer, e.g. the q and k parts of a QKV output). */
int pk_tensor_join_cols(const pk_tensor *a, const pk_tensor *b, pk_tensor *out);

int pk_tensor_is_valid(const pk_tensor *t);
int pk_tensor_is_contiguous(const pk_tensor *t);
/* Number of elements, rows * cols. */
int64_t pk_tensor_numel(const pk_tensor *t);
/* Bytes from the first to one past the last element (rows spanned with the stride). */
size_t pk_tensor_span_bytes(const pk_tensor *t);

#ifdef __cplusplus
}
#endif

#endif
