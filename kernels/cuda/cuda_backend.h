/*
 * The CUDA backend of the op layer (the .cu files of kernels/cuda/), seen from C.
 *
 * Model code never uses this header: it calls kernels/ops.h with a context made by
 * pk_context_create(PK_DEVICE_CUDA, ...). kernels/backend.c puts pk_cuda_backend in its table
 * when the build has CUDA (PIO_HAVE_CUDA). The backend's CUDA C++ stays inside the .cu files;
 * nothing here needs a CUDA header.
 */
#ifndef PIO_KERNELS_CUDA_BACKEND_H
#define PIO_KERNELS_CUDA_BACKEND_H

#include "kernels/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One CUDA stream, one cuBLASLt handle and a small workspace per context; every op is queued on
 * the stream and none waits on the host (see docs/KERNELS.md, "CUDA backend"). */
extern const pk_backend pk_cuda_backend;

#ifdef __cplusplus
}
#endif

#endif
