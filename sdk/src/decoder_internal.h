/* Between the decoder's files (sdk/src/decoder_*.c): tensor parallelism (decoder_tp.c). */
#ifndef PIO_DECODER_INTERNAL_H
#define PIO_DECODER_INTERNAL_H

#include "pio/decoder.h"

/* decoder_tp.c: refuses a tensor-parallel size the model or the build cannot take, before any
 * weight is read (errors name the YAML key, the config.json key and the numbers). */
pio_status pio_decoder_check_tp(const pio_decoder *d, const pio_decoder_load_options *o, int tp,
                                pio_error *err);
/* decoder_tp.c: the rank decoders of d (whose full weights are loaded) and their
 * communicators; d->pool becomes rank 0's. */
pio_status pio_decoder_build_ranks(pio_decoder *d, const pio_decoder_load_options *o, int tp,
                                   pio_error *err);
/* decoder_tp.c: one sequence id opened on every rank's pool (the same id on each). */
pio_status pio_decoder_tp_seq_open(pio_decoder *d, int32_t *seq, pio_error *err);
/* decoder_tp.c: a checked batch through every rank, one thread each. */
pio_status pio_decoder_tp_forward(pio_decoder *d, const pio_textgen_batch *b, pio_error *err);

/* decoder_model.c: one rank (see pio_decoder_shard). */
pio_status pio_decoder_rank_create(const pio_decoder *full, const pio_decoder_shard *shard,
                                   const pio_decoder_load_options *o, int n_threads,
                                   pio_decoder **out, pio_error *err);
/* decoder_forward.c: a checked batch through this decoder's layers (KV blocks taken, rolled
 * back on failure). *ran is set once the KV blocks are taken (ranks then run collectives). */
pio_status pio_decoder_run_batch(pio_decoder *m, const pio_textgen_batch *b, int *ran,
                                 pio_error *err);

#endif
