/*
 * Collective communication between the ranks of a tensor-parallel group (issue 8, item 1).
 *
 * A group of `size` ranks is made once (pk_comm_group_create); every rank then gets its own
 * communicator (pk_comm_create, or pk_comm_create_all from one thread), bound to that rank's
 * pk_context. Collectives are called by every rank, each from the thread that drives its
 * context, in the same order on every rank, with tensors on the rank's own device:
 *
 *   pk_comm_all_reduce   out = Σ_r in_r (sum; F32 or BF16, fp32 accumulation)
 *   pk_comm_all_gather   out = the ranks' `in` concatenated in rank order, along rows or columns
 *   pk_comm_broadcast    t = root's t on every rank
 *   pk_comm_barrier      every rank has reached it (and, on a GPU, its earlier work has finished)
 *
 * Two implementations, chosen by the group's device kind:
 *   PK_DEVICE_CPU   in-process: N threads of one process, shared memory and a barrier with an
 *                   abort flag (kernels/cpu/cpu_comm.c). Shapes, dtypes, ops and roots are
 *                   exchanged on every call, so a disagreement between ranks fails on every
 *                   rank (PIO_ERR_INVALID_ARGUMENT) instead of hanging, and a rank whose own
 *                   arguments are invalid still joins so the others fail too. Sums are taken
 *                   in rank order in fp32: results are bit-identical on every rank and run.
 *   PK_DEVICE_CUDA  NCCL (kernels/cuda/cuda_comm.cu): one ncclComm_t per GPU, on the context's
 *                   stream; collectives are queued, not waited for (pk_synchronize waits).
 *                   Nothing is exchanged besides the data: disagreeing ranks are the caller's
 *                   bug (NCCL hangs or corrupts). Results are identical on every rank but the
 *                   summation order is NCCL's. NCCL_NVLS_ENABLE=0 is set in the environment
 *                   (if unset) before the first communicator is made: no NVLink multicast.
 *
 * Errors are pio_status with a message naming the op and the rank ("pk_comm_all_reduce: rank
 * 2: ..."). pk_comm_abort on any rank cancels the group: ranks waiting in a collective, and every
 * later collective on any rank, return PIO_ERR_CANCELLED. A cancelled group stays cancelled;
 * destroy the communicators and make a new group.
 *
 * A communicator is driven by one thread at a time (like its context).
 */
#ifndef PIO_KERNELS_COMM_H
#define PIO_KERNELS_COMM_H

#include <stdint.h>

#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pk_comm_group pk_comm_group;
typedef struct pk_comm pk_comm;

typedef struct pk_comm_options {
    /* CPU: a rank that waits longer than this for the others in one collective cancels the
     * group (every rank gets PIO_ERR_CANCELLED, the message says who was missing). <= 0 waits
     * forever. Ignored by NCCL. */
    int timeout_ms;
} pk_comm_options;

/* How pk_comm_all_gather lays the ranks' chunks side by side. */
typedef enum pk_comm_axis {
    PK_COMM_ROWS = 0, /* in [R, C] -> out [size·R, C]: rank r's rows at r·R (token shards)    */
    PK_COMM_COLS = 1  /* in [R, C] -> out [R, size·C]: rank r's columns at r·C (head/vocab shards) */
} pk_comm_axis;

/* Bootstrap of a group across processes: NCCL's ncclUniqueId (128 bytes), opaque here. */
enum { PK_COMM_ID_BYTES = 128 };
typedef struct pk_comm_id {
    unsigned char bytes[PK_COMM_ID_BYTES];
} pk_comm_id;

/* ------------------------------------------------------------------------------------------ */
/* Groups and communicators                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* A new group of `size` ranks (1..PK_COMM_MAX_RANKS) on `device` (options may be NULL).
 * PIO_ERR_UNSUPPORTED when the build has no communicator for the device, or (CUDA) when no GPU
 * or driver is usable. */
enum { PK_COMM_MAX_RANKS = 64 };
pio_status pk_comm_group_create(pk_device_kind device, int size, const pk_comm_options *options,
                                pk_comm_group **out, pio_error *err);
/* How many devices a group on `device` can put ranks on: the GPUs the CUDA runtime lists for
 * PK_DEVICE_CUDA (0 when the build has no CUDA, or no driver or GPU is usable), 1 for the CPU
 * (its ranks are threads of the host). Callers check rank-to-GPU maps with it before creating
 * contexts. */
int pk_comm_device_count(pk_device_kind device);
/* Joins a group made by another process from its id (NCCL only; PIO_ERR_UNSUPPORTED for CPU). */
pio_status pk_comm_group_from_id(pk_device_kind device, const pk_comm_id *id, int size,
                                 const pk_comm_options *options, pk_comm_group **out,
                                 pio_error *err);
/* The id other processes pass to pk_comm_group_from_id (NCCL only). */
pio_status pk_comm_group_id(const pk_comm_group *group, pk_comm_id *out, pio_error *err);
/* Drops the caller's reference: the group lives on until its last communicator is destroyed. */
void pk_comm_group_release(pk_comm_group *group);
int pk_comm_group_size(const pk_comm_group *group);

/* The communicator of `rank` on ctx (whose device must be the group's). Each rank once. With
 * NCCL this blocks until every rank has called it (ncclCommInitRank): call it from each rank's
 * thread, or use pk_comm_create_all. The CPU implementation returns at once. */
pio_status pk_comm_create(pk_comm_group *group, pk_context *ctx, int rank, pk_comm **out,
                          pio_error *err);
/* All ranks' communicators from one thread: comms[r] on ctxs[r], r < group size. On failure
 * no communicator is left (every comms[r] is NULL). */
pio_status pk_comm_create_all(pk_comm_group *group, pk_context *const *ctxs, pk_comm **comms,
                              pio_error *err);
/* Releases the communicator (not collective; NULL is a no-op). */
void pk_comm_destroy(pk_comm *comm);

int pk_comm_rank(const pk_comm *comm);
int pk_comm_size(const pk_comm *comm);
pk_context *pk_comm_context(const pk_comm *comm);
/* "cpu" or "nccl". */
const char *pk_comm_backend_name(const pk_comm *comm);

/* Cancels the whole group (any thread, any time, idempotent): see the top of this file. */
void pk_comm_abort(pk_comm *comm);

/* ------------------------------------------------------------------------------------------ */
/* Collectives (every rank calls, same order, same shapes)                                    */
/* ------------------------------------------------------------------------------------------ */

/* out = Σ_r in_r, element-wise. in, out [R, C], F32 or BF16 (same dtype; BF16 is widened,
 * summed in fp32 and rounded once, to nearest even); out may be the same view as in (in place),
 * otherwise no overlap. Strided (column) views are fine. */
pio_status pk_comm_all_reduce(pk_comm *comm, const pk_tensor *out, const pk_tensor *in,
                              pio_error *err);

/* Concatenates every rank's in [R, C] in rank order along `axis` into out (see pk_comm_axis).
 * Any dtype, same on all ranks. in may be exactly this rank's own slice of out (in place);
 * otherwise they must not overlap. */
pio_status pk_comm_all_gather(pk_comm *comm, const pk_tensor *out, const pk_tensor *in,
                              pk_comm_axis axis, pio_error *err);

/* Copies root's t into t on every other rank. Any dtype; same shape on all ranks. */
pio_status pk_comm_broadcast(pk_comm *comm, const pk_tensor *t, int root, pio_error *err);

/* Returns once every rank has entered it. NCCL: a one-element all-reduce then a stream
 * synchronize, so every rank's work issued before the barrier has finished on its GPU. */
pio_status pk_comm_barrier(pk_comm *comm, pio_error *err);

/* ------------------------------------------------------------------------------------------ */
/* Bootstrapping across processes through a file                                              */
/* ------------------------------------------------------------------------------------------ */

/* Writes the id to path atomically (a temporary file renamed into place), mode 0600. */
pio_status pk_comm_id_write_file(const char *path, const pk_comm_id *id, pio_error *err);
/* Reads an id written by pk_comm_id_write_file, waiting up to timeout_ms (<= 0: no wait) for
 * the file to appear. PIO_ERR_NOT_FOUND when it does not, PIO_ERR_FORMAT when it is not one. */
pio_status pk_comm_id_read_file(const char *path, int timeout_ms, pk_comm_id *out,
                                pio_error *err);

#ifdef __cplusplus
}
#endif

#endif
