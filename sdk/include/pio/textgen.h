/*
 * Text generation for any model that can run a flattened batch of tokens: everything of
 * generate_text / chat_completion that does not depend on the architecture.
 *
 * A plugin describes its model with a pio_textgen_model (open/close a KV-cache sequence, run a
 * batch of tokens and return the logits rows asked for) and creates one pio_textgen per
 * instance. The runtime then does, for one request:
 *   1. tokenize the prompt (chat requests are first rendered by pio_chat_render_request);
 *   2. prefill it on a new sequence, then decode one token per step, sampling each with the
 *      kernels' sampler (penalties, temperature, top-k, top-p, min-p, seeded generator) among
 *      the ids the tokenizer knows (an embedding table's padding rows are never chosen). A
 *      model with PIO_TEXTGEN_FEATURE_SAMPLE samples where its logits are, with the uniforms
 *      the runtime draws, so only the ids come back (greedy requests without penalties take
 *      the argmax of PIO_TEXTGEN_FEATURE_ARGMAX where that covers the same ids); the tokens
 *      are the same as sampling on the host, which other models get;
 *   3. stop on an end-of-sequence id (unless ignore_eos), a stop token id or a stop string,
 *      at max_new_tokens or at the context length, or when on_token returns non-zero or the
 *      host's should_abort says so;
 *   4. stream the text through on_token with the streaming detokenizer: a token's text comes
 *      out once it is complete UTF-8, and text that could still turn out to be the start of a
 *      stop string is held back until it cannot;
 *   5. fill the response: text (without stop strings, stop tokens and, for chats with tools,
 *      the tool calls, which are parsed into response->tool_calls), token ids (including the
 *      stop token that ended generation, as Hugging Face and vLLM report them), usage and
 *      timings.
 *
 * Sampling defaults are merged in this order, later winning: the built-in ones (temperature 1,
 * everything else off), generation_config.json (pio_textgen_read_generation_config), the YAML
 * generation.* keys (pio_textgen_read_host_generation), and the fields a request marks in
 * fields_set.
 *
 * Timings use the monotonic clock: prompt_ms is the prefill forward, time_to_first_token_ms runs
 * from the start of the call (tokenizing included) to the first sampled token, decode_ms from
 * the first to the last token; decode_tokens_per_s counts the tokens the decode steps produced
 * (all but the first).
 *
 * Thread safety: one pio_textgen is driven by one thread at a time (the plugin instance's).
 */
#ifndef PIO_TEXTGEN_H
#define PIO_TEXTGEN_H

#include <stddef.h>
#include <stdint.h>

#include "pio/chat_format.h"
#include "pio/error.h"
#include "pio/plugin.h"
#include "pio/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* The model, as the runtime sees it                                                          */
/* ------------------------------------------------------------------------------------------ */

/*
 * One row's sampling where the logits are (PIO_TEXTGEN_FEATURE_SAMPLE): the host sampler's
 * parameters (kernels/sampler.h has the rules), the uniform it would draw, and the tokens its
 * penalties read. The model picks exactly the token pk_sampler_sample would pick from the same
 * row with the same values, so a seed gives the same tokens either way.
 */
typedef struct pio_textgen_sample_row {
    float temperature;        /* >= 0; 0 = greedy */
    int32_t top_k;            /* >= 0; 0 = off */
    float top_p;              /* (0, 1]; 1 = off */
    float min_p;              /* [0, 1); 0 = off */
    float repetition_penalty; /* > 0; 1 = off */
    float presence_penalty;   /* 0 = off */
    float frequency_penalty;  /* 0 = off */
    /* The row's uniform u = uniform_bits * 2^-53 in [0, 1): the caller draws it as the host
     * sampler would (pk_sampling_uniform_bits of kernels/sampler.h); greedy rows (temperature
     * 0 or top_k 1) ignore it. */
    uint64_t uniform_bits;
    /* The history the penalties read (may be NULL when its count is 0): the repetition penalty
     * applies to the ids of both, presence and frequency to those of output. A model may keep
     * device copies between calls and send only what changed, so a sequence's history growing
     * at its end costs one token per step. */
    const int32_t *prompt;
    size_t n_prompt;
    const int32_t *output;
    size_t n_output;
} pio_textgen_sample_row;

/*
 * A flattened batch: n_tokens tokens from one or more sequences, prefill and decode mixed. Each
 * token is appended to its sequence at the next position, in batch order, so the tokens of one
 * sequence appear in the order they are to be read. logits_rows picks the tokens whose logits
 * are wanted; row i of `logits` (vocab_size floats, host memory) belongs to token
 * logits_rows[i]. Instead of (or with) the logits a model with the features may return only
 * token ids: the argmax of each row, or a token sampled from each row.
 */
typedef struct pio_textgen_batch {
    uint32_t struct_size;
    size_t n_tokens;
    const int32_t *tokens;      /* n_tokens ids */
    const int32_t *seq_ids;     /* n_tokens sequence ids (from seq_open) */
    size_t n_logits_rows;
    const int32_t *logits_rows; /* n_logits_rows indices into tokens */
    float *logits;              /* n_logits_rows * vocab_size floats, caller-owned; may be NULL
                                   when argmax is given (models with PIO_TEXTGEN_FEATURE_ARGMAX) */
    /* Optional (NULL: not wanted): n_logits_rows ids, the largest logit of each row (lowest id
     * among ties, NaN never chosen), found where the logits are (the GPU), so greedy decoding
     * need not copy whole rows back. Check the model's features before relying on it. */
    int32_t *argmax;
    /* Optional (NULL: not wanted; models with PIO_TEXTGEN_FEATURE_SAMPLE): n_logits_rows ids,
     * row i's token chosen as sample[i] says among the ids [0, sample_vocab), sampled where
     * the logits are so that only the ids come back. logits may then be NULL. Parameters out
     * of range, a history pointer missing or a row without a finite logit fail the forward
     * with PIO_ERR_INVALID_ARGUMENT naming the row. */
    int32_t *sampled;
    const pio_textgen_sample_row *sample; /* n_logits_rows, with sampled */
    size_t sample_vocab; /* ids that may be chosen (padding rows excluded); 0 = vocab_size */
} pio_textgen_batch;

/*
 * A model's operations. Plugins also hand this out through get_extension under
 * PIO_TEXTGEN_MODEL_EXTENSION, so tools and tests can drive batched forwards directly.
 */
#define PIO_TEXTGEN_MODEL_EXTENSION "pio.textgen.model.v1"

typedef struct pio_textgen_model {
    uint32_t struct_size;
    void *self;             /* first argument of every operation */
    size_t vocab_size;      /* floats per logits row (embedding rows, padding included) */
    size_t context_length;  /* positions one sequence may hold */

    /* A new empty sequence. PIO_SOFT_KV_FULL when no more sequences can be open. */
    pio_status (*seq_open)(void *self, int32_t *seq, pio_error *err);
    /* Releases the sequence and its cache blocks; unknown ids are ignored. */
    void (*seq_close)(void *self, int32_t seq);
    /* Tokens the sequence holds; -1 for an unknown id. */
    int64_t (*seq_length)(void *self, int32_t seq);
    /*
     * Runs the batch. PIO_SOFT_KV_FULL when the cache cannot take the tokens right now;
     * PIO_ERR_INVALID_ARGUMENT for an id outside the vocabulary, an unknown sequence, a
     * logits row outside the batch or a sequence growing past context_length;
     * PIO_ERR_CANCELLED when the host asked to stop. After any failure every sequence is as it
     * was before the call.
     */
    pio_status (*forward)(void *self, const pio_textgen_batch *batch, pio_error *err);
    uint32_t features; /* PIO_TEXTGEN_FEATURE_* bits (check with PIO_HAS_FIELD) */
} pio_textgen_model;

/* forward fills pio_textgen_batch.argmax, and takes logits NULL with it. */
#define PIO_TEXTGEN_FEATURE_ARGMAX 1u
/* forward fills pio_textgen_batch.sampled from .sample, and takes logits NULL with it. */
#define PIO_TEXTGEN_FEATURE_SAMPLE 2u

/* ------------------------------------------------------------------------------------------ */
/* Sampling defaults                                                                          */
/* ------------------------------------------------------------------------------------------ */

/* The built-in defaults: temperature 1, top_p 1, top_k 0, min_p 0, repetition 1, presence and
 * frequency 0, no seed (fields_set 0: a random seed per request). */
void pio_textgen_sampling_init(pio_sampling_params *sampling);

#define PIO_TEXTGEN_MAX_EOS 16
#define PIO_TEXTGEN_MAX_STOP_STRINGS 16

/*
 * Reads generation_config.json: temperature, top_p, top_k, min_p and repetition_penalty
 * override *sampling where present (and set their fields_set bits); "do_sample": false makes
 * the default greedy (temperature 0), as Hugging Face's generate does. Its eos_token_id (an
 * integer or a list) is stored in eos_ids (*n_eos; 0 when absent). A missing file is
 * PIO_SOFT_ABSENT with nothing changed; a malformed one an error naming the file and key.
 */
pio_status pio_textgen_read_generation_config(const char *path, pio_sampling_params *sampling,
                                              int32_t *eos_ids, size_t eos_capacity,
                                              size_t *n_eos, pio_error *err);

/*
 * Reads the YAML generation.* keys through the host services over *sampling (temperature,
 * top_p, top_k, min_p, repetition_penalty, presence_penalty, frequency_penalty, seed) and
 * generation.max_new_tokens into *max_new_tokens. Keys not set leave the values as they are.
 * A value of the wrong type is PIO_ERR_CONFIG; the host has then recorded the message and
 * err->message is left empty.
 */
pio_status pio_textgen_read_host_generation(const pio_host_services *services, void *host,
                                            pio_sampling_params *sampling,
                                            int32_t *max_new_tokens, pio_error *err);

/*
 * Reads the YAML list generation.stop through the host services into stops (at most capacity;
 * more is PIO_ERR_CONFIG), *n_stops of them; the strings stay host memory, valid until the
 * instance's cleanup. Unset: *n_stops = 0. A host without list getters (an older ABI minor)
 * counts as unset.
 */
pio_status pio_textgen_read_host_stop_strings(const pio_host_services *services, void *host,
                                              const char **stops, size_t capacity,
                                              size_t *n_stops, pio_error *err);

/* ------------------------------------------------------------------------------------------ */
/* The runtime                                                                                */
/* ------------------------------------------------------------------------------------------ */

typedef struct pio_textgen pio_textgen;

typedef struct pio_textgen_config {
    /* Must outlive the runtime. NULL makes a vocab-only runtime (a load with
     * PIO_LOAD_VOCAB_ONLY): tokenize and detokenize work, generation is PIO_ERR_STATE, and the
     * tokenizer is required (a missing one is PIO_ERR_NOT_FOUND). */
    const pio_textgen_model *model;
    /* tokenizer.json to load, or NULL. A path that does not exist is not an error: requests
     * that need text then fail with a message saying the tokenizer is missing (raw forwards
     * need none). A file that exists but is malformed fails pio_textgen_create. */
    const char *tokenizer_path;
    pio_chat_format chat_format;
    /* End-of-sequence ids (copied; at most PIO_TEXTGEN_MAX_EOS). Added to them: the ids of
     * the tokenizer's tokens named in eos_token_texts (e.g. "<|im_end|>"), when it has them. */
    const int32_t *eos_ids;
    size_t n_eos_ids;
    const char *const *eos_token_texts; /* NULL-terminated list, or NULL */
    pio_sampling_params sampling;       /* merged defaults; every member meaningful */
    int32_t max_new_tokens;             /* default for requests that give <= 0 */
    /* Default stop strings (YAML generation.stop), used by requests that give none; the
     * pointer array is copied (at most PIO_TEXTGEN_MAX_STOP_STRINGS), the strings must outlive
     * the runtime. */
    const char *const *stop_strings;
    size_t n_stop_strings;
    const pio_host_services *services;  /* for should_abort; may be NULL */
    void *host;
} pio_textgen_config;

pio_status pio_textgen_create(const pio_textgen_config *config, pio_textgen **out,
                              pio_error *err);
void pio_textgen_destroy(pio_textgen *textgen);

/* The loaded tokenizer, or NULL when there is none. */
const pio_tokenizer *pio_textgen_tokenizer(const pio_textgen *textgen);
/* The end-of-sequence ids in use (*n of them). */
const int32_t *pio_textgen_eos_ids(const pio_textgen *textgen, size_t *n);

/*
 * The two requests of the ABI. On PIO_OK the response is filled (struct_size is the caller's;
 * only fields inside it are written). Errors: PIO_ERR_INVALID_ARGUMENT (empty prompt, a prompt
 * that leaves no room in the context, bad sampling values, invalid UTF-8), PIO_ERR_STATE (no
 * tokenizer), PIO_SOFT_KV_FULL (the prompt does not fit in the free cache right now), and what
 * the model's forward returns. After a failure the response holds nothing to free.
 */
pio_status pio_textgen_generate(pio_textgen *textgen, const pio_generate_request *request,
                                pio_generate_response *response, pio_error *err);
pio_status pio_textgen_chat(pio_textgen *textgen, const pio_chat_request *request,
                            pio_generate_response *response, pio_error *err);

/* Frees what a response of pio_textgen_generate / _chat holds and zeroes its pointers. */
void pio_textgen_free_response(pio_generate_response *response);

/* The ABI's tokenize / detokenize on caller buffers (PIO_SOFT_TRUNCATED when too small; the
 * full size is still reported). PIO_ERR_STATE without a tokenizer. */
pio_status pio_textgen_tokenize(const pio_textgen *textgen, const char *text, size_t text_len,
                                int add_special_tokens, int32_t *ids, size_t capacity,
                                size_t *n_ids, pio_error *err);
pio_status pio_textgen_detokenize(const pio_textgen *textgen, const int32_t *ids, size_t n_ids,
                                  int skip_special_tokens, char *text, size_t capacity,
                                  size_t *text_len, pio_error *err);

#ifdef __cplusplus
}
#endif

#endif
