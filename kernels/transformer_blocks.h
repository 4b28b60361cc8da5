/*
 * Decoder blocks built from the ops of ops.h, shared by the models whose layers have them:
 *
 * pk_qk_norm_attention_block — Qwen3-style self-attention over the paged KV cache, as
 * transformers' Qwen3Attention (and Qwen3MoeAttention, which is the same) computes it:
 *   h = RMSNorm(x) · input_layernorm
 *   q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ
 *   q, k = per-head RMSNorm with q_norm / k_norm (before RoPE; v is not normalised)
 *   q, k = rotate-half (NeoX) RoPE over the whole head, θ = rope_theta
 *   o = causal GQA attention over the paged cache, scale 1/√head_dim
 *   x += o·Woᵀ
 * The KV entry of a token is its k and v rows (n_kv_heads·head_dim each), one cache plane each.
 *
 * pk_swiglu_mlp_block — the dense SwiGLU MLP with its pre-norm:
 *   x += down(silu(gate(h)) · up(h)),  h = RMSNorm(x) · post_attention_layernorm
 *
 * Tensor parallelism (the _tp variants, comm non-NULL): each rank holds a slice of the weights,
 * its own heads (q/k/v rows, o_proj columns) or its own intermediate columns (gate/up rows,
 * down_proj columns), and the block's output projection is row-parallel: rank 0 adds its
 * partial product to the residual x, the other ranks overwrite x with theirs, and x is
 * all-reduced in place, so the residual is counted once and every rank ends with the same x.
 * comm NULL is the plain block.
 */
#ifndef PIO_KERNELS_TRANSFORMER_BLOCKS_H
#define PIO_KERNELS_TRANSFORMER_BLOCKS_H

#include "kernels/comm.h"
#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pk_qk_norm_attention_weights {
    pk_tensor input_norm; /* [1, H] */
    pk_tensor q_proj;     /* [n_heads·head_dim, H] */
    pk_tensor k_proj;     /* [n_kv_heads·head_dim, H] */
    pk_tensor v_proj;     /* [n_kv_heads·head_dim, H] */
    pk_tensor o_proj;     /* [H, n_heads·head_dim] */
    pk_tensor q_norm;     /* [1, head_dim] */
    pk_tensor k_norm;     /* [1, head_dim] */
} pk_qk_norm_attention_weights;

typedef struct pk_qk_norm_attention_shape {
    int32_t n_heads, n_kv_heads, head_dim;
    float rms_norm_eps;
    float rope_theta;
} pk_qk_norm_attention_shape;

/* The activations of the block, [T, width] F32 views. x is read and updated (the residual);
 * h, q, k, v and attn are overwritten. */
typedef struct pk_attention_activations {
    pk_tensor x;    /* [T, H] */
    pk_tensor h;    /* [T, H] */
    pk_tensor q;    /* [T, n_heads·head_dim] */
    pk_tensor k;    /* [T, n_kv_heads·head_dim] */
    pk_tensor v;    /* [T, n_kv_heads·head_dim] */
    pk_tensor attn; /* [T, n_heads·head_dim] */
} pk_attention_activations;

pio_status pk_qk_norm_attention_block(pk_context *ctx, const pk_qk_norm_attention_weights *w,
                                      const pk_qk_norm_attention_shape *shape,
                                      const pk_attention_activations *a,
                                      const pk_tensor *k_cache, const pk_tensor *v_cache,
                                      const pk_token_batch *batch, pio_error *err);

/* As above, the heads of `shape` being this rank's (its k/v heads may be replicated on several
 * ranks); o_proj [H, n_heads·head_dim] is this rank's column slice. */
pio_status pk_qk_norm_attention_block_tp(pk_context *ctx, pk_comm *comm,
                                         const pk_qk_norm_attention_weights *w,
                                         const pk_qk_norm_attention_shape *shape,
                                         const pk_attention_activations *a,
                                         const pk_tensor *k_cache, const pk_tensor *v_cache,
                                         const pk_token_batch *batch, pio_error *err);

/* x += Σ_ranks in_r · w_rᵀ over the group (rank 0 adds the residual; x all-reduced in place).
 * comm NULL: pk_matmul_add. */
pio_status pk_row_parallel_matmul_add(pk_context *ctx, pk_comm *comm, const pk_tensor *x,
                                      const pk_tensor *in, const pk_tensor *w, pio_error *err);

typedef struct pk_swiglu_mlp_weights {
    pk_tensor post_norm; /* [1, H] */
    pk_tensor gate_proj; /* [F, H] */
    pk_tensor up_proj;   /* [F, H] */
    pk_tensor down_proj; /* [H, F] */
} pk_swiglu_mlp_weights;

/* x [T, H] updated; h [T, H], gate and up [T, F] overwritten. */
pio_status pk_swiglu_mlp_block(pk_context *ctx, const pk_swiglu_mlp_weights *w, float eps,
                               const pk_tensor *x, const pk_tensor *h, const pk_tensor *gate,
                               const pk_tensor *up, pio_error *err);
/* As above with this rank's intermediate slice (gate/up [F/N, H], down [H, F/N]). */
pio_status pk_swiglu_mlp_block_tp(pk_context *ctx, pk_comm *comm, const pk_swiglu_mlp_weights *w,
                                  float eps, const pk_tensor *x, const pk_tensor *h,
                                  const pk_tensor *gate, const pk_tensor *up, pio_error *err);

#ifdef __cplusplus
}
#endif

#endif
