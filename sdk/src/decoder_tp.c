/*
 * Tensor parallelism of a decoder (see pio_decoder_shard in pio/decoder.h): the outer decoder
 * holds the config and the full weights in host memory (mapped in place from the safetensors
 * files, or generated); each rank is a decoder of its own (context, KV pool shard, workspace,
 * communicator) whose tensors are views of its slices of those weights on the cpu device, or
 * copies of those slices on its GPU on the cuda device (parallel.devices says which GPU).
 *
 * Ranks 1..N-1 run on persistent threads made at load and joined at free (a thread per rank
 * per forward would cost a thread start per decode step, and a GPU's current device is per
 * thread); rank 0 runs in the caller's thread. A forward hands the batch to the threads, runs
 * rank 0, then waits for the others. The rows of the output projections are all-reduced in the
 * blocks (kernels/transformer_blocks.h) and rank 0 writes the logits.
 *
 * Communicators: the CPU one in-process, or NCCL with one communicator per GPU, all made from
 * the loading thread (pk_comm_create_all groups the ncclCommInitRank calls); afterwards each
 * rank's thread issues its own collectives on its own stream.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decoder_internal.h"

int pio_decoder_uses_ranks(const pio_decoder_load_options *o)
{
    return o->tensor_parallel_size > 1 || o->force_ranks;
}

/* Rank r's CUDA ordinal: parallel.devices[r], else the device's ordinal + r. */
static int rank_device(const pio_decoder_load_options *o, int r)
{
    return o->n_devices > 0 ? o->devices[r] : o->device_index + r;
}

void pio_decoder_note_unused_devices(const pio_decoder *d, const pio_decoder_load_options *o)
{
    if (o->n_devices == 0 || (o->device == PK_DEVICE_CUDA && pio_decoder_uses_ranks(o)))
        return;
    char line[256];
    snprintf(line, sizeof line, "parallel.devices is ignored: %s",
             o->device != PK_DEVICE_CUDA
                 ? "it lists CUDA ordinals and the device is cpu"
                 : "tensor_parallel_size is 1 (device cuda:N picks the GPU; "
                   "parallel.force_ranks: true would read the list)");
    d->services->log(d->host, PIO_LOG_WARN, line);
}

/* One CUDA ordinal per rank, no GPU twice, every one present on this machine. */
static pio_status check_devices(const pio_decoder_load_options *o, int tp, pio_error *err)
{
    if (o->n_devices > 0 && o->n_devices != tp)
        return pio_error_set(err, PIO_ERR_CONFIG, "parallel.devices lists %d GPU%s but "
                             "parallel.tensor_parallel_size is %d: give one CUDA ordinal per "
                             "rank", o->n_devices, o->n_devices == 1 ? "" : "s", tp);
    for (int r = 1; r < tp; r++)
        for (int q = 0; q < r; q++)
            if (rank_device(o, r) == rank_device(o, q))
                return pio_error_set(err, PIO_ERR_CONFIG, "parallel.devices: CUDA ordinal %d "
                                     "is listed twice (ranks %d and %d); each rank needs a GPU "
                                     "of its own", rank_device(o, r), q, r);
    int count = pk_comm_device_count(PK_DEVICE_CUDA);
    for (int r = 0; r < tp; r++) {
        int gpu = rank_device(o, r);
        const char *source = o->n_devices > 0 ? "" : " (parallel.devices is unset: rank r "
                                                     "runs on the device's ordinal + r)";
        if (gpu < count)
            continue;
        if (count == 0)
            return pio_error_set(err, PIO_ERR_UNSUPPORTED, "parallel.devices: rank %d would run "
                                 "on cuda:%d, but %s%s", r, gpu,
                                 pk_backend_available(PK_DEVICE_CUDA)
                                     ? "no CUDA device is usable on this machine"
                                     : "this build has no CUDA backend", source);
        return pio_error_set(err, PIO_ERR_CONFIG, "parallel.devices: rank %d would run on "
                             "cuda:%d, but the machine has %d CUDA device%s (cuda:0 to "
                             "cuda:%d)%s", r, gpu, count, count == 1 ? "" : "s", count - 1,
                             source);
    }
    return PIO_OK;
}

pio_status pio_decoder_check_tp(const pio_decoder *d, const pio_decoder_load_options *o, int tp,
                                pio_error *err)
{
    const pio_decoder_config *c = &d->config;
    if (o->device != PK_DEVICE_CPU && o->device != PK_DEVICE_CUDA)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "parallel.tensor_parallel_size %d: "
                             "tensor parallelism runs on the cpu and cuda devices only", tp);
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
    return o->device == PK_DEVICE_CUDA ? check_devices(o, tp, err) : PIO_OK;
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

/* ------------------------------------------------------------------------------------------ */
/* The rank threads                                                                           */
/* ------------------------------------------------------------------------------------------ */

typedef struct pio_decoder_workers pio_decoder_workers;

/* One rank's part of a forward. */
typedef struct rank_job {
    pio_decoder_workers *owner;
    pio_decoder *outer;
    pio_decoder *rank;
    pio_status status;
    pio_error err;
} rank_job;

/* Ranks 1..N-1 wait on `wake` for the next forward (a new generation), run it and report on
 * `done` when the last of them finishes; `stop` ends them. */
struct pio_decoder_workers {
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    const pio_textgen_batch *batch; /* the forward handed out */
    unsigned long generation;       /* forwards handed out so far */
    int busy;                       /* threads still running the current forward */
    int stop;
    int n_ranks;
    int n_started;                  /* threads[1..n_started] were started */
    pthread_t threads[PK_COMM_MAX_RANKS];
    rank_job jobs[PK_COMM_MAX_RANKS];
};

/* A failure after the KV blocks were taken would leave the other ranks waiting in (or, on a
 * GPU, behind) a collective: cancel every rank's communicator. NCCL does not pass an abort on
 * to the other ranks of a group, hence one pk_comm_abort per rank. */
static void cancel_ranks(pio_decoder *outer)
{
    for (int r = 0; r < outer->shard.size; r++)
        pk_comm_abort(outer->ranks[r]->comm);
}

static void run_rank(rank_job *job, const pio_textgen_batch *batch)
{
    int ran = 0;
    pio_error_clear(&job->err);
    job->status = pio_decoder_run_batch(job->rank, batch, &ran, &job->err);
    /* Taking KV blocks fails alike on every rank before any collective. */
    if (job->status != PIO_OK && ran)
        cancel_ranks(job->outer);
}

static void *rank_thread(void *arg)
{
    rank_job *job = arg;
    pio_decoder_workers *w = job->owner;
    unsigned long seen = 0;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->stop && w->generation == seen)
            pthread_cond_wait(&w->wake, &w->lock);
        if (w->stop)
            break;
        seen = w->generation;
        const pio_textgen_batch *batch = w->batch;
        pthread_mutex_unlock(&w->lock);
        run_rank(job, batch);
        pthread_mutex_lock(&w->lock);
        if (--w->busy == 0)
            pthread_cond_signal(&w->done);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

void pio_decoder_stop_ranks(pio_decoder *d)
{
    pio_decoder_workers *w = d->workers;
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->lock);
    w->stop = 1;
    pthread_cond_broadcast(&w->wake);
    pthread_mutex_unlock(&w->lock);
    for (int r = 1; r <= w->n_started; r++)
        pthread_join(w->threads[r], NULL);
    pthread_cond_destroy(&w->done);
    pthread_cond_destroy(&w->wake);
    pthread_mutex_destroy(&w->lock);
    free(w);
    d->workers = NULL;
}

static pio_status start_rank_threads(pio_decoder *d, pio_error *err)
{
    pio_decoder_workers *w = calloc(1, sizeof *w);
    if (w == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory for the rank threads");
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->wake, NULL);
    pthread_cond_init(&w->done, NULL);
    w->n_ranks = d->shard.size;
    d->workers = w; /* pio_decoder_stop_ranks joins what was started from here on */
    for (int r = 0; r < w->n_ranks; r++)
        w->jobs[r] = (rank_job){.owner = w, .outer = d, .rank = d->ranks[r]};
    for (int r = 1; r < w->n_ranks; r++) {
        int e = pthread_create(&w->threads[r], NULL, rank_thread, &w->jobs[r]);
        if (e != 0)
            return pio_error_set(err, PIO_ERR_INTERNAL, "tensor parallelism: cannot start the "
                                 "thread of rank %d: %s", r, strerror(e));
        w->n_started = r;
        char name[24]; /* what top and gdb show: "pio-rank63" at most, within Linux's 15 */
        snprintf(name, sizeof name, "pio-rank%d", r);
        pthread_setname_np(w->threads[r], name);
    }
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Building the ranks                                                                         */
/* ------------------------------------------------------------------------------------------ */

/* One group on the ranks' device and every rank's communicator, made from this thread. */
static pio_status connect_ranks(pio_decoder *d, pk_device_kind device, int tp, pio_error *err)
{
    pk_comm_group *group = NULL;
    pio_status status = pk_comm_group_create(device, tp, NULL, &group, err);
    if (status != PIO_OK)
        return status;
    pk_context *ctxs[PK_COMM_MAX_RANKS];
    pk_comm *comms[PK_COMM_MAX_RANKS];
    for (int r = 0; r < tp; r++)
        ctxs[r] = d->ranks[r]->ctx;
    if ((status = pk_comm_create_all(group, ctxs, comms, err)) == PIO_OK)
        for (int r = 0; r < tp; r++)
            d->ranks[r]->comm = comms[r];
    pk_comm_group_release(group);
    return status;
}

pio_status pio_decoder_build_ranks(pio_decoder *d, const pio_decoder_load_options *o, int tp,
                                   pio_error *err)
{
    d->ranks = calloc((size_t)tp, sizeof *d->ranks);
    if (d->ranks == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory for the ranks");
    d->shard.size = tp; /* pio_decoder_free frees the ranks from here on */
    int threads = pk_context_threads(d->ctx) / tp; /* the CPU's cores shared out */
    pio_status status = PIO_OK;
    for (int r = 0; status == PIO_OK && r < tp; r++) {
        pio_decoder_shard shard = rank_shard(&d->config, r, tp);
        pio_decoder_load_options rank_options = *o;
        rank_options.device_index = rank_device(o, r);
        status = pio_decoder_rank_create(d, &shard, &rank_options, threads > 0 ? threads : 1,
                                         &d->ranks[r], err);
    }
    if (status == PIO_OK && (status = connect_ranks(d, o->device, tp, err)) == PIO_OK)
        status = start_rank_threads(d, err);
    if (status == PIO_OK)
        d->pool = d->ranks[0]->pool;
    return status;
}

/* ------------------------------------------------------------------------------------------ */
/* Sequences and forwards                                                                     */
/* ------------------------------------------------------------------------------------------ */

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

/* The first error that is not the cancellation another rank's failure caused. */
static pio_status first_error(const pio_decoder_workers *w, pio_error *err)
{
    int pick = -1;
    for (int r = 0; r < w->n_ranks && pick < 0; r++)
        if (w->jobs[r].status != PIO_OK && w->jobs[r].status != PIO_ERR_CANCELLED)
            pick = r;
    for (int r = 0; r < w->n_ranks && pick < 0; r++)
        if (w->jobs[r].status != PIO_OK)
            pick = r;
    if (pick < 0)
        return PIO_OK;
    if (err != NULL)
        *err = w->jobs[pick].err;
    return w->jobs[pick].status;
}

pio_status pio_decoder_tp_forward(pio_decoder *d, const pio_textgen_batch *b, pio_error *err)
{
    pio_decoder_workers *w = d->workers;
    if (d->services->should_abort(d->host))
        return pio_error_set(err, PIO_ERR_CANCELLED, "forward: interrupted");
    pthread_mutex_lock(&w->lock);
    w->batch = b;
    w->busy = w->n_ranks - 1;
    w->generation++;
    pthread_cond_broadcast(&w->wake);
    pthread_mutex_unlock(&w->lock);
    run_rank(&w->jobs[0], b); /* rank 0 in the caller's thread */
    pthread_mutex_lock(&w->lock);
    while (w->busy > 0)
        pthread_cond_wait(&w->done, &w->lock);
    pthread_mutex_unlock(&w->lock);
    return first_error(w, err);
}
