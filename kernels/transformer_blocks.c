/* Decoder blocks shared by models (see transformer_blocks.h). */
#include "kernels/transformer_blocks.h"

#include <math.h>

/* rmsnorm(x) · [w1; w2; w3]ᵀ into [y1 | y2 | y3]: one fused op when the weights are packed
 * back to back and the outputs are adjacent column views (the GPU upload and the decoder's
 * workspace arrange both), else the norm and one matmul per weight. w3/y3 may be NULL. */
static pio_status norm_and_project(pk_context *ctx, const pk_tensor *x, const pk_tensor *h,
                                   const pk_tensor *norm, float eps, const pk_tensor *w1,
                                   const pk_tensor *y1, const pk_tensor *w2, const pk_tensor *y2,
                                   const pk_tensor *w3, const pk_tensor *y3, pio_error *err)
{
    pk_tensor w12, y12, w_all, y_all;
    int joined = pk_tensor_join_rows(w1, w2, &w12) && pk_tensor_join_cols(y1, y2, &y12);
    if (joined && w3 != NULL)
        joined = pk_tensor_join_rows(&w12, w3, &w_all) && pk_tensor_join_cols(&y12, y3, &y_all);
    else if (joined) {
        w_all = w12;
        y_all = y12;
    }
    if (joined)
        return pk_rmsnorm_matmul(ctx, &y_all, h, x, norm, eps, &w_all, err);
    pio_status st;
    if ((st = pk_rmsnorm_matmul(ctx, y1, h, x, norm, eps, w1, err)) ||
        (st = pk_matmul(ctx, y2, h, w2, err)))
        return st;
    return w3 != NULL ? pk_matmul(ctx, y3, h, w3, err) : PIO_OK;
}

/* q, k and v of every token, then QK-norm, RoPE at the token's position, the keys and values
 * stored in the cache and the attention over it (one fused op). */
static pio_status attend(pk_context *ctx, const pk_qk_norm_attention_weights *w,
                         const pk_qk_norm_attention_shape *s, const pk_attention_activations *a,
                         const pk_tensor *k_cache, const pk_tensor *v_cache,
                         const pk_token_batch *batch, const pk_attention_params *params,
                         pio_error *err)
{
    pk_rope_params rope = {.layout = PK_ROPE_NEOX, .head_dim = s->head_dim,
                           .rotary_dim = s->head_dim, .rotary_offset = 0,
                           .theta = s->rope_theta};
    float eps = s->rms_norm_eps;
    pio_status st = norm_and_project(ctx, &a->x, &a->h, &w->input_norm, eps, &w->q_proj, &a->q,
                                     &w->k_proj, &a->k, &w->v_proj, &a->v, err);
    if (st != PIO_OK)
        return st;
    return pk_qk_norm_rope_attention(ctx, &a->attn, &a->q, &a->k, &a->v, &w->q_norm, &w->k_norm,
                                     eps, &rope, k_cache, v_cache, batch, params, err);
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
    pio_status st = attend(ctx, w, shape, a, k_cache, v_cache, batch, &params, err);
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
    pk_tensor w_gate_up, gate_up;
    if (pk_tensor_join_rows(&w->gate_proj, &w->up_proj, &w_gate_up) &&
        pk_tensor_join_cols(gate, up, &gate_up) && gate->cols == up->cols)
        st = pk_rmsnorm_matmul_swiglu(ctx, gate, &gate_up, h, x, &w->post_norm, eps, &w_gate_up,
                                      err);
    else if ((st = norm_and_project(ctx, x, h, &w->post_norm, eps, &w->gate_proj, gate,
                                    &w->up_proj, up, NULL, NULL, err)) == PIO_OK)
        st = pk_swiglu(ctx, gate, gate, up, err);
    if (st == PIO_OK)
        st = pk_row_parallel_matmul_add(ctx, comm, x, gate, &w->down_proj, err);
    return st;
}
