/*
 * Added tokens: a byte trie over their contents and the split of a text around them, with the
 * rules of Hugging Face's AddedVocabulary (leftmost match, longest at that position; then
 * single_word, lstrip and rstrip).
 */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

#define EDGE_EMPTY UINT64_MAX

static uint64_t edge_key(uint32_t node, uint8_t byte)
{
    return ((uint64_t)node << 8) | byte;
}

static size_t edge_slot(uint64_t key, size_t mask)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

static int64_t find_child(const tok_added_matcher *m, uint32_t node, uint8_t byte)
{
    if (m->edge_keys == NULL)
        return -1;
    uint64_t key = edge_key(node, byte);
    for (size_t slot = edge_slot(key, m->edge_mask);; slot = (slot + 1) & m->edge_mask) {
        if (m->edge_keys[slot] == key)
            return m->edge_child[slot];
        if (m->edge_keys[slot] == EDGE_EMPTY)
            return -1;
    }
}

static void put_edge(uint64_t *keys, uint32_t *children, size_t mask, uint64_t key,
                     uint32_t child)
{
    size_t slot = edge_slot(key, mask);
    while (keys[slot] != EDGE_EMPTY)
        slot = (slot + 1) & mask;
    keys[slot] = key;
    children[slot] = child;
}

/* Keeps the edge table at most half full. */
static bool reserve_edge(tok_added_matcher *m)
{
    size_t size = m->edge_keys ? m->edge_mask + 1 : 0;
    if ((m->n_edges + 1) * 2 <= size)
        return true;
    size_t new_size = size ? size * 2 : 64;
    uint64_t *keys = malloc(new_size * sizeof *keys);
    uint32_t *children = malloc(new_size * sizeof *children);
    if (keys == NULL || children == NULL) {
        free(keys);
        free(children);
        return false;
    }
    memset(keys, 0xFF, new_size * sizeof *keys);
    for (size_t i = 0; i < size; i++)
        if (m->edge_keys[i] != EDGE_EMPTY)
            put_edge(keys, children, new_size - 1, m->edge_keys[i], m->edge_child[i]);
    free(m->edge_keys);
    free(m->edge_child);
    m->edge_keys = keys;
    m->edge_child = children;
    m->edge_mask = new_size - 1;
    return true;
}

static int64_t new_node(tok_added_matcher *m)
{
    if (m->n_nodes == m->nodes_cap) {
        size_t cap = m->nodes_cap ? m->nodes_cap * 2 : 64;
        int32_t *grown = realloc(m->node_token, cap * sizeof *grown);
        if (grown == NULL)
            return -1;
        m->node_token = grown;
        m->nodes_cap = cap;
    }
    m->node_token[m->n_nodes] = -1;
    return (int64_t)m->n_nodes++;
}

static int64_t child_or_new(tok_added_matcher *m, uint32_t node, uint8_t byte)
{
    int64_t child = find_child(m, node, byte);
    if (child >= 0)
        return child;
    if (!reserve_edge(m))
        return -1;
    child = new_node(m);
    if (child < 0)
        return -1;
    put_edge(m->edge_keys, m->edge_child, m->edge_mask, edge_key(node, byte), (uint32_t)child);
    m->n_edges++;
    return child;
}

bool tok_added_add(tok_added_matcher *m, const uint8_t *content, size_t len,
                   tok_added_token token)
{
    if (len == 0 || (m->n_nodes == 0 && new_node(m) < 0))
        return false;
    tok_added_token *tokens = realloc(m->tokens, (m->n_tokens + 1) * sizeof *tokens);
    if (tokens == NULL)
        return false;
    m->tokens = tokens;
    int64_t node = 0;
    for (size_t i = 0; i < len; i++) {
        node = child_or_new(m, (uint32_t)node, content[i]);
        if (node < 0)
            return false;
    }
    m->node_token[node] = (int32_t)m->n_tokens;
    m->tokens[m->n_tokens++] = token;
    m->first_byte[content[0]] = true;
    return true;
}

void tok_added_free(tok_added_matcher *m)
{
    free(m->tokens);
    free(m->edge_keys);
    free(m->edge_child);
    free(m->node_token);
    memset(m, 0, sizeof *m);
}

/* ------------------------------------------------------------------------------------------ */
/* Matching                                                                                   */
/* ------------------------------------------------------------------------------------------ */

typedef struct added_match {
    size_t start;
    size_t end;
    const tok_added_token *token;
} added_match;

/* Longest token starting at s[at]; false when none does. */
static bool longest_match_at(const tok_added_matcher *m, const uint8_t *s, size_t n, size_t at,
                             added_match *match)
{
    int64_t node = 0;
    bool found = false;
    for (size_t i = at; i < n; i++) {
        node = find_child(m, (uint32_t)node, s[i]);
        if (node < 0)
            break;
        if (m->node_token[node] >= 0) {
            match->start = at;
            match->end = i + 1;
            match->token = &m->tokens[m->node_token[node]];
            found = true;
        }
    }
    return found;
}

/* Leftmost match at or after `from` (the Aho-Corasick leftmost-longest semantics). The cost is
 * the text length times the longest token, which stays small for real tokenizers. */
static bool next_match(const tok_added_matcher *m, const uint8_t *s, size_t n, size_t from,
                       added_match *match)
{
    for (size_t at = from; at < n; at++)
        if (m->first_byte[s[at]] && longest_match_at(m, s, n, at, match))
            return true;
    return false;
}

/* Start of the code point that ends just before s[at]. */
static size_t previous_code_point(const uint8_t *s, size_t at)
{
    size_t i = at - 1;
    while (i > 0 && (s[i] & 0xC0) == 0x80)
        i--;
    return i;
}

static bool word_char_before(const uint8_t *s, size_t at)
{
    if (at == 0)
        return false;
    size_t length;
    return tok_is_word_char(tok_utf8_decode(s + previous_code_point(s, at), &length));
}

static bool word_char_after(const uint8_t *s, size_t n, size_t at)
{
    size_t length;
    return at < n && tok_is_word_char(tok_utf8_decode(s + at, &length));
}

/* Moves start left over whitespace, but not before `limit`. */
static size_t strip_left(const uint8_t *s, size_t start, size_t limit)
{
    while (start > limit) {
        size_t before = previous_code_point(s, start), length;
        if (before < limit || !tok_is_white_space(tok_utf8_decode(s + before, &length)))
            break;
        start = before;
    }
    return start;
}

static size_t strip_right(const uint8_t *s, size_t n, size_t end)
{
    while (end < n) {
        size_t length;
        if (!tok_is_white_space(tok_utf8_decode(s + end, &length)))
            break;
        end += length;
    }
    return end;
}

pio_status tok_added_split_text(const tok_added_matcher *m, const uint8_t *s, size_t n,
                                bool skip_special, tok_split_fn emit, void *context)
{
    size_t text_start = 0; /* start of the ordinary text not yet emitted */
    size_t search = 0;
    added_match match;
    while (m->n_tokens > 0 && next_match(m, s, n, search, &match)) {
        search = match.end;
        const tok_added_token *token = match.token;
        if (skip_special && token->special)
            continue;
        if (token->single_word && (word_char_before(s, match.start) ||
                                   word_char_after(s, n, match.end)))
            continue;
        /* A match inside whitespace already taken by the previous token's rstrip. */
        if (match.start < text_start)
            continue;
        size_t start = token->lstrip ? strip_left(s, match.start, text_start) : match.start;
        size_t end = token->rstrip ? strip_right(s, n, match.end) : match.end;
        pio_status status = PIO_OK;
        if (start > text_start)
            status = emit(context, s, (tok_added_split){text_start, start, -1});
        if (status == PIO_OK)
            status = emit(context, s, (tok_added_split){start, end, token->id});
        if (status != PIO_OK)
            return status;
        text_start = end;
    }
    if (text_start < n)
        return emit(context, s, (tok_added_split){text_start, n, -1});
    return PIO_OK;
}
