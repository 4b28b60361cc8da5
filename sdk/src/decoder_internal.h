/* Between the decoder's files (sdk/src/decoder_*.c): tensor parallelism (decoder_tp.c) and
 * sampling on the device (decoder_sample.c). */
#ifndef PIO_DECODER_INTERNAL_H
#define PIO_DECODER_INTERNAL_H

#include "pio/decoder.h"

/* decoder_tp.c: whether the options run the model as rank decoders: a tensor-parallel size
 * above 1, or parallel.force_ranks. */
int pio_decoder_uses_ranks(const pio_decoder_load_options *o);
/* decoder_tp.c: a warning in the host's log when parallel.devices is set but not read (a cpu
 * device, or one GPU without parallel.force_ranks). */
void pio_decoder_note_unused_devices(const pio_decoder *d, const pio_decoder_load_options *o);
/* decoder_tp.c: refuses a tensor-parallel size or a rank-to-GPU map the model, the build or the
 * machine cannot take, before any weight is read (errors name the YAML key, the config.json
 * key and the numbers). */
pio_status pio_decoder_check_tp(const pio_decoder *d, const pio_decoder_load_options *o, int tp,
                                pio_error *err);
/* decoder_tp.c: the rank decoders of d (whose full weights are loaded in host memory), their
 * communicators and their persistent threads; d->pool becomes rank 0's. */
pio_status pio_decoder_build_ranks(pio_decoder *d, const pio_decoder_load_options *o, int tp,
                                   pio_error *err);
/* decoder_tp.c: ends and joins the rank threads (before the ranks are freed); no-op without. */
void pio_decoder_stop_ranks(pio_decoder *d);
/* decoder_tp.c: one sequence id opened on every rank's pool (the same id on each). */
pio_status pio_decoder_tp_seq_open(pio_decoder *d, int32_t *seq, pio_error *err);
/* decoder_tp.c: a checked batch through every rank, each on its own thread. */
pio_status pio_decoder_tp_forward(pio_decoder *d, const pio_textgen_batch *b, pio_error *err);

/* decoder_model.c: one rank (see pio_decoder_shard) on o->device, GPU o->device_index: its
 * weights are views of full's slices, copied to the GPU when the device is not host memory. */
pio_status pio_decoder_rank_create(const pio_decoder *full, const pio_decoder_shard *shard,
                                   const pio_decoder_load_options *o, int n_threads,
                                   pio_decoder **out, pio_error *err);
/* decoder_forward.c: a checked batch through this decoder's layers (KV blocks taken, rolled
 * back on failure). *ran is set once the KV blocks are taken (ranks then run collectives). */
pio_status pio_decoder_run_batch(pio_decoder *m, const pio_textgen_batch *b, int *ran,
                                 pio_error *err);

/* ---- decoder_sample.c: sampling on the decoder's context (PIO_TEXTGEN_FEATURE_SAMPLE) ---- */

typedef struct pio_decoder_sampling pio_decoder_sampling;

/* The batch's sampled output, NULL when absent or beyond its struct_size. */
int32_t *pio_decoder_batch_sampled(const pio_textgen_batch *b);
/* The ids a sampled row may choose: b->sample_vocab, or the whole vocabulary for 0. */
int64_t pio_decoder_sample_vocab(const pio_decoder *m, const pio_textgen_batch *b);
/* Refuses sample rows pk_sample cannot take (parameters, uniforms, histories), naming the row;
 * PIO_OK when the batch asks for no sampled ids. */
pio_status pio_decoder_check_sampling(const pio_decoder *m, const pio_textgen_batch *b,
                                      pio_error *err);

/* What a group of sampled rows needs: every row plain greedy (an argmax over the ids that may
 * be chosen), pk_sample without histories, or pk_sample with them. */
typedef enum pio_decoder_sample_kind {
    PIO_DECODER_SAMPLE_GREEDY,
    PIO_DECODER_SAMPLE_PLAIN,
    PIO_DECODER_SAMPLE_HISTORY
} pio_decoder_sample_kind;

/* In these, the group's j-th row is batch row rows[j] (rows NULL: row j), g <= 64. */
pio_decoder_sample_kind pio_decoder_sample_kind_of(const pio_textgen_batch *b,
                                                   const size_t *rows, int64_t g);
/* The group's pk_sample operands on the host: params [g, PK_SAMPLE_PARAM_COUNT] F32 and
 * uniforms [g] (0 for rows that draw nothing). The rows must have passed the check. */
void pio_decoder_sample_pack(const pio_textgen_batch *b, const size_t *rows, int64_t g,
                             float *params, int64_t *uniforms);
/* found[j] (the op's ids) into b->sampled; a -1 (a row without a finite logit) is an error
 * naming the batch row. */
pio_status pio_decoder_sample_results(const pio_textgen_batch *b, const size_t *rows, int64_t g,
                                      const int32_t *found, pio_error *err);
/* Picks the group's ids from logits [g, V] on the device (the workspace's argmax buffer takes
 * them), copies them back and stores them in b->sampled. */
pio_status pio_decoder_sample_rows(pio_decoder *m, const pio_textgen_batch *b,
                                   const pk_tensor *logits, const size_t *rows, int64_t g,
                                   pio_error *err);
/* Frees the sampling buffers (with the decoder's other device memory). */
void pio_decoder_sampling_free(pio_decoder *m);

#endif
