/*
 * The seam between the op API (ops.h) and the backends that run it. Model code never includes
 * this header.
 *
 * ops.c checks every argument (shapes, dtypes, devices, aliasing, parameter ranges) and then calls
 * the backend through this table, so a backend implements math only and may assume:
 *   - every tensor is valid, on the context's device, with the dtypes ops.h lists;
 *   - shapes agree as ops.h states.
 * A backend still checks what only the data can tell (token ids, positions and block ids in
 * range) where it can do so cheaply, and returns PIO_ERR_UNSUPPORTED for a valid combination it
 * does not implement.
 *
 * Adding a backend: define a `const pk_backend` with every required member filled (the optional
 * ones at the end may stay NULL) and add it to the
 * table in kernels/backend.c (a CUDA backend under `#if PIO_HAVE_CUDA`). Nothing else changes.
 */
#ifndef PIO_KERNELS_BACKEND_H
#define PIO_KERNELS_BACKEND_H

#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pk_backend pk_backend;

struct pk_context {
    const pk_backend *backend;
    pk_context_options options;
    void *state; /* the backend's own per-context data (threads, workspace, stream) */
};

struct pk_backend {
    const char *name;
    pk_device_kind device;

    /* Sets ctx->state; ctx->backend and ctx->options are filled before the call. */
    pio_status (*init)(pk_context *ctx, pio_error *err);
    void (*fini)(pk_context *ctx);
    int (*threads)(const pk_context *ctx);

    pio_status (*alloc)(pk_context *ctx, size_t bytes, void **data, pio_error *err);
    void (*free)(pk_context *ctx, void *data);
    /* Either side may be PK_DEVICE_CPU host memory; same dtype and shape. */
    pio_status (*copy)(pk_context *ctx, const pk_tensor *dst, const pk_tensor *src,
                       pio_error *err);
    pio_status (*synchronize)(pk_context *ctx, pio_error *err);

    pio_status (*embedding)(pk_context *ctx, const pk_tensor *out, const pk_tensor *table,
                            const pk_tensor *ids, pio_error *err);
    /* accumulate: y += x·w^T instead of y = x·w^T. */
    pio_status (*matmul)(pk_context *ctx, const pk_tensor *y, const pk_tensor *x,
                         const pk_tensor *w, int accumulate, pio_error *err);
    /* group_width: the row is normalised in independent slices of this many elements (the
     * row width for pk_rmsnorm, head_dim for pk_head_rmsnorm); weight has group_width values. */
    pio_status (*rmsnorm)(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                          const pk_tensor *weight, int64_t group_width, float eps,
                          pio_error *err);
    pio_status (*rope)(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                       const pk_tensor *positions, const pk_rope_params *params, pio_error *err);
    pio_status (*swiglu)(pk_context *ctx, const pk_tensor *out, const pk_tensor *gate,
                         const pk_tensor *up, pio_error *err);
    pio_status (*add)(pk_context *ctx, const pk_tensor *out, const pk_tensor *a,
                      const pk_tensor *b, pio_error *err);
    pio_status (*softmax)(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                          pio_error *err);
    pio_status (*argmax)(pk_context *ctx, const pk_tensor *ids, const pk_tensor *x,
                         pio_error *err);
    pio_status (*cast)(pk_context *ctx, const pk_tensor *out, const pk_tensor *x, pio_error *err);
    pio_status (*fill_dummy)(pk_context *ctx, const pk_tensor *out, uint64_t seed,
                             uint64_t tensor_id, float scale, float offset, pio_error *err);
    /* v_new and v_cache are NULL together when only keys are stored. */
    pio_status (*kv_store)(pk_context *ctx, const pk_tensor *k_cache, const pk_tensor *v_cache,
                           const pk_tensor *k_new, const pk_tensor *v_new,
                           const pk_token_batch *batch, const pk_attention_params *params,
                           pio_error *err);
    /* Attends only; ops.c issues kv_store first. params->v_head_dim is already resolved. */
    pio_status (*attention)(pk_context *ctx, const pk_tensor *out, const pk_tensor *q,
                            const pk_tensor *k_cache, const pk_tensor *v_cache,
                            const pk_token_batch *batch, const pk_attention_params *params,
                            pio_error *err);

    /* Optional members: a backend may leave them NULL, and the op then returns
     * PIO_ERR_UNSUPPORTED naming the op and the backend. */
    pio_status (*moe_topk_softmax)(pk_context *ctx, const pk_tensor *ids,
                                   const pk_tensor *weights, const pk_tensor *logits,
                                   int normalize, pio_error *err);
    pio_status (*moe_experts)(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                              const pk_tensor *gate_up, const pk_tensor *down,
                              const pk_tensor *ids, const pk_tensor *weights, int64_t n_experts,
                              pio_error *err);
    pio_status (*moe_experts_slice)(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                                    const pk_tensor *gate_up, const pk_tensor *down,
                                    const pk_tensor *ids, const pk_tensor *weights,
                                    int64_t n_experts, int64_t first, int64_t n_local,
                                    int accumulate, pio_error *err);
    /* pk_moe_topk_experts; NULL: ops.c runs moe_topk_softmax and then moe_experts. */
    pio_status (*moe_topk_experts)(pk_context *ctx, const pk_tensor *out, const pk_tensor *x,
                                   const pk_tensor *logits, const pk_tensor *gate_up,
                                   const pk_tensor *down, const pk_tensor *ids,
                                   const pk_tensor *weights, int normalize, pio_error *err);

    /* Fused ops (ops.h); NULL: ops.c runs the unfused ops instead. Arguments are checked.
     * rmsnorm_matmul serves pk_rmsnorm_matmul (out = NULL: y = gate_up, h written) and
     * pk_rmsnorm_matmul_swiglu (out = the SwiGLU of the gate_up product). */
    pio_status (*rmsnorm_matmul)(pk_context *ctx, const pk_tensor *out, const pk_tensor *y,
                                 const pk_tensor *h, const pk_tensor *x,
                                 const pk_tensor *norm_weight, float eps, const pk_tensor *w,
                                 pio_error *err);
    pio_status (*qk_norm_rope_store)(pk_context *ctx, const pk_tensor *q, const pk_tensor *k,
                                     const pk_tensor *v, const pk_tensor *q_norm,
                                     const pk_tensor *k_norm, float eps,
                                     const pk_rope_params *rope, const pk_tensor *k_cache,
                                     const pk_tensor *v_cache, const pk_token_batch *batch,
                                     const pk_attention_params *params, pio_error *err);
    pio_status (*qk_norm_rope_attention)(pk_context *ctx, const pk_tensor *out,
                                         const pk_tensor *q, const pk_tensor *k,
                                         const pk_tensor *v, const pk_tensor *q_norm,
                                         const pk_tensor *k_norm, float eps,
                                         const pk_rope_params *rope, const pk_tensor *k_cache,
                                         const pk_tensor *v_cache, const pk_token_batch *batch,
                                         const pk_attention_params *params, pio_error *err);

    /* Page-locked host memory (ops.h); NULL: plain aligned host memory. */
    pio_status (*host_alloc)(pk_context *ctx, size_t bytes, void **data, pio_error *err);
    void (*host_free)(pk_context *ctx, void *data);

    /* Graphs (ops.h); all NULL when the backend cannot record. */
    pio_status (*graph_begin)(pk_context *ctx, pio_error *err);
    pio_status (*graph_end)(pk_context *ctx, pk_graph **out, pio_error *err);
    pio_status (*graph_launch)(pk_context *ctx, pk_graph *graph, pio_error *err);
    void (*graph_destroy)(pk_context *ctx, pk_graph *graph);
    int (*graph_is_current)(pk_context *ctx, const pk_graph *graph);

    /* ctx->options changed after init (pk_context_set_gemv_tma); NULL: nothing to redo. */
    void (*options_changed)(pk_context *ctx);
    /* pk_context_gemv_tma_short_context (ops.h); NULL: 0. */
    int (*gemv_tma_short_context)(const pk_context *ctx);

    /* Sampling (ops.h); optional (NULL: PIO_ERR_UNSUPPORTED). Arguments are checked; a NULL
     * history tensor means none. Rows that cannot be sampled get -1, not an error. */
    pio_status (*sample)(pk_context *ctx, const pk_tensor *ids, const pk_tensor *logits,
                         int64_t n_valid, const pk_tensor *params,
                         const pk_tensor *prompt_tokens, const pk_tensor *output_tokens,
                         const pk_tensor *uniforms, pio_error *err);
};

/* Whether two valid views share an element (exact for views of one stride and dtype, by byte
 * range otherwise), and whether they are the same view: ops.c's overlap rules, for the other
 * files of the shared layer (comm.c). */
int pk_views_overlap(const pk_tensor *a, const pk_tensor *b);
int pk_views_same(const pk_tensor *a, const pk_tensor *b);

/* The CPU backend (kernels/cpu/). */
extern const pk_backend pk_cpu_backend;

/* The backend serving `device` in this build, or NULL. */
const pk_backend *pk_backend_for(pk_device_kind device);

/* Creates a context on an explicit backend (tests use it to run a backend double). */
pio_status pk_context_create_with(const pk_backend *backend, const pk_context_options *options,
                                  pk_context **out, pio_error *err);

/* The positions below which a dense model's decode step is fastest with every projection on the
 * TMA GEMV, on a GPU whose memory streams `memory_gbs` GB/s at its peak
 * (pk_context_gemv_tma_short_context). Measured on two GPUs of 132 SMs (docs/KERNELS.md,
 * "Eleventh session"): the H100 (3,350 GB/s) crosses over near 512 positions, the H200 (4,800)
 * near 4,096 — the faster memory needs the TMA GEMV's deeper loads in flight for longer. */
int pk_gemv_tma_short_context_for(double memory_gbs);

#ifdef __cplusplus
}
#endif

#endif
