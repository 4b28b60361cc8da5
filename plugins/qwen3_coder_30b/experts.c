/* The sparse MoE block of every Qwen3-MoE layer: its weights, their packing and the block
 * (see model.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

#define EXPERT_MATRICES 3 /* gate_proj, up_proj, down_proj */

pio_status qwen3_moe_prepare(void *model, const pio_decoder *d, pio_error *err)
{
    qwen3_moe *q = model;
    q->layers = calloc((size_t)d->config.n_layers, sizeof *q->layers);
    return q->layers != NULL ? PIO_OK
                             : pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory");
}

/* The checkpoint's tensor of (layer, expert, matrix) while binding; allocated on first use. */
static pk_tensor *checkpoint_expert(qwen3_moe *q, const pio_decoder *d, long layer,
                                    long expert, int matrix)
{
    size_t per_layer = (size_t)q->n_experts * EXPERT_MATRICES;
    if (q->checkpoint_experts == NULL)
        q->checkpoint_experts = calloc((size_t)d->config.n_layers * per_layer,
                                       sizeof *q->checkpoint_experts);
    if (q->checkpoint_experts == NULL)
        return NULL;
    return &q->checkpoint_experts[(size_t)layer * per_layer +
                                  (size_t)expert * EXPERT_MATRICES + (size_t)matrix];
}

/* The router and every expert's three matrices under their Hugging Face names. Returns 0 when
 * the staging table cannot be allocated (the bind then fails on the missing slots' count). */
static size_t checkpoint_slots(qwen3_moe *q, const pio_decoder *d, long layer,
                               pio_weight_slot *s)
{
    static const char *const names[EXPERT_MATRICES] = {"gate_proj", "up_proj", "down_proj"};
    int64_t H = d->config.hidden_size, F = q->moe_intermediate;
    pio_weight_slot_set(s++, &q->layers[layer].router, q->n_experts, H, 0,
                        "model.layers.%ld.mlp.gate.weight", layer);
    for (long e = 0; e < q->n_experts; e++) {
        for (int m = 0; m < EXPERT_MATRICES; m++) {
            char format[PIO_WEIGHT_NAME_MAX];
            snprintf(format, sizeof format, "model.layers.%ld.mlp.experts.%%ld.%s.weight",
                     layer, names[m]);
            pk_tensor *t = checkpoint_expert(q, d, layer, e, m);
            if (t == NULL)
                return 0;
            int is_down = m == 2;
            pio_weight_slot_set(s++, t, is_down ? H : F, is_down ? F : H, 0, format, e);
        }
    }
    return 1 + (size_t)q->n_experts * EXPERT_MATRICES;
}

size_t qwen3_moe_layer_slots(void *model, const pio_decoder *d, long layer,
                             int from_checkpoint, pio_weight_slot *s)
{
    qwen3_moe *q = model;
    if (from_checkpoint)
        return s == NULL ? 1 + (size_t)q->n_experts * EXPERT_MATRICES
                         : checkpoint_slots(q, d, layer, s);
    if (s == NULL)
        return 3;
    qwen3_moe_layer *w = &q->layers[layer];
    int64_t H = d->config.hidden_size, F = q->moe_intermediate, E = q->n_experts;
    pio_weight_slot_set(&s[0], &w->router, E, H, 0, "model.layers.%ld.mlp.gate.weight", layer);
    pio_weight_slot_set(&s[1], &w->gate_up, E * 2 * F, H, 0,
                        "model.layers.%ld.mlp.experts.gate_up (packed)", layer);
    pio_weight_slot_set(&s[2], &w->down, E * H, F, 0,
                        "model.layers.%ld.mlp.experts.down (packed)", layer);
    return 3;
}

/* ------------------------------------------------------------------------------------------ */
/* Packing                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* All expert matrices of a checkpoint share one dtype, so a layer packs into one tensor pair. */
static pio_status check_one_dtype(const qwen3_moe *q, const pio_decoder *d, pio_dtype *dtype,
                                  pio_error *err)
{
    size_t n = (size_t)d->config.n_layers * (size_t)q->n_experts * EXPERT_MATRICES;
    *dtype = q->checkpoint_experts[0].dtype;
    for (size_t i = 1; i < n; i++)
        if (q->checkpoint_experts[i].dtype != *dtype)
            return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: the expert tensors mix dtypes "
                                 "(%s and %s); one dtype is needed to pack them",
                                 d->config.source, pio_dtype_name(*dtype),
                                 pio_dtype_name(q->checkpoint_experts[i].dtype));
    return PIO_OK;
}

static char *copy_tensor(char *dst, const pk_tensor *src)
{
    size_t bytes = pk_tensor_span_bytes(src);
    memcpy(dst, src->data, bytes);
    return dst + bytes;
}

/* Layer l's experts into gate_up [E·2F, H] and down [E·H, F] starting at `at`. */
static char *pack_layer(qwen3_moe *q, const pio_decoder *d, long l, pio_dtype dtype, char *at)
{
    int64_t H = d->config.hidden_size, F = q->moe_intermediate, E = q->n_experts;
    const pk_tensor *experts = q->checkpoint_experts + (size_t)l * (size_t)E * EXPERT_MATRICES;
    qwen3_moe_layer *w = &q->layers[l];
    w->gate_up = pk_tensor_host(at, dtype, E * 2 * F, H);
    for (int64_t e = 0; e < E; e++) {
        at = copy_tensor(at, &experts[e * EXPERT_MATRICES + 0]);
        at = copy_tensor(at, &experts[e * EXPERT_MATRICES + 1]);
    }
    w->down = pk_tensor_host(at, dtype, E * H, F);
    for (int64_t e = 0; e < E; e++)
        at = copy_tensor(at, &experts[e * EXPERT_MATRICES + 2]);
    return at;
}

pio_status qwen3_moe_pack(void *model, pio_decoder *d, pio_error *err)
{
    qwen3_moe *q = model;
    pio_dtype dtype = PIO_DTYPE_BF16;
    pio_status status = check_one_dtype(q, d, &dtype, err);
    if (status != PIO_OK)
        return status;
    uint64_t per_layer = (uint64_t)q->n_experts * 3 * (uint64_t)q->moe_intermediate *
                         (uint64_t)d->config.hidden_size * pio_dtype_size(dtype);
    uint64_t bytes = (per_layer * (uint64_t)d->config.n_layers + 63) / 64 * 64;
    q->packed = aligned_alloc(64, bytes);
    if (q->packed == NULL)
        return pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "packing the experts: out of memory "
                             "for %llu bytes", (unsigned long long)bytes);
    char *at = q->packed;
    for (long l = 0; l < d->config.n_layers; l++)
        at = pack_layer(q, d, l, dtype, at);
    free(q->checkpoint_experts); /* the per-expert views are not read again */
    q->checkpoint_experts = NULL;
    return PIO_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* The block                                                                                  */
/* ------------------------------------------------------------------------------------------ */

size_t qwen3_moe_workspace(void *model, const pio_decoder *d, pio_decoder_buffer *plan)
{
    (void)d;
    qwen3_moe *q = model;
    uint64_t C = PIO_DECODER_CHUNK_TOKENS;
    if (plan != NULL) {
        plan[0] = (pio_decoder_buffer){&q->router_logits, C * (uint64_t)q->n_experts * 4};
        plan[1] = (pio_decoder_buffer){&q->route_ids, C * (uint64_t)q->top_k * 4};
        plan[2] = (pio_decoder_buffer){&q->route_weights, C * (uint64_t)q->top_k * 4};
    }
    return 3;
}

pio_status qwen3_moe_block(void *model, pio_decoder *d, int32_t layer,
                           const pk_attention_activations *a, pio_error *err)
{
    const qwen3_moe *q = model;
    const qwen3_moe_layer *w = &q->layers[layer];
    int64_t n = a->x.rows;
    pk_tensor logits = pk_tensor_in(&q->router_logits, 0, PIO_DTYPE_F32, n, q->n_experts);
    pk_tensor ids = pk_tensor_in(&q->route_ids, 0, PIO_DTYPE_I32, n, q->top_k);
    pk_tensor weights = pk_tensor_in(&q->route_weights, 0, PIO_DTYPE_F32, n, q->top_k);
    pio_status st;
    if ((st = pk_rmsnorm_matmul(d->ctx, &logits, &a->h, &a->x, &d->layers[layer].post_norm,
                                (float)d->config.rms_norm_eps, &w->router, err)))
        return st;
    if (d->comm == NULL || pk_comm_size(d->comm) == 1)
        return pk_moe_topk_experts(d->ctx, &a->x, &a->h, &logits, &w->gate_up, &w->down, &ids,
                                   &weights, q->norm_topk_prob, err);
    /* Expert parallel: this rank's experts only; the residual is counted once (rank 0). */
    if ((st = pk_moe_topk_softmax(d->ctx, &ids, &weights, &logits, q->norm_topk_prob, err)))
        return st;
    st = pk_moe_experts_slice(d->ctx, &a->x, &a->h, &w->gate_up, &w->down, &ids, &weights,
                              q->n_experts, q->expert_offset, q->n_local_experts,
                              pk_comm_rank(d->comm) == 0, err);
    return st == PIO_OK ? pk_comm_all_reduce(d->comm, &a->x, &a->x, err) : st;
}

/* Tensor parallelism: the router replicated, this rank's experts as views of their rows of the
 * full model's packed gate_up and down (no copies). */
pio_status qwen3_moe_shard(void *model, const pio_decoder *d, const void *full_model,
                           const pio_decoder *full, pio_error *err)
{
    (void)full;
    qwen3_moe *q = model;
    const qwen3_moe *f = full_model;
    int tp = d->shard.size, r = d->shard.rank;
    if (f->n_experts % tp != 0)
        return pio_error_set(err, PIO_ERR_CONFIG, "parallel.tensor_parallel_size %d does not "
                             "divide the expert count %ld (num_local_experts / num_experts; "
                             "experts are split whole across the ranks) (%s)", tp,
                             f->n_experts, d->config.source);
    q->n_experts = f->n_experts;
    q->top_k = f->top_k;
    q->moe_intermediate = f->moe_intermediate;
    q->norm_topk_prob = f->norm_topk_prob;
    q->n_local_experts = f->n_experts / tp;
    q->expert_offset = r * q->n_local_experts;
    int64_t H = d->config.hidden_size, F = f->moe_intermediate, n = q->n_local_experts;
    pio_status status = qwen3_moe_prepare(model, d, err);
    for (long l = 0; status == PIO_OK && l < d->config.n_layers; l++) {
        const qwen3_moe_layer *fl = &f->layers[l];
        q->layers[l] = (qwen3_moe_layer){
            .router = fl->router,
            .gate_up = pk_tensor_rows(&fl->gate_up, q->expert_offset * 2 * F, n * 2 * F),
            .down = pk_tensor_rows(&fl->down, q->expert_offset * H, n * H)};
    }
    return status;
}

/* Every layer's packed experts; a token is routed to top_k of the n_experts of each layer. */
uint64_t qwen3_moe_routed_weights(void *model, const pio_decoder *d, uint32_t *experts,
                                  uint32_t *per_token)
{
    const qwen3_moe *q = model;
    uint64_t bytes = 0;
    for (long l = 0; q->layers != NULL && l < d->config.n_layers; l++)
        bytes += pk_tensor_span_bytes(&q->layers[l].gate_up) +
                 pk_tensor_span_bytes(&q->layers[l].down);
    *experts = (uint32_t)q->n_experts;
    *per_token = (uint32_t)q->top_k;
    return bytes;
}

void qwen3_moe_release(void *model, pio_decoder *d)
{
    (void)d;
    qwen3_moe *q = model;
    free(q->checkpoint_experts);
    free(q->packed);
    free(q->layers);
    q->checkpoint_experts = NULL;
    q->packed = NULL;
    q->layers = NULL;
}
