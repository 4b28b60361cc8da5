/*
 * A model's weights as a table of named slots: each slot is a tensor the model reads, with its
 * Hugging Face name and shape. The same table binds a safetensors checkpoint (every name, shape
 * and dtype checked), fills the real shapes with seeded values (load_format: dummy, as vLLM's
 * dummy loader does), and copies the weights to a device that is not host memory.
 */
#ifndef PIO_MODEL_WEIGHTS_H
#define PIO_MODEL_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"
#include "pio/error.h"
#include "pio/plugin.h"
#include "pio/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PIO_WEIGHT_NAME_MAX 112

typedef struct pio_weight_slot {
    char name[PIO_WEIGHT_NAME_MAX];
    pk_tensor *tensor;    /* where the bound or generated tensor goes */
    int64_t rows, cols;
    int is_norm;          /* stored 1-D ([cols]) in the files; a [1, cols] row here */
} pio_weight_slot;

/* Fills a slot; `format` may hold one %ld, replaced by `index` (a layer, an expert). */
void pio_weight_slot_set(pio_weight_slot *slot, pk_tensor *tensor, int64_t rows, int64_t cols,
                         int is_norm, const char *format, long index);

/* What the weights of a model add up to. */
typedef struct pio_weight_totals {
    uint64_t n_parameters;
    uint64_t bytes;
} pio_weight_totals;

/* Binds every slot to the checkpoint's tensor of that name (BF16 or F32, the slot's shape, in
 * place in the mapped file), reporting progress under "weights". Errors name the file and the
 * tensor. */
pio_status pio_weights_bind(const pio_safetensors *checkpoint, const pio_weight_slot *slots,
                            size_t n, const pio_host_services *services, void *host,
                            pio_weight_totals *totals, pio_error *err);

/* Logs a warning when the checkpoint holds tensors that no slot names (a mismatched model). */
void pio_weights_warn_unused(const pio_safetensors *checkpoint, const pio_weight_slot *slots,
                             size_t n, const pio_host_services *services, void *host);

/* Bytes pio_weights_generate needs for the slots (bf16 values, 64-byte aligned tensors). */
uint64_t pio_weights_generated_bytes(const pio_weight_slot *slots, size_t n);

/* Fills every slot with bf16 values drawn from `seed` (pk_fill_dummy: the same values on
 * every backend and thread count): norm weights near 1, matrices with the spread of
 * initializer_range 0.02, in `buffer` (pio_weights_generated_bytes bytes of ctx's memory,
 * 64-byte aligned tensors), so a GPU's weights are made on the GPU, with no host copy. */
pio_status pio_weights_generate(pk_context *ctx, const pio_weight_slot *slots, size_t n,
                                uint64_t seed, const pk_buffer *buffer,
                                const pio_host_services *services, void *host,
                                pio_weight_totals *totals, pio_error *err);

/* Copies every slot's tensor (host memory: the mapped files or a host view, strided views
 * packed) into one new device buffer of ctx and points the slot there: through two
 * page-locked 64 MiB staging buffers, copying one chunk out of host memory while the previous
 * one transfers, reporting progress under "upload (MB)". */
pio_status pio_weights_upload(pk_context *ctx, const pio_weight_slot *slots, size_t n,
                              pk_buffer *device_copy, const pio_host_services *services,
                              void *host, pio_error *err);

#ifdef __cplusplus
}
#endif

#endif
