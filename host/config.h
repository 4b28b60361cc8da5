/*
 * The `pio` configuration: YAML files and `--set key=value` overrides merged into one table of
 * dotted keys ("kv_cache.block_size"), each remembering where its value came from.
 *
 * Loading only checks the YAML structure. Values keep their scalar text and are typed when read
 * (the getters) or when the whole table is checked against the schema (pio_config_validate).
 * configs/README.md documents every key and the typing rules; in short:
 *   - nested mappings become dotted keys; keys may also be written dotted ("kv_cache.block_size:");
 *   - a later file or override replaces an earlier value of the same key; a null value
 *     (empty, ~, null) removes the key, so its default applies again;
 *   - quoted scalars are always strings: the number and boolean getters reject "16" and "true";
 *   - integers are decimal only; booleans are true/false, yes/no, on/off (YAML 1.1 spellings);
 *   - anchors, aliases, tags and multiple documents are rejected;
 *   - a duplicate key in one document is an error.
 *
 * Thread safety: loading and overrides mutate the table; the getters, iteration and validate
 * only read it, so once loading is done any number of threads may read concurrently.
 * Strings returned by the getters and the iteration stay valid until the key is replaced by a
 * later load or override, or until pio_config_free().
 */
#ifndef PIO_HOST_CONFIG_H
#define PIO_HOST_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "pio/error.h"
#include "pio/plugin.h"

/* Limits that keep hostile input cheap; exceeding one is a PIO_ERR_FORMAT error. */
#define PIO_CONFIG_MAX_TEXT_BYTES (1024u * 1024u) /* one file or override value            */
#define PIO_CONFIG_MAX_DEPTH 16                   /* segments of a dotted key (nesting)     */
#define PIO_CONFIG_MAX_KEY_BYTES 256              /* length of a dotted key                 */
#define PIO_CONFIG_MAX_SCALAR_BYTES (64u * 1024u) /* length of one value                    */
#define PIO_CONFIG_MAX_KEYS 4096                  /* keys in one document and in the table  */
#define PIO_CONFIG_MAX_LIST_ITEMS 4096            /* items in one list                      */

/* Origin recorded for values set by pio_config_apply_override(). */
#define PIO_CONFIG_ORIGIN_OVERRIDE "--set"

typedef struct pio_config pio_config;

/* ---- building the table ---------------------------------------------------------------- */

/* An empty configuration; NULL when out of memory. */
pio_config *pio_config_new(void);

/* Reads a YAML file (at most PIO_CONFIG_MAX_TEXT_BYTES). PIO_ERR_IO when it cannot be read,
 * PIO_ERR_FORMAT ("path:line:column: problem") when it is not a valid config document. On any
 * error the table is left exactly as it was. */
pio_status pio_config_load_file(pio_config *cfg, const char *path, pio_error *err);

/* The same for text in memory (need not be NUL-terminated); display_name stands in for the
 * file name in origins and messages (NULL: "<string>"). */
pio_status pio_config_load_string(pio_config *cfg, const char *display_name, const char *text,
                                  size_t len, pio_error *err);

/* "key=value" from the command line. The value is parsed as YAML, so `16` is an integer,
 * `"16"` a string, `[0, 1]` a list and an empty value removes the key. The origin becomes
 * "--set". Any failure other than running out of memory is PIO_ERR_CONFIG, with a message that
 * quotes the assignment. The table is unchanged on error. */
pio_status pio_config_apply_override(pio_config *cfg, const char *assignment, pio_error *err);

/* Sets `key` to the literal string `value` (no YAML parsing: for command-line options such as
 * --model whose argument is always a string). origin: what origin_at() reports (NULL: "--set").
 * value NULL removes the key. PIO_ERR_CONFIG for a malformed key or an oversized value. */
pio_status pio_config_set_str(pio_config *cfg, const char *key, const char *value,
                              const char *origin, pio_error *err);

/* ---- reading values -------------------------------------------------------------------- */

/*
 * PIO_OK and *value set; PIO_SOFT_ABSENT with *value untouched when the key is not set;
 * PIO_ERR_CONFIG when the value does not have the asked type, with a message naming
 * "file:line:column", the key, what was expected and what was found. `err` may be NULL.
 * get_str accepts any scalar. None of them accepts a list.
 */
pio_status pio_config_get_str(const pio_config *cfg, const char *key, const char **value,
                              pio_error *err);
pio_status pio_config_get_i64(const pio_config *cfg, const char *key, int64_t *value,
                              pio_error *err);
pio_status pio_config_get_f64(const pio_config *cfg, const char *key, double *value,
                              pio_error *err);
pio_status pio_config_get_bool(const pio_config *cfg, const char *key, int *value,
                               pio_error *err);

/*
 * Lists ("generation.stop: [a, b]"). A scalar value reads as a list of one item, so
 * `--set parallel.devices=1` works. get_list_count: PIO_OK and *count (0 for `[]`), or
 * PIO_SOFT_ABSENT. The item getters type item `index` as the scalar getters do;
 * PIO_ERR_INVALID_ARGUMENT when index >= count.
 */
pio_status pio_config_get_list_count(const pio_config *cfg, const char *key, size_t *count,
                                     pio_error *err);
pio_status pio_config_get_list_str(const pio_config *cfg, const char *key, size_t index,
                                   const char **value, pio_error *err);
pio_status pio_config_get_list_i64(const pio_config *cfg, const char *key, size_t index,
                                   int64_t *value, pio_error *err);
pio_status pio_config_get_list_f64(const pio_config *cfg, const char *key, size_t index,
                                   double *value, pio_error *err);
pio_status pio_config_get_list_bool(const pio_config *cfg, const char *key, size_t index,
                                    int *value, pio_error *err);

/* ---- checking against the schema ------------------------------------------------------- */

/*
 * Checks every key against the schema (config_schema.c). Unknown keys are passed to
 * warn(ud, "FILE:LINE:COL: unknown key 'kv_cache.blok_size' (did you mean
 * 'kv_cache.block_size'?)") and are not errors; warn may be NULL. Keys under a free-form
 * section (plugin_options.*) are never warned about. Wrong types, values outside the allowed
 * range and strings outside an enumeration are errors: the first is returned (PIO_ERR_CONFIG)
 * and the rest of the table is still scanned for warnings.
 */
pio_status pio_config_validate(const pio_config *cfg,
                               void (*warn)(void *ud, const char *message), void *ud,
                               pio_error *err);

/* ---- iterating (`pio` prints the effective config) ------------------------------------- */

/* Leaf keys in byte order of the dotted key. */
size_t pio_config_count(const pio_config *cfg);
const char *pio_config_key_at(const pio_config *cfg, size_t i);    /* dotted key            */
const char *pio_config_value_at(const pio_config *cfg, size_t i);  /* scalar text; a list
                                                                      as "[a, \"b c\"]"      */
const char *pio_config_origin_at(const pio_config *cfg, size_t i); /* "file.yaml:3:5" of the
                                                                      value, or "--set"      */
/* NULL for an index out of range. */

void pio_config_free(pio_config *cfg);

/* ---- the schema (config_schema.c) ------------------------------------------------------ */

typedef enum pio_config_type {
    PIO_CONFIG_STR = 0,
    PIO_CONFIG_I64 = 1,
    PIO_CONFIG_F64 = 2,
    PIO_CONFIG_BOOL = 3
} pio_config_type;

/* Allowed numeric range of an i64/f64 key (each bound optional; the lower one may be strict). */
typedef struct pio_config_range {
    unsigned char has_min, min_exclusive, has_max;
    double min, max;
} pio_config_range;

typedef struct pio_config_key_info {
    const char *key;          /* dotted key, or the prefix of a free-form section           */
    pio_config_type type;     /* of the value, or of every item when is_list                */
    unsigned char is_list;    /* a YAML sequence of `type` (a lone scalar is one item)      */
    unsigned char free_form;  /* a section: every "key.*" is accepted unchecked             */
    const char *choices;      /* strings only: "auto|dummy"; "cuda:N" = "cuda:" + digits;
                                 NULL = any string                                          */
    pio_config_range range;   /* numbers only                                               */
    const char *default_text; /* what applies when the key is not set (for docs and help)  */
    const char *description;  /* one line                                                   */
} pio_config_key_info;

size_t pio_config_schema_count(void);
const pio_config_key_info *pio_config_schema_at(size_t i);
/* The entry that governs `key`: its exact entry or the free-form section it lies in; NULL
 * when the key is unknown. */
const pio_config_key_info *pio_config_schema_lookup(const char *key);

#endif
