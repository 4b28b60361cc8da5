/*
 * The communicator API (comm.h): groups, communicators, argument checks of every collective on
 * the calling rank, dispatch to the implementation (comm_impl.h), and the id file helpers.
 */
#include "kernels/comm_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const pk_comm_impl *impl_for(pk_device_kind device)
{
    switch (device) {
    case PK_DEVICE_CPU: return &pk_comm_cpu_impl;
#if PIO_HAVE_CUDA
    case PK_DEVICE_CUDA: return &pk_comm_nccl_impl;
#endif
    default: return NULL;
    }
}

int pk_comm_device_count(pk_device_kind device)
{
    const pk_comm_impl *impl = impl_for(device);
    return impl != NULL ? impl->device_count() : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Groups                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static void group_ref(pk_comm_group *group)
{
    __atomic_add_fetch(&group->refs, 1, __ATOMIC_RELAXED);
}

static void group_unref(pk_comm_group *group)
{
    if (__atomic_sub_fetch(&group->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    group->impl->group_fini(group);
    free(group);
}

static pio_status group_make(const char *op, pk_device_kind device, const pk_comm_id *id,
                             int size, const pk_comm_options *options, pk_comm_group **out,
                             pio_error *err)
{
    if (out == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: out is NULL", op);
    *out = NULL;
    if (size < 1 || size > PK_COMM_MAX_RANKS)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: size %d is outside 1..%d", op,
                             size, PK_COMM_MAX_RANKS);
    const pk_comm_impl *impl = impl_for(device);
    if (impl == NULL)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "%s: this build has no communicator for %s devices", op,
                             pk_device_name(device));
    if (id != NULL && impl->group_id == NULL)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "%s: the %s communicator is in-process only (no id to join)", op,
                             impl->name);
    pk_comm_group *group = calloc(1, sizeof *group);
    if (group == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "%s: out of memory", op);
    group->impl = impl;
    group->size = size;
    group->refs = 1;
    if (options != NULL)
        group->options = *options;
    pio_status status = impl->group_init(group, id, err);
    if (status != PIO_OK) {
        free(group);
        return status;
    }
    *out = group;
    return PIO_OK;
}

pio_status pk_comm_group_create(pk_device_kind device, int size, const pk_comm_options *options,
                                pk_comm_group **out, pio_error *err)
{
    return group_make("pk_comm_group_create", device, NULL, size, options, out, err);
}

pio_status pk_comm_group_from_id(pk_device_kind device, const pk_comm_id *id, int size,
                                 const pk_comm_options *options, pk_comm_group **out,
                                 pio_error *err)
{
    if (id == NULL) {
        if (out != NULL)
            *out = NULL;
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "pk_comm_group_from_id: id is NULL");
    }
    return group_make("pk_comm_group_from_id", device, id, size, options, out, err);
}

pio_status pk_comm_group_id(const pk_comm_group *group, pk_comm_id *out, pio_error *err)
{
    static const char op[] = "pk_comm_group_id";
    if (group == NULL || out == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: %s is NULL", op,
                             group == NULL ? "group" : "out");
    if (group->impl->group_id == NULL)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "%s: the %s communicator is in-process only (no id)", op,
                             group->impl->name);
    return group->impl->group_id(group, out, err);
}

void pk_comm_group_release(pk_comm_group *group)
{
    if (group != NULL)
        group_unref(group);
}

int pk_comm_group_size(const pk_comm_group *group)
{
    return group != NULL ? group->size : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Communicators                                                                              */
/* ------------------------------------------------------------------------------------------ */

static pio_status comm_alloc(const char *op, pk_comm_group *group, pk_context *ctx, int rank,
                             pk_comm **out, pio_error *err)
{
    *out = NULL;
    if (ctx == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: rank %d: ctx is NULL", op, rank);
    if (rank < 0 || rank >= group->size)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: rank %d is outside the group's 0..%d", op, rank,
                             group->size - 1);
    if (ctx->backend->device != group->impl->device)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: rank %d: the context runs on %s but the group's communicator "
                             "(%s) on %s", op, rank, pk_device_name(ctx->backend->device),
                             group->impl->name, pk_device_name(group->impl->device));
    pk_comm *comm = calloc(1, sizeof *comm);
    if (comm == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "%s: rank %d: out of memory", op, rank);
    comm->impl = group->impl;
    comm->group = group;
    comm->ctx = ctx;
    comm->rank = rank;
    comm->size = group->size;
    group_ref(group);
    *out = comm;
    return PIO_OK;
}

/* Frees a communicator whose init did not run or failed. */
static void comm_free(pk_comm *comm)
{
    if (comm == NULL)
        return;
    pk_comm_group *group = comm->group;
    free(comm);
    group_unref(group);
}

pio_status pk_comm_create(pk_comm_group *group, pk_context *ctx, int rank, pk_comm **out,
                          pio_error *err)
{
    static const char op[] = "pk_comm_create";
    if (out == NULL || group == NULL) {
        if (out != NULL)
            *out = NULL;
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: %s is NULL", op,
                             out == NULL ? "out" : "group");
    }
    pk_comm *comm = NULL;
    pio_status status = comm_alloc(op, group, ctx, rank, &comm, err);
    if (status != PIO_OK)
        return status;
    if ((status = group->impl->init(comm, err)) != PIO_OK) {
        comm_free(comm);
        return status;
    }
    *out = comm;
    return PIO_OK;
}

pio_status pk_comm_create_all(pk_comm_group *group, pk_context *const *ctxs, pk_comm **comms,
                              pio_error *err)
{
    static const char op[] = "pk_comm_create_all";
    if (group == NULL || ctxs == NULL || comms == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: %s is NULL", op,
                             group == NULL ? "group" : ctxs == NULL ? "ctxs" : "comms");
    int n = group->size;
    for (int r = 0; r < n; r++)
        comms[r] = NULL;
    pio_status status = PIO_OK;
    for (int r = 0; r < n && status == PIO_OK; r++)
        status = comm_alloc(op, group, ctxs[r], r, &comms[r], err);
    if (status == PIO_OK) {
        if (group->impl->init_all != NULL) {
            status = group->impl->init_all(group, comms, err);
        } else {
            int r = 0;
            for (; r < n && status == PIO_OK; r++)
                status = group->impl->init(comms[r], err);
            if (status != PIO_OK)
                for (int q = 0; q < r - 1; q++) { /* ranks whose init succeeded */
                    group->impl->fini(comms[q]);
                    comm_free(comms[q]);
                    comms[q] = NULL;
                }
        }
    }
    if (status != PIO_OK)
        for (int r = 0; r < n; r++) {
            comm_free(comms[r]);
            comms[r] = NULL;
        }
    return status;
}

void pk_comm_destroy(pk_comm *comm)
{
    if (comm == NULL)
        return;
    comm->impl->fini(comm);
    comm_free(comm);
}

int pk_comm_rank(const pk_comm *comm)
{
    return comm != NULL ? comm->rank : -1;
}

int pk_comm_size(const pk_comm *comm)
{
    return comm != NULL ? comm->size : 0;
}

pk_context *pk_comm_context(const pk_comm *comm)
{
    return comm != NULL ? comm->ctx : NULL;
}

const char *pk_comm_backend_name(const pk_comm *comm)
{
    return comm != NULL ? comm->impl->name : "none";
}

void pk_comm_abort(pk_comm *comm)
{
    if (comm != NULL)
        comm->impl->abort(comm);
}

/* ------------------------------------------------------------------------------------------ */
/* Collectives                                                                                */
/* ------------------------------------------------------------------------------------------ */

static pio_status check_tensor(const pk_comm *comm, const char *op, const char *name,
                               const pk_tensor *t, int float_only, pio_error *err)
{
    if (t == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: rank %d: %s is NULL", op,
                             comm->rank, name);
    if (!pk_tensor_is_valid(t))
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: rank %d: %s is not a valid tensor", op, comm->rank, name);
    if (t->device != comm->impl->device)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: rank %d: %s lives on %s but the communicator runs on %s", op,
                             comm->rank, name, pk_device_name(t->device),
                             pk_device_name(comm->impl->device));
    if (float_only && t->dtype != PIO_DTYPE_F32 && t->dtype != PIO_DTYPE_BF16)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: rank %d: %s has dtype %s (F32 or BF16 expected)", op,
                             comm->rank, name, pio_dtype_name(t->dtype));
    return PIO_OK;
}

static pio_status check_out(const pk_comm *comm, const char *op, const pk_tensor *out,
                            const pk_tensor *in, int64_t rows, int64_t cols, pio_error *err)
{
    if (out->dtype != in->dtype)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: rank %d: out has dtype %s but in %s", op, comm->rank,
                             pio_dtype_name(out->dtype), pio_dtype_name(in->dtype));
    if (out->rows != rows || out->cols != cols)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: rank %d: out is [%lld, %lld], expected [%lld, %lld]", op,
                             comm->rank, (long long)out->rows, (long long)out->cols,
                             (long long)rows, (long long)cols);
    return PIO_OK;
}

static pio_status check_call(const pk_comm *comm, const pk_comm_call *call, pio_error *err)
{
    const char *op = call->name;
    pio_status st;
    switch (call->op) {
    case PK_COMM_OP_ALL_REDUCE:
        if ((st = check_tensor(comm, op, "in", call->in, 1, err)) ||
            (st = check_tensor(comm, op, "out", call->out, 1, err)) ||
            (st = check_out(comm, op, call->out, call->in, call->in->rows, call->in->cols, err)))
            return st;
        if (pk_views_overlap(call->out, call->in) && !pk_views_same(call->out, call->in))
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "%s: rank %d: out overlaps in (only the same view may alias)",
                                 op, comm->rank);
        return PIO_OK;
    case PK_COMM_OP_ALL_GATHER: {
        if ((st = check_tensor(comm, op, "in", call->in, 0, err)) ||
            (st = check_tensor(comm, op, "out", call->out, 0, err)))
            return st;
        if (call->axis != PK_COMM_ROWS && call->axis != PK_COMM_COLS)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: rank %d: unknown axis %d",
                                 op, comm->rank, (int)call->axis);
        const pk_tensor *in = call->in;
        int rows_axis = call->axis == PK_COMM_ROWS;
        if ((st = check_out(comm, op, call->out, in, rows_axis ? in->rows * comm->size : in->rows,
                            rows_axis ? in->cols : in->cols * comm->size, err)))
            return st;
        pk_tensor own = rows_axis ? pk_tensor_rows(call->out, in->rows * comm->rank, in->rows)
                                  : pk_tensor_cols(call->out, in->cols * comm->rank, in->cols);
        if (pk_views_overlap(call->out, in) && !pk_views_same(&own, in))
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "%s: rank %d: in overlaps out without being this rank's own "
                                 "slice of it", op, comm->rank);
        return PIO_OK;
    }
    case PK_COMM_OP_BROADCAST:
        if ((st = check_tensor(comm, op, "t", call->in, 0, err)))
            return st;
        if (call->root < 0 || call->root >= comm->size)
            return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                                 "%s: rank %d: root %d is outside 0..%d", op, comm->rank,
                                 call->root, comm->size - 1);
        return PIO_OK;
    case PK_COMM_OP_BARRIER: return PIO_OK;
    }
    return pio_error_set(err, PIO_ERR_INTERNAL, "%s: unknown collective", op);
}

static pio_status run_call(pk_comm *comm, const pk_comm_call *call, pio_error *err)
{
    if (comm == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: comm is NULL", call->name);
    pio_error local;
    pio_error_clear(&local);
    if (check_call(comm, call, &local) == PIO_OK)
        return comm->impl->run(comm, call, err);
    if (comm->impl->joins_on_error) { /* let the other ranks fail rather than wait for us */
        pk_comm_call join = *call;
        join.invalid = 1;
        (void)comm->impl->run(comm, &join, NULL);
    }
    return pio_error_set(err, local.status, "%s", local.message);
}

pio_status pk_comm_all_reduce(pk_comm *comm, const pk_tensor *out, const pk_tensor *in,
                              pio_error *err)
{
    pk_comm_call call = {PK_COMM_OP_ALL_REDUCE, "pk_comm_all_reduce", out, in, PK_COMM_ROWS, 0, 0};
    return run_call(comm, &call, err);
}

pio_status pk_comm_all_gather(pk_comm *comm, const pk_tensor *out, const pk_tensor *in,
                              pk_comm_axis axis, pio_error *err)
{
    pk_comm_call call = {PK_COMM_OP_ALL_GATHER, "pk_comm_all_gather", out, in, axis, 0, 0};
    return run_call(comm, &call, err);
}

pio_status pk_comm_broadcast(pk_comm *comm, const pk_tensor *t, int root, pio_error *err)
{
    pk_comm_call call = {PK_COMM_OP_BROADCAST, "pk_comm_broadcast", t, t, PK_COMM_ROWS, root, 0};
    return run_call(comm, &call, err);
}

pio_status pk_comm_barrier(pk_comm *comm, pio_error *err)
{
    pk_comm_call call = {PK_COMM_OP_BARRIER, "pk_comm_barrier", NULL, NULL, PK_COMM_ROWS, 0, 0};
    return run_call(comm, &call, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Id files                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static const char id_magic[8] = {'P', 'I', 'O', 'C', 'O', 'M', 'M', '1'};

pio_status pk_comm_id_write_file(const char *path, const pk_comm_id *id, pio_error *err)
{
    static const char op[] = "pk_comm_id_write_file";
    if (path == NULL || id == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: %s is NULL", op,
                             path == NULL ? "path" : "id");
    size_t len = strlen(path);
    char *tmp = malloc(len + 32);
    if (tmp == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "%s: out of memory", op);
    snprintf(tmp, len + 32, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        pio_status st = pio_error_set(err, PIO_ERR_IO, "%s: %s: %s", op, tmp, strerror(errno));
        free(tmp);
        return st;
    }
    unsigned char buf[sizeof id_magic + PK_COMM_ID_BYTES];
    memcpy(buf, id_magic, sizeof id_magic);
    memcpy(buf + sizeof id_magic, id->bytes, PK_COMM_ID_BYTES);
    ssize_t n = write(fd, buf, sizeof buf);
    int saved = errno;
    int sync_failed = n == (ssize_t)sizeof buf && fsync(fd) != 0;
    if (close(fd) != 0 || n != (ssize_t)sizeof buf || sync_failed) {
        pio_status st = pio_error_set(err, PIO_ERR_IO, "%s: %s: %s", op, tmp,
                                      n < 0 ? strerror(saved) : "short write");
        unlink(tmp);
        free(tmp);
        return st;
    }
    if (rename(tmp, path) != 0) {
        pio_status st = pio_error_set(err, PIO_ERR_IO, "%s: rename to %s: %s", op, path,
                                      strerror(errno));
        unlink(tmp);
        free(tmp);
        return st;
    }
    free(tmp);
    return PIO_OK;
}

pio_status pk_comm_id_read_file(const char *path, int timeout_ms, pk_comm_id *out, pio_error *err)
{
    static const char op[] = "pk_comm_id_read_file";
    if (path == NULL || out == NULL)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: %s is NULL", op,
                             path == NULL ? "path" : "out");
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int fd;
    for (;;) {
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0)
            break;
        if (errno != ENOENT)
            return pio_error_set(err, PIO_ERR_IO, "%s: %s: %s", op, path, strerror(errno));
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long waited = (now.tv_sec - start.tv_sec) * 1000LL +
                           (now.tv_nsec - start.tv_nsec) / 1000000LL;
        if (waited >= timeout_ms)
            return pio_error_set(err, PIO_ERR_NOT_FOUND, "%s: %s did not appear within %d ms",
                                 op, path, timeout_ms > 0 ? timeout_ms : 0);
        struct timespec nap = {0, 10 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    unsigned char buf[sizeof id_magic + PK_COMM_ID_BYTES + 1];
    ssize_t n = read(fd, buf, sizeof buf);
    int saved = errno;
    close(fd);
    if (n < 0)
        return pio_error_set(err, PIO_ERR_IO, "%s: %s: %s", op, path, strerror(saved));
    if (n != (ssize_t)(sizeof buf - 1) || memcmp(buf, id_magic, sizeof id_magic) != 0)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "%s: %s is not a communicator id file (%zd bytes; %zu expected, "
                             "starting with PIOCOMM1)", op, path, n, sizeof buf - 1);
    memcpy(out->bytes, buf + sizeof id_magic, PK_COMM_ID_BYTES);
    return PIO_OK;
}
