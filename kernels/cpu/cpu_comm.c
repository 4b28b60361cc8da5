/*
 * The in-process CPU communicator (comm.h): the ranks are threads of one process and read each
 * other's tensors directly.
 *
 * Protocol of one collective (call k of every rank):
 *   1. publish: the rank writes what it was called with (op, dtype, shape, axis, root, its `in`
 *      view, whether its arguments were valid) into slots[k % 2][rank];
 *   2. barrier B1; every rank reads every slot and reaches the same verdict: if the calls
 *      disagree (or one was invalid), every rank returns PIO_ERR_INVALID_ARGUMENT;
 *   3. the data step: all_reduce sums every rank's `in` in rank order (fp32) into this rank's
 *      scratch; all_gather copies every chunk into this rank's out; broadcast copies root's t;
 *   4. barrier B2 (no rank touches its tensors again before every other rank has read them);
 *      all_reduce then writes its scratch to out (out may be in: nobody reads it any more).
 * The slots alternate between two sets, so a rank publishing call k+1 never overwrites a slot
 * of call k that a slower rank may still read (to publish k+2 it must have passed B1 of k+1,
 * which every rank reaches only after finishing its reads of call k).
 *
 * The barrier is a mutex/condvar generation counter with an abort flag and an optional timeout:
 * an abort (pk_comm_abort, or a rank that waited longer than timeout_ms) wakes every waiter with
 * PIO_ERR_CANCELLED, and every later wait fails the same way.
 */
#include "kernels/comm_impl.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct cpu_slot {
    pk_comm_op op;
    int invalid;
    pk_tensor in; /* all_reduce / all_gather input, broadcast tensor */
    pk_comm_axis axis;
    int root;
} cpu_slot;

typedef struct cpu_group {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int arrived;
    uint64_t arrived_mask;  /* ranks waiting in the current generation */
    unsigned long generation;
    int aborted;
    char reason[256];
    cpu_slot slots[2][PK_COMM_MAX_RANKS];
} cpu_group;

typedef struct cpu_comm {
    unsigned long calls; /* collectives this rank has entered */
    float *scratch;
    size_t scratch_floats;
} cpu_comm;

static cpu_group *group_of(const pk_comm *comm)
{
    return (cpu_group *)comm->group->state;
}

/* ------------------------------------------------------------------------------------------ */
/* Groups and communicators                                                                   */
/* ------------------------------------------------------------------------------------------ */

static pio_status cpu_group_init(pk_comm_group *group, const pk_comm_id *id, pio_error *err)
{
    (void)id; /* group_id is NULL: comm.c never passes one */
    cpu_group *g = calloc(1, sizeof *g);
    if (g == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "pk_comm_group_create: out of memory");
    pthread_condattr_t attr;
    int rc = pthread_condattr_init(&attr);
    if (rc == 0) {
        rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        if (rc == 0)
            rc = pthread_cond_init(&g->cv, &attr);
        pthread_condattr_destroy(&attr);
    }
    if (rc == 0 && (rc = pthread_mutex_init(&g->mu, NULL)) != 0)
        pthread_cond_destroy(&g->cv);
    if (rc != 0) {
        free(g);
        return pio_error_set(err, PIO_ERR_INTERNAL, "pk_comm_group_create: pthread init: %s",
                             strerror(rc));
    }
    group->state = g;
    return PIO_OK;
}

static void cpu_group_fini(pk_comm_group *group)
{
    cpu_group *g = group->state;
    if (g == NULL)
        return;
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g);
    group->state = NULL;
}

static pio_status cpu_init(pk_comm *comm, pio_error *err)
{
    cpu_comm *c = calloc(1, sizeof *c);
    if (c == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "pk_comm_create: rank %d: out of memory",
                             comm->rank);
    comm->state = c;
    return PIO_OK;
}

static void cpu_fini(pk_comm *comm)
{
    cpu_comm *c = comm->state;
    if (c == NULL)
        return;
    free(c->scratch);
    free(c);
    comm->state = NULL;
}

/* Sets the abort flag (mu held). */
static void abort_locked(cpu_group *g, const char *reason)
{
    if (g->aborted)
        return;
    g->aborted = 1;
    snprintf(g->reason, sizeof g->reason, "%s", reason);
    pthread_cond_broadcast(&g->cv);
}

static void cpu_abort(pk_comm *comm)
{
    cpu_group *g = group_of(comm);
    char reason[64];
    snprintf(reason, sizeof reason, "rank %d aborted", comm->rank);
    pthread_mutex_lock(&g->mu);
    abort_locked(g, reason);
    pthread_mutex_unlock(&g->mu);
}

/* ------------------------------------------------------------------------------------------ */
/* The barrier                                                                                */
/* ------------------------------------------------------------------------------------------ */

static pio_status cancelled_locked(cpu_group *g, const pk_comm *comm, const char *op,
                                   pio_error *err)
{
    return pio_error_set(err, PIO_ERR_CANCELLED, "%s: rank %d: cancelled: %s", op, comm->rank,
                         g->reason);
}

static void deadline_after(struct timespec *t, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, t);
    t->tv_sec += ms / 1000;
    t->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t->tv_nsec >= 1000000000L) {
        t->tv_sec++;
        t->tv_nsec -= 1000000000L;
    }
}

static pio_status group_wait(pk_comm *comm, const char *op, pio_error *err)
{
    cpu_group *g = group_of(comm);
    int timeout_ms = comm->group->options.timeout_ms;
    struct timespec deadline;
    if (timeout_ms > 0)
        deadline_after(&deadline, timeout_ms);
    pthread_mutex_lock(&g->mu);
    if (g->aborted) {
        pio_status st = cancelled_locked(g, comm, op, err);
        pthread_mutex_unlock(&g->mu);
        return st;
    }
    unsigned long gen = g->generation;
    if (++g->arrived == comm->size) {
        g->arrived = 0;
        g->arrived_mask = 0;
        g->generation++;
        pthread_cond_broadcast(&g->cv);
        pthread_mutex_unlock(&g->mu);
        return PIO_OK;
    }
    g->arrived_mask |= 1ull << comm->rank;
    while (g->generation == gen && !g->aborted) {
        int rc = timeout_ms > 0 ? pthread_cond_timedwait(&g->cv, &g->mu, &deadline)
                                : pthread_cond_wait(&g->cv, &g->mu);
        if (rc == ETIMEDOUT && g->generation == gen && !g->aborted) {
            char reason[256];
            int n = snprintf(reason, sizeof reason,
                             "rank %d waited %d ms in %s for rank(s)", comm->rank, timeout_ms, op);
            for (int r = 0; r < comm->size && n > 0 && (size_t)n < sizeof reason; r++)
                if (!(g->arrived_mask & (1ull << r)))
                    n += snprintf(reason + n, sizeof reason - (size_t)n, " %d", r);
            abort_locked(g, reason);
        }
    }
    pio_status st = PIO_OK;
    if (g->generation == gen)
        st = cancelled_locked(g, comm, op, err);
    pthread_mutex_unlock(&g->mu);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* Collectives                                                                                */
/* ------------------------------------------------------------------------------------------ */

static const char *op_name(pk_comm_op op)
{
    switch (op) {
    case PK_COMM_OP_ALL_REDUCE: return "pk_comm_all_reduce";
    case PK_COMM_OP_ALL_GATHER: return "pk_comm_all_gather";
    case PK_COMM_OP_BROADCAST: return "pk_comm_broadcast";
    case PK_COMM_OP_BARRIER: return "pk_comm_barrier";
    }
    return "?";
}

/* The verdict every rank reaches alike from the published slots. */
static pio_status check_agreement(const pk_comm *comm, const pk_comm_call *call,
                                  const cpu_slot *slots, pio_error *err)
{
    const char *op = call->name;
    for (int r = 0; r < comm->size; r++)
        if (slots[r].op != call->op)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "%s: rank %d: the ranks disagree: rank %d called %s", op,
                                 comm->rank, r, op_name(slots[r].op));
    for (int r = 0; r < comm->size; r++)
        if (slots[r].invalid)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "%s: rank %d: rank %d passed invalid arguments", op, comm->rank,
                                 r);
    if (call->op == PK_COMM_OP_BARRIER)
        return PIO_OK;
    const cpu_slot *s0 = &slots[0];
    for (int r = 1; r < comm->size; r++) {
        const cpu_slot *s = &slots[r];
        if (s->in.dtype != s0->in.dtype || s->in.rows != s0->in.rows ||
            s->in.cols != s0->in.cols)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "%s: rank %d: rank %d has [%lld, %lld] %s but rank 0 [%lld, "
                                 "%lld] %s", op, comm->rank, r, (long long)s->in.rows,
                                 (long long)s->in.cols, pio_dtype_name(s->in.dtype),
                                 (long long)s0->in.rows, (long long)s0->in.cols,
                                 pio_dtype_name(s0->in.dtype));
        if (call->op == PK_COMM_OP_ALL_GATHER && s->axis != s0->axis)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "%s: rank %d: rank %d gathers along %s but rank 0 along %s", op,
                                 comm->rank, r, s->axis == PK_COMM_ROWS ? "rows" : "columns",
                                 s0->axis == PK_COMM_ROWS ? "rows" : "columns");
        if (call->op == PK_COMM_OP_BROADCAST && s->root != s0->root)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "%s: rank %d: rank %d broadcasts from root %d but rank 0 from "
                                 "root %d", op, comm->rank, r, s->root, s0->root);
    }
    return PIO_OK;
}

static const void *row_ptr(const pk_tensor *t, int64_t row)
{
    return (const char *)t->data + (size_t)(row * t->stride) * pio_dtype_size(t->dtype);
}

/* dst = src (same dtype and shape); identical memory is left alone. */
static void copy_view(const pk_tensor *dst, const pk_tensor *src)
{
    size_t row_bytes = (size_t)src->cols * pio_dtype_size(src->dtype);
    for (int64_t i = 0; i < src->rows; i++) {
        void *d = (void *)row_ptr(dst, i);
        const void *s = row_ptr(src, i);
        if (d != s && row_bytes > 0)
            memcpy(d, s, row_bytes);
    }
}

/* scratch[i·C + j] = Σ_r in_r[i, j] in rank order, fp32. */
static pio_status reduce_into_scratch(pk_comm *comm, const cpu_slot *slots, pio_error *err)
{
    cpu_comm *c = comm->state;
    const pk_tensor *first = &slots[0].in;
    size_t n = (size_t)first->rows * (size_t)first->cols;
    if (n > c->scratch_floats) {
        float *grown = realloc(c->scratch, n * sizeof *grown);
        if (grown == NULL)
            return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY,
                                 "pk_comm_all_reduce: rank %d: out of memory (%zu floats)",
                                 comm->rank, n);
        c->scratch = grown;
        c->scratch_floats = n;
    }
    int64_t rows = first->rows, cols = first->cols;
    for (int64_t i = 0; i < rows; i++) {
        float *acc = c->scratch + i * cols;
        for (int r = 0; r < comm->size; r++) {
            const pk_tensor *t = &slots[r].in;
            if (t->dtype == PIO_DTYPE_F32) {
                const float *x = row_ptr(t, i);
                if (r == 0)
                    memcpy(acc, x, (size_t)cols * sizeof *acc);
                else
                    for (int64_t j = 0; j < cols; j++)
                        acc[j] += x[j];
            } else {
                const uint16_t *x = row_ptr(t, i);
                if (r == 0)
                    for (int64_t j = 0; j < cols; j++)
                        acc[j] = pio_bf16_to_f32(x[j]);
                else
                    for (int64_t j = 0; j < cols; j++)
                        acc[j] += pio_bf16_to_f32(x[j]);
            }
        }
    }
    return PIO_OK;
}

static void scratch_to_out(const pk_comm *comm, const pk_tensor *out)
{
    const cpu_comm *c = comm->state;
    for (int64_t i = 0; i < out->rows; i++) {
        const float *acc = c->scratch + i * out->cols;
        if (out->dtype == PIO_DTYPE_F32) {
            memcpy((void *)row_ptr(out, i), acc, (size_t)out->cols * sizeof *acc);
        } else {
            uint16_t *y = (uint16_t *)row_ptr(out, i);
            for (int64_t j = 0; j < out->cols; j++)
                y[j] = pio_f32_to_bf16(acc[j]);
        }
    }
}

static pio_status cpu_run(pk_comm *comm, const pk_comm_call *call, pio_error *err)
{
    cpu_comm *c = comm->state;
    cpu_group *g = group_of(comm);
    cpu_slot *slots = g->slots[c->calls++ & 1];

    cpu_slot *mine = &slots[comm->rank];
    memset(mine, 0, sizeof *mine);
    mine->op = call->op;
    mine->invalid = call->invalid;
    if (!call->invalid && call->in != NULL)
        mine->in = *call->in;
    mine->axis = call->axis;
    mine->root = call->root;

    pio_status st = group_wait(comm, call->name, err);
    if (st != PIO_OK)
        return st;
    if ((st = check_agreement(comm, call, slots, err)) != PIO_OK || call->op == PK_COMM_OP_BARRIER)
        return st;

    pio_status data_st = PIO_OK;
    pio_error data_err;
    pio_error_clear(&data_err);
    switch (call->op) {
    case PK_COMM_OP_ALL_REDUCE: data_st = reduce_into_scratch(comm, slots, &data_err); break;
    case PK_COMM_OP_ALL_GATHER:
        for (int r = 0; r < comm->size; r++) {
            const pk_tensor *in = &slots[r].in;
            pk_tensor dst = call->axis == PK_COMM_ROWS
                                ? pk_tensor_rows(call->out, in->rows * r, in->rows)
                                : pk_tensor_cols(call->out, in->cols * r, in->cols);
            copy_view(&dst, in);
        }
        break;
    case PK_COMM_OP_BROADCAST:
        if (comm->rank != call->root)
            copy_view(call->out, &slots[call->root].in);
        break;
    case PK_COMM_OP_BARRIER: break;
    }
    /* B2 even when this rank's data step failed: the others must not wait for it. */
    if ((st = group_wait(comm, call->name, err)) != PIO_OK)
        return st;
    if (data_st != PIO_OK)
        return pio_error_set(err, data_st, "%s", data_err.message);
    if (call->op == PK_COMM_OP_ALL_REDUCE)
        scratch_to_out(comm, call->out);
    return PIO_OK;
}

/* The CPU's ranks are threads of this process: one "device". */
static int cpu_device_count(void)
{
    return 1;
}

const pk_comm_impl pk_comm_cpu_impl = {
    .name = "cpu",
    .device = PK_DEVICE_CPU,
    .joins_on_error = 1,
    .group_init = cpu_group_init,
    .group_fini = cpu_group_fini,
    .group_id = NULL,
    .init = cpu_init,
    .init_all = NULL,
    .fini = cpu_fini,
    .abort = cpu_abort,
    .run = cpu_run,
    .device_count = cpu_device_count,
};
