/* Decoder blocks shared by models (see transformer_blocks.h). */
#include "kernels/transformer_blocks.h"

#include <math.h>

/* q and k of every token: projections, QK-norm, then RoPE at the token's position. */
static pio_status project_qkv(pk_context *ctx, const pk_qk_norm_attention_weights *w,
                              const pk_qk_norm_attention_shape *s,
                              const pk_attention_activations *a, const pk_token_batch *batch,
                              pio_error *err)
{
    pk_rope_params rope = {.layout = PK_ROPE_NEOX, .head_dim = s->head_dim,
                           .rotary_dim = s->head_dim, .rotary_offset = 0,
                           .theta = s->rope_theta};
    float eps = s->rms_norm_eps;
    pio_status st;
    if ((st = pk_rmsnorm(ctx, &a->h, &a->x, &w->input_norm, eps, err)) ||
        (st = pk_matmul(ctx, &a->q, &a->h, &w->q_proj, err)) ||
        (st = pk_matmul(ctx, &a->k, &a->h, &w->k_proj, err)) ||
        (st = pk_matmul(ctx, &a->v, &a->h, &w->v_proj, err)) ||
        (st = pk_head_rmsnorm(ctx, &a->q, &a->q, &w->q_norm, s->head_dim, eps, err)) ||
        (st = pk_head_rmsnorm(ctx, &a->k, &a->k, &w->k_norm, s->head_dim, eps, err)) ||
        (st = pk_rope(ctx, &a->q, &a->q, &batch->positions, &rope, err)) ||
        (st = pk_rope(ctx, &a->k, &a->k, &batch->positions, &rope, err)))
        return st;
    return PIO_OK;
}

pio_status pk_row_parallel_matmul_add(pk_context *ctx, pk_comm *comm, const pk_tensor *x,
                                      const pk_tensor *in, const pk_tensor *w, pio_error *err)
{
    if (comm == NULL || pk_comm_size(comm) == 1)
        return pk_matmul_add(ctx, x, in, w, err);
    pio_status st = pk_comm_rank(comm) == 0 ? pk_matmul_add(ctx, x, in, w, err)
                                            : pk_matmul(ctx, x, in, w, err);
    return st == PIO_OK ? pk_comm_all_reduce(comm, x, x, err) : st;
}

pio_status pk_qk_norm_attention_block(pk_context *ctx, const pk_qk_norm_attention_weights *w,
                                      const pk_qk_norm_attention_shape *shape,
                                      const pk_attention_activations *a,
                                      const pk_tensor *k_cache, const pk_tensor *v_cache,
                                      const pk_token_batch *batch, pio_error *err)
{
    return pk_qk_norm_attention_block_tp(ctx, NULL, w, shape, a, k_cache, v_cache, batch, err);
}

pio_status pk_qk_norm_attention_block_tp(pk_context *ctx, pk_comm *comm,
                                         const pk_qk_norm_attention_weights *w,
                                         const pk_qk_norm_attention_shape *shape,
                                         const pk_attention_activations *a,
                                         const pk_tensor *k_cache, const pk_tensor *v_cache,
                                         const pk_token_batch *batch, pio_error *err)
{
    pk_attention_params params = {.n_q_heads = shape->n_heads, .n_kv_heads = shape->n_kv_heads,
                                  .head_dim = shape->head_dim, .v_head_dim = 0,
                                  .scale = (float)(1.0 / sqrt((double)shape->head_dim))};
    pio_status st = project_qkv(ctx, w, shape, a, batch, err);
    if (st == PIO_OK)
        st = pk_attention(ctx, &a->attn, &a->q, &a->k, &a->v, k_cache, v_cache, batch, &params,
                          err);
    if (st == PIO_OK)
        st = pk_row_parallel_matmul_add(ctx, comm, &a->x, &a->attn, &w->o_proj, err);
    return st;
}

pio_status pk_swiglu_mlp_block(pk_context *ctx, const pk_swiglu_mlp_weights *w, float eps,
                               const pk_tensor *x, const pk_tensor *h, const pk_tensor *gate,
                               const pk_tensor *up, pio_error *err)
{
    return pk_swiglu_mlp_block_tp(ctx, NULL, w, eps, x, h, gate, up, err);
}

pio_status pk_swiglu_mlp_block_tp(pk_context *ctx, pk_comm *comm, const pk_swiglu_mlp_weights *w,
                                  float eps, const pk_tensor *x, const pk_tensor *h,
                                  const pk_tensor *gate, const pk_tensor *up, pio_error *err)
{
    pio_status st;
    if ((st = pk_rmsnorm(ctx, h, x, &w->post_norm, eps, err)) ||
        (st = pk_matmul(ctx, gate, h, &w->gate_proj, err)) ||
        (st = pk_matmul(ctx, up, h, &w->up_proj, err)) ||
        (st = pk_swiglu(ctx, gate, gate, up, err)) ||
        (st = pk_row_parallel_matmul_add(ctx, comm, x, gate, &w->down_proj, err)))
        return st;
    return PIO_OK;
}
