/*
 * Tensor parallelism of a decoder on the CPU communicator (see pio_decoder_shard in
 * pio/decoder.h): the outer decoder holds the config and the full weights (mapped in place from
 * the safetensors files, or generated); each rank is a decoder of its own (context, KV pool
 * shard, workspace, communicator) whose tensors are views of its slices of those weights. A
 * forward runs every rank in a thread of its own; the rows of the output projections are
 * all-reduced in the blocks (kernels/transformer_blocks.h) and rank 0 writes the logits.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "decoder_internal.h"

pio_status pio_decoder_check_tp(const pio_decoder *d, const pio_decoder_load_options *o, int tp,
                                pio_error *err)
{
    const pio_decoder_config *c = &d->config;
    if (o->device != PK_DEVICE_CPU)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "parallel.tensor_parallel_size %d: "
                             "tensor parallelism runs on the cpu device only so far (the NCCL "
                             "path is not wired into the decoder yet)", tp);
    if (d->spec->shard == NULL)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "parallel.tensor_parallel_size %d: the "
                             "%s plugin has no tensor parallelism yet", tp, d->spec->family);
    if (c->n_heads % tp != 0)
        return pio_error_set(err, PIO_ERR_CONFIG, "parallel.tensor_parallel_size %d does not "
                             "divide num_attention_heads %ld (%s)", tp, c->n_heads, c->source);
    if (tp <= c->n_kv_heads && c->n_kv_heads % tp != 0)
        return pio_error_set(err, PIO_ERR_CONFIG, "parallel.tensor_parallel_size %d does not "
                             "divide num_key_value_heads %ld (%s)", tp, c->n_kv_heads,
                             c->source);
    if (tp > c->n_kv_heads && tp % c->n_kv_heads != 0)
        return pio_error_set(err, PIO_ERR_CONFIG, "parallel.tensor_parallel_size %d is more "
                             "than num_key_value_heads %ld and not a multiple of it (KV heads "
                             "are replicated over whole groups of ranks) (%s)", tp,
                             c->n_kv_heads, c->source);
    return PIO_OK;
}

/* Rank r's heads: q heads split evenly; KV heads split when there are at least as many as
 * ranks, else each rank takes the one KV head its q heads read (replicated). */
static pio_decoder_shard rank_shard(const pio_decoder_config *c, int r, int tp)
{
    pio_decoder_shard s = {.rank = r, .size = tp, .n_heads = c->n_heads / tp};
    s.head_offset = r * s.n_heads;
    if (tp <= c->n_kv_heads) {
        s.n_kv_heads = c->n_kv_heads / tp;
        s.kv_head_offset = r * s.n_kv_heads;
    } else {
        s.n_kv_heads = 1;
        s.kv_head_offset = s.head_offset / (c->n_heads / c->n_kv_heads);
    }
    return s;
}

pio_status pio_decoder_build_ranks(pio_decoder *d, const pio_decoder_load_options *o, int tp,
                                   pio_error *err)
{
    d->ranks = calloc((size_t)tp, sizeof *d->ranks);
    if (d->ranks == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory for the ranks");
    d->shard.size = tp; /* pio_decoder_free frees the ranks from here on */
    int threads = pk_context_threads(d->ctx) / tp;
    pio_status status = PIO_OK;
    for (int r = 0; status == PIO_OK && r < tp; r++) {
        pio_decoder_shard shard = rank_shard(&d->config, r, tp);
        status = pio_decoder_rank_create(d, &shard, o, threads > 0 ? threads : 1, &d->ranks[r],
                                         err);
    }
    pk_comm_group *group = NULL;
    if (status == PIO_OK)
        status = pk_comm_group_create(o->device, tp, NULL, &group, err);
    pk_context *ctxs[PK_COMM_MAX_RANKS];
    pk_comm *comms[PK_COMM_MAX_RANKS];
    for (int r = 0; status == PIO_OK && r < tp; r++)
        ctxs[r] = d->ranks[r]->ctx;
    if (status == PIO_OK && (status = pk_comm_create_all(group, ctxs, comms, err)) == PIO_OK)
        for (int r = 0; r < tp; r++)
            d->ranks[r]->comm = comms[r];
    pk_comm_group_release(group);
    if (status == PIO_OK)
        d->pool = d->ranks[0]->pool;
    return status;
}

pio_status pio_decoder_tp_seq_open(pio_decoder *d, int32_t *seq, pio_error *err)
{
    pio_status status = pk_kv_seq_open(d->ranks[0]->pool, seq, err);
    for (int r = 1; status == PIO_OK && r < d->shard.size; r++) {
        int32_t other = -1;
        status = pk_kv_seq_open(d->ranks[r]->pool, &other, err);
        if (status == PIO_OK && other != *seq) {
            pk_kv_seq_close(d->ranks[r]->pool, other);
            status = pio_error_set(err, PIO_ERR_INTERNAL, "tensor parallelism: rank %d opened "
                                   "sequence %d where rank 0 opened %d", r, (int)other,
                                   (int)*seq);
        }
        if (status != PIO_OK)
            for (int q = 0; q < r; q++)
                pk_kv_seq_close(d->ranks[q]->pool, *seq);
    }
    return status;
}

typedef struct rank_job {
    pio_decoder *rank;
    const pio_textgen_batch *batch;
    pio_status status;
    pio_error err;
} rank_job;

static void *run_rank(void *arg)
{
    rank_job *job = arg;
    int ran = 0;
    pio_error_clear(&job->err);
    job->status = pio_decoder_run_batch(job->rank, job->batch, &ran, &job->err);
    /* Taking KV blocks fails alike on every rank before any collective; a failure after it
     * would leave the others waiting in one: cancel the group. */
    if (job->status != PIO_OK && ran)
        pk_comm_abort(job->rank->comm);
    return NULL;
}

pio_status pio_decoder_tp_forward(pio_decoder *d, const pio_textgen_batch *b, pio_error *err)
{
    int tp = d->shard.size;
    if (d->services->should_abort(d->host))
        return pio_error_set(err, PIO_ERR_CANCELLED, "forward: interrupted");
    rank_job jobs[PK_COMM_MAX_RANKS];
    pthread_t threads[PK_COMM_MAX_RANKS];
    int started[PK_COMM_MAX_RANKS] = {0}, all_started = 1;
    for (int r = 0; r < tp; r++) {
        jobs[r] = (rank_job){.rank = d->ranks[r], .batch = b};
        started[r] = r > 0 && pthread_create(&threads[r], NULL, run_rank, &jobs[r]) == 0;
        if (r > 0 && !started[r]) { /* the ranks started meet no partner: cancel them */
            all_started = 0;
            pk_comm_abort(d->ranks[0]->comm);
            jobs[r].status = pio_error_set(&jobs[r].err, PIO_ERR_INTERNAL, "tensor "
                                           "parallelism: cannot start the thread of rank %d",
                                           r);
        }
    }
    if (all_started) /* rank 0 runs in the caller's thread */
        run_rank(&jobs[0]);
    else
        jobs[0].status = PIO_ERR_CANCELLED;
    for (int r = 1; r < tp; r++)
        if (started[r])
            pthread_join(threads[r], NULL);
    /* The first error that is not the cancellation another rank's failure caused. */
    int pick = -1;
    for (int r = 0; r < tp && pick < 0; r++)
        if (jobs[r].status != PIO_OK && jobs[r].status != PIO_ERR_CANCELLED)
            pick = r;
    for (int r = 0; r < tp && pick < 0; r++)
        if (jobs[r].status != PIO_OK)
            pick = r;
    if (pick < 0)
        return PIO_OK;
    if (err != NULL)
        *err = jobs[pick].err;
    return jobs[pick].status;
}
