/*
 * Byte-level BPE tokenizer read from a Hugging Face `tokenizer.json` (the format of the Qwen2 /
 * Qwen3 and GLM-4 tokenizers), with the same results as the Hugging Face `tokenizers` library.
 *
 * What a file may contain (anything else is refused at load with an error naming the file and
 * the JSON path, e.g. "tokenizer.json: pre_tokenizer.pretokenizers[0].behavior: ..."):
 *   version        "1.0"; truncation and padding null
 *   added_tokens   [{id, content, single_word, lstrip, rstrip, normalized, special}]
 *   normalizer     null or {"type": "NFC"}
 *   pre_tokenizer  Sequence[Split(pattern {"Regex": ...} or {"String": ...}, behavior "Isolated",
 *                  invert false), ByteLevel(add_prefix_space false, use_regex false)]
 *   post_processor null, ByteLevel, TemplateProcessing (its "single" template), or a Sequence
 *                  of those
 *   decoder        ByteLevel
 *   model          BPE: vocab {token: id}, merges ["a b", ...] or [["a", "b"], ...], no dropout,
 *                  no byte_fallback, no continuing_subword_prefix / end_of_word_suffix;
 *                  ignore_merges honoured
 *
 * Encoding, in the order Hugging Face applies it:
 *   1. Added tokens are cut out first: leftmost match, longest at that position; lstrip / rstrip
 *      absorb the Unicode whitespace beside the match, single_word requires non-word characters
 *      (or the text's ends) on both sides. Tokens marked normalized are matched after step 2.
 *   2. The text between added tokens is NFC-normalized when the file asks for it.
 *   3. It is split by the pre-tokenizer regex (PCRE2 with JIT, UTF + UCP, compiled once). The
 *      pattern is written in Oniguruma's dialect (Ruby syntax); the escapes whose meaning
 *      differs in PCRE2 (\s \S \w \W \h \H) are rewritten to Oniguruma's definitions, (?m)
 *      becomes (?s), and what has no PCRE2 equivalent (nested classes, &&, POSIX brackets,
 *      a negated escape inside [...]) is refused.
 *   4. Each piece is mapped to the GPT-2 byte-level alphabet and merged by BPE rank (a heap of
 *      adjacent pairs over a linked list: O(n log n) in the piece length).
 * With the Qwen2 / GLM-4 patterns the whole encode is O(n log n) in the input length on any
 * input (NFC, the regex and the added-token scan are linear; the last costs n times the longest
 * added token). The pattern comes from the file, so a pathological one could backtrack; PCRE2's
 * match limit then ends the call with an error. Results for pieces up to 58 bytes are kept in a
 * bounded cache (4 MiB) shared by the calls on one tokenizer.
 *
 * Invalid UTF-8 input: by default encoding fails with PIO_ERR_INVALID_ARGUMENT and a message
 * giving the byte offset of the first ill-formed sequence. With PIO_TOKENIZE_REPLACE_INVALID_UTF8
 * each maximal ill-formed subpart is replaced by U+FFFD first (the Unicode "maximal subpart"
 * practice, which is also what Python's bytes.decode("utf-8", "replace") does).
 *
 * Decoding maps ids back through the byte-level alphabet; added tokens give their content as is.
 * The result is always valid UTF-8: ill-formed byte sequences become U+FFFD, as in Hugging Face.
 * The streaming decoder (pio_detokenizer) gives the same text in pieces, never splitting a UTF-8
 * sequence across two pieces.
 *
 * Thread safety: after pio_tokenizer_load returns, a tokenizer is read-only except for its
 * piece cache, which an encode call uses only if it can take the cache's lock without waiting
 * (otherwise it encodes without the cache). So encode, decode and the lookups may run on one
 * tokenizer from any number of threads at once. A pio_detokenizer is used by one thread at a
 * time. pio_tokenizer_free must not race with any other use.
 */
#ifndef PIO_TOKENIZER_H
#define PIO_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pio/error.h"
#include "pio/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pio_tokenizer pio_tokenizer;

/* Reads and validates `path` (a tokenizer.json). On failure *out is NULL and err names the file
 * and the JSON path: PIO_ERR_IO (cannot read), PIO_ERR_FORMAT (malformed or inconsistent),
 * PIO_ERR_UNSUPPORTED (valid Hugging Face file using a feature this tokenizer lacks),
 * PIO_ERR_OUT_OF_MEMORY. */
pio_status pio_tokenizer_load(const char *path, pio_tokenizer **out, pio_error *err);

/* The same from a tokenizer.json already in memory; `name` stands for the file in messages. */
pio_status pio_tokenizer_load_buffer(const char *name, const void *data, size_t size,
                                     pio_tokenizer **out, pio_error *err);

/* Frees everything; accepts NULL. */
void pio_tokenizer_free(pio_tokenizer *tokenizer);

/* ------------------------------------------------------------------------------------------ */
/* Encoding                                                                                     */
/* ------------------------------------------------------------------------------------------ */

enum {
    /* Apply the post_processor template (e.g. a BOS id). Qwen's adds nothing. */
    PIO_TOKENIZE_ADD_SPECIAL_TOKENS = 1u << 0,
    /* Replace ill-formed UTF-8 by U+FFFD instead of failing. */
    PIO_TOKENIZE_REPLACE_INVALID_UTF8 = 1u << 1,
    /* Encode the text of added tokens marked special (e.g. "<|im_start|>" in user input) as
     * ordinary text, like Hugging Face's split_special_tokens / encode_special_tokens. */
    PIO_TOKENIZE_SPLIT_SPECIAL_TOKENS = 1u << 2
};

/* A growable id array. Start from {0}; free with pio_token_ids_free. */
typedef struct pio_token_ids {
    int32_t *ids;
    size_t count;
    size_t capacity;
} pio_token_ids;

void pio_token_ids_free(pio_token_ids *ids);

/* Encodes text[0, text_len) and appends the ids to *out (on failure *out keeps its earlier
 * contents). flags: PIO_TOKENIZE_*. */
pio_status pio_tokenizer_encode(const pio_tokenizer *tokenizer, const char *text, size_t text_len,
                                unsigned flags, pio_token_ids *out, pio_error *err);

/* Encodes into a caller buffer: writes at most capacity ids (ids may be NULL when capacity is 0)
 * and sets *n_ids to the full count. PIO_SOFT_TRUNCATED when capacity was too small. */
pio_status pio_tokenizer_encode_into(const pio_tokenizer *tokenizer, const char *text,
                                     size_t text_len, unsigned flags, int32_t *ids,
                                     size_t capacity, size_t *n_ids, pio_error *err);

/* ------------------------------------------------------------------------------------------ */
/* Decoding                                                                                     */
/* ------------------------------------------------------------------------------------------ */

enum {
    /* Leave out added tokens marked special (<|im_end|>, ...). */
    PIO_DETOKENIZE_SKIP_SPECIAL_TOKENS = 1u << 0
};

/* Ids -> UTF-8 text. Writes at most capacity bytes, NUL-terminated when the text and its NUL fit;
 * *text_len gets the full length without the NUL. PIO_SOFT_TRUNCATED when capacity was too
 * small. PIO_ERR_INVALID_ARGUMENT for an id that names no token. */
pio_status pio_tokenizer_decode(const pio_tokenizer *tokenizer, const int32_t *ids, size_t n_ids,
                                unsigned flags, char *text, size_t capacity, size_t *text_len,
                                pio_error *err);

/* Streaming decoder: feed ids one at a time; each call returns the text that became complete.
 * A UTF-8 sequence split over several tokens is held back until its last byte arrives; bytes
 * that can never complete a sequence come out as U+FFFD. Concatenating every piece and the
 * final flush gives exactly pio_tokenizer_decode of the same ids. */
typedef struct pio_detokenizer pio_detokenizer;

/* flags: PIO_DETOKENIZE_*. The tokenizer must outlive the decoder. */
pio_status pio_detokenizer_create(const pio_tokenizer *tokenizer, unsigned flags,
                                  pio_detokenizer **out, pio_error *err);

/* Adds one id. *text / *text_len get the newly completed text (possibly empty, never NULL),
 * valid until the next call on this decoder; it is NUL-terminated. */
pio_status pio_detokenizer_push(pio_detokenizer *decoder, int32_t id, const char **text,
                                size_t *text_len, pio_error *err);

/* Ends the stream: a held-back incomplete sequence comes out as U+FFFD. The decoder is then
 * empty and can take a new stream. */
pio_status pio_detokenizer_flush(pio_detokenizer *decoder, const char **text, size_t *text_len,
                                 pio_error *err);

/* Drops any held-back bytes without emitting them. */
void pio_detokenizer_reset(pio_detokenizer *decoder);

/* Accepts NULL. */
void pio_detokenizer_free(pio_detokenizer *decoder);

/* ------------------------------------------------------------------------------------------ */
/* Vocabulary                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* Largest id + 1 over the BPE vocabulary and the added tokens (151669 for Qwen3; model
 * embedding tables are often padded beyond it). */
size_t pio_tokenizer_vocab_size(const pio_tokenizer *tokenizer);

/* Id of a token given as it is written in tokenizer.json (added token content, or a vocab
 * entry in the byte-level alphabet, e.g. "Ġthe"); -1 when there is none. */
int32_t pio_tokenizer_token_to_id(const pio_tokenizer *tokenizer, const char *token);

/* The token as written in tokenizer.json (NUL-terminated; *len may be NULL); NULL for an id that
 * names no token. Valid while the tokenizer lives. */
const char *pio_tokenizer_id_to_token(const pio_tokenizer *tokenizer, int32_t id, size_t *len);

/* The raw bytes a token decodes to (not necessarily valid UTF-8 on its own: a token may hold
 * part of a character); NULL for an id that names no token. */
const uint8_t *pio_tokenizer_token_bytes(const pio_tokenizer *tokenizer, int32_t id, size_t *len);

/* True for added tokens marked special (skipped by PIO_DETOKENIZE_SKIP_SPECIAL_TOKENS). */
bool pio_tokenizer_is_special(const pio_tokenizer *tokenizer, int32_t id);

/* True for any added token, special or not. */
bool pio_tokenizer_is_added(const pio_tokenizer *tokenizer, int32_t id);

#ifdef __cplusplus
}
#endif

#endif
