/*
 * Qwen3 self-attention, as transformers' Qwen3Attention computes it:
 *   h = RMSNorm(x) · input_layernorm
 *   q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ
 *   q, k = per-head RMSNorm with q_norm / k_norm (before RoPE; v is not normalised)
 *   q, k = rotate-half (NeoX) RoPE over the whole head, θ = rope_theta
 *   o = causal GQA attention over the paged cache, scale 1/√head_dim
 *   x += o·Woᵀ
 * The KV entry of a token is its k and v rows (n_kv_heads·head_dim each), one plane each per
 * layer of the pool.
 */
#ifndef QWEN3_ATTENTION_H
#define QWEN3_ATTENTION_H

#include "../model.h"

pio_status qwen3_attention_block(const qwen3_model *model, int32_t layer,
                                 const qwen3_activations *a, const pk_token_batch *batch,
                                 pio_error *err);

#endif
