/*
 * The Qwen3-MoE model's own part of the shared decoder (pio/decoder.h): its config keys, the
 * built-in shape of Qwen3-Coder-30B-A3B-Instruct, and its sparse MoE block. Attention, KV
 * cache, weights table, forward and the plugin vtable are the decoder's; the routing and expert
 * mechanism is the kernels' (pk_moe_topk_softmax, pk_moe_experts).
 *
 * Every layer's feed-forward block, as transformers' Qwen3MoeSparseMoeBlock computes it:
 *   h = RMSNorm(x) · post_attention_layernorm
 *   p = softmax(h · W_routerᵀ) over the E experts, in fp32
 *   the top-k experts of p (ties to the lower index), weights renormalised to sum 1 when
 *   norm_topk_prob
 *   x += Σ weight · down_e(silu(gate_e(h)) · up_e(h))
 * No shared expert; every layer sparse (decoder_sparse_step 1, no mlp_only_layers).
 *
 * The checkpoint stores each expert apart (mlp.experts.E.{gate,up,down}_proj.weight); they are
 * bound by name and shape, then packed per layer into the layout of pk_moe_experts:
 * gate_up [E·2F, H] (expert e: its gate rows, then its up rows) and down [E·H, F].
 *
 * Tensor parallelism (pio_decoder_shard): attention is the decoder's (heads split); the MoE block
 * is expert parallel: rank r of N owns experts [r·E/N, (r+1)·E/N), its gate_up/down views of
 * those rows of the full model's packed tensors. The router is replicated, so every rank
 * computes the same top-k; a rank runs only the selected experts it owns (the others contribute
 * zero), rank 0 adding its sum to the residual and the others writing theirs in its place, and
 * x is all-reduced, as the row-parallel projections of the dense blocks do.
 */
#ifndef QWEN3_MOE_MODEL_H
#define QWEN3_MOE_MODEL_H

#include <stdbool.h>

#include "pio/decoder.h"

typedef struct qwen3_moe_layer {
    pk_tensor router;   /* [E, H] mlp.gate.weight (replicated over the ranks) */
    pk_tensor gate_up;  /* [E·2F, H] packed; a rank's: its experts' rows [E/N·2F, H] */
    pk_tensor down;     /* [E·H, F] packed; a rank's: its experts' rows [E/N·H, F] */
} qwen3_moe_layer;

typedef struct qwen3_moe {
    long n_experts;          /* num_experts (E) */
    long top_k;              /* num_experts_per_tok */
    long moe_intermediate;   /* moe_intermediate_size (F) */
    bool norm_topk_prob;
    long expert_offset;      /* tensor parallelism: this rank's experts are       */
    long n_local_experts;    /* [expert_offset, expert_offset + n_local_experts) */
    qwen3_moe_layer *layers;
    pk_tensor *checkpoint_experts; /* while binding: [layer][expert][gate, up, down] */
    void *packed;                  /* host memory of the packed experts of a checkpoint */
    pk_buffer router_logits;       /* [chunk, E] F32 */
    pk_buffer route_ids;           /* [chunk, k] I32 */
    pk_buffer route_weights;       /* [chunk, k] F32 */
} qwen3_moe;

/* ---- config.c ----------------------------------------------------------------------------- */
pio_status qwen3_moe_read_config(void *model, const pio_json_doc *doc, pio_error *err);
/* The shape of the real Qwen3-Coder-30B-A3B-Instruct (its config.json and
 * generation_config.json). */
void qwen3_moe_builtin_config(void *model, pio_decoder_config *config);

/* ---- experts.c ---------------------------------------------------------------------------- */
pio_status qwen3_moe_prepare(void *model, const pio_decoder *d, pio_error *err);
size_t qwen3_moe_layer_slots(void *model, const pio_decoder *d, long layer,
                             int from_checkpoint, pio_weight_slot *slots);
pio_status qwen3_moe_pack(void *model, pio_decoder *d, pio_error *err);
size_t qwen3_moe_workspace(void *model, const pio_decoder *d, pio_decoder_buffer *plan);
pio_status qwen3_moe_block(void *model, pio_decoder *d, int32_t layer,
                           const pk_attention_activations *a, pio_error *err);
pio_status qwen3_moe_shard(void *model, const pio_decoder *d, const void *full_model,
                           const pio_decoder *full, pio_error *err);
void qwen3_moe_release(void *model, pio_decoder *d);
uint64_t qwen3_moe_routed_weights(void *model, const pio_decoder *d, uint32_t *experts,
                                  uint32_t *per_token);

#endif
