/* The Qwen3-MoE keys of config.json and the built-in shape of Qwen3-Coder-30B-A3B-Instruct. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "model.h"

/* transformers' Qwen3MoeConfig defaults for keys a config.json may leave out. */
static const pio_json_field moe_fields[] = {
    PIO_JSON_FIELD(qwen3_moe, top_k, "num_experts_per_tok", PIO_JSON_OPTIONAL, 1, 4096),
    PIO_JSON_FIELD(qwen3_moe, moe_intermediate, "moe_intermediate_size", PIO_JSON_REQUIRED, 1,
                   1 << 20),
    PIO_JSON_FIELD(qwen3_moe, norm_topk_prob, "norm_topk_prob", PIO_JSON_OPTIONAL, 0, 0),
};

/* transformers 4 writes num_experts, transformers 5 num_local_experts. */
static pio_status read_expert_count(const pio_json_doc *doc, qwen3_moe *q, pio_error *err)
{
    const char *key = pio_json_has(doc, "num_experts") ? "num_experts" : "num_local_experts";
    int64_t value = 0;
    pio_status status = pio_json_get_int(doc, key, PIO_JSON_REQUIRED, 1, 1 << 16, &value, err);
    q->n_experts = (long)value;
    return status;
}

/* Dense layers between the sparse ones and shared experts are variants this plugin refuses. */
static pio_status refuse_variants(const pio_json_doc *doc, pio_error *err)
{
    int64_t step = 1, shared = 0;
    pio_status status;
    if (PIO_IS_ERROR(status = pio_json_get_int(doc, "decoder_sparse_step", PIO_JSON_OPTIONAL, 0,
                                               1 << 20, &step, err)) ||
        PIO_IS_ERROR(status = pio_json_get_int(doc, "shared_expert_intermediate_size",
                                               PIO_JSON_OPTIONAL, 0, 1 << 20, &shared, err)))
        return status;
    if (step != 1)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: \"decoder_sparse_step\" is %lld; "
                             "only 1 (every layer sparse) is supported by this plugin", pio_json_name(doc),
                             (long long)step);
    if (shared != 0)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: \"shared_expert_intermediate_size\" "
                             "is %lld; this plugin supports no shared expert", pio_json_name(doc),
                             (long long)shared);
    const json_t *dense = json_object_get(pio_json_root(doc), "mlp_only_layers");
    if (dense != NULL && !json_is_null(dense) && (!json_is_array(dense) || json_array_size(dense)))
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: \"mlp_only_layers\" is not empty; "
                             "this plugin supports no dense layers between MoE layers",
                             pio_json_name(doc));
    return PIO_OK;
}

pio_status qwen3_moe_read_config(void *model, const pio_json_doc *doc, pio_error *err)
{
    qwen3_moe *q = model;
    q->top_k = 8;
    q->norm_topk_prob = false;
    pio_status status;
    if ((status = refuse_variants(doc, err)) || (status = read_expert_count(doc, q, err)) ||
        (status = pio_json_read_fields(doc, moe_fields, sizeof moe_fields / sizeof moe_fields[0],
                                       q, err)))
        return status;
    if (q->top_k > q->n_experts)
        return pio_error_set(err, PIO_ERR_CONFIG, "%s: \"num_experts_per_tok\" (%ld) exceeds "
                             "the number of experts (%ld)", pio_json_name(doc), q->top_k,
                             q->n_experts);
    return PIO_OK;
}

void qwen3_moe_builtin_config(void *model, pio_decoder_config *c)
{
    qwen3_moe *q = model;
    snprintf(c->source, sizeof c->source, "built-in Qwen3-Coder-30B-A3B-Instruct shape");
    c->vocab_size = 151936;
    c->hidden_size = 2048;
    c->n_layers = 48;
    c->n_heads = 32;
    c->n_kv_heads = 4;
    c->head_dim = 128;
    c->max_positions = 262144;
    c->rms_norm_eps = 1e-6;
    c->rope_theta = 10000000.0;
    c->tie_word_embeddings = false;
    q->n_experts = 128;
    q->top_k = 8;
    q->moe_intermediate = 768;
    q->norm_topk_prob = true;
    c->sampling.temperature = 0.7f;
    c->sampling.top_k = 20;
    c->sampling.top_p = 0.8f;
    c->sampling.repetition_penalty = 1.05f;
    c->sampling.fields_set = PIO_SAMPLING_TEMPERATURE | PIO_SAMPLING_TOP_K | PIO_SAMPLING_TOP_P |
                             PIO_SAMPLING_REPETITION_PENALTY;
    c->eos_ids[0] = 151645;
    c->eos_ids[1] = 151643;
    c->n_eos = 2;
}
