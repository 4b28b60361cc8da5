/*
 * The NCCL communicator (comm.h): one ncclComm_t per rank, each on its own GPU, every collective
 * queued on the rank's context stream (nothing waits on the host except pk_comm_barrier).
 *
 * Bootstrap: the group holds one ncclUniqueId, made by ncclGetUniqueId when the group is created
 * in this process, or taken from pk_comm_group_from_id (another process wrote it with
 * pk_comm_id_write_file). Every rank calls ncclCommInitRank with it (pk_comm_create from each
 * rank's thread, or pk_comm_create_all inside ncclGroupStart/End from one thread).
 * NCCL_NVLS_ENABLE=0 is put in the environment (when unset) before NCCL sees it: no NVLink
 * multicast objects are ever created.
 *
 * Data paths: contiguous tensors go to NCCL as they are; strided views are staged through a
 * per-communicator device scratch (cudaMemcpy2DAsync). BF16 all-reduce is widened to fp32 in the
 * scratch, reduced in fp32 and rounded back (RNE, the CPU's bit pattern), so the accumulation is
 * fp32 as comm.h promises. The scratch grows on demand (cudaMalloc): warm up the largest shapes
 * before capturing a CUDA graph.
 *
 * Abort: pk_comm_abort calls ncclCommAbort on the rank's communicator and marks the group, so
 * later calls of every rank of this process return PIO_ERR_CANCELLED. Ranks whose GPU work is
 * already waiting on the aborted rank need their own pk_comm_abort (NCCL does not propagate it).
 */
#include "kernels/comm_impl.h"
#include "kernels/cuda/cuda_internal.h"

#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static_assert(sizeof(ncclUniqueId) == PK_COMM_ID_BYTES, "pk_comm_id must hold an ncclUniqueId");

struct nccl_group {
    ncclUniqueId id;
    int aborted_by; /* -1, or the rank that aborted (atomic) */
};

struct nccl_comm {
    ncclComm_t comm;
    int aborted; /* ncclCommAbort was called (atomic) */
    void *scratch;
    size_t scratch_bytes;
};

static nccl_group *group_of(const pk_comm *comm)
{
    return (nccl_group *)comm->group->state;
}

static nccl_comm *state_of(const pk_comm *comm)
{
    return (nccl_comm *)comm->state;
}

static pio_status nccl_fail(const pk_comm *comm, const char *op, const char *what,
                            ncclResult_t r, pio_error *err)
{
    if (r == ncclSuccess)
        return PIO_OK;
    const char *detail = comm != NULL && comm->state != NULL && state_of(comm)->comm != NULL
                             ? ncclGetLastError(state_of(comm)->comm)
                             : ncclGetLastError(NULL);
    pio_status status = r == ncclInvalidArgument || r == ncclInvalidUsage
                            ? PIO_ERR_INVALID_ARGUMENT
                            : PIO_ERR_DEVICE;
    return pio_error_set(err, status, "%s: rank %d: %s failed: %s%s%s", op,
                         comm != NULL ? comm->rank : -1, what, ncclGetErrorString(r),
                         detail != NULL && detail[0] ? ": " : "", detail != NULL ? detail : "");
}

/* ------------------------------------------------------------------------------------------ */
/* Groups and communicators                                                                   */
/* ------------------------------------------------------------------------------------------ */

static pio_status nccl_group_init(pk_comm_group *group, const pk_comm_id *id, pio_error *err)
{
    const char *op = id != NULL ? "pk_comm_group_from_id" : "pk_comm_group_create";
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count <= 0) {
        (void)cudaGetLastError();
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: no usable cuda device (%s)", op,
                             e != cudaSuccess ? cudaGetErrorString(e) : "the driver lists none");
    }
    /* Before NCCL reads its environment: never NVLink SHARP / multicast (NVLS). An explicit
     * setting is kept. Group creation is single-threaded, so setenv is safe here. */
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    nccl_group *g = (nccl_group *)calloc(1, sizeof *g);
    if (g == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "%s: out of memory", op);
    g->aborted_by = -1;
    if (id != NULL) {
        memcpy(&g->id, id->bytes, sizeof g->id);
    } else {
        ncclResult_t r = ncclGetUniqueId(&g->id);
        if (r != ncclSuccess) {
            free(g);
            return nccl_fail(NULL, op, "ncclGetUniqueId", r, err);
        }
    }
    group->state = g;
    return PIO_OK;
}

static void nccl_group_fini(pk_comm_group *group)
{
    free(group->state);
    group->state = NULL;
}

static pio_status nccl_group_id(const pk_comm_group *group, pk_comm_id *out, pio_error *err)
{
    (void)err;
    memcpy(out->bytes, &((const nccl_group *)group->state)->id, PK_COMM_ID_BYTES);
    return PIO_OK;
}

static pio_status check_cuda_context(const pk_comm *comm, const char *op, pio_error *err)
{
    if (comm->ctx->backend != &pk_cuda_backend)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: rank %d: the context is not a CUDA backend context (%s)", op,
                             comm->rank, comm->ctx->backend->name);
    return PIO_OK;
}

static pio_status nccl_init(pk_comm *comm, pio_error *err)
{
    static const char op[] = "pk_comm_create";
    pio_status st = check_cuda_context(comm, op, err);
    if (st != PIO_OK || (st = pk_cuda_enter(comm->ctx, op, err)) != PIO_OK)
        return st;
    nccl_comm *c = (nccl_comm *)calloc(1, sizeof *c);
    if (c == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "%s: rank %d: out of memory", op,
                             comm->rank);
    comm->state = c;
    ncclResult_t r = ncclCommInitRank(&c->comm, comm->size, group_of(comm)->id, comm->rank);
    if (r != ncclSuccess) {
        st = nccl_fail(comm, op, "ncclCommInitRank", r, err);
        free(c);
        comm->state = NULL;
        return st;
    }
    return PIO_OK;
}

static void nccl_fini(pk_comm *comm)
{
    nccl_comm *c = state_of(comm);
    if (c == NULL)
        return;
    if (pk_cuda_enter(comm->ctx, "pk_comm_destroy", NULL) == PIO_OK && c->scratch != NULL)
        (void)cudaFree(c->scratch);
    if (c->comm != NULL && !__atomic_load_n(&c->aborted, __ATOMIC_ACQUIRE))
        (void)ncclCommDestroy(c->comm);
    (void)cudaGetLastError();
    free(c);
    comm->state = NULL;
}

static pio_status nccl_init_all(pk_comm_group *group, pk_comm *const *comms, pio_error *err)
{
    static const char op[] = "pk_comm_create_all";
    int n = group->size;
    pio_status st = PIO_OK;
    for (int r = 0; r < n && st == PIO_OK; r++) {
        st = check_cuda_context(comms[r], op, err);
        if (st == PIO_OK && (comms[r]->state = calloc(1, sizeof(nccl_comm))) == NULL)
            st = pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "%s: rank %d: out of memory", op, r);
    }
    ncclResult_t r = ncclSuccess;
    int failed_rank = -1;
    if (st == PIO_OK) {
        const nccl_group *g = (const nccl_group *)group->state;
        ncclGroupStart();
        for (int q = 0; q < n && st == PIO_OK && r == ncclSuccess; q++) {
            st = pk_cuda_enter(comms[q]->ctx, op, err);
            if (st == PIO_OK)
                r = ncclCommInitRank(&state_of(comms[q])->comm, n, g->id, q);
            failed_rank = q;
        }
        ncclResult_t end = ncclGroupEnd();
        if (st == PIO_OK && r != ncclSuccess)
            st = nccl_fail(comms[failed_rank], op, "ncclCommInitRank", r, err);
        else if (st == PIO_OK && end != ncclSuccess)
            st = nccl_fail(NULL, op, "ncclGroupEnd", end, err);
    }
    if (st != PIO_OK)
        for (int q = 0; q < n; q++) {
            nccl_comm *c = state_of(comms[q]);
            if (c == NULL)
                continue;
            if (c->comm != NULL)
                (void)ncclCommAbort(c->comm);
            free(c);
            comms[q]->state = NULL;
        }
    return st;
}

static void nccl_abort(pk_comm *comm)
{
    nccl_group *g = group_of(comm);
    int none = -1;
    __atomic_compare_exchange_n(&g->aborted_by, &none, comm->rank, 0, __ATOMIC_ACQ_REL,
                                __ATOMIC_ACQUIRE);
    nccl_comm *c = state_of(comm);
    if (c != NULL && c->comm != NULL && !__atomic_exchange_n(&c->aborted, 1, __ATOMIC_ACQ_REL))
        (void)ncclCommAbort(c->comm);
}

/* ------------------------------------------------------------------------------------------ */
/* Collectives                                                                                */
/* ------------------------------------------------------------------------------------------ */

static __device__ uint16_t f32_to_bf16_rne(float value)
{
    uint32_t bits = __float_as_uint(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((bits >> 16) | 0x0040u);
    uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)((bits + rounding) >> 16);
}

/* dst [rows·cols] contiguous F32 = src [rows, cols] BF16 with row stride. */
static __global__ void widen_bf16(float *dst, const uint16_t *src, int64_t rows, int64_t cols,
                                  int64_t stride)
{
    int64_t n = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t row = i / cols, col = i % cols;
        dst[i] = __uint_as_float((uint32_t)src[row * stride + col] << 16);
    }
}

static __global__ void narrow_bf16(uint16_t *dst, const float *src, int64_t rows, int64_t cols,
                                   int64_t stride)
{
    int64_t n = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t row = i / cols, col = i % cols;
        dst[row * stride + col] = f32_to_bf16_rne(src[i]);
    }
}

static unsigned grid_for(int64_t n)
{
    int64_t blocks = (n + 255) / 256;
    return (unsigned)(blocks < 1 ? 1 : blocks > 4096 ? 4096 : blocks);
}

static size_t elem_size(const pk_tensor *t)
{
    return pio_dtype_size(t->dtype);
}

static size_t view_bytes(const pk_tensor *t)
{
    return (size_t)t->rows * (size_t)t->cols * elem_size(t);
}

/* Rows are back to back (a single row always is). */
static int dense(const pk_tensor *t)
{
    return t->rows <= 1 || t->stride == t->cols;
}

static pio_status scratch(pk_comm *comm, size_t bytes, const char *op, void **out, pio_error *err)
{
    nccl_comm *c = state_of(comm);
    if (bytes > c->scratch_bytes) {
        void *grown = NULL;
        pio_status st = pk_cuda_fail(comm->ctx, op, "cudaMalloc (communicator scratch)",
                                     cudaMalloc(&grown, bytes), err);
        if (st != PIO_OK)
            return st;
        if (c->scratch != NULL)
            (void)cudaFree(c->scratch);
        c->scratch = grown;
        c->scratch_bytes = bytes;
    }
    *out = c->scratch;
    return PIO_OK;
}

/* Copies between a view and contiguous memory on the context stream. */
static pio_status copy_2d(pk_comm *comm, const char *op, void *dst, size_t dst_pitch,
                          const void *src, size_t src_pitch, size_t width, int64_t rows,
                          pio_error *err)
{
    if (width == 0 || rows == 0 || dst == src)
        return PIO_OK;
    cudaStream_t stream = pk_cuda_state_of(comm->ctx)->stream;
    return pk_cuda_fail(comm->ctx, op, "cudaMemcpy2DAsync",
                        cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, (size_t)rows,
                                          cudaMemcpyDeviceToDevice, stream),
                        err);
}

static pio_status view_to_dense(pk_comm *comm, const char *op, void *dst, const pk_tensor *t,
                                pio_error *err)
{
    size_t e = elem_size(t);
    return copy_2d(comm, op, dst, (size_t)t->cols * e, t->data, (size_t)t->stride * e,
                   (size_t)t->cols * e, t->rows, err);
}

static pio_status dense_to_view(pk_comm *comm, const char *op, const pk_tensor *t,
                                const void *src, pio_error *err)
{
    size_t e = elem_size(t);
    return copy_2d(comm, op, t->data, (size_t)t->stride * e, src, (size_t)t->cols * e,
                   (size_t)t->cols * e, t->rows, err);
}

static pio_status all_reduce(pk_comm *comm, const pk_comm_call *call, pio_error *err)
{
    const char *op = call->name;
    const pk_tensor *in = call->in, *out = call->out;
    ncclComm_t nc = state_of(comm)->comm;
    cudaStream_t stream = pk_cuda_state_of(comm->ctx)->stream;
    size_t n = (size_t)in->rows * (size_t)in->cols;
    if (n == 0)
        return PIO_OK;
    if (in->dtype == PIO_DTYPE_F32 && dense(in) && dense(out))
        return nccl_fail(comm, op, "ncclAllReduce",
                         ncclAllReduce(in->data, out->data, n, ncclFloat32, ncclSum, nc, stream),
                         err);
    void *buf = NULL;
    pio_status st = scratch(comm, n * sizeof(float), op, &buf, err);
    if (st != PIO_OK)
        return st;
    if (in->dtype == PIO_DTYPE_F32) {
        st = view_to_dense(comm, op, buf, in, err);
    } else {
        widen_bf16<<<grid_for((int64_t)n), 256, 0, stream>>>(
            (float *)buf, (const uint16_t *)in->data, in->rows, in->cols, in->stride);
        st = pk_cuda_check_launch(comm->ctx, op, err);
    }
    if (st != PIO_OK ||
        (st = nccl_fail(comm, op, "ncclAllReduce",
                        ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, nc, stream), err)))
        return st;
    if (out->dtype == PIO_DTYPE_F32)
        return dense_to_view(comm, op, out, buf, err);
    narrow_bf16<<<grid_for((int64_t)n), 256, 0, stream>>>(
        (uint16_t *)out->data, (const float *)buf, out->rows, out->cols, out->stride);
    return pk_cuda_check_launch(comm->ctx, op, err);
}

static pio_status all_gather(pk_comm *comm, const pk_comm_call *call, pio_error *err)
{
    const char *op = call->name;
    const pk_tensor *in = call->in, *out = call->out;
    ncclComm_t nc = state_of(comm)->comm;
    cudaStream_t stream = pk_cuda_state_of(comm->ctx)->stream;
    size_t chunk = view_bytes(in);
    if (chunk == 0)
        return PIO_OK;
    if (call->axis == PK_COMM_ROWS && dense(in) && dense(out))
        return nccl_fail(comm, op, "ncclAllGather",
                         ncclAllGather(in->data, out->data, chunk, ncclUint8, nc, stream), err);
    char *buf = NULL;
    pio_status st = scratch(comm, chunk * (size_t)comm->size, op, (void **)&buf, err);
    if (st != PIO_OK ||
        (st = view_to_dense(comm, op, buf + chunk * (size_t)comm->rank, in, err)) ||
        (st = nccl_fail(comm, op, "ncclAllGather",
                        ncclAllGather(buf + chunk * (size_t)comm->rank, buf, chunk, ncclUint8,
                                      nc, stream),
                        err)))
        return st;
    for (int r = 0; r < comm->size; r++) {
        pk_tensor dst = call->axis == PK_COMM_ROWS ? pk_tensor_rows(out, in->rows * r, in->rows)
                                                   : pk_tensor_cols(out, in->cols * r, in->cols);
        if ((st = dense_to_view(comm, op, &dst, buf + chunk * (size_t)r, err)) != PIO_OK)
            return st;
    }
    return PIO_OK;
}

static pio_status broadcast(pk_comm *comm, const pk_comm_call *call, pio_error *err)
{
    const char *op = call->name;
    const pk_tensor *t = call->in;
    ncclComm_t nc = state_of(comm)->comm;
    cudaStream_t stream = pk_cuda_state_of(comm->ctx)->stream;
    size_t bytes = view_bytes(t);
    if (bytes == 0)
        return PIO_OK;
    if (dense(t))
        return nccl_fail(comm, op, "ncclBroadcast",
                         ncclBroadcast(t->data, t->data, bytes, ncclUint8, call->root, nc,
                                       stream),
                         err);
    void *buf = NULL;
    pio_status st = scratch(comm, bytes, op, &buf, err);
    if (st != PIO_OK || (comm->rank == call->root && (st = view_to_dense(comm, op, buf, t, err))))
        return st;
    if ((st = nccl_fail(comm, op, "ncclBroadcast",
                        ncclBroadcast(buf, buf, bytes, ncclUint8, call->root, nc, stream), err)))
        return st;
    return comm->rank == call->root ? PIO_OK : dense_to_view(comm, op, t, buf, err);
}

static pio_status barrier(pk_comm *comm, const pk_comm_call *call, pio_error *err)
{
    const char *op = call->name;
    cudaStream_t stream = pk_cuda_state_of(comm->ctx)->stream;
    void *buf = NULL;
    pio_status st = scratch(comm, sizeof(float), op, &buf, err);
    if (st != PIO_OK ||
        (st = nccl_fail(comm, op, "ncclAllReduce",
                        ncclAllReduce(buf, buf, 1, ncclFloat32, ncclSum, state_of(comm)->comm,
                                      stream),
                        err)))
        return st;
    return pk_cuda_fail(comm->ctx, op, "cudaStreamSynchronize", cudaStreamSynchronize(stream),
                        err);
}

static pio_status nccl_run(pk_comm *comm, const pk_comm_call *call, pio_error *err)
{
    int by = __atomic_load_n(&group_of(comm)->aborted_by, __ATOMIC_ACQUIRE);
    if (by >= 0 || __atomic_load_n(&state_of(comm)->aborted, __ATOMIC_ACQUIRE))
        return pio_error_set(err, PIO_ERR_CANCELLED, "%s: rank %d: cancelled: rank %d aborted",
                             call->name, comm->rank, by >= 0 ? by : comm->rank);
    pio_status st = pk_cuda_enter(comm->ctx, call->name, err);
    if (st != PIO_OK)
        return st;
    switch (call->op) {
    case PK_COMM_OP_ALL_REDUCE: return all_reduce(comm, call, err);
    case PK_COMM_OP_ALL_GATHER: return all_gather(comm, call, err);
    case PK_COMM_OP_BROADCAST: return broadcast(comm, call, err);
    case PK_COMM_OP_BARRIER: return barrier(comm, call, err);
    }
    return pio_error_set(err, PIO_ERR_INTERNAL, "%s: rank %d: unknown collective", call->name,
                         comm->rank);
}

/* The GPUs the CUDA runtime lists (CUDA_VISIBLE_DEVICES applies); 0 without a driver. */
static int nccl_device_count(void)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return count;
}

extern "C" const pk_comm_impl pk_comm_nccl_impl = {
    /* name */ "nccl",
    /* device */ PK_DEVICE_CUDA,
    /* joins_on_error */ 0,
    /* group_init */ nccl_group_init,
    /* group_fini */ nccl_group_fini,
    /* group_id */ nccl_group_id,
    /* init */ nccl_init,
    /* init_all */ nccl_init_all,
    /* fini */ nccl_fini,
    /* abort */ nccl_abort,
    /* run */ nccl_run,
    /* device_count */ nccl_device_count,
};
