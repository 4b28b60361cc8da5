/* The Qwen3 dense keys of config.json and the built-in shape of Qwen3-4B-Instruct-2507. */
#include <stdio.h>
#include <string.h>

#include "model.h"

static const pio_json_field dense_fields[] = {
    PIO_JSON_FIELD(qwen3_dense, intermediate_size, "intermediate_size", PIO_JSON_REQUIRED, 1,
                   1 << 20),
};

pio_status qwen3_read_config(void *model, const pio_json_doc *doc, pio_error *err)
{
    return pio_json_read_fields(doc, dense_fields, 1, model, err);
}

void qwen3_builtin_config(void *model, pio_decoder_config *c)
{
    qwen3_dense *q = model;
    snprintf(c->source, sizeof c->source, "built-in Qwen3-4B-Instruct-2507 shape");
    c->vocab_size = 151936;
    c->hidden_size = 2560;
    q->intermediate_size = 9728;
    c->n_layers = 36;
    c->n_heads = 32;
    c->n_kv_heads = 8;
    c->head_dim = 128;
    c->max_positions = 262144;
    c->rms_norm_eps = 1e-6;
    c->rope_theta = 5000000.0;
    c->tie_word_embeddings = true;
    c->sampling.temperature = 0.7f;
    c->sampling.top_k = 20;
    c->sampling.top_p = 0.8f;
    c->sampling.fields_set = PIO_SAMPLING_TEMPERATURE | PIO_SAMPLING_TOP_K | PIO_SAMPLING_TOP_P;
    c->eos_ids[0] = 151645;
    c->eos_ids[1] = 151643;
    c->n_eos = 2;
}
