/* Between decoder_forward.c and decoder_graph.c: decode steps recorded as graphs. */
#ifndef PIO_DECODER_GRAPH_H
#define PIO_DECODER_GRAPH_H

#include "pio/decoder.h"

/* Steps of up to this many tokens whose logits are asked for every token, in order (decode
 * steps of up to this many sequences), run as recorded graphs where the backend can record. */
#define PIO_DECODER_GRAPH_MAX_TOKENS PIO_DECODER_LOGITS_ROWS

typedef struct pio_decoder_graphs pio_decoder_graphs;

/* Whether the checked batch b (its KV blocks taken) can run as a recorded step. */
int pio_decoder_graph_eligible(const pio_decoder *m, const pio_textgen_batch *b);
/* Runs b: stages its inputs in fixed device buffers, then replays the graph recorded for its
 * size (recording it on the second step of that size; the first runs directly and grows
 * every workspace), and copies the logits out. A recording that fails turns graphs off for
 * this decoder and the step runs directly. */
pio_status pio_decoder_graph_step(pio_decoder *m, const pio_textgen_batch *b, pio_error *err);
void pio_decoder_graphs_free(pio_decoder *m);

/* decoder_forward.c: 1 when a token of the prepared batch (m->kv_batch) is at a position of
 * m->short_context or more, else 0: which of m->gemv_tma the step runs with. */
int pio_decoder_long_context(const pio_decoder *m);
/* decoder_forward.c: the batch's argmax output, NULL when absent or beyond its struct_size. */
int32_t *pio_decoder_batch_argmax(const pio_textgen_batch *b);
/* decoder_forward.c: host ids copied into a device buffer, as a [1, n] tensor. */
pio_status pio_decoder_stage_ids(const pio_decoder *m, const pk_buffer *buf, const int32_t *host,
                                 int64_t n, pk_tensor *out, pio_error *err);
/* decoder_forward.c: the embedding of ids and every layer over n tokens; the final hidden
 * states are left in *a (a->x). */
pio_status pio_decoder_run_layers(pio_decoder *m, const pk_tensor *ids, const pk_token_batch *tb,
                                  int64_t n, pk_attention_activations *a, pio_error *err);

#endif
