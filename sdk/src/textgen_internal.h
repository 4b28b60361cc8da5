/* Internals of the text-generation runtime (textgen*.c); see pio/textgen.h. */
#ifndef PIO_TEXTGEN_INTERNAL_H
#define PIO_TEXTGEN_INTERNAL_H

#include "kernels/sampler.h"
#include "pio/textgen.h"

struct pio_textgen {
    const pio_textgen_model *model;
    pio_tokenizer *tokenizer;          /* NULL when the model folder has none */
    char missing_tokenizer[512];       /* why there is none, for the error of a text request */
    pio_detokenizer *detokenizer;
    pk_sampler *sampler;
    float *logits;                     /* one row of model->vocab_size floats */
    size_t sample_vocab;               /* ids that may be sampled */
    pio_chat_format chat_format;
    int32_t eos_ids[2 * PIO_TEXTGEN_MAX_EOS];
    size_t n_eos;
    pio_sampling_params sampling;
    int32_t max_new_tokens;
    const char *stop_strings[PIO_TEXTGEN_MAX_STOP_STRINGS]; /* defaults; not owned */
    size_t n_stop_strings;
    const pio_host_services *services;
    void *host;
};

/* One request, with the defaults merged in and the ABI's optional structs resolved. */
typedef struct tg_request {
    pk_sampling sampling;
    uint64_t seed;
    int32_t max_new_tokens;
    const char *const *stop_strings;
    size_t n_stop_strings;
    const int32_t *stop_ids;
    size_t n_stop_ids;
    int ignore_eos;
    pio_token_callback on_token;
    void *user_data;
    double start_ms; /* when the call began */
} tg_request;

/* ---- textgen_stream.c: generated text, stop strings and what may be streamed ------------- */

typedef struct tg_stream {
    char *text;           /* NUL-terminated; cut before a matched stop string */
    size_t len;
    size_t capacity;
    size_t released;      /* bytes already handed out by tg_stream_take */
    const char *const *stops;
    size_t n_stops;
    size_t longest_stop;
    int matched;          /* a stop string was found: the text is final */
} tg_stream;

void tg_stream_init(tg_stream *stream, const char *const *stops, size_t n_stops);
void tg_stream_free(tg_stream *stream);
/* Appends a piece of text (ignored once a stop string matched) and looks for stop strings
 * that end inside it. */
pio_status tg_stream_append(tg_stream *stream, const char *piece, size_t len, pio_error *err);
/* The text that can be shown now and was not yet: everything when `final` or a stop string
 * matched, otherwise all but a tail that could be the start of a stop string. */
void tg_stream_take(tg_stream *stream, int final, const char **text, size_t *len);

/* ---- textgen_loop.c: prefill and decode of one sequence ---------------------------------- */

typedef struct tg_result {
    pio_token_ids tokens;    /* generated ids */
    tg_stream stream;        /* their text */
    pio_finish_reason finish;
    size_t prompt_tokens;
    double prompt_ms;
    double first_token_ms;   /* from request start */
    double decode_ms;
} tg_result;

/* Generates from prompt ids into *result (which the caller frees with tg_result_free, also
 * after a failure). */
pio_status tg_run(pio_textgen *textgen, const int32_t *prompt, size_t n_prompt,
                  const tg_request *request, tg_result *result, pio_error *err);
void tg_result_free(tg_result *result);

/* Milliseconds on the monotonic clock. */
double tg_now_ms(void);

#endif
