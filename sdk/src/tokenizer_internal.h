/*
 * Internal pieces of the tokenizer (sdk/src/tokenizer_*.c). Not installed; plugins use
 * pio/tokenizer.h only.
 */
#ifndef PIO_TOKENIZER_INTERNAL_H
#define PIO_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pio/tokenizer.h"

/* Ids are kept below this bound so that per-id tables stay small even for a hostile file. */
#define TOK_MAX_ID_COUNT (1u << 22)

/* ------------------------------------------------------------------------------------------ */
/* Growable byte and code point buffers                                                       */
/* ------------------------------------------------------------------------------------------ */

typedef struct tok_bytes {
    uint8_t *data;
    size_t len;
    size_t cap;
} tok_bytes;

typedef struct tok_u32s {
    uint32_t *data;
    size_t len;
    size_t cap;
} tok_u32s;

bool tok_bytes_reserve(tok_bytes *b, size_t extra);
bool tok_bytes_append(tok_bytes *b, const void *data, size_t n);
void tok_bytes_free(tok_bytes *b);
bool tok_u32s_reserve(tok_u32s *v, size_t extra);
void tok_u32s_free(tok_u32s *v);

/* Appends id to ids, growing it. */
bool tok_ids_push(pio_token_ids *ids, int32_t id);

/* ------------------------------------------------------------------------------------------ */
/* Unicode helpers (tokenizer_unicode.c)                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Result of looking at the UTF-8 sequence that starts at s[0] (n > 0 bytes available). */
typedef enum tok_utf8_kind {
    TOK_UTF8_VALID,      /* a well-formed sequence of `length` bytes           */
    TOK_UTF8_INVALID,    /* an ill-formed maximal subpart of `length` bytes    */
    TOK_UTF8_INCOMPLETE  /* the `length` bytes left are a prefix of a sequence */
} tok_utf8_kind;

tok_utf8_kind tok_utf8_classify(const uint8_t *s, size_t n, size_t *length);

/* Offset of the first ill-formed or truncated sequence in s[0, n), or n when all is valid. */
size_t tok_utf8_first_invalid(const uint8_t *s, size_t n);

/* Appends s[0, n) to out with each ill-formed subpart replaced by U+FFFD. With final false an
 * incomplete sequence at the very end is not written; its length is returned (0..3) so the
 * caller can keep it. With final true it becomes U+FFFD and 0 is returned. Returns -1 when out
 * cannot grow. */
int tok_utf8_append_lossy(const uint8_t *s, size_t n, bool final, tok_bytes *out);

/* Decodes the well-formed sequence at s (the caller has validated it); sets *length. */
uint32_t tok_utf8_decode(const uint8_t *s, size_t *length);

/* Writes code point cp as UTF-8 into out[0..3]; returns the byte count. */
size_t tok_utf8_encode(uint32_t cp, uint8_t *out);

/* Unicode White_Space (what Oniguruma's and Rust regex's \s match). */
bool tok_is_white_space(uint32_t cp);

/* Rust regex's \w, approximated by categories: L*, M*, Nd, Nl, Pc and the two joiners. */
bool tok_is_word_char(uint32_t cp);

/* NFC of s[0, n) (valid UTF-8). When nothing can change, *out = s and nothing is written;
 * otherwise the result is built in scratch (cleared first) and *out points into it. Linear in
 * n: long runs of combining marks are sorted with a counting sort. Returns false on OOM. */
bool tok_nfc(const uint8_t *s, size_t n, tok_bytes *scratch, tok_u32s *code_points,
             const uint8_t **out, size_t *out_len);

/* The GPT-2 byte-level alphabet: byte -> code point and code point -> byte (-1 if none). */
uint32_t tok_byte_to_code_point(uint8_t byte);
int tok_code_point_to_byte(uint32_t cp);

/* ------------------------------------------------------------------------------------------ */
/* Tables (tokenizer_tables.c)                                                                */
/* ------------------------------------------------------------------------------------------ */

/* Strings stored back to back, addressed by id. */
typedef struct tok_string_table {
    tok_bytes arena;
    uint32_t *offset; /* per id; UINT32_MAX when the id has no string */
    uint32_t *length;
    size_t count;     /* number of ids */
} tok_string_table;

bool tok_strings_init(tok_string_table *t, size_t count);
bool tok_strings_set(tok_string_table *t, uint32_t id, const void *data, size_t len);
const uint8_t *tok_strings_get(const tok_string_table *t, int32_t id, size_t *len);
void tok_strings_free(tok_string_table *t);

/* String -> id over the strings of a tok_string_table (open addressing). */
typedef struct tok_id_map {
    uint32_t *slots; /* id + 1; 0 = empty */
    size_t mask;
} tok_id_map;

bool tok_id_map_init(tok_id_map *m, size_t expected);
/* Inserts id (whose string is in strings). Returns false when full (never, if sized right). */
bool tok_id_map_insert(tok_id_map *m, const tok_string_table *strings, uint32_t id);
int32_t tok_id_map_find(const tok_id_map *m, const tok_string_table *strings, const void *key,
                        size_t len);
void tok_id_map_free(tok_id_map *m);

uint64_t tok_hash_bytes(const void *data, size_t len);

/* (left id, right id) -> (rank, merged id). Key and value share a slot so that a lookup
 * touches one cache line. */
typedef struct tok_merge {
    uint32_t rank;
    int32_t merged;
} tok_merge;

typedef struct tok_merge_slot {
    uint64_t key; /* left << 32 | right; TOK_MERGE_EMPTY = empty */
    tok_merge value;
} tok_merge_slot;

typedef struct tok_merge_map {
    tok_merge_slot *slots;
    size_t mask;
    size_t count;
} tok_merge_map;

#define TOK_MERGE_EMPTY UINT64_MAX

bool tok_merge_map_init(tok_merge_map *m, size_t expected);
/* Inserts or overwrites (a later duplicate pair wins, as in Hugging Face). */
void tok_merge_map_put(tok_merge_map *m, int32_t left, int32_t right, tok_merge value);
void tok_merge_map_free(tok_merge_map *m);

static inline uint64_t tok_merge_key(int32_t left, int32_t right)
{
    return ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
}

static inline size_t tok_merge_slot_of(uint64_t key, size_t mask)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

static inline const tok_merge *tok_merge_map_find(const tok_merge_map *m, int32_t left,
                                                  int32_t right)
{
    uint64_t key = tok_merge_key(left, right);
    for (size_t i = tok_merge_slot_of(key, m->mask);; i = (i + 1) & m->mask) {
        const tok_merge_slot *slot = &m->slots[i];
        if (slot->key == key)
            return &slot->value;
        if (slot->key == TOK_MERGE_EMPTY)
            return NULL;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Added tokens (tokenizer_added.c)                                                           */
/* ------------------------------------------------------------------------------------------ */

typedef struct tok_added_token {
    int32_t id;
    bool single_word;
    bool lstrip;
    bool rstrip;
    bool special;
} tok_added_token;

/* A byte trie over the contents of one group of added tokens. */
typedef struct tok_added_matcher {
    tok_added_token *tokens;
    size_t n_tokens;
    uint64_t *edge_keys;    /* node << 8 | byte; UINT64_MAX = empty */
    uint32_t *edge_child;
    size_t edge_mask;
    size_t n_edges;
    int32_t *node_token;    /* index into tokens, or -1 */
    size_t n_nodes;
    size_t nodes_cap;
    bool first_byte[256];   /* bytes some token starts with */
} tok_added_matcher;

bool tok_added_add(tok_added_matcher *m, const uint8_t *content, size_t len,
                   tok_added_token token);
void tok_added_free(tok_added_matcher *m);

/* One piece of a text split around added tokens. */
typedef struct tok_added_split {
    size_t start;
    size_t end;
    int32_t id; /* the added token's id, or -1 for ordinary text */
} tok_added_split;

/* Calls emit for each piece of s[0, n) in order: ordinary text and added-token matches, with
 * Hugging Face's rules (leftmost-longest, single_word, lstrip, rstrip). With skip_special,
 * special tokens are not matched. Stops at the first non-OK status emit returns. */
typedef pio_status (*tok_split_fn)(void *context, const uint8_t *s, tok_added_split piece);
pio_status tok_added_split_text(const tok_added_matcher *m, const uint8_t *s, size_t n,
                                bool skip_special, tok_split_fn emit, void *context);

/* ------------------------------------------------------------------------------------------ */
/* Pre-tokenizer regex (tokenizer_regex.c)                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct tok_regex {
    pcre2_code *code;
    bool jit;
} tok_regex;

/* Compiles a pattern from tokenizer.json (Oniguruma dialect; literal when is_literal). On failure
 * writes a reason into why. */
bool tok_regex_compile(tok_regex *re, const char *pattern, size_t len, bool is_literal,
                       char *why, size_t why_size);
void tok_regex_free(tok_regex *re);

/* Per-call matching state (match data and, when needed, a larger JIT stack). */
typedef struct tok_regex_matcher {
    const tok_regex *re;
    pcre2_match_data *match;
    pcre2_match_context *context;
    pcre2_jit_stack *stack;
} tok_regex_matcher;

bool tok_regex_matcher_init(tok_regex_matcher *m, const tok_regex *re);
void tok_regex_matcher_free(tok_regex_matcher *m);

/* Splits s[0, n) the way Hugging Face's Split(behavior Isolated) does with an Oniguruma
 * find_iter: every match and every gap between matches is a piece; empty pieces are dropped. */
typedef pio_status (*tok_piece_fn)(void *context, const uint8_t *piece, size_t len);
pio_status tok_regex_split(tok_regex_matcher *m, const uint8_t *s, size_t n, tok_piece_fn emit,
                           void *context, pio_error *err);

/* ------------------------------------------------------------------------------------------ */
/* BPE (tokenizer_bpe.c)                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* Direct-mapped cache of short pieces -> ids. One entry is two 64-byte lines. */
#define TOK_CACHE_KEY_MAX 58
#define TOK_CACHE_IDS_MAX 16
#define TOK_CACHE_SLOTS 32768u

typedef struct tok_cache_entry {
    uint32_t hash;
    uint8_t key_len; /* 0 = empty */
    uint8_t n_ids;
    char key[TOK_CACHE_KEY_MAX];
    int32_t ids[TOK_CACHE_IDS_MAX];
} tok_cache_entry;

typedef struct tok_piece_cache {
    pthread_mutex_t lock;
    tok_cache_entry *entries;
} tok_piece_cache;

/* One symbol of a piece being merged, in a doubly linked list. */
typedef struct tok_symbol {
    int32_t id;   /* token id; -1 once merged into its left neighbour */
    int32_t prev; /* -1 at the ends */
    int32_t next;
} tok_symbol;

/* Scratch arrays for merging one piece; grown as needed, reused across pieces. */
typedef struct tok_bpe_workspace {
    tok_symbol *symbols;
    uint64_t *heap;   /* rank << 32 | position of the pair's left symbol */
    size_t capacity;  /* symbols */
    tok_bytes word;   /* the piece in the byte-level alphabet (for ignore_merges) */
} tok_bpe_workspace;

void tok_bpe_workspace_free(tok_bpe_workspace *w);

/* Appends the ids of one pre-tokenized piece (raw bytes) to out. cache may be NULL. */
pio_status tok_bpe_encode_piece(const pio_tokenizer *t, tok_piece_cache *cache,
                                tok_bpe_workspace *w, const uint8_t *piece, size_t len,
                                pio_token_ids *out);

/* ------------------------------------------------------------------------------------------ */
/* The tokenizer                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* Bits of pio_tokenizer.id_kind. An id may be both a vocab entry and an added token (same
 * content), as Hugging Face allows. */
enum tok_id_kind {
    TOK_ID_VOCAB = 1u << 0,   /* in model.vocab: BPE may produce it */
    TOK_ID_ADDED = 1u << 1,   /* in added_tokens: decodes to its content as is */
    TOK_ID_SPECIAL = 1u << 2  /* an added token marked special */
};

struct pio_tokenizer {
    size_t id_count;               /* largest id + 1 */
    uint8_t *id_kind;              /* enum tok_id_kind bits per id; 0 = no token */
    tok_string_table token_text;   /* id -> token as written in the file */
    tok_string_table token_bytes;  /* id -> bytes it decodes to */
    tok_id_map text_to_id;         /* token text -> id */
    int32_t byte_ids[256];         /* id of the single byte-level character of each byte */
    tok_merge_map merges;
    bool ignore_merges;
    bool normalize_nfc;
    tok_added_matcher raw_added;        /* added tokens matched on the raw text */
    tok_added_matcher normalized_added; /* added tokens matched after normalization */
    tok_regex split;
    int32_t *prefix_ids;           /* post-processor template around the text */
    size_t n_prefix;
    int32_t *suffix_ids;
    size_t n_suffix;
    tok_piece_cache cache;
};

#endif
