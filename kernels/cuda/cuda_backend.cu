/*
 * The CUDA backend: contexts, memory, copies, synchronisation, error handling and the backend
 * table. The ops live in the other .cu files of this folder.
 */
#include "kernels/cuda/cuda_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static constexpr size_t LT_WORKSPACE_BYTES = 32u << 20; /* cuBLASLt's advice for Hopper */

/* ------------------------------------------------------------------------------------------ */
/* Errors                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* Errors after which the context still works: bad arguments and allocation failures. Every
 * other error is treated as sticky (illegal address, launch failure, ECC, ...). */
static bool is_recoverable(cudaError_t e)
{
    switch (e) {
    case cudaErrorMemoryAllocation:
    case cudaErrorInvalidValue:
    case cudaErrorInvalidConfiguration:
    case cudaErrorLaunchOutOfResources:
    case cudaErrorInvalidPitchValue:
    case cudaErrorInvalidDevicePointer:
    case cudaErrorInvalidMemcpyDirection:
    case cudaErrorNotReady:
    case cudaErrorStreamCaptureUnsupported: /* a graph recording went wrong: the context */
    case cudaErrorStreamCaptureInvalidated: /* itself is fine */
    case cudaErrorStreamCaptureUnmatched:
    case cudaErrorStreamCaptureUnjoined:
    case cudaErrorStreamCaptureIsolation:
    case cudaErrorStreamCaptureImplicit:
    case cudaErrorStreamCaptureWrongThread:
        return true;
    default:
        return false;
    }
}

pio_status pk_cuda_fail(pk_context *ctx, const char *op, const char *what, cudaError_t e,
                        pio_error *err)
{
    if (e == cudaSuccess)
        return PIO_OK;
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    if (is_recoverable(e)) {
        (void)cudaGetLastError(); /* clear it so the next launch check does not see it */
        return pio_error_set(err, e == cudaErrorMemoryAllocation ? PIO_ERR_OUT_OF_MEMORY
                                                                 : PIO_ERR_DEVICE,
                             "%s: %s failed: %s (%s)", op, what, cudaGetErrorName(e),
                             cudaGetErrorString(e));
    }
    if (!st->failed) {
        st->failed = 1;
        snprintf(st->failed_message, sizeof st->failed_message, "%s: %s failed: %s (%s)", op,
                 what, cudaGetErrorName(e), cudaGetErrorString(e));
    }
    return pio_error_set(err, PIO_ERR_DEVICE, "%s: %s failed: %s (%s); the CUDA context is now "
                         "failed", op, what, cudaGetErrorName(e), cudaGetErrorString(e));
}

pio_status pk_cuda_enter(pk_context *ctx, const char *op, pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    if (st->failed)
        return pio_error_set(err, PIO_ERR_DEVICE, "%s: the CUDA context failed earlier: %s", op,
                             st->failed_message);
    return pk_cuda_fail(ctx, op, "cudaSetDevice", cudaSetDevice(st->device), err);
}

pio_status pk_cuda_check_launch(pk_context *ctx, const char *op, pio_error *err)
{
    return pk_cuda_fail(ctx, op, "kernel launch", cudaGetLastError(), err);
}

/* Grows *buf (never shrinks) to at least `bytes`; *out = it. */
static pio_status grow_workspace(pk_context *ctx, void **buf, size_t *buf_bytes, size_t bytes,
                                 const char *op, void **out, pio_error *err)
{
    *out = *buf;
    if (bytes <= *buf_bytes && *buf != NULL)
        return PIO_OK;
    *out = NULL;
    size_t grown = bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes + bytes / 4;
    /* cudaFree waits for the device, so work still reading the old buffer has finished. */
    if (*buf != NULL)
        (void)cudaFree(*buf);
    *buf = NULL;
    *buf_bytes = 0;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, grown);
    if (e != cudaSuccess)
        return pk_cuda_fail(ctx, op, "cudaMalloc (workspace)", e, err);
    *buf = p;
    *buf_bytes = grown;
    *out = p;
    pk_cuda_state_of(ctx)->workspace_epoch++; /* graphs recorded before now hold the old one */
    return PIO_OK;
}

pio_status pk_cuda_scratch(pk_context *ctx, size_t bytes, const char *op, void **out,
                           pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    return grow_workspace(ctx, &st->scratch, &st->scratch_bytes, bytes, op, out, err);
}

pio_status pk_cuda_attention_workspace(pk_context *ctx, size_t bytes, const char *op, void **out,
                                       pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    return grow_workspace(ctx, &st->attn_workspace, &st->attn_workspace_bytes, bytes, op, out,
                          err);
}

pio_status pk_cuda_sample_workspace(pk_context *ctx, size_t bytes, const char *op, void **out,
                                    pio_error *err)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    return grow_workspace(ctx, &st->sample_workspace, &st->sample_workspace_bytes, bytes, op,
                          out, err);
}

/* ------------------------------------------------------------------------------------------ */
/* Context                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static void release_state(pk_cuda_state *st)
{
    if (st == NULL)
        return;
    if (st->stream != NULL)
        (void)cudaStreamSynchronize(st->stream);
    if (st->lt != NULL) {
        pk_context tmp = {};
        tmp.state = st;
        pk_cuda_matmul_fini(&tmp);
        cublasLtDestroy(st->lt);
    }
    if (st->lt_workspace != NULL)
        (void)cudaFree(st->lt_workspace);
    if (st->scratch != NULL)
        (void)cudaFree(st->scratch);
    if (st->attn_workspace != NULL)
        (void)cudaFree(st->attn_workspace);
    if (st->sample_workspace != NULL)
        (void)cudaFree(st->sample_workspace);
    if (st->err_info_dev != NULL)
        (void)cudaFree(st->err_info_dev);
    if (st->err_info_host != NULL)
        (void)cudaFreeHost(st->err_info_host);
    if (st->stream != NULL)
        (void)cudaStreamDestroy(st->stream);
    (void)cudaGetLastError();
    free(st);
}

/* st->gemv_tma from PIO_CUDA_GEMV_TMA ("0" | "all"; tests and benchmarks), else from
 * ctx->options.gemv_tma. */
static void resolve_gemv_tma(const pk_context *ctx, pk_cuda_state *st)
{
    const char *env = getenv("PIO_CUDA_GEMV_TMA");
    const pk_gemv_tma option = ctx->options.gemv_tma;
    st->gemv_tma = env != NULL && strcmp(env, "0") == 0     ? PK_CUDA_GEMV_TMA_OFF
                   : env != NULL && strcmp(env, "all") == 0 ? PK_CUDA_GEMV_TMA_ALL
                   : env != NULL                            ? PK_CUDA_GEMV_TMA_MANY_WAVES
                   : option == PK_GEMV_TMA_ALL              ? PK_CUDA_GEMV_TMA_ALL
                   : option == PK_GEMV_TMA_NONE             ? PK_CUDA_GEMV_TMA_OFF
                                                            : PK_CUDA_GEMV_TMA_MANY_WAVES;
}

static void cuda_options_changed(pk_context *ctx)
{
    resolve_gemv_tma(ctx, pk_cuda_state_of(ctx));
}

/* Peak bandwidth of device dev's memory in GB/s (two transfers a memory clock over the bus), or
 * 0 where the driver does not say. */
static double peak_memory_gbs(int dev)
{
    int khz = 0, bits = 0;
    if (cudaDeviceGetAttribute(&khz, cudaDevAttrMemoryClockRate, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&bits, cudaDevAttrGlobalMemoryBusWidth, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0.0;
    }
    return 2.0 * khz * 1e3 * (bits / 8.0) / 1e9;
}

static int cuda_gemv_tma_short_context(const pk_context *ctx)
{
    return pk_gemv_tma_short_context_for(pk_cuda_state_of(ctx)->memory_gbs);
}

/* The driver's cuTensorMapEncodeTiled through the runtime (no link against the driver
 * library), or NULL where the driver has none. */
static void *driver_tensor_map_encoder(void)
{
    void *fn = NULL;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    return fn;
}

static pio_status cuda_init(pk_context *ctx, pio_error *err)
{
    static const char op[] = "pk_context_create";
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count <= 0) {
        (void)cudaGetLastError();
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "%s: no usable cuda device (%s)", op,
                             e != cudaSuccess ? cudaGetErrorString(e) : "the driver lists none");
    }
    int dev = ctx->options.device_index;
    if (dev < 0 || dev >= count)
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: cuda device_index %d, but the machine has %d cuda device(s)",
                             op, dev, count);
    cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, dev)) != cudaSuccess) {
        (void)cudaGetLastError();
        return pio_error_set(err, PIO_ERR_DEVICE, "%s: cudaGetDeviceProperties(%d): %s", op,
                             dev, cudaGetErrorString(e));
    }
    if (prop.major < 9)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "%s: cuda device %d (%s) has compute capability %d.%d; this build "
                             "has kernels for 9.0 (Hopper) and newer only",
                             op, dev, prop.name, prop.major, prop.minor);

    pk_cuda_state *st = (pk_cuda_state *)calloc(1, sizeof *st);
    if (st == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "%s: out of memory", op);
    st->device = dev;
    st->sm_count = prop.multiProcessorCount;
    st->max_smem_optin = (int)prop.sharedMemPerBlockOptin;
    st->memory_gbs = peak_memory_gbs(dev);
    st->gemv_max_m = PK_CUDA_GEMV_MAX_M_DEFAULT;
    const char *pdl_env = getenv("PIO_CUDA_PDL");
    st->pdl = pdl_env == NULL || strcmp(pdl_env, "0") != 0;
    const char *gemv_env = getenv("PIO_CUDA_GEMV_MAX_M");
    if (gemv_env != NULL && *gemv_env != '\0') {
        char *end = NULL;
        long v = strtol(gemv_env, &end, 10);
        if (*end == '\0' && v >= 0 && v <= PK_CUDA_GEMV_MAX_M_EXACT)
            st->gemv_max_m = (int)v;
    }
    st->encode_tensor_map = driver_tensor_map_encoder();
    resolve_gemv_tma(ctx, st);
    const char *target_env = getenv("PIO_CUDA_GEMV_TARGET");
    if (target_env != NULL && *target_env != '\0') {
        char *end = NULL;
        long v = strtol(target_env, &end, 10);
        if (*end == '\0' && v > 0 && v <= 256)
            st->gemv_target = (int)v;
    }
    ctx->state = st;

    const char *what = "cudaSetDevice";
    pio_status status = PIO_OK;
    if ((e = cudaSetDevice(dev)) != cudaSuccess || (what = "cudaFree(0)", e = cudaFree(0)) ||
        (what = "cudaStreamCreate", e = cudaStreamCreateWithFlags(&st->stream,
                                                                   cudaStreamNonBlocking)) ||
        (what = "cudaMalloc", e = cudaMalloc(&st->lt_workspace, LT_WORKSPACE_BYTES)) ||
        (what = "cudaMalloc", e = cudaMalloc(&st->err_info_dev,
                                              PK_CUDA_ERR_WORDS * sizeof(long long))) ||
        (what = "cudaMallocHost", e = cudaMallocHost(&st->err_info_host,
                                                      PK_CUDA_ERR_WORDS * sizeof(long long))) ||
        (what = "cudaMemset", e = cudaMemsetAsync(st->err_info_dev, 0,
                                                   PK_CUDA_ERR_WORDS * sizeof(long long),
                                                   st->stream)) ||
        (what = "cudaStreamSynchronize", e = cudaStreamSynchronize(st->stream))) {
        status = pio_error_set(err, e == cudaErrorMemoryAllocation ? PIO_ERR_OUT_OF_MEMORY
                                                                   : PIO_ERR_DEVICE,
                               "%s: cuda device %d: %s failed: %s", op, dev, what,
                               cudaGetErrorString(e));
    }
    if (status == PIO_OK) {
        st->lt_workspace_bytes = LT_WORKSPACE_BYTES;
        memset(st->err_info_host, 0, PK_CUDA_ERR_WORDS * sizeof(long long));
        cublasStatus_t cs = cublasLtCreate(&st->lt);
        if (cs != CUBLAS_STATUS_SUCCESS) {
            st->lt = NULL;
            status = pio_error_set(err, PIO_ERR_DEVICE, "%s: cublasLtCreate failed: %s", op,
                                   cublasLtGetStatusString(cs));
        }
    }
    if (status == PIO_OK)
        status = pk_cuda_matmul_init(ctx, err);
    if (status == PIO_OK)
        status = pk_cuda_attention_init(ctx, err);
    if (status != PIO_OK) {
        release_state(st);
        ctx->state = NULL;
    }
    return status;
}

static void cuda_fini(pk_context *ctx)
{
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    if (st == NULL)
        return;
    (void)cudaSetDevice(st->device);
    release_state(st);
    ctx->state = NULL;
}

static int cuda_threads(const pk_context *ctx)
{
    (void)ctx;
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Memory and copies                                                                          */
/* ------------------------------------------------------------------------------------------ */

static pio_status cuda_alloc(pk_context *ctx, size_t bytes, void **data, pio_error *err)
{
    static const char op[] = "pk_buffer_alloc";
    *data = NULL;
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK)
        return status;
    /* cudaMalloc aligns to 256 bytes; never zero bytes, so an empty buffer has an address. */
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes > 0 ? bytes : 1);
    if (e == cudaErrorMemoryAllocation || e == cudaErrorInvalidValue) { /* too large */
        (void)cudaGetLastError();
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY,
                             "%s: cannot allocate %zu bytes on cuda device %d", op, bytes,
                             pk_cuda_state_of(ctx)->device);
    }
    if (e != cudaSuccess)
        return pk_cuda_fail(ctx, op, "cudaMalloc", e, err);
    *data = p;
    return PIO_OK;
}

static void cuda_free(pk_context *ctx, void *data)
{
    (void)cudaSetDevice(pk_cuda_state_of(ctx)->device);
    cudaError_t e = cudaFree(data);
    if (e != cudaSuccess)
        pk_cuda_fail(ctx, "pk_buffer_free", "cudaFree", e, NULL);
}

static pio_status cuda_copy(pk_context *ctx, const pk_tensor *dst, const pk_tensor *src,
                            pio_error *err)
{
    static const char op[] = "pk_copy";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK)
        return status;
    if (dst->rows == 0 || dst->cols == 0 || dst->data == src->data)
        return PIO_OK; /* ops.c allows only an exact alias, which copies nothing */
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    size_t elem = pio_dtype_size(dst->dtype);
    size_t width = (size_t)dst->cols * elem;
    cudaError_t e;
    if (pk_tensor_is_contiguous(dst) && pk_tensor_is_contiguous(src))
        e = cudaMemcpyAsync(dst->data, src->data, width * (size_t)dst->rows, cudaMemcpyDefault,
                            st->stream);
    else
        e = cudaMemcpy2DAsync(dst->data, (size_t)dst->stride * elem, src->data,
                              (size_t)src->stride * elem, width, (size_t)dst->rows,
                              cudaMemcpyDefault, st->stream);
    return pk_cuda_fail(ctx, op, "cudaMemcpyAsync", e, err);
}

static const char *op_name(long long code)
{
    switch (code) {
    case PK_CUDA_OP_EMBEDDING: return "pk_embedding";
    case PK_CUDA_OP_KV_STORE: return "pk_kv_store";
    case PK_CUDA_OP_ATTENTION: return "pk_attention";
    case PK_CUDA_OP_MOE_EXPERTS: return "pk_moe_experts";
    default: return "an op";
    }
}

/* The data error recorded on the device, as the CPU backend words it. */
static pio_status report_data_error(const long long *w, pio_error *err)
{
    const char *op = op_name(w[0]);
    static const char tail[] = "(found on the device, reported by pk_synchronize)";
    switch ((int)w[1]) {
    case PK_CUDA_BAD_TOKEN_ID:
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: token id %lld at index %lld is outside [0, %lld) %s", op, w[3],
                             w[2], w[4], tail);
    case PK_CUDA_BAD_POSITION:
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: token %lld has position %lld %s",
                             op, w[2], w[3], tail);
    case PK_CUDA_BAD_SEQ_ROW:
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: token %lld names block table row %lld of %lld %s", op, w[2],
                             w[3], w[4], tail);
    case PK_CUDA_BAD_TABLE_SPAN:
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: token %lld at position %lld needs block %lld of a %lld-wide "
                             "block table %s", op, w[2], w[3], w[4], w[5], tail);
    case PK_CUDA_BAD_BLOCK_ID:
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: token %lld uses block id %lld, the cache has %lld blocks %s", op,
                             w[2], w[3], w[4], tail);
    case PK_CUDA_BAD_EXPERT_ID:
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT,
                             "%s: ids[%lld, %lld] is %lld, outside [0, %lld) %s", op, w[2], w[3],
                             w[4], w[5], tail);
    default:
        return pio_error_set(err, PIO_ERR_INVALID_ARGUMENT, "%s: bad input data %s", op, tail);
    }
}

static pio_status cuda_synchronize(pk_context *ctx, pio_error *err)
{
    static const char op[] = "pk_synchronize";
    pio_status status = pk_cuda_enter(ctx, op, err);
    if (status != PIO_OK)
        return status;
    pk_cuda_state *st = pk_cuda_state_of(ctx);
    size_t bytes = PK_CUDA_ERR_WORDS * sizeof(long long);
    cudaError_t e = cudaMemcpyAsync(st->err_info_host, st->err_info_dev, bytes,
                                    cudaMemcpyDeviceToHost, st->stream);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(st->stream);
    if (e != cudaSuccess)
        return pk_cuda_fail(ctx, op, "cudaStreamSynchronize", e, err);
    if (st->err_info_host[0] == 0)
        return PIO_OK;
    long long words[PK_CUDA_ERR_WORDS];
    memcpy(words, st->err_info_host, bytes);
    memset(st->err_info_host, 0, bytes);
    if ((e = cudaMemsetAsync(st->err_info_dev, 0, bytes, st->stream)) != cudaSuccess)
        return pk_cuda_fail(ctx, op, "cudaMemsetAsync", e, err);
    return report_data_error(words, err);
}

/* ------------------------------------------------------------------------------------------ */

/* Built member by member (C++17 has no designated initialisers) in a constexpr function, so
 * the table is still constant-initialised. Every member is set, the optional MoE ops included
 * (kernels/cuda/cuda_moe.cu). */
static constexpr pk_backend make_cuda_backend()
{
    pk_backend b = {};
    b.name = "cuda";
    b.device = PK_DEVICE_CUDA;
    b.init = cuda_init;
    b.fini = cuda_fini;
    b.threads = cuda_threads;
    b.alloc = cuda_alloc;
    b.free = cuda_free;
    b.copy = cuda_copy;
    b.synchronize = cuda_synchronize;
    b.embedding = pk_cuda_embedding;
    b.matmul = pk_cuda_matmul;
    b.rmsnorm = pk_cuda_rmsnorm;
    b.rope = pk_cuda_rope;
    b.swiglu = pk_cuda_swiglu;
    b.add = pk_cuda_add;
    b.softmax = pk_cuda_softmax;
    b.argmax = pk_cuda_argmax;
    b.cast = pk_cuda_cast;
    b.fill_dummy = pk_cuda_fill_dummy;
    b.kv_store = pk_cuda_kv_store;
    b.attention = pk_cuda_attention;
    b.moe_topk_softmax = pk_cuda_moe_topk_softmax;
    b.moe_experts = pk_cuda_moe_experts;
    b.moe_experts_slice = pk_cuda_moe_experts_slice;
    b.moe_topk_experts = pk_cuda_moe_topk_experts;
    b.rmsnorm_matmul = pk_cuda_rmsnorm_matmul;
    b.qk_norm_rope_store = pk_cuda_qk_norm_rope_store;
    b.qk_norm_rope_attention = pk_cuda_qk_norm_rope_attention;
    b.graph_begin = pk_cuda_graph_begin;
    b.graph_end = pk_cuda_graph_end;
    b.graph_launch = pk_cuda_graph_launch;
    b.graph_destroy = pk_cuda_graph_destroy;
    b.graph_is_current = pk_cuda_graph_is_current;
    b.host_alloc = pk_cuda_host_alloc;
    b.host_free = pk_cuda_host_free;
    b.sample = pk_cuda_sample;
    b.options_changed = cuda_options_changed;
    b.gemv_tma_short_context = cuda_gemv_tma_short_context;
    return b;
}

extern "C" constexpr pk_backend pk_cuda_backend = make_cuda_backend();
