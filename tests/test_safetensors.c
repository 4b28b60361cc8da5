/*
 * Safetensors reader and writer: round trips through the writer, one corrupt file per validation
 * rule (each checked through a real file and through pio_safetensors_open_memory), sharded
 * checkpoints, and the real Qwen3-4B index from the shared folder.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pio/safetensors.h"

#ifndef PIO_TEST_SHARED_DIR
#define PIO_TEST_SHARED_DIR "../shared"
#endif

/* ------------------------------------------------------------------------------------------ */
/* Scratch folder and file helpers                                                            */
/* ------------------------------------------------------------------------------------------ */

typedef struct scratch {
    char dir[64];
} scratch;

static int setup_scratch(void **state)
{
    scratch *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -1;
    strcpy(s->dir, "/tmp/pio_test_safetensors_XXXXXX");
    if (mkdtemp(s->dir) == NULL) {
        free(s);
        return -1;
    }
    *state = s;
    return 0;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int teardown_scratch(void **state)
{
    scratch *s = *state;
    int rc = nftw(s->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(s);
    return rc;
}

static char *scratch_path(const scratch *s, const char *name)
{
    static char buffers[4][512]; /* a few live at once in one expression */
    static int next;
    char *path = buffers[next++ % 4];
    snprintf(path, sizeof buffers[0], "%s/%s", s->dir, name);
    return path;
}

static void write_bytes(const char *path, const void *bytes, size_t size)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, size, f), size);
    assert_int_equal(fclose(f), 0);
}

static void write_text(const char *path, const char *text)
{
    write_bytes(path, text, strlen(text));
}

static uint8_t *read_bytes(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long length = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *bytes = malloc((size_t)length + 1);
    assert_non_null(bytes);
    assert_int_equal(fread(bytes, 1, (size_t)length, f), (size_t)length);
    fclose(f);
    *size = (size_t)length;
    return bytes;
}

static void fill_pattern(uint8_t *bytes, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        bytes[i] = (uint8_t)(seed * 31u + i * 7u + (i >> 8));
}

static void assert_contains(const char *text, const char *needle)
{
    if (strstr(text, needle) == NULL)
        fail_msg("expected \"%s\" in message: %s", needle, text);
}

/* A tensor description for the writer. */
static pio_safetensors_tensor tensor_spec(const char *name, pio_dtype dtype, size_t n_dims,
                                          const int64_t *shape, const void *data)
{
    pio_safetensors_tensor t = {0};
    t.name = name;
    t.dtype = dtype;
    t.n_dims = n_dims;
    t.shape = shape;
    t.data = data;
    return t;
}

/* ------------------------------------------------------------------------------------------ */
/* Round trips                                                                                */
/* ------------------------------------------------------------------------------------------ */

static void test_round_trip_all_dtypes(void **state)
{
    scratch *s = *state;
    enum { N = PIO_DTYPE_COUNT - 1 };
    pio_safetensors_tensor specs[N];
    int64_t shapes[N][2];
    uint8_t *data[N];
    for (int i = 0; i < N; i++) {
        pio_dtype dtype = (pio_dtype)(i + 1);
        shapes[i][0] = 3;
        shapes[i][1] = i + 1;
        size_t bytes = 3u * (size_t)(i + 1) * pio_dtype_size(dtype);
        data[i] = malloc(bytes);
        assert_non_null(data[i]);
        fill_pattern(data[i], bytes, (unsigned)i);
        specs[i] = tensor_spec(pio_dtype_name(dtype), dtype, 2, shapes[i], data[i]);
    }
    const char *path = scratch_path(s, "all.safetensors");
    pio_error err = {0};
    assert_int_equal(pio_safetensors_write(path, N, specs, 0, NULL, &err), PIO_OK);

    pio_safetensors *st;
    assert_int_equal(pio_safetensors_open(path, &st, &err), PIO_OK);
    assert_int_equal(pio_safetensors_count(st), N);
    assert_int_equal(pio_safetensors_file_count(st), 1);
    const pio_safetensors_file_info *file = pio_safetensors_file(st, 0);
    assert_string_equal(file->path, path);
    assert_int_equal(file->data_offset % 8, 0); /* the writer pads the header */
    assert_int_equal(file->n_tensors, N);
    assert_int_equal(file->n_metadata, 0);
    for (int i = 0; i < N; i++) {
        pio_dtype dtype = (pio_dtype)(i + 1);
        const pio_safetensors_tensor *t = pio_safetensors_find(st, pio_dtype_name(dtype));
        assert_non_null(t);
        assert_ptr_equal(t, pio_safetensors_at(st, (size_t)i)); /* storage order = write order */
        assert_int_equal(t->dtype, dtype);
        assert_int_equal(t->n_dims, 2);
        assert_int_equal(t->shape[0], 3);
        assert_int_equal(t->shape[1], i + 1);
        assert_int_equal(t->n_elements, 3u * (unsigned)(i + 1));
        assert_int_equal(t->n_bytes, t->n_elements * pio_dtype_size(dtype));
        assert_memory_equal(t->data, data[i], t->n_bytes);
        assert_int_equal(t->file_index, 0);
        assert_ptr_equal((const uint8_t *)t->data - t->file_offset,
                         (const uint8_t *)pio_safetensors_at(st, 0)->data -
                             pio_safetensors_at(st, 0)->file_offset);
    }
    assert_null(pio_safetensors_at(st, N));
    assert_null(pio_safetensors_find(st, "F64"));
    assert_null(pio_safetensors_file(st, 1));
    pio_safetensors_close(st);
    for (int i = 0; i < N; i++)
        free(data[i]);
}

static void test_header_is_padded_with_spaces(void **state)
{
    scratch *s = *state;
    const char *path = scratch_path(s, "padded.safetensors");
    uint8_t byte = 7;
    int64_t shape[1] = {1};
    pio_safetensors_tensor t = tensor_spec("x", PIO_DTYPE_U8, 1, shape, &byte);
    assert_int_equal(pio_safetensors_write(path, 1, &t, 0, NULL, NULL), PIO_OK);
    size_t size;
    uint8_t *bytes = read_bytes(path, &size);
    uint64_t header_length = 0;
    for (int i = 7; i >= 0; i--)
        header_length = (header_length << 8) | bytes[i];
    assert_int_equal(header_length % 8, 0);
    assert_int_equal(size, 8 + header_length + 1);
    assert_int_equal(bytes[8], '{');
    size_t text_end = 8 + header_length;
    while (bytes[text_end - 1] == ' ')
        text_end--;
    assert_int_equal(bytes[text_end - 1], '}');
    assert_true(8 + header_length - text_end < 8);
    assert_int_equal(bytes[size - 1], 7);
    free(bytes);
}

static void test_metadata_scalar_and_empty_tensors(void **state)
{
    scratch *s = *state;
    const char *path = scratch_path(s, "meta.safetensors");
    float scalar = 2.5f;
    int64_t empty_shape[2] = {0, 4}, empty_shape2[2] = {3, 0}, vector_shape[1] = {2};
    uint16_t vector[2] = {0x3f80, 0x4000};
    pio_safetensors_tensor specs[] = {
        tensor_spec("empty_first", PIO_DTYPE_F32, 2, empty_shape, NULL),
        tensor_spec("scalar", PIO_DTYPE_F32, 0, NULL, &scalar),
        tensor_spec("vector", PIO_DTYPE_BF16, 1, vector_shape, vector),
        tensor_spec("empty_last", PIO_DTYPE_I64, 2, empty_shape2, NULL),
    };
    pio_safetensors_metadata_entry metadata[] = {{"format", "pt"},
                                                 {"note", "caf\xc3\xa9 \xe2\x9c\x93"}};
    pio_error err = {0};
    assert_int_equal(pio_safetensors_write(path, 4, specs, 2, metadata, &err), PIO_OK);

    pio_safetensors *st;
    assert_int_equal(pio_safetensors_open(path, &st, &err), PIO_OK);
    assert_int_equal(pio_safetensors_count(st), 4);
    assert_string_equal(pio_safetensors_metadata(st, 0, "format"), "pt");
    assert_string_equal(pio_safetensors_metadata(st, 0, "note"), "caf\xc3\xa9 \xe2\x9c\x93");
    assert_null(pio_safetensors_metadata(st, 0, "absent"));
    assert_null(pio_safetensors_metadata(st, 1, "format"));
    const pio_safetensors_file_info *file = pio_safetensors_file(st, 0);
    assert_int_equal(file->n_metadata, 2);
    assert_string_equal(file->metadata[0].key, "format");
    assert_string_equal(file->metadata[1].key, "note");

    const pio_safetensors_tensor *t = pio_safetensors_find(st, "scalar");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 0);
    assert_non_null(t->shape);
    assert_int_equal(t->n_elements, 1);
    assert_int_equal(t->n_bytes, 4);
    assert_memory_equal(t->data, &scalar, 4);

    t = pio_safetensors_find(st, "empty_first");
    assert_non_null(t);
    assert_int_equal(t->n_elements, 0);
    assert_int_equal(t->n_bytes, 0);
    assert_non_null(t->data);
    assert_int_equal(t->file_offset, file->data_offset);
    assert_ptr_equal(pio_safetensors_at(st, 0), t); /* empty tensors sort before others */

    t = pio_safetensors_find(st, "empty_last");
    assert_non_null(t);
    assert_int_equal(t->n_bytes, 0);
    assert_int_equal(t->file_offset, file->size);
    assert_int_equal(t->shape[0], 3);
    assert_int_equal(t->shape[1], 0);

    t = pio_safetensors_find(st, "vector");
    assert_memory_equal(t->data, vector, sizeof vector);
    pio_safetensors_close(st);
}

static void test_empty_file_is_valid(void **state)
{
    scratch *s = *state;
    const char *path = scratch_path(s, "empty.safetensors");
    pio_error err = {0};
    assert_int_equal(pio_safetensors_write(path, 0, NULL, 0, NULL, &err), PIO_OK);
    pio_safetensors *st;
    assert_int_equal(pio_safetensors_open(path, &st, &err), PIO_OK);
    assert_int_equal(pio_safetensors_count(st), 0);
    assert_null(pio_safetensors_find(st, "x"));
    pio_safetensors_close(st);
}

static void test_checked_lookup(void **state)
{
    scratch *s = *state;
    const char *path = scratch_path(s, "model.safetensors");
    int64_t shape[2] = {8, 4};
    uint16_t data[32] = {0};
    const char *name = "model.layers.3.self_attn.q_proj.weight";
    pio_safetensors_tensor spec = tensor_spec(name, PIO_DTYPE_BF16, 2, shape, data);
    assert_int_equal(pio_safetensors_write(path, 1, &spec, 0, NULL, NULL), PIO_OK);
    pio_safetensors *st;
    pio_error err = {0};
    assert_int_equal(pio_safetensors_open(path, &st, &err), PIO_OK);

    const pio_safetensors_tensor *t = NULL;
    assert_int_equal(pio_safetensors_get(st, name, PIO_DTYPE_BF16, 2, shape, &t, &err), PIO_OK);
    assert_ptr_equal(t, pio_safetensors_find(st, name));

    int64_t wildcard[2] = {8, -1};
    assert_int_equal(pio_safetensors_get(st, name, PIO_DTYPE_BF16, 2, wildcard, &t, &err), PIO_OK);
    assert_int_equal(pio_safetensors_get(st, name, PIO_DTYPE_INVALID, 0, NULL, &t, &err), PIO_OK);

    int64_t wrong[2] = {8, 5};
    char expected[1024];
    snprintf(expected, sizeof expected, "%s: %s: expected [8, 5] BF16, file has [8, 4] BF16",
             path, name);
    assert_int_equal(pio_safetensors_get(st, name, PIO_DTYPE_BF16, 2, wrong, &t, &err),
                     PIO_ERR_FORMAT);
    assert_null(t);
    assert_int_equal(err.status, PIO_ERR_FORMAT);
    assert_string_equal(err.message, expected);

    assert_int_equal(pio_safetensors_get(st, name, PIO_DTYPE_F16, 2, shape, &t, &err),
                     PIO_ERR_FORMAT);
    assert_contains(err.message, "expected [8, 4] F16, file has [8, 4] BF16");

    int64_t three[3] = {8, 4, 1};
    assert_int_equal(pio_safetensors_get(st, name, PIO_DTYPE_INVALID, 3, three, &t, &err),
                     PIO_ERR_FORMAT);
    assert_contains(err.message, "expected [8, 4, 1], file has [8, 4] BF16");

    int64_t star[1] = {-1};
    assert_int_equal(pio_safetensors_get(st, name, PIO_DTYPE_BF16, 1, star, &t, &err),
                     PIO_ERR_FORMAT);
    assert_contains(err.message, "expected [*] BF16");

    assert_int_equal(pio_safetensors_get(st, "model.norm.weight", PIO_DTYPE_BF16, 0, NULL, &t,
                                         &err),
                     PIO_ERR_NOT_FOUND);
    assert_contains(err.message, path);
    assert_contains(err.message, "no tensor named \"model.norm.weight\"");
    pio_safetensors_close(st);
}

static void test_twenty_thousand_tensors_lookup(void **state)
{
    scratch *s = *state;
    enum { N = 20000 };
    pio_safetensors_tensor *specs = calloc(N, sizeof *specs);
    char (*names)[48] = calloc(N, sizeof *names);
    int32_t *values = calloc(N, sizeof *values);
    assert_non_null(specs);
    assert_non_null(names);
    assert_non_null(values);
    static const int64_t shape[1] = {1};
    for (int i = 0; i < N; i++) {
        /* descending names, so storage order and name order differ */
        snprintf(names[i], sizeof names[i], "model.layers.%d.weight", N - i);
        values[i] = i;
        specs[i] = tensor_spec(names[i], PIO_DTYPE_I32, 1, shape, &values[i]);
    }
    const char *path = scratch_path(s, "many.safetensors");
    pio_error err = {0};
    assert_int_equal(pio_safetensors_write(path, N, specs, 0, NULL, &err), PIO_OK);
    pio_safetensors *st;
    assert_int_equal(pio_safetensors_open(path, &st, &err), PIO_OK);
    assert_int_equal(pio_safetensors_count(st), N);
    for (int i = 0; i < N; i++) {
        const pio_safetensors_tensor *t = pio_safetensors_find(st, names[i]);
        assert_non_null(t);
        int32_t value;
        memcpy(&value, t->data, sizeof value);
        assert_int_equal(value, i);
    }
    assert_null(pio_safetensors_find(st, "model.layers.0.weight"));
    assert_null(pio_safetensors_find(st, ""));
    pio_safetensors_close(st);
    free(specs);
    free(names);
    free(values);
}

static void test_open_memory_matches_file(void **state)
{
    scratch *s = *state;
    const char *path = scratch_path(s, "mem.safetensors");
    int64_t shape[1] = {3};
    int32_t data[3] = {1, -2, 3};
    pio_safetensors_tensor spec = tensor_spec("ids", PIO_DTYPE_I32, 1, shape, data);
    assert_int_equal(pio_safetensors_write(path, 1, &spec, 0, NULL, NULL), PIO_OK);
    size_t size;
    uint8_t *bytes = read_bytes(path, &size);
    pio_safetensors *st;
    pio_error err = {0};
    assert_int_equal(pio_safetensors_open_memory(bytes, size, "in-memory", &st, &err), PIO_OK);
    const pio_safetensors_tensor *t = pio_safetensors_find(st, "ids");
    assert_non_null(t);
    assert_ptr_equal(t->data, bytes + t->file_offset); /* no copy */
    assert_string_equal(pio_safetensors_file(st, 0)->path, "in-memory");
    pio_safetensors_close(st);
    free(bytes);
}

/* ------------------------------------------------------------------------------------------ */
/* Writer errors                                                                              */
/* ------------------------------------------------------------------------------------------ */

static void test_writer_rejects_bad_input(void **state)
{
    scratch *s = *state;
    const char *path = scratch_path(s, "bad.safetensors");
    uint8_t data[16] = {0};
    int64_t shape[1] = {4}, negative[1] = {-1}, huge[2] = {INT64_MAX, 4};
    pio_error err = {0};

    pio_safetensors_tensor twice[2] = {tensor_spec("a", PIO_DTYPE_U8, 1, shape, data),
                                       tensor_spec("a", PIO_DTYPE_U8, 1, shape, data)};
    assert_int_equal(pio_safetensors_write(path, 2, twice, 0, NULL, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_contains(err.message, "tensor \"a\" is given twice");

    pio_safetensors_tensor reserved = tensor_spec("__metadata__", PIO_DTYPE_U8, 1, shape, data);
    assert_int_equal(pio_safetensors_write(path, 1, &reserved, 0, NULL, &err),
                     PIO_ERR_INVALID_ARGUMENT);

    pio_safetensors_tensor bad_dtype = tensor_spec("a", PIO_DTYPE_INVALID, 1, shape, data);
    assert_int_equal(pio_safetensors_write(path, 1, &bad_dtype, 0, NULL, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_contains(err.message, "invalid dtype");

    pio_safetensors_tensor neg = tensor_spec("a", PIO_DTYPE_U8, 1, negative, data);
    assert_int_equal(pio_safetensors_write(path, 1, &neg, 0, NULL, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_contains(err.message, "shape[0] is negative");

    pio_safetensors_tensor too_big = tensor_spec("a", PIO_DTYPE_F32, 2, huge, data);
    assert_int_equal(pio_safetensors_write(path, 1, &too_big, 0, NULL, &err),
                     PIO_ERR_INVALID_ARGUMENT);

    pio_safetensors_tensor no_data = tensor_spec("a", PIO_DTYPE_U8, 1, shape, NULL);
    assert_int_equal(pio_safetensors_write(path, 1, &no_data, 0, NULL, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_contains(err.message, "data is NULL");

    pio_safetensors_tensor bad_utf8 = tensor_spec("a\xff", PIO_DTYPE_U8, 1, shape, data);
    assert_int_equal(pio_safetensors_write(path, 1, &bad_utf8, 0, NULL, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_contains(err.message, "UTF-8");

    pio_safetensors_metadata_entry dup_meta[2] = {{"k", "1"}, {"k", "2"}};
    pio_safetensors_tensor ok = tensor_spec("a", PIO_DTYPE_U8, 1, shape, data);
    assert_int_equal(pio_safetensors_write(path, 1, &ok, 2, dup_meta, &err),
                     PIO_ERR_INVALID_ARGUMENT);
    assert_contains(err.message, "metadata key \"k\"");

    struct stat st;
    assert_int_not_equal(stat(path, &st), 0); /* nothing was written by the failed calls */

    const char *unwritable = scratch_path(s, "no/such/folder/x.safetensors");
    assert_int_equal(pio_safetensors_write(unwritable, 1, &ok, 0, NULL, &err), PIO_ERR_IO);
    assert_contains(err.message, "no/such/folder");
}

static void test_failed_write_keeps_previous_file(void **state)
{
    scratch *s = *state;
    const char *path = scratch_path(s, "keep.safetensors");
    uint8_t data[4] = {1, 2, 3, 4};
    int64_t shape[1] = {4};
    pio_safetensors_tensor ok = tensor_spec("a", PIO_DTYPE_U8, 1, shape, data);
    assert_int_equal(pio_safetensors_write(path, 1, &ok, 0, NULL, NULL), PIO_OK);
    size_t before_size, after_size;
    uint8_t *before = read_bytes(path, &before_size);
    pio_safetensors_tensor bad = tensor_spec("b", PIO_DTYPE_U8, 1, shape, NULL);
    assert_int_equal(pio_safetensors_write(path, 1, &bad, 0, NULL, NULL), PIO_ERR_INVALID_ARGUMENT);
    uint8_t *after = read_bytes(path, &after_size);
    assert_int_equal(before_size, after_size);
    assert_memory_equal(before, after, before_size);
    free(before);
    free(after);
}

/* ------------------------------------------------------------------------------------------ */
/* Corrupt files, one per validation rule                                                     */
/* ------------------------------------------------------------------------------------------ */

/* Offsets named in messages: relative to the data section (header padded to 8 bytes), or
 * absolute in the file. */
#define NO_OFFSET (-1)

typedef struct corrupt_case {
    const char *label;
    const char *header;      /* padded with spaces to a multiple of 8; NULL: use raw */
    size_t data_size;        /* bytes after the header (pattern-filled) */
    int64_t declared_length; /* length prefix to write instead of the real one, or -1 */
    const char *raw;         /* used when header is NULL */
    size_t raw_size;
    pio_status status;
    const char *needles[4];
    int64_t data_offset;     /* expected "offset N" with N = data start + this, or NO_OFFSET */
    int64_t file_offset;     /* expected "offset N" with N absolute, or NO_OFFSET */
} corrupt_case;

#define F32_ENTRY(name, shape, begin, end)                                                      \
    "\"" name "\":{\"dtype\":\"F32\",\"shape\":" shape ",\"data_offsets\":[" #begin "," #end "]}"

static const corrupt_case corrupt_cases[] = {
    {"file shorter than the length prefix", NULL, 0, -1, "\x02\x00\x00\x00\x00", 5,
     PIO_ERR_FORMAT, {"5 bytes", "too short for the 8-byte header length"}, NO_OFFSET, NO_OFFSET},
    {"empty file", NULL, 0, -1, "", 0, PIO_ERR_FORMAT, {"0 bytes", "too short"}, NO_OFFSET,
     NO_OFFSET},
    {"header length over the limit", "{}", 0, 100000001, NULL, 0, PIO_ERR_FORMAT,
     {"header length 100000001", "bytes 0..7", "over the 100000000-byte limit"}, NO_OFFSET,
     NO_OFFSET},
    {"header length past the end of the file", "{}", 4, 4096, NULL, 0, PIO_ERR_FORMAT,
     {"header length 4096", "bytes 0..7", "runs past the end of the file"}, NO_OFFSET, NO_OFFSET},
    {"header length zero", "{}", 0, 0, NULL, 0, PIO_ERR_FORMAT, {"header length is 0"},
     NO_OFFSET, NO_OFFSET},
    {"header is an array", "[]", 0, -1, NULL, 0, PIO_ERR_FORMAT,
     {"does not start with '{'", "0x5b"}, NO_OFFSET, 8},
    {"header starts with a space", " {}", 0, -1, NULL, 0, PIO_ERR_FORMAT,
     {"does not start with '{'"}, NO_OFFSET, 8},
    {"invalid UTF-8 byte", "{\"a\xff\":1}", 0, -1, NULL, 0, PIO_ERR_FORMAT,
     {"not valid UTF-8", "0xff"}, NO_OFFSET, 11},
    {"overlong UTF-8", "{\"\xc0\xaf\":1}", 0, -1, NULL, 0, PIO_ERR_FORMAT,
     {"not valid UTF-8", "0xc0"}, NO_OFFSET, 10},
    {"UTF-8 encoded surrogate", "{\"\xed\xa0\x80\":1}", 0, -1, NULL, 0, PIO_ERR_FORMAT,
     {"not valid UTF-8", "0xed"}, NO_OFFSET, 10},
    {"code point above U+10FFFF", "{\"\xf4\x90\x80\x80\":1}", 0, -1, NULL, 0, PIO_ERR_FORMAT,
     {"not valid UTF-8", "0xf4"}, NO_OFFSET, 10},
    {"truncated UTF-8 sequence", "{}\xe2\x82", 0, -1, NULL, 0, PIO_ERR_FORMAT,
     {"not valid UTF-8", "0xe2"}, NO_OFFSET, 10},
    {"invalid JSON", "{\"a\":}", 0, -1, NULL, 0, PIO_ERR_FORMAT,
     {"header is not valid JSON", "line 1"}, NO_OFFSET, NO_OFFSET},
    {"garbage after the JSON object", "{} x", 0, -1, NULL, 0, PIO_ERR_FORMAT,
     {"header is not valid JSON"}, NO_OFFSET, NO_OFFSET},
    {"integer beyond 64 bits",
     "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,99999999999999999999]}}", 0, -1,
     NULL, 0, PIO_ERR_FORMAT, {"header is not valid JSON", "too big"}, NO_OFFSET, NO_OFFSET},
    {"duplicate tensor name",
     "{" F32_ENTRY("a", "[1]", 0, 4) "," F32_ENTRY("a", "[1]", 4, 8) "}", 8, -1, NULL, 0,
     PIO_ERR_FORMAT, {"duplicate", "\"a\"", "file offset"}, NO_OFFSET, NO_OFFSET},
    {"entry not an object", "{\"a\":[1]}", 0, -1, NULL, 0, PIO_ERR_FORMAT,
     {"tensor \"a\"", "must be an object"}, NO_OFFSET, 9},
    {"unknown entry field",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"extra\":1}}", 1, -1, NULL,
     0, PIO_ERR_FORMAT, {"tensor \"a\"", "unknown field \"extra\""}, NO_OFFSET, NO_OFFSET},
    {"missing data_offsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, -1, NULL, 0,
     PIO_ERR_FORMAT, {"tensor \"a\"", "no \"data_offsets\""}, NO_OFFSET, NO_OFFSET},
    {"unknown dtype", "{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, -1,
     NULL, 0, PIO_ERR_FORMAT,
     {"tensor \"w\" (header entry at file offset 9)", "unknown dtype \"F64\""},
     NO_OFFSET, 9},
    {"dtype not a string", "{\"w\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,1]}}", 1, -1,
     NULL, 0, PIO_ERR_FORMAT, {"tensor \"w\"", "\"dtype\" must be a string"}, NO_OFFSET,
     NO_OFFSET},
    {"negative dimension", "{" F32_ENTRY("w", "[-1]", 0, 4) "}", 4, -1, NULL, 0, PIO_ERR_FORMAT,
     {"tensor \"w\"", "non-negative integers"}, NO_OFFSET, NO_OFFSET},
    {"fractional dimension", "{" F32_ENTRY("w", "[1.5]", 0, 4) "}", 4, -1, NULL, 0,
     PIO_ERR_FORMAT, {"tensor \"w\"", "non-negative integers"}, NO_OFFSET, NO_OFFSET},
    {"shape not an array", "{" F32_ENTRY("w", "4", 0, 4) "}", 4, -1, NULL, 0, PIO_ERR_FORMAT,
     {"tensor \"w\"", "\"shape\""}, NO_OFFSET, NO_OFFSET},
    {"shape and byte range disagree", "{" F32_ENTRY("w", "[2,3]", 0, 20) "}", 20, -1, NULL, 0,
     PIO_ERR_FORMAT, {"tensor \"w\" (header entry at file offset 9)",
                      "shape [2, 3] of F32 needs 24 bytes", "[0, 20] hold 20"},
     0, NO_OFFSET},
    {"element count overflows",
     "{" F32_ENTRY("w", "[4294967296,4294967296,2]", 0, 8) "}", 8, -1, NULL, 0, PIO_ERR_FORMAT,
     {"tensor \"w\"", "overflows 64 bits", "[4294967296, 4294967296, 2]"}, NO_OFFSET, NO_OFFSET},
    {"byte count overflows", "{" F32_ENTRY("w", "[4611686018427387904]", 0, 8) "}", 8, -1, NULL,
     0, PIO_ERR_FORMAT, {"tensor \"w\"", "overflows 64 bits"}, NO_OFFSET, NO_OFFSET},
    {"range past the data section", "{" F32_ENTRY("w", "[4]", 0, 16) "}", 8, -1, NULL, 0,
     PIO_ERR_FORMAT, {"tensor \"w\"", "[0, 16] reach past the end of the data section (8 bytes"},
     0, NO_OFFSET},
    {"begin after end", "{" F32_ENTRY("w", "[1]", 8, 4) "}", 8, -1, NULL, 0, PIO_ERR_FORMAT,
     {"tensor \"w\"", "0 <= BEGIN <= END"}, NO_OFFSET, NO_OFFSET},
    {"data_offsets of one number",
     "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0]}}", 0, -1, NULL, 0,
     PIO_ERR_FORMAT, {"tensor \"w\"", "[BEGIN, END]"}, NO_OFFSET, NO_OFFSET},
    {"negative offset", "{" F32_ENTRY("w", "[1]", -4, 0) "}", 4, -1, NULL, 0, PIO_ERR_FORMAT,
     {"tensor \"w\"", "[BEGIN, END]"}, NO_OFFSET, NO_OFFSET},
    {"header entry found past a look-alike value",
     "{\"__metadata__\":{\"k\":\"w\"}," F32_ENTRY("w", "[1]", 0, 5) "}", 5, -1, NULL, 0,
     PIO_ERR_FORMAT, {"tensor \"w\" (header entry at file offset 34)", "needs 4 bytes"},
     NO_OFFSET, 34},
    {"overlapping ranges",
     "{" F32_ENTRY("a", "[4]", 0, 16) "," F32_ENTRY("b", "[4]", 8, 24) "}", 24, -1, NULL, 0,
     PIO_ERR_FORMAT, {"tensor \"b\" data_offsets [8, 24]", "overlap tensor \"a\"", "[0, 16]"}, 8,
     NO_OFFSET},
    {"empty tensor inside another's range",
     "{" F32_ENTRY("a", "[4]", 0, 16) "," F32_ENTRY("z", "[0]", 8, 8) "}", 16, -1, NULL, 0,
     PIO_ERR_FORMAT, {"tensor \"z\"", "overlap tensor \"a\""}, 8, NO_OFFSET},
    {"gap between tensors",
     "{" F32_ENTRY("a", "[2]", 0, 8) "," F32_ENTRY("b", "[2]", 16, 24) "}", 24, -1, NULL, 0,
     PIO_ERR_FORMAT, {"data bytes [8, 16)", "belong to no tensor", "gap before tensor \"b\""}, 8,
     NO_OFFSET},
    {"gap at the start", "{" F32_ENTRY("a", "[2]", 8, 16) "}", 16, -1, NULL, 0, PIO_ERR_FORMAT,
     {"data bytes [0, 8)", "gap before tensor \"a\""}, 0, NO_OFFSET},
    {"uncovered tail", "{" F32_ENTRY("a", "[2]", 0, 8) "}", 16, -1, NULL, 0, PIO_ERR_FORMAT,
     {"data bytes [8, 16)", "after the last tensor \"a\""}, 8, NO_OFFSET},
    {"data but no tensors", "{}", 8, -1, NULL, 0, PIO_ERR_FORMAT,
     {"data bytes [0, 8)", "the header lists no tensors"}, 0, NO_OFFSET},
    {"metadata not an object", "{\"__metadata__\":1}", 0, -1, NULL, 0, PIO_ERR_FORMAT,
     {"\"__metadata__\" must be an object"}, NO_OFFSET, NO_OFFSET},
    {"metadata value not a string", "{\"__metadata__\":{\"format\":1}}", 0, -1, NULL, 0,
     PIO_ERR_FORMAT, {"__metadata__ \"format\" must be a string"}, NO_OFFSET, NO_OFFSET},
};

/* Length prefix + header padded with spaces to a multiple of 8 + pattern-filled data. */
static uint8_t *build_corrupt_file(const corrupt_case *c, size_t *size, uint64_t *data_start)
{
    if (c->header == NULL) {
        uint8_t *bytes = malloc(c->raw_size + 1);
        assert_non_null(bytes);
        memcpy(bytes, c->raw, c->raw_size);
        *size = c->raw_size;
        *data_start = 0;
        return bytes;
    }
    size_t text = strlen(c->header);
    size_t padded = (text + 7) & ~(size_t)7;
    *size = 8 + padded + c->data_size;
    *data_start = 8 + padded;
    uint8_t *bytes = malloc(*size);
    assert_non_null(bytes);
    uint64_t declared = c->declared_length >= 0 ? (uint64_t)c->declared_length : padded;
    for (int i = 0; i < 8; i++)
        bytes[i] = (uint8_t)(declared >> (8 * i));
    memcpy(bytes + 8, c->header, text);
    memset(bytes + 8 + text, ' ', padded - text);
    fill_pattern(bytes + 8 + padded, c->data_size, 1);
    return bytes;
}

static void assert_names_offset(const char *message, uint64_t offset)
{
    char single[64], range[64];
    snprintf(single, sizeof single, "offset %llu", (unsigned long long)offset);
    snprintf(range, sizeof range, "offsets %llu", (unsigned long long)offset);
    if (strstr(message, single) == NULL && strstr(message, range) == NULL)
        fail_msg("expected file offset %llu in message: %s", (unsigned long long)offset, message);
}

static void check_corrupt_result(const corrupt_case *c, const char *name, pio_status status,
                                 const pio_error *err, uint64_t data_start)
{
    if (status != c->status)
        fail_msg("%s: status %d (%s), expected %d", c->label, status, err->message, c->status);
    assert_int_equal(err->status, c->status);
    assert_contains(err->message, name);
    for (size_t k = 0; k < 4 && c->needles[k] != NULL; k++)
        assert_contains(err->message, c->needles[k]);
    if (c->data_offset != NO_OFFSET)
        assert_names_offset(err->message, data_start + (uint64_t)c->data_offset);
    if (c->file_offset != NO_OFFSET)
        assert_names_offset(err->message, (uint64_t)c->file_offset);
}

static void test_corrupt_files(void **state)
{
    scratch *s = *state;
    for (size_t i = 0; i < sizeof corrupt_cases / sizeof corrupt_cases[0]; i++) {
        const corrupt_case *c = &corrupt_cases[i];
        size_t size;
        uint64_t data_start;
        uint8_t *bytes = build_corrupt_file(c, &size, &data_start);

        pio_safetensors *st = (pio_safetensors *)1;
        pio_error err = {0};
        pio_status status =
            pio_safetensors_open_memory(bytes, size, "corrupt-in-memory", &st, &err);
        check_corrupt_result(c, "corrupt-in-memory", status, &err, data_start);
        assert_null(st);

        char file_name[64];
        snprintf(file_name, sizeof file_name, "corrupt_%02zu.safetensors", i);
        const char *path = scratch_path(s, file_name);
        write_bytes(path, bytes, size);
        st = (pio_safetensors *)1;
        memset(&err, 0, sizeof err);
        status = pio_safetensors_open(path, &st, &err);
        check_corrupt_result(c, path, status, &err, data_start);
        assert_null(st);
        free(bytes);
    }
}

/* Every single-byte corruption and truncation of a valid file is either accepted or rejected
 * with an error, never a crash (run under ASan/UBSan). */
static void test_mutations_never_crash(void **state)
{
    scratch *s = *state;
    const char *path = scratch_path(s, "mutate.safetensors");
    int64_t shape_a[2] = {2, 3}, shape_b[1] = {5};
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint8_t b[5] = {9, 8, 7, 6, 5};
    pio_safetensors_tensor specs[] = {tensor_spec("a", PIO_DTYPE_F32, 2, shape_a, a),
                                      tensor_spec("b", PIO_DTYPE_U8, 1, shape_b, b)};
    pio_safetensors_metadata_entry meta[] = {{"format", "pt"}};
    assert_int_equal(pio_safetensors_write(path, 2, specs, 1, meta, NULL), PIO_OK);
    size_t size;
    uint8_t *original = read_bytes(path, &size);
    uint8_t *copy = malloc(size);
    assert_non_null(copy);
    static const uint8_t replacements[] = {0x00, 0x20, 0x22, 0x2c, 0x30, 0x39, 0x5b, 0x5d,
                                           0x7b, 0x7d, 0x80, 0xff};
    size_t accepted = 0;
    for (size_t at = 0; at < size; at++) {
        for (size_t r = 0; r < sizeof replacements; r++) {
            memcpy(copy, original, size);
            copy[at] = replacements[r];
            pio_safetensors *st = NULL;
            pio_error err = {0};
            if (pio_safetensors_open_memory(copy, size, "m", &st, &err) == PIO_OK) {
                accepted++;
                for (size_t i = 0; i < pio_safetensors_count(st); i++) {
                    const pio_safetensors_tensor *t = pio_safetensors_at(st, i);
                    assert_true(t->file_offset + t->n_bytes <= size);
                    assert_ptr_equal(pio_safetensors_find(st, t->name), t);
                }
                pio_safetensors_close(st);
            } else {
                assert_true(PIO_IS_ERROR(err.status));
                assert_true(err.message[0] != '\0');
            }
        }
    }
    for (size_t length = 0; length < size; length++) {
        pio_safetensors *st = NULL;
        assert_int_equal(pio_safetensors_open_memory(original, length, "t", &st, NULL),
                         PIO_ERR_FORMAT);
        assert_null(st);
    }
    assert_true(accepted > 0); /* e.g. changing tensor data bytes keeps the file valid */
    free(copy);
    free(original);
}

/* ------------------------------------------------------------------------------------------ */
/* Folders and sharded checkpoints                                                            */
/* ------------------------------------------------------------------------------------------ */

static void write_shard(const scratch *s, const char *name, const char *const *tensor_names,
                        size_t n, unsigned seed)
{
    pio_safetensors_tensor specs[8];
    uint16_t data[8][6];
    static const int64_t shape[2] = {2, 3};
    for (size_t i = 0; i < n; i++) {
        fill_pattern((uint8_t *)data[i], sizeof data[i], seed + (unsigned)i);
        specs[i] = tensor_spec(tensor_names[i], PIO_DTYPE_BF16, 2, shape, data[i]);
    }
    pio_safetensors_metadata_entry meta[] = {{"format", "pt"}, {"shard", name}};
    pio_error err = {0};
    assert_int_equal(pio_safetensors_write(scratch_path(s, name), n, specs, 2, meta, &err), PIO_OK);
}

static const char *const shard1_tensors[] = {"model.embed_tokens.weight",
                                             "model.layers.0.mlp.up_proj.weight"};
static const char *const shard2_tensors[] = {"model.layers.1.mlp.up_proj.weight",
                                             "model.norm.weight", "lm_head.weight"};

#define GOOD_INDEX                                                                              \
    "{\"metadata\": {\"total_size\": 60},\n"                                                    \
    " \"weight_map\": {\n"                                                                      \
    "  \"lm_head.weight\": \"model-00002-of-00002.safetensors\",\n"                             \
    "  \"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\",\n"                  \
    "  \"model.layers.0.mlp.up_proj.weight\": \"model-00001-of-00002.safetensors\",\n"          \
    "  \"model.layers.1.mlp.up_proj.weight\": \"model-00002-of-00002.safetensors\",\n"          \
    "  \"model.norm.weight\": \"model-00002-of-00002.safetensors\"}}\n"

static void write_two_shards(const scratch *s)
{
    write_shard(s, "model-00001-of-00002.safetensors", shard1_tensors, 2, 10);
    write_shard(s, "model-00002-of-00002.safetensors", shard2_tensors, 3, 20);
}

static void test_sharded_checkpoint(void **state)
{
    scratch *s = *state;
    write_two_shards(s);
    write_text(scratch_path(s, "model.safetensors.index.json"), GOOD_INDEX);

    pio_safetensors *st;
    pio_error err = {0};
    assert_int_equal(pio_safetensors_open(s->dir, &st, &err), PIO_OK);
    assert_int_equal(pio_safetensors_count(st), 5);
    assert_int_equal(pio_safetensors_file_count(st), 2);
    const pio_safetensors_file_info *first = pio_safetensors_file(st, 0);
    const pio_safetensors_file_info *second = pio_safetensors_file(st, 1);
    assert_string_equal(first->path, scratch_path(s, "model-00001-of-00002.safetensors"));
    assert_string_equal(second->path, scratch_path(s, "model-00002-of-00002.safetensors"));
    assert_int_equal(first->n_tensors, 2);
    assert_int_equal(second->n_tensors, 3);
    assert_string_equal(pio_safetensors_metadata(st, 1, "shard"),
                        "model-00002-of-00002.safetensors");
    assert_string_equal(pio_safetensors_metadata(st, 0, "format"), "pt");

    /* storage order: shard 1 then shard 2, write order within each */
    assert_string_equal(pio_safetensors_at(st, 0)->name, "model.embed_tokens.weight");
    assert_string_equal(pio_safetensors_at(st, 2)->name, "model.layers.1.mlp.up_proj.weight");
    assert_string_equal(pio_safetensors_at(st, 4)->name, "lm_head.weight");

    const pio_safetensors_tensor *t = pio_safetensors_find(st, "model.norm.weight");
    assert_non_null(t);
    assert_int_equal(t->file_index, 1);
    uint16_t expected[6];
    fill_pattern((uint8_t *)expected, sizeof expected, 21);
    assert_memory_equal(t->data, expected, sizeof expected);

    int64_t wrong[2] = {3, 2};
    assert_int_equal(pio_safetensors_get(st, "lm_head.weight", PIO_DTYPE_BF16, 2, wrong, &t, &err),
                     PIO_ERR_FORMAT);
    assert_contains(err.message, "model-00002-of-00002.safetensors: lm_head.weight: expected "
                                 "[3, 2] BF16, file has [2, 3] BF16");
    pio_safetensors_close(st);

    /* a trailing slash does not leak into the paths */
    char with_slash[128];
    snprintf(with_slash, sizeof with_slash, "%s//", s->dir);
    assert_int_equal(pio_safetensors_open(with_slash, &st, &err), PIO_OK);
    assert_string_equal(pio_safetensors_file(st, 0)->path,
                        scratch_path(s, "model-00001-of-00002.safetensors"));
    pio_safetensors_close(st);

    /* the index file can also be named directly */
    assert_int_equal(pio_safetensors_open(scratch_path(s, "model.safetensors.index.json"), &st,
                                          &err),
                     PIO_OK);
    assert_int_equal(pio_safetensors_count(st), 5);
    pio_safetensors_close(st);
}

typedef struct index_case {
    const char *label;
    const char *index;
    pio_status status;
    const char *needles[3];
} index_case;

static const index_case index_cases[] = {
    {"missing shard",
     "{\"weight_map\": {\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\",\n"
     " \"x.weight\": \"model-00003-of-00003.safetensors\"}}",
     PIO_ERR_NOT_FOUND,
     {"shard \"model-00003-of-00003.safetensors\"", "listed for \"x.weight\"",
      "No such file or directory"}},
    {"tensor the shard lacks",
     "{\"weight_map\": {\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\",\n"
     " \"model.layers.0.mlp.up_proj.weight\": \"model-00001-of-00002.safetensors\",\n"
     " \"model.layers.7.missing\": \"model-00001-of-00002.safetensors\"}}",
     PIO_ERR_FORMAT,
     {"tensor \"model.layers.7.missing\"", "shard \"model-00001-of-00002.safetensors\"",
      "does not hold it"}},
    {"tensor in the other shard",
     "{\"weight_map\": {\"lm_head.weight\": \"model-00001-of-00002.safetensors\",\n"
     " \"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\",\n"
     " \"model.layers.0.mlp.up_proj.weight\": \"model-00001-of-00002.safetensors\",\n"
     " \"model.layers.1.mlp.up_proj.weight\": \"model-00002-of-00002.safetensors\",\n"
     " \"model.norm.weight\": \"model-00002-of-00002.safetensors\"}}",
     PIO_ERR_FORMAT,
     {"tensor \"lm_head.weight\"", "but it is in \"model-00002-of-00002.safetensors\"",
      "file offset"}},
    {"stored tensor missing from the index",
     "{\"weight_map\": {\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\"}}",
     PIO_ERR_FORMAT,
     {"tensor \"model.layers.0.mlp.up_proj.weight\"", "is not listed in the index",
      "file offset"}},
    {"shard path leaving the folder",
     "{\"weight_map\": {\"a\": \"../model-00001-of-00002.safetensors\"}}", PIO_ERR_FORMAT,
     {"weight_map \"a\"", "shard file name"}},
    {"shard name not a string", "{\"weight_map\": {\"a\": 1}}", PIO_ERR_FORMAT,
     {"weight_map \"a\""}},
    {"no weight_map", "{\"metadata\": {}}", PIO_ERR_FORMAT, {"\"weight_map\" must be an object"}},
    {"index not valid JSON", "{\"weight_map\": {\n  \"a\": \"b\",\n}}", PIO_ERR_FORMAT,
     {"line 3, column"}},
    {"duplicate key in the index",
     "{\"weight_map\": {\"a\": \"x.safetensors\", \"a\": \"y.safetensors\"}}", PIO_ERR_FORMAT,
     {"duplicate"}},
};

static void test_index_errors(void **state)
{
    scratch *s = *state;
    write_two_shards(s);
    const char *index_path = scratch_path(s, "model.safetensors.index.json");
    for (size_t i = 0; i < sizeof index_cases / sizeof index_cases[0]; i++) {
        const index_case *c = &index_cases[i];
        write_text(index_path, c->index);
        pio_safetensors *st = (pio_safetensors *)1;
        pio_error err = {0};
        pio_status status = pio_safetensors_open(s->dir, &st, &err);
        if (status != c->status)
            fail_msg("%s: status %d (%s), expected %d", c->label, status, err.message, c->status);
        assert_null(st);
        assert_contains(err.message, "model.safetensors.index.json");
        for (size_t k = 0; k < 3 && c->needles[k] != NULL; k++)
            assert_contains(err.message, c->needles[k]);
    }
}

static void test_tensor_stored_in_two_shards(void **state)
{
    scratch *s = *state;
    static const char *const one[] = {"shared.weight", "a.weight"};
    static const char *const two[] = {"shared.weight", "b.weight"};
    write_shard(s, "s1.safetensors", one, 2, 1);
    write_shard(s, "s2.safetensors", two, 2, 2);
    write_text(scratch_path(s, "model.safetensors.index.json"),
               "{\"weight_map\": {\"shared.weight\": \"s1.safetensors\", \"a.weight\": "
               "\"s1.safetensors\", \"b.weight\": \"s2.safetensors\"}}");
    pio_safetensors *st;
    pio_error err = {0};
    assert_int_equal(pio_safetensors_open(s->dir, &st, &err), PIO_ERR_FORMAT);
    assert_contains(err.message, "tensor \"shared.weight\" is stored twice");
    assert_contains(err.message, "s1.safetensors");
    assert_contains(err.message, "s2.safetensors");
}

static void test_corrupt_shard_is_named(void **state)
{
    scratch *s = *state;
    write_two_shards(s);
    write_text(scratch_path(s, "model.safetensors.index.json"), GOOD_INDEX);
    const char *shard = scratch_path(s, "model-00002-of-00002.safetensors");
    size_t size;
    uint8_t *bytes = read_bytes(shard, &size);
    write_bytes(shard, bytes, size - 1); /* drop the last data byte */
    free(bytes);
    pio_safetensors *st;
    pio_error err = {0};
    assert_int_equal(pio_safetensors_open(s->dir, &st, &err), PIO_ERR_FORMAT);
    assert_contains(err.message, shard);
    assert_contains(err.message, "\"lm_head.weight\"");
    assert_contains(err.message, "reach past the end of the data section");
}

static void test_folder_with_single_file(void **state)
{
    scratch *s = *state;
    static const char *const names[] = {"w"};
    write_shard(s, "model.safetensors", names, 1, 3);
    pio_safetensors *st;
    pio_error err = {0};
    assert_int_equal(pio_safetensors_open(s->dir, &st, &err), PIO_OK);
    assert_int_equal(pio_safetensors_count(st), 1);
    assert_string_equal(pio_safetensors_file(st, 0)->path, scratch_path(s, "model.safetensors"));
    pio_safetensors_close(st);
}

static void test_missing_paths(void **state)
{
    scratch *s = *state;
    pio_safetensors *st = (pio_safetensors *)1;
    pio_error err = {0};
    assert_int_equal(pio_safetensors_open(s->dir, &st, &err), PIO_ERR_NOT_FOUND);
    assert_null(st);
    assert_contains(err.message, s->dir);
    assert_contains(err.message, "neither model.safetensors nor model.safetensors.index.json");

    const char *missing = scratch_path(s, "nope.safetensors");
    assert_int_equal(pio_safetensors_open(missing, &st, &err), PIO_ERR_NOT_FOUND);
    assert_contains(err.message, missing);

    write_text(scratch_path(s, "model.safetensors.index.json"), "{\"weight_map\": {}}");
    assert_int_equal(pio_safetensors_open(s->dir, &st, &err), PIO_OK); /* empty index: no tensors */
    assert_int_equal(pio_safetensors_count(st), 0);
    pio_safetensors_close(st);

    assert_int_equal(pio_safetensors_open(NULL, &st, &err), PIO_ERR_INVALID_ARGUMENT);
    assert_int_equal(pio_safetensors_open(s->dir, NULL, &err), PIO_ERR_INVALID_ARGUMENT);
    pio_safetensors_close(NULL);
}

static void test_real_qwen3_index_reports_missing_shard(void **state)
{
    (void)state;
    const char *folder = PIO_TEST_SHARED_DIR "/models/qwen3_4b_instruct_2507";
    pio_safetensors *st = (pio_safetensors *)1;
    pio_error err = {0};
    /* the shared folder holds the index but not the 8 GB of shards */
    assert_int_equal(pio_safetensors_open(folder, &st, &err), PIO_ERR_NOT_FOUND);
    assert_null(st);
    assert_contains(err.message, "model.safetensors.index.json");
    assert_contains(err.message, "shard \"model-00001-of-00003.safetensors\"");
    assert_contains(err.message, "listed for \"model.embed_tokens.weight\" and 173 more tensors");
    assert_contains(err.message, "No such file or directory");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip_all_dtypes, setup_scratch,
                                        teardown_scratch),
        cmocka_unit_test_setup_teardown(test_header_is_padded_with_spaces, setup_scratch,
                                        teardown_scratch),
        cmocka_unit_test_setup_teardown(test_metadata_scalar_and_empty_tensors, setup_scratch,
                                        teardown_scratch),
        cmocka_unit_test_setup_teardown(test_empty_file_is_valid, setup_scratch, teardown_scratch),
        cmocka_unit_test_setup_teardown(test_checked_lookup, setup_scratch, teardown_scratch),
        cmocka_unit_test_setup_teardown(test_twenty_thousand_tensors_lookup, setup_scratch,
                                        teardown_scratch),
        cmocka_unit_test_setup_teardown(test_open_memory_matches_file, setup_scratch,
                                        teardown_scratch),
        cmocka_unit_test_setup_teardown(test_writer_rejects_bad_input, setup_scratch,
                                        teardown_scratch),
        cmocka_unit_test_setup_teardown(test_failed_write_keeps_previous_file, setup_scratch,
                                        teardown_scratch),
        cmocka_unit_test_setup_teardown(test_corrupt_files, setup_scratch, teardown_scratch),
        cmocka_unit_test_setup_teardown(test_mutations_never_crash, setup_scratch,
                                        teardown_scratch),
        cmocka_unit_test_setup_teardown(test_sharded_checkpoint, setup_scratch, teardown_scratch),
        cmocka_unit_test_setup_teardown(test_index_errors, setup_scratch, teardown_scratch),
        cmocka_unit_test_setup_teardown(test_tensor_stored_in_two_shards, setup_scratch,
                                        teardown_scratch),
        cmocka_unit_test_setup_teardown(test_corrupt_shard_is_named, setup_scratch,
                                        teardown_scratch),
        cmocka_unit_test_setup_teardown(test_folder_with_single_file, setup_scratch,
                                        teardown_scratch),
        cmocka_unit_test_setup_teardown(test_missing_paths, setup_scratch, teardown_scratch),
        cmocka_unit_test(test_real_qwen3_index_reports_missing_shard),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
