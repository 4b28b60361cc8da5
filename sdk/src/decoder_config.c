/* config.json and generation_config.json of a decoder model (see pio/decoder.h). */
#include "pio/decoder.h"

#include <stdio.h>
#include <string.h>

/* Defaults are those of transformers' Qwen3Config for keys a config.json may leave out. */
static const pio_json_field shape_fields[] = {
    PIO_JSON_FIELD(pio_decoder_config, vocab_size, "vocab_size", PIO_JSON_REQUIRED, 1, 1 << 24),
    PIO_JSON_FIELD(pio_decoder_config, hidden_size, "hidden_size", PIO_JSON_REQUIRED, 1,
                   1 << 16),
    PIO_JSON_FIELD(pio_decoder_config, n_layers, "num_hidden_layers", PIO_JSON_REQUIRED, 1, 1024),
    PIO_JSON_FIELD(pio_decoder_config, n_heads, "num_attention_heads", PIO_JSON_REQUIRED, 1,
                   1024),
    PIO_JSON_FIELD(pio_decoder_config, n_kv_heads, "num_key_value_heads", PIO_JSON_OPTIONAL, 1,
                   1024),
    PIO_JSON_FIELD(pio_decoder_config, head_dim, "head_dim", PIO_JSON_OPTIONAL, 2, 4096),
    PIO_JSON_FIELD(pio_decoder_config, max_positions, "max_position_embeddings",
                   PIO_JSON_REQUIRED, 2, 1 << 30),
    PIO_JSON_FIELD(pio_decoder_config, rms_norm_eps, "rms_norm_eps", PIO_JSON_OPTIONAL, 1e-12,
                   1.0),
    PIO_JSON_FIELD(pio_decoder_config, tie_word_embeddings, "tie_word_embeddings",
                   PIO_JSON_OPTIONAL, 0, 0),
};

static pio_status check_architecture(const pio_decoder_spec *spec, const pio_json_doc *doc,
                                     pio_error *err)
{
    const char *names[16];
    size_t count = 0;
    pio_status status = pio_json_get_string_array(doc, "architectures", PIO_JSON_REQUIRED, names,
                                                  16, &count, err);
    if (status != PIO_OK)
        return status;
    for (size_t i = 0; i < count; i++)
        if (strcmp(names[i], spec->architecture) == 0)
            return PIO_OK;
    return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                         "%s: \"architectures\" does not list %s (first: \"%s\"); this plugin "
                         "serves %s models only", pio_json_name(doc), spec->architecture,
                         count > 0 ? names[0] : "", spec->family);
}

/* A boolean feature this plugin does not implement must be absent or false. */
static pio_status refuse_true(const pio_json_doc *doc, const char *key, pio_error *err)
{
    bool value = false;
    pio_status status = pio_json_get_bool(doc, key, PIO_JSON_OPTIONAL, &value, err);
    if (PIO_IS_ERROR(status))
        return status;
    if (value)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: \"%s\" is true, which this plugin "
                             "does not implement", pio_json_name(doc), key);
    return PIO_OK;
}

static pio_status check_features(const pio_json_doc *doc, pio_error *err)
{
    const char *text = "silu";
    pio_status status = pio_json_get_string(doc, "hidden_act", PIO_JSON_OPTIONAL, &text, err);
    if (PIO_IS_ERROR(status))
        return status;
    if (strcmp(text, "silu") != 0)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: \"hidden_act\" is \"%s\"; only "
                             "\"silu\" is implemented", pio_json_name(doc), text);
    if ((status = refuse_true(doc, "attention_bias", err)) ||
        (status = refuse_true(doc, "qkv_bias", err)) ||
        (status = refuse_true(doc, "use_sliding_window", err)))
        return status;
    if (pio_json_has(doc, "rope_scaling"))
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: \"rope_scaling\" is set; this "
                             "plugin implements plain RoPE only (rope_scaling must be null)",
                             pio_json_name(doc));
    text = "default";
    status = pio_json_get_string(doc, "rope_parameters.rope_type", PIO_JSON_OPTIONAL, &text, err);
    if (PIO_IS_ERROR(status))
        return status;
    if (strcmp(text, "default") != 0)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: \"rope_parameters.rope_type\" is "
                             "\"%s\"; only \"default\" is implemented", pio_json_name(doc), text);
    return PIO_OK;
}

/* transformers 4 writes rope_theta at the top level, transformers 5 inside rope_parameters. */
static pio_status read_rope_theta(const pio_json_doc *doc, pio_decoder_config *c,
                                  pio_error *err)
{
    c->rope_theta = 10000.0;
    pio_status status = pio_json_get_double(doc, "rope_theta", PIO_JSON_OPTIONAL, 1.0, 1e12,
                                            &c->rope_theta, err);
    if (status == PIO_SOFT_ABSENT)
        status = pio_json_get_double(doc, "rope_parameters.rope_theta", PIO_JSON_OPTIONAL, 1.0,
                                     1e12, &c->rope_theta, err);
    return PIO_IS_ERROR(status) ? status : PIO_OK;
}

static pio_status check_shape(const pio_json_doc *doc, const pio_decoder_config *c,
                              pio_error *err)
{
    if (c->n_heads % c->n_kv_heads != 0)
        return pio_error_set(err, PIO_ERR_CONFIG, "%s: \"num_attention_heads\" (%ld) must be a "
                             "multiple of \"num_key_value_heads\" (%ld)", pio_json_name(doc),
                             c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2 != 0)
        return pio_error_set(err, PIO_ERR_CONFIG, "%s: \"head_dim\" (%ld) must be even for "
                             "rotary embeddings", pio_json_name(doc), c->head_dim);
    return PIO_OK;
}

static void add_eos(pio_decoder_config *c, const int64_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int seen = 0;
        for (size_t j = 0; j < c->n_eos; j++)
            seen |= c->eos_ids[j] == ids[i];
        if (!seen && c->n_eos < sizeof c->eos_ids / sizeof c->eos_ids[0])
            c->eos_ids[c->n_eos++] = (int32_t)ids[i];
    }
}

static pio_status read_config_json(const pio_decoder_spec *spec, void *model,
                                   const pio_json_doc *doc, pio_decoder_config *c,
                                   pio_error *err)
{
    pio_status status;
    int64_t eos[PIO_TEXTGEN_MAX_EOS];
    size_t n_eos = 0;
    if ((status = check_architecture(spec, doc, err)) || (status = check_features(doc, err)) ||
        (status = pio_json_read_fields(doc, shape_fields,
                                       sizeof shape_fields / sizeof shape_fields[0], c, err)) ||
        (status = read_rope_theta(doc, c, err)) ||
        (status = spec->read_config(model, doc, err)))
        return status;
    if (c->n_kv_heads == 0)
        c->n_kv_heads = c->n_heads;
    status = pio_json_get_int_or_array(doc, "eos_token_id", PIO_JSON_OPTIONAL, 0, INT32_MAX, eos,
                                       PIO_TEXTGEN_MAX_EOS, &n_eos, err);
    if (PIO_IS_ERROR(status))
        return status;
    add_eos(c, eos, status == PIO_OK ? n_eos : 0);
    return check_shape(doc, c, err);
}

static pio_status read_generation_config(const char *dir, pio_decoder_config *c,
                                         pio_error *err)
{
    char path[PATH_MAX + 32];
    int32_t eos[PIO_TEXTGEN_MAX_EOS];
    size_t n_eos = 0;
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    pio_status status = pio_textgen_read_generation_config(path, &c->sampling, eos,
                                                           PIO_TEXTGEN_MAX_EOS, &n_eos, err);
    if (PIO_IS_ERROR(status))
        return status;
    /* The generation config's ids come first: they are what generate() stops on. */
    int64_t wide[2 * PIO_TEXTGEN_MAX_EOS];
    size_t n = 0;
    for (size_t i = 0; i < n_eos; i++)
        wide[n++] = eos[i];
    for (size_t i = 0; i < c->n_eos; i++)
        wide[n++] = c->eos_ids[i];
    c->n_eos = 0;
    add_eos(c, wide, n);
    return PIO_OK;
}

pio_status pio_decoder_config_load(const pio_decoder_spec *spec, void *model, const char *dir,
                                   pio_decoder_config *c, pio_error *err)
{
    memset(c, 0, sizeof *c);
    c->head_dim = 128;
    c->rms_norm_eps = 1e-6;
    pio_textgen_sampling_init(&c->sampling);
    snprintf(c->source, sizeof c->source, "%s/config.json", dir);
    pio_json_doc *doc = NULL;
    pio_status status = pio_json_load_file(c->source, &doc, err);
    if (status == PIO_OK)
        status = read_config_json(spec, model, doc, c, err);
    pio_json_free(doc);
    return status == PIO_OK ? read_generation_config(dir, c, err) : status;
}
