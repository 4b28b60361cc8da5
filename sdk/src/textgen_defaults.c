/*
 * Sampling defaults: built in, then generation_config.json, then the YAML generation.* keys.
 * Per-request values are merged last, in textgen.c.
 */
#include <stdbool.h>
#include <string.h>

#include "pio/json_util.h"
#include "pio/textgen.h"

void pio_textgen_sampling_init(pio_sampling_params *s)
{
    memset(s, 0, sizeof *s);
    s->struct_size = sizeof *s;
    s->temperature = 1.0f;
    s->top_p = 1.0f;
    s->repetition_penalty = 1.0f;
}

/* A number of generation_config.json into a float field, marking it set. */
static pio_status read_float(const pio_json_doc *doc, const char *key, double min, double max,
                             float *field, uint32_t bit, pio_sampling_params *s, pio_error *err)
{
    double value = 0.0;
    pio_status status = pio_json_get_double(doc, key, PIO_JSON_OPTIONAL, min, max, &value, err);
    if (status == PIO_OK) {
        *field = (float)value;
        s->fields_set |= bit;
    }
    return PIO_IS_ERROR(status) ? status : PIO_OK;
}

static pio_status read_sampling_fields(const pio_json_doc *doc, pio_sampling_params *s,
                                       pio_error *err)
{
    pio_status status;
    int64_t top_k = 0;
    bool do_sample = true;
    if ((status = read_float(doc, "temperature", 0.0, 1e6, &s->temperature,
                             PIO_SAMPLING_TEMPERATURE, s, err)) ||
        (status = read_float(doc, "top_p", 0.0, 1.0, &s->top_p, PIO_SAMPLING_TOP_P, s, err)) ||
        (status = read_float(doc, "min_p", 0.0, 1.0, &s->min_p, PIO_SAMPLING_MIN_P, s, err)) ||
        (status = read_float(doc, "repetition_penalty", 1e-6, 1e6, &s->repetition_penalty,
                             PIO_SAMPLING_REPETITION_PENALTY, s, err)))
        return status;
    status = pio_json_get_int(doc, "top_k", PIO_JSON_OPTIONAL, 0, INT32_MAX, &top_k, err);
    if (PIO_IS_ERROR(status))
        return status;
    if (status == PIO_OK) {
        s->top_k = (int32_t)top_k;
        s->fields_set |= PIO_SAMPLING_TOP_K;
    }
    status = pio_json_get_bool(doc, "do_sample", PIO_JSON_OPTIONAL, &do_sample, err);
    if (PIO_IS_ERROR(status))
        return status;
    if (status == PIO_OK && !do_sample) {
        s->temperature = 0.0f;
        s->fields_set |= PIO_SAMPLING_TEMPERATURE;
    }
    return PIO_OK;
}

pio_status pio_textgen_read_generation_config(const char *path, pio_sampling_params *sampling,
                                              int32_t *eos_ids, size_t eos_capacity,
                                              size_t *n_eos, pio_error *err)
{
    *n_eos = 0;
    pio_json_doc *doc = NULL;
    pio_status status = pio_json_load_file(path, &doc, err);
    if (status == PIO_ERR_NOT_FOUND) {
        pio_error_clear(err);
        return PIO_SOFT_ABSENT;
    }
    if (status != PIO_OK)
        return status;
    int64_t ids[PIO_TEXTGEN_MAX_EOS];
    size_t count = 0;
    status = read_sampling_fields(doc, sampling, err);
    if (status == PIO_OK) {
        size_t capacity = eos_capacity < PIO_TEXTGEN_MAX_EOS ? eos_capacity : PIO_TEXTGEN_MAX_EOS;
        status = pio_json_get_int_or_array(doc, "eos_token_id", PIO_JSON_OPTIONAL, 0, INT32_MAX,
                                           ids, capacity, &count, err);
    }
    if (status == PIO_OK) {
        for (size_t i = 0; i < count; i++)
            eos_ids[i] = (int32_t)ids[i];
        *n_eos = count;
    }
    pio_json_free(doc);
    return PIO_IS_ERROR(status) ? status : PIO_OK;
}

/* One generation.* number of the YAML config into a float field. */
static pio_status host_float(const pio_host_services *sv, void *host, const char *key,
                             float *field, uint32_t bit, pio_sampling_params *s)
{
    double value = 0.0;
    pio_status status = sv->config_get_f64(host, key, &value);
    if (status == PIO_OK) {
        *field = (float)value;
        s->fields_set |= bit;
    }
    return PIO_IS_ERROR(status) ? status : PIO_OK;
}

static pio_status host_int(const pio_host_services *sv, void *host, const char *key,
                           int64_t *value, int *found)
{
    pio_status status = sv->config_get_i64(host, key, value);
    *found = status == PIO_OK;
    return PIO_IS_ERROR(status) ? status : PIO_OK;
}

pio_status pio_textgen_read_host_generation(const pio_host_services *sv, void *host,
                                            pio_sampling_params *s, int32_t *max_new_tokens,
                                            pio_error *err)
{
    pio_error_clear(err);
    pio_status status;
    int64_t value = 0;
    int found = 0;
    if ((status = host_float(sv, host, "generation.temperature", &s->temperature,
                             PIO_SAMPLING_TEMPERATURE, s)) ||
        (status = host_float(sv, host, "generation.top_p", &s->top_p, PIO_SAMPLING_TOP_P, s)) ||
        (status = host_float(sv, host, "generation.min_p", &s->min_p, PIO_SAMPLING_MIN_P, s)) ||
        (status = host_float(sv, host, "generation.repetition_penalty", &s->repetition_penalty,
                             PIO_SAMPLING_REPETITION_PENALTY, s)) ||
        (status = host_float(sv, host, "generation.presence_penalty", &s->presence_penalty,
                             PIO_SAMPLING_PRESENCE_PENALTY, s)) ||
        (status = host_float(sv, host, "generation.frequency_penalty", &s->frequency_penalty,
                             PIO_SAMPLING_FREQUENCY_PENALTY, s)))
        return status;
    if ((status = host_int(sv, host, "generation.top_k", &value, &found)))
        return status;
    if (found) {
        s->top_k = value > INT32_MAX ? INT32_MAX : (int32_t)value;
        s->fields_set |= PIO_SAMPLING_TOP_K;
    }
    if ((status = host_int(sv, host, "generation.seed", &value, &found)))
        return status;
    if (found) {
        s->seed = (uint64_t)value;
        s->fields_set |= PIO_SAMPLING_SEED;
    }
    if ((status = host_int(sv, host, "generation.max_new_tokens", &value, &found)))
        return status;
    if (found && value > 0)
        *max_new_tokens = value > INT32_MAX ? INT32_MAX : (int32_t)value;
    return PIO_OK;
}

pio_status pio_textgen_read_host_stop_strings(const pio_host_services *sv, void *host,
                                              const char **stops, size_t capacity,
                                              size_t *n_stops, pio_error *err)
{
    pio_error_clear(err);
    *n_stops = 0;
    if (!PIO_HAS_FIELD(sv, pio_host_services, config_get_list_str))
        return PIO_OK;
    size_t count = 0;
    pio_status status = sv->config_get_list_size(host, "generation.stop", &count);
    if (status != PIO_OK)
        return PIO_IS_ERROR(status) ? status : PIO_OK;
    if (count > capacity)
        return pio_error_set(err, PIO_ERR_CONFIG,
                             "generation.stop: %zu stop strings, at most %zu are supported",
                             count, capacity);
    for (size_t i = 0; i < count; i++) {
        status = sv->config_get_list_str(host, "generation.stop", i, &stops[i]);
        if (status != PIO_OK)
            return PIO_IS_ERROR(status) ? status : PIO_ERR_INTERNAL;
        if (stops[i][0] == '\0')
            return pio_error_set(err, PIO_ERR_CONFIG, "generation.stop: item %zu is empty", i);
    }
    *n_stops = count;
    return PIO_OK;
}
