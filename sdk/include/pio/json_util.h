/*
 * Reading Hugging Face JSON files (config.json, generation_config.json, tokenizer_config.json,
 * model.safetensors.index.json) with jansson: typed getters by key that name the file and the key
 * in every error, so a plugin maps its own fields in a few lines.
 *
 *   pio_json_doc *cfg;
 *   if ((s = pio_json_load_file(path, &cfg, err)) != PIO_OK)
 *       return s;
 *   int64_t layers;
 *   double theta = 10000.0;                                  // default, kept when absent
 *   if (PIO_IS_ERROR(s = pio_json_get_int(cfg, "num_hidden_layers", PIO_JSON_REQUIRED, 1, 1024,
 *                                         &layers, err)) ||
 *       PIO_IS_ERROR(s = pio_json_get_double(cfg, "rope_theta", PIO_JSON_OPTIONAL, 1.0, 1e12,
 *                                            &theta, err)))
 *       goto fail;
 *
 * Keys are dotted paths into nested objects: "text_config.hidden_size",
 * "rope_scaling.mrope_section". A JSON null counts as absent, because HF configs write null for
 * unset optional fields ("rope_scaling": null); so does a null object on the way
 * ("rope_scaling.rope_type" with "rope_scaling": null).
 *
 * Every getter returns
 *   PIO_OK             found and valid; the output is written;
 *   PIO_SOFT_ABSENT    absent and PIO_JSON_OPTIONAL; the output is untouched, so pre-load defaults;
 *   PIO_ERR_NOT_FOUND  absent and PIO_JSON_REQUIRED: `config.json: required key "hidden_size" is
 *                      missing`;
 *   PIO_ERR_CONFIG     wrong type or out of range: `config.json: "num_hidden_layers" must be an
 *                      integer, got string "36"`. Outputs are untouched on every failure.
 *
 * Loading rejects malformed JSON with `config.json: line 3, column 7: <jansson's reason>`
 * (PIO_ERR_FORMAT), duplicate keys (a file whose meaning depends on the parser is rejected rather
 * than guessed at), and a top level that is not an object.
 */
#ifndef PIO_JSON_UTIL_H
#define PIO_JSON_UTIL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pio/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The largest file pio_json_load_file reads (tokenizer.json files are tens of MB). */
#define PIO_JSON_MAX_FILE_BYTES ((size_t)1 << 30)

typedef struct pio_json_doc pio_json_doc; /* a parsed file (opaque) */

typedef enum pio_json_need {
    PIO_JSON_OPTIONAL = 0, /* absent -> PIO_SOFT_ABSENT, output untouched */
    PIO_JSON_REQUIRED = 1  /* absent -> PIO_ERR_NOT_FOUND */
} pio_json_need;

/* Reads and parses a file. PIO_ERR_NOT_FOUND when it does not exist, PIO_ERR_IO when it cannot
 * be read, PIO_ERR_FORMAT when it is not a JSON object. On failure *out is NULL. */
pio_status pio_json_load_file(const char *path, pio_json_doc **out, pio_error *err);

/* Parses `length` bytes of text; `name` stands for the file in messages. */
pio_status pio_json_load_buffer(const char *name, const char *text, size_t length,
                                pio_json_doc **out, pio_error *err);

/* Frees the document; NULL is accepted. Strings returned by the getters die with it. */
void pio_json_free(pio_json_doc *doc);

/* The name used in messages (the path given to pio_json_load_file). */
const char *pio_json_name(const pio_json_doc *doc);

/* The top-level object, for reading what the getters do not cover with jansson directly. */
const json_t *pio_json_root(const pio_json_doc *doc);

/* True when the dotted key is present and not null. */
bool pio_json_has(const pio_json_doc *doc, const char *key);

/* Any value (object, array, ...) by dotted key; *value is borrowed from the document. */
pio_status pio_json_get_value(const pio_json_doc *doc, const char *key, pio_json_need need,
                              const json_t **value, pio_error *err);

/* An object by dotted key, for iterating maps such as added_tokens_decoder. */
pio_status pio_json_get_object(const pio_json_doc *doc, const char *key, pio_json_need need,
                               const json_t **value, pio_error *err);

/* An integer in [min, max]. A real such as 36.0 is refused: HF writes integers as integers. */
pio_status pio_json_get_int(const pio_json_doc *doc, const char *key, pio_json_need need,
                            int64_t min, int64_t max, int64_t *value, pio_error *err);

/* A number (integer or real: "rope_theta": 5000000 is an integer in the file) in [min, max]. */
pio_status pio_json_get_double(const pio_json_doc *doc, const char *key, pio_json_need need,
                               double min, double max, double *value, pio_error *err);

/* true or false (not 0/1). */
pio_status pio_json_get_bool(const pio_json_doc *doc, const char *key, pio_json_need need,
                             bool *value, pio_error *err);

/* A string; *value points into the document (valid until pio_json_free). */
pio_status pio_json_get_string(const pio_json_doc *doc, const char *key, pio_json_need need,
                               const char **value, pio_error *err);

/*
 * A special token of tokenizer_config.json: either a string ("eos_token": "<|im_end|>") or an
 * AddedToken object ({"content": "</s>", ...}); *value is the token text, owned by the document.
 */
pio_status pio_json_get_token_text(const pio_json_doc *doc, const char *key, pio_json_need need,
                                   const char **value, pio_error *err);

/*
 * Arrays. Each element is checked like the scalar getter; at most `capacity` elements are
 * accepted (more is PIO_ERR_CONFIG naming both counts); *count gets the number written. An empty
 * array is valid (count 0). Element errors name the index: "rope_scaling.mrope_section[1]".
 */
pio_status pio_json_get_int_array(const pio_json_doc *doc, const char *key, pio_json_need need,
                                  int64_t min, int64_t max, int64_t *values, size_t capacity,
                                  size_t *count, pio_error *err);
pio_status pio_json_get_double_array(const pio_json_doc *doc, const char *key,
                                     pio_json_need need, double min, double max, double *values,
                                     size_t capacity, size_t *count, pio_error *err);
pio_status pio_json_get_string_array(const pio_json_doc *doc, const char *key,
                                     pio_json_need need, const char **values, size_t capacity,
                                     size_t *count, pio_error *err);

/* An integer or an array of integers, as eos_token_id is (151645 or [151645, 151643]); a single
 * integer reads as an array of one. */
pio_status pio_json_get_int_or_array(const pio_json_doc *doc, const char *key,
                                     pio_json_need need, int64_t min, int64_t max,
                                     int64_t *values, size_t capacity, size_t *count,
                                     pio_error *err);

/* ------------------------------------------------------------------------------------------ */
/* Table-driven mapping of scalar fields into a plugin's own config struct.                    */
/*                                                                                            */
/*   typedef struct { int layers; double eps; bool tied; const char *act; } my_config;         */
/*   static const pio_json_field my_fields[] = {                                               */
/*       PIO_JSON_FIELD(my_config, layers, "num_hidden_layers", PIO_JSON_REQUIRED, 1, 1024),   */
/*       PIO_JSON_FIELD(my_config, eps, "rms_norm_eps", PIO_JSON_OPTIONAL, 1e-12, 1.0),        */
/*       PIO_JSON_FIELD(my_config, tied, "tie_word_embeddings", PIO_JSON_OPTIONAL, 0, 0),      */
/*       PIO_JSON_FIELD(my_config, act, "hidden_act", PIO_JSON_REQUIRED, 0, 0),                */
/*   };                                                                                        */
/*   my_config c = {.eps = 1e-6};                              defaults for optional fields     */
/*   s = pio_json_read_fields(cfg, my_fields, sizeof my_fields / sizeof my_fields[0], &c, err);  */
/*                                                                                            */
/* The member's C type picks the getter: int, long, long long (int64_t) -> integer, range      */
/* clamped to the type; double, float -> number; bool; const char * -> string (owned by doc).  */
/* Any other member type is a compile error. min/max are ignored for bool and strings.         */
/* ------------------------------------------------------------------------------------------ */
typedef enum pio_json_field_kind {
    PIO_JSON_FIELD_INT,
    PIO_JSON_FIELD_LONG,
    PIO_JSON_FIELD_LLONG,
    PIO_JSON_FIELD_DOUBLE,
    PIO_JSON_FIELD_FLOAT,
    PIO_JSON_FIELD_BOOL,
    PIO_JSON_FIELD_STRING
} pio_json_field_kind;

typedef struct pio_json_field {
    const char *key;       /* dotted key */
    pio_json_need need;
    pio_json_field_kind kind;
    size_t offset;         /* offsetof(struct, member) */
    double min, max;       /* integer bounds are rounded inwards and clamped to the member type */
} pio_json_field;

#define PIO_JSON_FIELD_KIND_OF(lvalue)                                                          \
    _Generic((lvalue), int: PIO_JSON_FIELD_INT, long: PIO_JSON_FIELD_LONG,                       \
             long long: PIO_JSON_FIELD_LLONG, double: PIO_JSON_FIELD_DOUBLE,                     \
             float: PIO_JSON_FIELD_FLOAT, bool: PIO_JSON_FIELD_BOOL,                             \
             const char *: PIO_JSON_FIELD_STRING)

#define PIO_JSON_FIELD(type, member, key, need, min, max)                                       \
    {(key), (need), PIO_JSON_FIELD_KIND_OF(((type *)0)->member), offsetof(type, member),         \
     (double)(min), (double)(max)}

/* Reads each field in table order; stops at the first error. Absent optional fields keep the
 * value already in *dest. Returns PIO_OK or the first error status. */
pio_status pio_json_read_fields(const pio_json_doc *doc, const pio_json_field *fields,
                                size_t n_fields, void *dest, pio_error *err);

#ifdef __cplusplus
}
#endif

#endif /* PIO_JSON_UTIL_H */
