/*
 * Graphs of the CUDA backend, and the page-locked host memory their steps stage inputs in.
 *
 * Graphs of the CUDA backend (ops.h, "Graphs"): the ops issued between pk_graph_begin and
 * pk_graph_end are captured from the context's stream into a CUDA graph, instantiated once and
 * replayed with cudaGraphLaunch. Capture is thread-local (cudaStreamCaptureModeThreadLocal): an
 * unsafe call from this thread while recording, such as a pageable host copy or a
 * synchronisation, invalidates the capture and pk_graph_end reports it, while other threads
 * driving other contexts are not disturbed.
 */
#include "kernels/cuda/cuda_internal.h"

#include <stdlib.h>

struct pk_graph {
    cudaGraphExec_t exec;
    unsigned long long workspace_epoch; /* the context's when recording began */
};

pio_status pk_cuda_graph_begin(pk_context *ctx, pio_error *err)
{
    static const char op[] = "pk_graph_begin";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK)
        return status;
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    st->recording_epoch = st->workspace_epoch;
    return pk_cuda_fail(ctx, op, "cudaStreamBeginCapture",
                        cudaStreamBeginCapture(st->stream, cudaStreamCaptureModeThreadLocal),
                        err);
}

pio_status pk_cuda_graph_end(pk_context *ctx, pk_graph **out, pio_error *err)
{
    static const char op[] = "pk_graph_end";
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    (void)cudaSetDevice(st->device);
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(st->stream, &graph);
    if (e != cudaSuccess) {
        if (graph != NULL)
            (void)cudaGraphDestroy(graph);
        return pk_cuda_fail(ctx, op, "cudaStreamEndCapture (an op that cannot be recorded "
                            "ran while recording)", e, err);
    }
    pk_graph *g = (pk_graph *)calloc(1, sizeof *g);
    if (g != NULL)
        g->workspace_epoch = st->recording_epoch;
    if (g == NULL) {
        (void)cudaGraphDestroy(graph);
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "%s: out of memory", op);
    }
    e = cudaGraphInstantiate(&g->exec, graph, 0);
    (void)cudaGraphDestroy(graph); /* the executable graph keeps what it needs */
    if (e != cudaSuccess) {
        free(g);
        return pk_cuda_fail(ctx, op, "cudaGraphInstantiate", e, err);
    }
    *out = g;
    return PIO_OK;
}

pio_status pk_cuda_graph_launch(pk_context *ctx, pk_graph *graph, pio_error *err)
{
    static const char op[] = "pk_graph_launch";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK)
        return status;
    return pk_cuda_fail(ctx, op, "cudaGraphLaunch",
                        cudaGraphLaunch(graph->exec, pk_cuda_state_of(ctx)->stream), err);
}

void pk_cuda_graph_destroy(pk_context *ctx, pk_graph *graph)
{
    (void)cudaSetDevice(pk_cuda_state_of(ctx)->device);
    (void)cudaGraphExecDestroy(graph->exec);
    free(graph);
}

pio_status pk_cuda_host_alloc(pk_context *ctx, size_t bytes, void **data, pio_error *err)
{
    static const char op[] = "pk_host_alloc";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK)
        return status;
    cudaError_t e = cudaMallocHost(data, bytes > 0 ? bytes : 1);
    if (e != cudaSuccess)
        *data = NULL;
    return pk_cuda_fail(ctx, op, "cudaMallocHost", e, err);
}

void pk_cuda_host_free(pk_context *ctx, void *data)
{
    (void)cudaSetDevice(pk_cuda_state_of(ctx)->device);
    (void)cudaFreeHost(data);
}

/* A workspace that grew while recording or since moved: the graph may address freed memory. */
int pk_cuda_graph_is_current(pk_context *ctx, const pk_graph *graph)
{
    return graph->workspace_epoch == pk_cuda_state_of(ctx)->workspace_epoch;
}
