/*
 * The Qwen3 dense configuration: config.json (architecture shape) and generation_config.json
 * (sampling defaults and end-of-sequence ids), read and checked before any weight is touched.
 */
#ifndef QWEN3_CONFIG_H
#define QWEN3_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "pio/error.h"
#include "pio/textgen.h"

typedef struct qwen3_config {
    char source[PATH_MAX];  /* the config.json read, or a note that the built-in shape is used */
    long vocab_size;
    long hidden_size;
    long intermediate_size;
    long n_layers;
    long n_heads;
    long n_kv_heads;
    long head_dim;
    long max_positions;     /* max_position_embeddings */
    double rms_norm_eps;
    double rope_theta;
    bool tie_word_embeddings;

    pio_sampling_params sampling; /* built-in defaults, then generation_config.json */
    int32_t eos_ids[2 * PIO_TEXTGEN_MAX_EOS]; /* generation_config.json, then config.json */
    size_t n_eos;
} qwen3_config;

/* Reads DIR/config.json and DIR/generation_config.json (optional). Every error names the file
 * and the key. */
pio_status qwen3_config_load(const char *dir, qwen3_config *config, pio_error *err);

/* The shape of the real Qwen3-4B-Instruct-2507 (its config.json and generation_config.json),
 * for dummy weights without a model folder. */
void qwen3_config_builtin(qwen3_config *config);

#endif
