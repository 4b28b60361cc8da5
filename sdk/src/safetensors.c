#include "pio/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pio/json_util.h"

#define LENGTH_PREFIX_BYTES 8u
#define SINGLE_FILE_NAME "model.safetensors"
#define INDEX_FILE_NAME "model.safetensors.index.json"
#define METADATA_KEY "__metadata__"
#define SHAPE_TEXT_MAX 160

typedef unsigned long long ull; /* for printing uint64_t with %llu */

typedef struct st_file {
    pio_safetensors_file_info info; /* the public view; info.path and info.metadata point below */
    char *path;
    char *shard_name;               /* the name the index uses; NULL for a lone file */
    const uint8_t *bytes;
    size_t size;
    bool mapped;                    /* bytes come from mmap (else from the caller) */
    pio_safetensors_metadata_entry *metadata;
} st_file;

struct pio_safetensors {
    char *display_path; /* the path (or name) as opened, for lookup errors */
    st_file *files;
    size_t n_files;
    pio_safetensors_tensor *tensors; /* storage order */
    size_t n_tensors;
    size_t tensor_capacity;
    const pio_safetensors_tensor **by_name; /* sorted by name, for binary search */
};

static const int64_t scalar_shape[1] = {0}; /* what shape points at when n_dims is 0 */

/* ------------------------------------------------------------------------------------------ */
/* Small helpers                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* "folder/name", without doubling a slash the folder already ends with. */
static char *join_path(const char *folder, const char *name)
{
    size_t a = strlen(folder), b = strlen(name);
    while (a > 1 && folder[a - 1] == '/')
        a--;
    bool add_slash = a > 0 && folder[a - 1] != '/';
    char *joined = malloc(a + b + 2);
    if (joined != NULL) {
        memcpy(joined, folder, a);
        if (add_slash)
            joined[a++] = '/';
        memcpy(joined + a, name, b + 1);
    }
    return joined;
}

/* The folder part of a file path: "a/b/c.json" -> "a/b", "c.json" -> ".". */
static char *folder_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

static bool ends_with(const char *text, const char *suffix)
{
    size_t a = strlen(text), b = strlen(suffix);
    return a >= b && strcmp(text + a - b, suffix) == 0;
}

static bool is_regular_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static uint64_t read_le64(const uint8_t *p)
{
    uint64_t value = 0;
    for (int i = 7; i >= 0; i--)
        value = (value << 8) | p[i];
    return value;
}

/* "[4096, 2560]"; a negative entry prints as "*" (a wildcard in expected shapes). */
static void format_shape(char *out, size_t cap, size_t n_dims, const int64_t *shape)
{
    size_t used = (size_t)snprintf(out, cap, "[");
    for (size_t i = 0; i < n_dims && used < cap; i++) {
        const char *separator = i > 0 ? ", " : "";
        if (shape[i] < 0)
            used += (size_t)snprintf(out + used, cap - used, "%s*", separator);
        else
            used += (size_t)snprintf(out + used, cap - used, "%s%lld", separator,
                                     (long long)shape[i]);
    }
    if (used < cap)
        snprintf(out + used, cap - used, "]");
}

/* Product of the dimensions; false on 64-bit overflow. A zero dimension makes it 0 whatever
 * the others are, so [huge, huge, 0] is a legal empty tensor. */
static bool count_elements(size_t n_dims, const int64_t *shape, uint64_t *n_elements)
{
    uint64_t product = 1;
    for (size_t i = 0; i < n_dims; i++)
        if (shape[i] == 0) {
            *n_elements = 0;
            return true;
        }
    for (size_t i = 0; i < n_dims; i++)
        if (__builtin_mul_overflow(product, (uint64_t)shape[i], &product))
            return false;
    *n_elements = product;
    return true;
}

static bool count_bytes(uint64_t n_elements, pio_dtype dtype, uint64_t *n_bytes)
{
    return !__builtin_mul_overflow(n_elements, (uint64_t)pio_dtype_size(dtype), n_bytes) &&
           *n_bytes <= SIZE_MAX;
}

/* Offset of the first byte that breaks UTF-8 (overlong forms, surrogates and code points above
 * U+10FFFF count as broken), or n when the whole buffer is valid. */
static size_t first_invalid_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t trailing;
        uint8_t low = 0x80, high = 0xBF; /* allowed range of the first continuation byte */
        if (c >= 0xC2 && c <= 0xDF) {
            trailing = 1;
        } else if (c == 0xE0) {
            trailing = 2, low = 0xA0;
        } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
            trailing = 2;
        } else if (c == 0xED) {
            trailing = 2, high = 0x9F;
        } else if (c == 0xF0) {
            trailing = 3, low = 0x90;
        } else if (c >= 0xF1 && c <= 0xF3) {
            trailing = 3;
        } else if (c == 0xF4) {
            trailing = 3, high = 0x8F;
        } else {
            return i;
        }
        if (n - i <= trailing || s[i + 1] < low || s[i + 1] > high)
            return i;
        for (size_t k = 2; k <= trailing; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
        i += trailing + 1;
    }
    return n;
}

static pio_status out_of_memory(const char *path, pio_error *err)
{
    return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
}

/* ------------------------------------------------------------------------------------------ */
/* Checkpoint bookkeeping                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* A tensor's name and shape share one allocation, starting with the shape when it has one. */
static void free_tensor_strings(const pio_safetensors_tensor *tensor)
{
    free(tensor->n_dims > 0 ? (void *)tensor->shape : (void *)tensor->name);
}

static void free_file(st_file *file)
{
    if (file->mapped && file->size > 0)
        munmap((void *)file->bytes, file->size);
    for (size_t i = 0; i < file->info.n_metadata; i++) {
        free((char *)file->metadata[i].key);
        free((char *)file->metadata[i].value);
    }
    free(file->metadata);
    free(file->path);
    free(file->shard_name);
}

void pio_safetensors_close(pio_safetensors *st)
{
    if (st == NULL)
        return;
    for (size_t i = 0; i < st->n_files; i++)
        free_file(&st->files[i]);
    for (size_t i = 0; i < st->n_tensors; i++)
        free_tensor_strings(&st->tensors[i]);
    free(st->files);
    free(st->tensors);
    free(st->by_name);
    free(st->display_path);
    free(st);
}

static pio_status create_checkpoint(const char *display_path, size_t n_files,
                                    pio_safetensors **out, pio_error *err)
{
    pio_safetensors *st = calloc(1, sizeof *st);
    if (st == NULL)
        return out_of_memory(display_path, err);
    st->display_path = strdup(display_path);
    st->files = calloc(n_files > 0 ? n_files : 1, sizeof *st->files);
    if (st->display_path == NULL || st->files == NULL) {
        pio_safetensors_close(st);
        return out_of_memory(display_path, err);
    }
    *out = st;
    return PIO_OK;
}

/* Adds a file slot (already counted in create_checkpoint) for `path`. */
static pio_status add_file_slot(pio_safetensors *st, const char *path, const char *shard_name,
                                st_file **out, pio_error *err)
{
    st_file *file = &st->files[st->n_files];
    memset(file, 0, sizeof *file);
    file->path = strdup(path);
    file->shard_name = shard_name != NULL ? strdup(shard_name) : NULL;
    st->n_files++; /* counted before the checks so close() frees what was allocated */
    if (file->path == NULL || (shard_name != NULL && file->shard_name == NULL))
        return out_of_memory(path, err);
    file->info.path = file->path;
    *out = file;
    return PIO_OK;
}

static pio_status map_file(st_file *file, pio_error *err)
{
    int fd = open(file->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return pio_error_set(err, errno == ENOENT ? PIO_ERR_NOT_FOUND : PIO_ERR_IO,
                             "%s: cannot open: %s", file->path, strerror(errno));
    struct stat st;
    pio_status status = PIO_OK;
    if (fstat(fd, &st) != 0) {
        status = pio_error_set(err, PIO_ERR_IO, "%s: cannot stat: %s", file->path, strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        status = pio_error_set(err, PIO_ERR_IO, "%s: not a regular file", file->path);
    } else if (st.st_size > 0) {
        void *bytes = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (bytes == MAP_FAILED) {
            status = pio_error_set(err, PIO_ERR_IO, "%s: cannot map %lld bytes: %s", file->path,
                                   (long long)st.st_size, strerror(errno));
        } else {
            file->bytes = bytes;
            file->size = (size_t)st.st_size;
            file->mapped = true;
        }
    }
    close(fd);
    file->info.size = file->size;
    return status;
}

static pio_status append_tensor(pio_safetensors *st, const pio_safetensors_tensor *tensor,
                                const char *path, pio_error *err)
{
    if (st->n_tensors == st->tensor_capacity) {
        size_t capacity = st->tensor_capacity > 0 ? st->tensor_capacity * 2 : 64;
        pio_safetensors_tensor *grown = realloc(st->tensors, capacity * sizeof *grown);
        if (grown == NULL)
            return out_of_memory(path, err);
        st->tensors = grown;
        st->tensor_capacity = capacity;
    }
    st->tensors[st->n_tensors++] = *tensor;
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* One file: length prefix, header text, JSON, entries, data coverage                         */
/* ------------------------------------------------------------------------------------------ */

static pio_status check_length_prefix(const st_file *file, uint64_t *header_length,
                                      pio_error *err)
{
    if (file->size < LENGTH_PREFIX_BYTES)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "%s: file is %zu bytes, too short for the 8-byte header length",
                             file->path, file->size);
    uint64_t length = read_le64(file->bytes);
    if (length > PIO_SAFETENSORS_MAX_HEADER_BYTES)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "%s: header length %llu (bytes 0..7) is over the %u-byte limit",
                             file->path, (ull)length, PIO_SAFETENSORS_MAX_HEADER_BYTES);
    if (length > file->size - LENGTH_PREFIX_BYTES)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "%s: header length %llu (bytes 0..7) runs past the end of the file "
                             "(%zu bytes, so at most %zu)",
                             file->path, (ull)length, file->size,
                             file->size - LENGTH_PREFIX_BYTES);
    if (length == 0)
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: header length is 0 (bytes 0..7)",
                             file->path);
    *header_length = length;
    return PIO_OK;
}

static pio_status check_header_text(const st_file *file, const uint8_t *header, size_t length,
                                    pio_error *err)
{
    if (header[0] != '{')
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "%s: header does not start with '{' (file offset %u has byte 0x%02x)",
                             file->path, LENGTH_PREFIX_BYTES, header[0]);
    size_t bad = first_invalid_utf8(header, length);
    if (bad < length)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "%s: header is not valid UTF-8 at file offset %llu (byte 0x%02x)",
                             file->path, (ull)(LENGTH_PREFIX_BYTES + bad), header[bad]);
    return PIO_OK;
}

static pio_status parse_header_json(const st_file *file, const uint8_t *header, size_t length,
                                    json_t **root, pio_error *err)
{
    /* Duplicate keys are rejected while parsing: jansson otherwise keeps the last one silently,
     * and a file whose meaning depends on the parser is exactly what validation must stop. */
    json_error_t jerr;
    *root = json_loadb((const char *)header, length, JSON_REJECT_DUPLICATES, &jerr);
    if (*root != NULL)
        return PIO_OK;
    ull offset = (ull)LENGTH_PREFIX_BYTES + (ull)(jerr.position > 0 ? jerr.position : 0);
    if (json_error_code(&jerr) == json_error_duplicate_key)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "%s: header has a duplicate name near file offset %llu: %s",
                             file->path, offset, jerr.text);
    return pio_error_set(err, PIO_ERR_FORMAT,
                         "%s: header is not valid JSON near file offset %llu (header line %d, "
                         "column %d): %s",
                         file->path, offset, jerr.line, jerr.column, jerr.text);
}

static pio_status read_metadata(st_file *file, const json_t *value, pio_error *err)
{
    if (!json_is_object(value))
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: \"%s\" must be an object of strings",
                             file->path, METADATA_KEY);
    size_t n = json_object_size(value);
    file->metadata = calloc(n > 0 ? n : 1, sizeof *file->metadata);
    if (file->metadata == NULL)
        return out_of_memory(file->path, err);
    const char *key;
    const json_t *entry;
    json_object_foreach((json_t *)value, key, entry) {
        if (!json_is_string(entry))
            return pio_error_set(err, PIO_ERR_FORMAT, "%s: %s \"%s\" must be a string",
                                 file->path, METADATA_KEY, key);
        pio_safetensors_metadata_entry *slot = &file->metadata[file->info.n_metadata];
        slot->key = strdup(key);
        slot->value = strdup(json_string_value(entry));
        file->info.n_metadata++; /* counted first so close() frees a half-filled slot */
        if (slot->key == NULL || slot->value == NULL)
            return out_of_memory(file->path, err);
    }
    file->info.metadata = file->metadata;
    return PIO_OK;
}

/*
 * File offset of the header key "name", found by its raw spelling (a name the JSON writer had to
 * escape is not found), or 0 when it cannot be located. Only used to point messages at the entry.
 */
static uint64_t find_header_key(const st_file *file, const char *name)
{
    const uint8_t *header = file->bytes + LENGTH_PREFIX_BYTES;
    size_t length = (size_t)(file->info.data_offset - LENGTH_PREFIX_BYTES);
    size_t n = strlen(name);
    for (size_t from = 1; from + n < length;) {
        const uint8_t *hit = memmem(header + from, length - from, name, n);
        if (hit == NULL)
            return 0;
        size_t at = (size_t)(hit - header);
        size_t after = at + n + 1;
        while (after < length && strchr(" \t\r\n", header[after]) != NULL && header[after] != 0)
            after++;
        bool quoted = header[at - 1] == '"' && at + n < length && header[at + n] == '"' &&
                      !(at >= 2 && header[at - 2] == '\\');
        if (quoted && after < length && header[after] == ':')
            return LENGTH_PREFIX_BYTES + at - 1;
        from = at + 1;
    }
    return 0;
}

/* "<file>: tensor "<name>" (header entry at file offset N): <detail>". */
static pio_status entry_error(const st_file *file, const char *name, pio_error *err,
                              const char *format, ...) __attribute__((format(printf, 4, 5)));

static pio_status entry_error(const st_file *file, const char *name, pio_error *err,
                              const char *format, ...)
{
    char detail[PIO_ERROR_MESSAGE_MAX];
    va_list args;
    va_start(args, format);
    vsnprintf(detail, sizeof detail, format, args);
    va_end(args);
    uint64_t offset = find_header_key(file, name);
    if (offset == 0)
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: tensor \"%s\": %s", file->path, name,
                             detail);
    return pio_error_set(err, PIO_ERR_FORMAT, "%s: tensor \"%s\" (header entry at file offset "
                         "%llu): %s", file->path, name, (ull)offset, detail);
}

static pio_status check_entry_fields(const st_file *file, const char *name, const json_t *entry,
                                     pio_error *err)
{
    if (!json_is_object(entry))
        return entry_error(file, name, err, "the header entry must be an object");
    const char *field;
    const json_t *value;
    json_object_foreach((json_t *)entry, field, value) {
        if (strcmp(field, "dtype") != 0 && strcmp(field, "shape") != 0 &&
            strcmp(field, "data_offsets") != 0)
            return entry_error(file, name, err, "unknown field \"%.64s\" in the header entry",
                               field);
    }
    static const char *const required[] = {"dtype", "shape", "data_offsets"};
    for (size_t i = 0; i < 3; i++)
        if (json_object_get(entry, required[i]) == NULL)
            return entry_error(file, name, err, "no \"%s\"", required[i]);
    return PIO_OK;
}

static pio_status read_dtype(const st_file *file, const char *name, const json_t *value,
                             pio_dtype *dtype, pio_error *err)
{
    if (!json_is_string(value))
        return entry_error(file, name, err, "\"dtype\" must be a string");
    *dtype = pio_dtype_from_name(json_string_value(value));
    if (*dtype == PIO_DTYPE_INVALID)
        return entry_error(file, name, err, "unknown dtype \"%.32s\"", json_string_value(value));
    return PIO_OK;
}

/* Reads a JSON array of non-negative integers into values[0..n). */
static bool read_unsigned_array(const json_t *array, size_t n, int64_t *values)
{
    if (!json_is_array(array) || json_array_size(array) != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        const json_t *item = json_array_get(array, i);
        if (!json_is_integer(item) || json_integer_value(item) < 0)
            return false;
        values[i] = (int64_t)json_integer_value(item);
    }
    return true;
}

/* Allocates the tensor's name and shape together (shape first, for alignment). */
static pio_status read_shape_and_name(const st_file *file, const char *name, const json_t *value,
                                      pio_safetensors_tensor *tensor, pio_error *err)
{
    size_t n_dims = json_is_array(value) ? json_array_size(value) : 0;
    size_t name_bytes = strlen(name) + 1;
    char *block = malloc(n_dims * sizeof(int64_t) + name_bytes);
    if (block == NULL)
        return out_of_memory(file->path, err);
    int64_t *shape = (int64_t *)(void *)block;
    if (!read_unsigned_array(value, n_dims, shape)) {
        free(block);
        return entry_error(file, name, err, "\"shape\" must be an array of non-negative integers");
    }
    char *name_copy = block + n_dims * sizeof(int64_t);
    memcpy(name_copy, name, name_bytes);
    tensor->name = name_copy;
    tensor->n_dims = n_dims;
    tensor->shape = n_dims > 0 ? shape : scalar_shape;
    return PIO_OK;
}

/* dtype, shape, data_offsets of one entry, checked against each other and the data section. */
static pio_status read_tensor_layout(const st_file *file, const char *name, const json_t *entry,
                                     pio_safetensors_tensor *tensor, pio_error *err)
{
    pio_status status = read_dtype(file, name, json_object_get(entry, "dtype"), &tensor->dtype,
                                   err);
    if (status != PIO_OK)
        return status;
    int64_t offsets[2];
    if (!read_unsigned_array(json_object_get(entry, "data_offsets"), 2, offsets) ||
        offsets[0] > offsets[1])
        return entry_error(file, name, err,
                           "\"data_offsets\" must be [BEGIN, END] with 0 <= BEGIN <= END");
    uint64_t begin = (uint64_t)offsets[0], end = (uint64_t)offsets[1];
    uint64_t data_size = file->size - file->info.data_offset;
    if (end > data_size)
        return entry_error(file, name, err,
                           "data_offsets [%llu, %llu] reach past the end of the data section "
                           "(%llu bytes; file offsets %llu..%llu)",
                           (ull)begin, (ull)end, (ull)data_size, (ull)file->info.data_offset,
                           (ull)file->size);
    char shape_text[SHAPE_TEXT_MAX];
    format_shape(shape_text, sizeof shape_text, tensor->n_dims, tensor->shape);
    uint64_t n_bytes;
    if (!count_elements(tensor->n_dims, tensor->shape, &tensor->n_elements) ||
        !count_bytes(tensor->n_elements, tensor->dtype, &n_bytes))
        return entry_error(file, name, err, "shape %s of %s overflows 64 bits in bytes",
                           shape_text, pio_dtype_name(tensor->dtype));
    if (n_bytes != end - begin)
        return entry_error(file, name, err,
                           "shape %s of %s needs %llu bytes but data_offsets [%llu, %llu] hold "
                           "%llu (file offset %llu)",
                           shape_text, pio_dtype_name(tensor->dtype), (ull)n_bytes, (ull)begin,
                           (ull)end, (ull)(end - begin), (ull)(file->info.data_offset + begin));
    tensor->n_bytes = (size_t)n_bytes;
    tensor->file_offset = file->info.data_offset + begin;
    tensor->data = file->bytes + tensor->file_offset;
    return PIO_OK;
}

static pio_status add_header_tensor(pio_safetensors *st, size_t file_index, const char *name,
                                    const json_t *entry, pio_error *err)
{
    const st_file *file = &st->files[file_index];
    pio_status status = check_entry_fields(file, name, entry, err);
    if (status != PIO_OK)
        return status;
    pio_safetensors_tensor tensor = {0};
    tensor.file_index = file_index;
    status = read_shape_and_name(file, name, json_object_get(entry, "shape"), &tensor, err);
    if (status != PIO_OK)
        return status;
    status = read_tensor_layout(file, name, entry, &tensor, err);
    if (status == PIO_OK)
        status = append_tensor(st, &tensor, file->path, err);
    if (status != PIO_OK)
        free_tensor_strings(&tensor);
    return status;
}

static pio_status read_header_entries(pio_safetensors *st, size_t file_index, const json_t *root,
                                      pio_error *err)
{
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)root, key, value) {
        pio_status status = strcmp(key, METADATA_KEY) == 0
                                ? read_metadata(&st->files[file_index], value, err)
                                : add_header_tensor(st, file_index, key, value, err);
        if (status != PIO_OK)
            return status;
    }
    return PIO_OK;
}

static int compare_by_offset(const void *a, const void *b)
{
    const pio_safetensors_tensor *x = a, *y = b;
    if (x->file_offset != y->file_offset)
        return x->file_offset < y->file_offset ? -1 : 1;
    if (x->n_bytes != y->n_bytes) /* empty tensors first, so they do not look like overlaps */
        return x->n_bytes < y->n_bytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Tensors [first, n_tensors) of one file, sorted by offset, must tile its data section. */
static pio_status check_data_coverage(const pio_safetensors *st, const st_file *file,
                                      size_t first, pio_error *err)
{
    uint64_t base = file->info.data_offset;
    uint64_t covered = 0; /* data bytes [0, covered) belong to tensors seen so far */
    const pio_safetensors_tensor *previous = NULL;
    for (size_t i = first; i < st->n_tensors; i++) {
        const pio_safetensors_tensor *t = &st->tensors[i];
        uint64_t begin = t->file_offset - base, end = begin + t->n_bytes;
        if (begin < covered)
            return pio_error_set(err, PIO_ERR_FORMAT,
                                 "%s: tensor \"%s\" data_offsets [%llu, %llu] (file offset %llu) "
                                 "overlap tensor \"%s\" data_offsets [%llu, %llu]",
                                 file->path, t->name, (ull)begin, (ull)end, (ull)t->file_offset,
                                 previous->name, (ull)(previous->file_offset - base),
                                 (ull)(previous->file_offset - base + previous->n_bytes));
        if (begin > covered)
            return pio_error_set(err, PIO_ERR_FORMAT,
                                 "%s: data bytes [%llu, %llu) (file offsets %llu..%llu) belong to "
                                 "no tensor (a gap before tensor \"%s\")",
                                 file->path, (ull)covered, (ull)begin, (ull)(base + covered),
                                 (ull)(base + begin), t->name);
        covered = end;
        previous = t;
    }
    uint64_t data_size = file->size - base;
    if (covered != data_size)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "%s: data bytes [%llu, %llu) (file offsets %llu..%llu) belong to no "
                             "tensor (%s%s%s)",
                             file->path, (ull)covered, (ull)data_size, (ull)(base + covered),
                             (ull)file->size,
                             previous != NULL ? "after the last tensor \""
                                              : "the header lists no tensors",
                             previous != NULL ? previous->name : "",
                             previous != NULL ? "\"" : "");
    return PIO_OK;
}

/* Validates one file whose bytes are in place and appends its tensors in storage order. */
static pio_status parse_file(pio_safetensors *st, size_t file_index, pio_error *err)
{
    st_file *file = &st->files[file_index];
    uint64_t header_length = 0;
    pio_status status = check_length_prefix(file, &header_length, err);
    if (status != PIO_OK)
        return status;
    const uint8_t *header = file->bytes + LENGTH_PREFIX_BYTES;
    status = check_header_text(file, header, (size_t)header_length, err);
    if (status != PIO_OK)
        return status;
    json_t *root;
    status = parse_header_json(file, header, (size_t)header_length, &root, err);
    if (status != PIO_OK)
        return status;
    file->info.data_offset = LENGTH_PREFIX_BYTES + header_length;
    size_t first = st->n_tensors;
    status = read_header_entries(st, file_index, root, err);
    json_decref(root);
    if (status != PIO_OK)
        return status;
    if (st->n_tensors > first)
        qsort(st->tensors + first, st->n_tensors - first, sizeof *st->tensors, compare_by_offset);
    file->info.n_tensors = st->n_tensors - first;
    return check_data_coverage(st, file, first, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Name index                                                                                 */
/* ------------------------------------------------------------------------------------------ */

static int compare_names(const void *a, const void *b)
{
    const pio_safetensors_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static pio_status build_name_index(pio_safetensors *st, pio_error *err)
{
    st->by_name = malloc((st->n_tensors > 0 ? st->n_tensors : 1) * sizeof *st->by_name);
    if (st->by_name == NULL)
        return out_of_memory(st->display_path, err);
    for (size_t i = 0; i < st->n_tensors; i++)
        st->by_name[i] = &st->tensors[i];
    if (st->n_tensors > 0)
        qsort(st->by_name, st->n_tensors, sizeof *st->by_name, compare_names);
    for (size_t i = 1; i < st->n_tensors; i++) {
        const pio_safetensors_tensor *a = st->by_name[i - 1], *b = st->by_name[i];
        if (strcmp(a->name, b->name) == 0)
            return pio_error_set(err, PIO_ERR_FORMAT,
                                 "%s: tensor \"%s\" is stored twice: in %s (file offset %llu) and "
                                 "in %s (file offset %llu)",
                                 st->display_path, a->name, st->files[a->file_index].path,
                                 (ull)a->file_offset, st->files[b->file_index].path,
                                 (ull)b->file_offset);
    }
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Opening                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static pio_status finish_or_close(pio_safetensors *st, pio_status status,
                                  pio_safetensors **out, pio_error *err)
{
    if (status == PIO_OK)
        status = build_name_index(st, err);
    if (status != PIO_OK) {
        pio_safetensors_close(st);
        return status;
    }
    *out = st;
    return PIO_OK;
}

pio_status pio_safetensors_open_memory(const void *bytes, size_t size, const char *name,
                                       pio_safetensors **out, pio_error *err)
{
    if (out == NULL || name == NULL || (bytes == NULL && size > 0))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "pio_safetensors_open_memory: NULL argument");
    *out = NULL;
    pio_safetensors *st = NULL;
    pio_status status = create_checkpoint(name, 1, &st, err);
    if (status != PIO_OK)
        return status;
    st_file *file = NULL;
    status = add_file_slot(st, name, NULL, &file, err);
    if (status == PIO_OK) {
        file->bytes = bytes;
        file->size = size;
        file->info.size = size;
        status = parse_file(st, 0, err);
    }
    return finish_or_close(st, status, out, err);
}

static pio_status open_single_file(const char *path, pio_safetensors **out, pio_error *err)
{
    pio_safetensors *st = NULL;
    pio_status status = create_checkpoint(path, 1, &st, err);
    if (status != PIO_OK)
        return status;
    st_file *file = NULL;
    status = add_file_slot(st, path, NULL, &file, err);
    if (status == PIO_OK)
        status = map_file(file, err);
    if (status == PIO_OK)
        status = parse_file(st, 0, err);
    return finish_or_close(st, status, out, err);
}

/* One weight_map entry; sorted by shard then tensor to group the shards. */
typedef struct index_entry {
    const char *tensor;
    const char *shard;
} index_entry;

static int compare_index_entries(const void *a, const void *b)
{
    const index_entry *x = a, *y = b;
    int by_shard = strcmp(x->shard, y->shard);
    return by_shard != 0 ? by_shard : strcmp(x->tensor, y->tensor);
}

/* A shard must be a plain file name in the index's folder, never a path out of it. */
static bool is_plain_file_name(const char *name)
{
    return name[0] != '\0' && strchr(name, '/') == NULL && strcmp(name, ".") != 0 &&
           strcmp(name, "..") != 0;
}

static pio_status read_weight_map(const pio_json_doc *doc, const json_t **weight_map,
                                  index_entry **entries, size_t *n_entries, pio_error *err)
{
    const char *path = pio_json_name(doc);
    const json_t *map = json_object_get(pio_json_root(doc), "weight_map");
    if (!json_is_object(map))
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: \"weight_map\" must be an object", path);
    size_t n = json_object_size(map);
    index_entry *list = malloc((n > 0 ? n : 1) * sizeof *list);
    if (list == NULL)
        return out_of_memory(path, err);
    size_t count = 0;
    const char *tensor;
    const json_t *shard;
    json_object_foreach((json_t *)map, tensor, shard) {
        if (!json_is_string(shard) || !is_plain_file_name(json_string_value(shard))) {
            free(list);
            return pio_error_set(err, PIO_ERR_FORMAT,
                                 "%s: weight_map \"%s\" must be a shard file name (a string "
                                 "without '/')",
                                 path, tensor);
        }
        list[count].tensor = tensor;
        list[count].shard = json_string_value(shard);
        count++;
    }
    qsort(list, count, sizeof *list, compare_index_entries);
    *weight_map = map;
    *entries = list;
    *n_entries = count;
    return PIO_OK;
}

static size_t count_distinct_shards(const index_entry *entries, size_t n)
{
    size_t shards = 0;
    for (size_t i = 0; i < n; i++)
        if (i == 0 || strcmp(entries[i].shard, entries[i - 1].shard) != 0)
            shards++;
    return shards;
}

/* Maps and parses the shard entries[first].shard; *next is the first entry of the next shard. */
static pio_status load_shard(pio_safetensors *st, const char *index_path, const char *folder,
                             const index_entry *entries, size_t n_entries, size_t first,
                             size_t *next, pio_error *err)
{
    const char *shard = entries[first].shard;
    size_t last = first;
    while (last + 1 < n_entries && strcmp(entries[last + 1].shard, shard) == 0)
        last++;
    *next = last + 1;
    char *path = join_path(folder, shard);
    if (path == NULL)
        return out_of_memory(index_path, err);
    st_file *file = NULL;
    pio_status status = add_file_slot(st, path, shard, &file, err);
    free(path);
    if (status != PIO_OK)
        return status;
    pio_error cause;
    status = map_file(file, &cause);
    char more[64] = "";
    if (last > first)
        snprintf(more, sizeof more, " and %zu more tensors", last - first);
    if (status != PIO_OK)
        return pio_error_set(err, status,
                             "%s: shard \"%s\" (listed for \"%s\"%s) cannot be used: %s",
                             index_path, shard, entries[first].tensor, more, cause.message);
    return parse_file(st, st->n_files - 1, err);
}

/* Every tensor of the index is in the shard it names, and every stored tensor is listed. */
static pio_status check_index_agreement(const pio_safetensors *st, const char *index_path,
                                        const json_t *weight_map, const index_entry *entries,
                                        size_t n_entries, pio_error *err)
{
    for (size_t i = 0; i < n_entries; i++) {
        const pio_safetensors_tensor *t = pio_safetensors_find(st, entries[i].tensor);
        if (t == NULL)
            return pio_error_set(err, PIO_ERR_FORMAT,
                                 "%s: the index lists tensor \"%s\" in shard \"%s\", which does "
                                 "not hold it",
                                 index_path, entries[i].tensor, entries[i].shard);
        const char *holder = st->files[t->file_index].shard_name;
        if (strcmp(holder, entries[i].shard) != 0)
            return pio_error_set(err, PIO_ERR_FORMAT,
                                 "%s: the index lists tensor \"%s\" in shard \"%s\", but it is in "
                                 "\"%s\" (file offset %llu)",
                                 index_path, entries[i].tensor, entries[i].shard, holder,
                                 (ull)t->file_offset);
    }
    if (st->n_tensors == n_entries)
        return PIO_OK;
    for (size_t i = 0; i < st->n_tensors; i++) {
        const pio_safetensors_tensor *t = &st->tensors[i];
        if (json_object_get(weight_map, t->name) == NULL)
            return pio_error_set(err, PIO_ERR_FORMAT,
                                 "%s: tensor \"%s\" in %s (file offset %llu) is not listed in the "
                                 "index",
                                 index_path, t->name, st->files[t->file_index].path,
                                 (ull)t->file_offset);
    }
    return pio_error_set(err, PIO_ERR_INTERNAL, "%s: index and shards disagree", index_path);
}

static pio_status load_indexed_shards(pio_safetensors *st, const char *index_path,
                                      const json_t *weight_map, const index_entry *entries,
                                      size_t n_entries, pio_error *err)
{
    char *folder = folder_of(index_path);
    if (folder == NULL)
        return out_of_memory(index_path, err);
    pio_status status = PIO_OK;
    for (size_t i = 0; i < n_entries && status == PIO_OK;)
        status = load_shard(st, index_path, folder, entries, n_entries, i, &i, err);
    free(folder);
    if (status == PIO_OK)
        status = build_name_index(st, err);
    if (status == PIO_OK)
        status = check_index_agreement(st, index_path, weight_map, entries, n_entries, err);
    return status;
}

static pio_status open_index(const char *index_path, pio_safetensors **out, pio_error *err)
{
    pio_json_doc *doc;
    pio_status status = pio_json_load_file(index_path, &doc, err);
    if (status != PIO_OK)
        return status;
    const json_t *weight_map = NULL;
    index_entry *entries = NULL;
    size_t n_entries = 0;
    status = read_weight_map(doc, &weight_map, &entries, &n_entries, err);
    if (status != PIO_OK) {
        pio_json_free(doc);
        return status;
    }
    pio_safetensors *st = NULL;
    status = create_checkpoint(index_path, count_distinct_shards(entries, n_entries), &st, err);
    if (status == PIO_OK) {
        status = load_indexed_shards(st, index_path, weight_map, entries, n_entries, err);
        if (status != PIO_OK)
            pio_safetensors_close(st);
        else
            *out = st;
    }
    free(entries);
    pio_json_free(doc);
    return status;
}

static pio_status open_folder(const char *folder, pio_safetensors **out, pio_error *err)
{
    char *single = join_path(folder, SINGLE_FILE_NAME);
    char *index = join_path(folder, INDEX_FILE_NAME);
    pio_status status;
    if (single == NULL || index == NULL)
        status = out_of_memory(folder, err);
    else if (is_regular_file(single))
        status = open_single_file(single, out, err);
    else if (is_regular_file(index))
        status = open_index(index, out, err);
    else
        status = pio_error_set(err, PIO_ERR_NOT_FOUND, "%s: folder has neither %s nor %s", folder,
                               SINGLE_FILE_NAME, INDEX_FILE_NAME);
    free(single);
    free(index);
    return status;
}

pio_status pio_safetensors_open(const char *path, pio_safetensors **out, pio_error *err)
{
    if (out == NULL || path == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pio_safetensors_open: NULL argument");
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0)
        return pio_error_set(err, errno == ENOENT ? PIO_ERR_NOT_FOUND : PIO_ERR_IO,
                             "%s: cannot open: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return open_folder(path, out, err);
    if (ends_with(path, ".json"))
        return open_index(path, out, err);
    return open_single_file(path, out, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Queries                                                                                    */
/* ------------------------------------------------------------------------------------------ */

size_t pio_safetensors_count(const pio_safetensors *st)
{
    return st != NULL ? st->n_tensors : 0;
}

const pio_safetensors_tensor *pio_safetensors_at(const pio_safetensors *st, size_t index)
{
    return st != NULL && index < st->n_tensors ? &st->tensors[index] : NULL;
}

const pio_safetensors_tensor *pio_safetensors_find(const pio_safetensors *st, const char *name)
{
    if (st == NULL || name == NULL || st->by_name == NULL)
        return NULL;
    size_t low = 0, high = st->n_tensors;
    while (low < high) {
        size_t middle = low + (high - low) / 2;
        int order = strcmp(st->by_name[middle]->name, name);
        if (order == 0)
            return st->by_name[middle];
        if (order < 0)
            low = middle + 1;
        else
            high = middle;
    }
    return NULL;
}

static bool tensor_matches(const pio_safetensors_tensor *t, pio_dtype dtype, size_t n_dims,
                           const int64_t *shape)
{
    if (dtype != PIO_DTYPE_INVALID && t->dtype != dtype)
        return false;
    if (shape == NULL)
        return true;
    if (t->n_dims != n_dims)
        return false;
    for (size_t i = 0; i < n_dims; i++)
        if (shape[i] >= 0 && shape[i] != t->shape[i])
            return false;
    return true;
}

pio_status pio_safetensors_get(const pio_safetensors *st, const char *name, pio_dtype dtype,
                               size_t n_dims, const int64_t *shape,
                               const pio_safetensors_tensor **out, pio_error *err)
{
    if (out != NULL)
        *out = NULL;
    if (st == NULL || name == NULL || out == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pio_safetensors_get: NULL argument");
    const pio_safetensors_tensor *t = pio_safetensors_find(st, name);
    if (t == NULL)
        return pio_error_set(err, PIO_ERR_NOT_FOUND, "%s: no tensor named \"%s\"",
                             st->display_path, name);
    if (!tensor_matches(t, dtype, n_dims, shape)) {
        char expected[SHAPE_TEXT_MAX], actual[SHAPE_TEXT_MAX];
        if (shape != NULL)
            format_shape(expected, sizeof expected, n_dims, shape);
        else
            snprintf(expected, sizeof expected, "any shape");
        format_shape(actual, sizeof actual, t->n_dims, t->shape);
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: %s: expected %s%s%s, file has %s %s",
                             st->files[t->file_index].path, name, expected,
                             dtype != PIO_DTYPE_INVALID ? " " : "",
                             dtype != PIO_DTYPE_INVALID ? pio_dtype_name(dtype) : "", actual,
                             pio_dtype_name(t->dtype));
    }
    *out = t;
    return PIO_OK;
}

size_t pio_safetensors_file_count(const pio_safetensors *st)
{
    return st != NULL ? st->n_files : 0;
}

const pio_safetensors_file_info *pio_safetensors_file(const pio_safetensors *st, size_t index)
{
    return st != NULL && index < st->n_files ? &st->files[index].info : NULL;
}

const char *pio_safetensors_metadata(const pio_safetensors *st, size_t file_index,
                                     const char *key)
{
    const pio_safetensors_file_info *info = pio_safetensors_file(st, file_index);
    if (info == NULL || key == NULL)
        return NULL;
    for (size_t i = 0; i < info->n_metadata; i++)
        if (strcmp(info->metadata[i].key, key) == 0)
            return info->metadata[i].value;
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Writing                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static pio_status add_metadata_to_header(json_t *header, const char *path, size_t n_metadata,
                                         const pio_safetensors_metadata_entry *metadata,
                                         pio_error *err)
{
    if (n_metadata == 0)
        return PIO_OK;
    if (metadata == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: metadata is NULL", path);
    json_t *object = json_object();
    if (object == NULL || json_object_set_new(header, METADATA_KEY, object) != 0)
        return out_of_memory(path, err);
    for (size_t i = 0; i < n_metadata; i++) {
        const char *key = metadata[i].key, *value = metadata[i].value;
        if (key == NULL || value == NULL)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "%s: metadata entry %zu has a NULL key or value", path, i);
        if (json_object_get(object, key) != NULL)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "%s: metadata key \"%s\" is given twice", path, key);
        json_t *text = json_string(value);
        if (text == NULL || json_object_set_new(object, key, text) != 0)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "%s: metadata entry \"%s\" is not valid UTF-8", path, key);
    }
    return PIO_OK;
}

static pio_status check_tensor_to_write(const char *path, const pio_safetensors_tensor *t,
                                        const json_t *header, uint64_t *n_bytes, pio_error *err)
{
    if (t->name == NULL || strcmp(t->name, METADATA_KEY) == 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: tensor name %s is not allowed",
                             path, t->name == NULL ? "NULL" : METADATA_KEY);
    if (json_object_get(header, t->name) != NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: tensor \"%s\" is given twice",
                             path, t->name);
    if (pio_dtype_size(t->dtype) == 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: tensor \"%s\": invalid dtype %d",
                             path, t->name, (int)t->dtype);
    if (t->n_dims > 0 && t->shape == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: tensor \"%s\": shape is NULL",
                             path, t->name);
    for (size_t d = 0; d < t->n_dims; d++)
        if (t->shape[d] < 0)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "%s: tensor \"%s\": shape[%zu] is negative", path, t->name, d);
    uint64_t n_elements;
    if (!count_elements(t->n_dims, t->shape, &n_elements) ||
        !count_bytes(n_elements, t->dtype, n_bytes) || *n_bytes > INT64_MAX)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: tensor \"%s\": shape too large",
                             path, t->name);
    if (t->data == NULL && *n_bytes > 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: tensor \"%s\": data is NULL",
                             path, t->name);
    return PIO_OK;
}

static json_t *header_entry(const pio_safetensors_tensor *t, uint64_t begin, uint64_t end)
{
    json_t *shape = json_array();
    for (size_t d = 0; shape != NULL && d < t->n_dims; d++)
        if (json_array_append_new(shape, json_integer((json_int_t)t->shape[d])) != 0) {
            json_decref(shape);
            shape = NULL;
        }
    if (shape == NULL)
        return NULL;
    return json_pack("{s:s, s:o, s:[I, I]}", "dtype", pio_dtype_name(t->dtype), "shape", shape,
                     "data_offsets", (json_int_t)begin, (json_int_t)end);
}

static pio_status add_tensor_to_header(json_t *header, const char *path,
                                       const pio_safetensors_tensor *t, uint64_t *offset,
                                       pio_error *err)
{
    uint64_t n_bytes = 0;
    pio_status status = check_tensor_to_write(path, t, header, &n_bytes, err);
    if (status != PIO_OK)
        return status;
    if (n_bytes > INT64_MAX - *offset)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: tensors total over 2^63 bytes",
                             path);
    json_t *entry = header_entry(t, *offset, *offset + n_bytes);
    if (entry == NULL)
        return out_of_memory(path, err);
    if (json_object_set_new(header, t->name, entry) != 0)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: tensor name \"%s\" is not valid UTF-8", path, t->name);
    *offset += n_bytes;
    return PIO_OK;
}

static bool write_all(int fd, const void *data, size_t size)
{
    const uint8_t *p = data;
    while (size > 0) {
        size_t chunk = size < ((size_t)1 << 30) ? size : ((size_t)1 << 30);
        ssize_t written = write(fd, p, chunk);
        if (written < 0 && errno == EINTR)
            continue;
        if (written <= 0)
            return false;
        p += written;
        size -= (size_t)written;
    }
    return true;
}

/* Length prefix, header padded with spaces to a multiple of 8, then the tensors' bytes. */
static bool write_contents(int fd, const char *header_text, size_t n_tensors,
                           const pio_safetensors_tensor *tensors)
{
    size_t text_length = strlen(header_text);
    size_t padded = (text_length + 7) & ~(size_t)7;
    uint8_t prefix[LENGTH_PREFIX_BYTES];
    for (unsigned i = 0; i < LENGTH_PREFIX_BYTES; i++)
        prefix[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    static const char spaces[8] = "        ";
    if (!write_all(fd, prefix, sizeof prefix) || !write_all(fd, header_text, text_length) ||
        !write_all(fd, spaces, padded - text_length))
        return false;
    for (size_t i = 0; i < n_tensors; i++) {
        uint64_t n_elements = 0, n_bytes = 0;
        count_elements(tensors[i].n_dims, tensors[i].shape, &n_elements);
        count_bytes(n_elements, tensors[i].dtype, &n_bytes);
        if (n_bytes > 0 && !write_all(fd, tensors[i].data, (size_t)n_bytes))
            return false;
    }
    return true;
}

static pio_status write_file_atomically(const char *path, const char *header_text,
                                        size_t n_tensors, const pio_safetensors_tensor *tensors,
                                        pio_error *err)
{
    static atomic_ulong counter;
    char temporary[4096];
    int length = snprintf(temporary, sizeof temporary, "%s.tmp.%ld.%lu", path, (long)getpid(),
                          atomic_fetch_add(&counter, 1));
    if (length < 0 || (size_t)length >= sizeof temporary)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: path too long", path);
    int fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0)
        return pio_error_set(err, PIO_ERR_IO, "%s: cannot create: %s", temporary, strerror(errno));
    bool ok = write_contents(fd, header_text, n_tensors, tensors);
    int saved_errno = errno;
    if (close(fd) != 0 && ok) {
        ok = false;
        saved_errno = errno;
    }
    if (ok && rename(temporary, path) != 0) {
        ok = false;
        saved_errno = errno;
    }
    if (!ok) {
        unlink(temporary);
        return pio_error_set(err, PIO_ERR_IO, "%s: write failed: %s", path, strerror(saved_errno));
    }
    return PIO_OK;
}

pio_status pio_safetensors_write(const char *path, size_t n_tensors,
                                 const pio_safetensors_tensor *tensors, size_t n_metadata,
                                 const pio_safetensors_metadata_entry *metadata, pio_error *err)
{
    if (path == NULL || (tensors == NULL && n_tensors > 0))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pio_safetensors_write: NULL argument");
    json_t *header = json_object();
    if (header == NULL)
        return out_of_memory(path, err);
    pio_status status = add_metadata_to_header(header, path, n_metadata, metadata, err);
    uint64_t offset = 0;
    for (size_t i = 0; i < n_tensors && status == PIO_OK; i++)
        status = add_tensor_to_header(header, path, &tensors[i], &offset, err);
    char *text = NULL;
    if (status == PIO_OK && (text = json_dumps(header, JSON_COMPACT)) == NULL)
        status = out_of_memory(path, err);
    json_decref(header);
    if (status == PIO_OK)
        status = write_file_atomically(path, text, n_tensors, tensors, err);
    free(text);
    return status;
}
