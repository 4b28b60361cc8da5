/*
 * Lookup tables of the tokenizer: id -> string, string -> id, and the BPE merge table.
 */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

/* Power of two with at least twice the expected entries (load factor <= 1/2). */
static size_t table_size_for(size_t expected)
{
    size_t size = 16;
    while (size < expected * 2 && size < ((size_t)1 << 40))
        size *= 2;
    return size;
}

uint64_t tok_hash_bytes(const void *data, size_t len)
{
    /* 8 bytes at a time, multiply-xorshift mixing; quality is ample for hash tables. */
    const uint8_t *p = data;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (len * 0xC2B2AE3D27D4EB4Full);
    while (len >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        h = (h ^ word) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
        p += 8;
        len -= 8;
    }
    uint64_t tail = 0;
    memcpy(&tail, p, len);
    h = (h ^ tail) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 29;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
    return h;
}

/* ------------------------------------------------------------------------------------------ */
/* id -> string                                                                               */
/* ------------------------------------------------------------------------------------------ */

bool tok_strings_init(tok_string_table *t, size_t count)
{
    memset(t, 0, sizeof *t);
    t->offset = malloc((count ? count : 1) * sizeof *t->offset);
    t->length = calloc(count ? count : 1, sizeof *t->length);
    if (t->offset == NULL || t->length == NULL) {
        tok_strings_free(t);
        return false;
    }
    memset(t->offset, 0xFF, (count ? count : 1) * sizeof *t->offset);
    t->count = count;
    return true;
}

/* Each string is stored with a NUL after it so that it can be handed out as a C string. */
bool tok_strings_set(tok_string_table *t, uint32_t id, const void *data, size_t len)
{
    if (id >= t->count || len >= UINT32_MAX || t->arena.len > UINT32_MAX - len - 1)
        return false;
    uint32_t offset = (uint32_t)t->arena.len;
    if (!tok_bytes_append(&t->arena, data, len) || !tok_bytes_append(&t->arena, "", 1))
        return false;
    t->offset[id] = offset;
    t->length[id] = (uint32_t)len;
    return true;
}

const uint8_t *tok_strings_get(const tok_string_table *t, int32_t id, size_t *len)
{
    if (id < 0 || (size_t)id >= t->count || t->offset[id] == UINT32_MAX)
        return NULL;
    if (len != NULL)
        *len = t->length[id];
    return t->arena.data + t->offset[id];
}

void tok_strings_free(tok_string_table *t)
{
    tok_bytes_free(&t->arena);
    free(t->offset);
    free(t->length);
    t->offset = NULL;
    t->length = NULL;
    t->count = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* string -> id                                                                               */
/* ------------------------------------------------------------------------------------------ */

bool tok_id_map_init(tok_id_map *m, size_t expected)
{
    size_t size = table_size_for(expected);
    m->slots = calloc(size, sizeof *m->slots);
    m->mask = size - 1;
    return m->slots != NULL;
}

static bool string_equals(const tok_string_table *strings, uint32_t id, const void *key,
                          size_t len)
{
    size_t stored_len;
    const uint8_t *stored = tok_strings_get(strings, (int32_t)id, &stored_len);
    return stored != NULL && stored_len == len && memcmp(stored, key, len) == 0;
}

bool tok_id_map_insert(tok_id_map *m, const tok_string_table *strings, uint32_t id)
{
    size_t len;
    const uint8_t *key = tok_strings_get(strings, (int32_t)id, &len);
    if (key == NULL)
        return false;
    for (size_t slot = tok_hash_bytes(key, len) & m->mask, probes = 0; probes <= m->mask;
         slot = (slot + 1) & m->mask, probes++) {
        if (m->slots[slot] == 0 || m->slots[slot] - 1 == id) {
            m->slots[slot] = id + 1;
            return true;
        }
    }
    return false;
}

int32_t tok_id_map_find(const tok_id_map *m, const tok_string_table *strings, const void *key,
                        size_t len)
{
    for (size_t slot = tok_hash_bytes(key, len) & m->mask;; slot = (slot + 1) & m->mask) {
        uint32_t entry = m->slots[slot];
        if (entry == 0)
            return -1;
        if (string_equals(strings, entry - 1, key, len))
            return (int32_t)(entry - 1);
    }
}

void tok_id_map_free(tok_id_map *m)
{
    free(m->slots);
    m->slots = NULL;
    m->mask = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* merges                                                                                     */
/* ------------------------------------------------------------------------------------------ */

bool tok_merge_map_init(tok_merge_map *m, size_t expected)
{
    size_t size = table_size_for(expected);
    m->slots = malloc(size * sizeof *m->slots);
    m->mask = size - 1;
    m->count = 0;
    if (m->slots == NULL)
        return false;
    for (size_t i = 0; i < size; i++)
        m->slots[i].key = TOK_MERGE_EMPTY;
    return true;
}

void tok_merge_map_put(tok_merge_map *m, int32_t left, int32_t right, tok_merge value)
{
    uint64_t key = tok_merge_key(left, right);
    size_t i = tok_merge_slot_of(key, m->mask);
    while (m->slots[i].key != TOK_MERGE_EMPTY && m->slots[i].key != key)
        i = (i + 1) & m->mask;
    if (m->slots[i].key == TOK_MERGE_EMPTY)
        m->count++;
    m->slots[i].key = key;
    m->slots[i].value = value;
}

void tok_merge_map_free(tok_merge_map *m)
{
    free(m->slots);
    m->slots = NULL;
    m->mask = 0;
    m->count = 0;
}
