/*
 * Safetensors reader and writer.
 *
 * File layout (the format of Hugging Face `safetensors`):
 *   bytes 0..7      N, the header length, unsigned 64-bit little-endian
 *   bytes 8..8+N    the header: a UTF-8 JSON object starting with '{', maybe padded with spaces:
 *                   {"__metadata__": {"k": "v", ...},              (optional, strings only)
 *                    "NAME": {"dtype": "BF16", "shape": [d0, d1, ...],
 *                             "data_offsets": [BEGIN, END]},
 *                    ...}
 *   bytes 8+N..EOF  the data section; [BEGIN, END) are relative to its start. Tensors are
 *                   row-major, little-endian, and together cover the data section exactly, without
 *                   gaps or overlaps.
 *
 * A checkpoint is either one such file or a folder with `model.safetensors.index.json`
 * ({"metadata": {...}, "weight_map": {"NAME": "model-00001-of-00003.safetensors", ...}}) and the
 * shard files it names. pio_safetensors_open() validates every promise of the format before any
 * pointer is handed out; each failure is a pio_error naming the file, the tensor and the byte
 * offset.
 *
 * Files are mapped read-only; tensor data pointers point into the mappings and stay valid until
 * pio_safetensors_close(). If another process truncates a mapped file while it is open, touching
 * the lost pages raises SIGBUS; nothing in a mapping can prevent that.
 *
 * Alignment: `data` is aligned to the element size when the header length is a multiple of 8 and
 * every BEGIN is a multiple of the element size, which holds for files written by the Hugging Face
 * library and by pio_safetensors_write(). Other (legal) files may give unaligned pointers; read
 * them with memcpy or check ((uintptr_t)data % pio_dtype_size(dtype)).
 *
 * Thread safety: an open checkpoint is immutable; every query may run on any thread concurrently.
 */
#ifndef PIO_SAFETENSORS_H
#define PIO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "pio/dtype.h"
#include "pio/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The largest header accepted (the limit the reference implementation applies). */
#define PIO_SAFETENSORS_MAX_HEADER_BYTES 100000000u

typedef struct pio_safetensors pio_safetensors; /* an open checkpoint (opaque) */

/* One tensor. Everything it points at is owned by the checkpoint. */
typedef struct pio_safetensors_tensor {
    const char *name;       /* NUL-terminated UTF-8 */
    pio_dtype dtype;
    size_t n_dims;          /* 0 for a scalar */
    const int64_t *shape;   /* n_dims entries, each >= 0 */
    uint64_t n_elements;    /* product of shape (1 for a scalar, 0 when a dimension is 0) */
    size_t n_bytes;         /* n_elements * pio_dtype_size(dtype) */
    const void *data;       /* n_bytes bytes inside the mapping; not NULL even for 0 bytes */
    size_t file_index;      /* which file holds it: pio_safetensors_file(st, file_index) */
    uint64_t file_offset;   /* absolute byte offset of data in that file */
} pio_safetensors_tensor;

typedef struct pio_safetensors_metadata_entry {
    const char *key;
    const char *value;
} pio_safetensors_metadata_entry;

/* One safetensors file of a checkpoint (one shard, or the only file). */
typedef struct pio_safetensors_file_info {
    const char *path;        /* as opened (folder + shard name for shards) */
    uint64_t size;           /* bytes */
    uint64_t data_offset;    /* where the data section starts: 8 + header length */
    size_t n_tensors;        /* tensors stored in this file */
    size_t n_metadata;       /* entries of the header's __metadata__, in header order */
    const pio_safetensors_metadata_entry *metadata;
} pio_safetensors_file_info;

/*
 * Opens and validates a checkpoint. `path` is one of
 *   - a folder: its model.safetensors is used when present (as transformers does), else its
 *     model.safetensors.index.json;
 *   - a file ending in ".json": an index file; shards are looked up next to it;
 *   - any other file: a single safetensors file.
 * For an index, every shard it names must exist, every tensor it lists must be in the shard it
 * names, and every tensor in a shard must be listed (a mix of shards from different revisions is
 * an error, not a silent surprise). Shard names must be plain file names (no '/', no "..").
 *
 * Returns PIO_OK and sets *out; PIO_ERR_NOT_FOUND when the path or a shard does not exist;
 * PIO_ERR_IO when a file cannot be read or mapped; PIO_ERR_FORMAT when a file is malformed;
 * PIO_ERR_OUT_OF_MEMORY. On failure *out is NULL.
 */
pio_status pio_safetensors_open(const char *path, pio_safetensors **out, pio_error *err);

/*
 * Same validation over one safetensors file already in memory (`name` is used in messages).
 * `bytes` is not copied: it must stay valid and unchanged until pio_safetensors_close().
 */
pio_status pio_safetensors_open_memory(const void *bytes, size_t size, const char *name,
                                       pio_safetensors **out, pio_error *err);

/* Unmaps and frees everything; NULL is accepted. */
void pio_safetensors_close(pio_safetensors *st);

/* Tensors in storage order: file by file (shards sorted by name), by data offset within a file. */
size_t pio_safetensors_count(const pio_safetensors *st);
/* The index-th tensor, or NULL when index >= count. */
const pio_safetensors_tensor *pio_safetensors_at(const pio_safetensors *st, size_t index);

/* Lookup by exact name, O(log n); NULL when absent. */
const pio_safetensors_tensor *pio_safetensors_find(const pio_safetensors *st, const char *name);

/*
 * Checked lookup: the tensor must exist and match. `dtype` PIO_DTYPE_INVALID accepts any dtype.
 * `shape` NULL accepts any shape; otherwise the tensor must have exactly n_dims dimensions and
 * each shape[i] must match, where a negative shape[i] accepts any size in that dimension.
 * Returns PIO_OK and sets *out; PIO_ERR_NOT_FOUND when absent; PIO_ERR_FORMAT on a mismatch, e.g.
 *   "model-00001-of-00003.safetensors: model.layers.3.self_attn.q_proj.weight:
 *    expected [4096, 2560] BF16, file has [4096, 2048] BF16".
 */
pio_status pio_safetensors_get(const pio_safetensors *st, const char *name, pio_dtype dtype,
                               size_t n_dims, const int64_t *shape,
                               const pio_safetensors_tensor **out, pio_error *err);

/* Files of the checkpoint (1 for a single file), in the order file_index refers to. */
size_t pio_safetensors_file_count(const pio_safetensors *st);
/* The index-th file, or NULL when index >= file count. */
const pio_safetensors_file_info *pio_safetensors_file(const pio_safetensors *st, size_t index);
/* A value of a file's __metadata__ (e.g. "format" -> "pt"), or NULL when absent. */
const char *pio_safetensors_metadata(const pio_safetensors *st, size_t file_index,
                                     const char *key);

/*
 * Writes one safetensors file. From each of `tensors` it reads name, dtype, n_dims, shape and data
 * (n_bytes is computed; the other fields are ignored), so tensors of an open checkpoint can be
 * written out again. Data is laid out in the given order; the header is padded with spaces to a
 * multiple of 8 bytes so the data section starts 8-byte aligned. `metadata` may be NULL when
 * n_metadata is 0. Names must be unique and not "__metadata__"; data may be NULL only for
 * zero-byte tensors. The file is written under a temporary name next to `path` and renamed into
 * place, so on failure whatever was at `path` before is left as it was.
 * Returns PIO_OK, PIO_ERR_INVALID_ARGUMENT, PIO_ERR_IO or PIO_ERR_OUT_OF_MEMORY.
 */
pio_status pio_safetensors_write(const char *path, size_t n_tensors,
                                 const pio_safetensors_tensor *tensors, size_t n_metadata,
                                 const pio_safetensors_metadata_entry *metadata, pio_error *err);

#ifdef __cplusplus
}
#endif

#endif /* PIO_SAFETENSORS_H */
