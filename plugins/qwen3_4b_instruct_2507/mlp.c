/* The dense SwiGLU MLP of every Qwen3 layer: its weights and its block (see model.h). */
#include <stdlib.h>

#include "model.h"

pio_status qwen3_prepare(void *model, const pio_decoder *d, pio_error *err)
{
    qwen3_dense *q = model;
    q->layers = calloc((size_t)d->config.n_layers, sizeof *q->layers);
    return q->layers != NULL ? PIO_OK
                             : pio_error_set(err, PIO_ERR_OUT_OF_MEMORY, "out of memory");
}

/* The files and the forward hold the same three matrices. */
size_t qwen3_layer_slots(void *model, const pio_decoder *d, long layer, int from_checkpoint,
                         pio_weight_slot *s)
{
    (void)from_checkpoint;
    qwen3_dense *q = model;
    if (s == NULL)
        return 3;
    qwen3_mlp_layer *w = &q->layers[layer];
    int64_t H = d->config.hidden_size, F = q->intermediate_size;
    pio_weight_slot_set(&s[0], &w->gate_proj, F, H, 0, "model.layers.%ld.mlp.gate_proj.weight",
                        layer);
    pio_weight_slot_set(&s[1], &w->up_proj, F, H, 0, "model.layers.%ld.mlp.up_proj.weight",
                        layer);
    pio_weight_slot_set(&s[2], &w->down_proj, H, F, 0, "model.layers.%ld.mlp.down_proj.weight",
                        layer);
    return 3;
}

/* Tensor parallelism: gate/up column-parallel (this rank's rows of the intermediate), down
 * row-parallel (the same columns), all views of the full model's tensors. */
pio_status qwen3_shard(void *model, const pio_decoder *d, const void *full_model,
                       const pio_decoder *full, pio_error *err)
{
    (void)full;
    qwen3_dense *q = model;
    const qwen3_dense *f = full_model;
    int tp = d->shard.size, r = d->shard.rank;
    if (f->intermediate_size % tp != 0)
        return pio_error_set(err, PIO_ERR_CONFIG, "parallel.tensor_parallel_size %d does not "
                             "divide intermediate_size %ld (%s)", tp, f->intermediate_size,
                             d->config.source);
    int64_t F = f->intermediate_size / tp;
    q->intermediate_size = F;
    pio_status status = qwen3_prepare(model, d, err);
    for (long l = 0; status == PIO_OK && l < d->config.n_layers; l++) {
        const qwen3_mlp_layer *fl = &f->layers[l];
        q->layers[l] = (qwen3_mlp_layer){.gate_proj = pk_tensor_rows(&fl->gate_proj, r * F, F),
                                         .up_proj = pk_tensor_rows(&fl->up_proj, r * F, F),
                                         .down_proj = pk_tensor_cols(&fl->down_proj, r * F, F)};
    }
    return status;
}

size_t qwen3_workspace(void *model, const pio_decoder *d, pio_decoder_buffer *plan)
{
    (void)d;
    qwen3_dense *q = model;
    uint64_t bytes = PIO_DECODER_CHUNK_TOKENS * 2 * (uint64_t)q->intermediate_size * sizeof(float);
    if (plan != NULL)
        plan[0] = (pio_decoder_buffer){&q->gate_up, bytes};
    return 1;
}

/* gate and up are adjacent column views of one buffer, so the block projects both with one
 * matmul when the weights are packed back to back. */
pio_status qwen3_mlp_block(void *model, pio_decoder *d, int32_t layer,
                           const pk_attention_activations *a, pio_error *err)
{
    const qwen3_dense *q = model;
    const qwen3_mlp_layer *l = &q->layers[layer];
    int64_t n = a->x.rows, F = q->intermediate_size;
    pk_swiglu_mlp_weights w = {.post_norm = d->layers[layer].post_norm,
                               .gate_proj = l->gate_proj, .up_proj = l->up_proj,
                               .down_proj = l->down_proj};
    pk_tensor gate_up = pk_tensor_in(&q->gate_up, 0, PIO_DTYPE_F32, n, 2 * F);
    pk_tensor gate = pk_tensor_cols(&gate_up, 0, F);
    pk_tensor up = pk_tensor_cols(&gate_up, F, F);
    return pk_swiglu_mlp_block_tp(d->ctx, d->comm, &w, (float)d->config.rms_norm_eps, &a->x,
                                  &a->h, &gate, &up, err);
}

void qwen3_release(void *model, pio_decoder *d)
{
    (void)d;
    qwen3_dense *q = model;
    free(q->layers);
    q->layers = NULL;
}
