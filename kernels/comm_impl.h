/*
 * The seam between the communicator API (comm.h) and its implementations (CPU in
 * kernels/cpu/cpu_comm.c, NCCL in kernels/cuda/cuda_comm.cu). Model code never includes this.
 *
 * comm.c checks every argument on the calling rank (tensors valid, on the communicator's device,
 * dtypes, shapes, overlap, root) and then calls `run`. An implementation with `joins_on_error`
 * is also called for a rank whose arguments failed those checks (call->invalid set), so it can
 * tell the other ranks instead of leaving them waiting; the caller then gets its own message.
 */
#ifndef PIO_KERNELS_COMM_IMPL_H
#define PIO_KERNELS_COMM_IMPL_H

#include "kernels/backend.h"
#include "kernels/comm.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pk_comm_op {
    PK_COMM_OP_ALL_REDUCE = 1,
    PK_COMM_OP_ALL_GATHER = 2,
    PK_COMM_OP_BROADCAST = 3,
    PK_COMM_OP_BARRIER = 4,
} pk_comm_op;

/* One collective call of one rank. */
typedef struct pk_comm_call {
    pk_comm_op op;
    const char *name;     /* "pk_comm_all_reduce", ... for messages */
    const pk_tensor *out; /* all_reduce, all_gather; broadcast: the tensor; barrier: NULL */
    const pk_tensor *in;  /* all_reduce, all_gather; broadcast: the tensor; barrier: NULL */
    pk_comm_axis axis;    /* all_gather */
    int root;             /* broadcast */
    int invalid;          /* this rank's arguments failed comm.c's checks (joins_on_error only) */
} pk_comm_call;

typedef struct pk_comm_impl {
    const char *name;
    pk_device_kind device;
    int joins_on_error;

    /* Sets group->state: a new group (id NULL) or one joining an existing id. */
    pio_status (*group_init)(pk_comm_group *group, const pk_comm_id *id, pio_error *err);
    void (*group_fini)(pk_comm_group *group);
    /* NULL: the implementation has no id (PIO_ERR_UNSUPPORTED). */
    pio_status (*group_id)(const pk_comm_group *group, pk_comm_id *out, pio_error *err);

    /* Sets comm->state; comm->group, ->ctx, ->rank and ->size are filled before the call. */
    pio_status (*init)(pk_comm *comm, pio_error *err);
    /* All ranks from one thread (comms[r] filled as for init). NULL: init for each rank. */
    pio_status (*init_all)(pk_comm_group *group, pk_comm *const *comms, pio_error *err);
    void (*fini)(pk_comm *comm);
    void (*abort)(pk_comm *comm);
    pio_status (*run)(pk_comm *comm, const pk_comm_call *call, pio_error *err);
    /* Devices this implementation can put ranks on (pk_comm_device_count). */
    int (*device_count)(void);
} pk_comm_impl;

struct pk_comm_group {
    const pk_comm_impl *impl;
    int size;
    pk_comm_options options;
    int refs; /* the creator's reference + one per communicator; atomic */
    void *state;
};

struct pk_comm {
    const pk_comm_impl *impl;
    pk_comm_group *group;
    pk_context *ctx;
    int rank;
    int size;
    void *state;
};

extern const pk_comm_impl pk_comm_cpu_impl;
#if PIO_HAVE_CUDA
extern const pk_comm_impl pk_comm_nccl_impl;
#endif

#ifdef __cplusplus
}
#endif

#endif
