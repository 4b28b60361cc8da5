/*
 * Byte-level BPE on one pre-tokenized piece, and the cache of short pieces.
 *
 * The merge loop is Hugging Face's: repeatedly merge the adjacent pair with the lowest merge
 * rank, the leftmost one on ties. Pairs wait in a binary min-heap keyed by (rank, position of
 * the left symbol); symbols form a doubly linked list. A heap entry made stale by an earlier
 * merge is recognised when popped (its symbols no longer form a pair of that rank) and dropped.
 * Each merge pushes at most two entries, so a piece of n bytes costs O(n log n).
 */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Heap of (rank << 32 | position)                                                            */
/* ------------------------------------------------------------------------------------------ */

/* A 4-ary min-heap: half the depth of a binary one, and the four children of a node share a
 * cache line, which matters for pieces of millions of bytes. */
#define HEAP_ARITY 4

static void sift_down(uint64_t *heap, size_t n, size_t i)
{
    uint64_t item = heap[i];
    for (;;) {
        size_t first = HEAP_ARITY * i + 1;
        if (first >= n)
            break;
        size_t last = first + HEAP_ARITY < n ? first + HEAP_ARITY : n;
        size_t smallest = first;
        for (size_t child = first + 1; child < last; child++)
            if (heap[child] < heap[smallest])
                smallest = child;
        if (heap[smallest] >= item)
            break;
        heap[i] = heap[smallest];
        i = smallest;
    }
    heap[i] = item;
}

static void heap_push(uint64_t *heap, size_t *n, uint64_t item)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / HEAP_ARITY;
        if (heap[parent] <= item)
            break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = item;
}

static uint64_t heap_pop(uint64_t *heap, size_t *n)
{
    uint64_t top = heap[0];
    heap[0] = heap[--*n];
    if (*n > 0)
        sift_down(heap, *n, 0);
    return top;
}

static uint64_t heap_item(uint32_t rank, int32_t position)
{
    return ((uint64_t)rank << 32) | (uint32_t)position;
}

/* ------------------------------------------------------------------------------------------ */
/* Workspace                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static bool reserve_workspace(tok_bpe_workspace *w, size_t n)
{
    if (n <= w->capacity)
        return true;
    size_t cap = w->capacity ? w->capacity : 256;
    while (cap < n)
        cap *= 2;
    tok_symbol *symbols = realloc(w->symbols, cap * sizeof *symbols);
    if (symbols != NULL)
        w->symbols = symbols;
    /* The heap starts with at most n - 1 pairs; each merge pops one entry and pushes at most
     * two, and there are at most n - 1 merges, so it never holds more than 2n entries. */
    uint64_t *heap = realloc(w->heap, 2 * cap * sizeof *heap);
    if (heap != NULL)
        w->heap = heap;
    if (symbols == NULL || heap == NULL)
        return false;
    w->capacity = cap;
    return true;
}

void tok_bpe_workspace_free(tok_bpe_workspace *w)
{
    free(w->symbols);
    free(w->heap);
    tok_bytes_free(&w->word);
    memset(w, 0, sizeof *w);
}

/* ------------------------------------------------------------------------------------------ */
/* Merging                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static void push_pair(const tok_merge_map *merges, tok_bpe_workspace *w, size_t *heap_len,
                      int32_t left)
{
    if (left < 0 || w->symbols[left].next < 0)
        return;
    const tok_merge *merge = tok_merge_map_find(merges, w->symbols[left].id,
                                                w->symbols[w->symbols[left].next].id);
    if (merge != NULL)
        heap_push(w->heap, heap_len, heap_item(merge->rank, left));
}

/* Merges the symbols of one piece in place; the result is the list starting at symbol 0. */
static void merge_symbols(const tok_merge_map *merges, tok_bpe_workspace *w, size_t n)
{
    tok_symbol *sym = w->symbols;
    size_t heap_len = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        const tok_merge *merge = tok_merge_map_find(merges, sym[i].id, sym[i + 1].id);
        if (merge != NULL)
            w->heap[heap_len++] = heap_item(merge->rank, (int32_t)i);
    }
    for (size_t i = heap_len / HEAP_ARITY + 1; i-- > 0;)
        if (i < heap_len)
            sift_down(w->heap, heap_len, i);

    while (heap_len > 0) {
        uint64_t top = heap_pop(w->heap, &heap_len);
        int32_t left = (int32_t)(uint32_t)top;
        int32_t right = sym[left].next;
        if (sym[left].id < 0 || right < 0)
            continue;
        const tok_merge *merge = tok_merge_map_find(merges, sym[left].id, sym[right].id);
        if (merge == NULL || merge->rank != (uint32_t)(top >> 32))
            continue; /* stale: one of the two symbols changed since this entry was pushed */
        sym[left].id = merge->merged;
        sym[right].id = -1;
        sym[left].next = sym[right].next;
        if (sym[left].next >= 0)
            sym[sym[left].next].prev = left;
        push_pair(merges, w, &heap_len, sym[left].prev);
        push_pair(merges, w, &heap_len, left);
    }
}

/* With ignore_merges, a piece that is itself a vocabulary entry is taken whole. */
static int32_t whole_piece_id(const pio_tokenizer *t, tok_bpe_workspace *w, const uint8_t *piece,
                              size_t len)
{
    w->word.len = 0;
    if (!tok_bytes_reserve(&w->word, 2 * len))
        return -1;
    for (size_t i = 0; i < len; i++) {
        uint32_t cp = tok_byte_to_code_point(piece[i]);
        w->word.len += tok_utf8_encode(cp, w->word.data + w->word.len);
    }
    int32_t id = tok_id_map_find(&t->text_to_id, &t->token_text, w->word.data, w->word.len);
    return id >= 0 && (t->id_kind[id] & TOK_ID_VOCAB) ? id : -1;
}

static pio_status bpe_uncached(const pio_tokenizer *t, tok_bpe_workspace *w, const uint8_t *piece,
                               size_t len, pio_token_ids *out)
{
    if (len > (size_t)INT32_MAX || !reserve_workspace(w, len))
        return PIO_ERR_OUT_OF_MEMORY;
    if (t->ignore_merges) {
        int32_t id = whole_piece_id(t, w, piece, len);
        if (id >= 0)
            return tok_ids_push(out, id) ? PIO_OK : PIO_ERR_OUT_OF_MEMORY;
    }
    for (size_t i = 0; i < len; i++)
        w->symbols[i] = (tok_symbol){.id = t->byte_ids[piece[i]], .prev = (int32_t)i - 1,
                                     .next = i + 1 < len ? (int32_t)i + 1 : -1};
    merge_symbols(&t->merges, w, len);
    for (int32_t i = 0; i >= 0; i = w->symbols[i].next)
        if (!tok_ids_push(out, w->symbols[i].id))
            return PIO_ERR_OUT_OF_MEMORY;
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Cache                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static tok_cache_entry *cache_slot(tok_piece_cache *cache, uint64_t hash)
{
    return &cache->entries[(hash >> 17) & (TOK_CACHE_SLOTS - 1)];
}

static bool cache_lookup(tok_piece_cache *cache, uint64_t hash, const uint8_t *piece, size_t len,
                         pio_token_ids *out)
{
    const tok_cache_entry *e = cache_slot(cache, hash);
    if (e->key_len != len || e->hash != (uint32_t)hash || memcmp(e->key, piece, len) != 0)
        return false;
    for (size_t i = 0; i < e->n_ids; i++)
        if (!tok_ids_push(out, e->ids[i]))
            return false;
    return true;
}

static void cache_store(tok_piece_cache *cache, uint64_t hash, const uint8_t *piece, size_t len,
                        const int32_t *ids, size_t n_ids)
{
    if (n_ids > TOK_CACHE_IDS_MAX)
        return;
    tok_cache_entry *e = cache_slot(cache, hash);
    e->hash = (uint32_t)hash;
    e->key_len = (uint8_t)len;
    e->n_ids = (uint8_t)n_ids;
    memcpy(e->key, piece, len);
    memcpy(e->ids, ids, n_ids * sizeof *ids);
}

pio_status tok_bpe_encode_piece(const pio_tokenizer *t, tok_piece_cache *cache,
                                tok_bpe_workspace *w, const uint8_t *piece, size_t len,
                                pio_token_ids *out)
{
    if (len == 1)
        return tok_ids_push(out, t->byte_ids[piece[0]]) ? PIO_OK : PIO_ERR_OUT_OF_MEMORY;
    bool cacheable = cache != NULL && len <= TOK_CACHE_KEY_MAX;
    uint64_t hash = 0;
    if (cacheable) {
        hash = tok_hash_bytes(piece, len);
        size_t before = out->count;
        if (cache_lookup(cache, hash, piece, len, out))
            return PIO_OK;
        if (out->count != before)
            return PIO_ERR_OUT_OF_MEMORY;
    }
    size_t first = out->count;
    pio_status status = bpe_uncached(t, w, piece, len, out);
    if (status == PIO_OK && cacheable)
        cache_store(cache, hash, piece, len, out->ids + first, out->count - first);
    return status;
}
