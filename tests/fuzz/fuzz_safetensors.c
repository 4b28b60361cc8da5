/*
 * libFuzzer target for the safetensors header parser and validator.
 *
 *   clang -std=c11 -D_GNU_SOURCE -Isdk/include -I. -g -O1 -fsanitize=fuzzer,address,undefined \
 *     tests/fuzz/fuzz_safetensors.c sdk/src/safetensors.c sdk/src/json_util.c sdk/src/error.c \
 *     sdk/src/dtype.c -ljansson -lm -o build/fuzz_safetensors
 *   build/fuzz_safetensors -max_total_time=60 -max_len=4096 CORPUS_DIR
 *
 * Each input is a whole file. Whatever it holds, opening must either fail with an error message or
 * succeed with tensors that all lie inside the input and can be found by name.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pio/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint8_t touched;

static void check_tensor(const pio_safetensors *st, const pio_safetensors_tensor *t,
                         const uint8_t *data, size_t size)
{
    const uint8_t *begin = t->data;
    if (begin < data || t->file_offset > size || t->n_bytes > size - t->file_offset ||
        begin != data + t->file_offset)
        abort();
    if (t->n_bytes > 0) /* touch the first and last byte so ASan sees any stray range */
        touched = begin[0] ^ begin[t->n_bytes - 1];
    if (pio_safetensors_find(st, t->name) != t)
        abort();
    const pio_safetensors_tensor *same = NULL;
    if (pio_safetensors_get(st, t->name, t->dtype, t->n_dims, t->shape, &same, NULL) != PIO_OK ||
        same != t)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pio_safetensors *st = NULL;
    pio_error err = {0};
    if (pio_safetensors_open_memory(data, size, "fuzz", &st, &err) != PIO_OK) {
        if (st != NULL || err.message[0] == '\0' || !PIO_IS_ERROR(err.status))
            abort();
        return 0;
    }
    uint64_t covered = 0;
    for (size_t i = 0; i < pio_safetensors_count(st); i++) {
        const pio_safetensors_tensor *t = pio_safetensors_at(st, i);
        check_tensor(st, t, data, size);
        covered += t->n_bytes;
    }
    const pio_safetensors_file_info *file = pio_safetensors_file(st, 0);
    if (file == NULL || covered != size - file->data_offset)
        abort();
    for (size_t i = 0; i < file->n_metadata; i++)
        if (pio_safetensors_metadata(st, 0, file->metadata[i].key) == NULL)
            abort();
    pio_safetensors_close(st);
    return 0;
}
