/* Qwen3 self-attention over the paged KV cache (see attention.h). */
#include "attention.h"

#include <math.h>

static pk_rope_params rope_params(const qwen3_config *c)
{
    return (pk_rope_params){.layout = PK_ROPE_NEOX, .head_dim = (int32_t)c->head_dim,
                            .rotary_dim = (int32_t)c->head_dim, .rotary_offset = 0,
                            .theta = (float)c->rope_theta};
}

static pk_attention_params attention_params(const qwen3_config *c)
{
    return (pk_attention_params){.n_q_heads = (int32_t)c->n_heads,
                                 .n_kv_heads = (int32_t)c->n_kv_heads,
                                 .head_dim = (int32_t)c->head_dim, .v_head_dim = 0,
                                 .scale = (float)(1.0 / sqrt((double)c->head_dim))};
}

/* q and k of every token: projections, QK-norm, then RoPE at the token's position. */
static pio_status project_qkv(const qwen3_model *m, const qwen3_layer_weights *w,
                              const qwen3_activations *a, const pk_token_batch *batch,
                              pio_error *err)
{
    const qwen3_config *c = &m->config;
    float eps = (float)c->rms_norm_eps;
    pk_rope_params rope = rope_params(c);
    pio_status st;
    if ((st = pk_rmsnorm(m->ctx, &a->h, &a->x, &w->input_norm, eps, err)) ||
        (st = pk_matmul(m->ctx, &a->q, &a->h, &w->q_proj, err)) ||
        (st = pk_matmul(m->ctx, &a->k, &a->h, &w->k_proj, err)) ||
        (st = pk_matmul(m->ctx, &a->v, &a->h, &w->v_proj, err)) ||
        (st = pk_head_rmsnorm(m->ctx, &a->q, &a->q, &w->q_norm, c->head_dim, eps, err)) ||
        (st = pk_head_rmsnorm(m->ctx, &a->k, &a->k, &w->k_norm, c->head_dim, eps, err)) ||
        (st = pk_rope(m->ctx, &a->q, &a->q, &batch->positions, &rope, err)) ||
        (st = pk_rope(m->ctx, &a->k, &a->k, &batch->positions, &rope, err)))
        return st;
    return PIO_OK;
}

pio_status qwen3_attention_block(const qwen3_model *m, int32_t layer,
                                 const qwen3_activations *a, const pk_token_batch *batch,
                                 pio_error *err)
{
    const qwen3_layer_weights *w = &m->weights.layers[layer];
    pk_attention_params params = attention_params(&m->config);
    pk_tensor k_cache = pk_kv_pool_plane(m->pool, layer, 0);
    pk_tensor v_cache = pk_kv_pool_plane(m->pool, layer, 1);
    pio_status st = project_qkv(m, w, a, batch, err);
    if (st == PIO_OK)
        st = pk_attention(m->ctx, &a->attn, &a->q, &a->k, &a->v, &k_cache, &v_cache, batch,
                          &params, err);
    if (st == PIO_OK)
        st = pk_matmul_add(m->ctx, &a->x, &a->attn, &w->o_proj, err);
    return st;
}
